r"""The demo's model on `hemnet_context`, where a pixel's class is decided far away in the image.

In `hemnet_context` (hemnet_jax/datasets/shapes_context.py) most objects are dotted
discs that look alike whatever their class; only a distant key object of the same
colours tells their class. The HEM head can carry that evidence across the image; the
same head without the HEM unit (`--config.model.head=fcn`) cannot. Same model, budget
and settings as configs/demo.py (eta 0.5, T_train 3, 1500 steps of batch 16, crop 96):

  TFDS_DATA_DIR=/tmp/tfds python -m hemnet_jax.main --config configs/attention_demo.py \
      --workdir /tmp/attention_hem
  TFDS_DATA_DIR=/tmp/tfds python -m hemnet_jax.main --config configs/attention_demo.py \
      --workdir /tmp/attention_fcn --config.model.head=fcn
  # `:emanet` for the EMANet unit; docs/attention_experiment.md for the 3-seed table.

Expected (docs/attention_experiment.md): the fcn head at least 10 mIoU points below HEMNet.
"""

import importlib.util
import pathlib

# demo.py by its path: config files are loaded as files, not as a package.
_spec = importlib.util.spec_from_file_location("_demo", pathlib.Path(__file__).with_name("demo.py"))
demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo)


def get_config(variant="hemnet"):
  config = demo.get_config(variant)
  config.data.name = "hemnet_context"  # generated into the tfds data dir on first use
  config.data.num_classes = 5  # background + 4 key classes
  return config
