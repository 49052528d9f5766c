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
import orbax.checkpoint as ocp
from etils import epath

from hemnet_jax import config_utils, input_pipeline, metrics, sharding, train
from hemnet_jax.models.hem_unit import STATS


def protocol_name(eval_config):
  return ("ms" if eval_config.multi_scale else "ss") + ("_flip" if eval_config.flip else "")


def scales_of(eval_config):
  return tuple(float(s) for s in eval_config.scales) if eval_config.multi_scale else (1.0,)


def averaged_probabilities(logits_fn, images, *, scales, flip, multiple):
  """Softmax probabilities [B, H, W, classes] averaged over scales and flips.

  logits_fn maps images [B, h, w, 3] (h, w multiples of `multiple`) to logits
  [B, h, w, classes] at the input size.
  """
  b, h, w, _ = images.shape
  total, count = 0.0, 0
  for s in scales:
    sh, sw = max(1, int(h * s + 0.5)), max(1, int(w * s + 0.5))
    scaled = images if (sh, sw) == (h, w) else jax.image.resize(images, (b, sh, sw, 3), "bilinear")
    for flipped in (False, True) if flip else (False,):
      x = scaled[:, :, ::-1] if flipped else scaled
      # Zeros are the mean colour after normalisation, as eval_transform pads.
      x = jnp.pad(x, ((0, 0), (0, -sh % multiple), (0, -sw % multiple), (0, 0)))
      logits = logits_fn(x)[:, :sh, :sw].astype(jnp.float32)
      if flipped:
        logits = logits[:, :, ::-1]
      if (sh, sw) != (h, w):
        logits = jax.image.resize(logits, (b, h, w, logits.shape[-1]), "bilinear")
      total, count = total + jax.nn.softmax(logits, axis=-1), count + 1
  return total / count


def multi_scale_eval_step(state, batch, *, num_classes, scales, flip, multiple):
  """train.eval_step's contract (a confusion matrix) with averaged probabilities."""
  logits_fn = lambda x: state.apply_fn(state.variables(), x, train=False)[0]
  probs = averaged_probabilities(logits_fn, batch["image"], scales=scales, flip=flip,
                                 multiple=multiple)
  return metrics.confusion_matrix(batch["label"], jnp.argmax(probs, -1), num_classes)


def step_fn_for(config):
  """train.eval_step for plain single-scale evaluation, else the multi-scale step."""
  if not config.eval.multi_scale and not config.eval.flip:
    return train.eval_step
  return functools.partial(multi_scale_eval_step, scales=scales_of(config.eval),
                           flip=config.eval.flip, multiple=config.model.output_stride)


def restore_state(config, model, checkpoints, mesh, step=None):
  """(TrainState, step) of checkpoint `step` (None: the latest), placed on `mesh`."""
  checkpoints = epath.Path(checkpoints).absolute()
  if not checkpoints.is_dir():
    raise FileNotFoundError(f"{checkpoints} does not exist: --mode eval needs a trained run "
                            "(train it first with --mode train)")
  mngr = ocp.CheckpointManager(checkpoints, options=ocp.CheckpointManagerOptions(read_only=True))
  step = mngr.latest_step() if step is None else step
  if step not in mngr.all_steps():
    raise FileNotFoundError(f"no checkpoint {'yet' if step is None else f'of step {step}'} in "
                            f"{checkpoints} (steps there: {list(mngr.all_steps())})")
  abstract = jax.eval_shape(functools.partial(
      train.create_train_state, config, model, jax.random.key(0), load_backbone=False))
  shardings = sharding.state_shardings(abstract, mesh, fsdp=config.train.fsdp)
  state = mngr.restore(step, args=ocp.args.StandardRestore(
      sharding.abstract_state(abstract, shardings)))
  return state, step


def iteration_elbo(state, model, batch):
  """The HEM unit's Eq. 3 ELBO after each of the model's T_eval iterations, [T_eval]."""
  @jax.jit
  def elbos(variables, images):
    _, updates = model.apply(variables, images, train=False, mutable=[STATS])
    return jax.tree.leaves(updates[STATS])[0]  # one HEM unit, sown once
  return np.asarray(elbos(state.variables(), batch["image"]))


def run(config, workdir):
  """Evaluates the latest checkpoint of `workdir`; writes and returns the results."""
  config = config_utils.validate(config)
  workdir = epath.Path(workdir).absolute()
  mesh = sharding.make_mesh()
  model = train.build_model(config)  # T_eval from config.hem.num_iters_eval
  state, step = restore_state(config, model, workdir / "checkpoints", mesh)
  split = input_pipeline.load_split(config.data, config.data.eval_split)
  summary, cm = train.evaluate(state, model, split, config, mesh, step_fn=step_fn_for(config))
  for unit, diag in train.mu0_report(state.hem_bases).items():  # with gamma's (single-scale)
    summary.setdefault("attention", {}).setdefault(unit, {}).update(diag)
  first = next(input_pipeline.eval_batches(split, config.data, batch_size=config.data.eval_batch_size,
                                           multiple=config.model.output_stride))
  t_eval = config.hem.num_iters_eval or config.hem.num_iters
  result = {"step": int(step), "split": config.data.eval_split, "protocol": protocol_name(config.eval),
            "scales": list(scales_of(config.eval)), "flip": bool(config.eval.flip),
            "num_iters_train": config.hem.num_iters, "num_iters_eval": t_eval,
            "elbo_per_iter": iteration_elbo(state, model, first).tolist(),
            **summary, "confusion_matrix": cm.tolist()}
  if jax.process_index() == 0:
    path = workdir / f"eval_{result['protocol']}_T{t_eval}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"Evaluation ({result['protocol']}, T_eval {t_eval}) of step {step} on "
          f"'{config.data.eval_split}':\n{metrics.format_table(summary)}\n"
          f"{train.format_attention(summary)}\nWrote {path}", flush=True)
  return result
