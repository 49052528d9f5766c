"""Batch normalisation with a hand-written backward: nn.BatchNorm's variables, fewer passes.

Autodiff of nn.BatchNorm's training forward (mean, mean of squares, normalise) gives a
backward of three reductions and several elementwise passes over the activation; the
closed form needs one pass that sums g and g * x_hat and one that writes
dx = scale * rstd * (g - mean(g) - x_hat * mean(g * x_hat)). On the CPU, where each pass
over an activation costs memory traffic, that is the faster step (BENCHMARKS.md).
"""

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def _wide(dtype):
  return jnp.promote_types(dtype, jnp.float32)  # statistics in float32 at least (float64 stays)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def normalize_batch(x, scale, bias, epsilon):
  """(y, mean, var) of x [..., C] over every axis but the last; var is the biased variance."""
  return _forward(x, scale, bias, epsilon)[0]


def _forward(x, scale, bias, epsilon):
  axes = tuple(range(x.ndim - 1))
  xw = x.astype(_wide(x.dtype))
  mean = jnp.mean(xw, axes)
  var = jnp.maximum(0.0, jnp.mean(xw * xw, axes) - mean * mean)  # as nn.BatchNorm's fast variance
  rstd = lax.rsqrt(var + epsilon)
  y = (xw - mean) * (scale * rstd) + bias
  return (y, mean, var), (x, mean, rstd, scale)


def _backward(epsilon, saved, cotangents):
  del epsilon
  x, mean, rstd, scale = saved
  g, g_mean, g_var = cotangents
  axes = tuple(range(x.ndim - 1))
  n = x.size // x.shape[-1]
  x_hat = (x.astype(mean.dtype) - mean) * rstd
  g = g.astype(mean.dtype)
  sum_g, sum_g_xhat = jnp.sum(g, axes), jnp.sum(g * x_hat, axes)
  # d/dx of y, then of the returned mean and var (zero in training: they only feed the
  # running statistics, but a caller may differentiate them).
  d_x = (scale * rstd) * (g - sum_g / n - x_hat * (sum_g_xhat / n)) \
      + (g_mean + x_hat * (2.0 * g_var / rstd)) / n
  return d_x.astype(x.dtype), sum_g_xhat.astype(scale.dtype), sum_g.astype(scale.dtype)


normalize_batch.defvjp(_forward, _backward)


class BatchNorm(nn.Module):
  """nn.BatchNorm over the last axis, the same variables (params scale, bias; batch_stats
  mean, var) and running-average update, with `normalize_batch`'s backward in training."""
  use_running_average: Optional[bool] = None
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = None

  @nn.compact
  def __call__(self, x, use_running_average=None):
    use_running_average = nn.merge_param("use_running_average", self.use_running_average,
                                         use_running_average)
    c = x.shape[-1]
    wide = _wide(x.dtype)
    ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), (c,))
    ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), (c,))
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    if use_running_average:  # as nn.BatchNorm, types promoted op by op
      y = (x - ra_mean.value) * (lax.rsqrt(ra_var.value + self.epsilon) * scale) + bias
    else:
      y, mean, var = normalize_batch(x, scale.astype(wide), bias.astype(wide), self.epsilon)
      if not self.is_initializing():
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y.astype(self.dtype or wide)  # nn.BatchNorm's: the inputs' and params' type
