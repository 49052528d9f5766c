"""COCO-Stuff, as `coco_stuff/10k` (the default) and `coco_stuff/164k`.

EMANet and HEMNet compare on COCO-Stuff 10k: their COCO-Stuff tables list RefineNet 33.6,
CCL 35.7, DSSPN 37.3, SGR 39.1 and DANet 39.7, which are COCO-Stuff-10k test results
(9,000 train / 1,000 test images). 164k (118,287 train / 5,000 val) is the larger release
with the same label set.

Labels: 182 label ids (1..182 in the 10k .mat files, 0..181 in the 164k PNGs), of which 11
thing ids are never used; the 171 used ones become train ids 0..170 in id order (80 things,
then 91 stuff), and unlabelled pixels are 255 = ignore.
"""

import numpy as np
import tensorflow_datasets as tfds

from hemnet_jax.data import _archive
from hemnet_jax.data import _segmentation as seg

_PAGE = "https://github.com/nightrome/cocostuff"
_CALVIN = "http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset"
TEN_K = _archive.Download(
    "cocostuff-10k-v1.1.zip",
    f"https://github.com/nightrome/cocostuff10k (file: {_CALVIN}/cocostuff-10k-v1.1.zip)")
TRAIN2017 = _archive.Download(
    "train2017.zip", "https://cocodataset.org/#download (file: "
    "http://images.cocodataset.org/zips/train2017.zip)", extracted="train2017")
VAL2017 = _archive.Download(
    "val2017.zip", "https://cocodataset.org/#download (file: "
    "http://images.cocodataset.org/zips/val2017.zip)", extracted="val2017")
MAPS = _archive.Download(
    "stuffthingmaps_trainval2017.zip", f"{_PAGE} (file: {_CALVIN}/stuffthingmaps_trainval2017.zip)")

THINGS = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush")
STUFF = (
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage",
    "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter",
    "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble",
    "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other",
    "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves",
    "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing",
    "railroad", "river", "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf",
    "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone", "straw",
    "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable",
    "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood")
CLASS_NAMES = THINGS + STUFF
NUM_IDS = 182
# 1-based COCO thing ids with no annotations (street sign, hat, shoe, eye glasses, plate,
# mirror, window, desk, door, blender, hair brush).
UNUSED_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)


def label_table() -> np.ndarray:
  """uint8 lookup: 1-based label id (0 = unlabelled) -> train id 0..170, else 255."""
  table = np.full(NUM_IDS + 1, seg.IGNORE_LABEL, np.uint8)
  used = [i for i in range(1, NUM_IDS + 1) if i not in UNUSED_IDS]
  table[used] = np.arange(len(used))
  return table


class CocoStuffConfig(tfds.core.BuilderConfig):
  pass


def _root(names, suffix, path):
  """The folder prefix under which `suffix` lies (the 10k zip may or may not have one)."""
  for n in names:
    if n == suffix or n.endswith("/" + suffix):
      return n[: len(n) - len(suffix)]
  raise FileNotFoundError(f"{path} has no {suffix}; is it {TEN_K.filename}?")


class CocoStuff(seg.SegmentationBuilder):
  """COCO-Stuff, 171 classes: 10k (9,000 train / 1,000 test) or 164k (118,287 / 5,000)."""

  BUILDER_CONFIGS = [
      CocoStuffConfig(name="10k", description="COCO-Stuff 10k v1.1: 9,000 train, 1,000 test."),
      CocoStuffConfig(name="164k", description="COCO-Stuff 164k: 118,287 train, 5,000 val."),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "10k"
  CLASS_NAMES = CLASS_NAMES
  HOMEPAGE = _PAGE
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Put these files, unextracted, in the manual folder (`--manual_dir`):
    * coco_stuff/10k: {TEN_K.filename}, from {TEN_K.url}
    * coco_stuff/164k: {TRAIN2017.filename} from {TRAIN2017.url}, {VAL2017.filename} from
      {VAL2017.url}, and {MAPS.filename} from {MAPS.url}
  """

  def _split_generators(self, dl_manager):
    root = seg.manual_dir(dl_manager)
    if self.builder_config.name == "10k":
      return self._splits_10k(*_archive.find(root, [TEN_K], self.name))
    return self._splits_164k(*_archive.find(root, [TRAIN2017, VAL2017, MAPS], self.name))

  def _splits_10k(self, archive):
    prefix = _root(archive.names(), "imageLists/train.txt", archive.path)
    table = label_table()

    def read(example_id):
      image_file = f"{prefix}images/{example_id}.jpg"
      image_bytes = archive.read(image_file)
      image = seg.decode_image(image_bytes, example_id)
      label_file = f"{prefix}annotations/{example_id}.mat"
      raw = seg.load_mat(archive.read(label_file), example_id, "S")
      seg.check_raw_values(raw, NUM_IDS + 1, f"{archive.path}:{label_file}")
      seg.check_same_size(image, raw, example_id, image_file, label_file)
      label = np.where(raw <= NUM_IDS, table[np.minimum(raw, NUM_IDS)], seg.IGNORE_LABEL)
      return {"image": image_bytes, "label": seg.encode_label(label), "id": example_id}

    lists = {s: _archive.lines(archive.read(f"{prefix}imageLists/{s}.txt"))
             for s in ("train", "test")}
    return {s: self._generate_examples(s, ids, read) for s, ids in lists.items()}

  def _splits_164k(self, train_images, val_images, maps):
    table = label_table()
    names = maps.names()

    def reader(images, folder):
      def read(example_id):
        image_file = f"{folder}/{example_id}.jpg"
        image_bytes = images.read(image_file)
        image = seg.decode_image(image_bytes, example_id)
        label_file = f"{folder}/{example_id}.png"
        raw = seg.decode_label(maps.read(label_file), example_id)
        seg.check_raw_values(raw, NUM_IDS, f"{maps.path}:{label_file}")
        seg.check_same_size(image, raw, example_id, image_file, label_file)
        # PNG value v is label id v + 1; 255 (unlabelled) stays 255.
        label = np.where(raw < NUM_IDS, table[np.minimum(raw, NUM_IDS - 1) + 1], seg.IGNORE_LABEL)
        return {"image": image_bytes, "label": seg.encode_label(label), "id": example_id}
      return read

    def ids(folder):
      return sorted(n[len(folder) + 1:-4] for n in names
                    if n.startswith(folder + "/") and n.endswith(".png"))

    return {
        "train": self._generate_examples("train", ids("train2017"),
                                         reader(train_images, "train2017")),
        "validation": self._generate_examples("validation", ids("val2017"),
                                              reader(val_images, "val2017")),
    }
