r"""Segments images with a trained HEMNet.

  python -m hemnet_jax.tools.predict --workdir DIR --images a.jpg,b.png --out OUT [--attention]
  python -m hemnet_jax.tools.predict --checkpoint DIR/checkpoints/1200 --images a.jpg --out OUT

The model is rebuilt from <workdir>/config.json and restored from the latest
checkpoint (or the given step directory). Each image is normalised and padded as
in evaluation, and the prediction is cropped back to the image. Per image NAME:
  NAME_label.png      class ids, uint8 grayscale
  NAME_mask.png       the class colours (the dataset's palette, else a generic one)
  NAME_overlay.png    the mask blended over the image
  NAME_attention.png  with --attention: the last HEM iteration's responsibilities,
                      one cell per basis (see vis/render.py, attention_grid)

The camera's EXIF orientation is applied first. An image whose longer side exceeds
--max_side is segmented at that size and its label map resized back (nearest class), so a
large photo fits in memory. A file that cannot be read is reported on one line and skipped;
the exit status is 1 if any image failed.
"""

import sys

import numpy as np
from etils import epath
from PIL import Image, ImageOps

from hemnet_jax import cli
from hemnet_jax.training import checkpoints, state as state_lib
from hemnet_jax.training.images import make_forward, predict  # shared with the loop's summaries
from hemnet_jax.vis import render


def restore_variables(workdir, checkpoint=None):
  """(config, model, variables, step) of a run: its latest checkpoint, or the step
  directory `checkpoint` (<workdir>/checkpoints/<step>, whose run gives the config
  unless `workdir` is set)."""
  step = None
  if checkpoint:
    step_dir = epath.Path(checkpoint).absolute()
    if not step_dir.name.isdigit():
      raise FileNotFoundError(f"--checkpoint {step_dir}: expected a step directory "
                              "<workdir>/checkpoints/<step>")
    workdir, step = workdir or step_dir.parent.parent, int(step_dir.name)
  config = checkpoints.load_config(workdir)
  model = state_lib.build_model(config)
  state, step = checkpoints.restore(workdir, state_lib.abstract_train_state(config, model), step=step)
  return config, model, state.variables(), step


def load_image(path):
  """A uint8 RGB array of an image file, turned upright as its EXIF orientation says."""
  with Image.open(path) as image:
    return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def write_outputs(out, name, image, label, colours, gamma=None):
  mask = render.colourise(label, colours)
  Image.fromarray(label).save(out / f"{name}_label.png")
  Image.fromarray(mask).save(out / f"{name}_mask.png")
  Image.fromarray(render.overlay(image, mask)).save(out / f"{name}_overlay.png")
  if gamma is not None:
    Image.fromarray(render.attention_grid(gamma)).save(out / f"{name}_attention.png")


def run(workdir, checkpoint, images, out, attention=False, max_side=0):
  """The command line's work: predictions for every image in `images`; the number of images
  that could not be read (each reported on one line)."""
  names = [epath.Path(p).stem for p in images]
  if len(set(names)) != len(names):
    raise ValueError(f"--images: two images share a file name stem ({names}); outputs would collide")
  config, model, variables, step = restore_variables(workdir, checkpoint)
  out = epath.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  colours = render.palette(config.data)
  forward = make_forward(model, attention)
  failed = 0
  for path, name in zip(images, names):
    try:
      image = load_image(path)
    except (OSError, ValueError, Image.DecompressionBombError) as e:  # empty, truncated, not an image
      print(f"error: {path}: cannot read the image ({e})", file=sys.stderr, flush=True)
      failed += 1
      continue
    label, gamma = predict(forward, variables, image, config.model.output_stride, max_side,
                           plus_one=config.data.get("eval_padding") == "stride_plus_one")
    write_outputs(out, name, image, label, colours, gamma)
    print(f"{path}: {image.shape[1]}x{image.shape[0]} -> {out / name}_*.png", flush=True)
  print(f"Predicted {len(images) - failed} of {len(images)} images with step {step} of "
        f"{config.data.name}'s model.", flush=True)
  return failed


def main(f):
  if not f.workdir and not f.checkpoint:
    raise ValueError("give --workdir or --checkpoint")
  if f.max_side < 0:
    raise ValueError(f"--max_side must be >= 0, got {f.max_side}")
  return 1 if run(f.workdir, f.checkpoint, f.images, f.out, f.attention, f.max_side) else 0


if __name__ == "__main__":
  from absl import flags
  flags.DEFINE_string("workdir", None, "A training run (its config.json and checkpoints/).")
  flags.DEFINE_string("checkpoint", None, "A step directory, <workdir>/checkpoints/<step>; its "
                      "workdir gives the config unless --workdir is set.")
  flags.DEFINE_list("images", None, "Comma-separated image files.")
  flags.DEFINE_string("out", None, "Output directory.")
  flags.DEFINE_bool("attention", False, "Also write the per-basis attention maps of the last "
                    "HEM iteration.")
  flags.DEFINE_integer("max_side", 2048, "Longer side (pixels) above which an image is segmented "
                       "downscaled and its labels resized back; 0: never.")
  flags.mark_flags_as_required(["images", "out"])
  cli.start(main)
