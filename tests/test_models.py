"""The HEM unit, the dilated ResNet and the HEMNet model."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hemnet_jax import hem
from hemnet_jax.models import resnet
from hemnet_jax.models.hem_unit import ATTENTION, BASES, STATS, HEMUnit
from hemnet_jax.models.hemnet import HEMNet

MUTABLE = ["batch_stats", BASES, STATS]


def unit_and_vars(**kw):
  unit = HEMUnit(num_bases=4, num_iters=3, bn_momentum=0.9, **kw)
  x = jax.random.normal(jax.random.key(0), (2, 5, 6, 8))
  v = unit.init(jax.random.key(1), x)
  return unit, {k: v[k] for k in ("params", "batch_stats", BASES)}, x


def test_mu0_is_l2_normalised_and_not_a_parameter():
  _, v, _ = unit_and_vars()
  mu0 = v[BASES]["mu0"]
  assert mu0.shape == (4, 8)
  np.testing.assert_allclose(jnp.linalg.norm(mu0, axis=-1), 1.0, rtol=1e-5)
  assert "mu0" not in v["params"]


def test_mu0_moves_only_in_training_by_the_moving_average():
  unit, v, x = unit_and_vars()
  _, upd = unit.apply(v, x, train=False, mutable=MUTABLE)
  np.testing.assert_array_equal(upd[BASES]["mu0"], v[BASES]["mu0"])
  np.testing.assert_array_equal(upd["batch_stats"]["bn_out"]["mean"], v["batch_stats"]["bn_out"]["mean"])

  _, upd = unit.apply(v, x, train=True, mutable=MUTABLE)
  # Independent recomputation: the unit's 1x1 conv, T iterations, batch mean of mu^(T).
  p = v["params"]["conv_in"]
  feats = (jnp.einsum("bhwc,cd->bhwd", x, p["kernel"][0, 0]) + p["bias"]).reshape(2, 30, 8)
  out = hem.hem_iterations(feats, v[BASES]["mu0"], num_iters=3, eta=0.5,
                           temperature=math.sqrt(8))
  expected = 0.9 * v[BASES]["mu0"] + 0.1 * out.mu.mean(0)
  np.testing.assert_allclose(upd[BASES]["mu0"], expected, rtol=1e-5, atol=1e-6)
  assert not np.allclose(upd["batch_stats"]["bn_out"]["mean"], v["batch_stats"]["bn_out"]["mean"])


def test_eval_num_iters_differs_from_train():
  unit, v, x = unit_and_vars(num_iters_eval=7)
  _, upd = unit.apply(v, x, train=False, mutable=[STATS])
  assert upd[STATS]["elbo"][0].shape == (7,)
  _, upd = unit.apply(v, x, train=True, mutable=MUTABLE)
  assert upd[STATS]["elbo"][0].shape == (3,)
  y7 = unit.apply(v, x, train=False)
  y3 = unit.clone(num_iters_eval=None).apply(v, x, train=False)
  assert not np.allclose(y7, y3)


def test_emanet_mode_sends_no_gradient_through_the_attention():
  loss = lambda unit, v, x: jax.grad(lambda p, x: jnp.sum(unit.apply(
      {**v, "params": p}, x, train=True, mutable=MUTABLE)[0] ** 2), argnums=(0, 1))(v["params"], x)
  unit, v, x = unit_and_vars(eta=1.0, backprop=False, l2_normalize=True, temperature=1.0)
  gp, gx = loss(unit, v, x)
  assert not np.any(gp["conv_in"]["kernel"]) and not np.any(gp["conv_in"]["bias"])
  assert np.any(gp["conv_out"]["kernel"]) and np.any(gx)  # the identity path still trains
  unit, v, x = unit_and_vars()
  gp, _ = loss(unit, v, x)
  assert np.any(gp["conv_in"]["kernel"])


def test_bfloat16_unit_keeps_float32_attention():
  unit, v, x = unit_and_vars(dtype=jnp.bfloat16)
  y, upd = unit.apply(v, x.astype(jnp.bfloat16), train=True, mutable=[*MUTABLE, ATTENTION])
  assert y.dtype == jnp.bfloat16
  # The responsibilities come out of a float32 softmax although the unit computes in bfloat16.
  assert upd[ATTENTION]["gamma"][0].dtype == jnp.float32
  assert upd[BASES]["mu0"].dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(y, np.float32)))


@pytest.mark.parametrize("os_, stage3, stage4", [(8, (1, 2, 2, 2), (2, 8, 16)),
                                                   (16, (1, 1, 1, 1), (1, 4, 8))])
def test_dilations_follow_emanet(os_, stage3, stage4):
  """EMANet: first block of a dilated stage at half dilation, multi-grid (1, 2, 4) in stage 4."""
  (_, (_, d3), (_, d4)), grid = resnet.stage_layout(os_)
  assert resnet.block_dilations(4, d3, ()) == stage3
  assert resnet.block_dilations(3, d4, grid) == stage4


@pytest.mark.parametrize("stem", ["deep", "torchvision"])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_resnet_feature_strides(stem, output_stride):
  net = resnet.ResNet(stage_sizes=(1, 2, 1, 3), width=4, stem=stem, stem_width=8,
                      output_stride=output_stride)
  x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  # Shapes only: traced, not run (running it op by op compiles every op).
  feats = jax.eval_shape(lambda x: net.apply(net.init(jax.random.key(0), x), x), x)
  sizes = [f.shape[1] for f in feats]
  assert sizes == [16, 8, 8 if output_stride == 8 else 4, 8 if output_stride == 8 else 4]
  assert [f.shape[-1] for f in feats] == [16, 32, 64, 128]


def test_hemnet_outputs_and_aux_head():
  model = HEMNet(num_classes=5, stage_sizes=(1, 1, 1, 1), width=4, stem_width=8, head_channels=16,
                 hem={"num_bases": 4}, decoder_channels=8, aux_channels=8, bn_momentum=0.9)
  x = jax.ShapeDtypeStruct((2, 40, 48, 3), jnp.float32)
  outputs = lambda model: jax.eval_shape(
      lambda x: model.apply(model.init(jax.random.key(1), x), x), x)
  logits, aux = outputs(model)
  assert logits.shape == aux.shape == (2, 40, 48, 5)
  logits, aux = outputs(model.clone(aux_weight=0.0))
  assert aux is None and logits.shape == (2, 40, 48, 5)
