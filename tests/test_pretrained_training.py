"""Training from a converted PyTorch backbone: what is loaded, when, and what fails."""

import json
import pathlib
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch

from hemnet_jax.tools import convert_resnet
from hemnet_jax.training import checkpoints, loop, state as state_lib
import helpers
import torch_reference

# Evaluated on 16 images, a log line per step.
RUN = {"data.eval_split": "validation[:16]", "data.eval_batch_size": 16, "train.log_every": 1}


def tiny_config(data_dir, **extra):
  return helpers.tiny_config(data_dir, **RUN, **extra)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """A tiny V1c ResNet (stem 4, 4, 8 channels; width 4) from PyTorch, converted by the CLI."""
  d = tmp_path_factory.mktemp("pretrained")
  model = torch_reference.ResNet("v1c", stage_sizes=(1, 1, 1, 1), width=4, stem_width=8)
  torch.save({"state_dict": torch_reference.randomize(model, 7).state_dict()}, d / "tiny_v1c.pth")
  convert_resnet.run(d / "tiny_v1c.pth", d / "out")
  return d / "out"


def converted_variables(directory):
  return ocp.StandardCheckpointer().restore(pathlib.Path(directory) / "variables")


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_training_starts_from_the_converted_backbone(data_dir, converted, tmp_path, monkeypatch):
  pretrained = tmp_path / "pretrained"
  shutil.copytree(converted, pretrained)
  config = tiny_config(data_dir, **{"train.num_steps": 2, "train.checkpoint_every": 1})
  config.model.backbone_checkpoint = str(pretrained)
  first = []  # copies of the states train_and_evaluate starts from (the loop donates them)
  create = state_lib.create_train_state
  monkeypatch.setattr(loop, "create_train_state", lambda *a, **kw: first.append(
      jax.tree.map(lambda x: np.array(x, copy=True), create(*a, **kw))) or first[-1])
  summary = loop.train_and_evaluate(config, tmp_path / "run")
  assert summary["step"] == 2 and np.isfinite(summary["miou"])

  want = converted_variables(converted)
  assert_trees_equal(first[0].params["backbone"], want["params"])
  assert_trees_equal(first[0].batch_stats["backbone"], want["batch_stats"])
  # After the first SGD step the backbone has moved away from the converted weights.
  mngr = ocp.CheckpointManager(tmp_path / "run" / "checkpoints")
  step1 = mngr.restore(1)["params"]["backbone"]["layer1_0"]["conv2"]["kernel"]
  assert not np.allclose(step1, want["params"]["layer1_0"]["conv2"]["kernel"])

  # Resuming takes every weight from the run's own checkpoint: the file may be gone.
  shutil.rmtree(pretrained)
  config.train.num_steps = 3
  assert loop.train_and_evaluate(config, tmp_path / "run", allow_config_change=True)["step"] == 3
  # The state a resumed run builds before restoring is a plain initialisation (same seed):
  # its heads equal those the pretrained run started from, its backbone is random.
  fresh = first[1]
  heads = lambda tree: {k: v for k, v in tree.items() if k != "backbone"}
  assert_trees_equal(heads(first[0].params), heads(fresh.params))
  assert not np.allclose(fresh.params["backbone"]["stem_conv1"]["kernel"],
                         want["params"]["stem_conv1"]["kernel"])


def test_a_backbone_of_another_shape_names_the_config_fields(data_dir, converted):
  config = tiny_config(data_dir, **{"model.stem_width": 16, "model.stage_sizes": (1, 1, 2, 1)})
  config.model.backbone_checkpoint = str(converted)
  with pytest.raises(ValueError) as e:
    state_lib.create_train_state(config, state_lib.build_model(config), jax.random.key(0))
  msg = str(e.value)
  assert "config.model.stem_width=16 but the checkpoint's stem has 8 channels" in msg
  assert "config.model.stage_sizes=(1, 1, 2, 1) but the checkpoint has (1, 1, 1, 1)" in msg
  assert "--config.model.stem_width=8" in msg and "--config.model.stage_sizes=(1,1,1,1)" in msg

  config.model.stem_width, config.model.stage_sizes, config.model.stem = 8, (1, 1, 1, 1), "torchvision"
  with pytest.raises(ValueError, match=r"config.model.stem='torchvision' but the checkpoint has "
                                       r"stem 'deep'"):
    state_lib.create_train_state(config, state_lib.build_model(config), jax.random.key(0))


def test_a_damaged_backbone_lists_every_differing_leaf(data_dir, converted, tmp_path):
  variables = converted_variables(converted)
  del variables["params"]["layer2_0"]["conv1"]
  variables["batch_stats"]["stem_bn1"]["mean"] = np.zeros(5, np.float32)
  meta = json.loads((converted / "resnet.json").read_text())
  checkpoints.save_backbone(tmp_path / "damaged", variables, meta)
  config = tiny_config(data_dir)
  config.model.backbone_checkpoint = str(tmp_path / "damaged")
  with pytest.raises(ValueError) as e:
    state_lib.create_train_state(config, state_lib.build_model(config), jax.random.key(0))
  assert "params/layer2_0/conv1/kernel: missing from the checkpoint" in str(e.value)
  assert "batch_stats/stem_bn1/mean: checkpoint shape (5,), model shape (4,)" in str(e.value)

  config.model.backbone_checkpoint = str(tmp_path / "nothing_here")
  with pytest.raises(FileNotFoundError, match="python -m hemnet_jax.tools.convert_resnet"):
    state_lib.create_train_state(config, state_lib.build_model(config), jax.random.key(0))
