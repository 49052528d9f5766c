"""`--mode eval`: multi-scale + flip against a plain re-implementation, T_eval without retraining."""

import json
import os
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from helpers import ROOT, main_cmd, tiny_config, tiny_flags

from hemnet_jax.data import pipeline
from hemnet_jax.training import (config as config_lib, evaluation, metrics, sharding,
                                 state as state_lib, steps)
from hemnet_jax.models.hem_unit import STATS

from conftest import TINY_RUN as RUN  # noqa: E402
EMANET_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
SCALES = (0.75, 1.25)  # fewer scales keep the test fast; the averaging code is the same


@pytest.fixture(scope="module")
def run(tiny_run):
  return tiny_run.path


def plain_ms_flip(apply, variables, image, stride):
  """One image [H, W, 3]: EMANet's averaging written out, flipping before resizing."""
  h, w, _ = image.shape
  probs = []
  for s in SCALES:
    sh, sw = int(h * s + 0.5), int(w * s + 0.5)
    for flip in (False, True):
      x = np.asarray(image)[:, ::-1] if flip else np.asarray(image)
      x = np.asarray(jax.image.resize(jnp.asarray(x), (sh, sw, 3), "bilinear"))
      x = np.pad(x, ((0, -sh % stride), (0, -sw % stride), (0, 0)))
      logits = np.asarray(apply(variables, jnp.asarray(x[None]))[0, :sh, :sw])
      if flip:
        logits = logits[:, ::-1]
      logits = np.asarray(jax.image.resize(jnp.asarray(logits), (h, w, logits.shape[-1]), "bilinear"))
      e = np.exp(logits - logits.max(-1, keepdims=True))
      probs.append(e / e.sum(-1, keepdims=True))
  return np.mean(probs, axis=0)


def test_multi_scale_flip_matches_a_plain_reimplementation(data_dir, run):
  assert tuple(config_lib.default_config().eval.scales) == EMANET_SCALES
  config = tiny_config(data_dir, **RUN, **{"eval.multi_scale": True, "eval.flip": True,
                                           "eval.scales": SCALES})
  result = evaluation.run(config, run)
  assert result["protocol"] == "ms_flip" and result["scales"] == list(SCALES)
  saved = json.loads((run / "eval_ms_flip_T3.json").read_text())
  assert saved["confusion_matrix"] == result["confusion_matrix"]

  model = state_lib.build_model(config)
  raw = ocp.CheckpointManager(run / "checkpoints").restore(2)
  variables = {k: raw[k] for k in ("params", "batch_stats", "hem_bases")}
  split = pipeline.load_split(config.data, "validation[:4]")
  cm = np.zeros((11, 11), np.int64)
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False)[0])
  for i in range(4):
    ex = pipeline.eval_transform(split.source[i], multiple=8)
    probs = plain_ms_flip(apply, variables, ex["image"], 8)
    if i == 0:  # the same probabilities, not only the same argmax
      ours = jax.jit(lambda v, x: steps.averaged_probabilities(
          lambda y: model.apply(v, y, train=False)[0], x, scales=SCALES, flip=True,
          multiple=8))(variables, jnp.asarray(ex["image"][None]))
      np.testing.assert_allclose(np.asarray(ours[0]), probs, atol=2e-5)
    cm += np.asarray(metrics.confusion_matrix(ex["label"], probs.argmax(-1), 11))
  ours = np.asarray(result["confusion_matrix"])
  assert ours.sum() == cm.sum() == 4 * 96 * 96
  assert np.abs(ours - cm).sum() <= 2 * 4  # batched vs one-by-one float noise at argmax ties
  assert result["miou"] == pytest.approx(np.nanmean(metrics.iou_from_confusion(cm)), abs=1e-3)


def test_scale_one_without_flip_is_single_scale(data_dir, run):
  config = tiny_config(data_dir, **RUN, **{"eval.multi_scale": True, "eval.scales": (1.0,)})
  ms = evaluation.run(config, run)
  ss = evaluation.run(tiny_config(data_dir, **RUN), run)
  assert (ms["protocol"], ss["protocol"]) == ("ms", "ss")
  assert ms["confusion_matrix"] == ss["confusion_matrix"]
  # Attention diagnostics: mu0's in both, gamma's only from the single-scale eval_step.
  assert ms["attention"]["hem"]["distinct_bases"] == ss["attention"]["hem"]["distinct_bases"] >= 1
  assert "entropy" not in ms["attention"]["hem"]
  assert 0 <= ss["attention"]["hem"]["entropy"] <= 1 and 1 <= ss["attention"]["hem"]["bases_in_use"]
  trained = json.loads((run / "results.json").read_text())["attention"]["hem"]
  assert trained == {k: pytest.approx(v, rel=1e-5) for k, v in ss["attention"]["hem"].items()}
  # The single-scale protocol is the training loop's own final evaluation.
  assert ss["confusion_matrix"] == json.loads((run / "results.json").read_text())["confusion_matrix"]


def test_t_eval_changes_the_number_of_iterations(data_dir, run):
  config = tiny_config(data_dir, **RUN)
  raw = ocp.CheckpointManager(run / "checkpoints").restore(2)
  variables = {k: raw[k] for k in ("params", "batch_stats", "hem_bases")}
  image = jnp.zeros((1, 32, 32, 3))
  for t in (1, 5):
    config.hem.num_iters_eval = t
    model = state_lib.build_model(config)
    _, upd = jax.eval_shape(  # shapes only: traced, not run
        lambda v, x: model.apply(v, x, train=False, mutable=[STATS]), variables, image)
    assert jax.tree.leaves(upd[STATS])[0].shape == (t,)

  # The command line, on the same checkpoint: T_eval = 5 runs 5 iterations.
  env = {**os.environ, "TFDS_DATA_DIR": str(data_dir)}
  res = subprocess.run(main_cmd(run, "--mode=eval", *tiny_flags(**RUN, **{"hem.num_iters_eval": 5})),
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr
  out = json.loads((run / "eval_ss_T5.json").read_text())
  assert (out["num_iters_train"], out["num_iters_eval"], out["step"]) == (3, 5, 2)
  assert len(out["elbo_per_iter"]) == 5 and np.all(np.isfinite(out["elbo_per_iter"]))
  assert set(out["per_class_iou"]) and np.asarray(out["confusion_matrix"]).shape == (11, 11)
  assert "mIoU" in res.stdout


def test_eval_without_a_checkpoint_fails_clearly(data_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match="--mode train"):
    evaluation.run(tiny_config(data_dir, **RUN), tmp_path)


TRACES = []


def traced_eval_step(state, batch, *, num_classes):
  TRACES.append(batch["image"].shape)  # runs once per trace, not per call
  return steps.eval_step(state, batch, num_classes=num_classes)


def test_a_run_evaluating_again_does_not_trace_or_compile_again(data_dir):
  config = config_lib.validate(tiny_config(data_dir, **RUN))
  mesh, model = sharding.make_mesh(), state_lib.build_model(config)
  state = state_lib.create_train_state(config, model, jax.random.key(0), load_backbone=False)
  split = pipeline.load_split(config.data, config.data.eval_split)
  first, _ = evaluation.evaluate(state, model, split, config, mesh, step_fn=traced_eval_step)
  assert len(TRACES) == 1
  second, _ = evaluation.evaluate(state, model, split, config, mesh, step_fn=traced_eval_step)
  assert len(TRACES) == 1 and second == first
