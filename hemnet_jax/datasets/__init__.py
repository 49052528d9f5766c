"""Datasets; importing this package registers their tfds builders."""

from hemnet_jax.datasets import coco_stuff, pascal_context, shapes, shapes_context, voc_aug
from hemnet_jax.datasets.coco_stuff import CocoStuff
from hemnet_jax.datasets.pascal_context import PascalContext
from hemnet_jax.datasets.shapes import HemnetShapes
from hemnet_jax.datasets.shapes_context import HemnetContext
from hemnet_jax.datasets.voc_aug import VocAug

# Class names of each registered dataset, for IoU tables and summaries.
CLASS_NAMES = {"hemnet_shapes": shapes.CLASS_NAMES,
               "hemnet_context": shapes_context.CLASS_NAMES, "voc_aug": voc_aug.CLASS_NAMES,
               "pascal_context": pascal_context.CLASS_NAMES,
               "coco_stuff": coco_stuff.CLASS_NAMES}


def class_names(data_config):
  """Names of config.data's classes; "class_<i>" for datasets without a list."""
  names = CLASS_NAMES.get(data_config.name.split("/")[0])  # "coco_stuff/164k" -> coco_stuff
  if names is None or len(names) != data_config.num_classes:
    names = tuple(f"class_{i}" for i in range(data_config.num_classes))
  return tuple(names)


__all__ = ["CLASS_NAMES", "CocoStuff", "HemnetContext", "HemnetShapes", "PascalContext", "VocAug",
           "class_names", "coco_stuff", "pascal_context", "shapes", "shapes_context", "voc_aug"]
