"""`--isa avx2` for the benchmarks: cap XLA and PyTorch to AVX2, as far as they can be capped.

Both frameworks read these settings when they load, so a benchmark calls `cap_from_argv`
before it imports either, and prints `describe()` in its banner.

The cap is not the same on both sides. PyTorch's kernels (ATen's and oneDNN's) obey it.
`--xla_cpu_max_isa` caps only the code XLA generates: its matmuls run in a kernel library
(YNNPACK, in jax 0.10) that picks its kernels from the CPU's own feature bits, so on a CPU
with AVX-512 they stay AVX-512 under the cap (`perf` shows `ynn::dot_fp32_..._avx512`,
BENCHMARKS.md). There, `--isa avx2` is not an AVX2 machine's measurement, and `describe()`
says so; an AVX2 figure needs a CPU without AVX-512.
"""

import getpass
import os
import re
import tempfile


def cap_from_argv(argv):
  if "--isa=avx2" in argv or ("--isa", "avx2") in zip(argv, argv[1:]):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_max_isa=AVX2").strip()
    os.environ["ATEN_CPU_CAPABILITY"] = "avx2"
    os.environ["ONEDNN_MAX_CPU_ISA"] = "AVX2"
  # torch.compile's on-disk cache does not tell PyTorch's ISA settings apart: a graph compiled
  # natively (its weights packed in oneDNN's AVX-512 layout) and loaded under the AVX2 cap
  # crashes the process with a segmentation fault. One cache per setting, however it was
  # set (--isa or the environment), unless the user chose a cache.
  os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", inductor_cache_dir())


def inductor_cache_dir():
  """A torch.compile cache directory for PyTorch's ISA settings in this environment."""
  settings = [os.environ.get(name, "").lower()
              for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")]
  tag = "_".join(v or "default" for v in settings) if any(settings) else "native"
  return os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}_{tag}")


def add_flag(parser):
  parser.add_argument("--isa", choices=("native", "avx2"), default="native",
                      help="avx2: cap PyTorch and XLA's generated code to AVX2 (read before either "
                           "loads); XLA's matmuls stay AVX-512 where the CPU has it")


def cpu_flags(cpuinfo="/proc/cpuinfo"):
  """The CPU's feature flags, from /proc/cpuinfo's first `flags` line (none where unreadable)."""
  try:
    with open(cpuinfo) as f:
      line = re.search(r"^flags\s*:(.*)$", f.read(), re.M)
  except OSError:
    return frozenset()
  return frozenset(line.group(1).split()) if line else frozenset()


def xla_gemms_escape_cap(cpuinfo="/proc/cpuinfo"):
  """Whether XLA_FLAGS caps XLA below AVX-512 on a CPU that has it: then XLA's own code is
  capped and its matmul library is not (module docstring)."""
  cap = re.findall(r"--xla_cpu_max_isa=(\w+)", os.environ.get("XLA_FLAGS", ""))
  return bool(cap) and not cap[-1].upper().startswith("AVX512") and "avx512f" in cpu_flags(cpuinfo)


def caveat(cpuinfo="/proc/cpuinfo"):
  """The line a benchmark prints beside its figures when the cap does not bind XLA's matmuls."""
  if not xla_gemms_escape_cap(cpuinfo):
    return None
  return ("caveat: this CPU has AVX-512 and XLA's matmul library picks its kernels from the "
          "CPU, not from --xla_cpu_max_isa: JAX's matmuls still run AVX-512 while PyTorch's "
          "are capped. Not an AVX2 machine's figures; measure on a CPU without AVX-512 for those.")


def describe(isa, cpuinfo="/proc/cpuinfo"):
  line = (f"isa: {isa} (XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, "
          f"ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY', 'unset')}, "
          f"ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', 'unset')}, "
          f"torch.compile cache {os.environ.get('TORCHINDUCTOR_CACHE_DIR', 'default')})")
  note = caveat(cpuinfo)
  return line if note is None else line + "\n" + note
