r"""The full train step against the same network in PyTorch: speed-ups, MFU and compile time.

  python -m benchmarks.train_step                     # CPU: crop 129, batch 2, float32, vs PyTorch
  python -m benchmarks.train_step --isa avx2          # both frameworks capped to AVX2
  python -m benchmarks.train_step --crop 513 --batch 16 --dtype bfloat16   # the paper's (accelerator)
  python -m benchmarks.train_step --ablation --modes hemnet   # each CPU choice undone in turn
  python -m benchmarks.train_step --ablation --with_torch     # the same, beside PyTorch's steps
  python -m benchmarks.train_step --ablation --copies 3       # each variant compiled 3 times
  python -m benchmarks.train_step --ablation --only copied,col2im   # only the entries so named
  python -m benchmarks.train_step --ablation --config configs/demo.py   # the same, the demo's model
  python -m benchmarks.train_step --gemm_floor        # also each GEMM of our step timed alone
  python -m benchmarks.train_step --copies 3          # ours compiled 3 times: steadier figures

The model is configs/voc.py's: ResNet-101, multi-grid, output stride 8, the HEM head
(C 512, K 64, T 3), SGD with momentum, on random images and labels (no dataset needed).
With PyTorch (on the CPU, unless --no_torch) both sides run without the auxiliary head, as
the EMANet release's network (benchmarks/torch_emanet.py, same 53.8 M parameters), in
HEMNet mode (gradient through the iterations, eta 0.5) and EMANet mode (iterations without
gradient); ours, PyTorch eager and torch.compile are timed in interleaved rounds. The last
line: `summary: speedup_vs_eager=... speedup_vs_compile=... mfu=...` (PyTorch's time / ours,
HEMNet mode). Two compiles of one program can run a few percent apart on a shared machine:
--copies N compiles ours N times and times each compile once per round; a round's time is their
mean, and the line says how far apart the compiles' medians were.

MFU = the step's FLOPs (XLA's cost analysis of the step as lowered, before XLA hands
convolutions to a library it cannot count, as cuDNN; with XLA's convolutions, so that the
zero padding taps of the CPU's im2col GEMMs do not count) / step time / the jnp.dot peak (float32,
or bfloat16 for a bfloat16 run) measured in the same run. --profile names where our step's
time goes; --gemm_floor times each GEMM of our compiled step warm and alone, in the same rounds
(benchmarks/gemms.py), and says how much of the step is left beside their sum, and how much
1.1x PyTorch eager would leave. benchmarks/device_check.py calls the same functions
(paper_config, compile_step, step_call, random_batches).
"""

import os
import sys

from benchmarks import isa

isa.cap_from_argv(sys.argv[1:])  # before JAX or PyTorch loads

import argparse
import importlib.util
import statistics
import time
from unittest import mock

from hemnet_jax.cli import host_memory

# As training runs (hemnet_jax/main.py): set before JAX starts its threads.
host_memory.set_up(restart=__name__ == "__main__")

import jax
import jax.numpy as jnp

from benchmarks import common, gemms
from hemnet_jax.models import layers, resnet
from hemnet_jax.training import sharding, state as state_lib, steps

import configs.voc as voc


def paper_config(crop, batch, dtype, log_elbo=False, variant="hemnet", module=voc):
  """configs/voc.py (`variant`: hemnet or emanet; or another config `module`) at this crop,
  global batch and compute dtype (None: the config's own)."""
  config = module.get_config(variant)
  config.data.crop_size = crop or config.data.crop_size
  config.train.batch_size = batch or config.train.batch_size
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
  compile_s, flops (XLA's cost analysis of one step as the model defines it, with XLA's
  convolutions), executed_flops (the same of the step as it runs: on the CPU, where the
  convolutions run as im2col GEMMs, their zero padding taps count too), memory_bytes (None
  if not reported), aliased_bytes."""
  mesh = sharding.make_mesh()
  model = state_lib.build_model(config)
  state = state_lib.create_train_state(config, model, jax.random.key(0), load_backbone=False)
  state_sharding = sharding.state_shardings(state, mesh)
  state = jax.device_put(state, state_sharding)
  batch = random_batches(config, mesh)[0]
  step = steps.jit_train_step(config, mesh, state_sharding, donate=donate)
  t0 = time.perf_counter()
  lowered = step.lower(state, batch)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  # The lowered step's count: the compiled one misses convolutions run by a library (cuDNN).
  executed = _flops(lowered.cost_analysis() or compiled.cost_analysis())
  # MFU counts the model's FLOPs, not the padding taps a GEMM path multiplies by zero.
  with mock.patch.object(layers, "gemm_convolutions", lambda: False):
    model = _flops(steps.jit_train_step(config, mesh, state_sharding, donate=donate)
                   .lower(state, batch).cost_analysis())
  mem = compiled.memory_analysis()
  state, out = compiled(state, batch)
  common.block(out)
  return dict(compiled=compiled, state=state, batch=batch, mesh=mesh, compile_s=compile_s,
              flops=model or executed, executed_flops=executed,
              memory_bytes=None if mem is None else (
                  mem.temp_size_in_bytes + mem.argument_size_in_bytes
                  + mem.output_size_in_bytes - mem.alias_size_in_bytes),
              aliased_bytes=None if mem is None else mem.alias_size_in_bytes)


def _flops(cost):
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get("flops", 0.0))


def copies_call(calls):
  """(one call that runs each of `calls` once and returns their mean seconds, {index: [each
  call's seconds]}): several compiles of one step, timed as one in each round."""
  seconds = {i: [] for i in range(len(calls))}

  def call():
    for i, fn in enumerate(calls):
      t0 = time.perf_counter()
      common.block(fn())
      seconds[i].append(time.perf_counter() - t0)
    return statistics.fmean(s[-1] for s in seconds.values())
  return call, seconds


def step_call(bench):
  """A callable that runs one step of `bench` (compile_step's) on its batch; returns the metrics."""
  def call():
    bench["state"], out = bench["compiled"](bench["state"], bench["batch"])
    return out
  return call


# The CPU's implementation choices, each undone in turn by --ablation (as before the change).
ABLATIONS = {
    "XLA's 3x3 convolutions (not im2col GEMMs)":
        lambda: mock.patch.object(layers, "gemm_convolutions", lambda: False),
    "residual stream recomputed (no layers.materialize)":
        lambda: mock.patch.object(resnet, "materialize", lambda x: x),
    "1x1 weight gradients as XLA lays them out (not row-major GEMMs)":
        lambda: mock.patch.object(layers, "row_major_weight_grads", lambda: False),
    "padding taps multiplied (im2col where they dominate, no per-tap GEMMs)":
        lambda: mock.patch.object(layers, "SHIFTED_GEMMS_FROM_PADDING", 2.0),
    "3x3 weight gradients as XLA lays them out (cols^T dy)":
        lambda: mock.patch.object(layers, "_weight_grad", lambda cols, d_y: jnp.dot(cols.T, d_y)),
    "col2im spreading all taps at once (not row by row)":
        lambda: mock.patch.object(layers, "_col2im", _col2im_all_taps),
    "every donated parameter copied (XLA's default copy insertion)":
        lambda: mock.patch.object(steps, "train_compiler_options", lambda: None),
    "XLA's max pool (reduce-window and select-and-scatter, not the maximum of the taps)":
        lambda: mock.patch.object(layers, "tap_max_pools", lambda: False),
}


def _col2im_all_taps(d_cols, x_shape, kernel, strides, dilation, padding):
  """layers._col2im as it was: every tap spread over the whole map, then added."""
  (pt, pb), (pl, pr) = padding
  b, h, w, c = x_shape
  ho, wo = d_cols.shape[1:3]
  d_cols = d_cols.reshape(b, ho, wo, kernel[0] * kernel[1], c)
  d_x = None
  for k in range(kernel[0] * kernel[1]):
    i, j = divmod(k, kernel[1])
    top, left = i * dilation[0], j * dilation[1]
    bottom = h + pt + pb - top - (ho - 1) * strides[0] - 1
    right = w + pl + pr - left - (wo - 1) * strides[1] - 1
    tap = jax.lax.pad(d_cols[:, :, :, k], jnp.zeros((), d_cols.dtype),
                      ((0, 0, 0), (top, bottom, strides[0] - 1), (left, right, strides[1] - 1),
                       (0, 0, 0)))
    d_x = tap if d_x is None else d_x + tap
  return d_x[:, pt:pt + h, pl:pl + w]


# The step as it is, compiled again and timed in a variant's place: the same program, so
# whatever separates it from "as it is" is this machine's noise, the floor under which no
# entry's difference means anything (BENCHMARKS.md, "The noise floor of a whole-step A/B").
CONTROL = "as it is, compiled again (the same program, the noise floor)"


def ablations_named(only):
  """The ABLATIONS entries whose name contains one of the comma-separated words in `only`
  (all of them for an empty `only`)."""
  words = [w for w in only.split(",") if w]
  return {name: patch for name, patch in ABLATIONS.items()
          if not words or any(w in name for w in words)}


def ablation(args, config, mode, with_torch):
  """{name: (mean seconds, spread)} of our step as it is, again (CONTROL), and with each
  ABLATIONS entry undone, each compiled `args.copies` times from its own trace (in the order
  A B C .. A B C), all interleaved in one process (common.over_copies); with_torch:
  PyTorch's steps in the same rounds, as (median seconds, 0.0)."""
  calls = {}
  chosen = ablations_named(args.only)
  for i in range(args.copies):
    calls[("as it is", i)] = step_call(compile_step(config))
    calls[(CONTROL, i)] = step_call(compile_step(config))
    for name, patch in chosen.items():
      with patch():
        calls[(name, i)] = step_call(compile_step(config))
  if with_torch:
    times = {k: statistics.median(ts) for k, ts in torch_comparison(args, mode, calls).items()}
  else:
    times = common.interleaved(calls, reps=1, rounds=args.steps)
  ours = common.over_copies({k: t for k, t in times.items() if isinstance(k, tuple)})
  return {**ours, **{k: (t, 0.0) for k, t in times.items() if not isinstance(k, tuple)}}


def torch_comparison(args, mode, jax_calls, self_timed=()):
  """{name: [seconds of each round]} of our steps (`jax_calls`, {name: call}; those named in
  self_timed return their own seconds) and PyTorch's in `mode`, interleaved."""
  from benchmarks import torch_emanet  # imports torch: after isa.cap_from_argv
  variants = ("torch_eager",) + (() if args.no_compile else ("torch_compile",))
  fns, compile_s = torch_emanet.torch_train_steps(args.crop, args.batch, mode=mode,
                                                  variants=variants)
  if compile_s is not None:
    print(f"  torch.compile warm-up (compile + 3 steps): {compile_s:.1f} s", flush=True)
  sync = {name: (lambda r: r) for name in fns}  # PyTorch's CPU ops are synchronous
  return common.interleaved({**jax_calls, **fns}, reps=1, rounds=args.steps, sync=sync,
                            self_timed=self_timed, every_call=True)


def print_gemm_floor(info, step_s, floor_s, eager_s=None):
  """Our step's GEMMs, each run alone (benchmarks/gemms.py), beside the step: an estimate of
  the share of it that no change around them removes."""
  if not info["runs"]:
    print("  GEMMs alone: the compiled step shows no dot to time")
    return
  loops = (f", {info['unknown_loops']} loops of unknown length counted once"
           if info["unknown_loops"] else "")
  print(f"  GEMMs alone: {floor_s * 1e3:.1f} ms per step, {floor_s / step_s:.1%} of ours "
        f"({info['runs']} dots, {info['distinct']} distinct, {info['flops'] / 1e9:.1f} GFLOP at "
        f"{common.gflops(info['flops'] / floor_s)}, each warm and alone{loops}); the rest of our "
        f"step: {(step_s - floor_s) * 1e3:.1f} ms")
  if eager_s:
    target = eager_s / 1.1
    print(f"  1.1x PyTorch eager would be {target * 1e3:.1f} ms per step: "
          f"{(target - floor_s) * 1e3:.1f} ms beside the GEMMs")


def main():
  accel = jax.devices()[0].platform != "cpu"
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--crop", type=int, default=None,
                      help="default: 513 on an accelerator, 129 on a CPU; with --config, its own")
  parser.add_argument("--batch", type=int, default=None,
                      help="global batch (default: 16 on an accelerator, 2 on a CPU; with --config, "
                           "its own)")
  parser.add_argument("--dtype", default="bfloat16" if accel else "float32")
  parser.add_argument("--steps", type=int, default=10 if accel else 5, help="timed rounds")
  parser.add_argument("--modes", default="hemnet,emanet", help="configs/voc.py variants")
  isa.add_flag(parser)
  parser.add_argument("--no_torch", action="store_true", help="ours alone (with the aux head)")
  parser.add_argument("--no_compile", action="store_true", help="PyTorch eager only")
  parser.add_argument("--no_donate", action="store_true", help="do not donate the state")
  parser.add_argument("--log_elbo", action="store_true", help="also compute the per-iteration ELBO")
  parser.add_argument("--profile", action="store_true", help="name the top costs")
  parser.add_argument("--gemm_floor", action="store_true",
                      help="(CPU) time each of our step's GEMMs alone: what the step would take "
                           "if they were all it ran")
  parser.add_argument("--ablation", action="store_true",
                      help="ours as it is and with each CPU choice undone, interleaved (alone, "
                           "aux head on, unless --with_torch)")
  parser.add_argument("--copies", type=int, default=1,
                      help="compile our step this many times, time each once per round and "
                           "report their mean, and how far apart they ran (with --ablation: "
                           "each variant)")
  parser.add_argument("--only", default="",
                      help="with --ablation: only the entries whose name contains one of these "
                           "comma-separated words")
  parser.add_argument("--with_torch", action="store_true",
                      help="with --ablation: PyTorch's steps in the same rounds (no aux head)")
  parser.add_argument("--config", default=None,
                      help="another config file (ours alone; --crop and --batch default to its own)")
  args = parser.parse_args()
  module = voc
  if args.config:
    if not os.path.isfile(args.config):
      parser.error(f"--config {args.config}: no such file")
    spec = importlib.util.spec_from_file_location("bench_config", args.config)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  else:
    args.crop = args.crop or (513 if accel else 129)
    args.batch = args.batch or (16 if accel else 2)
  if args.only and not args.ablation:
    parser.error("--only goes with --ablation")
  if args.only and not ablations_named(args.only):
    parser.error(f"--only {args.only}: no --ablation entry's name contains it; the entries: "
                 + "; ".join(ABLATIONS))
  if args.gemm_floor and (accel or args.ablation):
    parser.error("--gemm_floor: our step on a CPU, without --ablation (accelerators run their "
                 "GEMMs as library calls, which the compiled program does not show as dots)")
  if args.with_torch and not args.ablation:
    parser.error("--with_torch goes with --ablation (without it PyTorch runs unless --no_torch)")
  if args.copies < 1:
    parser.error(f"--copies {args.copies}: a count of at least 1")
  if args.copies > 1 and args.gemm_floor:
    parser.error(f"--copies {args.copies} --gemm_floor: the floor times one compile's GEMMs; "
                 "leave out one of them")
  with_torch = (not (args.no_torch or accel or args.config)
                and (args.with_torch or not args.ablation))

  print(common.banner())
  print(isa.describe(args.isa))
  if with_torch:
    import torch
    print(f"torch {torch.__version__}, {os.cpu_count()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}")
  peak_dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
  results = {}
  for mode in args.modes.split(","):
    config = paper_config(args.crop, args.batch, args.dtype, args.log_elbo, mode, module)
    if with_torch:
      config.model.aux_weight = 0.0  # the release's network has no auxiliary head
    print(f"\n== {mode}: {args.config or 'configs/voc.py'} OS {config.model.output_stride}, HEM C "
          f"{config.model.head_channels} K {config.hem.num_bases} T {config.hem.num_iters} eta "
          f"{config.hem.eta}, aux head {config.model.aux_weight > 0}, crop {config.data.crop_size}, "
          f"global batch {config.train.batch_size}, {args.dtype}, donate {not args.no_donate}",
          flush=True)
    if args.ablation:
      times = ablation(args, config, mode, with_torch)
      base = times["as it is"][0]
      for name, (t, spread) in times.items():
        copies = (f"; its {args.copies} compiles {spread:.1%} apart"
                  if args.copies > 1 and name not in ("torch_eager", "torch_compile") else "")
        print(f"  {name}: {t * 1e3:.1f} ms ({t / base:.2f}x the time as it is{copies})")
      for name in ("torch_eager", "torch_compile"):
        if name in times:
          print(f"  {name}: " + ", ".join(f"{ours} {times[name][0] / times[ours][0]:.2f}x"
                                          for ours in times if not ours.startswith("torch_")))
      continue
    benches = [compile_step(config, donate=not args.no_donate) for _ in range(args.copies)]
    bench, flops = benches[0], benches[0]["flops"]
    first = step_call(bench)
    call, per_copy = copies_call([first] + [step_call(b) for b in benches[1:]])
    print(f"  compile: {bench['compile_s']:.1f} s; XLA cost analysis: {flops / 1e9:.1f} GFLOP "
          f"per step ({bench['executed_flops'] / 1e9:.1f} as executed, padding taps included)",
          flush=True)
    if bench["memory_bytes"] is not None:
      print(f"  memory (XLA memory analysis): {bench['memory_bytes'] / 2**20:.0f} MiB, of which "
            f"{bench['aliased_bytes'] / 2**20:.0f} MiB of outputs reuse donated inputs")
    # The peak in the same process, just before the steps: interleaved with the steps it
    # read low, their threads still winding down (BENCHMARKS.md, "The train step").
    peak, n = common.matmul_peak(peak_dtype)
    ours = {"jax": call}
    if args.gemm_floor:  # in the same rounds as the step, so that both see the same machine
      ours["gemms"], floor_info = gemms.floor_call(bench["compiled"].as_text())
    timed = ("jax", "gemms")  # each returns its own seconds: the compiles' mean, the GEMMs' sum
    rounds = (torch_comparison(args, mode, ours, timed) if with_torch
              else common.interleaved(ours, reps=1, rounds=args.steps, self_timed=timed,
                                      every_call=True))
    times = {name: statistics.median(ts) for name, ts in rounds.items()}
    step_s = times["jax"]
    results[mode] = dict(times, mfu=flops / step_s / peak,
                         images_per_s=config.train.batch_size / step_s)
    print(f"  {jnp.dtype(peak_dtype).name} jnp.dot peak: {common.gflops(peak)} (at {n}^3)")
    print(f"  ours: {step_s * 1e3:.1f} ms ({config.train.batch_size / step_s:.2f} images/s, "
          f"{common.gflops(flops / step_s)}, MFU {flops / step_s / peak:.1%} of the peak)")
    if args.copies > 1:
      medians = [statistics.median(ts) * 1e3 for ts in per_copy.values()]
      print(f"  ours, each of its {args.copies} compiles: "
            + ", ".join(f"{ms:.1f}" for ms in medians)
            + f" ms ({max(medians) / min(medians) - 1:.1%} apart)")
    for name in ("torch_eager", "torch_compile"):
      if name in times:
        low, high = common.ratio_range(rounds[name], rounds["jax"])
        print(f"  {name}: {times[name] * 1e3:.1f} ms; ours is {times[name] / step_s:.2f}x "
              f"(round by round {low:.2f}-{high:.2f}x)")
    if args.gemm_floor:
      print_gemm_floor(floor_info, step_s, times["gemms"], times.get("torch_eager"))
    if args.profile:
      rows = common.profile_ops(first, bench["compiled"].as_text(), reps=2, top=8)
      print("  profile (share of summed op time):")
      for name, ms, share in rows:
        print(f"    {share:6.1%} {ms:9.1f} ms  {name}")
    del bench, benches, first, call

  if args.ablation:
    return
  r = results.get("hemnet") or next(iter(results.values()))
  for mode, m in results.items():  # one line per mode, then the summary (HEMNet mode)
    if "torch_eager" in m:
      print(f"{mode}: speedup_vs_eager={m['torch_eager'] / m['jax']:.2f} speedup_vs_compile="
            + (f"{m['torch_compile'] / m['jax']:.2f}" if "torch_compile" in m else "n/a")
            + f" mfu={m['mfu']:.3f}")
  if note := isa.caveat():
    print(note)  # beside the figures, too
  if "torch_eager" in r:
    print(f"summary: speedup_vs_eager={r['torch_eager'] / r['jax']:.2f} speedup_vs_compile="
          + (f"{r['torch_compile'] / r['jax']:.2f}" if "torch_compile" in r else "n/a")
          + f" mfu={r['mfu']:.3f}")
  else:
    print(f"summary: images_per_s={r['images_per_s']:.2f} mfu={r['mfu']:.3f}")


if __name__ == "__main__":
  main()
