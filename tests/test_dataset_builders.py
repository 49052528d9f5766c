"""Each builder passes tfds' DatasetBuilderTestCase on its fake archives (tests/testdata/)."""

import pathlib

import hemnet_jax.data  # noqa: F401  (registers the builders)
from hemnet_jax.data import coco_stuff, pascal_context, voc_aug
import tfds_testing

TESTDATA = pathlib.Path(__file__).resolve().parent / "testdata"


class VocAugTest(tfds_testing.DatasetBuilderTestCase):
  DATASET_CLASS = voc_aug.VocAug
  EXAMPLE_DIR = TESTDATA / "voc_aug"
  SPLITS = {"train": 5, "validation": 2}


class PascalContextTest(tfds_testing.DatasetBuilderTestCase):
  DATASET_CLASS = pascal_context.PascalContext
  EXAMPLE_DIR = TESTDATA / "pascal_context"
  SPLITS = {"train": 3, "validation": 2}


class CocoStuff10kTest(tfds_testing.DatasetBuilderTestCase):
  DATASET_CLASS = coco_stuff.CocoStuff
  BUILDER_CONFIG_NAMES_TO_TEST = ["10k"]
  EXAMPLE_DIR = TESTDATA / "coco_stuff"
  SPLITS = {"train": 3, "test": 2}


class CocoStuff164kTest(tfds_testing.DatasetBuilderTestCase):
  DATASET_CLASS = coco_stuff.CocoStuff
  BUILDER_CONFIG_NAMES_TO_TEST = ["164k"]
  EXAMPLE_DIR = TESTDATA / "coco_stuff"
  SPLITS = {"train": 3, "validation": 2}
