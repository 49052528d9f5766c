"""Input pipeline: tfds array_record sources read with Grain, EMANet's augmentation.

Training batch i is a pure function of (seed, i): the dataset is a Grain MapDataset
(shuffle, repeat, per-index seeded augmentation, batch) indexed by step. A resumed
run therefore sees exactly the batches an uninterrupted one would: the iterator's
position is the train state's step, which the checkpoint holds.
"""

import dataclasses
import io
import os

import grain
import jax
import numpy as np
from jax.experimental import multihost_utils
import tensorflow_datasets as tfds
from PIL import Image

from hemnet_jax.data import IGNORE_LABEL, folder  # importing the package registers the builders

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255

# Where to get the datasets that need a manual download, for the error message.
_MANUAL = {
    "voc_aug": "PASCAL VOC 2012 (http://host.robots.ox.ac.uk/pascal/VOC/voc2012/) and SBD "
               "(http://home.bharathh.info/pubs/codes/SBD/download.html)",
    "pascal_context": "PASCAL-Context (https://cs.stanford.edu/~roozbeh/pascal-context/)",
    "coco_stuff": "COCO-Stuff (https://github.com/nightrome/cocostuff)",
}


@dataclasses.dataclass(frozen=True)
class Split:
  source: object  # random-access tfds data source
  num_examples: int


def data_dir(config):
  return config.data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def _builder(config):
  kwargs = {"skip_corrupt": True} if config.get("skip_corrupt") else {}
  if config.name == "folder":
    kwargs.update(folder.builder_kwargs(config))
  try:
    return tfds.builder(config.name, data_dir=data_dir(config), file_format="array_record",
                        **kwargs)
  except tfds.core.registered.DatasetNotFoundError as e:
    where = _MANUAL.get(config.name, "its publisher")
    raise FileNotFoundError(
        f"config.data.name={config.name!r}: no tfds builder of that name is available in this "
        f"version of hemnet_jax. Download the data from {where}; see docs/datasets.md.") from e


def load_split(config, split):
  """The tfds data source of `split`; prepares the dataset on first use.

  Manual-download datasets are prepared from the archives in config.manual_dir (None: tfds'
  <data_dir>/downloads/manual).
  """
  manual_dir = config.get("manual_dir")
  prepare = lambda: _builder(config).download_and_prepare(  # a fresh builder: none is stale
      file_format="array_record", download_config=tfds.download.DownloadConfig(
          manual_dir=os.path.expanduser(manual_dir) if manual_dir else None))
  # A folder dataset whose files changed since it was prepared is removed, then rebuilt.
  is_prepared = lambda b: b.is_prepared() and not folder.discard_if_stale(b)
  builder = _builder(config)
  if jax.process_count() > 1:
    # Process 0 prepares while the others wait; hosts without a shared disk then
    # prepare their own copy.
    if jax.process_index() == 0 and not is_prepared(builder):
      prepare()
    multihost_utils.sync_global_devices(f"prepare {config.name}")
    builder = _builder(config)
  if not is_prepared(builder):
    prepare()
    builder = _builder(config)
  source = builder.as_data_source(split=split)
  return Split(source, len(source))


def decode(example):
  """Encoded examples (JPEG image, PNG label: the manual-download datasets) as arrays."""
  image, label = example["image"], example["label"]
  if isinstance(image, bytes):
    image = Image.open(io.BytesIO(image))
    # COCO has greyscale JPEGs.
    image = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
  if isinstance(label, bytes):
    label = np.asarray(Image.open(io.BytesIO(label)))
  return {"image": image, "label": label}


def _normalize(image):
  return (image.astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD


def train_transform(example, rng, *, crop_size, scale_range):
  """EMANet's training augmentation: random scale, pad, random crop, flip, normalise."""
  image, label = example["image"], example["label"]
  h, w = label.shape
  scale = rng.uniform(*scale_range)
  sh, sw = max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))
  if (sh, sw) != (h, w):
    image = np.asarray(Image.fromarray(image).resize((sw, sh), Image.BILINEAR))
    label = np.asarray(Image.fromarray(label).resize((sw, sh), Image.NEAREST))
  ph, pw = max(crop_size - sh, 0), max(crop_size - sw, 0)
  if ph or pw:  # pad the image with the mean (0 after normalising), the label with ignore
    image = np.concatenate([image, np.broadcast_to(IMAGENET_MEAN.astype(np.uint8), (sh, pw, 3))], 1)
    image = np.concatenate([image, np.broadcast_to(IMAGENET_MEAN.astype(np.uint8), (ph, sw + pw, 3))], 0)
    label = np.pad(label, ((0, ph), (0, pw)), constant_values=IGNORE_LABEL)
  y = rng.integers(0, label.shape[0] - crop_size + 1)
  x = rng.integers(0, label.shape[1] - crop_size + 1)
  image, label = image[y:y + crop_size, x:x + crop_size], label[y:y + crop_size, x:x + crop_size]
  if rng.random() < 0.5:
    image, label = image[:, ::-1], label[:, ::-1]
  return {"image": _normalize(image), "label": np.ascontiguousarray(label, np.int32)}


def eval_transform(example, *, multiple, min_size=None, plus_one=False):
  """Whole image, padded at the bottom/right to a multiple of the output stride.

  The padded pixels carry the ignore label, so metrics on the padded prediction
  equal metrics on the prediction cropped back to the image. `min_size` pads to at
  least that square first: one shape for every image (one compilation, and equal
  shapes on every process) at the cost of more padding than EMANet's. `plus_one` pads
  to k * multiple + 1 instead, as the EMANet release's pad_inf (data.eval_padding).
  """
  example = decode(example)
  image, label = _normalize(example["image"]), example["label"].astype(np.int32)
  h, w = label.shape
  th, tw = max(h, min_size or 0), max(w, min_size or 0)
  extra = 1 if plus_one else 0
  ph, pw = th - h + ((extra - th) % multiple), tw - w + ((extra - tw) % multiple)
  image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
  label = np.pad(label, ((0, ph), (0, pw)), constant_values=IGNORE_LABEL)
  return {"image": image, "label": label}


def train_batches(split, config, *, batch_size, seed, start_step=0, process_index=0, process_count=1):
  """Infinite iterator over this process's batches from step `start_step` on."""
  ds = grain.MapDataset.source(split.source)[process_index::process_count]
  ds = ds.shuffle(seed=seed).repeat().map(decode)
  ds = ds.random_map(lambda ex, rng: train_transform(ex, rng, crop_size=config.crop_size,
                                                     scale_range=tuple(config.scale_range)),
                     seed=seed + 1)
  ds = ds.batch(batch_size, drop_remainder=True)[start_step:]
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=config.num_threads,
                                                   prefetch_buffer_size=config.prefetch)))


def eval_batches(split, config, *, batch_size, multiple, process_index=0, process_count=1,
                 pad_to=None):
  """One pass over this process's share of the split; short batches are padded with
  ignore-only examples, so that every process yields the same number of batches.

  Images must share one size per batch (true of the built-in set); datasets of
  varying sizes evaluate with batch_size 1, or set config.eval_size.
  """
  ds = grain.MapDataset.source(split.source)[process_index::process_count]
  plus_one = config.get("eval_padding") == "stride_plus_one"
  ds = ds.map(lambda ex: eval_transform(ex, multiple=multiple, min_size=config.get("eval_size"),
                                        plus_one=plus_one))
  per_process = -(-len(split.source) // process_count)
  for start in range(0, -(-per_process // batch_size) * batch_size, batch_size):
    examples = [ds[i] for i in range(start, min(start + batch_size, len(ds)))]
    if not examples:  # this process ran out first: one ignore-only example of any size
      examples = [eval_transform(split.source[0], multiple=multiple,
                                 min_size=config.get("eval_size"), plus_one=plus_one)]
      examples[0]["label"][:] = IGNORE_LABEL
    while len(examples) < max(batch_size, pad_to or 0):  # e.g. one example per device
      examples.append({"image": np.zeros_like(examples[0]["image"]),
                       "label": np.full_like(examples[0]["label"], IGNORE_LABEL)})
    yield {k: np.stack([e[k] for e in examples]) for k in ("image", "label")}


def fixed_samples(config, num_samples):
  """The first num_samples training images, normalised and padded as in evaluation."""
  split = load_split(config.data, config.data.train_split)
  if num_samples > split.num_examples:
    raise ValueError(f"--num_samples={num_samples}: the training split has {split.num_examples}")
  # One padded size for all: at least the crop (VOC's 513 holds every image), or eval_size.
  size = max(config.data.crop_size, config.data.get("eval_size") or 0)
  ex = [eval_transform(split.source[i], multiple=config.model.output_stride,
                       min_size=size) for i in range(num_samples)]
  shapes = {e["image"].shape for e in ex}
  if len(shapes) > 1:
    raise ValueError(f"the probe's samples differ in size ({shapes}): set config.data.eval_size "
                     "to at least the largest")
  return np.stack([e["image"] for e in ex])
