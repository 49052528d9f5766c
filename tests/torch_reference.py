"""Reference PyTorch ResNets in each published state-dict layout, for the converter tests.

Written from the torchvision, EMANet and mmcv/mmpretrain descriptions of the
layouts; the dilation rule is EMANet's `_make_layer`: in a dilated stage the first
block uses half the stage's dilation and block i uses dilation * grid[i].
"""

import torch
from torch import nn


def conv_bn(cin, cout, kernel, stride=1, dilation=1):
  pad = dilation * (kernel - 1) // 2
  return (nn.Conv2d(cin, cout, kernel, stride, pad, dilation, bias=False), nn.BatchNorm2d(cout))


class Bottleneck(nn.Module):
  def __init__(self, cin, planes, stride, dilation, downsample):
    super().__init__()
    self.conv1, self.bn1 = conv_bn(cin, planes, 1)
    self.conv2, self.bn2 = conv_bn(planes, planes, 3, stride, dilation)
    self.conv3, self.bn3 = conv_bn(planes, 4 * planes, 1)
    self.downsample = downsample

  def forward(self, x):
    out = torch.relu(self.bn1(self.conv1(x)))
    out = torch.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class ConvModule(nn.Module):
  """mmcv's conv + BN + ReLU unit, whose parameters are named conv.* and bn.*."""

  def __init__(self, cin, cout, stride):
    super().__init__()
    self.conv, self.bn = conv_bn(cin, cout, 3, stride)

  def forward(self, x):
    return torch.relu(self.bn(self.conv(x)))


def _deep_stem_modules(stem_width):
  w = stem_width
  c1, b1 = conv_bn(3, w // 2, 3, 2)
  c2, b2 = conv_bn(w // 2, w // 2, 3)
  c3, b3 = conv_bn(w // 2, w, 3)
  return c1, b1, c2, b2, c3, b3


class ResNet(nn.Module):
  """Returns the four stage outputs. layout: torchvision, emanet, v1c, v1c_convmodule."""

  def __init__(self, layout, stage_sizes=(3, 4, 23, 3), width=64, stem_width=128,
               output_stride=8, multi_grid=(1, 2, 4)):
    super().__init__()
    self.layout = layout
    if layout == "torchvision":
      self.conv1, self.bn1 = conv_bn(3, width, 7, 2)
      cin = width
    elif layout == "emanet":
      c1, b1, c2, b2, c3, self.bn1 = _deep_stem_modules(stem_width)
      self.conv1 = nn.Sequential(c1, b1, nn.ReLU(), c2, b2, nn.ReLU(), c3)
      cin = stem_width
    elif layout == "v1c":
      c1, b1, c2, b2, c3, b3 = _deep_stem_modules(stem_width)
      self.stem = nn.Sequential(c1, b1, nn.ReLU(), c2, b2, nn.ReLU(), c3, b3, nn.ReLU())
      cin = stem_width
    elif layout == "v1c_convmodule":
      w = stem_width
      self.stem = nn.Sequential(ConvModule(3, w // 2, 2), ConvModule(w // 2, w // 2, 1),
                                ConvModule(w // 2, w, 1))
      cin = stem_width
    else:
      raise ValueError(layout)
    self.maxpool = nn.MaxPool2d(3, 2, 1)

    if output_stride == 8:
      strides, dilations = (1, 2, 1, 1), (1, 1, 2, 4)
    elif output_stride == 16:
      strides, dilations = (1, 2, 2, 1), (1, 1, 1, 2)
    else:
      raise ValueError(output_stride)
    for i, n in enumerate(stage_sizes):
      planes = width * 2**i
      grid = multi_grid if i == 3 else (1,) * n
      layer, cin = self._make_layer(cin, planes, n, strides[i], dilations[i], grid)
      setattr(self, f"layer{i + 1}", layer)
    if layout in ("torchvision", "emanet"):  # ImageNet classifier, which the converter ignores
      self.fc = nn.Linear(cin, 10)

  @staticmethod
  def _make_layer(cin, planes, blocks, stride, dilation, grid):
    downsample = None
    if stride != 1 or cin != 4 * planes:
      downsample = nn.Sequential(*conv_bn(cin, 4 * planes, 1, stride))
    layers = [Bottleneck(cin, planes, stride, max(1, dilation // 2), downsample)]
    for i in range(1, blocks):
      layers.append(Bottleneck(4 * planes, planes, 1, dilation * grid[i], None))
    return nn.Sequential(*layers), 4 * planes

  def forward(self, x):
    if self.layout == "torchvision":
      x = torch.relu(self.bn1(self.conv1(x)))
    elif self.layout == "emanet":
      x = torch.relu(self.bn1(self.conv1(x)))
    else:
      x = self.stem(x)
    x = self.maxpool(x)
    feats = []
    for i in range(1, 5):
      x = getattr(self, f"layer{i}")(x)
      feats.append(x)
    return feats


@torch.no_grad()
def randomize(model, seed):
  """Random weights and random BN running statistics, scaled so that depth-101
  activations stay O(1): nothing here may coincide with a default initialisation."""
  g = torch.Generator().manual_seed(seed)
  for name, m in model.named_modules():
    if isinstance(m, nn.Conv2d):
      fan_in = m.weight[0].numel()
      m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
    elif isinstance(m, nn.BatchNorm2d):
      n = m.num_features
      # The residual branch's last BN small, as in trained ResNets, so the sum stays bounded.
      scale = 0.2 if name.endswith("bn3") else 1.0
      m.weight.copy_(scale * (0.5 + torch.rand(n, generator=g)))
      m.bias.copy_(0.1 * torch.randn(n, generator=g))
      m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
      m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=g))
      m.num_batches_tracked.fill_(1000)
    elif isinstance(m, nn.Linear):
      m.weight.copy_(torch.randn(m.weight.shape, generator=g))
      m.bias.copy_(torch.randn(m.bias.shape, generator=g))
  return model.eval()
