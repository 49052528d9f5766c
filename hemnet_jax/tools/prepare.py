r"""Prepares a dataset from its downloaded archives, once, before training.

  python -m hemnet_jax.tools.prepare --dataset voc_aug --manual_dir ~/Downloads [--data_dir DIR]

Writes array_record files to --data_dir (default $TFDS_DATA_DIR, else ~/tensorflow_datasets),
where `python -m hemnet_jax.main` finds them. Training prepares on first use too; this
command does it on its own (e.g. on a CPU host) and reports the split sizes.
"""

import os

from absl import flags

from hemnet_jax import cli


def run(dataset, manual_dir, data_dir=None, skip_corrupt=False):
  import ml_collections
  import tensorflow_datasets as tfds  # after flag parsing: a bad flag fails fast
  from hemnet_jax.data import pipeline  # registers the builders

  data_dir = pipeline.data_dir(ml_collections.ConfigDict({"data_dir": data_dir}))
  builder = tfds.builder(dataset, data_dir=data_dir, file_format="array_record",
                         skip_corrupt=skip_corrupt)
  download_config = tfds.download.DownloadConfig(manual_dir=os.path.expanduser(manual_dir))
  builder.download_and_prepare(file_format="array_record", download_config=download_config)
  skipped = builder.info.metadata.get("skipped", {})
  for name, split in builder.info.splits.items():
    print(f"{dataset} {name}: {split.num_examples} examples"
          + (f", {len(skipped[name])} corrupt skipped" if skipped.get(name) else ""))
  print(f"prepared in {builder.data_dir}")


def main(f):
  run(f.dataset, f.manual_dir, f.data_dir, f.skip_corrupt)


if __name__ == "__main__":
  flags.DEFINE_string("dataset", None, "voc_aug, pascal_context, coco_stuff/10k or coco_stuff/164k")
  flags.DEFINE_string("manual_dir", None, "Folder holding the downloaded archives.")
  flags.DEFINE_string("data_dir", None,
                      "tfds data dir; default $TFDS_DATA_DIR, else ~/tensorflow_datasets.")
  flags.DEFINE_bool("skip_corrupt", False, "Leave undecodable images/labels out (and count them) "
                    "instead of stopping.")
  flags.mark_flags_as_required(["dataset", "manual_dir"])
  cli.start(main)
