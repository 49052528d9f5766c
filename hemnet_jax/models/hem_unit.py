"""The HEM unit: EMANet's EM attention unit with the M-step replaced by the N-step."""

import functools
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from hemnet_jax import hem
from hemnet_jax.hem import diagnostics as hem_diagnostics
from hemnet_jax.hem import vjp as hem_vjp
from hemnet_jax.models import layers

# The collection that holds mu0. It is not "params": the optimizer never sees it;
# training moves it by a moving average instead (EMANet's mechanism).
BASES = "hem_bases"
# Per-iteration ELBO, sown only when the caller makes this collection mutable.
STATS = "hem_stats"
# The last iteration's responsibilities gamma [B, H, W, K] (attention maps), sown
# only when the caller makes this collection mutable.
ATTENTION = "hem_attention"
# conv_in's output X [B, H, W, C] (the iterations' input features), sown only when the
# caller makes this collection mutable (the Figure 3 probes and attention maps read it).
FEATURES = "hem_features"
# Submodule names that tools look up in the variables.
CONV_IN = "conv_in"
MU0 = "mu0"
# The last iteration's gamma summarised (hem_diagnostics.entropy_sums: entropy sum, mass
# per basis, pixel count), sown only when the caller makes this collection mutable.
DIAGNOSTICS = "hem_diagnostics"


def init_mu0(key, num_bases, channels, dtype=jnp.float32):
  """K bases drawn from N(0, sqrt(2/K)) and l2-normalised over C, as EMANet."""
  mu0 = jax.random.normal(key, (num_bases, channels), dtype) * math.sqrt(2.0 / num_bases)
  return hem.l2_normalize(mu0)


def reseed_duplicates(mu0, x, err, threshold, normalize=False):
  """mu0 [K, C] with every basis whose cosine to an earlier basis exceeds `threshold`
  replaced by a feature x_n [B, N, C]: the worst reconstructed ones (largest err [B, N]),
  a different pixel for each basis.

  Why: bases that coincide get identical gamma and identical updates from then on, so a
  duplicate is lost for good; the moving average drives mu0 there whenever the features
  vary along few directions more than the temperature (docs/collapse.md). A re-seeded
  basis starts where the current bases explain the batch worst, as a k-means split.
  """
  k = mu0.shape[0]
  unit = hem.l2_normalize(mu0)
  duplicate = jnp.any(jnp.tril(unit @ unit.T > threshold, -1), axis=1)  # [K]
  flat_x, flat_err = x.reshape(-1, x.shape[-1]), err.reshape(-1)
  _, worst = jax.lax.top_k(flat_err, k)
  seeds = flat_x[worst].astype(mu0.dtype)
  seeds = hem.l2_normalize(seeds) if normalize else seeds
  return jnp.where(duplicate[:, None], seeds, mu0)


class _Conv1x1Params(nn.Module):
  """nn.Conv(features, (1, 1))'s parameters, created as nn.Conv creates them (same names,
  shapes, initialisers and random keys), for a caller that applies them itself."""
  features: int

  @nn.compact
  def __call__(self, in_features):
    kernel = self.param("kernel", nn.linear.default_kernel_init,
                        (1, 1, in_features, self.features), jnp.float32)
    return kernel, self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)


class HEMUnit(nn.Module):
  """1x1 conv -> T HEM iterations -> R-step -> ReLU -> 1x1 conv + BN -> + x -> ReLU.

  Attributes mirror the paper: num_bases K, num_iters T_train, num_iters_eval T_eval
  (None: same as T_train, Table 2 evaluates others), eta (Eq. 13), temperature
  sigma^2 (None: sqrt(C), Sec. 5.1). The EMANet baseline is eta=1, backprop=False,
  l2_normalize=True, temperature=1.

  Three implementation choices, same values either way (tests compare them in float64):
  backward "custom" trains through hem/vjp.py's hand-written backward pass (HEMNet's
  case only: dot kernel, backprop, no l2 normalisation), "autodiff" through jax.grad of
  hem/em.py; conv1x1 "matmul" runs the 1x1 convs as matmuls (models/layers.py), "xla"
  as XLA convolutions; fold_conv_in (with "custom" and "matmul") folds conv_in into the
  iterations' K x C factors instead of forming its output (hem/vjp.py's
  `hem_attention_folded`). conv_in's parameters are nn.Conv's either way.
  """
  num_bases: int = 64
  num_iters: int = 3
  num_iters_eval: Optional[int] = None
  eta: float = 0.5
  temperature: Optional[float] = None
  l2_normalize: bool = False
  backprop: bool = True
  kernel: str = "dot"
  mu0_momentum: float = 0.9
  renorm_mu0: bool = False  # EMANet's release does not renormalise mu0 after averaging
  # Beyond the paper and EMANet (docs/collapse.md): after the moving average, a basis of mu0
  # whose cosine to an earlier basis exceeds this is re-seeded (`reseed_duplicates`). None: off.
  reseed_cosine: Optional[float] = None
  remat: bool = False  # recompute iterations in the backward pass: memory flat in T
  backward: str = "custom"  # "custom" (hem/vjp.py) or "autodiff"
  conv1x1: str = "matmul"  # "matmul" or "xla"
  fold_conv_in: bool = True
  bn_momentum: float = 0.9997
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    b, h, w, c = x.shape
    mu0 = self.variable(BASES, MU0, lambda: init_mu0(self.make_rng("params"), self.num_bases, c))
    temperature = hem.default_temperature(c) if self.temperature is None else self.temperature
    num_iters = self.num_iters if train or self.num_iters_eval is None else self.num_iters_eval

    idn = x
    if self.backward not in ("custom", "autodiff"):
      raise ValueError(f"HEMUnit.backward must be 'custom' or 'autodiff', got {self.backward!r}")
    custom = self.backward == "custom" and self.backprop
    if custom and (self.kernel != "dot" or self.l2_normalize):
      raise ValueError("HEMUnit.backward='custom' covers the dot kernel without l2_normalize; "
                       f"got kernel={self.kernel!r}, l2_normalize={self.l2_normalize}: set "
                       "backward='autodiff' (config.hem.backward)")
    if self.conv1x1 == "matmul":
      # 1x1 convs as matmuls whose weight gradient is a row-major GEMM (models/layers.py).
      conv1x1 = functools.partial(layers.conv_general_dilated, row_major_weight_grad=True)
      conv_out_fn = lambda y_t: functools.partial(conv1x1, lhs_t=y_t)
    elif self.conv1x1 == "xla":
      conv1x1, conv_out_fn = jax.lax.conv_general_dilated, lambda y_t: jax.lax.conv_general_dilated
    else:
      raise ValueError(f"HEMUnit.conv1x1 must be 'matmul' or 'xla', got {self.conv1x1!r}")
    if custom and self.fold_conv_in and self.conv1x1 == "matmul":
      # HEMNet's case, conv_in folded into the iterations: its output x is never formed
      # for the gradient, only (without one) for the statistics and re-seeding below.
      kernel, bias = _Conv1x1Params(c, name=CONV_IN)(c)
      x_in, kernel, bias = nn.dtypes.promote_dtype(x.reshape(b, h * w, c), kernel[0, 0], bias,
                                                    dtype=self.dtype)
      x_tilde, out = hem_vjp.hem_attention_folded(
          x_in, kernel, bias, mu0.value, num_iters=num_iters, eta=self.eta,
          temperature=temperature, remat=self.remat)
      x = jax.lax.stop_gradient(jnp.dot(x_in, kernel) + bias)  # unused ones cost nothing
    elif custom:
      # HEMNet's case: the same math with a hand-written backward pass (hem/vjp.py).
      x = nn.Conv(c, (1, 1), use_bias=True, dtype=self.dtype, name=CONV_IN,
                  conv_general_dilated=conv1x1)(x).reshape(b, h * w, c)
      x_tilde, out = hem_vjp.hem_attention(x, mu0.value, num_iters=num_iters, eta=self.eta,
                                           temperature=temperature, remat=self.remat)
    else:
      x = nn.Conv(c, (1, 1), use_bias=True, dtype=self.dtype, name=CONV_IN,
                  conv_general_dilated=conv1x1)(x).reshape(b, h * w, c)
      out = hem.hem_iterations(x, mu0.value, num_iters=num_iters, eta=self.eta,
                               temperature=temperature, l2_normalize=self.l2_normalize,
                               backprop=self.backprop, kernel=self.kernel, remat=self.remat)
      # gamma and mu are constants to autodiff when backprop=False (EMANet).
      x_tilde = hem.r_step(out.gamma, out.mu)  # Eq. 10
    gamma, mu = out.gamma, out.mu
    x_tilde = x_tilde.astype(self.dtype).reshape(b, h, w, c)

    if self.is_mutable_collection(FEATURES):
      self.sow(FEATURES, "x", x.reshape(b, h, w, c))

    if self.is_mutable_collection(ATTENTION):
      self.sow(ATTENTION, "gamma", gamma.reshape(b, h, w, self.num_bases))

    if self.is_mutable_collection(DIAGNOSTICS):  # scalars and [K]: cheap to keep every step
      sums = hem_diagnostics.entropy_sums(jax.lax.stop_gradient(gamma))
      for name, value in zip(("entropy_sum", "mass", "count"), sums):
        self.sow(DIAGNOSTICS, name, jnp.asarray(value, jnp.float32))

    if self.is_mutable_collection(STATS):
      xs = jax.lax.stop_gradient(x)
      elbos = jax.vmap(lambda m, g: hem.elbo(xs, m, g, temperature).mean())(out.mus, out.gammas)
      self.sow(STATS, "elbo", elbos)  # Eq. 3 after each iteration, [T]

    if train and not self.is_initializing():
      mu_mean = jnp.mean(jax.lax.stop_gradient(mu), axis=0)  # over the global batch
      new = self.mu0_momentum * mu0.value + (1.0 - self.mu0_momentum) * mu_mean
      new = hem.l2_normalize(new) if self.renorm_mu0 else new
      if self.reseed_cosine is not None:
        err = jnp.sum(jnp.square(jax.lax.stop_gradient(x - x_tilde.reshape(b, h * w, c))), -1)
        new = reseed_duplicates(new, jax.lax.stop_gradient(x), err, self.reseed_cosine,
                                normalize=self.renorm_mu0)
      mu0.value = new

    y = nn.relu(x_tilde)
    # conv_out's weight gradient wants relu(x_tilde) channels-first. Eq. 10 with its operands
    # swapped writes it so in one matmul over K; the transpose it replaces ran next to
    # conv_out's GEMM on a 2-core CPU and slowed both (BENCHMARKS.md).
    y_t = jax.lax.stop_gradient(nn.relu(jnp.einsum("bkc,bnk->bcn", hem.em._batched(mu, b), gamma)))
    y = nn.Conv(c, (1, 1), use_bias=False, dtype=self.dtype, name="conv_out",
                conv_general_dilated=conv_out_fn(y_t.astype(self.dtype)))(y)
    y = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=1e-5,
                     dtype=self.dtype, name="bn_out")(y)
    return nn.relu(y + idn)
