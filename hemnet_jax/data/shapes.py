"""Procedural shapes segmentation dataset, built into tfds as `hemnet_shapes`.

Every image shows 2-5 overlapping objects on a noisy textured background. An
object's class is defined by its shape together with its fill texture; colours
are drawn at random for every object and every image, so a model cannot solve
the task from colour alone.

| id | shape    | texture                   |
|----|----------|---------------------------|
|  1 | disc     | concentric rings          |
|  2 | square   | checkerboard              |
|  3 | triangle | horizontal stripes        |
|  4 | star     | vertical stripes          |
|  5 | cross    | diagonal stripes          |
|  6 | ring     | solid                     |
|  7 | hexagon  | dots                      |
|  8 | ellipse  | crosshatch                |
|  9 | diamond  | wavy stripes              |
| 10 | crescent | radial spokes             |

Textures are laid out in image coordinates (they do not rotate with the
shape), so horizontal and vertical stripes stay distinguishable.
"""

from collections.abc import Callable, Iterator

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

IMAGE_SIZE = 96
NUM_TRAIN = 3000
NUM_VALIDATION = 300

# Example i of a split uses default_rng([seed, i]): the splits never share a
# stream, unlike with seed + i, where train[1] would equal validation[0].
SPLIT_SEEDS = {"train": 0, "validation": 1}

MIN_OBJECTS, MAX_OBJECTS = 2, 5
MIN_RADIUS, MAX_RADIUS = 12.0, 26.0
MIN_PERIOD, MAX_PERIOD = 4.5, 8.0
NOISE_SIGMA = 8.0

Array = np.ndarray

# Float32 halves the cost of every mask and texture evaluation.
_Y, _X = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) + 0.5


# Shapes: boolean masks over rotated coordinates (u, v) normalised by radius.


def _star_polygon(u: Array, v: Array, points: int, inner: float) -> Array:
  """Star with `points` tips at radius 1 and valleys at radius `inner`.

  A regular n-gon is the special case inner = cos(pi / n).
  """
  sector = 2 * np.pi / points
  angle = np.arctan2(v, u) % sector
  # Fold every sector onto [0, sector / 2]: tip at angle 0, valley at the end,
  # so one straight edge (tip -> valley) describes the whole outline.
  angle = np.minimum(angle, sector - angle)
  rho = np.hypot(u, v)
  px, py = rho * np.cos(angle), rho * np.sin(angle)
  vx, vy = inner * np.cos(sector / 2), inner * np.sin(sector / 2)
  return (vx - 1) * py - vy * (px - 1) >= 0


def _disc(u, v):
  return u * u + v * v <= 1


def _square(u, v):
  return _star_polygon(u, v, 4, np.cos(np.pi / 4))


def _triangle(u, v):
  # Slightly enlarged: at equal circumradius a triangle looks much smaller.
  return _star_polygon(u / 1.15, v / 1.15, 3, 0.5)


def _star(u, v):
  return _star_polygon(u, v, 5, 0.45)


def _cross(u, v):
  au, av = np.abs(u), np.abs(v)
  return ((au <= 0.33) & (av <= 1)) | ((av <= 0.33) & (au <= 1))


def _ring(u, v):
  r2 = u * u + v * v
  return (r2 <= 1) & (r2 >= 0.5**2)


def _hexagon(u, v):
  return _star_polygon(u, v, 6, np.cos(np.pi / 6))


def _ellipse(u, v):
  return u * u + (v / 0.55) ** 2 <= 1


def _diamond(u, v):
  # Elongated so that it differs from a rotated square.
  return np.abs(u) + np.abs(v) / 0.6 <= 1


def _crescent(u, v):
  return _disc(u, v) & ((u - 0.45) ** 2 + v * v > 0.8**2)


# Textures: True picks the first colour, False the second. Inputs are image
# coordinates (x, y), polar coordinates about the object centre (rho, theta),
# the period in pixels and a phase in [0, 1).


def _bands(d: Array, period: float, phase: float, duty: float = 0.5) -> Array:
  return (d / period + phase) % 1.0 < duty


def _solid(x, y, rho, theta, period, phase):
  return np.ones_like(x, dtype=bool)


def _horizontal(x, y, rho, theta, period, phase):
  return _bands(y, period, phase)


def _vertical(x, y, rho, theta, period, phase):
  return _bands(x, period, phase)


def _diagonal(x, y, rho, theta, period, phase):
  return _bands((x + y) / np.sqrt(2), period, phase)


def _checker(x, y, rho, theta, period, phase):
  return _bands(x, period, phase) ^ _bands(y, period, phase)


def _dots(x, y, rho, theta, period, phase):
  # Slightly larger cells so that the dots stay several pixels wide.
  cell = 1.3 * period
  fx = (x / cell + phase) % 1.0 - 0.5
  fy = (y / cell + phase) % 1.0 - 0.5
  return fx * fx + fy * fy < 0.3**2


def _concentric(x, y, rho, theta, period, phase):
  return _bands(rho, period, phase)


def _crosshatch(x, y, rho, theta, period, phase):
  return _bands(x, period, phase, 0.35) | _bands(y, period, phase, 0.35)


def _waves(x, y, rho, theta, period, phase):
  wobble = 0.6 * period * np.sin(2 * np.pi * x / (3 * period))
  return _bands(y + wobble, period, phase)


def _spokes(x, y, rho, theta, period, phase):
  return _bands(theta, 2 * np.pi / 12, phase)


_Shape = Callable[[Array, Array], Array]
_Texture = Callable[..., Array]

# Index + 1 is the label id; the background is label 0.
_CLASSES: tuple[tuple[str, _Shape, _Texture], ...] = (
    ("disc", _disc, _concentric),
    ("square", _square, _checker),
    ("triangle", _triangle, _horizontal),
    ("star", _star, _vertical),
    ("cross", _cross, _diagonal),
    ("ring", _ring, _solid),
    ("hexagon", _hexagon, _dots),
    ("ellipse", _ellipse, _crosshatch),
    ("diamond", _diamond, _waves),
    ("crescent", _crescent, _spokes),
)

CLASS_NAMES: tuple[str, ...] = ("background",) + tuple(c[0] for c in _CLASSES)
NUM_CLASSES = len(CLASS_NAMES)

# Colour code for label maps (background black, then the Tableau 10 colours).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)


def _colour_pair(rng: np.random.Generator) -> tuple[Array, Array]:
  """Two random colours far enough apart for the texture to be visible.

  The rejection is symmetric in both colours and ignores the class, so every
  class sees the same colour distribution.
  """
  while True:
    a, b = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
    if np.linalg.norm(a - b) > 100:
      return a, b


def _background(rng: np.random.Generator) -> Array:
  """Smooth random colour field plus a faint grating."""
  grid = 4
  # Bilinear upsampling of a coarse random grid, as one separable einsum.
  pos = np.linspace(0, grid - 1, IMAGE_SIZE, dtype=np.float32)
  weights = np.maximum(0, 1 - np.abs(pos[:, None] - np.arange(grid)))
  coarse = rng.uniform(20, 235, size=(grid, grid, 3)).astype(np.float32)
  field = np.einsum("yi,ijc,xj->yxc", weights, coarse, weights, optimize=True)
  angle = rng.uniform(0, np.pi)
  period = rng.uniform(3, 12)
  d = _X * np.cos(angle) + _Y * np.sin(angle)
  grating = rng.uniform(4, 12) * np.sin(2 * np.pi * d / period)
  return field + grating[..., None]


def _render_with_masks(
    rng: np.random.Generator,
) -> tuple[Array, Array, list[tuple[int, Array]]]:
  """Like `render_example`, but also returns each object's full mask."""
  image = _background(rng)
  label = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
  objects = []
  for _ in range(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1)):
    class_id = int(rng.integers(1, NUM_CLASSES))
    _, shape, texture = _CLASSES[class_id - 1]
    radius = rng.uniform(MIN_RADIUS, MAX_RADIUS)
    # Keep most of the object inside the frame.
    cx, cy = rng.uniform(0.6 * radius, IMAGE_SIZE - 0.6 * radius, size=2)
    angle = rng.uniform(0, 2 * np.pi)
    period = rng.uniform(MIN_PERIOD, MAX_PERIOD)
    phase = rng.uniform()
    first, second = _colour_pair(rng)

    # Only the bounding box needs evaluating (the triangle reaches 1.15 r).
    extent = 1.15 * radius + 1
    box = (
        slice(max(0, int(cy - extent)), min(IMAGE_SIZE, int(cy + extent) + 1)),
        slice(max(0, int(cx - extent)), min(IMAGE_SIZE, int(cx + extent) + 1)),
    )
    x, y = _X[box], _Y[box]
    dx, dy = x - cx, y - cy
    cos, sin = np.cos(angle), np.sin(angle)
    u = (dx * cos + dy * sin) / radius
    v = (dy * cos - dx * sin) / radius
    inside = shape(u, v)
    pattern = texture(x, y, np.hypot(dx, dy), np.arctan2(dy, dx), period, phase)

    # Painter's algorithm: later objects overwrite image and label alike.
    colour = np.where(pattern[..., None], first, second)
    image[box] = np.where(inside[..., None], colour, image[box])
    label[box][inside] = class_id
    mask = np.zeros_like(label, dtype=bool)
    mask[box] = inside
    objects.append((class_id, mask))

  image = image + rng.normal(0, NOISE_SIGMA, size=image.shape)
  image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
  return image, label, objects


def render_example(rng: np.random.Generator) -> tuple[Array, Array]:
  """Renders one (image uint8 [S, S, 3], label uint8 [S, S]) example."""
  image, label, _ = _render_with_masks(rng)
  return image, label


def colourise(label: Array) -> Array:
  """Maps a label map to RGB using `PALETTE`."""
  return np.asarray(PALETTE, np.uint8)[label]


class HemnetShapes(tfds.core.GeneratorBasedBuilder):
  """Procedural shape + texture segmentation dataset (no download needed)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # tfds' default lazily imports the `importlib_resources` backport for
    # builders outside its package, which Python >= 3.9 environments lack.
    return epath.Path(__file__)

  def __init__(self, *, skip_corrupt: bool = False, **kwargs):
    # Accepted as every builder accepts it (config.data.skip_corrupt, `prepare --skip_corrupt`);
    # generated examples are never corrupt, so there is nothing to skip.
    del skip_corrupt
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    # `dataset_info_from_configs` would look for metadata files next to this
    # module, which only exist for datasets inside the tfds package.
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        # Raw bytes rather than the default per-element int64 lists, which
        # made serialisation the slowest step of the build. Labels are mostly
        # flat regions, so zlib shrinks them a lot for little cost.
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(
                shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
                dtype=np.uint8,
                encoding=tfds.features.Encoding.BYTES,
            ),
            "label": tfds.features.Tensor(
                shape=(IMAGE_SIZE, IMAGE_SIZE),
                dtype=np.uint8,
                encoding=tfds.features.Encoding.ZLIB,
            ),
            "id": tfds.features.Text(),
        }),
        supervised_keys=None,
        homepage=None,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Everything is generated procedurally.
    return {
        "train": self._generate_examples("train", NUM_TRAIN),
        "validation": self._generate_examples("validation", NUM_VALIDATION),
    }

  def _generate_examples(self, split: str, num_examples: int) -> Iterator:
    seed = SPLIT_SEEDS[split]
    for index in range(num_examples):
      image, label = render_example(np.random.default_rng([seed, index]))
      key = f"{split}_{index:06d}"
      yield key, {"image": image, "label": label, "id": key}
