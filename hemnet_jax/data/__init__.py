"""The data: tfds builders of the datasets, and the Grain pipeline that reads them (pipeline.py).

Importing this package registers the builders with tfds.
"""

from hemnet_jax.data import coco_stuff, folder, pascal_context, shapes, shapes_context, voc_aug
from hemnet_jax.data._segmentation import IGNORE_LABEL
from hemnet_jax.data.coco_stuff import CocoStuff
from hemnet_jax.data.folder import Folder
from hemnet_jax.data.pascal_context import PascalContext
from hemnet_jax.data.shapes import HemnetShapes
from hemnet_jax.data.shapes_context import HemnetContext
from hemnet_jax.data.voc_aug import VocAug

# Class names of each registered dataset, for IoU tables and summaries.
CLASS_NAMES = {"hemnet_shapes": shapes.CLASS_NAMES, "hemnet_context": shapes_context.CLASS_NAMES,
               "voc_aug": voc_aug.CLASS_NAMES, "pascal_context": pascal_context.CLASS_NAMES,
               "coco_stuff": coco_stuff.CLASS_NAMES}


def class_names(data_config):
  """Names of config.data's classes; "class_<i>" for datasets without a list."""
  names = CLASS_NAMES.get(data_config.name.split("/")[0])  # "coco_stuff/164k" -> coco_stuff
  if data_config.name == "folder" and data_config.folder.get("class_names_file"):
    names = folder.read_class_names(data_config.folder.class_names_file)
  if names is None or len(names) != data_config.num_classes:
    names = tuple(f"class_{i}" for i in range(data_config.num_classes))
  return tuple(names)


__all__ = ["CLASS_NAMES", "IGNORE_LABEL", "CocoStuff", "Folder", "HemnetContext", "HemnetShapes", "PascalContext", "VocAug",
           "class_names", "coco_stuff", "folder", "pascal_context", "shapes", "shapes_context", "voc_aug"]
