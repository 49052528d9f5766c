r"""How long the model's initialisation takes to compile, with and without XLA's expensive passes.

  python -m benchmarks.init_compile                        # configs/demo.py
  python -m benchmarks.init_compile --config configs/voc.py

`training/state.create_train_state` compiles `model.init` with the cheap options
(`state.INIT_COMPILER_OPTIONS`): the program runs once per run, and is mostly the random
initialisers of every parameter. This compiles it both ways, without the persistent
compilation cache, runs both and prints the compile times and the largest difference
between the two sets of initial values (the same up to rounding). Then the train state made
from those values (the optimizer's init): op by op, as TrainState.create runs eagerly, against
compiled with the cheap options, as create_train_state makes it (`state.make_state`; the same
values exactly).
"""

import argparse
import functools
import importlib.util
import time

import jax

jax.config.update("jax_enable_compilation_cache", False)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from hemnet_jax.training import config as config_lib, state as state_lib  # noqa: E402


def load_config(path):
  spec = importlib.util.spec_from_file_location("_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return config_lib.validate(module.get_config())


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="configs/demo.py")
  args = parser.parse_args()
  config = load_config(args.config)
  model = state_lib.build_model(config)
  size = config.data.crop_size
  inputs = ({"params": jax.random.key(config.seed)}, jnp.zeros((1, size, size, 3), jnp.float32))
  lowered = jax.jit(functools.partial(model.init, train=False)).lower(*inputs)
  print(f"config {args.config}, crop {size}, backend {jax.default_backend()}, jax {jax.__version__}")
  values = {}
  for name, options in (("full", None), ("cheap", state_lib.INIT_COMPILER_OPTIONS)):
    t0 = time.perf_counter()
    compiled = lowered.compile(options)
    seconds = time.perf_counter() - t0
    values[name] = jax.block_until_ready(compiled(*inputs))
    print(f"{name:>5}: compile {seconds:6.1f} s")
  diff = max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
             for a, b in zip(jax.tree.leaves(values["full"]), jax.tree.leaves(values["cheap"])))
  print(f"largest difference between the two initial values: {diff:.2e}")

  variables = dict(values["cheap"])
  t0 = time.perf_counter()
  eager = jax.block_until_ready(state_lib._state(config, model, variables))  # pylint: disable=protected-access
  eager_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  compiled = jax.block_until_ready(state_lib.make_state(config, model, variables))
  compiled_s = time.perf_counter() - t0
  same = all(np.array_equal(np.asarray(a), np.asarray(b))
             for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(compiled)))
  print(f"train state from the values: eager {eager_s:.1f} s, compiled {compiled_s:.1f} s "
        f"(compile included; {'the same values' if same else 'VALUES DIFFER'})")


if __name__ == "__main__":
  main()
