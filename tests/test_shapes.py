"""Tests for the procedural `hemnet_shapes` dataset."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from hemnet_jax.data import shapes

S = shapes.IMAGE_SIZE


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  builder = shapes.HemnetShapes(data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare()
  return data_dir


@pytest.fixture(scope="module")
def sources(data_dir):
  builder = shapes.HemnetShapes(data_dir=data_dir, file_format="array_record")
  return {
      split: builder.as_data_source(split) for split in ("train", "validation")
  }


def _render_many(n, seed=123):
  return [
      shapes._render_with_masks(np.random.default_rng([seed, i]))
      for i in range(n)
  ]


def test_constants():
  assert shapes.NUM_CLASSES == 11
  assert len(shapes.CLASS_NAMES) == 11 and shapes.CLASS_NAMES[0] == "background"
  assert len(shapes.PALETTE) == 11 and len(set(shapes.PALETTE)) == 11


def test_split_sizes(sources):
  assert len(sources["train"]) == shapes.NUM_TRAIN == 3000
  assert len(sources["validation"]) == shapes.NUM_VALIDATION == 300


def test_shapes_dtypes_and_labels(sources):
  seen = set()
  for i in range(len(sources["train"])):
    example = sources["train"][i]
    assert example["image"].shape == (S, S, 3)
    assert example["image"].dtype == np.uint8
    assert example["label"].shape == (S, S)
    assert example["label"].dtype == np.uint8
    assert example["label"].max() < shapes.NUM_CLASSES
    seen.update(np.unique(example["label"]).tolist())
  assert seen == set(range(shapes.NUM_CLASSES))


def _index(example):
  """Example index from an id such as b"train_000017"."""
  return int(example["id"].decode().rsplit("_", 1)[1])


def test_ids_unique(sources):
  ids = [
      source[i]["id"].decode()
      for source in sources.values()
      for i in range(len(source))
  ]
  assert len(set(ids)) == len(ids) == 3300
  assert "train_000017" in ids and "validation_000000" in ids


def test_stored_examples_match_renderer(sources):
  for split, seed in shapes.SPLIT_SEEDS.items():
    for i in range(3):
      stored = sources[split][i]
      image, label = shapes.render_example(
          np.random.default_rng([seed, _index(stored)])
      )
      np.testing.assert_array_equal(stored["image"], image)
      np.testing.assert_array_equal(stored["label"], label)


def test_splits_differ(sources):
  train = [sources["train"][i]["image"] for i in range(10)]
  validation = [sources["validation"][i]["image"] for i in range(10)]
  for a in train:
    for b in validation:
      assert not np.array_equal(a, b)


def test_deterministic():
  for seed in (0, 7, 12345):
    image_a, label_a = shapes.render_example(np.random.default_rng(seed))
    image_b, label_b = shapes.render_example(np.random.default_rng(seed))
    np.testing.assert_array_equal(image_a, image_b)
    np.testing.assert_array_equal(label_a, label_b)
  other, _ = shapes.render_example(np.random.default_rng(1))
  assert not np.array_equal(image_a, other)


def test_colour_does_not_determine_class():
  # One sample per (image, class): the mean colour of that class's pixels.
  colours, classes = [], []
  for image, label, _ in _render_many(1000):
    for c in np.unique(label)[1:]:
      colours.append(image[label == c].mean(0))
      classes.append(c)
  colours, classes = np.asarray(colours), np.asarray(classes)
  global_mean = colours.mean(0)
  for c in range(1, shapes.NUM_CLASSES):
    assert np.abs(colours[classes == c].mean(0) - global_mean).max() < 20, c

  # A nearest-class-mean classifier on colour must stay near chance (10 %).
  half = len(classes) // 2
  centroids = np.stack(
      [colours[:half][classes[:half] == c].mean(0) for c in range(1, 11)]
  )
  dist = np.linalg.norm(colours[half:, None] - centroids[None], axis=-1)
  accuracy = np.mean(dist.argmin(1) + 1 == classes[half:])
  assert accuracy < 0.2, accuracy


def test_occlusion():
  occluded_images = 0
  for _, label, objects in _render_many(200):
    # The label map must be the painter's-algorithm composite of full masks.
    expected = np.zeros_like(label)
    for class_id, mask in objects:
      expected[mask] = class_id
    np.testing.assert_array_equal(label, expected)
    # Count images where an object lost pixels to a later one of another class.
    for class_id, mask in objects:
      visible = np.count_nonzero(label[mask] == class_id)
      if visible < np.count_nonzero(mask):
        occluded_images += 1
        break
  assert occluded_images >= 20


def test_registered(data_dir):
  builder = tfds.builder("hemnet_shapes", data_dir=data_dir)
  assert isinstance(builder, shapes.HemnetShapes)
  assert builder.info.splits["train"].num_examples == 3000
