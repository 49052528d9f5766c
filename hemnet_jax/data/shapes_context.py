"""A shapes set whose objects are classified by evidence elsewhere in the image: `hemnet_context`.

Built into tfds on first use, like `hemnet_shapes` (whose drawing code it reuses).
Every image holds a group of objects on `hemnet_shapes`' background: a class c (1-4),
its own random pair of colours, and

- one *key*: a small object with class c's shape (square, triangle, star, cross)
  filled with class c's own colour (`PALETTE`);
- two or three *decoys*: larger discs with the same dotted texture for every class,
  drawn in the group's random colours.

Every object is labelled with its group's class. A decoy's neighbourhood looks the
same whatever its class: only the key, at least `MIN_KEY_DISTANCE` pixels away,
tells which class it is. Decoys cover most of the foreground, so a head that sees
only a neighbourhood loses most of its mIoU, while global attention, which can
average features over all the image's objects, can carry the key's class to the
decoys. Two harder settings, measured in docs/attention_experiment.md: KEY_COLOURS =
False (the key has class c's `hemnet_shapes` texture, in the group's colours) and
MAX_GROUPS = 2 (two groups of different classes, told apart only by their colours).
"""

from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from hemnet_jax.data import shapes

IMAGE_SIZE = shapes.IMAGE_SIZE
NUM_TRAIN = 3000
NUM_VALIDATION = 300
SPLIT_SEEDS = {"train": 0, "validation": 1}  # as hemnet_shapes: default_rng([seed, index])

# The key classes: (name, shape, texture) rows of hemnet_shapes.
_KEYS = tuple(shapes._CLASSES[i] for i in (1, 2, 3, 4))
CLASS_NAMES = ("background",) + tuple(name for name, _, _ in _KEYS)
NUM_CLASSES = len(CLASS_NAMES)
PALETTE = shapes.PALETTE[:NUM_CLASSES]

MIN_GROUPS, MAX_GROUPS = 1, 1  # 2: two groups, told apart by colour only (harder)
MIN_DECOYS, MAX_DECOYS = 2, 3  # per group
KEY_RADIUS = (10.0, 13.0)
DECOY_RADIUS = (11.0, 15.0)
# True: a key is its class's shape filled with its class's colour (PALETTE); False: its
# class's shape and texture in the group's colours (to be matched with its decoys by colour).
KEY_COLOURS = True
MIN_KEY_DISTANCE = 40.0  # pixels between a key's centre and its decoys' centres
GAP = 3.0  # pixels between any two objects' circumcircles
# Two groups' colours: every colour of one at least this far from every colour of the other.
MIN_GROUP_COLOUR_DISTANCE = 90.0

Array = np.ndarray


def _paint(image, label, rng, class_id, shape, texture, centre, radius, colours):
  """Draws one object (hemnet_shapes' drawing with a given centre, radius and colours)."""
  cx, cy = centre
  angle = rng.uniform(0, 2 * np.pi)
  period = rng.uniform(shapes.MIN_PERIOD, shapes.MAX_PERIOD)
  phase = rng.uniform()
  extent = 1.15 * radius + 1  # the triangle reaches 1.15 r
  box = (slice(max(0, int(cy - extent)), min(IMAGE_SIZE, int(cy + extent) + 1)),
         slice(max(0, int(cx - extent)), min(IMAGE_SIZE, int(cx + extent) + 1)))
  x, y = shapes._X[box], shapes._Y[box]
  dx, dy = x - cx, y - cy
  cos, sin = np.cos(angle), np.sin(angle)
  inside = shape((dx * cos + dy * sin) / radius, (dy * cos - dx * sin) / radius)
  pattern = texture(x, y, np.hypot(dx, dy), np.arctan2(dy, dx), period, phase)
  colour = np.where(pattern[..., None], *colours)
  image[box] = np.where(inside[..., None], colour, image[box])
  label[box][inside] = class_id


def _group_colours(rng, num_groups):
  """One colour pair per group, each pair far from the others' colours."""
  while True:
    pairs = [shapes._colour_pair(rng) for _ in range(num_groups)]
    far = all(np.linalg.norm(a - b) > MIN_GROUP_COLOUR_DISTANCE
              for i in range(num_groups) for j in range(i) for a in pairs[i] for b in pairs[j])
    if far:
      return pairs


def _layout(rng, groups):
  """Centres and radii for [(is_key, group)], no overlaps, keys far from their decoys.

  Rejection sampling; None when a draw of 200 tries finds no room (the caller redraws).
  """
  placed = []  # (x, y, r, is_key, group)
  for is_key, group in groups:
    lo, hi = KEY_RADIUS if is_key else DECOY_RADIUS
    for _ in range(200):
      r = rng.uniform(lo, hi)
      x, y = rng.uniform(r, IMAGE_SIZE - r, size=2)
      ok = all(np.hypot(x - px, y - py) >= r + pr + GAP
               and (g != group or is_key == k or np.hypot(x - px, y - py) >= MIN_KEY_DISTANCE)
               for px, py, pr, k, g in placed)
      if ok:
        placed.append((x, y, r, is_key, group))
        break
    else:
      return None
  return placed


def render_example(rng: np.random.Generator) -> tuple[Array, Array]:
  """Renders one (image uint8 [S, S, 3], label uint8 [S, S]) example."""
  image = shapes._background(rng)
  label = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
  num_groups = int(rng.integers(MIN_GROUPS, MAX_GROUPS + 1))
  classes = rng.choice(np.arange(1, NUM_CLASSES), size=num_groups, replace=False)
  colours = _group_colours(rng, num_groups)
  while True:
    groups = []
    for g in range(num_groups):
      groups += [(True, g)] + [(False, g)] * int(rng.integers(MIN_DECOYS, MAX_DECOYS + 1))
    placed = _layout(rng, groups)
    if placed is not None:
      break
  for x, y, r, is_key, g in placed:
    class_id = int(classes[g])
    if is_key and KEY_COLOURS:  # the class's own solid colour: seen at a glance
      colour = np.asarray(shapes.PALETTE[class_id], np.float32)
      _paint(image, label, rng, class_id, _KEYS[class_id - 1][1], shapes._solid, (x, y), r,
             (colour, colour))
    else:
      _, shape, texture = _KEYS[class_id - 1] if is_key else ("decoy", shapes._disc, shapes._dots)
      _paint(image, label, rng, class_id, shape, texture, (x, y), r, colours[g])
  image = image + rng.normal(0, shapes.NOISE_SIGMA, size=image.shape)
  return np.clip(np.rint(image), 0, 255).astype(np.uint8), label


class HemnetContext(shapes.HemnetShapes):
  """Procedural set whose decoys take their class from a distant key (no download needed).

  HemnetShapes' version, code path and `skip_corrupt`; its own examples.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    features = super()._info().features  # the same images, labels and ids
    return tfds.core.DatasetInfo(builder=self, description=__doc__, features=features,
                                 supervised_keys=None, homepage=None)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Everything is generated procedurally.
    return {"train": self._generate_examples("train", NUM_TRAIN),
            "validation": self._generate_examples("validation", NUM_VALIDATION)}

  def _generate_examples(self, split: str, num_examples: int) -> Iterator:
    for index in range(num_examples):
      image, label = render_example(np.random.default_rng([SPLIT_SEEDS[split], index]))
      key = f"{split}_{index:06d}"
      yield key, {"image": image, "label": label, "id": key}
