r"""HEMNet on PASCAL VOC 2012 aug, the paper's main setting (Sec. 5.1, Appendix C).

  python -m hemnet_jax.main --config configs/voc.py --workdir runs/voc \
      --config.model.backbone_checkpoint=~/weights/resnet101  # docs/pretrained.md

Expected (the paper's Table 3, ResNet-101, C 512, VOC val): 81.33 % mIoU single-scale,
82.23 % multi-scale + flip (`--mode eval --config.eval.multi_scale=True --config.eval.flip=True`);
the EMANet baseline (`configs/voc.py:emanet`) 80.05 / 81.32. Not yet reproduced here: it needs
an accelerator (docs/scaling.md).

The `voc_aug` tfds builder prepares the data on first use from the archives in
config.data.manual_dir (docs/datasets.md). Steps, batch, crop and lr are EMANet's VOC recipe.
"""

from hemnet_jax.training import config as config_lib


def get_config(variant="hemnet"):
  config = config_lib.default_config()
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
  return config_lib.apply_variant(config, variant)
