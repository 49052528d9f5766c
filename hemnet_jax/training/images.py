"""Pictures of a model's predictions: one image through the model, and the image summaries.

`make_forward` and `predict` segment one image as evaluation does (its normalisation and
padding); tools/predict.py and the training loop share them. At every evaluation the loop
writes, for the first config.train.summary_images validation images (`choose`), the
prediction over the image, the label and the last HEM iteration's attention maps (`write`).
"""

import dataclasses

import jax
import numpy as np
from PIL import Image

from hemnet_jax.data import pipeline
from hemnet_jax.models.hem_unit import ATTENTION
from hemnet_jax.training import sharding
from hemnet_jax.vis import render

# Longer side of one attention map in the summaries: larger maps are subsampled, so that a
# 64-basis grid stays about 530 pixels wide whatever the image size.
MAX_ATTENTION_CELL = 64


def make_forward(model, attention=False, mesh=None):
  """jitted (variables, normalised image [H, W, 3]) -> (logits [H, W, classes], gamma [h, w, K]
  or None: the last HEM iteration's responsibilities, with `attention`).

  With `mesh` the image goes onto it replicated and the outputs come back replicated, so the
  variables may be laid out over the mesh in any way (FSDP, several processes: then every
  process calls it)."""

  def apply(variables, image):
    (logits, _), updates = model.apply(variables, image[None], train=False,
                                       mutable=[ATTENTION] if attention else [])
    gammas = jax.tree.leaves(updates.get(ATTENTION, {}))  # one HEM unit: one sown gamma
    return logits[0], gammas[0][0] if gammas else None

  if mesh is None:
    return jax.jit(apply)
  jitted = jax.jit(apply, out_shardings=sharding.replicated(mesh))
  put = lambda x: jax.make_array_from_process_local_data(sharding.replicated(mesh), np.asarray(x),
                                                         np.shape(x))
  return lambda variables, image: jitted(variables, put(image))


def predict(forward, variables, image, output_stride, max_side=0, plus_one=False):
  """(label map [H, W] uint8, last-iteration gamma [h, w, K] or None) of a uint8 RGB image,
  segmented at most `max_side` pixels on its longer side (0: as it is)."""
  h, w = image.shape[:2]
  if max_side and max(h, w) > max_side:
    scale = max_side / max(h, w)
    small = Image.fromarray(image).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                          Image.BILINEAR)
    label, gamma = predict(forward, variables, np.asarray(small), output_stride,
                           plus_one=plus_one)
    return np.asarray(Image.fromarray(label).resize((w, h), Image.NEAREST)), gamma
  # Evaluation's own normalisation and padding (a dummy label rides along).
  example = pipeline.eval_transform(
      {"image": image, "label": np.zeros((h, w), np.uint8)}, multiple=output_stride,
      plus_one=plus_one)
  logits, gamma = forward(variables, example["image"])
  # Fetched whole (replicated), then cropped: no computation on the device arrays here.
  label = np.asarray(logits, np.float32)[:h, :w].argmax(-1).astype(np.uint8)
  return label, None if gamma is None else np.asarray(gamma, np.float32)


@dataclasses.dataclass(frozen=True)
class Samples:
  """The validation images the summaries show, and how to segment them."""
  images: list  # uint8 [H, W, 3]
  labels: list  # uint8 [H, W]; 255 (ignored) is drawn in the palette's colour 255
  forward: object  # make_forward's, compiled once for the run
  colours: np.ndarray
  output_stride: int
  plus_one: bool


def choose(config, model, split, mesh):
  """The first config.train.summary_images examples of `split` (the same on every
  process), or None when that is 0."""
  n = min(config.train.summary_images, split.num_examples)
  if not n:
    return None
  examples = [pipeline.decode(split.source[i]) for i in range(n)]
  return Samples(images=[np.asarray(e["image"], np.uint8) for e in examples],
                 labels=[np.asarray(e["label"], np.uint8).reshape(e["label"].shape[:2])
                         for e in examples],
                 forward=make_forward(model, attention=config.model.head != "fcn", mesh=mesh),
                 colours=render.palette(config.data), output_stride=config.model.output_stride,
                 plus_one=config.data.get("eval_padding") == "stride_plus_one")


def _shrink(gamma):
  stride = -(-max(gamma.shape[:2]) // MAX_ATTENTION_CELL)
  return gamma[::stride, ::stride]


def write(writer, step, state, samples):
  """eval/images/<i>/prediction (the prediction over the image), .../label and .../attention
  (the last HEM iteration's gamma, one cell per basis; none for model.head="fcn") of each
  sample at `step`. Every process calls it (the variables may span them); only the one
  with a writer (process 0) writes."""
  if samples is None:
    return
  variables = state.variables()
  for i, (image, label) in enumerate(zip(samples.images, samples.labels)):
    predicted, gamma = predict(samples.forward, variables, image, samples.output_stride,
                               plus_one=samples.plus_one)
    if writer is None:
      continue
    mask = render.colourise(predicted, samples.colours)
    writer.add_image(f"eval/images/{i}/prediction", render.overlay(image, mask), step,
                     dataformats="HWC")
    writer.add_image(f"eval/images/{i}/label", render.colourise(label, samples.colours), step,
                     dataformats="HWC")
    if gamma is not None:
      writer.add_image(f"eval/images/{i}/attention", render.attention_grid(_shrink(gamma)), step,
                       dataformats="HW")
  if writer is not None:
    writer.flush()
