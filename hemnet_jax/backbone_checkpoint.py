"""A converted ImageNet backbone on disk, and loading it into a HEMNet's variables.

A directory written by `hemnet_jax.convert_resnet` holds:
  resnet.json  the structure it was converted from: layout, stem, stem_width, width,
               stage_sizes, depth (and the source file);
  variables/   an orbax PyTree checkpoint {"params": ..., "batch_stats": ...} of
               `hemnet_jax.models.resnet.ResNet`, float32.
"""

import json

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath
from flax import traverse_util

META = "resnet.json"
VARIABLES = "variables"
BACKBONE = "backbone"  # HEMNet's submodule name for the ResNet


def save(directory, variables, meta):
  directory = epath.Path(directory).absolute()
  directory.mkdir(parents=True, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(directory / VARIABLES, variables)
  checkpointer.wait_until_finished()
  (directory / META).write_text(json.dumps(meta, indent=2) + "\n")


def load(directory):
  """(variables, meta) of a converted backbone directory."""
  directory = epath.Path(directory).absolute()
  if not (directory / META).exists() or not (directory / VARIABLES).exists():
    raise FileNotFoundError(
        f"config.model.backbone_checkpoint={str(directory)!r} is not a converted backbone (it needs "
        f"{META} and {VARIABLES}/). Convert a PyTorch checkpoint first: python -m "
        f"hemnet_jax.convert_resnet --checkpoint resnet101.pth --out {directory}")
  meta = json.loads((directory / META).read_text())
  variables = ocp.StandardCheckpointer().restore(directory / VARIABLES)
  return variables, meta


def model_overrides(meta):
  """The config.model fields a model needs to take these weights, as flag overrides."""
  flags = [f"--config.model.stem={meta['stem']}", f"--config.model.width={meta['width']}",
           f"--config.model.stage_sizes={tuple(meta['stage_sizes'])}".replace(" ", "")]
  if meta["stem"] == "deep":
    flags.insert(1, f"--config.model.stem_width={meta['stem_width']}")
  return flags


def _check_config(meta, model_config, source):
  m = model_config
  wrong = []
  if m.stem != meta["stem"]:
    wrong.append(f"config.model.stem={m.stem!r} but the checkpoint has stem {meta['stem']!r}")
  if meta["stem"] == "deep" and m.stem == "deep" and m.stem_width != meta["stem_width"]:
    wrong.append(f"config.model.stem_width={m.stem_width} but the checkpoint's stem has "
                 f"{meta['stem_width']} channels")
  if m.width != meta["width"]:
    wrong.append(f"config.model.width={m.width} but the checkpoint has {meta['width']}")
  if tuple(m.stage_sizes) != tuple(meta["stage_sizes"]):
    wrong.append(f"config.model.stage_sizes={tuple(m.stage_sizes)} but the checkpoint has "
                 f"{tuple(meta['stage_sizes'])} (ResNet-{meta['depth']})")
  if wrong:
    raise ValueError(
        f"config.model.backbone_checkpoint={source!r} does not fit the configured model:\n  "
        + "\n  ".join(wrong) + "\nSet " + " ".join(model_overrides(meta)))


def _structure_diff(loaded, expected):
  """'collection/path: problem' for every leaf that is missing, extra or of another shape."""
  problems = []
  for collection in ("params", "batch_stats"):
    got = traverse_util.flatten_dict(loaded.get(collection, {}), sep="/")
    want = traverse_util.flatten_dict(expected[collection], sep="/")
    problems += [f"{collection}/{k}: missing from the checkpoint" for k in sorted(want.keys() - got.keys())]
    problems += [f"{collection}/{k}: not in the model" for k in sorted(got.keys() - want.keys())]
    problems += [f"{collection}/{k}: checkpoint shape {tuple(got[k].shape)}, model shape "
                 f"{tuple(want[k].shape)}" for k in sorted(got.keys() & want.keys())
                 if tuple(got[k].shape) != tuple(want[k].shape)]
  return problems


def load_for(config):
  """The variables of config.model.backbone_checkpoint, once its structure fits config.model.

  Checked before the model is built, so that a wrong file or field fails at once.
  """
  variables, meta = load(config.model.backbone_checkpoint)
  _check_config(meta, config.model, config.model.backbone_checkpoint)
  return variables


def replace_backbone(params, batch_stats, variables, source):
  """params and batch_stats with their "backbone" subtrees replaced by `variables`."""
  expected = {"params": params[BACKBONE], "batch_stats": batch_stats[BACKBONE]}
  problems = _structure_diff(variables, expected)
  if problems:
    raise ValueError(
        f"config.model.backbone_checkpoint={source!r} does not match the configured backbone "
        f"(config.model.stem, stem_width, width, stage_sizes):\n  " + "\n  ".join(problems))
  cast = lambda new, old: jnp.asarray(new, old.dtype)
  params = {**params, BACKBONE: jax.tree.map(cast, variables["params"], params[BACKBONE])}
  batch_stats = {**batch_stats,
                 BACKBONE: jax.tree.map(cast, variables["batch_stats"], batch_stats[BACKBONE])}
  return params, batch_stats
