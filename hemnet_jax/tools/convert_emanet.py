r"""Converts a trained EMANet from PyTorch into a hemnet_jax run directory.

  python -m hemnet_jax.tools.convert_emanet --checkpoint final.pth --out RUN_DIR \
      [--config configs/voc.py:emanet] [--config.data.manual_dir=...] [--step N]

Then, as with a run of our own (docs/emanet_models.md):
  python -m hemnet_jax.main --config RUN_DIR/config.py --workdir RUN_DIR --mode eval
  python -m hemnet_jax.tools.predict --workdir RUN_DIR --images a.jpg --out OUT
and `--mode train` with a larger --config.train.num_steps continues training from it.

The layouts it reads are described in hemnet_jax/convert/emanet.py.
"""

import jax
import jax.numpy as jnp
from absl import flags
from etils import epath

from hemnet_jax import cli
from hemnet_jax.convert import emanet, torch_file
from hemnet_jax.convert.resnet import ConversionError
from hemnet_jax.models.hem_unit import BASES
from hemnet_jax.training import checkpoints, config as config_lib, state as state_lib


# A config file for the run directory: `--config RUN_DIR/config.py` gives main, the probes
# and attention_maps the converted model, as config.json gives predict.
CONFIG_PY = '''"""The converted model's config: config.json beside this file (hemnet_jax.tools.convert_emanet)."""

import json
import pathlib

from hemnet_jax.training import config as config_lib


def _merge(config, values):
  # Onto the default schema, so that its typed placeholders (data_dir, manual_dir...) can
  # still be set from the command line; JSON lists are the schema's tuples.
  for key, value in values.items():
    if isinstance(value, dict) and key in config:
      _merge(config[key], value)
    else:
      config[key] = tuple(value) if isinstance(value, list) else value


def get_config():
  config = config_lib.default_config()
  _merge(config, json.loads(pathlib.Path(__file__).with_name("config.json").read_text()))
  return config
'''


def write_run(out, variables, config, step):
  """config.json, config.py and a checkpoint of step `step` in the training loop's format."""
  out = epath.Path(out).absolute()
  as_f32 = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), tree)
  model = state_lib.build_model(config)
  state = state_lib.TrainState.create(
      apply_fn=model.apply, params=as_f32(variables["params"]),
      batch_stats=as_f32(variables["batch_stats"]), hem_bases=as_f32(variables[BASES]),
      tx=state_lib.make_optimizer(config))
  state = state.replace(step=jnp.asarray(step, jnp.int32))
  checkpoints.save_config(out, config)
  (out / "config.py").write_text(CONFIG_PY)
  mngr = checkpoints.manager(out)
  checkpoints.save(mngr, step, state)
  mngr.wait_until_finished()
  return out


def default_config():
  """configs/voc.py:emanet, loaded by path (configs/ is not a package)."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  import pathlib  # pylint: disable=import-outside-toplevel
  path = pathlib.Path(__file__).resolve().parents[2] / "configs" / "voc.py"
  spec = importlib.util.spec_from_file_location("_voc", path)
  voc = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(voc)
  return voc.get_config("emanet")


def run(checkpoint, out, config=None, step=None):
  out = epath.Path(out).absolute()
  if out.exists() and any(out.iterdir()):
    raise ValueError(f"--out {out} exists and is not empty; choose a new directory")
  config = (config if config is not None else default_config()).copy_and_resolve_references()
  try:
    variables, config, layout = emanet.convert(torch_file.load(checkpoint), config)
  except ImportError as e:
    raise ValueError(str(e)) from e
  except ConversionError as e:
    raise ValueError(f"{checkpoint}: {e}") from e
  config = config_lib.validate(config)
  step = step if step is not None else emanet.file_step(checkpoint)
  write_run(out, variables, config, step)
  m = config.model
  print(f"Converted the {layout} EMANet in {checkpoint} (ResNet stages "
        f"{tuple(m.stage_sizes)}, C {m.head_channels}, K {config.hem.num_bases}, "
        f"{config.data.num_classes} classes) to {out}, step {step}.\nEvaluate with:\n  "
        f"python -m hemnet_jax.main --config {out}/config.py --workdir {out} --mode eval",
        flush=True)
  return out


def main(f):
  run(f.checkpoint, f.out, f.config, f.step)


if __name__ == "__main__":
  from ml_collections import config_flags
  flags.DEFINE_string("checkpoint", None, "EMANet's .pth (or a .safetensors of its state dict).")
  flags.DEFINE_string("out", None, "The run directory to write (new or empty).")
  config_flags.DEFINE_config_file("config", None, "The run's config (default: configs/voc.py:emanet); "
                                  "its structural fields are replaced by the checkpoint's.")
  flags.DEFINE_integer("step", None, "The checkpoint's step; default: the file's own, else 0.")
  flags.mark_flags_as_required(["checkpoint", "out"])
  cli.start(main)
