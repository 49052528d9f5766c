"""The config-drift guard: a re-run in a workdir continues the run that workdir describes.

A workdir's config.json holds the (resolved) config its checkpoints were trained with. A
re-run whose config differs in a field that changes the model, the data or the schedule
would continue those checkpoints as another run (or fail deep inside orbax), so it stops
before touching anything and lists the fields, unless --allow_config_change is given; then
the change is appended to <workdir>/config_changes.jsonl and config.json takes the new values.
"""

import json
import time

from etils import epath

from hemnet_jax.training import checkpoints

CHANGES = "config_changes.jsonl"

# Fields that change neither the weights a step produces nor the batches it sees: how
# often to log, evaluate and save, how to evaluate, where the files are, memory/layout.
HARMLESS = (
    "train.log_every", "train.eval_every", "train.checkpoint_every", "train.keep_checkpoints",
    "train.log_elbo", "train.summary_images", "train.fsdp", "hem.remat", "hem.num_iters_eval",
    "data.data_dir", "data.manual_dir", "data.eval_split", "data.eval_batch_size",
    "data.eval_size", "data.num_threads", "data.prefetch", "model.backbone_checkpoint", "eval.*",
)


def _harmless(field):
  return any(field == h or (h.endswith(".*") and field.startswith(h[:-1])) for h in HARMLESS)


def _flatten(tree, prefix=""):
  flat = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      flat.update(_flatten(v, f"{prefix}{k}."))
    else:
      flat[f"{prefix}{k}"] = v
  return flat


def differences(old, new):
  """{field: (old, new)} of the fields that matter, between two configs as JSON dicts."""
  a, b = _flatten(old), _flatten(new)
  missing = object()
  return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys())
          if a.get(k, missing) != b.get(k, missing) and not _harmless(k)}


def check(workdir, config, *, allow_change=False):
  """The differences between `config` (resolved) and the run in `workdir`, {} when none or
  when the workdir holds no checkpoint yet; a ValueError listing them unless allow_change."""
  workdir = epath.Path(workdir)
  path = workdir / checkpoints.CONFIG
  if not path.exists() or not checkpoints.committed_steps(workdir):
    return {}
  changes = differences(json.loads(path.read_text()), json.loads(config.to_json_best_effort()))
  if changes and not allow_change:
    listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in ((k, *v) for k, v in changes.items()))
    raise ValueError(
        f"{workdir} holds a run trained with other settings ({listed}). Re-run with its values "
        f"(see {path}), use a new --workdir, or pass --allow_config_change to continue this run "
        f"with the new values (recorded in {workdir / CHANGES}).")
  return changes


def record(workdir, changes, step):
  """Appends one line to <workdir>/config_changes.jsonl: when, from which step, what changed."""
  line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "resumed_from_step": step,
          "changes": {k: {"old": a, "new": b} for k, (a, b) in changes.items()}}
  with (epath.Path(workdir) / CHANGES).open("a") as f:
    f.write(json.dumps(line) + "\n")
