"""Every checkpoint the project reads or writes: a run's, and a converted backbone.

A run's directory holds:
  config.json   the config it was trained with (what `load_config` reads back);
  checkpoints/  orbax CheckpointManager steps of the TrainState, written by `manager`;
  damaged_checkpoints/  steps that could not be restored, moved aside by `resume` (never deleted);
  config_changes.jsonl  changes made with --allow_config_change (training/drift.py).

A converted-backbone directory (`python -m hemnet_jax.tools.convert_resnet`) holds:
  resnet.json  the structure it was converted from: layout, stem, stem_width, width,
               stage_sizes, depth (and the source file);
  variables/   an orbax PyTree checkpoint {"params": ..., "batch_stats": ...} of
               `hemnet_jax.models.resnet.ResNet`, float32.
"""

import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from flax import traverse_util

from hemnet_jax.training import sharding

CONFIG = "config.json"
CHECKPOINTS = "checkpoints"
DAMAGED = "damaged_checkpoints"
# Tests only: seconds each checkpoint write lingers before it commits, so that a test can
# kill the run in the middle of a write.
_SAVE_DELAY_ENV = "HEMNET_TEST_SAVE_DELAY_S"


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be written, or no checkpoint that can be read: one line for the user."""
  user_error = True  # cli.run prints it as one `error:` line


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
  if float(os.environ.get(_SAVE_DELAY_ENV, 0)):
    _slow_writes(float(os.environ[_SAVE_DELAY_ENV]))
  return ocp.CheckpointManager(directory, options=options)


def save(mngr, step, state):
  """Starts writing `state` as checkpoint `step`; orbax finishes it in the background and
  only then makes the step visible, so a crash mid-write leaves the previous step as it was.
  A failed write (a full disk) surfaces here or in `wait` as a CheckpointError."""
  try:
    mngr.save(step, args=ocp.args.StandardSave(state))
  except Exception as e:  # the previous write's error, raised by orbax before this one starts
    raise _write_error(mngr, e) from e


def wait(mngr):
  """Blocks until the checkpoint being written is committed (CheckpointError if it failed)."""
  try:
    mngr.wait_until_finished()
  except Exception as e:
    raise _write_error(mngr, e) from e


def close(mngr):
  """Ends the manager's background work; a failed write was already raised by `save`/`wait`."""
  try:
    mngr.close()
  except Exception:  # pylint: disable=broad-except
    pass


def committed_steps(workdir):
  """The steps whose write finished, read from the directory (orbax renames a step's
  temporary folder to its number only once every file is written)."""
  d = epath.Path(workdir) / CHECKPOINTS
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def _first_line(e):
  """The first line of the innermost cause (tensorstore's words for what is wrong with a file)."""
  while e.__cause__ is not None:
    e = e.__cause__
  text = str(e).strip() or type(e).__name__
  return text.splitlines()[0][:300]


def _write_error(mngr, e):
  cause = _first_line(e)
  chain = " ".join(str(x) for x in (e, e.__cause__, e.__context__) if x is not None)
  full = any(s in chain for s in ("No space left", "File too large", "RESOURCE_EXHAUSTED",
                                  "ENOSPC", "EFBIG", "Disk quota"))
  workdir = epath.Path(mngr.directory).parent
  done = committed_steps(workdir)
  return CheckpointError(
      f"writing a checkpoint under {workdir} failed{' (the disk is full)' if full else ''}: "
      f"{cause}. The committed checkpoints there ({'steps ' + str(done) if done else 'none'}) are "
      f"intact: {'free space (or copy the run to a larger disk)' if full else 'fix the cause'} "
      "and re-run the same command to resume.")


def _slow_writes(delay):
  """Tests only: every checkpoint write in this process commits `delay` seconds later."""
  cls = ocp.StandardCheckpointHandler
  if getattr(cls, "_hemnet_delay", None) is not None:
    return
  original = cls.async_save

  async def async_save(self, *args, **kwargs):
    futures = await original(self, *args, **kwargs) or []
    return [*futures, _Sleep(delay)]

  cls.async_save, cls._hemnet_delay = async_save, delay


class _Sleep:
  """A commit future that is done `delay` seconds after orbax first waits on it."""

  def __init__(self, delay):
    self._delay = delay

  def result(self, timeout=None):
    time.sleep(self._delay)


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


# Orbax's words for a checkpoint that is whole but of another model: a config mismatch, not damage.
_MISMATCH = ("is not compatible with the stored shape", "tree structures do not match",
             "Missing keys", "Unexpected keys")


def resume(workdir, abstract, *, mesh, fsdp, keep, log=print):
  """(manager, state or None, step or None): the newest restorable checkpoint of a run.

  A step that fails to restore (a truncated or missing file) is reported, moved to
  <workdir>/damaged_checkpoints/ (kept for inspection, never deleted: the run will write that
  step again) and the previous one is tried. A step whose arrays do not fit `abstract` is a
  config mismatch, not damage: a ValueError.
  """
  workdir = epath.Path(workdir).absolute()
  mngr = manager(workdir, keep=keep)
  damaged = []
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      state, _ = restore(workdir, abstract, step=step, mesh=mesh, fsdp=fsdp, mngr=mngr)
    except Exception as e:  # orbax and tensorstore raise many types for a bad file
      if any(m in str(e) for m in _MISMATCH):
        raise ValueError(f"checkpoint {mngr.directory / str(step)} does not fit the configured "
                         f"model ({_first_line(e)}); use the settings of {workdir / CONFIG}, or "
                         "another --workdir") from e
      log(f"Checkpoint {mngr.directory / str(step)} is damaged ({_first_line(e)}); "
          "trying the previous step.")
      damaged.append(step)
      continue
    if damaged:
      mngr = _set_aside(workdir, mngr, damaged, keep, log)
      log(f"Resuming from step {step}, the newest restorable checkpoint.")
    return mngr, state, step
  if damaged:
    raise CheckpointError(
        f"no checkpoint in {mngr.directory} can be restored (steps {sorted(damaged)} are damaged). "
        f"Move {mngr.directory} aside to start this run again from step 0, or put back an intact copy.")
  return mngr, None, None


def _set_aside(workdir, mngr, damaged, keep, log):
  """Moves the damaged steps to <workdir>/damaged_checkpoints/; a fresh manager of the rest."""
  from jax.experimental import multihost_utils
  mngr.close()
  if jax.process_index() == 0:
    for step in damaged:
      target = workdir / DAMAGED / f"{step}.{time.strftime('%Y%m%d-%H%M%S')}"
      target.parent.mkdir(parents=True, exist_ok=True)
      (workdir / CHECKPOINTS / str(step)).rename(target)
      log(f"Moved the damaged step {step} to {target} (not deleted).")
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("hemnet_jax damaged checkpoints set aside")
  return manager(workdir, keep=keep)


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
