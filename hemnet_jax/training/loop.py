"""The training loop: train, log, checkpoint, evaluate, resume where a run stopped."""

import json
import signal
import time

import jax
import numpy as np
from absl import logging
from etils import epath

from hemnet_jax.data import pipeline
from hemnet_jax.training import (attention, checkpoints, config as config_lib, evaluation, metrics,
                                 sharding, steps)
from hemnet_jax.training.state import build_model, create_train_state


class _Preemption:
  """SIGTERM (a preempted TPU VM, `scancel`) asks the loop to save and stop."""

  def __init__(self):
    self.requested = False
    try:
      signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not in the main thread: no handler, nothing to save early
      pass

  def _handle(self, *_):
    self.requested = True


def _check_finite(history, step, mngr):
  losses = np.asarray(jax.device_get([h["loss"] for h in history]))
  if not np.all(np.isfinite(losses)):
    bad = step - len(history) + 1 + int(np.argmin(np.isfinite(losses)))
    raise FloatingPointError(
        f"non-finite loss ({losses[~np.isfinite(losses)][0]}) at step {bad}; stopping without "
        f"saving. The last good checkpoint (step {mngr.latest_step()}) in {mngr.directory} is "
        "intact. Lower config.train.lr, or use train.dtype='float32'.")


def train_and_evaluate(config, workdir):
  """Trains, resuming from the latest checkpoint in workdir; returns the final eval."""
  config = config_lib.validate(config)
  workdir = epath.Path(workdir).absolute()
  is_main = jax.process_index() == 0
  mesh = sharding.make_mesh()
  if config.train.batch_size % jax.device_count():
    raise ValueError(f"config.train.batch_size={config.train.batch_size} is not divisible by "
                     f"the {jax.device_count()} devices")
  train_split = pipeline.load_split(config.data, config.data.train_split)
  eval_split = pipeline.load_split(config.data, config.data.eval_split)
  model = build_model(config)
  mngr = checkpoints.manager(workdir, keep=config.train.keep_checkpoints)
  # A resumed run takes every weight from its own checkpoint, so the pretrained file may be gone.
  state = create_train_state(config, model, jax.random.key(config.seed),
                             load_backbone=mngr.latest_step() is None)
  state_sharding = sharding.state_shardings(state, mesh, fsdp=config.train.fsdp)
  if mngr.latest_step() is not None:  # onto this run's mesh, whatever mesh wrote it
    state, _ = checkpoints.restore(workdir, state, mesh=mesh, fsdp=config.train.fsdp, mngr=mngr)
    if is_main:
      print(f"Resumed from {mngr.directory} at step {int(state.step)}", flush=True)
  state = jax.device_put(state, state_sharding)
  if is_main:
    checkpoints.save_config(workdir, config)
  writer = _summary_writer(workdir) if is_main else None

  start, num_steps = int(state.step), config.train.num_steps
  batches = pipeline.train_batches(
      train_split, config.data, batch_size=config.train.batch_size // jax.process_count(),
      seed=config.seed, start_step=start, process_index=jax.process_index(),
      process_count=jax.process_count())
  p_train_step = steps.jit_train_step(config, mesh, state_sharding)
  preemption, history, t_last = _Preemption(), [], time.time()
  for step in range(start + 1, num_steps + 1):
    state, step_metrics = p_train_step(state, sharding.shard_batch(next(batches), mesh))
    history.append(step_metrics)  # device arrays: fetched only at log/checkpoint time
    if step % config.train.log_every == 0 or step == num_steps:
      _check_finite(history, step, mngr)
      means = {k: np.mean(jax.device_get([h[k] for h in history]), 0) for k in history[0]}
      ips = len(history) * config.train.batch_size / (time.time() - t_last)
      logging.info("process %d step %d loss %.8f", jax.process_index(), step, means["loss"])
      if is_main:
        _write_train(writer, step, means, ips, attention.mu0_report(state.hem_bases))
        eta = (num_steps - step) * config.train.batch_size / ips
        print(f"step {step}/{num_steps}  loss {means['loss']:.4f}  lr {means['lr']:.2e}  "
              f"{ips:.1f} img/s  ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}", flush=True)
      history, t_last = [], time.time()
    if step % config.train.checkpoint_every == 0 or step == num_steps or preemption.requested:
      _check_finite(history, step, mngr)
      checkpoints.save(mngr, step, state)
    if preemption.requested:
      mngr.wait_until_finished()
      print(f"SIGTERM: saved a checkpoint at step {step}; exiting.", flush=True)
      raise SystemExit(143)
    if step % config.train.eval_every == 0 and step != num_steps:
      summary, _ = evaluation.evaluate(state, model, eval_split, config, mesh)
      if is_main:
        writer.add_scalar("eval/miou", summary["miou"], step)
        print(f"step {step}: val mIoU {100 * summary['miou']:.2f}", flush=True)
  mngr.wait_until_finished()

  summary, cm = evaluation.evaluate(state, model, eval_split, config, mesh)
  summary = {"step": int(state.step), "num_iters_eval": config.hem.num_iters_eval,
             **summary, "confusion_matrix": cm.tolist()}
  attention.add_mu0(summary, state.hem_bases)  # gamma's (validation) + mu0's
  if is_main:
    _write_eval(writer, summary)
    (workdir / "results.json").write_text(json.dumps(summary, indent=2))
    print(f"Final evaluation at step {summary['step']} on '{config.data.eval_split}':\n"
          + metrics.format_table(summary) + "\n" + attention.format_attention(summary), flush=True)
    writer.close()
  return summary


def _summary_writer(workdir):
  from tensorboardX import SummaryWriter  # imported here: only process 0 writes
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
