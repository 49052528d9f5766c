"""HEMNet: dilated ResNet backbone, HEM head, auxiliary FCN head, upsampled logits."""

import functools
from typing import Any, Mapping, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hemnet_jax.models.hem_unit import BASES, FEATURES, MU0, HEMUnit
from hemnet_jax.models.layers import conv_general_dilated
from hemnet_jax.models.resnet import ResNet, conv


HEM = "hem"  # the HEM unit's name in the variables


class HEMNet(nn.Module):
  """Returns (logits, aux_logits), both [B, H, W, num_classes] at the input size.

  aux_logits is None when aux_weight == 0. Differences from EMANet's release:
  - an auxiliary FCN head on stage 3 (the release has none; HEMNet's training
    regime and mmsegmentation's EMANet use one, weight 0.4);
  - bilinear upsampling with half-pixel centres (jax.image.resize) instead of
    align_corners=True: the modern convention, and it keeps pixel centres aligned
    when the input is padded to a multiple of the output stride.
  align_corners=True (with aux_weight=0 and eval padding to k * stride + 1, the
  release's pad_inf) is the release exactly, for its converted weights
  (hemnet_jax/convert_emanet.py). concat_input=True is mmsegmentation's EMAHead: a
  3x3 conv + BN + ReLU over [backbone features, decoder output] before the classifier.
  """
  num_classes: int
  # Backbone.
  stage_sizes: Sequence[int] = (3, 4, 23, 3)
  width: int = 64
  stem: str = "deep"
  stem_width: int = 128
  output_stride: int = 8
  multi_grid: Sequence[int] = (1, 2, 4)
  # Head: C channels into the HEM unit, and the unit's settings (HEMUnit's fields:
  # num_bases K, num_iters, num_iters_eval, eta, temperature, l2_normalize, ...).
  head_channels: int = 512
  head: str = "hem"  # "fcn": the same head without the HEM unit (the ablation)
  hem: Mapping[str, Any] = flax.core.FrozenDict()
  decoder_channels: int = 256
  dropout: float = 0.1
  aux_weight: float = 0.4
  aux_channels: int = 256
  bn_momentum: float = 0.9997
  align_corners: bool = False
  concat_input: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
                             epsilon=1e-5, dtype=self.dtype)
    # Dropout2d as in EMANet: whole channels are dropped.
    drop = functools.partial(nn.Dropout, self.dropout, broadcast_dims=(1, 2),
                             deterministic=not train)
    x = images.astype(self.dtype)
    feats = ResNet(stage_sizes=self.stage_sizes, width=self.width, stem=self.stem,
                   stem_width=self.stem_width, output_stride=self.output_stride,
                   multi_grid=self.multi_grid, bn_momentum=self.bn_momentum, dtype=self.dtype,
                   name="backbone")(x, train)

    y = conv(self.head_channels, 3, name="head_conv_in", dtype=self.dtype)(feats[3])
    y = nn.relu(norm(name="head_bn_in")(y))
    if self.head == "hem":
      y = HEMUnit(**self.hem, bn_momentum=self.bn_momentum, dtype=self.dtype, name=HEM)(y, train)
    y = conv(self.decoder_channels, 3, name="head_conv_out", dtype=self.dtype)(y)
    y = nn.relu(norm(name="head_bn_out")(y))
    if self.concat_input:  # mmsegmentation's conv_cat
      y = jnp.concatenate([feats[3], y], axis=-1)
      y = conv(self.decoder_channels, 3, name="head_conv_cat", dtype=self.dtype)(y)
      y = nn.relu(norm(name="head_bn_cat")(y))
    y = drop()(y)
    logits = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name="classifier",
                     conv_general_dilated=conv_general_dilated)(y)

    aux = None
    if self.aux_weight > 0:
      a = conv(self.aux_channels, 3, name="aux_conv", dtype=self.dtype)(feats[2])
      a = drop()(nn.relu(norm(name="aux_bn")(a)))
      aux = upsample(nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name="aux_classifier",
                          conv_general_dilated=conv_general_dilated)(a),
                     images.shape[1:3], self.align_corners)
    return upsample(logits, images.shape[1:3], self.align_corners), aux


def _align_corners_matrix(n_out, n_in):
  """[n_out, n_in] linear interpolation weights with the corner pixels' centres aligned:
  output i samples input i * (n_in - 1) / (n_out - 1), as PyTorch's align_corners=True."""
  src = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
  lo = np.clip(np.floor(src).astype(int), 0, max(n_in - 2, 0))
  frac = src - lo
  m = np.zeros((n_out, n_in), np.float64)
  m[np.arange(n_out), lo] += 1 - frac
  m[np.arange(n_out), np.minimum(lo + 1, n_in - 1)] += frac
  return m


def upsample(logits, size, align_corners=False):
  """Bilinear resize of [B, h, w, K] logits to size (H, W), in float32 or wider."""
  b, h, w, k = logits.shape
  logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
  if not align_corners:
    return jax.image.resize(logits, (b, *size, k), "bilinear")
  # Separable: two small matmuls, exact to float32 rounding.
  mh = jnp.asarray(_align_corners_matrix(size[0], h), logits.dtype)
  mw = jnp.asarray(_align_corners_matrix(size[1], w), logits.dtype)
  return jnp.einsum("Hh,bhwk,Ww->bHWk", mh, logits, mw, precision=jax.lax.Precision.HIGHEST)


def hem_inputs(model, variables, images):
  """(X [B, N, C], mu0 [K, C]): the HEM unit's input features, its conv_in's output (sown:
  with conv_in folded into the iterations the unit forms it only when asked)."""
  _, state = model.apply(variables, images, train=False, mutable=[FEATURES])
  x = state[FEATURES][HEM]["x"][0]
  # float32 even for a bfloat16 model: the probes measure gradients down to ~1e-7 of the total.
  x = x.reshape(x.shape[0], -1, x.shape[-1]).astype(jnp.float32)
  return x, variables[BASES][HEM][MU0]
