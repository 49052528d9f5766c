"""The hand-written backward pass of the HEM iterations, and the 1x1-conv-as-matmul layer."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hemnet_jax import hem
from hemnet_jax.hem import vjp as hem_vjp
from hemnet_jax.models import hem_unit, layers


def _assert_close_to_scale(got, want, tol):
  """|got - want| <= tol * max|want| leaf by leaf: float32 sums cancel, so elementwise
  relative errors of tiny entries say nothing; a wrong formula is off by O(1)."""
  for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    scale = float(jnp.abs(w).max())
    assert scale > 0
    assert float(jnp.abs(g - w).max()) <= tol * scale, (float(jnp.abs(g - w).max()), scale)


def _reference(x, mu0, num_iters, eta, temperature):
  """Autodiff of the plain functions: what hem_attention must equal."""
  out = hem.hem_iterations(x, mu0, num_iters=num_iters, eta=eta, temperature=temperature)
  return hem.r_step(out.gamma, out.mu), out.mus, out.gammas


@pytest.mark.parametrize("num_iters,eta,remat,batched_mu0",
                         [(1, 0.5, False, False), (3, 0.3, False, False), (3, 1.0, False, True),
                          (3, 0.3, True, False), (4, 0.7, True, True)])
def test_forward_and_every_cotangent_match_autodiff_in_float64(num_iters, eta, remat, batched_mu0):
  with jax.enable_x64(True):
    key = jax.random.key(num_iters)
    x = jax.random.normal(key, (2, 40, 8), jnp.float64)
    mu0 = jax.random.normal(jax.random.fold_in(key, 1), (2, 5, 8) if batched_mu0 else (5, 8),
                            jnp.float64)

    def fused(x, mu0):
      x_tilde, out = hem_vjp.hem_attention(x, mu0, num_iters=num_iters, eta=eta,
                                           temperature=2.0, remat=remat)
      return x_tilde, out.mus, out.gammas

    want, vjp_want = jax.vjp(lambda x, m: _reference(x, m, num_iters, eta, 2.0), x, mu0)
    got, vjp_got = jax.vjp(fused, x, mu0)
    for g, w in zip(got, want):
      assert g.dtype == jnp.float64
      np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-14)
    # A random cotangent on every output, including the per-iteration mus and gammas.
    cts = tuple(jax.random.normal(jax.random.fold_in(key, 10 + i), w.shape, w.dtype)
                for i, w in enumerate(want))
    for g, w in zip(vjp_got(cts), vjp_want(cts)):
      assert g.dtype == jnp.float64
      np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-13)


def test_half_precision_input_gets_float32_attention():
  x = jax.random.normal(jax.random.key(0), (1, 16, 8), jnp.bfloat16)
  mu0 = jax.random.normal(jax.random.key(1), (4, 8))
  x_tilde, out = hem_vjp.hem_attention(x, mu0, num_iters=2, eta=0.5, temperature=1.0)
  assert x_tilde.dtype == out.gamma.dtype == jnp.float32
  g = jax.grad(lambda x: hem_vjp.hem_attention(x, mu0, num_iters=2, eta=0.5,
                                               temperature=1.0)[0].sum())(x)
  assert g.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(g.astype(jnp.float32))))


def _unit_grads_float64(unit, shape):
  """d sum(sin(unit(x))) / d (params, x) in training mode, float64 end to end, and the
  unit's forward jaxpr as text (to check which implementation it traced)."""
  x = jax.random.normal(jax.random.key(0), shape, jnp.float64)
  variables = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64),
                                     unit.init(jax.random.key(1), x))
  state = {k: variables[k] for k in ("batch_stats", "hem_bases")}

  def grads():
    def loss(params, x):
      y, _ = unit.apply({"params": params, **state}, x, train=True, mutable=list(state))
      return jnp.sum(jnp.sin(y))
    return jax.grad(loss, argnums=(0, 1))(variables["params"], x)
  forward = jax.make_jaxpr(lambda v, x: unit.apply(v, x, train=True, mutable=list(state)))
  return grads(), str(forward(variables, x))


def _unit(**choices):
  return hem_unit.HEMUnit(num_bases=6, num_iters=3, eta=0.5, bn_momentum=0.9, dtype=jnp.float64,
                          **choices)


@pytest.mark.parametrize("fold_conv_in,custom_vjp", [(True, "_folded"), (False, "_attention")])
def test_hem_unit_gradients_equal_those_of_the_autodiff_path(fold_conv_in, custom_vjp):
  """backward="custom" (hem/vjp.py, conv_in folded in or not) against "autodiff" (jax.grad
  of hem/em.py): the same gradients (float64 end to end, so the comparison is not float32
  rounding)."""
  with jax.enable_x64(True):
    custom, custom_jaxpr = _unit_grads_float64(
        _unit(backward="custom", fold_conv_in=fold_conv_in), (2, 5, 5, 16))
    autodiff, autodiff_jaxpr = _unit_grads_float64(_unit(backward="autodiff"), (2, 5, 5, 16))
  # Different programs: only the custom one calls that custom VJP.
  assert f"name={custom_vjp}" in custom_jaxpr
  assert "name=_folded" not in autodiff_jaxpr and "name=_attention" not in autodiff_jaxpr
  assert ("name=_folded" in custom_jaxpr) == fold_conv_in
  _assert_close_to_scale(custom, autodiff, 1e-10)


@pytest.mark.parametrize("num_iters,c_in,remat,bias", [(3, 8, False, True), (3, 6, False, False),
                                                        (4, 6, False, True), (3, 8, True, True)])
def test_folded_conv_in_matches_attention_on_its_output_in_float64(num_iters, c_in, remat, bias):
  """hem_attention_folded(x_in, w, b) against hem_attention(x_in w + b): values and every
  cotangent (to x_in, w, b, mu0). K = 2: 2KT is below C = 8 at T = 3, where conv_in's
  gradients come from the factors of d X; at T = 4 with C_in = 6 they do not."""
  with jax.enable_x64(True):
    key = jax.random.key(num_iters)
    x_in = jax.random.normal(key, (2, 40, c_in), jnp.float64)
    w = jax.random.normal(jax.random.fold_in(key, 1), (c_in, 8), jnp.float64) / 3
    b = jax.random.normal(jax.random.fold_in(key, 2), (8,), jnp.float64) if bias else None
    mu0 = jax.random.normal(jax.random.fold_in(key, 3), (2, 8), jnp.float64)
    kw = {"num_iters": num_iters, "eta": 0.4, "temperature": 2.0, "remat": remat}

    def plain(x_in, w, b, mu0):
      x = x_in @ w if b is None else x_in @ w + b
      x_tilde, out = hem_vjp.hem_attention(x, mu0, **kw)
      return x_tilde, out.mus, out.gammas

    def folded(x_in, w, b, mu0):
      x_tilde, out = hem_vjp.hem_attention_folded(x_in, w, b, mu0, **kw)
      return x_tilde, out.mus, out.gammas

    want, vjp_want = jax.vjp(plain, x_in, w, b, mu0)
    got, vjp_got = jax.vjp(folded, x_in, w, b, mu0)
    for g, w_ in zip(got, want):
      np.testing.assert_allclose(g, w_, rtol=1e-12, atol=1e-14)
    cts = tuple(jax.random.normal(jax.random.fold_in(key, 10 + i), w_.shape, w_.dtype)
                for i, w_ in enumerate(want))
    grads_got, grads_want = vjp_got(cts), vjp_want(cts)
    assert (grads_got[2] is None) == (not bias)
    for g, w_ in zip(jax.tree_util.tree_leaves(grads_got), jax.tree_util.tree_leaves(grads_want)):
      assert g.dtype == jnp.float64
      np.testing.assert_allclose(g, w_, rtol=1e-10, atol=1e-13)


def test_folded_conv_in_keeps_the_parameters_and_saves_flops():
  """The folded unit has nn.Conv's conv_in parameters (names, shapes, initial values: old
  checkpoints and converters keep working) and its train step executes fewer FLOPs."""
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 64))
  units = {fold: hem_unit.HEMUnit(num_bases=8, num_iters=3, fold_conv_in=fold)
           for fold in (True, False)}
  variables = {fold: unit.init(jax.random.key(1), x) for fold, unit in units.items()}
  kept = ("params", "batch_stats", "hem_bases")  # the rest is sown, rounded differently
  equal = jax.tree_util.tree_map(lambda a, b: bool(jnp.array_equal(a, b)),
                                 {k: variables[True][k] for k in kept},
                                 {k: variables[False][k] for k in kept})
  assert all(jax.tree_util.tree_leaves(equal))
  assert variables[True]["params"]["conv_in"]["kernel"].shape == (1, 1, 64, 64)

  def flops(fold):
    state = {k: variables[fold][k] for k in ("batch_stats", "hem_bases")}
    def loss(params, x):
      y, _ = units[fold].apply({"params": params, **state}, x, train=True, mutable=list(state))
      return jnp.sum(y ** 2)
    cost = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(variables[fold]["params"], x).compile()
    cost = cost.cost_analysis()
    return (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]
  # Per pixel, unfolded conv_in costs 3 x 2 C^2 plus the 2 x 2KT C of forming d X;
  # folded, 2 x 2 x 2KT C: 30720 vs 12288 of the unit's roughly 70000.
  assert flops(True) < 0.85 * flops(False), (flops(True), flops(False))


def test_hem_unit_gradients_equal_those_with_xla_convolutions():
  """conv1x1="matmul" (a row-major GEMM for conv_in's weight gradient, the R-step's
  channels-first copy for conv_out's) against "xla" (XLA's convolutions), in float64."""
  with jax.enable_x64(True):
    matmul, matmul_jaxpr = _unit_grads_float64(_unit(conv1x1="matmul"), (2, 5, 7, 16))
    xla, xla_jaxpr = _unit_grads_float64(_unit(conv1x1="xla"), (2, 5, 7, 16))
  assert "conv_general_dilated" in xla_jaxpr and "conv_general_dilated" not in matmul_jaxpr
  assert set(matmul[0]) >= {"conv_in", "conv_out"}
  _assert_close_to_scale(matmul, xla, 1e-10)


@pytest.mark.parametrize("choices, message", [
    (dict(backward="custom", kernel="gaussian"), "backward='autodiff'"),
    (dict(backward="fast"), "'custom' or 'autodiff'"),
    (dict(conv1x1="winograd"), "'matmul' or 'xla'")])
def test_unsupported_choices_are_errors(choices, message):
  with pytest.raises(ValueError, match=message):
    hem_unit.HEMUnit(num_bases=2, **choices).init(jax.random.key(0), jnp.zeros((1, 2, 2, 4)))


def test_remat_unit_matches_and_recomputes():
  kw = dict(num_bases=6, num_iters=4, eta=0.5, bn_momentum=0.9)
  x = jax.random.normal(jax.random.key(0), (2, 5, 5, 16))
  variables = hem_unit.HEMUnit(**kw).init(jax.random.key(1), x)
  state = {k: variables[k] for k in ("batch_stats", "hem_bases")}

  def grads(remat):
    unit = hem_unit.HEMUnit(**kw, remat=remat)
    def loss(params):
      y, _ = unit.apply({"params": params, **state}, x, train=True, mutable=list(state))
      return jnp.sum(y ** 2)
    return jax.grad(loss)(variables["params"])

  _assert_close_to_scale(grads(True), grads(False), 1e-5)


@pytest.mark.parametrize("kernel,stride,padding", [(1, 1, "SAME"), (1, 1, ((0, 0), (0, 0))),
                                                    (1, 2, ((0, 0), (0, 0))), (3, 1, ((1, 1), (1, 1))),
                                                    (3, 2, ((1, 1), (1, 1)))])
@pytest.mark.parametrize("row_major_weight_grad,given_transpose",
                         [(False, False), (None, False), (True, False), (True, True)])
def test_conv_as_matmul_equals_xla_convolution(kernel, stride, padding, row_major_weight_grad,
                                               given_transpose):
  x = jax.random.normal(jax.random.key(0), (2, 9, 11, 5))
  plain = nn.Conv(8, (kernel, kernel), strides=stride, padding=padding)
  conv = functools.partial(layers.conv_general_dilated,
                           row_major_weight_grad=row_major_weight_grad)
  fast = nn.Conv(8, (kernel, kernel), strides=stride, padding=padding, conv_general_dilated=conv)
  v = plain.init(jax.random.key(1), x)
  np.testing.assert_allclose(fast.apply(v, x), plain.apply(v, x), rtol=1e-5, atol=1e-5)
  if given_transpose and kernel == 1 and stride == 1:  # lhs_t: x channels-first
    conv = functools.partial(conv, lhs_t=x.reshape(2, -1, 5).transpose(0, 2, 1))
    fast = nn.Conv(8, (kernel, kernel), strides=stride, padding=padding,
                   conv_general_dilated=conv)
  gp = jax.grad(lambda v, x: jnp.sum(plain.apply(v, x) ** 2), argnums=(0, 1))(v, x)
  gf = jax.grad(lambda v, x: jnp.sum(fast.apply(v, x) ** 2), argnums=(0, 1))(v, x)
  for a, b in zip(jax.tree_util.tree_leaves(gf), jax.tree_util.tree_leaves(gp)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  # 1x1 kernels become a matmul; larger ones too on the CPU (test_layers.py), else stay convolutions.
  jaxpr = str(jax.make_jaxpr(lambda v, x: fast.apply(v, x))(v, x))
  as_gemm = kernel == 1 or layers.gemm_convolutions()
  assert ("conv_general_dilated" in jaxpr) != as_gemm
  assert ("dot_general" in jaxpr) == as_gemm


def test_temperature_is_applied_as_in_eq_8():
  """Folding the temperature into mu changes nothing: compare gamma with the plain E-step."""
  x = jax.random.normal(jax.random.key(0), (1, 20, 8)) * 3
  mu0 = jax.random.normal(jax.random.key(1), (4, 8))
  for temperature in (1.0, math.sqrt(8.0), 10.0):
    _, out = hem_vjp.hem_attention(x, mu0, num_iters=1, eta=1.0, temperature=temperature)
    np.testing.assert_allclose(out.gamma, hem.e_step(x, mu0, temperature), rtol=1e-5, atol=1e-6)
