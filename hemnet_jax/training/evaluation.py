r"""Evaluates a trained checkpoint: single-scale, or multi-scale + flip as EMANet.

  python -m hemnet_jax.main --config configs/demo.py --workdir DIR --mode eval \
      [--config.eval.multi_scale=True --config.eval.flip=True] [--config.hem.num_iters_eval=5]

The latest checkpoint in <workdir>/checkpoints is evaluated on config.data.eval_split with
T_eval = config.hem.num_iters_eval (None: T_train) and no retraining (Table 2). Results
(mIoU, per-class IoU, pixel accuracy, the confusion matrix, and the HEM unit's ELBO after
each of the T_eval iterations) go to <workdir>/eval_<protocol>_T<T_eval>.json, where
protocol is ss, ss_flip, ms or ms_flip.

Multi-scale: the padded image is resized by each scale (bilinear), padded again to the
output stride, and segmented; the logits are cropped to the resized image, flipped back
for the flipped view, resized to the original size and turned into softmax
probabilities, which are averaged over every scale and view. The prediction is the
argmax of the average.
"""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from hemnet_jax import data
from hemnet_jax.data import pipeline
from hemnet_jax.models.hem_unit import STATS
from hemnet_jax.training import attention, checkpoints, config as config_lib, metrics, sharding, steps
from hemnet_jax.training.state import abstract_train_state, build_model


def protocol_name(eval_config):
  return ("ms" if eval_config.multi_scale else "ss") + ("_flip" if eval_config.flip else "")


@functools.lru_cache(maxsize=16)
def _compiled(step_fn, num_classes, mesh):
  """One jitted step per (step, classes, mesh): a training run evaluates every eval_every
  steps, and a jit made anew each time would compile anew each time."""
  return jax.jit(functools.partial(step_fn, num_classes=num_classes),
                 out_shardings=sharding.replicated(mesh))


def evaluate(state, model, split, config, mesh, step_fn=steps.eval_step):
  """mIoU over `split`, with `model`'s T_eval; single-scale unless `step_fn` (with
  eval_step's signature) does otherwise, as steps.multi_scale_eval_step."""
  step = _compiled(step_fn, config.data.num_classes, mesh)
  state = state.replace(apply_fn=model.apply)
  # Each process reads every process_count-th example; its batches are filled with
  # ignore-only examples up to a multiple of its device count.
  local_batch = -(-config.data.eval_batch_size // jax.process_count())
  n = jax.local_device_count()
  cm, sums = 0, None
  for batch in pipeline.eval_batches(
      split, config.data, batch_size=local_batch, multiple=config.model.output_stride,
      process_index=jax.process_index(), process_count=jax.process_count(),
      pad_to=-(-local_batch // n) * n):
    out = step(state, sharding.shard_batch(batch, mesh))
    if isinstance(out, tuple):  # eval_step: gamma statistics too (a multi-scale step has none)
      out, new = out
      sums = new if sums is None else jax.tree.map(jnp.add, sums, new)
    cm = cm + out
  cm = np.asarray(jax.device_get(cm))
  summary = metrics.summarize(cm, data.class_names(config.data))
  if sums:  # on the split, padding included; ignore-label pixels are not left out
    summary["attention"] = {unit: {k: float(v) for k, v in diag.items()}
                            for unit, diag in attention.gamma_report(jax.device_get(sums)).items()}
  return summary, cm


def iteration_elbo(state, model, batch):
  """The HEM unit's Eq. 3 ELBO after each of the model's T_eval iterations, [T_eval]."""
  @jax.jit
  def elbos(variables, images):
    _, updates = model.apply(variables, images, train=False, mutable=[STATS])
    leaves = jax.tree.leaves(updates.get(STATS, {}))  # one HEM unit, sown once
    return leaves[0] if leaves else jnp.zeros((0,))  # model.head="fcn": no HEM unit
  return np.asarray(elbos(state.variables(), batch["image"]))


def run(config, workdir):
  """Evaluates the latest checkpoint of `workdir`; writes and returns the results."""
  config = config_lib.validate(config)
  workdir = epath.Path(workdir).absolute()
  mesh = sharding.make_mesh()
  model = build_model(config)  # T_eval from config.hem.num_iters_eval
  state, step = checkpoints.restore(workdir, abstract_train_state(config, model), mesh=mesh,
                                    fsdp=config.train.fsdp)
  split = pipeline.load_split(config.data, config.data.eval_split)
  summary, cm = evaluate(state, model, split, config, mesh, step_fn=steps.eval_step_for(config))
  attention.add_mu0(summary, state.hem_bases)  # with gamma's (single-scale)
  first = next(pipeline.eval_batches(split, config.data, batch_size=config.data.eval_batch_size,
                                           multiple=config.model.output_stride))
  t_eval = config.hem.num_iters_eval
  result = {"step": int(step), "split": config.data.eval_split, "protocol": protocol_name(config.eval),
            "scales": list(steps.scales_of(config.eval)), "flip": bool(config.eval.flip),
            "num_iters_train": config.hem.num_iters, "num_iters_eval": t_eval,
            "elbo_per_iter": iteration_elbo(state, model, first).tolist(),
            **summary, "confusion_matrix": cm.tolist()}
  if jax.process_index() == 0:
    path = workdir / f"eval_{result['protocol']}_T{t_eval}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"Evaluation ({result['protocol']}, T_eval {t_eval}) of step {step} on "
          f"'{config.data.eval_split}':\n{metrics.format_table(summary)}\n"
          f"{attention.format_attention(summary)}\nWrote {path}", flush=True)
  return result
