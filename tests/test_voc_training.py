"""configs/voc.py end to end on the fake VOC archives, then resumed from its checkpoint."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from hemnet_jax.data import pipeline
from hemnet_jax.training import loop
from hemnet_jax.data import voc_aug
from helpers import ROOT, TINY

from configs import voc  # noqa: E402


def tiny_voc(data_dir, manual_dir, **extra):
  config = voc.get_config()
  # Fake images vary in size: whole-image evaluation one at a time, as for the real set.
  for k, v in {**TINY, "data.eval_split": "validation", "data.eval_batch_size": 1,
               **extra}.items():
    section, field = k.split(".")
    config[section][field] = v
  config.data.data_dir, config.data.manual_dir = str(data_dir), str(manual_dir)
  return config


@pytest.fixture
def compilation_cache(tmp_path):
  """The resumed run recompiles what the first compiled; a disk cache makes that a lookup."""
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  old = {n: getattr(jax.config, n) for n in names}
  for n, v in zip(names, (str(tmp_path / "jax_cache"), 0, 0)):
    jax.config.update(n, v)
  yield
  for n, v in old.items():
    jax.config.update(n, v)


def test_voc_config_trains_two_steps_then_resumes_on_the_same_batches(
    fake_voc, tmp_path, monkeypatch, compilation_cache):
  seen = []
  original = pipeline.train_batches

  def recording(*args, **kwargs):
    for batch in original(*args, **kwargs):
      seen.append(batch)
      yield batch

  monkeypatch.setattr(pipeline, "train_batches", recording)
  # A fresh data dir: the run itself prepares voc_aug from the archives in manual_dir.
  data_dir, manual_dir = tmp_path / "tfds", fake_voc[1]
  summary = loop.train_and_evaluate(
      tiny_voc(data_dir, manual_dir, **{"train.num_steps": 2}), tmp_path / "work")
  assert summary["step"] == 2 and np.isfinite(summary["miou"])
  results = json.loads((tmp_path / "work/results.json").read_text())
  assert list(results["per_class_iou"]) == list(voc_aug.CLASS_NAMES)
  # Every labelled pixel of the validation images is counted once; padding never is.
  config = tiny_voc(data_dir, manual_dir, **{"train.num_steps": 3})
  val = pipeline.load_split(config.data, "validation").source
  labelled = sum(int((pipeline.decode(val[i])["label"] != 255).sum()) for i in range(len(val)))
  assert np.sum(results["confusion_matrix"]) == labelled

  # Resume from the step-2 checkpoint: step 3 must train on batch 3 of an uninterrupted run.
  resumed = loop.train_and_evaluate(config, tmp_path / "work", allow_config_change=True)
  assert resumed["step"] == 3 and len(seen) == 3
  split = pipeline.load_split(config.data, "train")
  fresh = pipeline.train_batches(split, config.data, batch_size=config.train.batch_size,
                                       seed=config.seed)
  for step, (a, b) in enumerate(zip([next(fresh) for _ in range(3)], seen), start=1):
    np.testing.assert_array_equal(a["image"], b["image"], err_msg=f"step {step}")
    np.testing.assert_array_equal(a["label"], b["label"], err_msg=f"step {step}")


def test_eval_batch_of_one_image_runs_on_two_devices(fake_voc, tmp_path):
  """Whole images of varying size, one per batch, padded with ignore-only copies per device."""
  code = ("import sys; sys.path[:0] = ['.', 'tests']; from test_voc_training import tiny_voc; "
          "from hemnet_jax.training import loop; "
          f"s = loop.train_and_evaluate(tiny_voc({str(fake_voc[0])!r}, {str(fake_voc[1])!r}, "
          "**{'train.num_steps': 1, 'train.batch_size': 2}), "
          f"{str(tmp_path)!r}); print('MIOU', s['miou'])")
  env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} "
                                    "--xla_force_host_platform_device_count=2"}
  res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
  assert res.returncode == 0, res.stderr[-3000:]
  one_device = json.loads((tmp_path / "results.json").read_text())
  assert "MIOU" in res.stdout and one_device["step"] == 1
