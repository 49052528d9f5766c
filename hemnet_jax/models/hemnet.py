"""HEMNet: dilated ResNet backbone, HEM head, auxiliary FCN head, upsampled logits."""

import functools
from typing import Any, Mapping, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from hemnet_jax.models.hem_unit import HEMUnit
from hemnet_jax.models.layers import conv_general_dilated
from hemnet_jax.models.resnet import ResNet, conv


class HEMNet(nn.Module):
  """Returns (logits, aux_logits), both [B, H, W, num_classes] at the input size.

  aux_logits is None when aux_weight == 0. Differences from EMANet's release:
  - an auxiliary FCN head on stage 3 (the release has none; HEMNet's training
    regime and mmsegmentation's EMANet use one, weight 0.4);
  - bilinear upsampling with half-pixel centres (jax.image.resize) instead of
    align_corners=True: the modern convention, and it keeps pixel centres aligned
    when the input is padded to a multiple of the output stride.
  """
  num_classes: int
  # Backbone.
  depth_stages: Sequence[int] = (3, 4, 23, 3)
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
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
                             epsilon=1e-5, dtype=self.dtype)
    # Dropout2d as in EMANet: whole channels are dropped.
    drop = functools.partial(nn.Dropout, self.dropout, broadcast_dims=(1, 2),
                             deterministic=not train)
    x = images.astype(self.dtype)
    feats = ResNet(stage_sizes=self.depth_stages, width=self.width, stem=self.stem,
                   stem_width=self.stem_width, output_stride=self.output_stride,
                   multi_grid=self.multi_grid, bn_momentum=self.bn_momentum, dtype=self.dtype,
                   name="backbone")(x, train)

    y = conv(self.head_channels, 3, name="head_conv_in", dtype=self.dtype)(feats[3])
    y = nn.relu(norm(name="head_bn_in")(y))
    if self.head == "hem":
      y = HEMUnit(**self.hem, bn_momentum=self.bn_momentum, dtype=self.dtype, name="hem")(y, train)
    y = conv(self.decoder_channels, 3, name="head_conv_out", dtype=self.dtype)(y)
    y = drop()(nn.relu(norm(name="head_bn_out")(y)))
    logits = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name="classifier",
                     conv_general_dilated=conv_general_dilated)(y)

    aux = None
    if self.aux_weight > 0:
      a = conv(self.aux_channels, 3, name="aux_conv", dtype=self.dtype)(feats[2])
      a = drop()(nn.relu(norm(name="aux_bn")(a)))
      aux = upsample(nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name="aux_classifier",
                          conv_general_dilated=conv_general_dilated)(a),
                     images.shape[1:3])
    return upsample(logits, images.shape[1:3]), aux


def upsample(logits, size):
  """Bilinear resize of [B, h, w, K] logits to size (H, W), in float32 or wider."""
  b, _, _, k = logits.shape
  logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
  return jax.image.resize(logits, (b, *size, k), "bilinear")
