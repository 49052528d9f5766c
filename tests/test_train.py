"""The training loop: a step lowers the loss, resuming, preemption, bad input."""

import functools
import json
import os
import pathlib
import re
import signal
import subprocess
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from helpers import ROOT, demo, main_cmd, tiny_config, tiny_flags

from hemnet_jax.data import pipeline
from hemnet_jax.training import config as config_lib, loop, sharding, state as state_lib, steps


def run(cmd, data_dir, **kw):
  env = {**os.environ, "TFDS_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, **kw)


def start(cmd, data_dir):
  env = {**os.environ, "TFDS_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def finished_steps(workdir):
  d = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in d.glob("*") if p.name.isdigit()) if d.exists() else []


def wait_for(predicate, proc, timeout=300):
  t0 = time.time()
  while not predicate():
    assert proc.poll() is None, f"process ended early:\n{proc.stdout.read()}"
    assert time.time() - t0 < timeout
    time.sleep(0.05)


def test_one_training_step_lowers_the_loss_on_a_fixed_batch(data_dir):
  config = tiny_config(data_dir, **{"model.dropout": 0.0, "train.lr": 0.05})
  model = state_lib.build_model(config)
  state = state_lib.create_train_state(config, model, jax.random.key(0))
  split = pipeline.load_split(config.data, "train")
  batch = next(pipeline.train_batches(split, config.data, batch_size=8, seed=0))
  step = jax.jit(functools.partial(steps.train_step, config=config))
  state, m1 = step(state, batch)
  _, m2 = step(state, batch)
  assert float(m2["loss"]) < float(m1["loss"])
  assert m1["elbo/hem"].shape == (config.hem.num_iters,)


def test_the_compiled_train_state_equals_the_eager_one(data_dir):
  # create_train_state compiles the optimizer's init (state.make_state); TrainState.create
  # run op by op on the same variables is the reference.
  config = tiny_config(data_dir)
  model = state_lib.build_model(config)
  state = state_lib.create_train_state(config, model, jax.random.key(0))
  eager = state_lib._state(config, model, state.variables())  # pylint: disable=protected-access
  flat = lambda tree: jax.tree_util.tree_flatten_with_path(tree)[0]
  got, want = flat(state), flat(eager)
  assert [path for path, _ in got] == [path for path, _ in want]
  for (path, a), (_, b) in zip(got, want):
    assert np.shape(a) == np.shape(b) and np.array_equal(a, b), jax.tree_util.keystr(path)
  # step, params, the momentum of every parameter, BN statistics and mu0
  assert int(state.step) == 0 and len(got) > 2 * len(jax.tree.leaves(state.params))


def test_the_donated_step_copies_no_parameter_and_equals_the_plain_one(data_dir):
  # On the CPU the train step compiles with region-analysis copy insertion, under which
  # XLA writes each update over its donated parameter without first copying it.
  config = tiny_config(data_dir)
  model = state_lib.build_model(config)
  state = state_lib.create_train_state(config, model, jax.random.key(0))
  split = pipeline.load_split(config.data, "train")
  batch = next(pipeline.train_batches(split, config.data, batch_size=8, seed=0))
  mesh = sharding.make_mesh()
  state_sharding = sharding.state_shardings(state, mesh)
  state = jax.device_put(state, state_sharding)
  batch = jax.device_put(batch, sharding.batch_sharding(mesh))
  donated = steps.jit_train_step(config, mesh, state_sharding).lower(state, batch).compile()
  copied = re.findall(r"= \S+ copy\(%state_params", donated.as_text())
  assert not copied, f"{len(copied)} parameters copied"
  # Against XLA's defaults without donation: equal up to rounding, as the two compile apart.
  plain = jax.jit(functools.partial(steps.train_step, config=config))
  want, _ = plain(state, batch)
  got, _ = donated(jax.tree.map(jax.numpy.copy, state), batch)
  for (path, a), (_, b) in zip(*(jax.tree_util.tree_flatten_with_path(t)[0] for t in (got, want))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_emanet_baseline_is_one_variant_away_and_trains(data_dir, tmp_path):
  config = tiny_config(data_dir, "emanet", **{"train.num_steps": 3})
  assert (config.hem.eta, config.hem.backprop, config.hem.l2_normalize) == (1.0, False, True)
  summary = loop.train_and_evaluate(config, tmp_path)
  assert summary["step"] == 3 and np.isfinite(summary["miou"])
  results = json.loads((tmp_path / "results.json").read_text())
  assert set(results["per_class_iou"]) == set(config_class_names())
  assert results["step"] == 3 and results["miou"] == summary["miou"]


def config_class_names():
  from hemnet_jax.data import shapes
  return shapes.CLASS_NAMES


def test_sigterm_saves_a_checkpoint_before_exiting(data_dir, tmp_path):
  flags = tiny_flags(**{"train.num_steps": 100_000, "train.checkpoint_every": 10_000})
  proc = start(main_cmd(tmp_path, *flags), data_dir)
  lines = []
  wait_for(lambda: lines.append(proc.stdout.readline()) or "step 10/" in lines[-1], proc)
  proc.send_signal(signal.SIGTERM)
  out = proc.communicate(timeout=120)[0]
  assert proc.returncode == 143, out
  saved = [l for l in out.splitlines() if l.startswith("SIGTERM: saved a checkpoint at step")]
  assert saved, out
  step = int(saved[0].split("step ")[1].split(";")[0])
  assert finished_steps(tmp_path) == [step] and step >= 10


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
  good = run(main_cmd(tmp_path, *tiny_flags(**{"train.num_steps": 5, "train.checkpoint_every": 5})),
             data_dir)
  assert good.returncode == 0, good.stderr
  bad = run(main_cmd(tmp_path, *tiny_flags(**{"train.num_steps": 20, "train.checkpoint_every": 5,
                                               "train.lr": 1e38}), "--allow_config_change"),
            data_dir)
  assert bad.returncode == 1
  assert "non-finite loss" in bad.stderr and "last good checkpoint (step 5)" in bad.stderr
  assert finished_steps(tmp_path) == [5]
  mngr = ocp.CheckpointManager(tmp_path / "checkpoints")
  restored = mngr.restore(5)
  leaves = jax.tree.leaves(restored)
  assert leaves and all(np.all(np.isfinite(x)) for x in leaves)


def test_bad_config_key_fails_with_a_clear_message(data_dir, tmp_path):
  res = run(main_cmd(tmp_path, "--config.hem.etta=0.3"), data_dir)
  assert res.returncode != 0 and "etta" in res.stderr
  res = run(main_cmd(tmp_path, "--config.hem.eta=1.5"), data_dir)
  assert res.returncode == 1 and "config.hem.eta" in res.stderr


def test_voc_config_names_the_missing_dataset(data_dir, tmp_path):
  res = run(main_cmd(tmp_path, config="configs/voc.py"), data_dir)
  assert res.returncode == 1
  assert "voc_aug" in res.stderr and "host.robots.ox.ac.uk" in res.stderr


def test_validate_names_the_field():
  config = demo.get_config()
  config.hem.kernel = "cosine"
  with pytest.raises(ValueError, match="config.hem.kernel"):
    config_lib.validate(config)
  with pytest.raises(ValueError, match="variant"):
    demo.get_config("emanett")
