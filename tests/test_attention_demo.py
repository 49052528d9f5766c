"""The attention experiment: the `hemnet_context` set, the no-attention head, its config."""

import importlib.util
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from helpers import ROOT, tiny_config

from hemnet_jax.data import shapes, shapes_context
from hemnet_jax.training import config as config_lib, evaluation, loop
from hemnet_jax.models.hem_unit import BASES
from hemnet_jax.models.hemnet import HEMNet

S = shapes_context.IMAGE_SIZE


def _layouts(n, seed=7):
  """n layouts as render_example draws them: [(x, y, r, is_key, group)]."""
  out = []
  for i in range(n):
    rng = np.random.default_rng([seed, i])
    groups = [(True, 0), (False, 0), (False, 0), (True, 1), (False, 1), (False, 1), (False, 1)]
    placed = shapes_context._layout(rng, groups)
    if placed is not None:
      out.append(placed)
  return out


def test_layout_keeps_keys_far_from_their_decoys_and_objects_apart():
  layouts = _layouts(40)
  assert len(layouts) >= 5  # the densest layout (2 groups, 3 decoys each) fits at times
  for placed in layouts:
    for i, (x, y, r, key, g) in enumerate(placed):
      assert r <= x <= S - r and r <= y <= S - r  # whole object in the frame
      for px, py, pr, pkey, pg in placed[:i]:
        d = np.hypot(x - px, y - py)
        assert d >= r + pr + shapes_context.GAP
        if g == pg and key != pkey:
          assert d >= shapes_context.MIN_KEY_DISTANCE


def test_examples_are_deterministic_and_labelled_by_group():
  for i in range(30):
    image, label = shapes_context.render_example(np.random.default_rng([0, i]))
    again, label_again = shapes_context.render_example(np.random.default_rng([0, i]))
    np.testing.assert_array_equal(image, again)
    np.testing.assert_array_equal(label, label_again)
    assert image.shape == (S, S, 3) and image.dtype == np.uint8 and label.shape == (S, S)
    classes = set(np.unique(label)) - {0}
    assert 1 <= len(classes) <= shapes_context.MAX_GROUPS
    assert classes <= set(range(1, shapes_context.NUM_CLASSES))
    # A key plus 2-3 decoys of radius >= 11 per class: decoys dominate each class's pixels.
    for c in classes:
      assert (label == c).sum() > 2 * np.pi * shapes_context.DECOY_RADIUS[0] ** 2 * 0.9


def test_the_key_is_drawn_in_its_class_colour():
  assert shapes_context.KEY_COLOURS
  for i in range(20):
    image, label = shapes_context.render_example(np.random.default_rng([0, i]))
    (c,) = set(np.unique(label)) - {0}
    colour = np.asarray(shapes_context.PALETTE[c], np.float32)
    near = np.abs(image.astype(np.float32) - colour).max(-1) < 4 * shapes.NOISE_SIGMA
    # At least a quarter of the smallest key's disc (a star fills about a third of it).
    assert (near & (label == c)).sum() > 0.25 * np.pi * shapes_context.KEY_RADIUS[0] ** 2


def test_decoys_look_alike_whatever_their_class():
  """A decoy's pixels are drawn from its colours and shared texture alone: swapping the
  class a group gets leaves the image unchanged, only the label changes."""
  rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
  image_a = np.zeros((S, S, 3), np.float32)
  image_b = np.zeros((S, S, 3), np.float32)
  label_a = np.zeros((S, S), np.uint8)
  label_b = np.zeros((S, S), np.uint8)
  colours = (np.array([200, 10, 10], np.float32), np.array([10, 10, 200], np.float32))
  shapes_context._paint(image_a, label_a, rng_a, 1, shapes._disc, shapes._dots, (40, 50), 13, colours)
  shapes_context._paint(image_b, label_b, rng_b, 3, shapes._disc, shapes._dots, (40, 50), 13, colours)
  np.testing.assert_array_equal(image_a, image_b)
  assert set(np.unique(label_a)) == {0, 1} and set(np.unique(label_b)) == {0, 3}


def test_group_colours_are_far_apart():
  rng = np.random.default_rng(0)
  for _ in range(20):
    (a1, b1), (a2, b2) = shapes_context._group_colours(rng, 2)
    for u in (a1, b1):
      for v in (a2, b2):
        assert np.linalg.norm(u - v) > shapes_context.MIN_GROUP_COLOUR_DISTANCE


def test_builder_prepares_both_splits(tmp_path, monkeypatch):
  monkeypatch.setattr(shapes_context, "NUM_TRAIN", 6)
  monkeypatch.setattr(shapes_context, "NUM_VALIDATION", 3)
  builder = tfds.builder("hemnet_context", data_dir=tmp_path, file_format="array_record")
  builder.download_and_prepare()
  source = builder.as_data_source("validation")
  assert len(source) == 3 and len(builder.as_data_source("train")) == 6
  ids = [source[i]["id"] for i in range(3)]  # tfds orders examples by a hash of their key
  ex = source[[i.decode() if isinstance(i, bytes) else i for i in ids].index("validation_000001")]
  image, label = shapes_context.render_example(np.random.default_rng([1, 1]))
  np.testing.assert_array_equal(ex["image"], image)
  np.testing.assert_array_equal(ex["label"], label)


def _model(head):
  return HEMNet(num_classes=5, stage_sizes=(1, 1, 1, 1), width=4, stem_width=8,
                head_channels=16, decoder_channels=8, aux_channels=8, head=head,
                hem={"num_bases": 4, "num_iters": 2})


def test_fcn_head_is_the_hem_head_without_its_unit():
  # Shapes only: traced with eval_shape, not run op by op.
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  init = lambda head: jax.eval_shape(lambda x: _model(head).init(jax.random.key(1), x), x)
  hem_vars, fcn_vars = init("hem"), init("fcn")
  assert "hem" in hem_vars["params"] and BASES in hem_vars
  assert "hem" not in fcn_vars["params"] and BASES not in fcn_vars
  # Everything else is the same module tree with the same shapes.
  strip = lambda tree: {k: v for k, v in tree.items() if k != "hem"}
  shapes_of = lambda tree: jax.tree.map(lambda a: a.shape, tree)
  assert shapes_of(strip(hem_vars["params"])) == shapes_of(fcn_vars["params"])
  logits, aux = jax.eval_shape(_model("fcn").apply, fcn_vars, x)
  assert logits.shape == (2, 32, 32, 5) and aux.shape == (2, 32, 32, 5)


def test_fcn_head_trains_and_evaluates(data_dir, tmp_path):
  config = tiny_config(data_dir, **{"model.head": "fcn", "train.num_steps": 2,
                                    "data.eval_split": "validation[:4]", "data.eval_batch_size": 4})
  summary = loop.train_and_evaluate(config, tmp_path)
  assert summary["step"] == 2 and np.isfinite(summary["miou"])
  assert json.loads((tmp_path / "config.json").read_text())["model"]["head"] == "fcn"
  result = evaluation.run(config, tmp_path)  # restores the checkpoint without a HEM unit
  assert result["elbo_per_iter"] == [] and result["miou"] == pytest.approx(summary["miou"])


def test_head_is_validated():
  config = config_lib.default_config()
  config.model.head = "none"
  with pytest.raises(ValueError, match="config.model.head"):
    config_lib.validate(config)


def test_attention_demo_config_is_the_demo_on_hemnet_context():
  spec = importlib.util.spec_from_file_location("attention_demo",
                                                ROOT / "configs" / "attention_demo.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  assert (config.data.name, config.data.num_classes) == ("hemnet_context", shapes_context.NUM_CLASSES)
  assert (config.hem.eta, config.hem.num_iters, config.model.head) == (0.5, 3, "hem")
  assert module.get_config("emanet").hem.eta == 1.0
  config_lib.validate(config)
