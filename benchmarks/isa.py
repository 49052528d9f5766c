"""`--isa avx2` for the benchmarks: cap XLA and PyTorch to AVX2, as on a CPU without AVX-512.

Both frameworks read these settings when they load, so a benchmark calls `cap_from_argv`
before it imports either, and prints `describe()` in its banner.
"""

import os


def cap_from_argv(argv):
  if "--isa=avx2" in argv or ("--isa", "avx2") in zip(argv, argv[1:]):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_max_isa=AVX2").strip()
    os.environ["ATEN_CPU_CAPABILITY"] = "avx2"
    os.environ["ONEDNN_MAX_CPU_ISA"] = "AVX2"


def add_flag(parser):
  parser.add_argument("--isa", choices=("native", "avx2"), default="native",
                      help="avx2: cap XLA and PyTorch to AVX2 (read before either loads)")


def describe(isa):
  return (f"isa: {isa} (XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, "
          f"ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY', 'unset')}, "
          f"ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', 'unset')})")
