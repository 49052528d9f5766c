"""Fixtures shared by the test files."""

import atexit
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import types

import filelock

# Many tests compile the same tiny programs, in this process and in subprocesses
# (which inherit the environment): a per-session persistent compilation cache
# saves most of that time. Set before anything imports JAX.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="hemnet_jax_jit_")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# Most tests compile tiny programs and run them a few times: compiling is their cost, and
# unoptimised XLA compiles faster (BENCHMARKS.md, "The test suite"). The few that run a big
# network ask for `optimised_xla`. Set here, it holds in this process and every subprocess.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# XLA:CPU's classic fusion emitters compile them faster still than its newer ones (same
# section). An XLA that no longer knows the flag would abort at start-up, so it is added only
# where a probe process accepts it; the xdist workers inherit the controller's environment.
_CLASSIC_FUSION = "--xla_cpu_use_fusion_emitters=false"
if os.environ.get("HEMNET_TEST_XLA_PROBED") is None:
  os.environ["HEMNET_TEST_XLA_PROBED"] = "1"
  _flags = f"{os.environ.get('XLA_FLAGS', '')} {_CLASSIC_FUSION}".strip()
  _probe = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"],
                          env={**os.environ, "XLA_FLAGS": _flags, "JAX_PLATFORMS": "cpu"},
                          capture_output=True, timeout=300)
  if _probe.returncode == 0:
    os.environ["XLA_FLAGS"] = _flags

import pytest  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402
from helpers import ROOT, main_cmd, tiny_config, tiny_flags  # noqa: E402

from hemnet_jax.data import pipeline  # noqa: E402  (importing it registers the builders)

TESTDATA = pathlib.Path(__file__).resolve().parent / "testdata"


@pytest.fixture
def optimised_xla(monkeypatch):
  """XLA's optimisations back on, in this process and in its subprocesses: for a test that runs
  a big network, where unoptimised code would cost more than compiling saves."""
  import jax  # pylint: disable=import-outside-toplevel
  monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "0")
  before = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", False)
  yield
  jax.config.update("jax_disable_most_optimizations", before)


def made_once(tmp_path_factory, name, make):
  """A directory made once per test session and shared by the xdist workers: the first worker
  to ask calls make(path) while any other waits, so no worker repeats a minute of set-up."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # the session's directory, above each worker's own
  path, made = root / f"shared_{name}", root / f"shared_{name}.made"
  with filelock.FileLock(root / f"shared_{name}.lock"):
    if not made.exists():
      shutil.rmtree(path, ignore_errors=True)
      path.mkdir()
      make(path)
      made.touch()
  return path


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """The built-in dataset, generated once per test session."""
  return made_once(tmp_path_factory, "tfds",
                   lambda d: pipeline.load_split(tiny_config(d).data, "train"))


def _prepare_fake_voc(data_dir):
  builder = tfds.builder("voc_aug", data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(TESTDATA / "voc_aug")))


@pytest.fixture(scope="session")
def fake_voc(tmp_path_factory):
  """(data_dir, manual_dir): voc_aug prepared from the committed fake archives."""
  return made_once(tmp_path_factory, "tfds_voc", _prepare_fake_voc), TESTDATA / "voc_aug"


# A 2-step tiny demo run (checkpoints at steps 1 and 2) evaluated on 4 validation images after
# each step (the periodic evaluation and the final one: test_summaries.py reads both).
TINY_RUN = {"train.num_steps": 2, "train.checkpoint_every": 1, "data.eval_split": "validation[:4]",
            "data.eval_batch_size": 4, "train.eval_every": 1,
            "train.summary_images": 3}


@pytest.fixture(scope="session")
def tiny_run(data_dir, tmp_path_factory):
  """The run's path, its config overrides (on top of helpers.TINY) and checkpoint steps."""
  def train(path):
    env = {**os.environ, "TFDS_DATA_DIR": str(data_dir)}
    res = subprocess.run(main_cmd(path, *tiny_flags(**TINY_RUN)), cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
  path = made_once(tmp_path_factory, "tiny_run", train)
  return types.SimpleNamespace(path=path, overrides=TINY_RUN, steps=[1, 2])
