r"""Prepares a dataset once, before training: from its downloaded archives, or from your folders.

  python -m hemnet_jax.tools.prepare --dataset voc_aug --manual_dir ~/Downloads [--data_dir DIR]
  python -m hemnet_jax.tools.prepare --dataset folder --name NAME --images DIR --labels DIR \
      --num_classes N [--ignore_ids 11] [--class_names_file F] [--holdout_fraction 0.1]

The second form is your own dataset (docs/folder_dataset.md); its flags are config.data.folder's
fields, and training with the same fields finds it. Writes array_record files to --data_dir
(default $TFDS_DATA_DIR, else ~/tensorflow_datasets), where `python -m hemnet_jax.main` finds
them. Training prepares on first use too; this command does it on its own (e.g. on a CPU host)
and reports the split sizes.
"""

import os

from absl import flags

from hemnet_jax import cli


def folder_data_config(f):
  """config.data for --dataset folder, from the flags."""
  import ml_collections
  from hemnet_jax.data import folder
  num_classes = f.num_classes
  if num_classes is None:
    if not f.class_names_file:
      raise ValueError("--dataset folder needs --num_classes or --class_names_file")
    num_classes = len(folder.read_class_names(f.class_names_file))
  return ml_collections.ConfigDict({"name": "folder", "num_classes": num_classes, "folder": {
      "name": f.name, "images": f.images, "labels": f.labels, "train_list": f.train_list,
      "val_list": f.val_list, "ignore_ids": tuple(int(i) for i in f.ignore_ids),
      "class_names_file": f.class_names_file, "holdout_fraction": f.holdout_fraction,
      "holdout_seed": f.holdout_seed}})


def run(dataset, manual_dir=None, data_dir=None, skip_corrupt=False, folder_config=None):
  import ml_collections
  import tensorflow_datasets as tfds  # after flag parsing: a bad flag fails fast
  from hemnet_jax.data import folder, pipeline  # registers the builders

  if not manual_dir and dataset not in ("folder", "hemnet_shapes"):
    raise ValueError(f"--dataset {dataset} needs --manual_dir (the downloaded archives)")
  data_dir = pipeline.data_dir(ml_collections.ConfigDict({"data_dir": data_dir}))
  kwargs = folder.builder_kwargs(folder_config) if dataset == "folder" else {}
  make = lambda: tfds.builder(dataset, data_dir=data_dir, file_format="array_record",
                              skip_corrupt=skip_corrupt, **kwargs)
  builder = make()
  if folder.discard_if_stale(builder):
    builder = make()
  download_config = tfds.download.DownloadConfig(
      manual_dir=os.path.expanduser(manual_dir) if manual_dir else None)
  builder.download_and_prepare(file_format="array_record", download_config=download_config)
  skipped = (builder.info.metadata or {}).get("skipped", {})  # the shapes set has no metadata
  for name, split in builder.info.splits.items():
    print(f"{dataset} {name}: {split.num_examples} examples"
          + (f", {len(skipped[name])} corrupt skipped" if skipped.get(name) else ""))
  print(f"prepared in {builder.data_dir}")


def main(f):
  run(f.dataset, f.manual_dir, f.data_dir, f.skip_corrupt,
      folder_data_config(f) if f.dataset == "folder" else None)


if __name__ == "__main__":
  flags.DEFINE_string("dataset", None, "voc_aug, pascal_context, coco_stuff/10k, coco_stuff/164k, "
                      "hemnet_shapes or folder")
  flags.DEFINE_string("manual_dir", None, "Folder holding the downloaded archives.")
  flags.DEFINE_string("data_dir", None,
                      "tfds data dir; default $TFDS_DATA_DIR, else ~/tensorflow_datasets.")
  flags.DEFINE_bool("skip_corrupt", False, "Leave undecodable images/labels out (and count them) "
                    "instead of stopping.")
  # --dataset folder: config.data.folder's fields (hemnet_jax/training/config.py) and num_classes.
  flags.DEFINE_string("name", None, "folder: the dataset's name (prepared as folder/<name>).")
  flags.DEFINE_string("images", None, "folder: the images (flat, or with train/ and val/ inside).")
  flags.DEFINE_string("labels", None, "folder: the label PNGs, laid out as --images.")
  flags.DEFINE_string("train_list", None, "folder: a file of `image label` lines (with --val_list).")
  flags.DEFINE_string("val_list", None, "folder: a file of `image label` lines (with --train_list).")
  flags.DEFINE_list("ignore_ids", [], "folder: label ids mapped to the ignore value 255.")
  flags.DEFINE_string("class_names_file", None, "folder: class names, one a line.")
  flags.DEFINE_float("holdout_fraction", 0.0, "folder: the fraction of flat folders held out as val.")
  flags.DEFINE_integer("holdout_seed", 0, "folder: the seed that draws the hold-out.")
  flags.DEFINE_integer("num_classes", None, "folder: number of classes; default: the class names'.")
  flags.mark_flags_as_required(["dataset"])
  cli.start(main)
