"""Highway EM: the paper's sections 3-4 as pure JAX functions.

Shapes: x [B, N, C] features, mu [B, K, C] Gaussian bases (a [K, C] mu broadcasts
over the batch), gamma [B, N, K] responsibilities. Nothing here depends on Flax,
so every function can be differentiated, vmapped or probed with `jax.grad`.

Precision: the E-step softmax runs in float32 when the inputs are bfloat16 or
float16, and in float64 when they are float64; the outputs keep that wider dtype.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

# EMANet's guards, kept in exactly this form so that eta = 1 reproduces EMANet.
_EPS_N = 1e-6  # gamma / (1e-6 + sum_n gamma)
_EPS_NORM = 1e-6  # mu / (1e-6 + ||mu||)


def default_temperature(channels):
  """sigma^2 of Eq. 8 when a config leaves it unset: sqrt(C), the paper's choice (Sec. 5.1)."""
  return float(channels) ** 0.5


def _wide_dtype(*arrays):
  """float32 for half precision inputs, float64 stays float64."""
  return jnp.promote_types(jnp.result_type(*arrays), jnp.float32)


def _batched(mu, batch_size):
  return jnp.broadcast_to(mu, (batch_size,) + mu.shape) if mu.ndim == 2 else mu


def e_step(x, mu, temperature, kernel="dot"):
  """Responsibilities gamma [B, N, K] of the bases mu for the points x.

  kernel="dot": Eq. 8, softmax_k(x_n . mu_k / temperature).
  kernel="gaussian": the exact isotropic-GMM posterior (Eq. 7's form),
    softmax_k(-||x_n - mu_k||^2 / (2 temperature)). It differs from "dot" only by
    the per-basis term ||mu_k||^2 / (2 temperature), so the two agree when all bases
    have the same norm; it is the E-step that maximises `elbo` over gamma.
  """
  dtype = _wide_dtype(x, mu)
  x, mu = x.astype(dtype), _batched(mu, x.shape[0]).astype(dtype)
  logits = jnp.einsum("bnc,bkc->bnk", x, mu)
  if kernel == "dot":
    logits = logits / temperature  # Eq. 8
  elif kernel == "gaussian":
    # Eq. 7 with sigma^2 = 2 temperature; ||x_n||^2 is constant over k and cancels.
    logits = (logits - 0.5 * jnp.sum(mu * mu, axis=-1)[:, None, :]) / temperature
  else:
    raise ValueError(f"e_step: kernel must be 'dot' or 'gaussian', got {kernel!r}")
  return jax.nn.softmax(logits, axis=-1)


def m_step(x, gamma):
  """Eq. 9: mu = gamma_bar^T x, gamma normalised over N as in EMANet (Eq. 5)."""
  gamma_bar = gamma / (_EPS_N + jnp.sum(gamma, axis=1, keepdims=True))
  return jnp.einsum("bnk,bnc->bkc", gamma_bar, x.astype(gamma.dtype))


def n_step(x, gamma, mu, eta):
  """Eq. 13: one Newton step, (1 - eta) mu + eta M_step(mu, x); eta = 1 is EM."""
  return (1.0 - eta) * mu + eta * m_step(x, gamma)


def r_step(gamma, mu):
  """Eq. 10: the reconstruction x_tilde = gamma mu, [B, N, C]."""
  return jnp.einsum("bnk,bkc->bnc", gamma, _batched(mu, gamma.shape[0]))


def l2_normalize(mu):
  """EMANet's basis normalisation over C, mu / (1e-6 + ||mu||)."""
  return mu / (_EPS_NORM + jnp.linalg.norm(mu, axis=-1, keepdims=True))


# hem_iterations' `l2_normalize` flag shadows the function inside it.
_normalize_bases = l2_normalize


def elbo(x, mu, gamma, temperature):
  """Eq. 3 for the isotropic GMM with sigma^2 = temperature, constants dropped.

  sum_nk gamma_nk (-||x_n - mu_k||^2 / (2 temperature)) - gamma_nk ln gamma_nk,
  one value per batch element [B].

  The N-step never lowers it for a fixed gamma (Proposition 1), and the
  "gaussian" E-step maximises it over gamma, so whole iterations with that kernel
  never lower it. With the "dot" kernel and bases of unequal norm a whole
  iteration CAN lower it: the dot E-step is not this bound's maximiser.
  """
  dtype = _wide_dtype(x, mu, gamma)
  x, gamma = x.astype(dtype), gamma.astype(dtype)
  mu = _batched(mu, x.shape[0]).astype(dtype)
  sq_dist = (jnp.sum(x * x, -1)[:, :, None] - 2.0 * jnp.einsum("bnc,bkc->bnk", x, mu)
             + jnp.sum(mu * mu, -1)[:, None, :])
  expected_loglik = jnp.sum(gamma * (-sq_dist / (2.0 * temperature)), axis=(1, 2))
  entropy = -jnp.sum(jax.scipy.special.xlogy(gamma, gamma), axis=(1, 2))
  return expected_loglik + entropy


class HEMOutput(NamedTuple):
  mu: jax.Array  # mu^(T), [B, K, C]
  gamma: jax.Array  # gamma^(T), [B, N, K]: the E-step of the last iteration
  mus: jax.Array  # mu^(1..T), [T, B, K, C]
  gammas: jax.Array  # gamma^(1..T), [T, B, N, K]


def hem_iterations(x, mu0, *, num_iters, eta, temperature, l2_normalize=False,
                   backprop=True, kernel="dot", e_step_grad=True, remat=False):
  """T = num_iters unrolled HEM iterations (E-step, N-step) as one lax.scan.

  Args:
    x: [B, N, C] features.
    mu0: [K, C] or [B, K, C] initial bases mu^(0).
    num_iters: T, a static int >= 1.
    eta: the N-step size of Eq. 13; 1.0 is plain EM.
    temperature: sigma^2 of Eq. 8 (the paper uses sqrt(C)).
    l2_normalize: normalise mu after every step (EMANet); off for HEMNet.
    backprop: False is EMANet's mode: no gradient flows through the iterations
      (to x, mu0 or anything upstream), as the official EMANet code runs them
      under no_grad.
    kernel: "dot" (Eq. 8) or "gaussian" (Eq. 7), see `e_step`.
    e_step_grad: False cuts the E-step paths (gamma is a constant to autodiff),
      leaving only the N-step highways of Eqs. 14-18; used by gradient probes.
    remat: recompute each iteration in the backward pass (jax.checkpoint) instead
      of keeping its gamma [B, N, K]: memory then stays flat in T (only the carry
      mu [B, K, C] is stored per iteration) for about one more E-step per iteration.

  Returns:
    HEMOutput with the final mu and gamma and the stacked per-iteration ones.
  """
  if not isinstance(num_iters, int) or num_iters < 1:
    raise ValueError(f"hem_iterations: num_iters must be an int >= 1, got {num_iters!r}")
  if not backprop:
    x, mu0 = jax.lax.stop_gradient(x), jax.lax.stop_gradient(mu0)
  mu0 = _batched(mu0, x.shape[0]).astype(_wide_dtype(x, mu0))

  def iteration(mu, _):
    gamma = e_step(x, mu, temperature, kernel)  # Eq. 8 (or 7)
    if not e_step_grad:
      gamma = jax.lax.stop_gradient(gamma)
    mu = n_step(x, gamma, mu, eta)  # Eq. 13
    if l2_normalize:
      mu = _normalize_bases(mu)
    return mu, (mu, gamma)

  if remat:
    iteration = jax.checkpoint(iteration)
  mu, (mus, gammas) = jax.lax.scan(iteration, mu0, None, length=num_iters)
  return HEMOutput(mu=mu, gamma=gammas[-1], mus=mus, gammas=gammas)
