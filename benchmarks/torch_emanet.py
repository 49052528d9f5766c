r"""EMANet / HEMNet in PyTorch (NCHW): the other side of benchmarks/train_step.py.

  python -m benchmarks.torch_emanet [--crop 129] [--batch 2] [--modes emanet,hemnet] \
      [--variants torch_eager,torch_compile] [--steps 3]

configs/voc.py's network with the auxiliary head off, written the way the EMANet release
(XiaLiPKU/EMANet, network.py) writes its network and named as the release's state dict
(extractor.*, fc0, emau, fc1, fc2), so that hemnet_jax.convert.emanet reads its weights
into our HEMNet (tests/test_benchmarks.py compares the two networks' logits and gradients):
  deep stem (3x3 s2 3->64, 3x3 64->64, 3x3 64->128, each + BN + ReLU), max pool 3 s2,
  ResNet-101 bottlenecks (3, 4, 23, 3), stride in the 3x3 (V1b), output stride 8: stage 3
  dilated by 2, stage 4 by 4 with multi-grid (1, 2, 4), the first block of a dilated stage
  at half the dilation (stage 4: 2, 8, 16), as hemnet_jax/models/resnet.py;
  3x3 conv 2048->512 + BN + ReLU, the EM unit, 3x3 conv 512->256 + BN + ReLU, Dropout2d 0.1,
  1x1 classifier (with bias), bilinear upsampling to the input (half-pixel centres, as
  config.model.align_corners=False), cross-entropy ignoring label 255.
The EM unit (1x1 conv with bias, T = 3 iterations, R-step, ReLU, 1x1 conv + BN, residual,
ReLU; mu0 <- 0.9 mu0 + 0.1 mean_b(mu_T) in training) in the two modes of
hemnet_jax/training/config.py's variants:
  emanet  eta 1, iterations under no_grad, l2-normalised bases, temperature 1 (the release);
  hemnet  eta 0.5, gradient through the iterations, no normalisation, temperature sqrt(C).
The optimizer is hemnet_jax/training/state.py's: SGD, momentum 0.9, coupled L2 weight decay
1e-4 on conv weights only (the release too leaves BN and biases undecayed), lr 0.009 held
constant (the poly schedule costs nothing either side).

This module imports torch: a caller that caps the CPU ISA (ATEN_CPU_CAPABILITY,
ONEDNN_MAX_CPU_ISA) sets them before importing it.
"""

import argparse
import math
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_LABEL = 255
RESNET101 = (3, 4, 23, 3)
# The EM unit of training/config.py's variants (temperature None: sqrt(C)).
MODES = {
    "emanet": dict(eta=1.0, backprop=False, l2_normalize=True, temperature=1.0),
    "hemnet": dict(eta=0.5, backprop=True, l2_normalize=False, temperature=None),
}


def conv(cin, cout, kernel, stride=1, dilation=1, bias=False):
  """Symmetric padding that keeps the size at stride 1, as our ResNet's `conv`."""
  pad = dilation * (kernel - 1) // 2
  return nn.Conv2d(cin, cout, kernel, stride, pad, dilation, bias=bias)


def conv_bn_relu(cin, cout, bn_momentum):
  """The release's ConvBNReLU (3x3): parameters named conv.* and bn.*."""
  m = nn.Sequential()
  m.add_module("conv", conv(cin, cout, 3))
  m.add_module("bn", nn.BatchNorm2d(cout, momentum=bn_momentum))
  m.add_module("relu", nn.ReLU(inplace=True))
  return m


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (stride, dilation) -> 1x1, expansion 4, projection when the shape changes."""

  def __init__(self, cin, planes, stride, dilation, bn_momentum):
    super().__init__()
    bn = lambda c: nn.BatchNorm2d(c, momentum=bn_momentum)
    self.conv1, self.bn1 = conv(cin, planes, 1), bn(planes)
    self.conv2, self.bn2 = conv(planes, planes, 3, stride, dilation), bn(planes)
    self.conv3, self.bn3 = conv(planes, 4 * planes, 1), bn(4 * planes)
    self.downsample = None
    if stride != 1 or cin != 4 * planes:
      self.downsample = nn.Sequential(conv(cin, 4 * planes, 1, stride), bn(4 * planes))

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)), inplace=True)
    out = F.relu(self.bn2(self.conv2(out)), inplace=True)
    out = self.bn3(self.conv3(out))
    out += x if self.downsample is None else self.downsample(x)
    return F.relu(out, inplace=True)


def stage_layout(output_stride, multi_grid):
  """((stride, dilation) of stages 1-4, stage 4's grid): models/resnet.py's stage_layout."""
  if output_stride == 8:
    return ((1, 1), (2, 1), (1, 2), (1, 4)), tuple(multi_grid)
  if output_stride == 16:
    return ((1, 1), (2, 1), (2, 1), (1, 2)), tuple(multi_grid)
  raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")


def block_dilations(num_blocks, dilation, grid):
  """The first block at half a dilated stage's dilation, block i at dilation * grid[i]."""
  grid = tuple(grid) + (1,) * max(0, num_blocks - len(grid))
  return (dilation // 2 if dilation > 1 else 1,) + tuple(dilation * g for g in grid[1:num_blocks])


def extractor(stage_sizes, width, stem_width, output_stride, multi_grid, bn_momentum):
  """The release's `extractor`: Sequential(deep stem, bn1, ReLU, max pool, layer1..4)."""
  bn = lambda c: nn.BatchNorm2d(c, momentum=bn_momentum)
  w = stem_width
  stem = nn.Sequential(conv(3, w // 2, 3, 2), bn(w // 2), nn.ReLU(inplace=True),
                       conv(w // 2, w // 2, 3), bn(w // 2), nn.ReLU(inplace=True),
                       conv(w // 2, w, 3))
  layers, cin = [stem, bn(w), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)], w
  strides_dilations, grid = stage_layout(output_stride, multi_grid)
  for i, (num_blocks, (stride, dilation)) in enumerate(zip(stage_sizes, strides_dilations)):
    planes = width * 2**i
    dilations = block_dilations(num_blocks, dilation, grid if i == 3 else ())
    blocks = []
    for j in range(num_blocks):
      blocks.append(Bottleneck(cin, planes, stride if j == 0 else 1, dilations[j], bn_momentum))
      cin = 4 * planes
    layers.append(nn.Sequential(*blocks))
  return nn.Sequential(*layers), cin


class EMAU(nn.Module):
  """The EM unit: conv1 (bias), T iterations, R-step, ReLU, conv2 + BN, residual, ReLU.

  An iteration: z = softmax_k(x^T mu / temperature), z normalised over N (1e-6 + sum),
  mu <- (1 - eta) mu + eta x z (Eq. 13; eta = 1 is the release's M-step), then, with
  l2_normalize, mu / (1e-6 + ||mu||) over C. backprop=False runs them under no_grad.
  """

  def __init__(self, c, k, num_iters, eta, temperature, backprop, l2_normalize,
               mu0_momentum, bn_momentum):
    super().__init__()
    self.num_iters, self.eta, self.temperature = num_iters, eta, temperature
    self.backprop, self.l2_normalize, self.mu0_momentum = backprop, l2_normalize, mu0_momentum
    mu = torch.randn(1, c, k) * math.sqrt(2.0 / k)
    self.register_buffer("mu", mu / (1e-6 + mu.norm(dim=1, keepdim=True)))  # mu0 [1, C, K]
    self.conv1 = nn.Conv2d(c, c, 1)
    self.conv2 = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c, momentum=bn_momentum))

  def iterate(self, x, mu):
    """(mu_T [B, C, K], z_T [B, N, K]) from x [B, C, N] and mu0 [B, C, K]."""
    for _ in range(self.num_iters):
      logits = torch.bmm(x.transpose(1, 2), mu)
      z = F.softmax(logits if self.temperature == 1.0 else logits / self.temperature, dim=2)
      m = torch.bmm(x, z / (1e-6 + z.sum(dim=1, keepdim=True)))
      mu = m if self.eta == 1.0 else (1.0 - self.eta) * mu + self.eta * m
      if self.l2_normalize:
        mu = mu / (1e-6 + mu.norm(dim=1, keepdim=True))
    return mu, z

  def forward(self, x):
    idn = x
    x = self.conv1(x)
    b, c, h, w = x.shape
    x = x.view(b, c, h * w)
    mu = self.mu.repeat(b, 1, 1)  # a copy: the buffer changes in place below
    if self.backprop:
      mu, z = self.iterate(x, mu)
    else:
      with torch.no_grad():
        mu, z = self.iterate(x, mu)
    if self.training:  # the release does this in train.py, from the mu_T it returns
      with torch.no_grad():
        self.mu.mul_(self.mu0_momentum).add_((1.0 - self.mu0_momentum) * mu.mean(0, keepdim=True))
    x = torch.bmm(mu, z.transpose(1, 2)).view(b, c, h, w)  # Eq. 10
    x = self.conv2(F.relu(x, inplace=True))
    return F.relu(x + idn, inplace=True)


class EMANet(nn.Module):
  """Returns logits [B, num_classes, H, W] at the input size.

  mode "emanet" or "hemnet" sets the EM unit (MODES); eta and temperature (None: the
  mode's, and sqrt(C) for hemnet) override it. The other arguments are config.model's
  and config.hem's fields under the same names (bn_momentum in PyTorch's convention).
  """

  def __init__(self, num_classes=21, mode="hemnet", eta=None, temperature=None,
               stage_sizes=RESNET101, width=64, stem_width=128, output_stride=8,
               multi_grid=(1, 2, 4), head_channels=512, decoder_channels=256, num_bases=64,
               num_iters=3, mu0_momentum=0.9, dropout=0.1, align_corners=False, bn_momentum=3e-4):
    super().__init__()
    if mode not in MODES:
      raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
    unit = dict(MODES[mode])
    unit["eta"] = unit["eta"] if eta is None else eta
    temperature = unit["temperature"] if temperature is None else temperature
    unit["temperature"] = math.sqrt(head_channels) if temperature is None else temperature
    self.align_corners = align_corners
    self.extractor, cin = extractor(stage_sizes, width, stem_width, output_stride, multi_grid,
                                    bn_momentum)
    self.fc0 = conv_bn_relu(cin, head_channels, bn_momentum)
    self.emau = EMAU(head_channels, num_bases, num_iters, mu0_momentum=mu0_momentum,
                     bn_momentum=bn_momentum, **unit)
    self.fc1 = nn.Sequential(conv_bn_relu(head_channels, decoder_channels, bn_momentum),
                             nn.Dropout2d(p=dropout))
    self.fc2 = nn.Conv2d(decoder_channels, num_classes, 1)
    for m in self.modules():  # Kaiming normal, fan out: the release's and our conv init
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

  def forward(self, images):
    x = self.fc2(self.fc1(self.emau(self.fc0(self.extractor(images)))))
    return F.interpolate(x, size=images.shape[-2:], mode="bilinear",
                         align_corners=self.align_corners)


class WithLoss(nn.Module):
  """The network and its loss in one module, so that torch.compile sees both."""

  def __init__(self, net):
    super().__init__()
    self.net = net

  def forward(self, images, labels):
    return F.cross_entropy(self.net(images), labels, ignore_index=IGNORE_LABEL)


def count_params(net):
  """Trainable parameters (mu0 and BN statistics are buffers, not counted)."""
  return sum(p.numel() for p in net.parameters())


def make_optimizer(net, lr=0.009, momentum=0.9, weight_decay=1e-4):
  """SGD with weight decay on conv weights only, as hemnet_jax/training/state.py."""
  decayed = [m.weight for m in net.modules() if isinstance(m, nn.Conv2d)]
  ids = {id(p) for p in decayed}
  others = [p for p in net.parameters() if id(p) not in ids]
  return torch.optim.SGD([{"params": decayed, "weight_decay": weight_decay},
                          {"params": others, "weight_decay": 0.0}], lr=lr, momentum=momentum)


def make_step(net, images, labels, compile=False, **optimizer):  # pylint: disable=redefined-builtin
  """step(): one SGD step of `net` (zero_grad, forward, loss, backward, step) -> the loss."""
  loss_fn = WithLoss(net.train())
  loss_fn = torch.compile(loss_fn) if compile else loss_fn
  opt = make_optimizer(net, **optimizer)

  def step():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(images, labels)
    loss.backward()
    opt.step()
    return loss.detach()
  return step


def random_batch(crop, batch, num_classes, seed=0):
  """images [B, 3, crop, crop] ~ N(0, 1), labels int64 [B, crop, crop] in [0, num_classes)."""
  g = torch.Generator().manual_seed(seed)
  return (torch.randn(batch, 3, crop, crop, generator=g),
          torch.randint(0, num_classes, (batch, crop, crop), generator=g))


def torch_train_steps(crop, batch, num_classes=21, mode="hemnet", eta=None, *,
                      variants=("torch_eager", "torch_compile"), warmup=3, seed=0,
                      lr=0.009, momentum=0.9, weight_decay=1e-4, num_threads=None, **network):
  """({variant: step}, compile_s): warm one-step callables, each on its own copy of the network.

  torch_eager runs the module as it is, torch_compile under torch.compile (default mode).
  Every variant starts from the same weights and is warmed with `warmup` steps; compile_s is
  torch_compile's warm-up (compilation + `warmup` steps), None without that variant. A step
  returns its loss, already computed (CPU ops are synchronous). num_threads: PyTorch's intra-op
  threads (None: every CPU, as XLA). `network`: EMANet's other arguments (depth, widths, ...).
  """
  torch.set_num_threads(num_threads or os.cpu_count())
  images, labels = random_batch(crop, batch, num_classes, seed)
  fns, compile_s = {}, None
  for name in variants:
    if name not in ("torch_eager", "torch_compile"):
      raise ValueError(f"variants: 'torch_eager' or 'torch_compile', got {name!r}")
    torch.manual_seed(seed)
    net = EMANet(num_classes, mode, eta, **network)
    step = make_step(net, images, labels, compile=name == "torch_compile", lr=lr,
                     momentum=momentum, weight_decay=weight_decay)
    t0 = time.perf_counter()
    for _ in range(warmup):
      step()
    if name == "torch_compile":
      compile_s = time.perf_counter() - t0
    fns[name] = step
  return fns, compile_s


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--crop", type=int, default=129)
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--num_classes", type=int, default=21)
  parser.add_argument("--modes", default="emanet,hemnet")
  parser.add_argument("--variants", default="torch_eager")
  parser.add_argument("--steps", type=int, default=3, help="timed steps after the warm-up")
  args = parser.parse_args()
  print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{torch.backends.cpu.get_cpu_capability()}; crop {args.crop}, batch {args.batch}, float32")
  print(f"parameters: {count_params(EMANet(args.num_classes)):,}")
  for mode in args.modes.split(","):
    fns, compile_s = torch_train_steps(args.crop, args.batch, args.num_classes, mode,
                                       variants=tuple(args.variants.split(",")))
    for name, step in fns.items():
      times = []
      for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
      extra = f", compile + 3 steps {compile_s:.1f} s" if name == "torch_compile" else ""
      print(f"{mode} {name}: {statistics.median(times) * 1e3:.0f} ms/step (median of "
            f"{args.steps}), loss {loss.item():.3f}{extra}")


if __name__ == "__main__":
  main()
