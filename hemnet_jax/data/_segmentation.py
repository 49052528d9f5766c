"""What the manual-download segmentation builders share: features, checks and bad-input policy.

Every example is {"image": the publisher's encoded image bytes (JPEG), "label": a single-channel
PNG of train ids in [0, num_classes) with 255 = ignore, "id": the original file id}. Images
vary in size and tfds.features.Image needs TensorFlow, so both are stored encoded and
decoded with PIL in the input pipeline.
"""

import io
import sys

import numpy as np
import scipy.io
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image

IGNORE_LABEL = 255


class CorruptExampleError(ValueError):
  """An image or label file that cannot be decoded."""


def decode_image(data: bytes, example_id: str, what="image") -> Image.Image:
  """Fully decodes `data`, so that a truncated file fails here rather than in training."""
  try:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for bad bytes
    raise CorruptExampleError(f"example {example_id!r}: cannot decode its {what} ({e})") from e


def encode_label(label: np.ndarray) -> bytes:
  out = io.BytesIO()
  Image.fromarray(label.astype(np.uint8), mode="L").save(out, format="PNG")
  return out.getvalue()


def check_raw_values(raw: np.ndarray, num_ids: int, source: str):
  """Fails with the file and the value when `raw` holds a value outside [0, num_ids) and 255."""
  values = np.unique(raw)
  bad = values[(values >= num_ids) & (values != IGNORE_LABEL)]
  if bad.size:
    raise ValueError(
        f"{source}: label value {int(bad[0])} is outside the dataset's label ids [0, {num_ids}) "
        f"and is not the ignore value {IGNORE_LABEL} (bad values: {bad.tolist()[:10]})")


def check_same_size(image: Image.Image, label: np.ndarray, example_id: str, image_file, label_file):
  w, h = image.size
  if (h, w) != label.shape:
    raise ValueError(
        f"example {example_id!r}: image {image_file} is {w}x{h} (width x height) but its label "
        f"{label_file} is {label.shape[1]}x{label.shape[0]}")


class SegmentationBuilder(tfds.core.GeneratorBasedBuilder):
  """Base of the manual-download builders: each split is `_generate_examples(split, ids, read)`."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  CLASS_NAMES: tuple[str, ...] = ()
  HOMEPAGE: str = ""

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # tfds' default lazily imports the `importlib_resources` backport for builders outside
    # its package, which Python >= 3.9 environments lack.
    return epath.Path(sys.modules[cls.__module__].__file__)

  def __init__(self, *, skip_corrupt: bool = False, **kwargs):
    # False: an undecodable image or label stops the build, naming the example. True: it is
    # left out, and the ids left out are logged and kept in info.metadata["skipped"].
    self._skip_corrupt = skip_corrupt
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    # `dataset_info_from_configs` would look for metadata files next to this module, which
    # only exist for datasets inside the tfds package.
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(), dtype=np.object_),  # encoded JPEG
            "label": tfds.features.Tensor(shape=(), dtype=np.object_),  # PNG, uint8 train ids
            "id": tfds.features.Text(),
        }),
        metadata=tfds.core.MetadataDict(num_classes=len(self.CLASS_NAMES),
                                        class_names=list(self.CLASS_NAMES), skipped={}),
        homepage=self.HOMEPAGE,
    )

  def _generate_examples(self, split: str, ids, read):
    """Yields (id, read(id)) for each id.

    `read` raises CorruptExampleError for undecodable files, which `skip_corrupt` turns into
    a skip; every other error (bad label values, size mismatch, missing file) stops the build.
    """
    skipped = []
    for example_id in ids:
      try:
        example = read(example_id)
      except CorruptExampleError as e:
        if not self._skip_corrupt:
          raise CorruptExampleError(f"{self.name}: {e}. Pass skip_corrupt=True "
                                    "(config.data.skip_corrupt) to leave such examples out.") from e
        logging.warning("%s %s: skipping: %s", self.name, split, e)
        skipped.append(example_id)
        continue
      yield example_id, example
    if skipped:
      logging.warning("%s %s: skipped %d corrupt examples", self.name, split, len(skipped))
    self.info.metadata["skipped"] = {**self.info.metadata["skipped"], split: skipped}


def manual_dir(dl_manager) -> epath.Path:
  """The manual folder, even when missing or empty: the archive lookup then names what to get."""
  try:
    return dl_manager.manual_dir
  except AssertionError:
    return epath.Path(dl_manager._manual_dir)  # pylint: disable=protected-access


def decode_label(data: bytes, example_id: str) -> np.ndarray:
  """A palette or grayscale PNG as its [H, W] indices."""
  image = decode_image(data, example_id, "label")
  if image.mode not in ("P", "L"):
    raise CorruptExampleError(f"example {example_id!r}: its label is a {image.mode} image; "
                              "expected a palette or grayscale PNG of class ids")
  return np.asarray(image)


def load_mat(data: bytes, example_id: str, field: str, struct: str | None = None) -> np.ndarray:
  """`field` (of the struct `struct`, if given) of a MATLAB file, as a 2-D integer array."""
  try:
    mat = scipy.io.loadmat(io.BytesIO(data), squeeze_me=True, struct_as_record=False)
    value = getattr(mat[struct], field) if struct else mat[field]
    value = np.asarray(value)
  except Exception as e:  # scipy raises ValueError, TypeError, MatReadError... for bad bytes
    where = f"{struct}.{field}" if struct else field
    raise CorruptExampleError(f"example {example_id!r}: cannot read {where} from its .mat label "
                              f"file ({type(e).__name__}: {e})") from e
  if value.ndim != 2 or not np.issubdtype(value.dtype, np.integer):
    raise CorruptExampleError(f"example {example_id!r}: its .mat label is {value.dtype} "
                              f"{value.shape}, expected a 2-D integer map")
  return value
