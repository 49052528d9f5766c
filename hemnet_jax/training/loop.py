"""The training loop: train, log, checkpoint, evaluate, resume where a run stopped."""

import json
import sys

import jax
import numpy as np
from absl import logging
from etils import epath

from hemnet_jax.data import pipeline
from hemnet_jax.training import (attention, checkpoints, config as config_lib, drift, evaluation,
                                 images, meter as meter_lib, metrics, preemption as preemption_lib,
                                 sharding, steps)
from hemnet_jax.training.state import build_model, create_train_state


def _check_finite(history, step, mngr):
  losses = np.asarray(jax.device_get([h["loss"] for h in history]))
  if not np.all(np.isfinite(losses)):
    bad = step - len(history) + 1 + int(np.argmin(np.isfinite(losses)))
    raise FloatingPointError(
        f"non-finite loss ({losses[~np.isfinite(losses)][0]}) at step {bad}; stopping without "
        f"saving. The last good checkpoint (step {mngr.latest_step()}) in {mngr.directory} is "
        "intact. Lower config.train.lr, or use train.dtype='float32'.")


def train_and_evaluate(config, workdir, *, allow_config_change=False):
  """Trains, resuming from the newest restorable checkpoint in workdir; returns the final eval.

  A config that differs from the workdir's run in what it trains stops here (drift.py)
  unless allow_config_change."""
  config = config_lib.validate(config)
  workdir = epath.Path(workdir).absolute()
  changes = drift.check(workdir, config, allow_change=allow_config_change)  # before any write
  is_main = jax.process_index() == 0
  mesh = sharding.make_mesh()
  if config.train.batch_size % jax.device_count():
    raise ValueError(f"config.train.batch_size={config.train.batch_size} is not divisible by "
                     f"the {jax.device_count()} devices")
  train_split = pipeline.load_split(config.data, config.data.train_split)
  eval_split = pipeline.load_split(config.data, config.data.eval_split)
  model = build_model(config)
  # A resumed run takes every weight from its own checkpoint, so the pretrained file may be gone.
  state = create_train_state(config, model, jax.random.key(config.seed),
                             load_backbone=not checkpoints.committed_steps(workdir))
  state_sharding = sharding.state_shardings(state, mesh, fsdp=config.train.fsdp)
  log = print if is_main else lambda *_: None
  # Onto this run's mesh, whatever mesh wrote it; damaged steps are set aside.
  mngr, restored, resumed_at = checkpoints.resume(workdir, state, mesh=mesh, fsdp=config.train.fsdp,
                                                  keep=config.train.keep_checkpoints, log=log)
  try:
    return _train(config, workdir, mngr, restored or state, resumed_at, changes, model, mesh,
                  state_sharding, train_split, eval_split)
  except Exception as e:  # a collective that failed because a peer process died: name it
    raise preemption_lib.peer_failure(e) or e
  finally:
    checkpoints.close(mngr)  # no orbax thread outlives the run, even after an error


def _train(config, workdir, mngr, state, resumed_at, changes, model, mesh, state_sharding,
           train_split, eval_split):
  is_main = jax.process_index() == 0
  if resumed_at is not None and is_main:
    print(f"Resumed from {mngr.directory} at step {resumed_at}", flush=True)
  state = jax.device_put(state, state_sharding)
  if is_main:
    if changes:
      drift.record(workdir, changes, resumed_at)
    checkpoints.save_config(workdir, config)
  writer = _summary_writer(workdir) if is_main else None
  samples = images.choose(config, model, eval_split, mesh)  # fixed validation images to show

  start, num_steps = int(state.step), config.train.num_steps
  batches = pipeline.train_batches(
      train_split, config.data, batch_size=config.train.batch_size // jax.process_count(),
      seed=config.seed, start_step=start, process_index=jax.process_index(),
      process_count=jax.process_count())
  p_train_step = steps.jit_train_step(config, mesh, state_sharding)
  preemption, history = preemption_lib.Preemption(), []
  meter = meter_lib.Throughput(config.train.batch_size)  # train steps only (meter.py)
  for step in range(start + 1, num_steps + 1):
    state, step_metrics = p_train_step(state, sharding.shard_batch(next(batches), mesh))
    meter.step()
    if step == start + 1:
      meter.resume(after=step_metrics)  # the first step compiles: time from the next one
    history.append(step_metrics)  # device arrays: fetched only at log/checkpoint time
    if step % config.train.log_every == 0 or step == num_steps:
      _check_finite(history, step, mngr)
      means = {k: np.mean(jax.device_get([h[k] for h in history]), 0) for k in history[0]}
      ips = meter.rate(after=history)  # fetched above: the steps are done
      logging.info("process %d step %d loss %.8f", jax.process_index(), step, means["loss"])
      if is_main:
        _write_train(writer, step, means, ips, attention.mu0_report(state.hem_bases))
        print(f"step {step}/{num_steps}  loss {means['loss']:.4f}  lr {means['lr']:.2e}  "
              f"{meter.progress(num_steps - step)}", flush=True)
      history = []
    is_ckpt_step = step % config.train.checkpoint_every == 0 or step == num_steps
    noticed = preemption.noticed(step % config.train.log_every == 0 or is_ckpt_step)
    if is_ckpt_step or noticed:
      with meter.paused(after=state):
        _check_finite(history, step, mngr)
        checkpoints.save(mngr, step, state)
    if noticed:
      checkpoints.wait(mngr)
      who = f" (the notice reached process {noticed})" if jax.process_count() > 1 else ""
      print(f"SIGTERM: saved a checkpoint at step {step}; exiting{who}.", flush=True)
      raise SystemExit(143)
    if step % config.train.eval_every == 0 and step != num_steps:
      with meter.paused(after=state):
        summary, _ = evaluation.evaluate(state, model, eval_split, config, mesh)
        images.write(writer, step, state, samples)  # on every process; process 0 writes
      if is_main:
        writer.add_scalar("eval/miou", summary["miou"], step)
        print(f"step {step}: val mIoU {100 * summary['miou']:.2f}", flush=True)
  checkpoints.wait(mngr)

  summary, cm = evaluation.evaluate(state, model, eval_split, config, mesh)
  summary = {"step": int(state.step), "num_iters_eval": config.hem.num_iters_eval,
             **summary, "confusion_matrix": cm.tolist()}
  attention.add_mu0(summary, state.hem_bases)  # gamma's (validation) + mu0's
  images.write(writer, summary["step"], state, samples)
  if is_main:
    _write_eval(writer, summary)
    (workdir / "results.json").write_text(json.dumps(summary, indent=2))
    print(f"Final evaluation at step {summary['step']} on '{config.data.eval_split}':\n"
          + metrics.format_table(summary) + "\n" + attention.format_attention(summary), flush=True)
    writer.close()
  return summary


def _summary_writer(workdir):
  # tensorboardX imports torch where it is installed, only to accept torch tensors, which we
  # never pass: seconds at every start. Hide torch from that import unless it is loaded already.
  hide_torch = "torch" not in sys.modules
  if hide_torch:
    sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX expects
  try:
    from tensorboardX import SummaryWriter  # imported here: only process 0 writes
  finally:
    if hide_torch:
      del sys.modules["torch"]
  return SummaryWriter(str(workdir / "tensorboard"))


def _write_train(writer, step, means, images_per_sec, mu0_diagnostics=None):
  for unit, diag in (mu0_diagnostics or {}).items():
    for k, v in diag.items():
      writer.add_scalar(f"train/attention/{unit}/mu0_{k}", float(v), step)
  for k, v in means.items():
    if k.startswith("elbo/"):
      for t, e in enumerate(np.atleast_1d(v), start=1):
        writer.add_scalar(f"train/{k}/iter_{t}", float(e), step)
    else:
      writer.add_scalar(f"train/{k}", float(v), step)
  if images_per_sec is not None:  # None: the interval held only the compiling step
    writer.add_scalar("train/images_per_sec", images_per_sec, step)
  writer.flush()


def _write_eval(writer, summary):
  step = summary["step"]
  writer.add_scalar("eval/miou", summary["miou"], step)
  writer.add_scalar("eval/pixel_accuracy", summary["pixel_accuracy"], step)
  for unit, diag in summary.get("attention", {}).items():
    for k, v in diag.items():
      writer.add_scalar(f"eval/attention/{unit}/{k}", float(v), step)
  for name, iou in summary["per_class_iou"].items():
    if iou is not None:
      writer.add_scalar(f"eval/iou/{name}", iou, step)
  writer.flush()
