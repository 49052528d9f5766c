"""The ELBO and gradient-flow probes of the HEM iterations (the paper's Figure 3).

  (a) `elbo_curve`: Eq. 3's ELBO after each HEM iteration;
  (b), (c) `gradient_split`: d loss / d X from the N-step of each layer and from the
      E-step of each layer (the two sums of Eq. 17), which add up exactly to the full
      gradient;
  (d) the total mean |d loss / d X| (the sum of the parts).

The loss downstream of the HEM iterations is the caller's function of the R-step's
X_tilde (Eq. 10).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hemnet_jax.hem import em as hem


def elbo_curve(x, mu0, *, num_iters, eta, temperature, kernel="dot"):
  """(a) Eq. 3 after each of T iterations, L(mu^(t), gamma^(t)), [T, B]."""
  out = hem.hem_iterations(x, mu0, num_iters=num_iters, eta=eta, temperature=temperature,
                           kernel=kernel)
  return jax.vmap(lambda m, g: hem.elbo(x, m, g, temperature))(out.mus, out.gammas)


def _unrolled(x_e, x_n, mu0, *, eta, temperature, kernel, e_step_grad):
  """hem_iterations with one copy of X per use: x_e[t] feeds layer t's E-step, x_n[t]
  its N-step. The gradient to a copy is the gradient through that use alone (the
  others held fixed, as by stop_gradient), and by the chain rule the copies'
  gradients sum to the gradient to the shared X (Eqs. 16-17)."""
  mu = jnp.broadcast_to(mu0, (x_n.shape[1],) + mu0.shape[-2:]) if mu0.ndim == 2 else mu0
  mu = mu.astype(jnp.promote_types(x_n.dtype, jnp.float32))
  for t in range(x_e.shape[0]):
    gamma = hem.e_step(x_e[t], mu, temperature, kernel)  # Eq. 8 (or 7)
    if not e_step_grad:
      gamma = jax.lax.stop_gradient(gamma)
    mu = hem.n_step(x_n[t], gamma, mu, eta)  # Eq. 13
  return hem.r_step(gamma, mu)  # Eq. 10


class GradientSplit(NamedTuple):
  n_step: jax.Array  # [T, B, N, C]: d loss / d X through the N-step of layer t (Eq. 17, left)
  # [T, B, N, C]: through the E-step of layer t (Eq. 17, right); layer T's includes the
  # R-step's direct use of gamma^(T) (Eq. 10), usually the largest E-step part.
  e_step: jax.Array


def gradient_split(x, mu0, loss_fn, *, num_iters, eta, temperature, kernel="dot",
                   e_step_grad=True):
  """(b), (c) The gradient of loss_fn(X_tilde) to X, split by layer and by step.

  sum over t of n_step + e_step is exactly jax.grad of the whole function. With
  e_step_grad=False the E-step paths are cut (gamma constant, as
  hem_iterations(e_step_grad=False)): e_step is zero and n_step is Eq. 18.
  """
  copies = jnp.broadcast_to(x, (num_iters,) + x.shape)
  f = lambda x_e, x_n: loss_fn(_unrolled(x_e, x_n, mu0, eta=eta, temperature=temperature,
                                         kernel=kernel, e_step_grad=e_step_grad))
  g_e, g_n = jax.grad(f, argnums=(0, 1))(copies, copies)
  return GradientSplit(n_step=g_n, e_step=g_e)


def readout_loss(key, shape):
  """A fixed random linear readout of X_tilde [B, N, C], sum_nc X_tilde * V averaged over B."""
  v = jax.random.normal(key, shape[-2:])
  return lambda x_tilde: jnp.sum(x_tilde * v) / x_tilde.shape[0]


def layer_means(split):
  """Mean |gradient| per layer: (N-step [T], E-step [T], total over all paths)."""
  mean_abs = lambda g: np.asarray(jnp.mean(jnp.abs(g), axis=tuple(range(1, g.ndim))))
  total = float(jnp.mean(jnp.abs(split.n_step.sum(0) + split.e_step.sum(0))))
  return mean_abs(split.n_step), mean_abs(split.e_step), total


def probe_features(x, mu0, loss_fn, *, etas, num_iters, temperature, kernel="dot"):
  """Every probe for each eta: (per-layer rows, per-eta total rows), as dicts."""
  layers, totals = [], []
  for eta in etas:
    kw = dict(num_iters=num_iters, eta=eta, temperature=temperature, kernel=kernel)
    elbo = np.asarray(jnp.mean(elbo_curve(x, mu0, **kw), axis=1))
    n, e, total = layer_means(gradient_split(x, mu0, loss_fn, **kw))
    n_cut, _, _ = layer_means(gradient_split(x, mu0, loss_fn, e_step_grad=False, **kw))
    for t in range(num_iters):
      layers.append({"eta": eta, "layer": t + 1, "elbo": float(elbo[t]), "grad_x_n_step": float(n[t]),
                     "grad_x_e_step": float(e[t]), "grad_x_n_step_e_cut": float(n_cut[t])})
    totals.append({"eta": eta, "grad_x_total": total,
                   "e_step_over_n_step": float(e.sum() / max(n.sum(), 1e-30))})
  return layers, totals
