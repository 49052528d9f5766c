"""The demo: HEMNet on the built-in `hemnet_shapes` set, minutes on a 2-core CPU.

  python -m hemnet_jax.main --config configs/demo.py --workdir /tmp/hemnet_demo

Expected: val mIoU about 76-77 % after 4,000 steps of batch 4 and an attention line like
`entropy 0.28  bases in use 3.34  distinct bases in mu0 16` (75.76 %, 64.36 % at step 2,000,
at commit ef83240 on a Zen 5 EPYC; seeds 1 and 2 there: 77.40 % and 76.99 %, 4.70 and 6.28 bases
in use). The run is deterministic on one machine; the figures move with the rounding of the
compiled step: 75.37-77.80 % with 3.34-14.54 bases in use over seeds 0-2, machines and commits
that round differently, all 16 bases of mu0 distinct in every run.
About 3-8 minutes with dataset generation on a 2-core CPU: 146-333 s on that EPYC, 306-357 s on
one with AVX2 only (420-502 s in slow hours of that VM; BENCHMARKS.md, "The demo").
The HEM settings are the paper's (eta 0.5, T_train 3, temperature sqrt(C)) plus re-seeding of
merged bases (hem.reseed_cosine 0.99), which keeps mu0's 16 bases distinct where the paper's
unit ends with 2 (docs/collapse.md). `:paper` leaves the re-seeding out, `:emanet` is the EMANet
baseline of the same size. The same code as the paper's model at a small width and depth.
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
  config.hem.reseed_cosine = 0.99  # beyond the paper: a merged basis is re-seeded (docs/collapse.md)

  # Small batches, many steps: per image a step costs about the same at batch 4 as at 16 on
  # a 2-core CPU, and 4000 steps of 4 reach a higher mIoU than 2000 of 16 (BENCHMARKS.md).
  config.train.batch_size = 4
  config.train.num_steps = 4000
  config.train.lr = 0.06
  config.train.log_every = 200
  config.train.eval_every = 2000  # halfway and at the end
  config.train.checkpoint_every = 1000
  return config_lib.apply_variant(config, variant)
