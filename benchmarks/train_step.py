r"""The full train step: images/s, model FLOPs utilisation and compile time.

  python -m benchmarks.train_step                        # a size that fits this machine
  python -m benchmarks.train_step --crop 513 --batch 16 --dtype bfloat16   # the paper's

The model is configs/voc.py's: ResNet-101, multi-grid, output stride 8, the HEM head
(C 512, K 64, T 3, eta 0.5), the auxiliary head, SGD with momentum, on random images
and labels (no dataset needed). On a CPU the default crop and batch are small
(129 x 129, batch 2, float32); on an accelerator they are the paper's (513, 16, bf16).

MFU = XLA's cost-analysis FLOPs of one compiled step / step time / the jnp.dot peak
(float32, or bfloat16 for a bfloat16 run) measured in the same run. Compile time is
reported separately. --profile names where the step's time goes. benchmarks/device_check.py
calls the same functions (paper_config, compile_step, step_call, random_batches).
"""

import argparse
import time

from hemnet_jax.cli import host_memory

# As training runs (hemnet_jax/main.py): set before JAX starts its threads.
host_memory.reuse_freed_memory()

import jax
import jax.numpy as jnp

from benchmarks import common
from hemnet_jax.training import sharding, state as state_lib, steps

import configs.voc as voc


def paper_config(crop, batch, dtype, log_elbo=False):
  """configs/voc.py at this crop, global batch and compute dtype."""
  config = voc.get_config()
  config.data.crop_size = crop
  config.train.batch_size = batch
  config.train.dtype = dtype
  config.train.log_elbo = log_elbo
  return config


def random_batches(config, mesh, count=1, seed=0):
  """`count` batches of random images and labels, made on the devices in the batch layout."""
  b, size = config.train.batch_size, config.data.crop_size

  def make(key):
    k1, k2 = jax.random.split(key)
    return {"image": jax.random.normal(k1, (b, size, size, 3), jnp.float32),
            "label": jax.random.randint(k2, (b, size, size), 0, config.data.num_classes,
                                        jnp.int32)}
  make = jax.jit(make, out_shardings=sharding.batch_sharding(mesh))
  return [make(jax.random.key(seed + i)) for i in range(count)]


def compile_step(config, donate=True):
  """config's train step compiled for this host's devices, with a fresh state and a random
  batch, called once (allocation, not timed). A dict: compiled, state, batch, mesh,
  compile_s, flops (XLA's cost analysis of one step), memory_bytes (None if not reported),
  aliased_bytes."""
  mesh = sharding.make_mesh()
  model = state_lib.build_model(config)
  state = state_lib.create_train_state(config, model, jax.random.key(0), load_backbone=False)
  state_sharding = sharding.state_shardings(state, mesh)
  state = jax.device_put(state, state_sharding)
  batch = random_batches(config, mesh)[0]
  step = steps.jit_train_step(config, mesh, state_sharding, donate=donate)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  mem = compiled.memory_analysis()
  state, out = compiled(state, batch)
  common.block(out)
  return dict(compiled=compiled, state=state, batch=batch, mesh=mesh, compile_s=compile_s,
              flops=float((cost or {}).get("flops", 0.0)),
              memory_bytes=None if mem is None else (
                  mem.temp_size_in_bytes + mem.argument_size_in_bytes
                  + mem.output_size_in_bytes - mem.alias_size_in_bytes),
              aliased_bytes=None if mem is None else mem.alias_size_in_bytes)


def step_call(bench):
  """A callable that runs one step of `bench` (compile_step's) on its batch; returns the metrics."""
  def call():
    bench["state"], out = bench["compiled"](bench["state"], bench["batch"])
    return out
  return call


def main():
  accel = jax.devices()[0].platform != "cpu"
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--crop", type=int, default=513 if accel else 129)
  parser.add_argument("--batch", type=int, default=16 if accel else 2, help="global batch")
  parser.add_argument("--dtype", default="bfloat16" if accel else "float32")
  parser.add_argument("--steps", type=int, default=10 if accel else 5)
  parser.add_argument("--no_donate", action="store_true", help="do not donate the state")
  parser.add_argument("--log_elbo", action="store_true", help="also compute the per-iteration ELBO")
  parser.add_argument("--profile", action="store_true", help="name the top costs")
  args = parser.parse_args()

  config = paper_config(args.crop, args.batch, args.dtype, args.log_elbo)
  print(common.banner())
  print(f"train step: ResNet-101 OS {config.model.output_stride}, HEM C "
        f"{config.model.head_channels} K {config.hem.num_bases} T {config.hem.num_iters}, crop "
        f"{args.crop}, global batch {args.batch}, {args.dtype}, donate {not args.no_donate}")
  bench = compile_step(config, donate=not args.no_donate)
  call, flops = step_call(bench), bench["flops"]
  # The peak in the same process, just before the steps (interleaving it with the steps
  # measured it 30-50 % low: the step's threads were still winding down).
  peak_dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
  peak, n = common.matmul_peak(peak_dtype)
  step_s = common.interleaved({"step": call}, reps=1, rounds=args.steps)["step"]
  print(f"compile: {bench['compile_s']:.1f} s")
  print(f"step: {step_s * 1e3:.1f} ms (median of {args.steps} steps), "
        f"{args.batch / step_s:.2f} images/s")
  print(f"XLA cost analysis: {flops / 1e9:.1f} GFLOP per step, "
        f"{common.gflops(flops / step_s)}")
  print(f"{jnp.dtype(peak_dtype).name} jnp.dot peak: {common.gflops(peak)} (at {n}^3, this run)")
  if bench["memory_bytes"] is not None:
    print(f"memory (XLA memory analysis): {bench['memory_bytes'] / 2**20:.0f} MiB, of which "
          f"{bench['aliased_bytes'] / 2**20:.0f} MiB of outputs reuse donated inputs")
  print(f"MFU: {flops / step_s / peak:.1%} of the measured peak")
  if args.profile:
    rows = common.profile_ops(call, bench["compiled"].as_text(), reps=2, top=8)
    print("profile (share of summed op time):")
    for name, ms, share in rows:
      print(f"  {share:6.1%} {ms:9.1f} ms  {name}")
  print(f"summary: images_per_s={args.batch / step_s:.2f} mfu={flops / step_s / peak:.3f} "
        f"compile_s={bench['compile_s']:.1f}")


if __name__ == "__main__":
  main()
