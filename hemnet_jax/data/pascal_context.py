"""PASCAL-Context, the 59-class setting, as `pascal_context`.

Images are VOC 2010's; labels are the full-label `.mat` maps of the PASCAL-Context release
(`LabelMap`, ids into its labels.txt), reduced to the 59 most frequent classes. train: the
4,998 images of VOC 2010 ImageSets/Main/train.txt; validation: the 5,105 of val.txt.

Background: every pixel outside the 59 classes (including unlabelled ones) is 255 = ignore,
and the 59 classes are ids 0..58 in alphabetical order. This is mmsegmentation's
`PascalContextDataset59` (labels 0 = background .. 59, then `reduce_zero_label`: 0 -> 255,
k -> k - 1), the usual "59 classes, background excluded" setting.
"""

import numpy as np

from hemnet_jax.data import _archive
from hemnet_jax.data import _segmentation as seg

VOC2010 = _archive.Download(
    "VOCtrainval_03-May-2010.tar",
    "http://host.robots.ox.ac.uk/pascal/VOC/voc2010/ (file: "
    "http://host.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar)",
    extracted="VOCdevkit")
CONTEXT = _archive.Download(
    "trainval.tar.gz",
    "https://cs.stanford.edu/~roozbeh/pascal-context/ (file: "
    "https://cs.stanford.edu/~roozbeh/pascal-context/trainval.tar.gz)",
    extracted="trainval")
LABELS = _archive.Download(
    "labels.txt",
    "https://cs.stanford.edu/~roozbeh/pascal-context/ (the full label list, labels.txt)")

_VOC_ROOT = "VOCdevkit/VOC2010"

# Spelled as in the release's labels.txt (its 59_labels.txt says diningtable, bedcloth, clothes).
CLASS_NAMES = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
    "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow",
    "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground",
    "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate", "platform",
    "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa",
    "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood")


def label_table(labels_txt: bytes, source: str) -> np.ndarray:
  """uint8 lookup table: full-label id -> train id (0..58), 255 for every other id."""
  ids = {}
  for line in _archive.lines(labels_txt):
    number, _, name = line.partition(":")
    if not number.strip().isdigit() or not name.strip():
      raise ValueError(f"{source}: expected lines like '2: aeroplane', got {line!r}")
    ids[name.strip()] = int(number)
  missing = [n for n in CLASS_NAMES if n not in ids]
  if missing:
    raise ValueError(f"{source}: the 59-class names {missing} are not in this label list")
  table = np.full(max(ids.values()) + 1, seg.IGNORE_LABEL, np.uint8)
  for train_id, name in enumerate(CLASS_NAMES):
    table[ids[name]] = train_id
  return table


class PascalContext(seg.SegmentationBuilder):
  """PASCAL-Context, 59 classes (background ignored): 4,998 train / 5,105 validation."""

  CLASS_NAMES = CLASS_NAMES
  HOMEPAGE = "https://cs.stanford.edu/~roozbeh/pascal-context/"
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Put these files, unextracted, in the manual folder (`--manual_dir`):
    * {VOC2010.filename}: PASCAL VOC 2010 trainval, from {VOC2010.url}
    * {CONTEXT.filename}: the PASCAL-Context labels (trainval/*.mat), from {CONTEXT.url}
    * {LABELS.filename}: only if {CONTEXT.filename} lacks it, from {LABELS.url}
  """

  def _split_generators(self, dl_manager):
    root = seg.manual_dir(dl_manager)
    voc, context = _archive.find(root, [VOC2010, CONTEXT], self.name)
    files = dict(context.stream(
        lambda n: n.endswith(".mat") and n.startswith("trainval/") or n.endswith("labels.txt")))
    labels_txt = next((n for n in files if n.rsplit("/", 1)[-1] == "labels.txt"), None)
    if labels_txt is not None:
      table = label_table(files[labels_txt], f"{context.path}:{labels_txt}")
    else:
      table = label_table(_archive.find(root, [LABELS], self.name)[0].path.read_bytes(),
                          str(root / LABELS.filename))
    splits = {s: _archive.lines(voc.read(f"{_VOC_ROOT}/ImageSets/Main/{s}.txt"))
              for s in ("train", "val")}

    def read(example_id):
      image_file = f"{_VOC_ROOT}/JPEGImages/{example_id}.jpg"
      image_bytes = voc.read(image_file)
      image = seg.decode_image(image_bytes, example_id)
      label_file = f"trainval/{example_id}.mat"
      if label_file not in files:
        raise FileNotFoundError(f"{self.name}: {context.path} has no label {label_file} for "
                                f"example {example_id!r}")
      raw = seg.load_mat(files[label_file], example_id, "LabelMap")
      seg.check_raw_values(raw, len(table), f"{context.path}:{label_file}")
      seg.check_same_size(image, raw, example_id, image_file, label_file)
      label = np.where(raw < len(table), table[np.minimum(raw, len(table) - 1)], seg.IGNORE_LABEL)
      return {"image": image_bytes, "label": seg.encode_label(label), "id": example_id}

    return {
        "train": self._generate_examples("train", splits["train"], read),
        "validation": self._generate_examples("validation", splits["val"], read),
    }
