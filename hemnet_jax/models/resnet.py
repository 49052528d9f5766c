"""Dilated ResNet-50/101 (NHWC) with multi-grid, in the layout EMANet trains with.

Two stems, so that either family of published ImageNet checkpoints maps onto it:
  "deep": three 3x3 convs (the ResNet-V1c layout; EMANet's own release uses
          stem_width=128, the V1c checkpoints stem_width=64);
  "torchvision": one 7x7 stride-2 conv.
Paddings are explicit and symmetric, as in PyTorch, so that converted weights give
the same outputs (Flax's "SAME" pads stride-2 convs asymmetrically).
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from hemnet_jax.models.layers import conv_general_dilated, materialize, max_pool

STAGE_SIZES = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def conv(features, kernel, stride=1, dilation=1, name=None, dtype=jnp.float32, bias=False):
  pad = dilation * (kernel - 1) // 2
  return nn.Conv(features, (kernel, kernel), strides=stride, padding=((pad, pad), (pad, pad)),
                 kernel_dilation=dilation, use_bias=bias, dtype=dtype, name=name,
                 conv_general_dilated=conv_general_dilated,  # 1x1 kernels as matmuls
                 kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"))


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (stride, dilation) -> 1x1, expansion 4; stride in the 3x3 as V1b/V1c."""
  planes: int
  stride: int = 1
  dilation: int = 1
  norm: Any = nn.BatchNorm
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    out = nn.relu(self.norm(name="bn1")(conv(self.planes, 1, name="conv1", dtype=self.dtype)(x)))
    out = conv(self.planes, 3, self.stride, self.dilation, name="conv2", dtype=self.dtype)(out)
    out = nn.relu(self.norm(name="bn2")(out))
    out = conv(4 * self.planes, 1, name="conv3", dtype=self.dtype)(out)
    out = self.norm(name="bn3")(out)
    if x.shape[-1] != 4 * self.planes or self.stride != 1:
      x = conv(4 * self.planes, 1, self.stride, name="downsample_conv", dtype=self.dtype)(x)
      x = self.norm(name="downsample_bn")(x)
    return materialize(nn.relu(out + x))  # one buffer per block (layers.materialize)


def stage_layout(output_stride, multi_grid=(1, 2, 4)):
  """(stride, dilation) of stages 2-4 and the per-block multi-grid of stage 4.

  As EMANet: OS 8 dilates stage 3 by 2 and stage 4 by 4; OS 16 strides stage 3 and
  dilates stage 4 by 2. Stage 4's blocks use dilation * multi_grid[i], and the
  first block of every dilated stage uses half the stage's dilation.
  """
  if output_stride == 8:
    return ((2, 1), (1, 2), (1, 4)), tuple(multi_grid)
  if output_stride == 16:
    return ((2, 1), (2, 1), (1, 2)), tuple(multi_grid)
  if output_stride == 32:
    return ((2, 1), (2, 1), (2, 1)), (1,) * len(multi_grid)
  raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")


def block_dilations(num_blocks, dilation, grid):
  grid = tuple(grid) + (1,) * max(0, num_blocks - len(grid))
  first = dilation // 2 if dilation > 1 else 1
  return (first,) + tuple(dilation * g for g in grid[1:num_blocks])


def stage_plan(stage_sizes, output_stride, multi_grid):
  """[(stride, dilation of each block)] of stages 1-4, as ResNet builds them."""
  layout, grid = stage_layout(output_stride, multi_grid)
  return [(stride, block_dilations(num_blocks, dilation, grid if i == 3 else ()))
          for i, (num_blocks, (stride, dilation)) in enumerate(zip(stage_sizes,
                                                                   ((1, 1),) + layout))]


def stem(x, norm, kind, width, stem_width, dtype=jnp.float32):
  """The stem and its max pool, as submodules (stem_*) of the compact module calling it."""
  if kind == "deep":
    w = stem_width
    x = nn.relu(norm(name="stem_bn1")(conv(w // 2, 3, 2, name="stem_conv1", dtype=dtype)(x)))
    x = nn.relu(norm(name="stem_bn2")(conv(w // 2, 3, name="stem_conv2", dtype=dtype)(x)))
    x = nn.relu(norm(name="stem_bn3")(conv(w, 3, name="stem_conv3", dtype=dtype)(x)))
  elif kind == "torchvision":
    x = nn.relu(norm(name="stem_bn1")(conv(width, 7, 2, name="stem_conv1", dtype=dtype)(x)))
  else:
    raise ValueError(f"model.stem must be 'deep' or 'torchvision', got {kind!r}")
  return max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))


def stage(x, index, stride, dilations, norm, width, dtype=jnp.float32):
  """Stage index + 1's blocks (layer{index + 1}_*), as submodules of the compact module
  calling it."""
  for j, dilation in enumerate(dilations):
    x = Bottleneck(width * 2**index, stride if j == 0 else 1, dilation, norm=norm, dtype=dtype,
                   name=f"layer{index + 1}_{j}")(x)
  return x


class ResNet(nn.Module):
  """Returns the features of stages 1-4 (strides 4, 8, OS, OS for OS <= 16)."""
  stage_sizes: Sequence[int] = STAGE_SIZES[101]
  width: int = 64  # planes of stage 1; 64 for the paper's ResNets
  stem: str = "deep"
  stem_width: int = 128  # output channels of the deep stem (EMANet: 128, V1c: 64)
  output_stride: int = 8
  multi_grid: Sequence[int] = (1, 2, 4)
  bn_momentum: float = 0.9997  # PyTorch's 3e-4, as EMANet
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
                             epsilon=1e-5, dtype=self.dtype)
    x = stem(x, norm, self.stem, self.width, self.stem_width, self.dtype)
    features = []
    for i, (stride, dilations) in enumerate(stage_plan(self.stage_sizes, self.output_stride,
                                                       self.multi_grid)):
      x = stage(x, i, stride, dilations, norm, self.width, self.dtype)
      features.append(x)
    return features
