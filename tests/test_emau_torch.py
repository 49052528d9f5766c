"""The HEM unit in EMANet mode against a PyTorch EM attention unit (EMAU).

The EMAU below is written from the EMANet paper's description of the unit: 1x1
conv with bias, T iterations of softmax(X mu) over K, normalisation over N by
1e-6 + sum, mu = X^T z and an l2 normalisation by 1e-6 + norm, all without
gradient; then the reconstruction mu z^T, ReLU, 1x1 conv without bias, BN, the
identity and a ReLU; in training, mu0 <- 0.9 mu0 + 0.1 mean_b(mu_T). Flax's BN running variance (biased) is not
compared: PyTorch keeps the unbiased one, a known convention difference.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

from hemnet_jax.models.hem_unit import ATTENTION, BASES, HEMUnit

B, C, H, W, K, T = 2, 16, 5, 7, 8, 3
TOL = 1e-4  # float32 JAX against a float64 PyTorch reference


class EMAU(nn.Module):
  def __init__(self, channels, num_bases, num_iters, momentum=0.9):
    super().__init__()
    mu = torch.randn(1, channels, num_bases, dtype=torch.float64) * math.sqrt(2.0 / num_bases)
    self.register_buffer("mu", mu / (1e-6 + mu.norm(dim=1, keepdim=True)))
    self.num_iters, self.momentum = num_iters, momentum
    self.conv1 = nn.Conv2d(channels, channels, 1)
    self.conv2 = nn.Conv2d(channels, channels, 1, bias=False)
    self.bn = nn.BatchNorm2d(channels, momentum=3e-4)

  def forward(self, x):
    idn = x
    x = self.conv1(x)
    b, c, h, w = x.shape
    x = x.view(b, c, h * w)
    mu = self.mu.repeat(b, 1, 1)  # [B, C, K]
    with torch.no_grad():
      for _ in range(self.num_iters):
        z = torch.softmax(torch.bmm(x.transpose(1, 2), mu), dim=2)  # [B, N, K]
        z_norm = z / (1e-6 + z.sum(dim=1, keepdim=True))
        mu = torch.bmm(x, z_norm)
        mu = mu / (1e-6 + mu.norm(dim=1, keepdim=True))
    y = torch.bmm(mu, z.transpose(1, 2)).view(b, c, h, w)
    y = self.bn(self.conv2(torch.relu(y)))
    if self.training:
      with torch.no_grad():
        self.mu.mul_(self.momentum).add_((1 - self.momentum) * mu.mean(dim=0, keepdim=True))
    self.last_z = z
    return torch.relu(y + idn)


def make_pair(seed):
  torch.manual_seed(seed)
  ref = EMAU(C, K, T).double()
  with torch.no_grad():  # random BN affine and running statistics, not the defaults
    ref.bn.weight.uniform_(0.5, 1.5)
    ref.bn.bias.normal_(0, 0.1)
    ref.bn.running_mean.normal_(0, 0.1)
    ref.bn.running_var.uniform_(0.5, 2.0)
  unit = HEMUnit(num_bases=K, num_iters=T, eta=1.0, temperature=1.0, l2_normalize=True,
                 backprop=False, kernel="dot", mu0_momentum=0.9, renorm_mu0=False,
                 bn_momentum=0.9997)
  f32 = lambda t: jnp.asarray(t.detach().numpy(), jnp.float32)
  variables = {
      "params": {
          "conv_in": {"kernel": f32(ref.conv1.weight[:, :, 0, 0].T)[None, None],
                      "bias": f32(ref.conv1.bias)},
          "conv_out": {"kernel": f32(ref.conv2.weight[:, :, 0, 0].T)[None, None]},
          "bn_out": {"scale": f32(ref.bn.weight), "bias": f32(ref.bn.bias)},
      },
      "batch_stats": {"bn_out": {"mean": f32(ref.bn.running_mean), "var": f32(ref.bn.running_var)}},
      BASES: {"mu0": f32(ref.mu[0].T)},
  }
  # The structure must be exactly the unit's own, or apply would silently ignore extras.
  own = unit.init(jax.random.key(0), jnp.zeros((1, H, W, C)))
  assert jax.tree.structure({k: own[k] for k in variables}) == jax.tree.structure(variables)
  x = torch.randn(B, C, H, W, dtype=torch.float64)
  return ref, unit, variables, x


def nhwc(t):
  return t.detach().numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("train", [False, True])
def test_emanet_mode_matches_the_pytorch_emau(train):
  ref, unit, variables, x = make_pair(seed=int(train))
  mu0_before = ref.mu.clone()
  ref.train(train)
  y_ref = ref(x)
  y, updates = unit.apply(variables, jnp.asarray(nhwc(x), jnp.float32), train=train,
                          mutable=["batch_stats", BASES, ATTENTION])

  np.testing.assert_allclose(y, nhwc(y_ref), atol=TOL, rtol=0)
  # The sown attention maps are the last iteration's z.
  np.testing.assert_allclose(updates[ATTENTION]["gamma"][0].reshape(B, H * W, K),
                             ref.last_z.numpy(), atol=TOL, rtol=0)
  # mu0's moving average (train) or no change (eval), in both.
  np.testing.assert_allclose(updates[BASES]["mu0"], ref.mu[0].numpy().T, atol=TOL, rtol=0)
  moved = (ref.mu - mu0_before).abs().max().item()
  assert moved > 100 * TOL if train else moved == 0.0
  np.testing.assert_allclose(updates["batch_stats"]["bn_out"]["mean"],
                             ref.bn.running_mean.numpy(), atol=TOL, rtol=0)


def test_emanet_mode_gradients_match_and_skip_the_em_path():
  ref, unit, variables, x = make_pair(seed=2)
  g_out = torch.randn(B, C, H, W, dtype=torch.float64)
  ref.train(True)
  (ref(x) * g_out).sum().backward()

  def loss(params):
    y, _ = unit.apply({**variables, "params": params}, jnp.asarray(nhwc(x), jnp.float32),
                      train=True, mutable=["batch_stats", BASES])
    return jnp.sum(y * jnp.asarray(nhwc(g_out), jnp.float32))

  grads = jax.grad(loss)(variables["params"])
  # The iterations run without gradient, so the first 1x1 conv learns nothing (EMANet).
  assert ref.conv1.weight.grad is None and ref.conv1.bias.grad is None
  assert not np.any(grads["conv_in"]["kernel"]) and not np.any(grads["conv_in"]["bias"])
  # Sums over B * H * W pixels through a batch-statistics BN: float32 error relative to the scale.
  for got, want in ((grads["conv_out"]["kernel"][0, 0], ref.conv2.weight.grad[:, :, 0, 0].T),
                    (grads["bn_out"]["scale"], ref.bn.weight.grad),
                    (grads["bn_out"]["bias"], ref.bn.bias.grad)):
    want = want.numpy()
    np.testing.assert_allclose(got, want, atol=TOL * np.abs(want).max(), rtol=0)
