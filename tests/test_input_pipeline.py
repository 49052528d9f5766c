"""The input pipeline on real-format data: decoding, augmentation, sharding, resuming, eval."""


import ml_collections
import numpy as np
import pytest

from hemnet_jax.data import pipeline
from hemnet_jax.training import config as config_lib, metrics

CROP = 24


def data_config(data_dir, **extra):
  c = config_lib.default_config().data
  c.name, c.data_dir, c.crop_size, c.num_threads = "voc_aug", str(data_dir), CROP, 1
  c.update(extra)
  return c


def take(it, n):
  return [next(it) for _ in range(n)]


@pytest.fixture(scope="module")
def voc(fake_voc):
  config = data_config(fake_voc[0])
  return config, pipeline.load_split(config, "train"), pipeline.load_split(config, "validation")


def test_train_batches_decode_augment_and_normalise(voc):
  config, train, _ = voc
  batch = next(pipeline.train_batches(train, config, batch_size=3, seed=0))
  assert batch["image"].shape == (3, CROP, CROP, 3) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (3, CROP, CROP) and batch["label"].dtype == np.int32
  assert set(np.unique(batch["label"])) <= set(range(21)) | {255}
  # Fake images are smaller than CROP, so every crop is padded: image at the mean (0 after
  # normalising, up to uint8 rounding), label 255.
  pad = np.abs(batch["image"]).max(-1) < 0.02
  assert pad.any(1).any(1).all() and (batch["label"][pad] == 255).all()
  assert (batch["label"][~pad] != 255).any()


def test_same_seed_same_batches_other_seed_other_batches(voc):
  config, train, _ = voc
  a = take(pipeline.train_batches(train, config, batch_size=2, seed=3), 4)
  b = take(pipeline.train_batches(train, config, batch_size=2, seed=3), 4)
  c = take(pipeline.train_batches(train, config, batch_size=2, seed=4), 4)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])
  assert any(not np.array_equal(x["image"], z["image"]) for x, z in zip(a, c))


def test_pipeline_started_at_step_k_yields_batch_k_of_a_fresh_one(voc):
  config, train, _ = voc
  k = 7  # past the first epoch of 5 examples: the reshuffled epoch must match too
  fresh = take(pipeline.train_batches(train, config, batch_size=2, seed=0), k + 2)
  resumed = take(pipeline.train_batches(train, config, batch_size=2, seed=0, start_step=k), 2)
  for x, y in zip(fresh[k:], resumed):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])


def test_each_process_reads_only_its_own_shard():
  # Example i has constant label i, so labels tell which examples a process saw.
  examples = [{"image": np.zeros((8, 8, 3), np.uint8), "label": np.full((8, 8), i, np.uint8)}
              for i in range(10)]
  split = pipeline.Split(examples, len(examples))
  config = ml_collections.ConfigDict(dict(crop_size=8, scale_range=(1.0, 1.0), num_threads=1,
                                          prefetch=1))
  seen = []
  for p in range(2):
    it = pipeline.train_batches(split, config, batch_size=5, seed=0, process_index=p,
                                      process_count=2)
    seen.append({int(l) for b in take(it, 4) for l in np.unique(b["label"])})
  assert seen == [{0, 2, 4, 6, 8}, {1, 3, 5, 7, 9}]


def test_eval_pads_to_the_stride_and_padding_never_counts(voc):
  config, _, val = voc
  batches = list(pipeline.eval_batches(val, config, batch_size=1, multiple=8))
  assert len(batches) == len(val.source) == 2
  for batch, i in zip(batches, range(len(val.source))):
    example = pipeline.decode(val.source[i])
    h, w = example["label"].shape
    _, ph, pw, _ = batch["image"].shape
    assert ph % 8 == 0 and pw % 8 == 0 and h <= ph < h + 8 and w <= pw < w + 8
    np.testing.assert_array_equal(batch["label"][0, :h, :w], example["label"])
    assert (batch["label"][0, h:] == 255).all() and (batch["label"][0, :, w:] == 255).all()
    np.testing.assert_allclose(batch["image"][0, :h, :w],
                               (example["image"] - pipeline.IMAGENET_MEAN) / pipeline.IMAGENET_STD)
    # Metrics on the padded prediction equal those on the prediction cropped back to h x w,
    # whatever the model predicts in the padding.
    pred = np.random.default_rng(i).integers(0, 21, (1, ph, pw))
    padded = metrics.confusion_matrix(batch["label"], pred, 21)
    cropped = metrics.confusion_matrix(example["label"][None].astype(np.int32), pred[:, :h, :w], 21)
    np.testing.assert_array_equal(padded, cropped)


def test_eval_shards_over_processes_with_equal_batch_counts(voc):
  config, _, val = voc
  per_process = [list(pipeline.eval_batches(val, config, batch_size=1, multiple=8,
                                                  process_index=p, process_count=3))
                 for p in range(3)]
  assert [len(b) for b in per_process] == [1, 1, 1]  # 2 images over 3 processes
  labelled = [int((b[0]["label"] != 255).sum()) for b in per_process]
  sizes = [int((pipeline.decode(val.source[i])["label"] != 255).sum()) for i in range(2)]
  assert sorted(labelled) == sorted(sizes + [0])  # each image once, the third is all-ignore


def test_eval_size_gives_every_image_one_shape(voc):
  config, _, val = voc
  config = data_config(config.data_dir, eval_size=16)
  shapes = {b["image"].shape for b in pipeline.eval_batches(val, config, batch_size=1, multiple=8)}
  assert shapes == {(1, 16, 16, 3)}
