r"""Compile time of the tests' tiny model under the XLA settings the test suite can choose.

  python -m benchmarks.suite_compile

Most of the test suite's time is compiling tiny programs (tests/helpers.TINY), run a few
times each. This compiles the tiny model's initialisation and train step, without the
persistent cache, in a fresh process per setting (XLA reads XLA_FLAGS once, at start-up),
rounds interleaved, and prints the median seconds of each: XLA as it is; without most
optimisations (JAX_DISABLE_MOST_OPTIMIZATIONS, what tests/conftest.py sets); and that plus
XLA:CPU's classic fusion emitters (--xla_cpu_use_fusion_emitters=false, also set there).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

SETTINGS = {
    "optimised": {},
    "unoptimised": {"JAX_DISABLE_MOST_OPTIMIZATIONS": "1"},
    "unoptimised + classic fusion": {"JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
                                     "XLA_FLAGS": "--xla_cpu_use_fusion_emitters=false"},
}

# One measurement, in a fresh process: {"init": s, "train_step": s}.
_CHILD = r"""
import functools, json, sys, time
import jax
jax.config.update("jax_enable_compilation_cache", False)
import jax.numpy as jnp
sys.path[:0] = [".", "tests"]
from helpers import tiny_config
from hemnet_jax.training import state as state_lib, steps
config = tiny_config("/nonexistent")
model = state_lib.build_model(config)
t0 = time.perf_counter()
state = state_lib.create_train_state(config, model, jax.random.key(0))
t1 = time.perf_counter()
size, batch = config.data.crop_size, config.train.batch_size
batch = {"image": jnp.zeros((batch, size, size, 3)), "label": jnp.zeros((batch, size, size), jnp.int32)}
jax.jit(functools.partial(steps.train_step, config=config)).lower(state, batch).compile()
t2 = time.perf_counter()
print("RESULT " + json.dumps({"init": t1 - t0, "train_step": t2 - t1}))
"""


def measure(env):
  base = {k: v for k, v in os.environ.items()
          if k not in ("XLA_FLAGS", "JAX_DISABLE_MOST_OPTIMIZATIONS")}
  proc = subprocess.run([sys.executable, "-c", _CHILD], env={**base, **env}, capture_output=True,
                        text=True, timeout=900)
  if proc.returncode != 0:
    raise SystemExit(f"error: the measuring process failed under {env}:\n{proc.stderr[-2000:]}")
  return json.loads(proc.stdout.split("RESULT ")[1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()
  import jax  # pylint: disable=import-outside-toplevel
  print(f"backend {jax.default_backend()}, jax {jax.__version__}; tiny model of tests/helpers.py, "
        f"{args.rounds} interleaved rounds, medians")
  times = {name: [] for name in SETTINGS}
  for _ in range(args.rounds):
    for name, env in SETTINGS.items():
      times[name].append(measure(env))
  base = None
  for name, runs in times.items():
    init = statistics.median(r["init"] for r in runs)
    step = statistics.median(r["train_step"] for r in runs)
    base = base or init + step
    print(f"{name:>29}: init {init:5.1f} s  train step {step:5.1f} s  "
          f"(together {(init + step) / base:.2f}x the optimised)")


if __name__ == "__main__":
  main()
