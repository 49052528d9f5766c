"""Training and evaluation: the state, one train step, one eval step, one loop."""

import functools
import json
import signal
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax.training import train_state

from hemnet_jax import (backbone_checkpoint, config_utils, datasets, hem_diagnostics,
                        input_pipeline, metrics, sharding)
from hemnet_jax.models.hem_unit import BASES, DIAGNOSTICS, STATS
from hemnet_jax.models.hemnet import HEMNet


class TrainState(train_state.TrainState):
  batch_stats: Any
  hem_bases: Any  # mu0 of each HEM unit: moved by moving average, never by the optimizer

  def variables(self):
    return {"params": self.params, "batch_stats": self.batch_stats, BASES: self.hem_bases}


def build_model(config, num_iters_eval=None):
  m, h = config.model, config.hem
  return HEMNet(
      num_classes=config.data.num_classes, depth_stages=tuple(m.stage_sizes), width=m.width,
      stem=m.stem, stem_width=m.stem_width, output_stride=m.output_stride,
      multi_grid=tuple(m.multi_grid), head_channels=m.head_channels,
      hem=flax.core.FrozenDict({**h.to_dict(), "num_iters_eval": num_iters_eval or h.num_iters_eval}),
      decoder_channels=m.decoder_channels, dropout=m.dropout, aux_weight=m.aux_weight,
      aux_channels=m.aux_channels, bn_momentum=m.bn_momentum,
      dtype=jnp.bfloat16 if config.train.dtype == "bfloat16" else jnp.float32)


def learning_rate_fn(config):
  """Poly decay, lr * (1 - step / num_steps) ** 0.9, as EMANet."""
  t = config.train
  return optax.polynomial_schedule(t.lr, 0.0, t.poly_power, t.num_steps)


def make_optimizer(config):
  """SGD with momentum; L2 weight decay (coupled, as torch.optim.SGD) on kernels only."""
  decay_mask = lambda params: jax.tree_util.tree_map_with_path(
      lambda path, _: path[-1].key == "kernel", params)
  return optax.chain(optax.add_decayed_weights(config.train.weight_decay, decay_mask),
                     optax.sgd(learning_rate_fn(config), momentum=config.train.momentum))


def create_train_state(config, model, rng, *, load_backbone=True):
  """A fresh state; with config.model.backbone_checkpoint (and load_backbone), the
  backbone starts from that converted ImageNet checkpoint, the heads from `rng`."""
  pretrained = None
  if load_backbone and config.model.backbone_checkpoint:
    pretrained = backbone_checkpoint.load_for(config)
  size = config.data.crop_size
  variables = jax.jit(functools.partial(model.init, train=False))(
      {"params": rng}, jnp.zeros((1, size, size, 3), jnp.float32))
  params, batch_stats = variables["params"], variables["batch_stats"]
  if pretrained is not None:
    params, batch_stats = backbone_checkpoint.replace_backbone(
        params, batch_stats, pretrained, config.model.backbone_checkpoint)
  return TrainState.create(apply_fn=model.apply, params=params, batch_stats=batch_stats,
                           hem_bases=variables[BASES], tx=make_optimizer(config))


def loss_and_grads(state, batch, *, config):
  """(loss, main-head loss, updated BN statistics / mu0 / ELBOs), gradients."""
  rng = jax.random.fold_in(jax.random.key(config.seed), state.step)
  collections = ["batch_stats", BASES, DIAGNOSTICS] + ([STATS] if config.train.log_elbo else [])

  def loss_fn(params):
    (logits, aux), updates = state.apply_fn(
        {**state.variables(), "params": params}, batch["image"], train=True,
        mutable=collections, rngs={"dropout": rng})
    main = metrics.cross_entropy(logits, batch["label"])
    aux_loss = metrics.cross_entropy(aux, batch["label"]) if aux is not None else 0.0
    return main + config.model.aux_weight * aux_loss, (main, updates)

  return jax.value_and_grad(loss_fn, has_aux=True)(state.params)


def train_step(state, batch, *, config):
  """One SGD step; BN statistics and mu0 move with the global batch."""
  (loss, (main, updates)), grads = loss_and_grads(state, batch, config=config)
  state = state.apply_gradients(grads=grads, batch_stats=updates["batch_stats"],
                                hem_bases=updates[BASES])
  out = {"loss": loss, "main_loss": main, "lr": learning_rate_fn(config)(state.step - 1)}
  if config.train.log_elbo:  # [T] per HEM unit: Eq. 3 after each iteration
    for path, elbo in jax.tree_util.tree_flatten_with_path(updates[STATS])[0]:
      out["elbo/" + "/".join(str(getattr(k, "key", k)) for k in path[:-2])] = elbo
  for unit, sums in _per_unit(updates[DIAGNOSTICS]).items():  # gamma^(T) of this batch
    for name, value in hem_diagnostics.gamma_diagnostics(**sums).items():
      out[f"attention/{unit}/{name}"] = value
  return state, out


def _per_unit(sown):
  """{HEM unit path: {name: value}} of a collection each unit sowed once per name."""
  units = {}
  for path, value in jax.tree_util.tree_flatten_with_path(sown)[0]:
    keys = [str(getattr(k, "key", k)) for k in path]
    units.setdefault("/".join(keys[:-2]), {})[keys[-2]] = value
  return units


def mu0_report(hem_bases):
  """{HEM unit path: hem_diagnostics.mu0_diagnostics} of the state's mu0 (on the host)."""
  return {"/".join(str(getattr(k, "key", k)) for k in path[:-1]):
          hem_diagnostics.mu0_diagnostics(jax.device_get(mu0))
          for path, mu0 in jax.tree_util.tree_flatten_with_path(hem_bases)[0]}


def jit_train_step(config, mesh, state_sharding, donate=True):
  """train_step compiled for the mesh. Donating the state lets XLA update it in place:
  without, every step holds two copies of parameters and momenta."""
  return jax.jit(functools.partial(train_step, config=config),
                 in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
                 out_shardings=(state_sharding, sharding.replicated(mesh)),
                 donate_argnums=0 if donate else ())


def eval_step(state, batch, *, num_classes):
  """(confusion matrix, the HEM units' gamma statistics to sum over the split)."""
  (logits, _), updates = state.apply_fn(state.variables(), batch["image"], train=False,
                                        mutable=[DIAGNOSTICS])
  cm = metrics.confusion_matrix(batch["label"], jnp.argmax(logits, -1), num_classes)
  return cm, updates[DIAGNOSTICS]


def evaluate(state, model, split, config, mesh, step_fn=eval_step):
  """mIoU over `split`, with `model`'s T_eval; single-scale unless `step_fn` (with
  eval_step's signature) does otherwise, as hemnet_jax.evaluate's multi-scale step."""
  step = jax.jit(functools.partial(step_fn, num_classes=config.data.num_classes),
                 out_shardings=sharding.replicated(mesh))
  state = state.replace(apply_fn=model.apply)
  # Each process reads every process_count-th example; its batches are filled with
  # ignore-only examples up to a multiple of its device count.
  local_batch = -(-config.data.eval_batch_size // jax.process_count())
  n = jax.local_device_count()
  cm, sums = 0, None
  for batch in input_pipeline.eval_batches(
      split, config.data, batch_size=local_batch, multiple=config.model.output_stride,
      process_index=jax.process_index(), process_count=jax.process_count(),
      pad_to=-(-local_batch // n) * n):
    out = step(state, sharding.shard_batch(batch, mesh))
    if isinstance(out, tuple):  # eval_step: gamma statistics too (a multi-scale step has none)
      out, new = out
      sums = new if sums is None else jax.tree.map(jnp.add, sums, new)
    cm = cm + out
  cm = np.asarray(jax.device_get(cm))
  summary = metrics.summarize(cm, datasets.class_names(config.data))
  if sums is not None:  # on the split, padding included; ignore-label pixels are not left out
    summary["attention"] = {unit: {k: float(v) for k, v in hem_diagnostics.gamma_diagnostics(
        **jax.device_get(s)).items()} for unit, s in _per_unit(sums).items()}
  return summary, cm


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
  config = config_utils.validate(config)
  workdir = epath.Path(workdir).absolute()
  is_main = jax.process_index() == 0
  mesh = sharding.make_mesh()
  if config.train.batch_size % jax.device_count():
    raise ValueError(f"config.train.batch_size={config.train.batch_size} is not divisible by "
                     f"the {jax.device_count()} devices")
  train_split = input_pipeline.load_split(config.data, config.data.train_split)
  eval_split = input_pipeline.load_split(config.data, config.data.eval_split)
  model = build_model(config)
  mngr = ocp.CheckpointManager(workdir / "checkpoints", options=ocp.CheckpointManagerOptions(
      max_to_keep=config.train.keep_checkpoints, create=True))
  # A resumed run takes every weight from its own checkpoint, so the pretrained file may be gone.
  state = create_train_state(config, model, jax.random.key(config.seed),
                             load_backbone=mngr.latest_step() is None)
  state_sharding = sharding.state_shardings(state, mesh, fsdp=config.train.fsdp)
  if mngr.latest_step() is not None:  # onto this run's mesh, whatever mesh wrote it
    state = mngr.restore(mngr.latest_step(), args=ocp.args.StandardRestore(
        sharding.abstract_state(state, state_sharding)))
    if is_main:
      print(f"Resumed from {mngr.directory} at step {int(state.step)}", flush=True)
  state = jax.device_put(state, state_sharding)
  if is_main:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  writer = _summary_writer(workdir) if is_main else None

  start, num_steps = int(state.step), config.train.num_steps
  batches = input_pipeline.train_batches(
      train_split, config.data, batch_size=config.train.batch_size // jax.process_count(),
      seed=config.seed, start_step=start, process_index=jax.process_index(),
      process_count=jax.process_count())
  p_train_step = jit_train_step(config, mesh, state_sharding)
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
        _write_train(writer, step, means, ips, mu0_report(state.hem_bases))
        eta = (num_steps - step) * config.train.batch_size / ips
        print(f"step {step}/{num_steps}  loss {means['loss']:.4f}  lr {means['lr']:.2e}  "
              f"{ips:.1f} img/s  ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}", flush=True)
      history, t_last = [], time.time()
    if step % config.train.checkpoint_every == 0 or step == num_steps or preemption.requested:
      _check_finite(history, step, mngr)
      mngr.save(step, args=ocp.args.StandardSave(state))
    if preemption.requested:
      mngr.wait_until_finished()
      print(f"SIGTERM: saved a checkpoint at step {step}; exiting.", flush=True)
      raise SystemExit(143)
    if step % config.train.eval_every == 0 and step != num_steps:
      summary, _ = evaluate(state, model, eval_split, config, mesh)
      if is_main:
        writer.add_scalar("eval/miou", summary["miou"], step)
        print(f"step {step}: val mIoU {100 * summary['miou']:.2f}", flush=True)
  mngr.wait_until_finished()

  summary, cm = evaluate(state, model, eval_split, config, mesh)
  summary = {"step": int(state.step), "num_iters_eval": config.hem.num_iters_eval or config.hem.num_iters,
             **summary, "confusion_matrix": cm.tolist()}
  for unit, diag in mu0_report(state.hem_bases).items():  # gamma's (validation) + mu0's
    summary.setdefault("attention", {}).setdefault(unit, {}).update(diag)
  if is_main:
    _write_eval(writer, summary)
    (workdir / "results.json").write_text(json.dumps(summary, indent=2))
    print(f"Final evaluation at step {summary['step']} on '{config.data.eval_split}':\n"
          + metrics.format_table(summary) + "\n" + format_attention(summary), flush=True)
    writer.close()
  return summary


def _summary_writer(workdir):
  from tensorboardX import SummaryWriter  # imported here: only process 0 writes
  return SummaryWriter(str(workdir / "tensorboard"))


def format_attention(summary):
  """One line per HEM unit: the diagnostics of summary["attention"]."""
  lines = []
  for unit, d in summary.get("attention", {}).items():
    gamma = (f"entropy {d['entropy']:.3f}  bases in use {d['bases_in_use']:.2f}  "
             if "entropy" in d else "")
    mu0 = (f"distinct bases in mu0 {d['distinct_bases']}  cosine max {d['max_cosine']:.4f} "
           f"median {d['median_cosine']:.4f}  ||mu0_k|| min {d['min_norm']:.3g} median "
           f"{d['median_norm']:.3g} max {d['max_norm']:.3g}" if "distinct_bases" in d else "")
    lines.append(f"HEM unit '{unit}': {gamma}{mu0}")
  return "\n".join(lines)


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
