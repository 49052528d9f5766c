"""The config schema every file in configs/ starts from, its variants, checks and derived values.

config.model's fields (but `backbone_checkpoint`) are HEMNet's attributes and config.hem's
are HEMUnit's, under the same names: `build_model` passes them through as they are.
"""

import dataclasses

import ml_collections
from ml_collections import config_dict

from hemnet_jax import hem
from hemnet_jax.models.hem_unit import HEMUnit
from hemnet_jax.models.hemnet import HEMNet

# config.model fields that are not HEMNet attributes: where the run's weights come from.
NOT_MODEL_ATTRIBUTES = ("backbone_checkpoint",)
# Attributes set from elsewhere (other sections, the enclosing module), not from config.model / .hem.
_SET_ELSEWHERE = {HEMNet: ("num_classes", "hem", "dtype"), HEMUnit: ("bn_momentum", "dtype")}


def default_config():
  """Every field, with the paper's (or EMANet's) value where one exists."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = dict(
      name="voc_aug",
      data_dir=config_dict.placeholder(str),  # None: $TFDS_DATA_DIR, else ~/tensorflow_datasets
      manual_dir=config_dict.placeholder(str),  # the archives; None: <data_dir>/downloads/manual
      skip_corrupt=False,  # True: leave undecodable images/labels out of the build (and count them)
      train_split="train",
      eval_split="validation",
      num_classes=21,
      crop_size=513,
      scale_range=(0.5, 2.0),
      eval_batch_size=1,
      eval_size=config_dict.placeholder(int),  # None: pad each image to the stride (EMANet)
      # "stride": pad each side to a multiple of the output stride; "stride_plus_one": to
      # k * stride + 1, the EMANet release's pad_inf (its align_corners=True upsampling).
      eval_padding="stride",
      num_threads=2,  # Grain reader threads
      prefetch=4,  # batches
      # name="folder": the user's dataset from folders (hemnet_jax/data/folder.py,
      # README "Your own dataset"), prepared as folder/<folder.name>.
      folder=dict(
          name=config_dict.placeholder(str),  # the dataset's name: lower case, digits, _
          images=config_dict.placeholder(str),  # images: flat, or with train/ and val/ inside
          labels=config_dict.placeholder(str),  # label PNGs, laid out as `images`
          train_list=config_dict.placeholder(str),  # or `image label` lines, both lists
          val_list=config_dict.placeholder(str),
          ignore_ids=(),  # label ids mapped to 255 (e.g. a void class)
          class_names_file=config_dict.placeholder(str),  # one name a line; None: class_<i>
          holdout_fraction=0.0,  # flat folders: this fraction, drawn with holdout_seed, is val
          holdout_seed=0,
      ),
  )
  c.model = dict(
      stage_sizes=(3, 4, 23, 3),  # ResNet-101; (3, 4, 6, 3) is ResNet-50
      width=64,
      stem="deep",  # "deep" (EMANet / ResNet-V1c) or "torchvision" (7x7)
      stem_width=128,  # deep stem's output channels: EMANet 128, V1c checkpoints 64
      output_stride=8,
      multi_grid=(1, 2, 4),
      head_channels=512,  # C, the HEM unit's channels
      head="hem",  # "fcn": the same head with the HEM unit left out (no attention), for ablations
      decoder_channels=256,
      dropout=0.1,
      aux_weight=0.4,  # auxiliary FCN head on stage 3; 0 removes it
      aux_channels=256,
      bn_momentum=0.9997,  # Flax's convention; PyTorch's 3e-4 as EMANet
      # EMANet's release upsamples its logits with align_corners=True (convert_emanet.py);
      # False is half-pixel centres, as mmsegmentation.
      align_corners=False,
      concat_input=False,  # mmsegmentation's EMAHead: conv_cat over [features, decoder output]
      # A directory from `python -m hemnet_jax.tools.convert_resnet`: the ImageNet backbone a new
      # run starts from (docs/pretrained.md). None: random initialisation.
      backbone_checkpoint=config_dict.placeholder(str),
  )
  c.hem = dict(
      num_bases=64,  # K
      eta=0.5,  # N-step size (Eq. 13); 1.0 is EM
      num_iters=3,  # T_train
      num_iters_eval=config_dict.placeholder(int),  # T_eval; None: T_train
      temperature=config_dict.placeholder(float),  # sigma^2; None: sqrt(C)
      l2_normalize=False,  # normalise mu after every step (EMANet); off for HEMNet
      backprop=True,  # False: no gradient through the iterations (EMANet)
      kernel="dot",  # "dot" (Eq. 8) or "gaussian" (Eq. 7)
      mu0_momentum=0.9,
      renorm_mu0=False,  # as EMANet's release: mu0 is not renormalised after averaging
      # Not in the paper: re-seed a basis of mu0 whose cosine to another exceeds this with
      # the worst-reconstructed pixel's feature (docs/collapse.md). None: off (paper, EMANet).
      reseed_cosine=config_dict.placeholder(float),
      remat=False,  # True: recompute the iterations in the backward pass (memory flat in T)
      backward="custom",  # "custom": hem/vjp.py's hand-written backward pass; "autodiff": jax.grad
      conv1x1="matmul",  # the HEM unit's 1x1 convs: "matmul" or "xla" (XLA's convolution)
  )
  c.train = dict(
      batch_size=16,  # global batch
      num_steps=30_000,
      lr=0.009,
      momentum=0.9,
      weight_decay=1e-4,  # on conv and dense kernels only, as EMANet
      poly_power=0.9,
      dtype="float32",  # compute dtype: "float32" or "bfloat16"; parameters stay float32
      log_every=50,
      eval_every=5_000,
      checkpoint_every=1_000,
      keep_checkpoints=3,
      log_elbo=True,  # per-iteration ELBO of the HEM unit in the summaries
      # The first this many validation images as image summaries at every evaluation
      # (prediction over the image, label, attention maps); 0: none.
      summary_images=3,
      fsdp=False,  # shard parameters and optimizer state over the data axis
  )
  # `--mode eval` (hemnet_jax/evaluate.py). T_eval is hem.num_iters_eval.
  c.eval = dict(
      multi_scale=False,  # average softmax probabilities over `scales` (EMANet's MS)
      flip=False,  # also average the horizontally flipped image at each scale
      scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75),  # EMANet's; used when multi_scale
  )
  return c


def apply_variant(config, variant):
  """"hemnet": the config as written; "paper": the same without what the project adds to
  the paper (re-seeding); "emanet": the EMANet release's EM attention unit."""
  if variant == "hemnet":
    return config
  if variant == "paper":
    config.hem.reseed_cosine = None
    return config
  if variant == "emanet":
    config.hem.eta = 1.0  # plain EM
    config.hem.backprop = False  # iterations under no_grad
    config.hem.l2_normalize = True
    config.hem.temperature = 1.0  # logits = X mu, no temperature
    config.hem.backward = "autodiff"  # no gradient through the iterations anyway
    config.hem.reseed_cosine = None  # the release never re-seeds a basis
    return config
  raise ValueError(f"config variant must be 'hemnet', 'paper' or 'emanet', got {variant!r} "
                   "(as in --config configs/voc.py:emanet)")


def _check(ok, field, message):
  if not ok:
    raise ValueError(f"config.{field}: {message}")


def _attributes(module):
  return {f.name for f in dataclasses.fields(module)} - {"parent", "name", *_SET_ELSEWHERE[module]}


def model_fields(config):
  """config.model's HEMNet attributes, {name: value}."""
  return {k: v for k, v in config.model.items() if k not in NOT_MODEL_ATTRIBUTES}


def resolve(config):
  """A copy with the derived values filled in, once for every user of the config:
  hem.temperature None -> sqrt(C) (Sec. 5.1), hem.num_iters_eval None -> T_train."""
  config = config.copy_and_resolve_references()
  if config.hem.temperature is None:
    config.hem.temperature = hem.default_temperature(config.model.head_channels)
  if config.hem.num_iters_eval is None:
    config.hem.num_iters_eval = config.hem.num_iters
  return config


def validate(config):
  """Fails with the field to fix; returns the resolved config (see `resolve`)."""
  unknown = [f"model.{k}" for k in model_fields(config) if k not in _attributes(HEMNet)]
  unknown += [f"hem.{k}" for k in config.hem if k not in _attributes(HEMUnit)]
  _check(not unknown, unknown[0] if unknown else "", "is not an attribute of HEMNet / HEMUnit; "
         "config.model and config.hem hold exactly the modules' attributes")
  h, m, d, t = config.hem, config.model, config.data, config.train
  _check(0.0 < h.eta <= 1.0, "hem.eta", f"must be in (0, 1], got {h.eta}")
  _check(isinstance(h.num_iters, int) and h.num_iters >= 1, "hem.num_iters",
         f"must be an int >= 1, got {h.num_iters!r}")
  _check(h.num_iters_eval is None or h.num_iters_eval >= 1, "hem.num_iters_eval",
         f"must be >= 1, got {h.num_iters_eval!r}")
  _check(h.temperature is None or h.temperature > 0, "hem.temperature",
         f"must be > 0, got {h.temperature!r}")
  _check(h.reseed_cosine is None or -1.0 < h.reseed_cosine < 1.0, "hem.reseed_cosine",
         f"must be None or in (-1, 1), got {h.reseed_cosine!r}")
  _check(h.kernel in ("dot", "gaussian"), "hem.kernel", f"must be 'dot' or 'gaussian', got {h.kernel!r}")
  _check(h.backward in ("custom", "autodiff"), "hem.backward",
         f"must be 'custom' or 'autodiff', got {h.backward!r}")
  _check(h.backward == "autodiff" or not h.backprop or (h.kernel == "dot" and not h.l2_normalize),
         "hem.backward", "'custom' covers the dot kernel without l2_normalize; set "
         "--config.hem.backward=autodiff for this unit")
  _check(h.conv1x1 in ("matmul", "xla"), "hem.conv1x1", f"must be 'matmul' or 'xla', got {h.conv1x1!r}")
  _check(m.head in ("hem", "fcn"), "model.head", f"must be 'hem' or 'fcn', got {m.head!r}")
  _check(m.output_stride in (8, 16, 32), "model.output_stride",
         f"must be 8, 16 or 32, got {m.output_stride}")
  _check(m.stem in ("deep", "torchvision"), "model.stem",
         f"must be 'deep' or 'torchvision', got {m.stem!r}")
  _check(len(m.stage_sizes) == 4, "model.stage_sizes", f"needs 4 stages, got {m.stage_sizes}")
  _check(d.get("eval_padding", "stride") in ("stride", "stride_plus_one"), "data.eval_padding",
         f"must be 'stride' or 'stride_plus_one', got {d.get('eval_padding')!r}")
  _check(t.dtype in ("float32", "bfloat16"), "train.dtype",
         f"must be 'float32' or 'bfloat16', got {t.dtype!r}")
  _check(d.num_classes >= 2, "data.num_classes", f"must be >= 2, got {d.num_classes}")
  _check(len(config.eval.scales) >= 1 and all(s > 0 for s in config.eval.scales), "eval.scales",
         f"must be one or more positive scales, got {config.eval.scales!r}")
  _check(isinstance(t.summary_images, int) and t.summary_images >= 0, "train.summary_images",
         f"must be an int >= 0, got {t.summary_images!r}")
  for name in ("batch_size", "num_steps", "log_every", "eval_every", "checkpoint_every"):
    _check(t[name] >= 1, f"train.{name}", f"must be >= 1, got {t[name]}")
  return resolve(config)

