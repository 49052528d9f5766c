"""`--isa avx2` for the benchmarks: cap XLA and PyTorch to AVX2, as on a CPU without AVX-512.

Both frameworks read these settings when they load, so a benchmark calls `cap_from_argv`
before it imports either, and prints `describe()` in its banner.
"""

import getpass
import os
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
                      help="avx2: cap XLA and PyTorch to AVX2 (read before either loads)")


def describe(isa):
  return (f"isa: {isa} (XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, "
          f"ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY', 'unset')}, "
          f"ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', 'unset')}, "
          f"torch.compile cache {os.environ.get('TORCHINDUCTOR_CACHE_DIR', 'default')})")
