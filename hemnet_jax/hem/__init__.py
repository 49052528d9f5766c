"""The paper's math as pure JAX functions, no Flax.

  em.py           E-step (Eqs. 7, 8), M-step (Eq. 9), N-step (Eq. 13), R-step (Eq. 10),
                  the ELBO (Eq. 3) and T iterations as one lax.scan;
  vjp.py          the same iterations + R-step with a hand-written backward pass (Eqs. 14-18);
  probes.py       Figure 3's ELBO and gradient-flow probes.

`from hemnet_jax import hem` then `hem.e_step(...)`: the functions of em.py are this package's.
"""

from hemnet_jax.hem.em import (HEMOutput, default_temperature, e_step, elbo, hem_iterations,
                               l2_normalize, m_step, n_step, r_step)

__all__ = ["HEMOutput", "default_temperature", "e_step", "elbo", "hem_iterations", "l2_normalize",
           "m_step", "n_step", "r_step"]
