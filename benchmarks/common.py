"""What every benchmark shares: the machine banner, a timer and the matmul peak.

Figures are medians over repetitions, and every comparison is measured in one process,
interleaved round by round, so that a shared or throttled machine slows both sides alike.
"""

import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from benchmarks import isa
from hemnet_jax.cli import host_memory


def cpu_name():
  """The host CPU's model name ("AMD EPYC ..."), else the machine type."""
  try:
    with open("/proc/cpuinfo") as f:
      return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    return platform.processor() or platform.machine()


def device_name():
  """The device as BENCHMARKS.md's rows name it: "2-vCPU AMD EPYC", "NVIDIA H200 x8"."""
  dev = jax.devices()[0]
  if dev.platform == "cpu":
    return f"{os.cpu_count()}-vCPU {cpu_name()}"
  return dev.device_kind + (f" x{jax.device_count()}" if jax.device_count() > 1 else "")


def banner():
  """Device, CPU and versions, printed at the top of every benchmark."""
  dev = jax.devices()[0]
  lines = [f"device: {dev.platform} {dev.device_kind} x{jax.device_count()}",
           f"host: {cpu_name()}, {os.cpu_count()} CPUs visible",
           f"versions: python {platform.python_version()}, jax {jax.__version__}, "
           f"jaxlib {jaxlib.__version__}, "
           f"numpy {np.__version__}",
           f"host malloc: {host_memory.allocator()} (hemnet_jax/cli/host_memory.py)"]
  return "\n".join(lines)


def block(tree):
  return jax.tree_util.tree_map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready")
                                else a, tree)


def time_call(fn, reps, sync=block):
  """Seconds per call of fn() (already warm): the median over reps calls."""
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    sync(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def interleaved(fns, reps, rounds, sync=None, self_timed=(), every_call=False):
  """{name: median seconds} for several warm callables, run round-robin `rounds` times.

  Interleaving spreads any slow phase of a shared machine over all of them; the
  median over all rounds' repetitions is reported (with every_call, the list of every
  call's seconds, in order). A callable named in self_timed returns its own measure in
  seconds, which is recorded instead of its wall time.
  """
  sync = sync or {}
  times = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      s = sync.get(name, block)
      for _ in range(reps):
        t0 = time.perf_counter()
        out = s(fn())
        times[name].append(out if name in self_timed else time.perf_counter() - t0)
  if every_call:
    return times
  return {name: statistics.median(ts) for name, ts in times.items()}


def ratio_range(slower, faster):
  """(lowest, highest) of slower[i] / faster[i] over the rounds of an interleaved run: how far
  one round's speed-up can be from another's on this machine."""
  ratios = [a / b for a, b in zip(slower, faster)]
  return min(ratios), max(ratios)


def over_copies(times):
  """{name: (mean seconds, spread)} from `interleaved` times keyed (name, copy index).

  Two compiles of one program, each with its own buffers, can run a few percent apart
  on a shared machine (BENCHMARKS.md), so an A/B of a small change compiles each variant
  several times; spread is the slowest copy over the fastest, minus 1.
  """
  groups = {}
  for (name, _), t in times.items():
    groups.setdefault(name, []).append(t)
  return {name: (statistics.mean(ts), max(ts) / min(ts) - 1.0) for name, ts in groups.items()}


def matmul_peak(dtype=jnp.float32, sizes=(1024, 2048, 4096), reps=5):
  """The device's practical matmul limit: best FLOP/s of a square jnp.dot over sizes.

  This is the "physical limit" other figures are a fraction of, measured in the same
  process as they are. Returns (flop/s, size that reached it).
  """
  best = (0.0, None)
  for n in sizes:
    key = jax.random.key(n)
    a = jax.random.normal(key, (n, n), dtype)
    b = jax.random.normal(jax.random.fold_in(key, 1), (n, n), dtype)
    dot = jax.jit(jnp.dot)
    block(dot(a, b))
    # Fewer reps for the big ones: 4096^3 is ~0.3 s a call on 2 CPU cores.
    t = time_call(lambda: dot(a, b), max(2, reps if n < 4096 else reps // 2 + 1))
    best = max(best, (2.0 * n ** 3 / t, n), key=lambda r: r[0])
  return best


def has_fast_bf16():
  """bfloat16 matmuls are worth measuring: on GPU/TPU, and on CPUs with AVX512-BF16/AMX."""
  if jax.devices()[0].platform != "cpu":
    return True
  return bool({"avx512_bf16", "amx_bf16"} & isa.cpu_flags())


def gflops(x):
  return f"{x / 1e9:.1f} GFLOP/s"


def profile_ops(fn, hlo_text, reps=3, top=None):
  """Where a compiled function's time goes: [(category, ms per call, share)], largest first.

  Runs fn() under jax.profiler, sums the duration of each XLA op and groups ops by
  the JAX primitive they came from (the HLO metadata's op_name) and by direction
  (forward, or backward: "transpose(...)" in the name). Ops run concurrently on a
  multi-core host, so shares are of summed op time, not of wall time.
  """
  import collections
  import glob
  import gzip
  import json
  import re
  import tempfile

  names = {}
  for m in re.finditer(r"%([\w.\-]+) = [^\n]*?op_name=\"([^\"]*)\"", hlo_text):
    names.setdefault(m.group(1), m.group(2))
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d, create_perfetto_trace=True):
      for _ in range(reps):
        block(fn())
    trace = json.load(gzip.open(glob.glob(f"{d}/**/*.trace.json.gz", recursive=True)[0]))
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  total = collections.Counter()
  for e in events:
    name = e.get("name", "")
    if e.get("ph") != "X" or name.startswith("$") or "Thunk" in name or name not in names:
      continue
    op_name = names[name]
    prim = re.split(r"[/(]", op_name.rstrip(")").split("/")[-1])[0] or op_name
    direction = "backward" if "transpose(" in op_name else "forward"
    total[f"{prim} ({direction})"] += e.get("dur", 0) / 1e3 / reps
  summed = sum(total.values()) or 1.0
  rows = [(k, v, v / summed) for k, v in total.most_common(top)]
  return rows
