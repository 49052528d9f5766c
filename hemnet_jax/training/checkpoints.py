"""Every checkpoint the project reads or writes: a run's, and a converted backbone.

A run's directory holds:
  config.json   the config it was trained with (what `load_config` reads back);
  checkpoints/  orbax CheckpointManager steps of the TrainState, written by `manager`.

A converted-backbone directory (`python -m hemnet_jax.tools.convert_resnet`) holds:
  resnet.json  the structure it was converted from: layout, stem, stem_width, width,
               stage_sizes, depth (and the source file);
  variables/   an orbax PyTree checkpoint {"params": ..., "batch_stats": ...} of
               `hemnet_jax.models.resnet.ResNet`, float32.
"""

import json

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from flax import traverse_util

from hemnet_jax.training import sharding

CONFIG = "config.json"
CHECKPOINTS = "checkpoints"


def load_config(workdir):
  """The config a run in `workdir` was trained with."""
  path = epath.Path(workdir) / CONFIG
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: expected a training run's directory")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def save_config(workdir, config):
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / CONFIG).write_text(config.to_json_best_effort(indent=2))


def manager(workdir, *, keep=None, read_only=False):
  """The CheckpointManager of a run's checkpoints/ (created unless read_only)."""
  directory = epath.Path(workdir).absolute() / CHECKPOINTS
  if read_only and not directory.is_dir():
    raise FileNotFoundError(f"{directory} does not exist: the run saved no checkpoint yet "
                            "(train it first with --mode train)")
  options = (ocp.CheckpointManagerOptions(read_only=True) if read_only else
             ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))
  return ocp.CheckpointManager(directory, options=options)


def save(mngr, step, state):
  """Starts writing `state` as checkpoint `step`; orbax finishes it in the background and
  only then makes the step visible, so a crash mid-write leaves the previous step as it was."""
  mngr.save(step, args=ocp.args.StandardSave(state))


def steps(workdir):
  """The steps saved in a run, oldest first."""
  return list(manager(workdir, read_only=True).all_steps())


def restore(workdir, abstract, *, step=None, mesh=None, fsdp=False, mngr=None):
  """(state, step): checkpoint `step` (None: the latest) of a run, restored into the
  structure `abstract` (state.abstract_train_state) and placed on `mesh` (None: as saved
  onto the default device), whatever mesh wrote it."""
  mngr = mngr or manager(workdir, read_only=True)
  step = mngr.latest_step() if step is None else step
  if step not in mngr.all_steps():
    raise FileNotFoundError(f"no checkpoint {'yet' if step is None else f'of step {step}'} in "
                            f"{mngr.directory} (steps there: {list(mngr.all_steps())})")
  if mesh is not None:
    abstract = sharding.abstract_state(abstract, sharding.state_shardings(abstract, mesh, fsdp=fsdp))
  return mngr.restore(step, args=ocp.args.StandardRestore(abstract)), step


META = "resnet.json"
VARIABLES = "variables"
BACKBONE = "backbone"  # HEMNet's submodule name for the ResNet


def save_backbone(directory, variables, meta):
  directory = epath.Path(directory).absolute()
  directory.mkdir(parents=True, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(directory / VARIABLES, variables)
  checkpointer.wait_until_finished()
  (directory / META).write_text(json.dumps(meta, indent=2) + "\n")


def load_backbone(directory):
  """(variables, meta) of a converted backbone directory."""
  directory = epath.Path(directory).absolute()
  if not (directory / META).exists() or not (directory / VARIABLES).exists():
    raise FileNotFoundError(
        f"config.model.backbone_checkpoint={str(directory)!r} is not a converted backbone (it needs "
        f"{META} and {VARIABLES}/). Convert a PyTorch checkpoint first: python -m "
        f"hemnet_jax.tools.convert_resnet --checkpoint resnet101.pth --out {directory}")
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


def load_backbone_for(config):
  """The variables of config.model.backbone_checkpoint, once its structure fits config.model.

  Checked before the model is built, so that a wrong file or field fails at once.
  """
  variables, meta = load_backbone(config.model.backbone_checkpoint)
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
