"""Predictions as pictures: colour-coded label maps, overlays, attention-map grids."""

import math

import numpy as np

from hemnet_jax.data import folder, shapes

# Datasets that define their own colour code; the others get `generic_palette`.
PALETTES = {"hemnet_shapes": shapes.PALETTE}


def generic_palette():
  """The PASCAL VOC colour map, [256, 3] uint8: the bits of the class id spread
  over R, G and B, so neighbouring ids get clearly different colours."""
  ids = np.arange(256)
  palette = np.zeros((256, 3), np.int64)
  for bit in range(8):
    for channel in range(3):
      palette[:, channel] |= ((ids >> (3 * bit + channel)) & 1) << (7 - bit)
  return palette.astype(np.uint8)


def palette(data_config):
  """[256, 3] uint8 colours of config.data's classes."""
  colours = generic_palette()
  own = PALETTES.get(data_config.name)
  if data_config.name == "folder":  # the first palette label's colours, stored when prepared
    from hemnet_jax.data import pipeline  # pylint: disable=import-outside-toplevel
    own = folder.palette(data_config, pipeline.data_dir(data_config))
  if own is not None and len(own) >= data_config.num_classes:
    colours[:len(own)] = np.asarray(own, np.uint8)
  return colours


def colourise(label, colours):
  return colours[label]


def overlay(image, mask, alpha=0.5):
  """The mask blended over the image, both [H, W, 3] uint8."""
  blend = (1 - alpha) * image.astype(np.float32) + alpha * mask.astype(np.float32)
  return np.clip(np.rint(blend), 0, 255).astype(np.uint8)


def attention_grid(gamma, min_cell=64, gap=2):
  """[h, w, K] responsibilities in [0, 1] as a grayscale grid, one cell per basis.

  Cells are the maps enlarged by an integer factor (nearest) to about min_cell
  pixels, in basis order, row-major over ceil(sqrt(K)) columns; 255 is gamma = 1.
  Values are not rescaled per map, so a basis that explains nothing stays dark.
  """
  h, w, k = gamma.shape
  scale = max(1, min_cell // max(h, w))
  cols = math.ceil(math.sqrt(k))
  rows = math.ceil(k / cols)
  ch, cw = h * scale, w * scale
  grid = np.full((rows * (ch + gap) - gap, cols * (cw + gap) - gap), 128, np.uint8)
  cells = np.clip(np.rint(np.asarray(gamma, np.float32) * 255), 0, 255).astype(np.uint8)
  for i in range(k):
    r, c = divmod(i, cols)
    cell = np.repeat(np.repeat(cells[:, :, i], scale, axis=0), scale, axis=1)
    grid[r * (ch + gap):r * (ch + gap) + ch, c * (cw + gap):c * (cw + gap) + cw] = cell
  return grid
