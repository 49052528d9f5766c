"""The HEM iterations and R-step with a hand-written backward pass (Eqs. 14-18 made explicit).

`hem_attention` computes exactly what `em.hem_iterations` followed by `em.r_step`
computes, for HEMNet's training case (dot kernel, no basis normalisation, gradients
through the iterations); only the backward pass differs, and it is tested against
`jax.grad` of the plain functions in float64.

Why: autodiff of the scan leaves, per iteration, two [B, N, C] gradient terms to X
(one from the M-step, one from the E-step) that are added one by one. Written out, the
backward pass is

  d mu^(t-1) = (1 - eta) d mu^(t) + (E-step term)            (Eqs. 14-18, the highway)
  d X        = sum_t [gamma_bar^(t) | d logits^(t)] [eta d mu^(t) ; mu^(t-1)]

(d logits with the 1 / temperature of Eq. 8 in it), and the second line is ONE matmul
with inner size 2KT, done once at the end instead of 2T thin ones plus 2T additions
over [B, N, C]; EMANet's normaliser term is summed over K x C instead of the pixels.
`python -m benchmarks.hem_layer --sections ablation` measures it (BENCHMARKS.md).
"""

import functools

import jax
import jax.numpy as jnp

from hemnet_jax.hem import em


def _e_step(x, mu, temperature):
  """Eq. 8, the temperature folded into the K x C bases instead of the N x K logits."""
  return jax.nn.softmax(jnp.einsum("bnc,bkc->bnk", x, mu / temperature), axis=-1)


def _forward(x, mu0, num_iters, eta, temperature):
  """The scan of em.hem_iterations, keeping what the backward pass needs."""
  def iteration(mu, _):
    gamma = _e_step(x, mu, temperature)
    norm = em._EPS_N + jnp.sum(gamma, axis=1)  # [B, K], EMANet's normaliser (Eq. 5)
    # Eqs. 9 and 13; dividing the K x C product instead of the N x K gamma.
    m = jnp.einsum("bnk,bnc->bkc", gamma, x) / norm[:, :, None]
    new = (1.0 - eta) * mu + eta * m
    return new, (mu, new, gamma, norm, m)

  mu, (mu_prev, mus, gammas, norms, ms) = jax.lax.scan(iteration, mu0, None, length=num_iters)
  x_tilde = jnp.einsum("bnk,bkc->bnc", gammas[-1], mu)  # Eq. 10
  return x_tilde, mus, gammas, (mu_prev, norms, ms)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _attention(x, mu0, num_iters, eta, temperature, remat):
  x_tilde, mus, gammas, _ = _forward(x, mu0, num_iters, eta, temperature)
  return x_tilde, mus, gammas


def _attention_fwd(x, mu0, num_iters, eta, temperature, remat):
  x_tilde, mus, gammas, (mu_prev, norms, ms) = _forward(x, mu0, num_iters, eta, temperature)
  # remat: keep only K x C arrays per iteration; gamma is recomputed from mu^(t-1).
  saved = (x, mu_prev, ms, mus[-1], None if remat else gammas, None if remat else norms)
  return (x_tilde, mus, gammas), saved


def _iteration_bwd(x, eta, temperature, d_mu, d_mu_t, d_gamma_t, gamma, norm, m):
  """Iteration t backwards: (d mu^(t-1), the pair whose product is this step's d X).

  d_mu is the cotangent of mu^(t) from later iterations, d_mu_t and d_gamma_t those
  of this iteration's outputs; norm is EMANet's sum_n gamma [B, 1, K], m the M-step."""
  d_mu = d_mu + d_mu_t
  d_m = eta * d_mu  # Eq. 13
  gamma_bar = gamma / norm
  # Eq. 9 (m = gamma_bar^T x): to gamma_bar, then through EMANet's normaliser to gamma.
  d_gamma_bar = jnp.einsum("bnc,bkc->bnk", x, d_m)
  # The normaliser's term sum_n d_gamma_bar gamma_bar = sum_c d_m m: a K x C sum instead
  # of one over the pixels (which XLA:CPU fused into the GEMM above, much slower: BENCHMARKS.md).
  d_g = (d_gamma_bar - jnp.sum(d_m * m, axis=-1)[:, None, :]) / norm
  d_g = d_g + d_gamma_t
  # Eq. 8: the softmax, then logits = x mu^T / temperature.
  d_logits = gamma * (d_g - jnp.sum(d_g * gamma, axis=-1, keepdims=True)) / temperature
  # Eqs. 14-18: the highway (1 - eta) plus the E-step's path to mu^(t-1).
  d_mu_prev = (1.0 - eta) * d_mu + jnp.einsum("bnk,bnc->bkc", d_logits, x)
  # d X = gamma_bar d_m (M-step) + d_logits mu^(t-1) (E-step): one [gamma_bar | d_logits].
  return d_mu_prev, jnp.concatenate([gamma_bar, d_logits], axis=-1), d_m


def _attention_bwd(num_iters, eta, temperature, remat, saved, cotangents):
  x, mu_prev, ms, mu_last, gammas, norms = saved
  d_x_tilde, d_mus, d_gammas = cotangents
  # Eq. 10, x_tilde = gamma^(T) mu^(T): its gamma^(T) term joins the last iteration's.
  d_mu = jnp.einsum("bnk,bnc->bkc", gammas[-1] if not remat else
                    _e_step(x, mu_prev[-1], temperature), d_x_tilde)
  d_gammas = d_gammas.at[-1].add(jnp.einsum("bnc,bkc->bnk", d_x_tilde, mu_last))

  if remat:
    # A reverse scan: one iteration's gamma (recomputed from mu^(t-1), one more
    # E-step) and its d X term live at a time, so memory stays flat in T.
    def step(carry, inputs):
      d_mu, d_x = carry
      mu, m, d_mu_t, d_gamma_t = inputs
      gamma = _e_step(x, mu, temperature)
      norm = em._EPS_N + jnp.sum(gamma, axis=1, keepdims=True)
      d_mu, pair_l, d_m = _iteration_bwd(x, eta, temperature, d_mu, d_mu_t, d_gamma_t,
                                         gamma, norm, m)
      d_x = d_x + jnp.einsum("bnj,bjc->bnc", pair_l, jnp.concatenate([d_m, mu], axis=1))
      return (d_mu, d_x), None

    (d_mu, d_x), _ = jax.lax.scan(step, (d_mu, jnp.zeros_like(x)),
                                  (mu_prev, ms, d_mus, d_gammas), reverse=True)
    return d_x, d_mu

  lhs, rhs = [], []
  for t in reversed(range(num_iters)):
    d_mu, pair_l, d_m = _iteration_bwd(x, eta, temperature, d_mu, d_mus[t], d_gammas[t],
                                       gammas[t], norms[t][:, None, :], ms[t])
    lhs.append(pair_l)
    rhs.append(jnp.concatenate([d_m, mu_prev[t]], axis=1))
  # Every iteration's d X in one matmul of inner size 2KT.
  d_x = jnp.einsum("bnj,bjc->bnc", jnp.concatenate(lhs, -1), jnp.concatenate(rhs, 1))
  return d_x, d_mu


_attention.defvjp(_attention_fwd, _attention_bwd)


def hem_attention(x, mu0, *, num_iters, eta, temperature, remat=False):
  """em.hem_iterations (dot kernel, no l2 normalisation) + em.r_step, fast backward.

  Args:
    x: [B, N, C] features; mu0: [K, C] or [B, K, C] initial bases.
    num_iters, eta, temperature: as em.hem_iterations.
    remat: keep only mu per iteration for the backward pass and recompute gamma
      (memory flat in T, one more E-step matmul per iteration).

  Returns:
    (x_tilde [B, N, C], em.HEMOutput), both differentiable in x and mu0.
  """
  if not isinstance(num_iters, int) or num_iters < 1:
    raise ValueError(f"hem_attention: num_iters must be an int >= 1, got {num_iters!r}")
  dtype = em._wide_dtype(x, mu0)
  x = x.astype(dtype)
  mu0 = em._batched(mu0, x.shape[0]).astype(dtype)
  x_tilde, mus, gammas = _attention(x, mu0, num_iters, float(eta), float(temperature), remat)
  return x_tilde, em.HEMOutput(mu=mus[-1], gamma=gammas[-1], mus=mus, gammas=gammas)
