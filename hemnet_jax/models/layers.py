"""Small layer helpers shared by the ResNet, the head and the HEM unit."""

import jax
import jax.numpy as jnp
from jax import lax


@jax.custom_vjp
def pointwise(x, w):
  """x [..., C] @ w [C, D]: a 1x1 convolution as a matmul."""
  return jnp.einsum("...c,cd->...d", x, w)


def _pointwise_fwd(x, w):
  return pointwise(x, w), (x, w)


def _pointwise_bwd(saved, d_y):
  x, w = saved
  x2, d_y2 = x.reshape(-1, x.shape[-1]), d_y.reshape(-1, d_y.shape[-1])
  # d w = x^T d_y contracts the long pixel axis of both. Left to itself, XLA:CPU runs
  # that as a transposed-operand dot outside its fast GEMM fusions, concurrently with
  # them; an explicit, materialised x^T (the barrier keeps XLA from folding it back)
  # makes it a plain row-major GEMM. Measured both ways (BENCHMARKS.md): faster in the
  # HEM unit, slower in ResNet-101's train step, so only the HEM unit asks for it.
  x_t = lax.optimization_barrier(x2.T)
  d_w = jnp.dot(x_t, d_y2).astype(w.dtype)
  d_x = jnp.dot(d_y2, w.T.astype(d_y2.dtype)).reshape(x.shape).astype(x.dtype)
  return d_x, d_w


pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)


@jax.custom_vjp
def pointwise_given_transpose(x, x_t, w):
  """pointwise(x, w) for x [B, ..., C], whose weight gradient reads x_t [B, C, prod(...)].

  x_t must be x channels-first (it gets no gradient): for a caller that has a cheaper
  way to make it than transposing x, e.g. the HEM unit's R-step, whose output comes
  from a matmul that can just as well write it channels-first.
  """
  return jnp.einsum("...c,cd->...d", x, w)


def _pointwise_given_transpose_fwd(x, x_t, w):
  return pointwise_given_transpose(x, x_t, w), (x_t, w)


def _pointwise_given_transpose_bwd(saved, d_y):
  x_t, w = saved
  d_y3 = d_y.reshape(d_y.shape[0], -1, d_y.shape[-1])
  d_w = jnp.einsum("bcn,bnd->cd", x_t.astype(d_y.dtype), d_y3).astype(w.dtype)
  d_x = jnp.dot(d_y, w.T.astype(d_y.dtype))
  return d_x, jnp.zeros_like(x_t), d_w


pointwise_given_transpose.defvjp(_pointwise_given_transpose_fwd, _pointwise_given_transpose_bwd)


def _is_channels_last(dimension_numbers):
  """Flax's nn.Conv layout: NHWC inputs, HWIO kernels, NHWC outputs."""
  if dimension_numbers is None:
    return False
  dn = lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), dimension_numbers)
  return dn.lhs_spec == (0, 3, 1, 2) and dn.rhs_spec == (3, 2, 0, 1) and dn.out_spec == (0, 3, 1, 2)


def _is_zero_padding(padding):
  if isinstance(padding, str):
    return padding in ("SAME", "VALID")  # the same thing for a 1x1 kernel
  return all(tuple(p) == (0, 0) for p in padding)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, row_major_weight_grad=False, lhs_t=None, **kwargs):
  """`lax.conv_general_dilated` for Flax's channels-last nn.Conv, 1x1 kernels as a matmul.

  A 1x1 convolution is a matmul over channels; written as one, XLA runs it (and, above
  all, its weight gradient, which it otherwise lowers to a convolution with an
  H x W window) through its GEMM: on a 2-core CPU the HEM unit's two 1x1 convs at
  65 x 65 x 512 run forward + backward much faster (BENCHMARKS.md has the figures).
  A strided 1x1 kernel (ResNet's downsampling shortcut) is the matmul of the strided
  input. Anything else goes to XLA's convolution unchanged. `row_major_weight_grad` and
  `lhs_t` (lhs channels-first, [B, C, H * W]) choose how the weight gradient is formed
  (`pointwise`, `pointwise_given_transpose`).
  """
  one_by_one = (lhs.ndim == 4 and rhs.ndim == 4 and rhs.shape[:2] == (1, 1)
                and _is_channels_last(dimension_numbers) and feature_group_count == 1
                and not kwargs and _is_zero_padding(padding)
                and all(d == 1 for d in (lhs_dilation or (1, 1)))
                and all(d == 1 for d in (rhs_dilation or (1, 1))))
  if not one_by_one:
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    precision=precision, **kwargs)
  sh, sw = window_strides
  if (sh, sw) != (1, 1):
    lhs = lhs[:, ::sh, ::sw, :]
  if lhs_t is not None and (sh, sw) == (1, 1) and precision is None:
    return pointwise_given_transpose(lhs, lhs_t, rhs[0, 0])
  if row_major_weight_grad and precision is None:
    return pointwise(lhs, rhs[0, 0])
  return jnp.einsum("bhwc,cd->bhwd", lhs, rhs[0, 0], precision=precision)
