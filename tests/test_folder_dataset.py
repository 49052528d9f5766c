"""The folder dataset: each layout prepared and trained through main, each bad input's message."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import ROOT, main_cmd, tiny_flags
from PIL import Image

from hemnet_jax.data import pipeline
from hemnet_jax.training import config as config_lib

H, W = 40, 48
VOID = 11  # the fixture's void class, remapped to 255
NUM_CLASSES = 3
PALETTE = [0, 0, 0, 200, 30, 30, 30, 200, 30] + [0, 0, 0] * 8 + [255, 255, 255] + [0] * 3 * 244
# Every PIL mode the builder must turn into RGB, and both label modes.
IMAGE_KINDS = [("RGB", ".jpg"), ("L", ".png"), ("P", ".png"), ("RGBA", ".png"), ("CMYK", ".jpg")]


def write_pair(images_dir, labels_dir, stem, index, *, label_mode=None, size=(H, W)):
  """One image (a PIL mode by index) and its label: class ids 0-2 with a void band."""
  rng = np.random.default_rng(index)
  mode, suffix = IMAGE_KINDS[index % len(IMAGE_KINDS)]
  rgb = Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
  image = rgb.convert(mode) if mode != "P" else rgb.quantize(16)
  os.makedirs(images_dir, exist_ok=True)
  os.makedirs(labels_dir, exist_ok=True)
  image.save(os.path.join(images_dir, stem + suffix))
  label = np.zeros(size, np.uint8)
  label[:, size[1] // 3:] = 1 + index % 2
  label[:3] = VOID
  label_image = Image.fromarray(label, "L")
  if (label_mode or ("P" if index % 2 == 0 else "L")) == "P":
    label_image = label_image.convert("P")
    label_image.putpalette(PALETTE)
  label_image.save(os.path.join(labels_dir, stem + ".png"))
  return os.path.join(images_dir, stem + suffix), os.path.join(labels_dir, stem + ".png")


def make_folder(root, layout, n_train=6, n_val=3):
  """config.data.folder's fields for a fixture folder in `layout`."""
  root = str(root)
  names = os.path.join(root, "classes.txt")
  os.makedirs(root, exist_ok=True)
  with open(names, "w") as f:
    f.write("background\nleft\nright\n")
  fields = dict(name=f"fx_{layout}", ignore_ids=(VOID,), class_names_file=names)
  if layout == "holdout":  # flat folders matched by stem; a third held out
    for i in range(n_train + n_val):
      write_pair(f"{root}/img", f"{root}/ann", f"im{i:02d}", i)
    fields.update(images=f"{root}/img", labels=f"{root}/ann",
                  holdout_fraction=n_val / (n_train + n_val), holdout_seed=1)
  elif layout == "subfolders":
    for i in range(n_train + n_val):
      split = "train" if i < n_train else "val"
      write_pair(f"{root}/img/{split}", f"{root}/ann/{split}", f"im{i:02d}", i)
    fields.update(images=f"{root}/img", labels=f"{root}/ann")
  elif layout == "lists":  # one relative and one absolute list, as SegNet's and mmseg's
    lines = {"train": [], "val": []}
    for i in range(n_train + n_val):
      split = "train" if i < n_train else "val"
      image, label = write_pair(f"{root}/data/JPEG", f"{root}/data/Seg", f"im{i:02d}", i)
      if split == "train":
        image, label = os.path.relpath(image, root), os.path.relpath(label, root)
      lines[split].append(f"{image} {label}")
    for split, rows in lines.items():
      with open(f"{root}/{split}.txt", "w") as f:
        f.write("\n".join(rows) + "\n")
    fields.update(train_list=f"{root}/train.txt", val_list=f"{root}/val.txt")
  else:
    raise ValueError(layout)
  return fields


def data_config(tmp_path, fields, **extra):
  config = config_lib.default_config().data
  config.name, config.num_classes = "folder", NUM_CLASSES
  config.data_dir = str(tmp_path / "tfds")
  config.folder.update(fields)
  for k, v in extra.items():
    config[k] = v
  return config


def labels_of(split):
  ids = lambda i: i.decode() if isinstance(i, bytes) else i
  return {ids(ex["id"]): pipeline.decode(ex)["label"] for ex in split.source}


@pytest.mark.parametrize("layout", ["holdout", "subfolders", "lists"])
def test_each_layout_prepares_with_void_remapped_and_trains_through_main(layout, tmp_path):
  fields = make_folder(tmp_path / "data", layout)
  config = data_config(tmp_path, fields)
  train, val = (pipeline.load_split(config, s) for s in ("train", "validation"))
  assert (train.num_examples, val.num_examples) == (6, 3)
  for split in (train, val):
    for ex in split.source:
      arrays = pipeline.decode(ex)
      assert arrays["image"].shape == (H, W, 3) and arrays["image"].dtype == np.uint8
      label = arrays["label"]
      assert (label[:3] == 255).all()  # the void band
      assert set(np.unique(label[3:])) <= {0, 1, 2}
  if layout == "holdout":  # the seeded hold-out: a fixed, disjoint draw
    assert sorted(labels_of(val)) == sorted(set(f"im{i:02d}" for i in range(9)) - set(labels_of(train)))
  else:
    assert sorted(os.path.basename(i) for i in labels_of(val)) == ["im06", "im07", "im08"]

  flags = [f"--config.data.folder.{k}={v}".replace(" ", "") for k, v in fields.items()]
  env = {**os.environ, "TFDS_DATA_DIR": str(tmp_path / "tfds")}
  res = subprocess.run(
      main_cmd(tmp_path / "run", *tiny_flags(**{"train.num_steps": 2,
                                                "data.eval_split": "validation",
                                                "data.eval_batch_size": 3,
                                                "data.num_classes": NUM_CLASSES}),
               *flags, config="configs/folder.py"),
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  results = json.loads((tmp_path / "run" / "results.json").read_text())
  assert results["step"] == 2
  assert list(results["per_class_iou"]) == ["background", "left", "right"]  # class_names_file


def test_palette_comes_from_the_first_palette_label(tmp_path):
  from hemnet_jax.vis import render
  config = data_config(tmp_path, make_folder(tmp_path / "data", "subfolders"))
  pipeline.load_split(config, "train")
  colours = render.palette(config)
  np.testing.assert_array_equal(colours[:3], [[0, 0, 0], [200, 30, 30], [30, 200, 30]])
  # Without palette labels: VOC's colour map.
  fields = make_folder(tmp_path / "grey", "subfolders")
  for dirpath, _, files in os.walk(tmp_path / "grey" / "ann"):
    for f in files:
      path = os.path.join(dirpath, f)
      Image.fromarray(np.asarray(Image.open(path)), "L").save(path)  # the ids, as grey
  grey = data_config(tmp_path, {**fields, "name": "grey"})
  pipeline.load_split(grey, "train")
  np.testing.assert_array_equal(render.palette(grey), render.generic_palette())


def test_a_changed_folder_is_rebuilt_not_stale(tmp_path, capsys):
  fields = make_folder(tmp_path / "data", "subfolders")
  config = data_config(tmp_path, fields)
  assert pipeline.load_split(config, "train").num_examples == 6
  write_pair(f"{tmp_path}/data/img/train", f"{tmp_path}/data/ann/train", "im99", 0)  # a new pair
  label = np.zeros((H, W), np.uint8)  # and an edited label
  Image.fromarray(label, "L").save(f"{tmp_path}/data/ann/train/im00.png")
  train = pipeline.load_split(config, "train")
  assert "changed since it was prepared" in capsys.readouterr().out
  assert train.num_examples == 7
  assert (labels_of(train)["im00"] == 0).all()
  # An option change is a change too.
  config.folder.ignore_ids = (VOID, 2)
  assert 2 not in np.unique(labels_of(pipeline.load_split(config, "train"))["im01"])


# Each bad input: one error naming the file (or field) to fix.


def test_missing_label_names_the_image_and_the_expected_label(tmp_path):
  fields = make_folder(tmp_path / "data", "holdout")
  os.remove(tmp_path / "data" / "ann" / "im04.png")
  with pytest.raises(FileNotFoundError, match=r"image .*img/im04\.jpg has no label: expected "
                                              r".*ann/im04\.png"):
    pipeline.load_split(data_config(tmp_path, fields), "train")


def test_size_mismatch_names_both_files(tmp_path):
  fields = make_folder(tmp_path / "data", "subfolders")
  label = Image.open(tmp_path / "data" / "ann" / "val" / "im07.png")
  label.resize((W + 2, H)).save(tmp_path / "data" / "ann" / "val" / "im07.png")
  with pytest.raises(ValueError, match=r"image .*val/im07\.\w+ is 48x40 .*but its label "
                                       r".*val/im07\.png is 50x40"):
    pipeline.load_split(data_config(tmp_path, fields), "train")


def test_label_id_not_below_num_classes_and_not_ignored_names_the_file(tmp_path):
  fields = make_folder(tmp_path / "data", "lists")
  with pytest.raises(ValueError, match=r"label .*Seg/im00\.png holds ids \[11\] >= "
                                       r"config.data.num_classes=3; add them to .*ignore_ids"):
    pipeline.load_split(data_config(tmp_path, {**fields, "ignore_ids": ()}), "train")


def test_unreadable_image_names_the_file_and_skip_corrupt_leaves_it_out(tmp_path):
  fields = make_folder(tmp_path / "data", "subfolders")
  bad = tmp_path / "data" / "img" / "train" / "im05.jpg"  # index 5: RGB JPEG
  bad.write_bytes(bad.read_bytes()[:200])  # truncated
  with pytest.raises(ValueError, match=r"cannot decode the image .*train/im05\.jpg.*skip_corrupt"):
    pipeline.load_split(data_config(tmp_path, fields), "train")
  config = data_config(tmp_path, fields, skip_corrupt=True)
  assert pipeline.load_split(config, "train").num_examples == 5


def test_colour_label_names_the_file_and_the_modes_accepted(tmp_path):
  fields = make_folder(tmp_path / "data", "subfolders")
  path = tmp_path / "data" / "ann" / "val" / "im06.png"
  Image.open(path).convert("RGB").save(path)
  with pytest.raises(ValueError, match=r"label .*val/im06\.png is a PNG image of mode RGB; "
                                       r"expected a single-channel PNG \(mode P or L\)"):
    pipeline.load_split(data_config(tmp_path, fields), "train")


def test_list_file_errors_name_the_line(tmp_path):
  fields = make_folder(tmp_path / "data", "lists")
  with open(fields["val_list"], "a") as f:
    f.write("data/JPEG/missing.jpg data/Seg/missing.png\n")
  with pytest.raises(FileNotFoundError, match=r"val\.txt, line 4: the image .*missing\.jpg does "
                                              "not exist"):
    pipeline.load_split(data_config(tmp_path, fields), "train")


def test_config_errors_name_the_field(tmp_path):
  fields = make_folder(tmp_path / "data", "holdout")
  with pytest.raises(ValueError, match=r"config.data.num_classes=4 but .*classes.txt.* lists 3"):
    pipeline.load_split(data_config(tmp_path, fields, num_classes=4), "train")
  with pytest.raises(ValueError, match="no train/ and val/ subfolders; set holdout_fraction"):
    pipeline.load_split(data_config(tmp_path, {**fields, "holdout_fraction": 0.0}), "train")
  with pytest.raises(ValueError, match=r"config.data.folder.name='My data'"):
    pipeline.load_split(data_config(tmp_path, {**fields, "name": "My data"}), "train")


def test_prepare_command_builds_a_folder_and_reports_the_splits(tmp_path):
  fields = make_folder(tmp_path / "data", "holdout")
  res = subprocess.run(
      [sys.executable, "-m", "hemnet_jax.tools.prepare", "--dataset=folder", f"--name={fields['name']}",
       f"--images={fields['images']}", f"--labels={fields['labels']}", "--ignore_ids=11",
       f"--class_names_file={fields['class_names_file']}", "--holdout_fraction=0.34",
       f"--data_dir={tmp_path / 'tfds'}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr[-2000:]
  assert "folder train: 6 examples" in res.stdout and "folder validation: 3 examples" in res.stdout
  res = subprocess.run(
      [sys.executable, "-m", "hemnet_jax.tools.prepare", "--dataset=folder", "--name=other",
       f"--images={fields['images']}", f"--labels={fields['labels']}", "--num_classes=3",
       "--holdout_fraction=0.34", f"--data_dir={tmp_path / 'tfds'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert res.returncode == 1
  assert res.stderr.strip().splitlines()[-1].startswith("error: label ")  # one line, no traceback


def test_skip_corrupt_works_with_the_built_in_set(data_dir):
  """`--config.data.skip_corrupt=true` with configs/demo.py, and `prepare --skip_corrupt`."""
  config = config_lib.default_config().data
  config.name, config.data_dir, config.skip_corrupt = "hemnet_shapes", str(data_dir), True
  assert pipeline.load_split(config, "validation").num_examples == 300
  res = subprocess.run(
      [sys.executable, "-m", "hemnet_jax.tools.prepare", "--dataset=hemnet_shapes", "--skip_corrupt",
       "--manual_dir=/nonexistent", f"--data_dir={data_dir}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr[-2000:]
  assert "hemnet_shapes validation: 300 examples" in res.stdout
