"""Datasets; importing this package registers their tfds builders."""

from hemnet_jax.datasets import shapes
from hemnet_jax.datasets.shapes import HemnetShapes

# Class names of each registered dataset, for IoU tables and summaries.
CLASS_NAMES = {"hemnet_shapes": shapes.CLASS_NAMES}


def class_names(data_config):
  """Names of config.data's classes; "class_<i>" for datasets without a list."""
  names = CLASS_NAMES.get(data_config.name)
  if names is None or len(names) != data_config.num_classes:
    names = tuple(f"class_{i}" for i in range(data_config.num_classes))
  return tuple(names)


__all__ = ["CLASS_NAMES", "HemnetShapes", "class_names", "shapes"]
