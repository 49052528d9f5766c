"""A trained EMANet's PyTorch state dict as the variables and config of our HEMNet.

The program is hemnet_jax/tools/convert_emanet.py. Two layouts, told apart by their keys (a DataParallel "module." prefix is removed):
  release  EMANet's own train.py, {"net": state_dict, "step": ...}: extractor.* (deep stem
           + dilated ResNet in an nn.Sequential), fc0.{conv,bn} (3x3, C channels), emau.mu
           [1, C, K], emau.conv1 (1x1 with bias), emau.conv2.{0,1} (1x1 + BN),
           fc1.0.{conv,bn} (3x3), fc2 (1x1 classifier). The model is set to express it
           exactly: no auxiliary head, align_corners=True upsampling, evaluation padding
           to k * 8 + 1 (its pad_inf), EM with l2-normalised bases and temperature 1.
  mmseg    mmsegmentation's EMAHead, {"state_dict": ...}: backbone.* (ResNetV1c),
           decode_head.ema_in_conv / ema_mid_conv / ema_out_conv / bottleneck / conv_cat /
           conv_seg and decode_head.ema_module.bases, optionally auxiliary_head.* (FCNHead,
           one conv). Its multi-grid is (1, 1, 1) and its upsampling half-pixel.
The structure (depth, widths, C, K, classes) is read from the weights; everything else
(the dataset, T, the training recipe) comes from --config.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import traverse_util

from hemnet_jax.convert import resnet as convert_resnet
from hemnet_jax.convert.resnet import ConversionError
from hemnet_jax.models.hem_unit import BASES
from hemnet_jax.training import config as config_lib


# Our head module (a path under "params"/"batch_stats") -> the PyTorch module, per layout.
HEADS = {
    "release": {
        ("head_conv_in",): "fc0.conv", ("head_bn_in",): "fc0.bn",
        ("hem", "conv_in"): "emau.conv1", ("hem", "conv_out"): "emau.conv2.0",
        ("hem", "bn_out"): "emau.conv2.1",
        ("head_conv_out",): "fc1.0.conv", ("head_bn_out",): "fc1.0.bn", ("classifier",): "fc2",
    },
    "mmseg": {
        ("head_conv_in",): "decode_head.ema_in_conv.conv", ("head_bn_in",): "decode_head.ema_in_conv.bn",
        ("hem", "conv_in"): "decode_head.ema_mid_conv.conv",
        ("hem", "conv_out"): "decode_head.ema_out_conv.conv",
        ("hem", "bn_out"): "decode_head.ema_out_conv.bn",
        ("head_conv_out",): "decode_head.bottleneck.conv", ("head_bn_out",): "decode_head.bottleneck.bn",
        ("head_conv_cat",): "decode_head.conv_cat.conv", ("head_bn_cat",): "decode_head.conv_cat.bn",
        ("classifier",): "decode_head.conv_seg",
        ("aux_conv",): "auxiliary_head.convs.0.conv", ("aux_bn",): "auxiliary_head.convs.0.bn",
        ("aux_classifier",): "auxiliary_head.conv_seg",
    },
}
BASES_KEY = {"release": "emau.mu", "mmseg": "decode_head.ema_module.bases"}
_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
           "var": "running_var"}
_IGNORED = re.compile(r"(^|\.)num_batches_tracked$")
# The release's extractor = Sequential(conv1 (the deep stem), bn1, relu, maxpool, layer1..4).
_EXTRACTOR = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}


def detect_layout(state_dict):
  if "emau.mu" in state_dict or any(k.startswith("extractor.") for k in state_dict):
    return "release"
  if any(k.startswith("decode_head.") for k in state_dict):
    return "mmseg"
  prefixes = sorted({k.split(".")[0] for k in state_dict})
  raise ConversionError(f"not an EMANet checkpoint: expected the release's extractor.* / emau.* "
                        f"keys or mmsegmentation's backbone.* / decode_head.*, found {prefixes}")


def split_backbone(state_dict, layout):
  """(backbone keys in convert_resnet's layouts, the other keys, keys of neither)."""
  backbone, head, stray = {}, {}, []
  for k, v in state_dict.items():
    if layout == "release" and k.startswith("extractor."):
      index, rest = k[len("extractor."):].split(".", 1)
      if index not in _EXTRACTOR:
        stray.append(k)
      else:
        backbone[f"{_EXTRACTOR[index]}.{rest}"] = v
    elif layout == "mmseg" and k.startswith("backbone."):
      backbone[k[len("backbone."):]] = v
    else:
      head[k] = v
  return backbone, head, stray


def _shape(state_dict, key):
  if key not in state_dict:
    raise ConversionError(f"missing key {key}: cannot tell the head's structure")
  return state_dict[key].shape


def configure(config, layout, head, resnet_meta):
  """config with its structural fields set from the checkpoint and the layout's conventions."""
  m, h, d = config.model, config.hem, config.data
  m.stem, m.stem_width, m.width = resnet_meta["stem"], resnet_meta["stem_width"], resnet_meta["width"]
  m.stage_sizes = tuple(resnet_meta["stage_sizes"])
  bases = _shape(head, BASES_KEY[layout])  # [1, C, K]
  h.num_bases = int(bases[2])
  # EMANet's EM unit (training/config.py, apply_variant "emanet").
  config_lib.apply_variant(config, "emanet")
  h.kernel, h.num_iters_eval = "dot", None
  config.train.dtype = "float32"  # the release's precision; bfloat16 changes its logits
  if layout == "release":
    m.head_channels = int(_shape(head, "fc0.conv.weight")[0])
    m.decoder_channels = int(_shape(head, "fc1.0.conv.weight")[0])
    d.num_classes = int(_shape(head, "fc2.weight")[0])
    m.aux_weight, m.align_corners, m.concat_input = 0.0, True, False
    m.multi_grid, d.eval_padding = (1, 2, 4), "stride_plus_one"
    h.mu0_momentum, h.renorm_mu0 = 0.9, False  # its train.py: mu <- 0.9 mu + 0.1 mean(mu_T)
  else:
    m.head_channels = int(_shape(head, "decode_head.ema_in_conv.conv.weight")[0])
    m.decoder_channels = int(_shape(head, "decode_head.bottleneck.conv.weight")[0])
    d.num_classes = int(_shape(head, "decode_head.conv_seg.weight")[0])
    m.concat_input = "decode_head.conv_cat.conv.weight" in head
    m.align_corners, m.multi_grid, d.eval_padding = False, (1, 1, 1), "stride"
    if "auxiliary_head.conv_seg.weight" in head:
      m.aux_channels = int(_shape(head, "auxiliary_head.convs.0.conv.weight")[0])
      m.aux_weight = m.aux_weight or 0.4
    else:
      m.aux_weight = 0.0
  if int(bases[1]) != m.head_channels:
    raise ConversionError(f"{BASES_KEY[layout]} has shape {tuple(bases)}: its {bases[1]} channels "
                          f"differ from the head's {m.head_channels}")
  return config


def _to_flax(value, leaf):
  value = np.asarray(value, np.float32)
  return value.transpose(2, 3, 1, 0) if leaf == "kernel" and value.ndim == 4 else value  # OIHW->HWIO


def convert_head(head, layout, expected):
  """({collection: {path: array}} of everything outside the backbone, used keys, problems)."""
  modules = HEADS[layout]
  flat, used, missing, mismatched = {}, set(), [], []
  for collection in ("params", "batch_stats"):
    for path, want in traverse_util.flatten_dict(expected[collection]).items():
      if path[0] == "backbone":
        continue
      key = f"{modules[path[:-1]]}.{_LEAVES[path[-1]]}"
      if key not in head:
        missing.append(key)
        continue
      used.add(key)
      value = _to_flax(head[key], path[-1])
      if value.shape != want.shape:
        mismatched.append(f"{key}: shape {tuple(head[key].shape)} in the checkpoint, "
                          f"{collection}/{'/'.join(path)} needs {want.shape} (after OIHW -> HWIO)")
        continue
      flat[(collection, *path)] = value
  key, want = BASES_KEY[layout], expected[BASES]["hem"]["mu0"]
  used.add(key)
  mu0 = np.asarray(head[key], np.float32)[0].T  # [1, C, K] -> [K, C]
  if mu0.shape != want.shape:
    mismatched.append(f"{key}: shape {tuple(head[key].shape)}, mu0 needs {want.shape} (transposed)")
  flat[(BASES, "hem", "mu0")] = mu0
  return flat, used, missing, mismatched


def convert(state_dict, config):
  """(variables {"params", "batch_stats", BASES}, config, layout) of an EMANet state dict.

  Fails with every missing key, unexpected key and shape mismatch at once.
  """
  from hemnet_jax.training import state as state_lib  # pylint: disable=import-outside-toplevel
  if state_dict and all(k.startswith("module.") for k in state_dict):  # DataParallel
    state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
  layout = detect_layout(state_dict)
  backbone, head, stray = split_backbone(state_dict, layout)
  try:
    backbone_vars, meta = convert_resnet.convert(backbone)
    backbone_error = None
  except ConversionError as e:
    backbone_vars, backbone_error = None, e
    meta = dict(stem="deep", stem_width=config.model.stem_width, width=config.model.width,
                stage_sizes=tuple(config.model.stage_sizes))
  config = configure(config, layout, head, meta)
  model = state_lib.build_model(config)
  expected = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 33, 33, 3)))
  flat, used, missing, mismatched = convert_head(head, layout, expected)
  unexpected = sorted(stray + [k for k in head if k not in used and not _IGNORED.search(k)])
  if missing or unexpected or mismatched or backbone_error:
    parts = [f"{title} ({len(keys)}):\n  " + "\n  ".join(keys) for title, keys in
             (("missing keys", missing), ("unexpected keys", unexpected),
              ("shape mismatches", mismatched)) if keys]
    if backbone_error:
      prefix = "extractor (renamed as EMANet's ResNet)" if layout == "release" else "backbone.*"
      parts.append(f"{prefix}: {backbone_error}")
    raise ConversionError(f"the checkpoint does not fit the {layout} EMANet layout:\n"
                          + "\n".join(parts))
  variables = traverse_util.unflatten_dict(flat)
  variables.setdefault("params", {})["backbone"] = backbone_vars["params"]
  variables.setdefault("batch_stats", {})["backbone"] = backbone_vars["batch_stats"]
  return variables, config, layout


def file_step(path):
  """The training step a .pth records ("step": the release; meta.iter: mmsegmentation), or 0."""
  if epath.Path(path).suffix == ".safetensors":
    return 0
  import torch  # pylint: disable=import-outside-toplevel
  obj = torch.load(str(path), map_location="cpu", weights_only=True)
  if isinstance(obj, dict):
    if isinstance(obj.get("step"), int):
      return obj["step"]
    if isinstance(obj.get("meta"), dict) and isinstance(obj["meta"].get("iter"), int):
      return obj["meta"]["iter"]
  return 0
