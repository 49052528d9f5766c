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


def test_device_check_smoke_writes_the_three_tables_rows(tmp_path):
  """benchmarks/device_check.sh --smoke: every part runs (tiny shapes) and the rows file has
  rows of BENCHMARKS.md's three tables, with numbers, in their column counts."""
  import os
  out = tmp_path / "dc"
  env = {**os.environ, "PYTHON": sys.executable}
  proc = subprocess.run(["bash", "benchmarks/device_check.sh", "--smoke", "--out", str(out)],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
  assert "all parts done" in proc.stdout
  assert "all parts done" in (out / "device_check.log").read_text()
  text = (out / "device_rows.md").read_text()
  tables = {}
  for block in text.split("### ")[1:]:
    title, *lines = block.strip().splitlines()
    tables[title] = [line for line in lines if line.startswith("| ")]
  assert set(tables) == {"The device's matmul limit", "The HEM unit, forward + backward",
                         "The train step"}
  benchmarks_md = (ROOT / "BENCHMARKS.md").read_text()
  num, flops = r"\d+\.\d+", r"\d+\.\d+ [GT]FLOP/s"
  # Per row, the cells after the device's, as patterns (None: any text).
  expected = {
      "The device's matmul limit": [[rf"{flops} \(at \d+\^3\)", None]],
      "The HEM unit, forward + backward": [[rf"{num} ms"] * 3 + [rf"\*\*{num}x\*\*"] * 2
                                           + [rf"\*\*\d+ %\*\* \({flops} of {flops}\)"]],
      "The train step": [[None, rf"{num} s", rf"{num} ms", num, rf"\*\*\d+ %\*\* .*", r"\d+ MiB"],
                         [None, None, rf"{num} ms \(mean\)", num, rf"\*\*\d+ %\*\* .*", ""]],
  }
  for title, (header, _, *rows) in tables.items():
    assert header in benchmarks_md, header  # BENCHMARKS.md's own columns
    assert len(rows) == len(expected[title]), rows
    for row, patterns in zip(rows, expected[title]):
      cells = [c.strip() for c in row.strip().strip("|").split("|")]
      assert len(cells) == header.count("|") - 1, row
      for cell, pattern in zip(cells[1:], patterns):
        assert pattern is None or re.fullmatch(pattern, cell), (pattern, cell)


def test_device_check_imports_neither_tfds_nor_grain_nor_tensorboardx():
  """The accelerator machine it runs on has jax, flax, optax, orbax and torch, not these."""
  code = ("import sys; from benchmarks import device_check, hem_layer, train_step; "
          "from hemnet_jax.training import meter; "
          "print(sorted({m.split('.')[0] for m in sys.modules}))")
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  loaded = set(eval(proc.stdout.strip().splitlines()[-1]))  # noqa: S307 (our own output)
  assert "jax" in loaded and "flax" in loaded
  assert not loaded & {"tensorflow_datasets", "tensorflow", "grain", "array_record", "tensorboardX"}
