"""convert_emanet against EMANet's released network and mmsegmentation's EMAHead in PyTorch.

Both networks are written here from their sources' layouts (the release's network.py,
mmsegmentation's ema_head.py) at a small depth and width, with random weights, random BN
statistics and random bases, in eval mode and float64. The converted run directory is
then loaded as `--mode eval` loads a run (its config file, checkpoints.restore,
pipeline.eval_transform) and its logits must equal PyTorch's to 1e-4.
"""

import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import ROOT
from ml_collections import config_flags  # noqa: F401  (the config file loader main uses)
from torch import nn

from hemnet_jax.data import pipeline
from hemnet_jax.training import checkpoints, sharding, state as state_lib
from tests import torch_reference

STAGES, WIDTH, STEM, C, K, DECODER, CLASSES, T = (1, 1, 2, 3), 4, 8, 16, 6, 8, 21, 3
TOL = 1e-4
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def conv_bn_relu(cin, cout, kernel):
  """The release's ConvBNReLU and mmcv's ConvModule: parameters named conv.* and bn.*."""
  m = nn.Module()
  m.conv, m.bn = nn.Conv2d(cin, cout, kernel, 1, kernel // 2, bias=False), nn.BatchNorm2d(cout)
  m.forward = lambda x: torch.relu(m.bn(m.conv(x)))
  return m


def random_bases(c, k, generator):
  mu = torch.randn(1, c, k, generator=generator) * math.sqrt(2.0 / k)
  return mu / (1e-6 + mu.norm(dim=1, keepdim=True))


class ReleaseEMAU(nn.Module):
  """network.py's EMAU: conv1 (bias), T no-grad EM steps with l2-normalised bases, conv2 + BN."""

  def __init__(self, c, k, stage_num, generator):
    super().__init__()
    self.stage_num = stage_num
    self.register_buffer("mu", random_bases(c, k, generator))
    self.conv1 = nn.Conv2d(c, c, 1)
    self.conv2 = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))

  def forward(self, x):
    idn = x
    x = self.conv1(x)
    b, c, h, w = x.shape
    x = x.view(b, c, h * w)
    mu = self.mu.repeat(b, 1, 1)
    with torch.no_grad():
      for _ in range(self.stage_num):
        z = F.softmax(torch.bmm(x.permute(0, 2, 1), mu), dim=2)
        z_ = z / (1e-6 + z.sum(dim=1, keepdim=True))
        mu = torch.bmm(x, z_)
        mu = mu / (1e-6 + mu.norm(dim=1, keepdim=True))
    x = F.relu(mu.matmul(z.permute(0, 2, 1)).view(b, c, h, w))
    return F.relu(self.conv2(x) + idn)


class ReleaseEMANet(nn.Module):
  """network.py's EMANet: extractor, fc0, emau, fc1 (+ Dropout2d), fc2, align_corners=True."""

  def __init__(self, seed):
    super().__init__()
    g = torch.Generator().manual_seed(seed + 1)
    r = torch_reference.ResNet("emanet", STAGES, WIDTH, STEM, output_stride=8)
    self.extractor = nn.Sequential(r.conv1, r.bn1, nn.ReLU(), r.maxpool, r.layer1, r.layer2,
                                   r.layer3, r.layer4)
    self.fc0 = conv_bn_relu(32 * WIDTH, C, 3)
    self.emau = ReleaseEMAU(C, K, T, g)
    self.fc1 = nn.Sequential(conv_bn_relu(C, DECODER, 3), nn.Dropout2d(p=0.1))
    self.fc2 = nn.Conv2d(DECODER, CLASSES, 1)

  def forward(self, img):
    x = self.fc2(self.fc1(self.emau(self.fc0(self.extractor(img)))))
    return F.interpolate(x, size=img.shape[-2:], mode="bilinear", align_corners=True)


class MMSegEMAModule(nn.Module):
  def __init__(self, c, k, num_stages, generator):
    super().__init__()
    self.num_stages = num_stages
    self.register_buffer("bases", F.normalize(random_bases(c, k, generator), dim=1, p=2))

  def forward(self, feats):
    b, c, h, w = feats.shape
    feats = feats.view(b, c, h * w)
    bases = self.bases.repeat(b, 1, 1)
    with torch.no_grad():
      for _ in range(self.num_stages):
        attention = F.softmax(torch.einsum("bcn,bck->bnk", feats, bases), dim=2)
        bases = F.normalize(torch.einsum("bcn,bnk->bck", feats, F.normalize(attention, dim=1, p=1)),
                            dim=1, p=2)
    return torch.einsum("bck,bnk->bcn", bases, attention).view(b, c, h, w)


class MMSegEMANet(nn.Module):
  """mmsegmentation's EncoderDecoder: ResNetV1c + EMAHead (concat_input) + FCNHead aux."""

  def __init__(self, seed):
    super().__init__()
    g = torch.Generator().manual_seed(seed + 1)
    self.backbone = torch_reference.ResNet("v1c", STAGES, WIDTH, STEM, output_stride=8,
                                           multi_grid=(1, 1, 1))
    head = self.decode_head = nn.Module()
    head.ema_in_conv = conv_bn_relu(32 * WIDTH, C, 3)
    head.ema_mid_conv = nn.Module()
    head.ema_mid_conv.conv = nn.Conv2d(C, C, 1)  # ConvModule without norm: with bias
    head.ema_module = MMSegEMAModule(C, K, T, g)
    head.ema_out_conv = nn.Module()
    head.ema_out_conv.conv, head.ema_out_conv.bn = nn.Conv2d(C, C, 1, bias=False), nn.BatchNorm2d(C)
    head.bottleneck = conv_bn_relu(C, DECODER, 3)
    head.conv_cat = conv_bn_relu(32 * WIDTH + DECODER, DECODER, 3)
    head.conv_seg = nn.Conv2d(DECODER, CLASSES, 1)
    aux = self.auxiliary_head = nn.Module()
    aux.convs = nn.Sequential(conv_bn_relu(16 * WIDTH, 8, 3))
    aux.conv_seg = nn.Conv2d(8, CLASSES, 1)

  def forward(self, img):
    x = self.backbone(img)[3]
    h = self.decode_head
    feats = h.ema_in_conv(x)
    recon = F.relu(h.ema_module(h.ema_mid_conv.conv(feats)))
    out = F.relu(feats + h.ema_out_conv.bn(h.ema_out_conv.conv(recon)))
    out = h.conv_cat(torch.cat([x, h.bottleneck(out)], dim=1))
    return F.interpolate(h.conv_seg(out), size=img.shape[-2:], mode="bilinear", align_corners=False)


def make(layout, seed=0):
  model = (ReleaseEMANet if layout == "release" else MMSegEMANet)(seed)
  torch_reference.randomize(model, seed)
  with torch.no_grad():  # conv biases too (randomize leaves them at their defaults)
    g = torch.Generator().manual_seed(seed + 2)
    for m in model.modules():
      if isinstance(m, nn.Conv2d) and m.bias is not None:
        m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
  return model.double().eval()


def save(model, layout, path, packaging="plain"):
  state = {k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
  if packaging == "dataparallel":
    state = {f"module.{k}": v for k, v in state.items()}
  if layout == "release":
    torch.save({"net": state, "step": 1234}, path)  # train.py's save_checkpoints
  else:
    torch.save({"meta": {"iter": 80000}, "state_dict": state}, path)  # mmcv's runner
  return path


def convert_cli(checkpoint, out, *flags):
  return subprocess.run([sys.executable, "-m", "hemnet_jax.tools.convert_emanet",
                         f"--checkpoint={checkpoint}", f"--out={out}", *flags],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)


def load_run_config(run_dir):
  """The config --mode eval gets from `--config RUN_DIR/config.py`."""
  import importlib.util
  spec = importlib.util.spec_from_file_location("_run_config", run_dir / "config.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def eval_logits(run_dir, image):
  """Logits as `--mode eval` computes them: evaluate.run's config, model, restore and padding."""
  config = load_run_config(run_dir)
  from hemnet_jax.training import config as config_lib
  config = config_lib.validate(config)
  model = state_lib.build_model(config)
  state, step = checkpoints.restore(run_dir, state_lib.abstract_train_state(config, model),
                                    mesh=sharding.make_mesh())
  example = pipeline.eval_transform(
      {"image": image, "label": np.zeros(image.shape[:2], np.uint8)},
      multiple=config.model.output_stride,
      plus_one=config.data.eval_padding == "stride_plus_one")
  logits = jax.jit(lambda v, x: state.apply_fn(v, x, train=False)[0])(
      state.variables(), example["image"][None])
  return np.asarray(logits[0]), step, config


def torch_logits(model, image, pad_inf):
  """The release's eval input: x / 255, (x - mean) / std, then pad_inf (each side to 8k + 1)."""
  x = torch.tensor(((image / 255.0 - MEAN) / STD).transpose(2, 0, 1)[None])
  if pad_inf:
    h, w = x.shape[-2:]
    x = F.pad(x, (0, (9 - w % 8) % 8, 0, (9 - h % 8) % 8), value=0.0)
  with torch.no_grad():
    return model(x)[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("packaging", ["plain", "dataparallel"])
def test_release_checkpoint_gives_the_release_logits_through_eval(packaging, tmp_path):
  model = make("release")
  checkpoint = save(model, "release", tmp_path / "final.pth", packaging)
  res = convert_cli(checkpoint, tmp_path / "run")
  assert res.returncode == 0, res.stderr[-3000:]
  image = np.random.default_rng(0).integers(0, 256, (37, 46, 3), dtype=np.uint8)
  ours, step, config = eval_logits(tmp_path / "run", image)
  ref = torch_logits(model, image, pad_inf=True)
  assert ref.shape == ours.shape == (41, 49, CLASSES)  # 8k + 1 on each side, as pad_inf
  np.testing.assert_allclose(ours, ref, atol=TOL, rtol=0)
  assert np.abs(ref).max() > 0.1  # the comparison is not between near-zero maps
  assert step == 1234
  m = config.model
  assert (m.aux_weight, m.align_corners, tuple(m.stage_sizes), m.width, m.stem_width,
          m.head_channels, config.hem.num_bases) == (0.0, True, STAGES, WIDTH, STEM, C, K)


def test_mmseg_checkpoint_gives_its_logits_through_eval(tmp_path):
  model = make("mmseg")
  res = convert_cli(save(model, "mmseg", tmp_path / "iter_80000.pth"), tmp_path / "run")
  assert res.returncode == 0, res.stderr[-3000:]
  # A multiple of 8: mmsegmentation's whole-image inference does not pad.
  image = np.random.default_rng(1).integers(0, 256, (40, 48, 3), dtype=np.uint8)
  ours, step, config = eval_logits(tmp_path / "run", image)
  ref = torch_logits(model, image, pad_inf=False)
  np.testing.assert_allclose(ours, ref, atol=TOL, rtol=0)
  assert np.abs(ref).max() > 0.1
  assert step == 80000 and config.model.concat_input and config.model.aux_weight > 0


def test_missing_and_unexpected_keys_are_listed_in_one_error(tmp_path):
  state = make("release").state_dict()
  del state["emau.conv2.1.running_var"], state["fc0.bn.running_mean"]
  state["emau.extra"] = torch.zeros(3)
  state["extractor.4.0.conv9.weight"] = torch.zeros(3)
  torch.save({"net": state, "step": 1}, tmp_path / "bad.pth")
  res = convert_cli(tmp_path / "bad.pth", tmp_path / "run")
  assert res.returncode == 1
  err = res.stderr
  assert "Traceback" not in err
  for key in ("emau.conv2.1.running_var", "fc0.bn.running_mean", "emau.extra",
              "layer1.0.conv9.weight"):
    assert key in err, err
  assert "missing keys" in err and "unexpected keys" in err
  assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_eval_predict_and_training_continue_on_the_converted_run(fake_voc, tmp_path):
  """`--mode eval`, predict and `--mode train` take RUN_DIR as a run of our own."""
  data_dir, manual_dir = fake_voc
  run = tmp_path / "run"
  assert convert_cli(save(make("release"), "release", tmp_path / "final.pth"), run).returncode == 0
  data = [f"--config.data.data_dir={data_dir}", f"--config.data.manual_dir={manual_dir}"]
  main = [sys.executable, "-m", "hemnet_jax.main", f"--config={run}/config.py", f"--workdir={run}"]
  res = subprocess.run([*main, "--mode=eval", *data], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  result = json.loads((run / "eval_ss_T3.json").read_text())
  assert result["step"] == 1234 and len(result["per_class_iou"]) == CLASSES

  image = tmp_path / "a.png"
  from PIL import Image
  Image.fromarray(np.zeros((37, 46, 3), np.uint8)).save(image)
  res = subprocess.run([sys.executable, "-m", "hemnet_jax.tools.predict", f"--workdir={run}",
                        f"--images={image}", f"--out={tmp_path / 'pred'}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  assert np.asarray(Image.open(tmp_path / "pred" / "a_label.png")).shape == (37, 46)

  # Like any run, training it on other settings is a deliberate change (training/drift.py).
  res = subprocess.run([*main, *data, "--config.train.num_steps=1235", "--config.data.crop_size=33",
                        "--config.train.batch_size=2", "--config.data.eval_split=validation[:2]",
                        "--allow_config_change"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  assert "Resumed from" in res.stdout and "at step 1234" in res.stdout
  assert json.loads((run / "results.json").read_text())["step"] == 1235
