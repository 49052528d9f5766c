"""What the builders store: ids, label values after each dataset's mapping, and bad input."""

import io
import pathlib
import tarfile

import numpy as np
import pytest
import scipy.io
import tensorflow_datasets as tfds
from PIL import Image

import hemnet_jax.data  # noqa: F401  (registers the builders)
from hemnet_jax.data import coco_stuff, pascal_context
from tests.testdata import make_fake_archives as fake

TESTDATA = pathlib.Path(__file__).resolve().parent / "testdata"


def build(name, manual_dir, data_dir, **kwargs):
  builder = tfds.builder(name, data_dir=data_dir, file_format="array_record", **kwargs)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder


def decoded(builder, split):
  source = builder.as_data_source(split)
  out = {}
  for i in range(len(source)):
    ex = source[i]
    image = Image.open(io.BytesIO(ex["image"]))
    label = Image.open(io.BytesIO(ex["label"]))
    assert label.mode == "L"  # single-channel PNG
    label = np.asarray(label)
    assert label.shape == (image.height, image.width)
    out[ex["id"].decode()] = label
  return out


def _tar_member(path, name):
  with tarfile.open(path) as tar:
    return tar.extractfile(name).read()


def test_voc_aug_ids_labels_and_voc_label_precedence(tmp_path):
  b = build("voc_aug", TESTDATA / "voc_aug", tmp_path)
  train, val = decoded(b, "train"), decoded(b, "validation")
  assert sorted(train) == sorted(fake.VOC_TRAIN) and sorted(val) == sorted(fake.VOC_SEG["val"])
  for label in [*train.values(), *val.values()]:
    assert set(np.unique(label)) <= set(range(21)) | {255}
  # 2007_000032 is in VOC and SBD: VOC's label (with its 255 boundary band) wins.
  voc_png = _tar_member(TESTDATA / "voc_aug/VOCtrainval_11-May-2012.tar",
                        "VOCdevkit/VOC2012/SegmentationClass/2007_000032.png")
  np.testing.assert_array_equal(train["2007_000032"], np.asarray(Image.open(io.BytesIO(voc_png))))
  assert (train["2007_000032"][0] == 255).all()
  # 2008_000002 is only in SBD: its .mat label.
  sbd = fake.label_map("2008_000002", [0, 2, 7, 12], salt=2)
  np.testing.assert_array_equal(train["2008_000002"], sbd)
  assert b.info.metadata["num_classes"] == 21 and b.info.metadata["skipped"] == {
      "train": [], "validation": []}


def test_pascal_context_maps_full_labels_to_59_classes_background_ignored(tmp_path):
  b = build("pascal_context", TESTDATA / "pascal_context", tmp_path)
  names = {int(l.split(":")[0]): l.split(":")[1].strip()
           for l in fake.context_labels_txt().decode().splitlines()}
  with tarfile.open(TESTDATA / "pascal_context/trainval.tar.gz") as tar:
    for split in ("train", "validation"):
      for example_id, label in decoded(b, split).items():
        raw = scipy.io.loadmat(tar.extractfile(f"trainval/{example_id}.mat"))["LabelMap"]
        expected = np.vectorize(lambda v: pascal_context.CLASS_NAMES.index(names[v])
                                if names.get(v) in pascal_context.CLASS_NAMES else 255)(raw)
        np.testing.assert_array_equal(label, expected)
        assert label.max() == 255 and label[label != 255].max() < 59


@pytest.mark.parametrize("config,raw_to_train", [
    ("10k", {0: 255, 1: 0, 12: 255, 92: 80, 182: 170}),  # 1-based ids, 0 unlabelled
    ("164k", {0: 0, 11: 255, 91: 80, 181: 170, 255: 255}),  # 0-based ids, 255 unlabelled
])
def test_coco_stuff_171_classes(tmp_path, config, raw_to_train):
  b = build(f"coco_stuff/{config}", TESTDATA / "coco_stuff", tmp_path)
  assert len(coco_stuff.CLASS_NAMES) == b.info.metadata["num_classes"] == 171
  seen = set()
  for split in b.info.splits:
    for example_id, label in decoded(b, split).items():
      values = [0, 1, 12, 92, 182] if config == "10k" else [0, 11, 91, 181, 255]
      raw = fake.label_map(example_id, values)
      np.testing.assert_array_equal(label, np.vectorize(raw_to_train.get)(raw))
      seen.update(np.unique(raw).tolist())
  assert seen == set(raw_to_train)


# Bad input: each message names what to fix.


def test_missing_archive_names_the_file_and_the_page(tmp_path):
  (tmp_path / "manual").mkdir()
  (tmp_path / "manual/VOCtrainval_11-May-2012.tar").write_bytes(
      (TESTDATA / "voc_aug/VOCtrainval_11-May-2012.tar").read_bytes())
  with pytest.raises(FileNotFoundError, match=r"benchmark\.tgz.*home\.bharathh\.info"):
    build("voc_aug", tmp_path / "manual", tmp_path / "data")
  with pytest.raises(FileNotFoundError, match=r"trainval\.tar\.gz.*cs\.stanford\.edu"):
    build("pascal_context", tmp_path / "empty", tmp_path / "data")


@pytest.mark.parametrize("member,example_id", [
    ("VOCdevkit/VOC2012/JPEGImages/2008_000003.jpg", "2008_000003"),
    ("benchmark_RELEASE/dataset/cls/2008_000002.mat", "2008_000002"),
    ("VOCdevkit/VOC2012/SegmentationClass/2007_000039.png", "2007_000039"),
])
def test_corrupt_file_names_the_example_and_skip_corrupt_counts_it(tmp_path, member, example_id):
  fake.voc_aug(tmp_path / "manual", bad=("corrupt", member))
  with pytest.raises(ValueError, match=f"example '{example_id}'.*skip_corrupt"):
    build("voc_aug", tmp_path / "manual", tmp_path / "data")
  b = build("voc_aug", tmp_path / "manual", tmp_path / "data2", skip_corrupt=True)
  assert b.info.splits["train"].num_examples == len(fake.VOC_TRAIN) - 1
  assert b.info.metadata["skipped"] == {"train": [example_id], "validation": []}
  assert example_id not in decoded(b, "train")


def test_label_value_out_of_range_names_the_file_and_the_value(tmp_path):
  fake.voc_aug(tmp_path / "voc", label_value=30)
  with pytest.raises(ValueError,
                     match=r"cls/2008_000002\.mat: label value 30 is outside .*\[0, 21\)"):
    build("voc_aug", tmp_path / "voc", tmp_path / "data")
  fake.pascal_context(tmp_path / "context", label_value=400)
  with pytest.raises(ValueError, match=r"trainval/2008_000002\.mat: label value 400"):
    build("pascal_context", tmp_path / "context", tmp_path / "data")
  fake.coco_stuff(tmp_path / "coco", label_value=200)
  with pytest.raises(ValueError,
                     match=r"annotations/COCO_train2014_000000000077\.mat: label value 200"):
    build("coco_stuff/10k", tmp_path / "coco", tmp_path / "data")


def test_image_and_label_of_different_size_fail_with_both_sizes(tmp_path):
  fake.voc_aug(tmp_path / "manual", size_mismatch="2008_000002")
  h, w = fake._size("2008_000002")
  with pytest.raises(ValueError, match=rf"'2008_000002'.*is 20x20 .*label .*is {w}x{h}"):
    build("voc_aug", tmp_path / "manual", tmp_path / "data")


def test_extracted_folders_give_the_same_dataset_as_the_archives(tmp_path):
  for name in ("VOCtrainval_11-May-2012.tar", "benchmark.tgz"):
    with tarfile.open(TESTDATA / "voc_aug" / name) as tar:
      tar.extractall(tmp_path / "manual", filter="data")
  from_folders = build("voc_aug", tmp_path / "manual", tmp_path / "a")
  from_archives = build("voc_aug", TESTDATA / "voc_aug", tmp_path / "b")
  for split in ("train", "validation"):
    a, b = decoded(from_folders, split), decoded(from_archives, split)
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_config_skip_corrupt_reaches_the_builder(tmp_path):
  from hemnet_jax.data import pipeline
  from hemnet_jax.training import config as config_lib
  fake.voc_aug(tmp_path / "manual", bad=("corrupt", "VOCdevkit/VOC2012/JPEGImages/2008_000003.jpg"))
  config = config_lib.default_config().data
  config.data_dir, config.manual_dir = str(tmp_path / "data"), str(tmp_path / "manual")
  with pytest.raises(ValueError, match="'2008_000003'"):
    pipeline.load_split(config, "train")
  config.skip_corrupt = True
  assert pipeline.load_split(config, "train").num_examples == len(fake.VOC_TRAIN) - 1
