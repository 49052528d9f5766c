"""Small layer helpers shared by the ResNet, the head and the HEM unit."""

import functools

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
  # them, and writes d_y transposed from inside the fusion that makes it (strided, slow);
  # an explicit, materialised x^T (the barrier keeps XLA from folding it back) makes it a
  # plain row-major GEMM. Faster in the HEM unit and in ResNet-101's train step
  # (BENCHMARKS.md).
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


def _taps(x, kernel, strides, dilation, padding):
  """The kh * kw shifted, strided views of NHWC x under a k x k window, [B, Ho, Wo, C] each."""
  (pt, pb), (pl, pr) = padding
  x = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  b, h, w, c = x.shape
  ho = (h - dilation[0] * (kernel[0] - 1) - 1) // strides[0] + 1
  wo = (w - dilation[1] * (kernel[1] - 1) - 1) // strides[1] + 1
  return [lax.slice(x, (0, i * dilation[0], j * dilation[1], 0),
                    (b, i * dilation[0] + (ho - 1) * strides[0] + 1,
                     j * dilation[1] + (wo - 1) * strides[1] + 1, c), (1, strides[0], strides[1], 1))
          for i in range(kernel[0]) for j in range(kernel[1])]


def _im2col(x, kernel, strides, dilation, padding):
  """[B * Ho * Wo, kh * kw * C]: each output pixel's window, tap-major (HWIO's row order)."""
  taps = _taps(x, kernel, strides, dilation, padding)
  return jnp.concatenate(taps, axis=-1).reshape(-1, len(taps) * x.shape[-1]), taps[0].shape[1:3]


def _col2im(d_cols, x_shape, kernel, strides, dilation, padding):
  """The adjoint of _im2col: each tap's gradient, spread back (strides as interior padding).

  Separably: the taps of each kernel row are spread along the width and added, then the
  kernel rows along the height. Spreading all kh * kw taps over the whole map at once
  evaluates kh * kw padded reads per output element in one fusion, which XLA:CPU runs
  far slower (BENCHMARKS.md).
  """
  (pt, pb), (pl, pr) = padding
  b, h, w, c = x_shape
  kh, kw = kernel
  ho, wo = d_cols.shape[1:3]
  d_cols = d_cols.reshape(b, ho, wo, kh, kw, c)
  zero = jnp.zeros((), d_cols.dtype)

  def spread(t, axis, start, size, stride):  # t's rows at start, start + stride, ...
    pads = [(0, 0, 0)] * 4
    end = size - start - (t.shape[axis] - 1) * stride - 1
    pads[axis] = (start, end, stride - 1)
    return lax.pad(t, zero, pads)

  d_x = None
  for i in range(kh):
    row = None
    for j in range(kw):
      tap = spread(d_cols[:, :, :, i, j], 2, j * dilation[1], w + pl + pr, strides[1])
      row = tap if row is None else row + tap
    row = spread(row, 1, i * dilation[0], h + pt + pb, strides[0])
    d_x = row if d_x is None else d_x + row
  return d_x[:, pt:pt + h, pl:pl + w]


def _weight_grad(cols, d_y):
  """cols^T d_y: the weight gradient of a GEMM over windows (cols [pixels, k], d_y [pixels, n]).

  That dot contracts the major (pixel) axis of both operands, which XLA:CPU runs as an
  Eigen contraction outside its GEMM fusions, asynchronously, on threads that then compete
  with the GEMMs running beside it. Formed as (d_y^T cols)^T instead, it is a row-major
  GEMM whose only extra copy is d_y^T (n x pixels, the narrow side); the barriers keep XLA
  from folding the transposes back into the dot (BENCHMARKS.md).
  """
  d_y_t = lax.optimization_barrier(d_y.T)
  return lax.optimization_barrier(jnp.dot(d_y_t, cols)).T


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_as_gemm(x, w, strides, dilation, padding):
  """A k x k convolution of NHWC x with HWIO w as one GEMM over its windows (im2col).

  XLA:CPU's own convolutions, above all their weight and input gradients, run far
  below its GEMM; written as im2col + GEMM, the forward and both gradients are GEMMs
  (BENCHMARKS.md). padding: ((top, bottom), (left, right)).
  """
  kh, kw, c_in, c_out = w.shape
  cols, (ho, wo) = _im2col(x, (kh, kw), strides, dilation, padding)
  y = jnp.dot(cols, w.reshape(kh * kw * c_in, c_out))
  return y.reshape(x.shape[0], ho, wo, c_out)


def _conv_as_gemm_fwd(x, w, strides, dilation, padding):
  return conv_as_gemm(x, w, strides, dilation, padding), (x, w)


def _conv_as_gemm_bwd(strides, dilation, padding, saved, d_y):
  x, w = saved
  kh, kw, c_in, c_out = w.shape
  # The windows again rather than kept from the forward: a copy, where keeping them
  # would hold kh * kw times the input per layer until the backward reaches it.
  cols, _ = _im2col(x, (kh, kw), strides, dilation, padding)
  d_y2 = d_y.reshape(-1, c_out)
  d_w = _weight_grad(cols, d_y2).reshape(w.shape).astype(w.dtype)
  d_cols = jnp.dot(d_y2, w.reshape(-1, c_out).T.astype(d_y2.dtype))
  d_x = _col2im(d_cols.reshape(*d_y.shape[:3], -1), x.shape, (kh, kw), strides, dilation, padding)
  return d_x.astype(x.dtype), d_w


conv_as_gemm.defvjp(_conv_as_gemm_fwd, _conv_as_gemm_bwd)


# A dilated convolution on a small map mostly multiplies zero padding: at dilation 16 on a
# 17 x 17 map, 86 % of a 3 x 3's taps (ResNet-101's last block at crop 129). From this share
# of padding taps on, a stride-1 convolution runs as `conv_as_shifted_gemms`, which skips
# them; below it, im2col's one big GEMM is faster (BENCHMARKS.md).
SHIFTED_GEMMS_FROM_PADDING = 0.25


def padding_share(x_shape, kernel, dilation, padding):
  """The share of (output pixel, tap) pairs of a stride-1 convolution that read padding."""
  share = 1.0
  for a in (0, 1):
    size, (lo, hi) = x_shape[1 + a], padding[a]
    out = size + lo + hi - dilation[a] * (kernel[a] - 1)
    inside = sum(min(out, size + lo - i * dilation[a]) - max(0, lo - i * dilation[a])
                 for i in range(kernel[a]) if min(out, size + lo - i * dilation[a])
                 > max(0, lo - i * dilation[a]))
    share *= inside / (out * kernel[a])
  return 1.0 - share


def conv_as_shifted_gemms(x, w, dilation, padding):
  """A stride-1 k x k convolution of NHWC x with HWIO w as one GEMM per tap, each over the
  output rectangle whose windows read the input (not padding) at that tap, added up.

  The FLOPs of the valid taps only, against im2col's every tap at every pixel; each GEMM
  is narrower (inner size C_in, not k^2 C_in). Weight gradients as row-major GEMMs
  (`pointwise`), as the CPU, the only backend that takes this path, prefers.
  """
  (pt, pb), (pl, pr) = padding
  b, h, wd, _ = x.shape
  kh, kw, _, c_out = w.shape
  ho, wo = h + pt + pb - dilation[0] * (kh - 1), wd + pl + pr - dilation[1] * (kw - 1)
  y = None
  for i in range(kh):
    for j in range(kw):
      di, dj = i * dilation[0] - pt, j * dilation[1] - pl  # input index - output index
      r0, r1, c0, c1 = max(0, -di), min(ho, h - di), max(0, -dj), min(wo, wd - dj)
      if r1 <= r0 or c1 <= c0:
        continue  # this tap reads only padding
      part = pointwise(x[:, r0 + di:r1 + di, c0 + dj:c1 + dj], w[i, j])
      part = jnp.pad(part, ((0, 0), (r0, ho - r1), (c0, wo - c1), (0, 0)))
      y = part if y is None else y + part
  return jnp.zeros((b, ho, wo, c_out), jnp.result_type(x, w)) if y is None else y


def _pool_taps(x, window, strides, padding):
  pads = ((0, 0), *padding, (0, 0))
  x = jnp.pad(x, pads, constant_values=jnp.array(-jnp.inf, x.dtype))
  return _taps(x, window, strides, (1, 1), ((0, 0), (0, 0)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool_of_taps(x, window, strides, padding):
  """Max pooling of NHWC x as the maximum of its window's strided taps (padding with -inf).

  The backward gives each output's gradient to the first of its window's taps, in row-major
  order, that holds the maximum: the input select-and-scatter chooses, so the gradients are
  XLA's own. padding: ((top, bottom), (left, right)).
  """
  return functools.reduce(jnp.maximum, _pool_taps(x, window, strides, padding))


def _max_pool_of_taps_fwd(x, window, strides, padding):
  y = max_pool_of_taps(x, window, strides, padding)
  return y, (x, y)


def _max_pool_of_taps_bwd(window, strides, padding, saved, d_y):
  x, y = saved
  taken = jnp.zeros(y.shape, bool)
  d_taps = []
  for tap in _pool_taps(x, window, strides, padding):
    first = (tap == y) & ~taken
    taken = taken | first
    d_taps.append(jnp.where(first, d_y, jnp.zeros((), d_y.dtype)))
  d_cols = jnp.concatenate(d_taps, axis=-1)  # tap-major, as _im2col's windows
  return (_col2im(d_cols, x.shape, window, strides, (1, 1), padding).astype(x.dtype),)


max_pool_of_taps.defvjp(_max_pool_of_taps_fwd, _max_pool_of_taps_bwd)


def tap_max_pools():
  """Whether max pooling runs as the maximum of its taps (`max_pool_of_taps`): on the CPU,
  where XLA's reduce-window (with the argmax its JVP carries) and select-and-scatter are slow
  (BENCHMARKS.md, "The max pool as the maximum of its taps"). Accelerators keep XLA's pooling."""
  return jax.default_backend() == "cpu"


def max_pool(x, window, strides, padding):
  """Max pooling of NHWC x, padding ((top, bottom), (left, right)) with -inf, as PyTorch's."""
  window, strides = tuple(window), tuple(strides)
  padding = tuple(tuple(p) for p in padding)
  if tap_max_pools():
    return max_pool_of_taps(x, window, strides, padding)
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1),
                           ((0, 0), *padding, (0, 0)))


def _explicit_padding(padding, x_shape, kernel, strides, dilation):
  if isinstance(padding, str):
    window = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
    return tuple(lax.padtype_to_pads(x_shape[1:3], window, strides, padding))
  return tuple(tuple(p) for p in padding)


def gemm_convolutions():
  """Whether k x k convolutions run as im2col GEMMs: on the CPU, where that is faster.

  Accelerators keep XLA's convolution (cuDNN's, the TPU's), which is their fast path.
  """
  return jax.default_backend() == "cpu"


def row_major_weight_grads():
  """Whether 1x1 convolutions form their weight gradient as a row-major GEMM
  (`pointwise`) unless told: on the CPU, where that is faster; accelerators keep the
  einsum, whose layout their compilers choose."""
  return jax.default_backend() == "cpu"


def materialize(x):
  """x, computed once into a buffer, where XLA:CPU would recompute it inside each consumer.

  XLA:CPU fuses a cheap elementwise producer into every consumer that reads it, copying
  it where it has several. In a ResNet the residual stream y_k = relu(bn(conv(y_k-1)) +
  y_k-1) is elementwise from block to block, so each block's epilogue, forward and
  backward, recomputed every earlier block's of its stage (23 deep in ResNet-101's
  stage 3: quadratic in depth; BENCHMARKS.md has the before/after). XLA strips
  `lax.optimization_barrier` before fusing, but it never copies a division, which it
  counts as expensive: so x / 1, with a 1 it cannot fold (v * 0 + 1 is not folded for
  floats, as inf * 0 is NaN; the select keeps it 1 when v is inf or NaN). v is x itself,
  element by element, so no element depends on another and a sharded x needs no
  communication. Exact in every dtype. Accelerators fuse with a cost model and get x
  unchanged.
  """
  if jax.default_backend() != "cpu":
    return x
  v = lax.stop_gradient(x)
  one = jnp.where(jnp.isfinite(v), v * 0 + 1, jnp.ones_like(v))
  return x / one


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, row_major_weight_grad=None, lhs_t=None, **kwargs):
  """`lax.conv_general_dilated` for Flax's channels-last nn.Conv, as GEMMs where that is faster.

  A 1x1 convolution is a matmul over channels; written as one, XLA runs it (and, above
  all, its weight gradient, which it otherwise lowers to a convolution with an
  H x W window) through its GEMM: on a 2-core CPU the HEM unit's two 1x1 convs at
  65 x 65 x 512 run forward + backward much faster (BENCHMARKS.md has the figures).
  A strided 1x1 kernel (ResNet's downsampling shortcut) is the matmul of the strided
  input. On the CPU, larger kernels become im2col GEMMs (`conv_as_gemm`), or one GEMM per
  tap where most taps would read zero padding (`conv_as_shifted_gemms`). Anything else
  (grouped or input-dilated convolutions; larger kernels on accelerators) goes to XLA's
  convolution unchanged. `row_major_weight_grad` (None: `row_major_weight_grads()`)
  and `lhs_t` (lhs channels-first, [B, C, H * W]) choose how the weight gradient is
  formed (`pointwise`, `pointwise_given_transpose`).
  """
  one_by_one = (lhs.ndim == 4 and rhs.ndim == 4 and rhs.shape[:2] == (1, 1)
                and _is_channels_last(dimension_numbers) and feature_group_count == 1
                and not kwargs and _is_zero_padding(padding)
                and all(d == 1 for d in (lhs_dilation or (1, 1)))
                and all(d == 1 for d in (rhs_dilation or (1, 1))))
  if not one_by_one:
    plain = (lhs.ndim == 4 and _is_channels_last(dimension_numbers) and feature_group_count == 1
             and not kwargs and precision is None and all(d == 1 for d in (lhs_dilation or (1, 1))))
    if plain and gemm_convolutions():
      dilation = tuple(rhs_dilation or (1, 1))
      pads = _explicit_padding(padding, lhs.shape, rhs.shape[:2], window_strides, dilation)
      if (tuple(window_strides) == (1, 1) and min(min(p) for p in pads) >= 0
          and padding_share(lhs.shape, rhs.shape[:2], dilation, pads)
          >= SHIFTED_GEMMS_FROM_PADDING):
        return conv_as_shifted_gemms(lhs, rhs, dilation, pads)
      return conv_as_gemm(lhs, rhs, tuple(window_strides), dilation, pads)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    precision=precision, **kwargs)
  sh, sw = window_strides
  if (sh, sw) != (1, 1):
    lhs = lhs[:, ::sh, ::sw, :]
  if lhs_t is not None and (sh, sw) == (1, 1) and precision is None:
    return pointwise_given_transpose(lhs, lhs_t, rhs[0, 0])
  if row_major_weight_grad is None:
    row_major_weight_grad = row_major_weight_grads()
  if row_major_weight_grad and precision is None:
    return pointwise(lhs, rhs[0, 0])
  return jnp.einsum("bhwc,cd->bhwd", lhs, rhs[0, 0], precision=precision)
