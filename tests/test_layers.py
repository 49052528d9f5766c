"""The convolutions written as GEMMs against XLA's convolution, values and gradients; the
1x1 weight gradients as row-major GEMMs; the residual stream computed once
(layers.materialize)."""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hemnet_jax.models import layers, resnet


def _xla_conv(x, w, stride, dilation, pad):
  return jax.lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                      rhs_dilation=(dilation, dilation),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


# Every 3x3 stride and dilation, and the torchvision stem's 7x7 stride 2.
@pytest.mark.parametrize("kernel,stride,dilation", [(3, s, d) for s in (1, 2) for d in (1, 2, 4)]
                         + [(7, 2, 1)])
def test_conv_as_gemm_equals_xla_convolution_in_float64(kernel, stride, dilation):
  pad = dilation * (kernel - 1) // 2  # PyTorch's: the output keeps the size (stride 1)
  with jax.enable_x64(True):
    # Odd and even sizes, so that a stride-2 window falls short of the last row or not.
    x = jax.random.normal(jax.random.key(0), (2, 11, 10, 5), jnp.float64)
    w = jax.random.normal(jax.random.key(1), (kernel, kernel, 5, 6), jnp.float64)
    d_y = jax.random.normal(jax.random.key(2), _xla_conv(x, w, stride, dilation, pad).shape,
                            jnp.float64)
    ours = lambda x, w: layers.conv_as_gemm(x, w, (stride, stride), (dilation, dilation),
                                            ((pad, pad), (pad, pad)))
    ref = lambda x, w: _xla_conv(x, w, stride, dilation, pad)
    y, vjp = jax.vjp(ours, x, w)
    y_ref, vjp_ref = jax.vjp(ref, x, w)
    assert y.dtype == jnp.float64
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(vjp(d_y), vjp_ref(d_y)):
      assert a.dtype == jnp.float64
      np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    # Two different programs were compared: ours has no convolution in it.
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda x, w: jnp.sum(ours(x, w) ** 2)))(x, w))
    assert "conv_general_dilated" not in jaxpr and "dot_general" in jaxpr


@pytest.mark.parametrize("strides,dilation,padding", [
    ((1, 1), (1, 1), ((1, 1), (1, 1))), ((2, 2), (1, 1), ((1, 1), (1, 1))),
    ((1, 1), (2, 4), ((2, 2), (4, 4))), ((2, 1), (1, 3), ((3, 0), (0, 2)))])
def test_col2im_is_the_adjoint_of_im2col(strides, dilation, padding):
  """<im2col(x), c> = <x, col2im(c)> for any c (float64): the input gradient of every
  conv_as_gemm, uneven padding and unequal strides and dilations included."""
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.key(0), (2, 11, 10, 3), jnp.float64)
    cols, (ho, wo) = layers._im2col(x, (3, 3), strides, dilation, padding)
    c = jax.random.normal(jax.random.key(1), cols.shape, jnp.float64)
    back = layers._col2im(c.reshape(2, ho, wo, -1), x.shape, (3, 3), strides, dilation, padding)
    assert back.shape == x.shape
    np.testing.assert_allclose(jnp.vdot(cols, c), jnp.vdot(x, back), rtol=1e-12)


# (map side, dilation, padding): stage 4's last block at crop 129 (17 x 17, dilation 16: 86 %
# of the taps read padding), a map smaller than the dilation (eight taps read nothing but
# padding), dilation 4 with PyTorch's padding, uneven padding, and a wide map with dilation 1
# (8 % padding: im2col's one GEMM).
@pytest.mark.parametrize("size,dilation,padding", [
    (17, 16, ((16, 16), (16, 16))), (5, 8, ((8, 8), (8, 8))), (9, 4, ((4, 4), (4, 4))),
    (7, 2, ((3, 1), (0, 4))), (24, 1, ((1, 1), (1, 1)))])
def test_convs_reading_mostly_padding_run_one_gemm_per_tap(size, dilation, padding):
  """conv_general_dilated routes a stride-1 convolution whose taps read padding at least
  SHIFTED_GEMMS_FROM_PADDING of the time to conv_as_shifted_gemms (a GEMM per tap that
  reads the input anywhere), the rest to im2col's one GEMM; both equal XLA's convolution
  in values and gradients (float64)."""
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.key(0), (2, size, size + 1, 3), jnp.float64)
    w = jax.random.normal(jax.random.key(1), (3, 3, 3, 4), jnp.float64)
    kw = {"rhs_dilation": (dilation, dilation), "dimension_numbers": ("NHWC", "HWIO", "NHWC")}
    ours = lambda x, w: layers.conv_general_dilated(x, w, (1, 1), padding, **kw)
    ref = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), padding, **kw)
    y, vjp = jax.vjp(ours, x, w)
    y_ref, vjp_ref = jax.vjp(ref, x, w)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    d_y = jax.random.normal(jax.random.key(2), y.shape, jnp.float64)
    for a, b in zip(vjp(d_y), vjp_ref(d_y)):
      np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    share = layers.padding_share(x.shape, (3, 3), (dilation, dilation), padding)
    shifted = share >= layers.SHIFTED_GEMMS_FROM_PADDING
    assert shifted == (size < 24)
    # Count the taps that read the input somewhere: one GEMM each when shifted, else one.
    ho, wo = y.shape[1:3]
    reaching = sum(
        any(0 <= o + i * dilation - padding[0][0] < size for o in range(ho))
        and any(0 <= o + j * dilation - padding[1][0] < size + 1 for o in range(wo))
        for i in range(3) for j in range(3))
    gemms = str(jax.make_jaxpr(ours)(x, w)).count("dot_general")
    assert gemms == (reaching if shifted else 1)
    assert "conv_general_dilated" not in str(jax.make_jaxpr(jax.grad(
        lambda x, w: jnp.sum(ours(x, w) ** 2), argnums=(0, 1)))(x, w))


@pytest.mark.parametrize("padding", ["SAME", "VALID", ((2, 0), (1, 3))])
def test_nn_conv_takes_the_gemm_path_on_the_cpu_with_any_padding(padding):
  x = jax.random.normal(jax.random.key(0), (2, 9, 8, 4))
  plain = nn.Conv(6, (3, 3), strides=2, padding=padding, kernel_dilation=2)
  fast = nn.Conv(6, (3, 3), strides=2, padding=padding, kernel_dilation=2,
                 conv_general_dilated=layers.conv_general_dilated)
  v = plain.init(jax.random.key(1), x)
  np.testing.assert_allclose(fast.apply(v, x), plain.apply(v, x), rtol=1e-5, atol=1e-5)
  jaxpr = str(jax.make_jaxpr(fast.apply)(v, x))
  assert layers.gemm_convolutions() == (jax.default_backend() == "cpu")
  assert ("conv_general_dilated" in jaxpr) != layers.gemm_convolutions()


def test_accelerators_keep_xla_convolution(monkeypatch):
  monkeypatch.setattr(layers.jax, "default_backend", lambda: "gpu")
  x = jnp.ones((1, 5, 5, 2))
  conv = nn.Conv(3, (3, 3), padding=((1, 1), (1, 1)), conv_general_dilated=layers.conv_general_dilated)
  v = conv.init(jax.random.key(0), x)
  assert "conv_general_dilated" in str(jax.make_jaxpr(conv.apply)(v, x))


def test_bfloat16_stays_bfloat16():
  x = jnp.ones((1, 6, 6, 4), jnp.bfloat16)
  w = jnp.ones((3, 3, 4, 2), jnp.bfloat16)
  f = functools.partial(layers.conv_as_gemm, strides=(1, 1), dilation=(1, 1), padding=((1, 1), (1, 1)))
  y, vjp = jax.vjp(f, x, w)
  assert y.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in vjp(y))


def _largest_fused_chain(compiled_text):
  """The most ReLUs (`maximum` ops made by jax.nn.relu) in any one fused computation of a
  compiled program."""
  bodies = re.findall(r"\n%[\w.\-]+ [^\n]*\{\n(.*?)\n\}\n", compiled_text, re.DOTALL)
  return max(len(re.findall(r" maximum\([^\n]*op_name=\"[^\"]*relu", body)) for body in bodies)


def test_materialize_is_exact_in_values_and_gradients():
  for dtype in (jnp.float32, jnp.bfloat16):
    x = jax.random.normal(jax.random.key(0), (3, 4, 5), dtype)
    y, vjp = jax.vjp(layers.materialize, x)
    assert y.dtype == dtype
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(x, np.float32))
    np.testing.assert_array_equal(np.asarray(vjp(x)[0], np.float32), np.asarray(x, np.float32))
  # Infs and NaNs, where each element's 1 is read from, stay as they were.
  x = jnp.array([[jnp.inf, 2.0, -3.0], [jnp.nan, 2.0, 5.0], [1.0, jnp.nan, 0.0]])
  np.testing.assert_array_equal(layers.materialize(x), x)


def test_the_residual_stream_is_not_recomputed_block_after_block():
  """A stage of 6 blocks, forward and backward: each block's output is computed once, not
  again inside every later block's epilogue (XLA:CPU's fusion did that; layers.materialize)."""
  net = resnet.ResNet(stage_sizes=(1, 1, 6, 1), width=4, stem_width=8)
  x = jnp.ones((1, 33, 33, 3))
  variables = net.init(jax.random.key(0), x)

  def loss(params):
    features, _ = net.apply({**variables, "params": params}, x, train=True,
                            mutable=["batch_stats"])
    return sum(jnp.sum(f) for f in features)

  compiled = jax.jit(jax.grad(loss)).lower(variables["params"]).compile().as_text()
  assert _largest_fused_chain(compiled) <= 2


def _pixel_contracting_dots(compiled_text, layers_named):
  """Dots of a compiled program, made by the named layers, that contract their left
  operand's major (pixel) axis: XLA:CPU's transposed-operand GEMM, which it runs outside
  its fast GEMM fusions."""
  return re.findall(r"= \S+ dot\([^\n]*lhs_contracting_dims=\{0\}[^\n]*op_name=\"[^\"]*/(?:"
                    + "|".join(layers_named) + ")/", compiled_text)


def test_weight_gradients_are_row_major_gemms_on_the_cpu(monkeypatch):
  """A bottleneck block's 1x1 convs (layers.pointwise by default on the CPU) and its 3x3
  (conv_as_gemm's backward): their weight gradients contract an explicit transpose, not the
  pixel axis of both operands as XLA lays it out."""
  norm = functools.partial(nn.BatchNorm, use_running_average=False)
  block = resnet.Bottleneck(planes=8, norm=norm)
  x = jax.random.normal(jax.random.key(0), (2, 9, 9, 32))  # 32 = 4 * 8: no downsample
  variables = block.init(jax.random.key(1), x)

  def compiled_grad():
    def loss(params):
      y, _ = block.apply({**variables, "params": params}, x, mutable=["batch_stats"])
      return jnp.sum(y ** 2)
    return jax.jit(jax.grad(loss)).lower(variables["params"]).compile().as_text()

  assert layers.row_major_weight_grads() == (jax.default_backend() == "cpu")
  assert not _pixel_contracting_dots(compiled_grad(),
                                     ("conv1", "conv2", "conv3", "downsample_conv"))
  # As XLA lays them out: one such dot per convolution.
  monkeypatch.setattr(layers, "_weight_grad", lambda cols, d_y: jnp.dot(cols.T, d_y))
  assert len(_pixel_contracting_dots(compiled_grad(), ("conv2",))) == 1
  monkeypatch.setattr(layers, "row_major_weight_grads", lambda: False)
  assert len(_pixel_contracting_dots(compiled_grad(), ("conv1", "conv3"))) == 2


def test_1x1_convs_keep_the_einsum_on_accelerators(monkeypatch):
  monkeypatch.setattr(layers.jax, "default_backend", lambda: "gpu")
  x = jnp.ones((1, 5, 5, 2))
  conv = nn.Conv(3, (1, 1), conv_general_dilated=layers.conv_general_dilated)
  v = conv.init(jax.random.key(0), x)
  assert "pointwise" not in str(jax.make_jaxpr(conv.apply)(v, x))
  forced = functools.partial(layers.conv_general_dilated, row_major_weight_grad=True)
  conv = nn.Conv(3, (1, 1), conv_general_dilated=forced)
  assert "pointwise" in str(jax.make_jaxpr(conv.apply)(v, x))


@pytest.mark.parametrize("size, window, strides, padding", [
    ((2, 9, 9, 3), (3, 3), (2, 2), ((1, 1), (1, 1))),   # ResNet's stem pool, odd size
    ((2, 10, 8, 4), (3, 3), (2, 2), ((1, 1), (1, 1))),  # even sizes
    ((1, 8, 8, 2), (2, 2), (2, 2), ((0, 0), (0, 0))),
    ((1, 7, 6, 2), (3, 3), (1, 1), ((1, 1), (1, 1))),
    ((1, 9, 7, 2), (3, 2), (2, 1), ((2, 0), (1, 0)))])
def test_max_pool_of_taps_equals_xla_pooling_in_float64(size, window, strides, padding):
  """Values and gradients equal to flax's nn.max_pool (XLA's reduce-window), with many ties:
  each output's gradient goes to the same input as select-and-scatter's."""
  with jax.enable_x64(True):
    x = jnp.round(jax.random.normal(jax.random.key(0), size, jnp.float64) * 2)  # ties
    xla = lambda x: nn.max_pool(x, window, strides=strides, padding=padding)
    taps = lambda x: layers.max_pool_of_taps(x, window, strides, padding)
    y, vjp = jax.vjp(xla, x)
    assert len(np.unique(np.asarray(x))) < x.size // 4  # the test has its ties
    y2, vjp2 = jax.vjp(taps, x)
    np.testing.assert_array_equal(y2, y)
    d_y = jax.random.normal(jax.random.key(1), y.shape, jnp.float64)
    np.testing.assert_allclose(vjp2(d_y)[0], vjp(d_y)[0], rtol=0, atol=1e-14)


def test_max_pool_takes_the_taps_on_the_cpu_and_xla_pooling_on_accelerators(monkeypatch):
  x = jax.random.normal(jax.random.key(0), (1, 9, 9, 2))
  def ops():  # a new function each time, so that nothing traced before is reused
    pool = lambda x: jnp.sum(layers.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1))) ** 2)
    return str(jax.make_jaxpr(jax.grad(pool))(x))
  xla_pooling = lambda ops: "reduce_window" in ops or "select_and_scatter" in ops
  assert layers.tap_max_pools() == (jax.default_backend() == "cpu")
  assert xla_pooling(ops()) != layers.tap_max_pools()
  monkeypatch.setattr(layers.jax, "default_backend", lambda: "gpu")
  assert xla_pooling(ops())
