"""An ImageNet ResNet's PyTorch state dict as the variables of our Flax ResNet.

The program is hemnet_jax/tools/convert_resnet.py. Supported state-dict layouts, detected from the stem's keys:
  torchvision     conv1, bn1 (7x7 stem), fc.* ignored;
  emanet          EMANet's deep stem: conv1.0/1/3/4/6 (conv, BN, conv, BN, conv), then bn1;
  v1c             mmcv/mmsegmentation ResNetV1c: stem.0/1/3/4/6/7 (conv, BN) x 3;
  v1c_convmodule  mmpretrain ResNetV1c: stem.{0,1,2}.conv / stem.{0,1,2}.bn.
All share layer{i}.{j}.conv1-3/bn1-3/downsample.0/1 for the Bottleneck blocks. A
"state_dict" or "model" wrapper and "module." or "backbone." prefixes are removed;
with a "backbone." prefix, keys outside it (a classifier or decode head) are ignored.
"""

import collections
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from hemnet_jax.models.resnet import ResNet

# Flax stem module -> PyTorch prefix, per layout; "stem" is our ResNet's stem kind.
LAYOUTS = {
    "torchvision": dict(stem="torchvision", modules={"stem_conv1": "conv1", "stem_bn1": "bn1"}),
    "emanet": dict(stem="deep", modules={
        "stem_conv1": "conv1.0", "stem_bn1": "conv1.1", "stem_conv2": "conv1.3",
        "stem_bn2": "conv1.4", "stem_conv3": "conv1.6", "stem_bn3": "bn1"}),
    "v1c": dict(stem="deep", modules={
        "stem_conv1": "stem.0", "stem_bn1": "stem.1", "stem_conv2": "stem.3",
        "stem_bn2": "stem.4", "stem_conv3": "stem.6", "stem_bn3": "stem.7"}),
    "v1c_convmodule": dict(stem="deep", modules={
        "stem_conv1": "stem.0.conv", "stem_bn1": "stem.0.bn", "stem_conv2": "stem.1.conv",
        "stem_bn2": "stem.1.bn", "stem_conv3": "stem.2.conv", "stem_bn3": "stem.2.bn"}),
}
_BLOCK_MODULES = {"conv1": "conv1", "bn1": "bn1", "conv2": "conv2", "bn2": "bn2", "conv3": "conv3",
                  "bn3": "bn3", "downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}
# (collection, Flax leaf) -> PyTorch suffix.
_LEAVES = {("params", "kernel"): "weight", ("params", "scale"): "weight",
           ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
           ("batch_stats", "var"): "running_var"}
# Keys that carry nothing our backbone uses: the ImageNet classifier and BN's step counters.
_IGNORED = re.compile(r"(^fc\.|(^|\.)num_batches_tracked$)")


class ConversionError(ValueError):
  pass


def strip_prefixes(state_dict):
  """(backbone state dict, keys ignored as belonging to another part of the model)."""
  if state_dict and all(k.startswith("module.") for k in state_dict):  # DataParallel
    state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
  if any(k.startswith("backbone.") for k in state_dict):
    others = sorted(k for k in state_dict if not k.startswith("backbone."))
    return {k[len("backbone."):]: v for k, v in state_dict.items() if k.startswith("backbone.")}, others
  return state_dict, []


def detect_layout(state_dict):
  """The layout whose first stem conv weight is present."""
  found = [name for name, layout in LAYOUTS.items()
           if layout["modules"]["stem_conv1"] + ".weight" in state_dict]
  if len(found) != 1:
    stem_keys = sorted(k for k in state_dict if not k.startswith("layer"))[:20]
    raise ConversionError(
        f"cannot tell the checkpoint's layout from its stem keys {stem_keys}: expected exactly one "
        f"of " + ", ".join(f"{l['modules']['stem_conv1']}.weight ({n})" for n, l in LAYOUTS.items()))
  return found[0]


def detect_structure(state_dict, layout):
  """The ResNet hyperparameters (stage_sizes, width, stem_width) the keys describe."""
  blocks = collections.defaultdict(set)
  for k in state_dict:
    m = re.match(r"layer(\d+)\.(\d+)\.", k)
    if m:
      blocks[int(m.group(1))].add(int(m.group(2)))
  if sorted(blocks) != [1, 2, 3, 4]:
    raise ConversionError(f"expected the blocks of stages layer1..layer4, found stages "
                          f"{sorted(blocks)}: not a four-stage ResNet")
  for stage, ids in blocks.items():
    if ids != set(range(len(ids))):
      raise ConversionError(f"layer{stage} has blocks {sorted(ids)}: not numbered 0..n-1")
  stage_sizes = tuple(len(blocks[i]) for i in (1, 2, 3, 4))
  if "layer1.0.conv1.weight" not in state_dict:
    raise ConversionError("missing key layer1.0.conv1.weight: cannot tell the ResNet's width")
  width = int(state_dict["layer1.0.conv1.weight"].shape[0])
  stem = LAYOUTS[layout]
  last_conv = stem["modules"]["stem_conv3" if stem["stem"] == "deep" else "stem_conv1"] + ".weight"
  if last_conv not in state_dict:
    raise ConversionError(f"missing key {last_conv}: the {layout} stem is incomplete")
  return dict(layout=layout, stem=stem["stem"], stem_width=int(state_dict[last_conv].shape[0]),
              width=width, stage_sizes=list(stage_sizes),
              depth=3 * sum(stage_sizes) + 2)  # Bottleneck blocks: 3 convs each, + stem + fc


def torch_key(layout, collection, path):
  """The PyTorch key of one of our ResNet's leaves, path = (module, [submodule,] leaf)."""
  module, *sub, leaf = path
  if module.startswith("stem_"):
    prefix = LAYOUTS[layout]["modules"][module]
  else:
    stage, block = re.fullmatch(r"layer(\d+)_(\d+)", module).groups()
    prefix = f"layer{stage}.{block}.{_BLOCK_MODULES[sub[0]]}"
  return f"{prefix}.{_LEAVES[(collection, leaf)]}"


def expected_shapes(meta):
  model = ResNet(stage_sizes=tuple(meta["stage_sizes"]), width=meta["width"], stem=meta["stem"],
                 stem_width=meta["stem_width"])
  return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))


def convert(state_dict):
  """(variables {"params", "batch_stats"} of our ResNet, meta) from a PyTorch state dict.

  Fails with every missing key, unexpected key and shape mismatch at once.
  """
  state_dict, ignored = strip_prefixes(dict(state_dict))
  layout = detect_layout(state_dict)
  meta = detect_structure(state_dict, layout)
  meta["ignored_keys"] = len(ignored) + sum(bool(_IGNORED.search(k)) for k in state_dict)
  shapes = expected_shapes(meta)

  variables, used, missing, mismatched = {}, set(), [], []
  for collection in ("params", "batch_stats"):
    flat = {}
    for path, want in traverse_util.flatten_dict(shapes[collection]).items():
      key = torch_key(layout, collection, path)
      if key not in state_dict:
        missing.append(key)
        continue
      used.add(key)
      value = np.asarray(state_dict[key], np.float32)
      if path[-1] == "kernel":  # OIHW -> HWIO
        value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value
      if value.shape != want.shape:
        mismatched.append(f"{key}: shape {tuple(state_dict[key].shape)} in the checkpoint, "
                          f"{collection}/{'/'.join(path)} needs {want.shape} (after OIHW -> HWIO)")
        continue
      flat[path] = value
    variables[collection] = traverse_util.unflatten_dict(flat)
  unexpected = sorted(k for k in state_dict if k not in used and not _IGNORED.search(k))
  if missing or unexpected or mismatched:
    parts = [f"{title} ({len(keys)}):\n  " + "\n  ".join(keys) for title, keys in
             (("missing keys", missing), ("unexpected keys", unexpected),
              ("shape mismatches", mismatched)) if keys]
    raise ConversionError(
        f"the checkpoint does not fit a {meta['layout']} ResNet-{meta['depth']} (stage sizes "
        f"{tuple(meta['stage_sizes'])}, width {meta['width']}, stem width {meta['stem_width']}):\n"
        + "\n".join(parts))
  return variables, meta
