"""The PyTorch -> Flax ResNet converter, checked against PyTorch itself."""

import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import safetensors.torch
import torch

from hemnet_jax.convert import resnet as convert_resnet, torch_file
from hemnet_jax.models.resnet import ResNet
import torch_reference

torch.set_num_threads(2)
TOL = 1e-4  # max abs difference, float32 JAX against a float64 PyTorch reference
# (layout, stem width, how the checkpoint is packaged as published)
CASES = [
    ("torchvision", 64, "plain .pth"),  # torchvision's resnet101-*.pth
    ("emanet", 128, "DataParallel .pth"),  # EMANet's release
    ("v1c", 64, "mmsegmentation .pth"),  # open-mmlab's resnet101_v1c
    ("v1c_convmodule", 64, "mmpretrain .safetensors"),
]
TINY = dict(stage_sizes=(1, 1, 1, 1), width=4, stem_width=8)


def save_as_published(model, packaging, path):
  """The state dict wrapped and prefixed as each family publishes it."""
  sd = model.state_dict()
  if packaging == "plain .pth":
    torch.save(sd, path)
  elif packaging == "DataParallel .pth":
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
  elif packaging == "mmsegmentation .pth":
    sd = {f"backbone.{k}": v for k, v in sd.items()}
    sd["decode_head.conv_seg.weight"] = torch.zeros(21, 512, 1, 1)
    torch.save({"meta": {"epoch": 12}, "state_dict": sd}, path)
  elif packaging == "mmpretrain .safetensors":
    sd = {f"backbone.{k}": v.contiguous() for k, v in sd.items()}
    sd["head.fc.weight"], sd["head.fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    safetensors.torch.save_file(sd, path)
  return path


@pytest.mark.parametrize("layout,stem_width,packaging", CASES)
def test_resnet101_matches_pytorch_at_os8_and_os16(layout, stem_width, packaging, tmp_path,
                                                  optimised_xla):
  seed = [c[0] for c in CASES].index(layout)
  torch_model = torch_reference.randomize(torch_reference.ResNet(layout, stem_width=stem_width), seed)
  suffix = ".safetensors" if "safetensors" in packaging else ".pth"
  path = save_as_published(torch_model, packaging, tmp_path / f"resnet101{suffix}")

  variables, meta = convert_resnet.convert(torch_file.load(path))
  expected_stem = "torchvision" if layout == "torchvision" else "deep"
  assert (meta["layout"], meta["stem"], meta["stem_width"], meta["width"], meta["depth"]) == (
      layout, expected_stem, stem_width, 64, 101)
  assert meta["stage_sizes"] == [3, 4, 23, 3]

  # 65 x 57: odd and non-square, so a padding or an H/W mix-up cannot hide.
  x = np.random.default_rng(seed).normal(size=(1, 3, 65, 57))
  # The layouts differ in their names and stems; the output stride is the model's own, not the
  # converter's: both strides on EMANet's layout, OS 8 on the others (each is a ResNet-101 run).
  for output_stride in (8, 16) if layout == "emanet" else (8,):
    reference = torch_reference.ResNet(layout, stem_width=stem_width, output_stride=output_stride)
    reference.load_state_dict(torch_model.state_dict())
    with torch.no_grad():
      want = [f.numpy() for f in reference.double().eval()(torch.from_numpy(x))]
    model = ResNet(stage_sizes=(3, 4, 23, 3), width=64, stem=expected_stem, stem_width=stem_width,
                   output_stride=output_stride, multi_grid=(1, 2, 4))
    got = model.apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1), jnp.float32))
    for stage, (g, w) in enumerate(zip(got, want), start=1):
      g = np.asarray(g).transpose(0, 3, 1, 2)
      assert g.shape == w.shape, (output_stride, stage)
      diff = np.abs(g - w).max()
      assert diff <= TOL, f"OS {output_stride} stage {stage}: max abs diff {diff}"
    assert want[3].shape[2:] == {8: (9, 8), 16: (5, 4)}[output_stride]


def tiny_state_dict(layout="v1c", seed=0):
  model = torch_reference.ResNet(layout, **TINY)
  return {k: v.numpy() for k, v in torch_reference.randomize(model, seed).state_dict().items()}


def test_missing_unexpected_and_mismatched_keys_are_all_listed():
  sd = tiny_state_dict()
  del sd["layer2.0.bn1.running_var"], sd["stem.4.weight"]
  sd["layer1.0.se.fc.weight"] = np.zeros((4, 4), np.float32)
  sd["layer4.0.extra"] = np.zeros(3, np.float32)
  sd["layer3.0.conv2.weight"] = np.zeros((16, 16, 5, 5), np.float32)
  with pytest.raises(convert_resnet.ConversionError) as e:
    convert_resnet.convert(sd)
  msg = str(e.value)
  assert "missing keys (2)" in msg and "layer2.0.bn1.running_var" in msg and "stem.4.weight" in msg
  assert "unexpected keys (2)" in msg and "layer1.0.se.fc.weight" in msg and "layer4.0.extra" in msg
  assert "shape mismatches (1)" in msg and "layer3.0.conv2.weight: shape (16, 16, 5, 5)" in msg


def test_unknown_stem_layout_names_the_keys_it_saw():
  sd = {k.replace("stem.", "deepstem."): v for k, v in tiny_state_dict().items()}
  with pytest.raises(convert_resnet.ConversionError, match=r"deepstem\.0\.weight.*stem\.0\.weight"):
    convert_resnet.convert(sd)


def test_classifier_and_bn_counters_are_ignored_not_converted():
  sd = tiny_state_dict("torchvision")
  assert "fc.weight" in sd and "bn1.num_batches_tracked" in sd
  variables, meta = convert_resnet.convert(sd)
  assert meta["ignored_keys"] == 2 + sum(k.endswith("num_batches_tracked") for k in sd)
  np.testing.assert_array_equal(variables["params"]["stem_conv1"]["kernel"],
                                sd["conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables["batch_stats"]["layer4_0"]["downsample_bn"]["var"],
                                sd["layer4.0.downsample.1.running_var"])
  np.testing.assert_array_equal(variables["params"]["layer4_0"]["bn3"]["scale"],
                                sd["layer4.0.bn3.weight"])


def test_safetensors_reader_matches_torch_for_each_dtype(tmp_path):
  tensors = {"a": torch.randn(3, 4), "b": torch.randn(2, 5).to(torch.bfloat16),
             "c": torch.randn(7).half(), "d": torch.arange(6, dtype=torch.int64).reshape(2, 3),
             "e": torch.tensor(2.5, dtype=torch.float64)}
  safetensors.torch.save_file(tensors, tmp_path / "t.safetensors", metadata={"format": "pt"})
  read = torch_file.load(tmp_path / "t.safetensors")
  assert set(read) == set(tensors)
  for k, t in tensors.items():
    assert read[k].shape == tuple(t.shape)
    np.testing.assert_array_equal(np.asarray(read[k], np.float64), t.double().numpy())


def run_cli(*args):
  return subprocess.run([sys.executable, "-m", "hemnet_jax.tools.convert_resnet", *args],
                        capture_output=True, text=True, timeout=300)


def test_cli_writes_an_orbax_checkpoint_and_the_layout(tmp_path):
  model = torch_reference.randomize(torch_reference.ResNet("emanet", **TINY), 3)
  torch.save(model.state_dict(), tmp_path / "emanet.pth")
  res = run_cli("--checkpoint", str(tmp_path / "emanet.pth"), "--out", str(tmp_path / "out"))
  assert res.returncode == 0, res.stderr
  assert "--config.model.stem_width=8" in res.stdout

  meta = json.loads((tmp_path / "out" / "resnet.json").read_text())
  assert {k: meta[k] for k in ("layout", "stem", "stem_width", "depth", "stage_sizes")} == {
      "layout": "emanet", "stem": "deep", "stem_width": 8, "depth": 14, "stage_sizes": [1, 1, 1, 1]}
  restored = ocp.StandardCheckpointer().restore(tmp_path / "out" / "variables")
  assert set(restored) == {"params", "batch_stats"}
  sd = model.state_dict()
  np.testing.assert_array_equal(restored["params"]["stem_bn3"]["bias"], sd["bn1.bias"].numpy())
  np.testing.assert_array_equal(restored["batch_stats"]["stem_bn1"]["mean"],
                                sd["conv1.1.running_mean"].numpy())

  again = run_cli("--checkpoint", str(tmp_path / "emanet.pth"), "--out", str(tmp_path / "out"))
  assert again.returncode != 0 and "not empty" in again.stderr

  sd = {k: v for k, v in sd.items() if k != "layer3.0.conv1.weight"}
  torch.save(sd, tmp_path / "broken.pth")
  bad = run_cli("--checkpoint", str(tmp_path / "broken.pth"), "--out", str(tmp_path / "out2"))
  assert bad.returncode == 1 and "broken.pth" in bad.stderr and "layer3.0.conv1.weight" in bad.stderr
  assert not (tmp_path / "out2").exists()
