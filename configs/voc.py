"""HEMNet on PASCAL VOC 2012 aug, the paper's main setting (Sec. 5.1, Appendix C).

The `voc_aug` tfds builder prepares the data on first use from the archives in
config.data.manual_dir (README.md, "Datasets"). Steps, batch, crop and lr are EMANet's
VOC recipe. `--config configs/voc.py:emanet` is the baseline.
"""

from hemnet_jax import config_utils


def get_config(variant="hemnet"):
  config = config_utils.default_config()
  config.data.name = "voc_aug"
  config.data.num_classes = 21
  config.data.crop_size = 513
  config.data.scale_range = (0.5, 2.0)
  config.data.eval_batch_size = 1  # whole images of varying size

  config.model.stage_sizes = (3, 4, 23, 3)  # ResNet-101
  config.model.output_stride = 8  # multi-grid (1, 2, 4) in stage 4
  config.model.head_channels = 512  # C

  config.hem.num_bases = 64  # K
  config.hem.eta = 0.5
  config.hem.num_iters = 3  # T_train; temperature sqrt(C) by default

  config.train.batch_size = 16
  config.train.num_steps = 30_000
  config.train.lr = 0.009
  config.train.dtype = "bfloat16"
  return config_utils.apply_variant(config, variant)
