r"""What BENCHMARKS.md asks of a GPU or TPU, in one process and under 8 minutes.

  bash benchmarks/device_check.sh --out DIR          # on the accelerator machine
  bash benchmarks/device_check.sh --smoke --out DIR  # tiny shapes on any machine (a test)

  (a) peak       the jnp.dot peak, float32 and bfloat16 (benchmarks/peak.py);
  (b) hem        the HEM unit's forward + backward against PyTorch eager and torch.compile
                 on the same device where PyTorch sees it (benchmarks/hem_layer.py);
  (c) train_step the train step at the paper's shapes: configs/voc.py as it trains (crop
                 513, global batch 16, bfloat16, the ELBO logged), timed step by step
                 (benchmarks/train_step.py);
  (d) train_100  100 steps of the same compiled step on random batches made on the device,
                 dispatched back to back as the training loop does and timed by its meter
                 (hemnet_jax/training/meter.py): images/s, and MFU = XLA's cost-analysis
                 FLOPs / time / (a)'s peak for the step's dtype.

Each part runs even when an earlier one failed (its traceback is printed; the exit status
is then 1). The rows, in the columns of BENCHMARKS.md's tables, are printed at the end and
written to DIR/device_rows.md (device_check.sh also keeps the whole log, device_check.log).
"""

import argparse
import os
import pathlib
import sys
import time
import traceback

from hemnet_jax.cli import host_memory

# --smoke checks the code paths, not the figures: XLA compiles with its cheapest backend
# passes, far faster to compile on a small CPU (read when JAX starts its backend).
SMOKE_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if "--smoke" in sys.argv[1:]:
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {SMOKE_XLA_FLAGS}".strip()

# As training runs (hemnet_jax/main.py): set before JAX starts its threads (CPU only).
host_memory.set_up(restart=__name__ == "__main__")

import jax
import jax.numpy as jnp

from benchmarks import common

STEPS = 100
# --smoke: the same code at shapes a CPU runs in seconds.
SMOKE_MODEL = {"model.stage_sizes": (1, 1, 1, 1), "model.width": 8, "model.stem_width": 16,
               "model.head_channels": 16, "model.decoder_channels": 8, "model.aux_channels": 8,
               "hem.num_bases": 4}
HEADERS = {
    "peak": ("The device's matmul limit",
             "| device | float32 `jnp.dot` | bfloat16 `jnp.dot` |\n| --- | --- | --- |"),
    "hem": ("The HEM unit, forward + backward",
            "| device | JAX (ours) | PyTorch eager | torch.compile | JAX vs eager | JAX vs compile "
            "| JAX, fraction of peak |\n| --- | --- | --- | --- | --- | --- | --- |"),
    "train": ("The train step",
              "| device | crop, batch, dtype | compile | step | images/s | MFU | memory |\n"
              "| --- | --- | --- | --- | --- | --- | --- |"),
}


def flop_rate(x):
  return f"{x / 1e12:.1f} TFLOP/s" if x >= 1e12 else f"{x / 1e9:.1f} GFLOP/s"


def percent(x):
  return f"{100 * x:.0f} %"


def part_peak(args, found):
  """(a) the jnp.dot peak, float32 and bfloat16.

  Kept for the MFU of (c) and (d): found["peak"][dtype name] = (FLOP/s, size)."""
  accel = jax.devices()[0].platform != "cpu"
  peaks = found["peak"] = {}
  sizes = (64, 128) if args.smoke else (2048, 4096, 8192) if accel else (1024, 2048, 4096)
  for dtype in (jnp.float32, jnp.bfloat16):
    name = jnp.dtype(dtype).name
    if dtype == jnp.bfloat16 and not common.has_fast_bf16():
      print(f"{name}: skipped (no bf16 matmul units on this device)")
      continue
    peaks[name] = common.matmul_peak(dtype, sizes, reps=2 if args.smoke else 10)
    print(f"{name} jnp.dot peak: {flop_rate(peaks[name][0])} (at {peaks[name][1]}^3)")
  cells = [f"{flop_rate(peaks[d][0])} (at {peaks[d][1]}^3)" if d in peaks
           else "skipped (no fast bf16 matmul)" for d in ("float32", "bfloat16")]
  if jax.devices()[0].platform == "gpu":  # float32 dots run in TF32 there by default
    cells[0] += " (TF32: XLA's default precision)"
  return [f"| {common.device_name()} | {cells[0]} | {cells[1]} |"]


def part_hem(args, found):
  """(b) the HEM unit at the paper's shapes (batch 16 on an accelerator) against PyTorch."""
  from benchmarks import hem_layer
  accel = jax.devices()[0].platform != "cpu"
  shape = (1, 6, 16, 4, 3) if args.smoke else (16 if accel else 2, 65, 512, 64, 3)
  reps, rounds = (1, 1) if args.smoke else (10, 3)
  r = hem_layer.compare(shape, 0.5, reps, rounds, peak_size=256 if args.smoke else 4096)
  times, flops, executed, peak = r["times"], r["flops"], r["executed"], r["peak"]
  ms = lambda name: f"{times[name] * 1e3:.1f} ms" if name in times else "not compared"
  speedup = lambda name: f"**{times[name] / times['jax']:.2f}x**" if name in times else ""
  print(f"PyTorch: {r['torch_device'] or 'not compared'}; torch.compile warm-up "
        f"{r['torch_compile_s'] or 0:.1f} s; matmul FLOPs per fwd+bwd {flops / 1e9:.2f} G as "
        f"written, {executed / 1e9:.2f} G executed by ours")
  print(f"jax {ms('jax')}, torch eager {ms('torch_eager')}, torch.compile {ms('torch_compile')}, "
        f"jnp.dot {r['peak_size']}^3 float32 {flop_rate(peak)}")
  batch, hw, c, k, t = shape
  rate = executed / times["jax"]
  return [f"| {common.device_name()}, batch {batch} (N {hw}x{hw}, C {c}, K {k}, T {t}, float32) "
          f"| {ms('jax')} | {ms('torch_eager')} | {ms('torch_compile')} "
          f"| {speedup('torch_eager')} | {speedup('torch_compile')} "
          f"| **{percent(rate / peak)}** ({flop_rate(rate)} of "
          f"{flop_rate(peak)}) |"]


def train_config(args):
  from benchmarks import train_step
  # log_elbo: as configs/voc.py trains (benchmarks.train_step leaves it off unless --log_elbo).
  config = train_step.paper_config(33, 2, "float32", log_elbo=True) if args.smoke else (
      train_step.paper_config(513, 16, "bfloat16", log_elbo=True))
  if args.smoke:
    for key, value in SMOKE_MODEL.items():
      section, field = key.split(".")
      config[section][field] = value
  return config


def shapes_cell(config):
  c = config
  return (f"{c.data.crop_size}, {c.train.batch_size}, {c.train.dtype} (configs/voc.py"
          + (", --smoke model" if c.model.stage_sizes != (3, 4, 23, 3) else "") + ")")


def mfu_cell(flops, seconds, found, dtype):
  peak = found.get("peak", {}).get(dtype)
  if not peak:
    return "no peak measured"
  return (f"**{percent(flops / seconds / peak[0])}** ({flops / 1e9:.1f} GFLOP/step at "
          f"{flop_rate(flops / seconds)}; peak {flop_rate(peak[0])})")


def part_train_step(args, found):
  """(c) the train step: compiled once (kept for (d)), the median of single, blocked steps."""
  from benchmarks import train_step
  config = train_config(args)
  bench = found["bench"] = train_step.compile_step(config)
  n = 3 if args.smoke else 10
  step_s = common.interleaved({"step": train_step.step_call(bench)}, reps=1, rounds=n)["step"]
  b = config.train.batch_size
  print(f"compile {bench['compile_s']:.1f} s; step {step_s * 1e3:.1f} ms (median of {n}), "
        f"{b / step_s:.2f} images/s; {bench['flops'] / 1e9:.1f} GFLOP per step")
  memory = ("" if bench["memory_bytes"] is None
            else f"{bench['memory_bytes'] / 2**20:.0f} MiB")
  return [f"| {common.device_name()} | {shapes_cell(config)} | {bench['compile_s']:.1f} s "
          f"| {step_s * 1e3:.1f} ms | {b / step_s:.2f} "
          f"| {mfu_cell(bench['flops'], step_s, found, config.train.dtype)} | {memory} |"]


def part_train_100(args, found):
  """(d) 100 train steps back to back on random batches made on the device."""
  from benchmarks import train_step
  from hemnet_jax.training import meter as meter_lib
  config = train_config(args)
  reused = "bench" in found  # (c)'s compiled step; compiled here when (c) did not run
  bench = found["bench"] if reused else train_step.compile_step(config)
  steps = 3 if args.smoke else STEPS
  batches = train_step.random_batches(config, bench["mesh"], count=4, seed=1)
  meter = meter_lib.Throughput(config.train.batch_size)
  compiled, state, losses = bench["compiled"], bench["state"], []
  meter.resume(after=state)
  t0 = time.perf_counter()
  for i in range(steps):
    state, out = compiled(state, batches[i % len(batches)])
    meter.step()
    losses.append(out["loss"])
  ips = meter.rate(after=losses)  # one fetch at the end, as the loop at a log step
  seconds = time.perf_counter() - t0
  bench["state"] = state
  finite = all(jnp.isfinite(x) for x in jax.device_get(losses))
  print(f"{steps} steps: {seconds:.1f} s, {ips:.2f} images/s, losses "
        f"{'finite' if finite else 'NOT finite'}")
  step_s = config.train.batch_size / ips
  compiled_cell = ("(compiled once, in the row above)" if reused
                   else f"{bench['compile_s']:.1f} s")
  return [f"| {common.device_name()}, {steps} steps back to back (random batches made on the "
          f"device) | {shapes_cell(config)} | {compiled_cell} "
          f"| {step_s * 1e3:.1f} ms (mean) | {ips:.2f} "
          f"| {mfu_cell(bench['flops'], step_s, found, config.train.dtype)} | |"]


PARTS = (("a", "peak", part_peak), ("b", "hem", part_hem), ("c", "train", part_train_step),
         ("d", "train", part_train_100))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True, help="directory for device_rows.md")
  parser.add_argument("--smoke", action="store_true", help="tiny shapes, a few steps (any CPU)")
  parser.add_argument("--parts", default="a,b,c,d", help="which parts, comma-separated")
  args = parser.parse_args()
  print(common.banner(), flush=True)
  if args.smoke:
    print(f"--smoke: tiny shapes; XLA_FLAGS={os.environ['XLA_FLAGS']}")
  found, rows, failed, t_start = {}, {table: [] for table in HEADERS}, [], time.perf_counter()
  for letter, table, part in PARTS:
    if letter not in args.parts.split(","):
      continue
    print(f"\n== {part.__doc__.splitlines()[0]}", flush=True)
    t0 = time.perf_counter()
    try:
      rows[table] += part(args, found)
    except Exception:  # pylint: disable=broad-except  (report it, run the other parts)
      traceback.print_exc()
      failed.append(letter)
    print(f"({letter}) took {time.perf_counter() - t0:.0f} s", flush=True)

  text = [f"<!-- benchmarks/device_check.py{' --smoke' if args.smoke else ''}: "
          f"{common.banner().replace(chr(10), '; ')} -->"]
  for table, (title, header) in HEADERS.items():
    if rows[table]:
      text += ["", f"### {title}", "", header, *rows[table]]
  text = "\n".join(text) + "\n"
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "device_rows.md").write_text(text)
  print(f"\n== rows ({out / 'device_rows.md'})\n{text}")
  print(f"total: {time.perf_counter() - t_start:.0f} s; "
        + (f"FAILED parts: {','.join(failed)}" if failed else "all parts done"), flush=True)
  return 1 if failed else 0


if __name__ == "__main__":
  raise SystemExit(main())
