"""The benchmarks still run and print what scripts read (tiny shapes; no timing asserted)."""

import re
import subprocess
import sys

from helpers import ROOT


def _run(*args):
  proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def test_hem_layer_prints_the_summary_line_last():
  out = _run("benchmarks.hem_layer", "--batch", "1", "--hw", "6", "--channels", "16",
             "--bases", "4", "--reps", "1", "--rounds", "1", "--sections", "compare,eta,depth")
  lines = out.strip().splitlines()
  assert re.fullmatch(r"summary: speedup_vs_eager=\d+\.\d\d speedup_vs_compile=\d+\.\d\d "
                      r"peak_fraction=\d+\.\d\d", lines[-1]), lines[-1]
  assert any(line.startswith("device: ") for line in lines)
  assert "the highway's overhead" in out
  # The depth table: one row per T in 1, 2, 4, 8, 16, with and without remat.
  rows = [line for line in lines if re.match(r"\s*(1|2|4|8|16)\s+\d", line)]
  assert [int(r.split()[0]) for r in rows] == [1, 2, 4, 8, 16]


def test_peak_prints_float32():
  out = _run("benchmarks.peak")
  assert re.search(r"float32 jnp.dot peak: [\d.]+ GFLOP/s", out), out
