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

`hem_attention_folded` takes the unit's 1x1 conv_in with it: X = X_in W + b. The
iterations touch X only through X a^T (E-step, and the backward's d gamma_bar) and
g^T X (M-step, and the backward's d logits^T X), both linear, so W and b fold into the
K x C factors and X is never formed; and d X above has rank at most 2KT, so conv_in's
gradients come from its factors: d X_in = P (Q W^T), d W = (X_in^T P) Q. At K = 64,
T = 3, C = 512 that drops a quarter of the unit's matmul FLOPs.
`python -m benchmarks.hem_layer --sections ablation` measures both (BENCHMARKS.md).
"""

import functools

import jax
import jax.numpy as jnp

from hemnet_jax.hem import em


def _scores(feats, a):
  """X a^T [B, N, K] for a [B, K, C]; feats = (X_in, W, b), X = X_in W + b (W None: X_in)."""
  x_in, w, b = feats
  if w is None:
    return jnp.einsum("bnc,bkc->bnk", x_in, a)
  scores = jnp.einsum("bnc,bkc->bnk", x_in, jnp.einsum("bkd,cd->bkc", a, w))
  return scores if b is None else scores + jnp.einsum("bkd,d->bk", a, b)[:, None, :]


def _project(feats, g):
  """g^T X [B, K, C] for g [B, N, K]."""
  x_in, w, b = feats
  p = jnp.einsum("bnk,bnc->bkc", g, x_in)
  if w is None:
    return p
  p = jnp.einsum("bkc,cd->bkd", p, w)
  return p if b is None else p + jnp.sum(g, axis=1)[:, :, None] * b


def _e_step(feats, mu, temperature):
  """Eq. 8, the temperature folded into the K x C bases instead of the N x K logits."""
  return jax.nn.softmax(_scores(feats, mu / temperature), axis=-1)


def _forward(feats, mu0, num_iters, eta, temperature):
  """The scan of em.hem_iterations, keeping what the backward pass needs."""
  def iteration(mu, _):
    gamma = _e_step(feats, mu, temperature)
    norm = em._EPS_N + jnp.sum(gamma, axis=1)  # [B, K], EMANet's normaliser (Eq. 5)
    # Eqs. 9 and 13; dividing the K x C product instead of the N x K gamma.
    m = _project(feats, gamma) / norm[:, :, None]
    new = (1.0 - eta) * mu + eta * m
    return new, (mu, new, gamma, norm, m)

  # Unrolled: a while loop runs its body as a separate computation, one trip at a time; straight
  # line, XLA fuses and schedules across the iterations. T is small (BENCHMARKS.md has the gain).
  mu, (mu_prev, mus, gammas, norms, ms) = jax.lax.scan(iteration, mu0, None, length=num_iters,
                                                       unroll=True)
  x_tilde = jnp.einsum("bnk,bkc->bnc", gammas[-1], mu)  # Eq. 10
  return x_tilde, mus, gammas, (mu_prev, norms, ms)


def _save(feats, mu0, num_iters, eta, temperature, remat):
  x_tilde, mus, gammas, (mu_prev, norms, ms) = _forward(feats, mu0, num_iters, eta, temperature)
  # remat: keep only K x C arrays per iteration; gamma is recomputed from mu^(t-1).
  saved = (feats, mu_prev, ms, mus[-1], None if remat else gammas, None if remat else norms)
  return (x_tilde, mus, gammas), saved


def _iteration_bwd(feats, eta, temperature, d_mu, d_mu_t, d_gamma_t, gamma, norm, m):
  """Iteration t backwards: (d mu^(t-1), the pair whose product is this step's d X).

  d_mu is the cotangent of mu^(t) from later iterations, d_mu_t and d_gamma_t those
  of this iteration's outputs; norm is EMANet's sum_n gamma [B, 1, K], m the M-step."""
  d_mu = d_mu + d_mu_t
  d_m = eta * d_mu  # Eq. 13
  gamma_bar = gamma / norm
  # Eq. 9 (m = gamma_bar^T x): to gamma_bar, then through EMANet's normaliser to gamma.
  d_gamma_bar = _scores(feats, d_m)
  # The normaliser's term sum_n d_gamma_bar gamma_bar = sum_c d_m m: a K x C sum instead
  # of one over the pixels (which XLA:CPU fused into the GEMM above, much slower: BENCHMARKS.md).
  d_g = (d_gamma_bar - jnp.sum(d_m * m, axis=-1)[:, None, :]) / norm
  d_g = d_g + d_gamma_t
  # Eq. 8: the softmax, then logits = x mu^T / temperature.
  d_logits = gamma * (d_g - jnp.sum(d_g * gamma, axis=-1, keepdims=True)) / temperature
  # Eqs. 14-18: the highway (1 - eta) plus the E-step's path to mu^(t-1).
  d_mu_prev = (1.0 - eta) * d_mu + _project(feats, d_logits)
  # d X = gamma_bar d_m (M-step) + d_logits mu^(t-1) (E-step): one [gamma_bar | d_logits].
  return d_mu_prev, jnp.concatenate([gamma_bar, d_logits], axis=-1), d_m


def _backward(num_iters, eta, temperature, remat, saved, cotangents):
  """(d X as (d_x,) or as factors (P, Q) with d X = P Q, d mu0)."""
  feats, mu_prev, ms, mu_last, gammas, norms = saved
  d_x_tilde, d_mus, d_gammas = cotangents
  # Eq. 10, x_tilde = gamma^(T) mu^(T): its gamma^(T) term joins the last iteration's.
  d_mu = jnp.einsum("bnk,bnc->bkc", gammas[-1] if not remat else
                    _e_step(feats, mu_prev[-1], temperature), d_x_tilde)
  d_gammas = d_gammas.at[-1].add(jnp.einsum("bnc,bkc->bnk", d_x_tilde, mu_last))

  if remat:
    # A reverse scan: one iteration's gamma (recomputed from mu^(t-1), one more
    # E-step) and its d X term live at a time, so memory stays flat in T.
    def step(carry, inputs):
      d_mu, d_x = carry
      mu, m, d_mu_t, d_gamma_t = inputs
      gamma = _e_step(feats, mu, temperature)
      norm = em._EPS_N + jnp.sum(gamma, axis=1, keepdims=True)
      d_mu, pair_l, d_m = _iteration_bwd(feats, eta, temperature, d_mu, d_mu_t, d_gamma_t,
                                         gamma, norm, m)
      d_x = d_x + jnp.einsum("bnj,bjc->bnc", pair_l, jnp.concatenate([d_m, mu], axis=1))
      return (d_mu, d_x), None

    d_x0 = jnp.zeros(d_x_tilde.shape, d_x_tilde.dtype)
    (d_mu, d_x), _ = jax.lax.scan(step, (d_mu, d_x0), (mu_prev, ms, d_mus, d_gammas), reverse=True)
    return (d_x,), d_mu

  lhs, rhs = [], []
  for t in reversed(range(num_iters)):
    d_mu, pair_l, d_m = _iteration_bwd(feats, eta, temperature, d_mu, d_mus[t], d_gammas[t],
                                       gammas[t], norms[t][:, None, :], ms[t])
    lhs.append(pair_l)
    rhs.append(jnp.concatenate([d_m, mu_prev[t]], axis=1))
  # Every iteration's d X in one matmul of inner size 2KT (or its two factors).
  return (jnp.concatenate(lhs, -1), jnp.concatenate(rhs, 1)), d_mu


def _dense(factors):
  return factors[0] if len(factors) == 1 else jnp.einsum("bnj,bjc->bnc", *factors)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _attention(x, mu0, num_iters, eta, temperature, remat):
  x_tilde, mus, gammas, _ = _forward((x, None, None), mu0, num_iters, eta, temperature)
  return x_tilde, mus, gammas


def _attention_fwd(x, mu0, num_iters, eta, temperature, remat):
  return _save((x, None, None), mu0, num_iters, eta, temperature, remat)


def _attention_bwd(num_iters, eta, temperature, remat, saved, cotangents):
  factors, d_mu = _backward(num_iters, eta, temperature, remat, saved, cotangents)
  return _dense(factors), d_mu


_attention.defvjp(_attention_fwd, _attention_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _folded(x_in, w, b, mu0, num_iters, eta, temperature, remat):
  x_tilde, mus, gammas, _ = _forward((x_in, w, b), mu0, num_iters, eta, temperature)
  return x_tilde, mus, gammas


def _folded_fwd(x_in, w, b, mu0, num_iters, eta, temperature, remat):
  return _save((x_in, w, b), mu0, num_iters, eta, temperature, remat)


def _transposed(x):
  """x [B, N, C] channels-first, materialised: the weight gradient's pixel contraction is
  then a row-major GEMM (see models/layers.py's `pointwise` for why)."""
  return jax.lax.optimization_barrier(jnp.swapaxes(x, 1, 2))


def _folded_bwd(num_iters, eta, temperature, remat, saved, cotangents):
  (x_in, w, b), *_ = saved
  factors, d_mu = _backward(num_iters, eta, temperature, remat, saved, cotangents)
  c_in, c = w.shape
  rank = factors[0].shape[-1]  # 2KT
  # d X = P Q with P [B, N, 2KT], Q [B, 2KT, C]: conv_in's gradients from the factors cost
  # 2 x 2KT C_in per pixel, forming d X and then them 2KT C + 2 C C_in.
  if len(factors) == 2 and 2 * rank * c_in < rank * c + 2 * c * c_in:
    p, q = factors
    d_x_in = jnp.einsum("bnj,bjc->bnc", p, jnp.einsum("bjd,cd->bjc", q, w))
    d_w = jnp.einsum("bcj,bjd->cd", jnp.einsum("bcn,bnj->bcj", _transposed(x_in), p), q)
    d_b = jnp.einsum("bj,bjd->d", jnp.sum(p, axis=1), q)
  else:
    d_x = _dense(factors)
    d_x_in = jnp.einsum("bnd,cd->bnc", d_x, w)
    d_w = jnp.einsum("bcn,bnd->cd", _transposed(x_in), d_x)
    d_b = jnp.sum(d_x, axis=(0, 1))
  return d_x_in, d_w, None if b is None else d_b.astype(b.dtype), d_mu


_folded.defvjp(_folded_fwd, _folded_bwd)


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
  _check(num_iters)
  dtype = em._wide_dtype(x, mu0)
  x = x.astype(dtype)
  mu0 = em._batched(mu0, x.shape[0]).astype(dtype)
  x_tilde, mus, gammas = _attention(x, mu0, num_iters, float(eta), float(temperature), remat)
  return x_tilde, em.HEMOutput(mu=mus[-1], gamma=gammas[-1], mus=mus, gammas=gammas)


def hem_attention_folded(x_in, w, b, mu0, *, num_iters, eta, temperature, remat=False):
  """hem_attention(x_in @ w + b, mu0, ...) without forming x_in @ w + b (module docstring).

  Args:
    x_in: [B, N, C_in] the input of a 1x1 convolution w [C_in, C] with bias b [C] (or None).
    mu0, num_iters, eta, temperature, remat: as hem_attention.

  Returns:
    As hem_attention, differentiable in x_in, w, b and mu0; the same values, rounded
    differently.
  """
  _check(num_iters)
  dtype = em._wide_dtype(x_in, w, mu0)
  x_in, w = x_in.astype(dtype), w.astype(dtype)
  b = None if b is None else b.astype(dtype)
  mu0 = em._batched(mu0, x_in.shape[0]).astype(dtype)
  x_tilde, mus, gammas = _folded(x_in, w, b, mu0, num_iters, float(eta), float(temperature), remat)
  return x_tilde, em.HEMOutput(mu=mus[-1], gamma=gammas[-1], mus=mus, gammas=gammas)


def _check(num_iters):
  if not isinstance(num_iters, int) or num_iters < 1:
    raise ValueError(f"hem_attention: num_iters must be an int >= 1, got {num_iters!r}")
