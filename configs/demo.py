"""The demo: HEMNet on the built-in `hemnet_shapes` set, minutes on a 2-core CPU.

  python -m hemnet_jax.main --config configs/demo.py --workdir /tmp/hemnet_demo

Expected: val mIoU 73.96 % after 1,500 steps (measured at 88bce7e in a fresh clone and venv; about 4
minutes with dataset generation on an idle 2-core CPU with AVX-512, 8-10 on one with AVX2 only; the
run is deterministic on one machine: the same code gives the same figure), and the final report's
attention line: 2 distinct bases of 16 in mu0 (docs/collapse.md). The figure moves by a few tenths
with the rounding of the convolutions: 74.25 % at d4b63a7, before the CPU's 3x3 convolutions became
GEMMs.
`--config configs/demo.py:emanet` gives the EMANet baseline of the same size (74.62 % at an
earlier commit). The same code as the paper's model at a small width and depth; the HEM
settings are the paper's (eta 0.5, T_train 3, temperature sqrt(C)).
"""

from hemnet_jax.training import config as config_lib


def get_config(variant="hemnet"):
  config = config_lib.default_config()
  config.seed = 0

  config.data.name = "hemnet_shapes"  # generated into the tfds data dir on first use
  config.data.num_classes = 11  # background + 10 shape/texture classes
  config.data.crop_size = 96
  config.data.scale_range = (0.9, 1.1)  # the objects' sizes already vary 2x
  config.data.eval_batch_size = 50

  config.model.stage_sizes = (1, 1, 1, 1)  # a 4-block dilated ResNet ...
  config.model.width = 12  # ... 12 planes in stage 1 (the paper's ResNets: 64)
  config.model.stem_width = 24
  config.model.output_stride = 8
  config.model.head_channels = 96  # C
  config.model.decoder_channels = 64
  config.model.aux_channels = 64
  config.model.bn_momentum = 0.9  # a short run: running statistics must keep up

  config.hem.num_bases = 16  # K
  config.hem.eta = 0.5
  config.hem.num_iters = 3  # T_train

  config.train.batch_size = 16
  config.train.num_steps = 1500
  config.train.lr = 0.06
  config.train.log_every = 100
  config.train.eval_every = 500
  config.train.checkpoint_every = 200
  return config_lib.apply_variant(config, variant)
