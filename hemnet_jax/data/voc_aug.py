"""PASCAL VOC 2012 with the SBD augmented annotations ("trainaug"), as `voc_aug`.

train: 10,582 images = (VOC 2012 seg train + SBD train + SBD val) minus VOC 2012 seg val;
validation: the 1,449 VOC 2012 seg val images. 21 classes (background + 20), 255 = ignore
(VOC's object boundaries). Where VOC 2012 has a label for an image it is used (it has the
boundary band), otherwise SBD's `cls/*.mat` label.
"""

from hemnet_jax.data import _archive
from hemnet_jax.data import _segmentation as seg

VOC = _archive.Download(
    "VOCtrainval_11-May-2012.tar",
    "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ (file: "
    "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar)",
    extracted="VOCdevkit")
SBD = _archive.Download(
    "benchmark.tgz",
    "http://home.bharathh.info/pubs/codes/SBD/download.html (file: "
    "http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz)",
    extracted="benchmark_RELEASE")

_VOC_ROOT = "VOCdevkit/VOC2012"
_SBD_ROOT = "benchmark_RELEASE/dataset"

CLASS_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor")


class VocAug(seg.SegmentationBuilder):
  """PASCAL VOC 2012 + SBD ("trainaug"): 10,582 train / 1,449 validation, 21 classes."""

  CLASS_NAMES = CLASS_NAMES
  HOMEPAGE = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/"
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Put these two files, unextracted, in the manual folder (`--manual_dir`):
    * {VOC.filename}: PASCAL VOC 2012 trainval, from {VOC.url}
    * {SBD.filename}: the SBD release (its cls/*.mat labels), from {SBD.url}
  Extracted copies (the folders VOCdevkit/ and benchmark_RELEASE/) are accepted too.
  """

  def _split_generators(self, dl_manager):
    root = seg.manual_dir(dl_manager)
    voc, sbd = _archive.find(root, [VOC, SBD], self.name)
    # benchmark.tgz is gzipped, so it is read in one pass; its labels are a few tens of MB.
    sbd_files = dict(sbd.stream(lambda n: n.startswith(f"{_SBD_ROOT}/cls/") and n.endswith(".mat")
                                or n in (f"{_SBD_ROOT}/train.txt", f"{_SBD_ROOT}/val.txt")))
    sbd_ids = set()
    for split in ("train", "val"):
      name = f"{_SBD_ROOT}/{split}.txt"
      if name not in sbd_files:
        raise FileNotFoundError(f"{self.name}: {sbd.path} has no {name}; is it SBD's "
                                "benchmark.tgz?")
      sbd_ids.update(_archive.lines(sbd_files[name]))
    voc_lists = {s: _archive.lines(voc.read(f"{_VOC_ROOT}/ImageSets/Segmentation/{s}.txt"))
                 for s in ("train", "val")}
    voc_labelled = {n for n in voc.names() if n.startswith(f"{_VOC_ROOT}/SegmentationClass/")}
    val = voc_lists["val"]
    train = sorted((set(voc_lists["train"]) | sbd_ids) - set(val))

    def read(example_id):
      image_file = f"{_VOC_ROOT}/JPEGImages/{example_id}.jpg"
      image_bytes = voc.read(image_file)
      image = seg.decode_image(image_bytes, example_id)
      label_file = f"{_VOC_ROOT}/SegmentationClass/{example_id}.png"
      if label_file in voc_labelled:
        label = seg.decode_label(voc.read(label_file), example_id)
        source = f"{voc.path}:{label_file}"
      else:
        label_file = f"{_SBD_ROOT}/cls/{example_id}.mat"
        if label_file not in sbd_files:
          raise FileNotFoundError(f"{self.name}: example {example_id!r} has no label: neither "
                                  f"{voc.path} nor {sbd.path} holds one")
        label = seg.load_mat(sbd_files[label_file], example_id, "Segmentation", struct="GTcls")
        source = f"{sbd.path}:{label_file}"
      seg.check_raw_values(label, len(CLASS_NAMES), source)
      seg.check_same_size(image, label, example_id, image_file, label_file)
      return {"image": image_bytes, "label": seg.encode_label(label), "id": example_id}

    return {
        "train": self._generate_examples("train", train, read),
        "validation": self._generate_examples("validation", val, read),
    }
