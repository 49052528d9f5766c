"""Writes tiny fake copies of the archives the dataset builders read, in their real layout.

`python tests/testdata/make_fake_archives.py` regenerates the committed ones in
tests/testdata/<dataset>/; tests call the same functions with `bad=...` to make broken
variants in a temporary folder. Output is byte-for-byte deterministic.
"""

import io
import pathlib
import sys
import tarfile
import zipfile

import numpy as np
import scipy.io
from PIL import Image

HERE = pathlib.Path(__file__).resolve().parent

# Where each fake example lands, with its (height, width).
VOC_SEG = {"train": ["2007_000032", "2007_000039"], "val": ["2007_000033", "2007_000042"]}
SBD = {"train": ["2007_000032", "2008_000002", "2008_000003"], "val": ["2007_000033", "2008_000007"]}
VOC_TRAIN = ["2007_000032", "2007_000039", "2008_000002", "2008_000003", "2008_000007"]
CONTEXT = {"train": ["2008_000002", "2008_000003", "2008_000007"], "val": ["2008_000009", "2008_000016"]}
COCO10K = {"train": ["COCO_train2014_000000000077", "COCO_train2014_000000000078",
                     "COCO_train2014_000000000110"],
           "test": ["COCO_train2014_000000000139", "COCO_train2014_000000000285"]}
COCO164K = {"train2017": ["000000000009", "000000000025", "000000000030"],
            "val2017": ["000000000139", "000000000285"]}


def _size(example_id):
  """Small, varied (height, width) per id, so that batching by size would be caught."""
  h = 8 + int(example_id[-2:]) % 7
  return h, 6 + int(example_id[-3:]) % 9


def _rng(example_id, salt=0):
  return np.random.default_rng([int("".join(c for c in example_id if c.isdigit())[-9:]), salt])


def jpeg(example_id, size=None):
  h, w = size or _size(example_id)
  pixels = _rng(example_id).integers(0, 256, (h, w, 3), dtype=np.uint8)
  out = io.BytesIO()
  Image.fromarray(pixels).save(out, format="JPEG", quality=50)
  return out.getvalue()


def label_map(example_id, values, salt=1, size=None):
  """Vertical bands of `values`, drawn at random, so every label map differs."""
  h, w = size or _size(example_id)
  bands = _rng(example_id, salt).choice(np.asarray(values), size=w)
  return np.broadcast_to(bands, (h, w)).copy()


def png(array, palette=False):
  image = Image.fromarray(array.astype(np.uint8), mode="L")
  if palette:  # VOC's SegmentationClass files are palette PNGs
    image = image.convert("P")
    image.putpalette(sum(([i, 255 - i, (7 * i) % 256] for i in range(256)), []))
  out = io.BytesIO()
  image.save(out, format="PNG")
  return out.getvalue()


def mat(**fields):
  out = io.BytesIO()
  scipy.io.savemat(out, fields, do_compression=True)
  # The 116-byte text header carries the creation time; fix it for reproducible bytes.
  return b"MATLAB 5.0 MAT-file, fake test data".ljust(116) + out.getvalue()[116:]


def write_tar(path, files, mode="w"):
  with tarfile.open(path, mode, format=tarfile.GNU_FORMAT) as tar:
    for name, data in sorted(files.items()):
      info = tarfile.TarInfo(name)
      info.size, info.mtime, info.mode = len(data), 0, 0o644
      tar.addfile(info, io.BytesIO(data))
  if mode == "w:gz":  # gzip stamps the time; zero it for reproducible bytes
    raw = bytearray(pathlib.Path(path).read_bytes())
    raw[4:8] = b"\0\0\0\0"
    pathlib.Path(path).write_bytes(bytes(raw))


def write_zip(path, files):
  with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
    for name, data in sorted(files.items()):
      z.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data)


def _apply(files, bad):
  """Breaks one file, if it is among `files`: bad = (kind, member), kind corrupt | drop."""
  if bad and bad[1] in files:
    kind, member = bad
    if kind == "corrupt":
      files[member] = files[member][: len(files[member]) // 2]
    elif kind == "drop":
      del files[member]
  return files


def voc_aug(out, bad=None, label_value=None, size_mismatch=None):
  """VOCtrainval_11-May-2012.tar and benchmark.tgz. `label_value` puts one bad value in
  2008_000002's SBD label; `size_mismatch` gives that id's image another size."""
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  root = "VOCdevkit/VOC2012"
  ids = sorted(set(VOC_SEG["train"] + VOC_SEG["val"] + SBD["train"] + SBD["val"]) | {"2012_000001"})
  voc = {f"{root}/JPEGImages/{i}.jpg": jpeg(i, (20, 20) if i == size_mismatch else None) for i in ids}
  for split, split_ids in VOC_SEG.items():
    voc[f"{root}/ImageSets/Segmentation/{split}.txt"] = "".join(i + "\n" for i in split_ids).encode()
    for i in split_ids:
      label = label_map(i, [0, 1, 15, 20])
      label[0, :] = 255  # VOC's boundary band
      voc[f"{root}/SegmentationClass/{i}.png"] = png(label, palette=True)
  sbd = {}
  for split, split_ids in SBD.items():
    sbd[f"benchmark_RELEASE/dataset/{split}.txt"] = "".join(i + "\n" for i in split_ids).encode()
    for i in split_ids:
      label = label_map(i, [0, 2, 7, 12], salt=2).astype(np.uint8)
      if i == "2008_000002" and label_value is not None:
        label[1, 1] = label_value
      sbd[f"benchmark_RELEASE/dataset/cls/{i}.mat"] = mat(GTcls={
          "Segmentation": label, "Boundaries": np.zeros((1, 20), np.uint8),
          "CategoriesPresent": np.unique(label)})
  write_tar(out / "VOCtrainval_11-May-2012.tar", _apply(voc, bad))
  write_tar(out / "benchmark.tgz", _apply(sbd, bad), mode="w:gz")


CONTEXT_EXTRA = ("accordion", "candleholder", "unknown")


def context_labels_txt():
  """A labels.txt whose ids are not in the 59-class order, so a wrong mapping shows."""
  from hemnet_jax.data import pascal_context
  names = list(CONTEXT_EXTRA) + list(reversed(pascal_context.CLASS_NAMES))
  return "".join(f"{i + 1}: {n}\n" for i, n in enumerate(names)).encode()


def pascal_context(out, bad=None, label_value=None):
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  root = "VOCdevkit/VOC2010"
  voc = {}
  for split, ids in CONTEXT.items():
    voc[f"{root}/ImageSets/Main/{split}.txt"] = "".join(i + "\n" for i in ids).encode()
    voc.update({f"{root}/JPEGImages/{i}.jpg": jpeg(i) for i in ids})
  num_ids = len(CONTEXT_EXTRA) + 59
  context = {"labels.txt": context_labels_txt()}
  for i in CONTEXT["train"] + CONTEXT["val"]:
    raw = label_map(i, [0, 1, 2, 4, 30, num_ids]).astype(np.uint16)  # 0: unlabelled
    if i == CONTEXT["train"][0] and label_value is not None:
      raw[1, 1] = label_value
    context[f"trainval/{i}.mat"] = mat(LabelMap=raw)
  write_tar(out / "VOCtrainval_03-May-2010.tar", _apply(voc, bad))
  write_tar(out / "trainval.tar.gz", _apply(context, bad), mode="w:gz")


def coco_stuff(out, bad=None, label_value=None):
  """cocostuff-10k-v1.1.zip, and train2017.zip, val2017.zip, stuffthingmaps_trainval2017.zip."""
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  ten_k = {}
  for split, ids in COCO10K.items():
    ten_k[f"imageLists/{split}.txt"] = "".join(i + "\n" for i in ids).encode()
    for i in ids:
      raw = label_map(i, [0, 1, 12, 92, 182]).astype(np.uint8)  # 12 is an unused id
      if i == COCO10K["train"][0] and label_value is not None:
        raw[1, 1] = label_value
      ten_k[f"images/{i}.jpg"] = jpeg(i)
      ten_k[f"annotations/{i}.mat"] = mat(S=raw, names=np.array(["unlabeled"], dtype=object))
  ten_k["imageLists/all.txt"] = ten_k["imageLists/train.txt"] + ten_k["imageLists/test.txt"]
  write_zip(out / "cocostuff-10k-v1.1.zip", _apply(ten_k, bad))
  maps = {}
  for folder, ids in COCO164K.items():
    write_zip(out / f"{folder}.zip", {f"{folder}/{i}.jpg": jpeg(i) for i in ids})
    maps.update({f"{folder}/{i}.png": png(label_map(i, [0, 11, 91, 181, 255])) for i in ids})
  write_zip(out / "stuffthingmaps_trainval2017.zip", maps)


if __name__ == "__main__":
  sys.path.insert(0, str(HERE.parents[1]))
  voc_aug(HERE / "voc_aug")
  pascal_context(HERE / "pascal_context")
  coco_stuff(HERE / "coco_stuff")
