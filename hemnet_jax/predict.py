r"""Segments images with a trained HEMNet.

  python -m hemnet_jax.predict --workdir DIR --images a.jpg b.png --out OUT [--attention]
  python -m hemnet_jax.predict --checkpoint DIR/checkpoints/1200 --images a.jpg --out OUT

The model is rebuilt from <workdir>/config.json and restored from the latest
checkpoint (or the given step directory). Each image is normalised and padded as
in evaluation, and the prediction is cropped back to the image. Per image NAME:
  NAME_label.png      class ids, uint8 grayscale
  NAME_mask.png       the class colours (the dataset's palette, else a generic one)
  NAME_overlay.png    the mask blended over the image
  NAME_attention.png  with --attention: the last HEM iteration's responsibilities,
                      one cell per basis (see visualize.attention_grid)
"""

import argparse
import functools
import json
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from PIL import Image

from hemnet_jax import input_pipeline, train, visualize
from hemnet_jax.models.hem_unit import ATTENTION


def load_config(workdir):
  path = epath.Path(workdir) / "config.json"
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: --workdir must be a training run's directory")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def restore_variables(config, checkpoints, step=None):
  """The model variables of `step` (None: the latest) in a CheckpointManager directory."""
  checkpoints = epath.Path(checkpoints).absolute()
  if not checkpoints.is_dir():
    raise FileNotFoundError(f"{checkpoints} does not exist: the run saved no checkpoint yet")
  mngr = ocp.CheckpointManager(checkpoints, options=ocp.CheckpointManagerOptions(read_only=True))
  step = mngr.latest_step() if step is None else step
  if step not in mngr.all_steps():
    raise FileNotFoundError(f"no checkpoint {'yet' if step is None else f'of step {step}'} in "
                            f"{checkpoints} (steps there: {list(mngr.all_steps())})")
  model = train.build_model(config)
  # The structure to restore into, without running the model's initialisation.
  abstract = jax.eval_shape(functools.partial(
      train.create_train_state, config, model, jax.random.key(0), load_backbone=False))
  state = mngr.restore(step, args=ocp.args.StandardRestore(abstract))
  return model, state.variables(), step


def make_forward(model, attention=False):
  """jitted (variables, normalised image [H, W, 3]) -> (logits [H, W, classes], gamma or None)."""

  @jax.jit
  def forward(variables, image):
    (logits, _), updates = model.apply(variables, image[None], train=False,
                                       mutable=[ATTENTION] if attention else [])
    gammas = jax.tree.leaves(updates.get(ATTENTION, {}))  # one HEM unit: one sown gamma
    return logits[0], gammas[0][0] if gammas else None

  return forward


def predict(forward, variables, image, output_stride, plus_one=False):
  """(label map [H, W] uint8, last-iteration gamma [h, w, K] or None) of a uint8 RGB image."""
  h, w = image.shape[:2]
  # Evaluation's own normalisation and padding (a dummy label rides along).
  example = input_pipeline.eval_transform(
      {"image": image, "label": np.zeros((h, w), np.uint8)}, multiple=output_stride,
      plus_one=plus_one)
  logits, gamma = forward(variables, jnp.asarray(example["image"]))
  label = np.asarray(jnp.argmax(logits[:h, :w], axis=-1)).astype(np.uint8)
  return label, None if gamma is None else np.asarray(gamma)


def write_outputs(out, name, image, label, colours, gamma=None):
  mask = visualize.colourise(label, colours)
  Image.fromarray(label).save(out / f"{name}_label.png")
  Image.fromarray(mask).save(out / f"{name}_mask.png")
  Image.fromarray(visualize.overlay(image, mask)).save(out / f"{name}_overlay.png")
  if gamma is not None:
    Image.fromarray(visualize.attention_grid(gamma)).save(out / f"{name}_attention.png")


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m hemnet_jax.predict",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", help="a training run (its config.json and checkpoints/)")
  parser.add_argument("--checkpoint", help="a step directory, <workdir>/checkpoints/<step>; "
                      "its workdir gives the config unless --workdir is set")
  parser.add_argument("--images", nargs="+", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--attention", action="store_true",
                      help="also write the per-basis attention maps of the last HEM iteration")
  args = parser.parse_args(argv)
  if not args.workdir and not args.checkpoint:
    parser.error("give --workdir or --checkpoint")
  names = [epath.Path(p).stem for p in args.images]
  if len(set(names)) != len(names):
    parser.error(f"--images: two images share a file name stem ({names}); outputs would collide")

  try:
    if args.checkpoint:
      step_dir = epath.Path(args.checkpoint).absolute()
      if not step_dir.name.isdigit():
        raise FileNotFoundError(f"--checkpoint {step_dir}: expected a step directory "
                                "<workdir>/checkpoints/<step>")
      config = load_config(args.workdir or step_dir.parent.parent)
      model, variables, step = restore_variables(config, step_dir.parent, int(step_dir.name))
    else:
      config = load_config(args.workdir)
      model, variables, step = restore_variables(config, epath.Path(args.workdir) / "checkpoints")
  except FileNotFoundError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 1

  out = epath.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  colours = visualize.palette(config.data)
  forward = make_forward(model, args.attention)
  for path, name in zip(args.images, names):
    image = np.asarray(Image.open(path).convert("RGB"))
    label, gamma = predict(forward, variables, image, config.model.output_stride,
                           plus_one=config.data.get("eval_padding") == "stride_plus_one")
    write_outputs(out, name, image, label, colours, gamma)
    print(f"{path}: {image.shape[1]}x{image.shape[0]} -> {out / name}_*.png", flush=True)
  print(f"Predicted with step {step} of {config.data.name}'s model.", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
