"""The launch scripts: --help, argument checks, and the commands they print."""

import os
import subprocess

import pytest
from helpers import ROOT


def sh(*args, env=None):
  return subprocess.run(list(args), cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize("script", ["launch/local.sh", "launch/tpu_pod.sh", "launch/slurm.sh"])
def test_help(script):
  res = sh(script, "--help")
  assert res.returncode == 0 and res.stdout.startswith("usage:")


def test_local_checks_arguments_and_prints_commands():
  res = sh("launch/local.sh", "-n", "two", "--", "true")
  assert res.returncode == 2 and "-n must be a positive integer" in res.stderr
  res = sh("launch/local.sh", "-n", "2")
  assert res.returncode == 2 and "no command" in res.stderr
  res = sh("launch/local.sh", "-n", "3", "-p", "23456", "--dry-run", "--", "python", "-m", "x")
  assert res.returncode == 0
  for i in range(3):
    assert (f"python -m x --coordinator_address=localhost:23456 --num_processes=3 "
            f"--process_id={i}") in res.stdout
  # The simulated devices join the caller's XLA flags, which stay in force.
  res = sh("launch/local.sh", "-n", "1", "--dry-run", "--", "python", "-m", "x",
           env={**os.environ, "XLA_FLAGS": "--xla_cpu_use_fusion_emitters=false"})
  assert ("XLA_FLAGS=--xla_cpu_use_fusion_emitters=false\\ "
          "--xla_force_host_platform_device_count=1 python -m x") in res.stdout, res.stdout


def test_tpu_pod_checks_arguments_and_prints_commands():
  res = sh("launch/tpu_pod.sh", "--zone", "z", "--workdir", "gs://b/w", "--dry-run")
  assert res.returncode == 2 and "--name is required" in res.stderr
  res = sh("launch/tpu_pod.sh", "--name", "n", "--zone", "z", "--workdir", "/local", "--dry-run")
  assert res.returncode == 2 and "gs://" in res.stderr
  res = sh("launch/tpu_pod.sh", "--name", "n", "--zone", "z", "--workdir", "gs://b/w", "--dry-run")
  assert res.returncode == 0
  lines = res.stdout.splitlines()
  assert [l.split()[1] for l in lines] == ["gcloud", "git", "gcloud", "gcloud", "gcloud", "gcloud"]
  assert [l.split()[5] for l in lines if " gcloud " in l] == ["create", "scp", "ssh", "ssh", "delete"]
  assert " archive " in lines[1] and lines[1].endswith(" HEAD")  # committed files: no .venv, data
  assert "--distributed" in lines[4] and "--worker=all" in lines[4]


def test_slurm_checks_arguments_and_prints_the_job():
  res = sh("launch/slurm.sh", "--nodes", "2", "--workdir", "/shared")
  assert res.returncode == 2 and "--gpus-per-node" in res.stderr
  res = sh("launch/slurm.sh", "--nodes", "2", "--gpus-per-node", "4", "--workdir", "/shared",
           "--dry-run")
  assert res.returncode == 0
  assert "#SBATCH --nodes=2" in res.stdout and "#SBATCH --ntasks-per-node=4" in res.stdout
  assert "--distributed" in res.stdout


def test_slurm_quotes_paths_with_spaces():
  res = sh("launch/slurm.sh", "--nodes", "1", "--gpus-per-node", "1", "--workdir", "/shared/my run",
           "--dry-run", "--", "--config.train.num_steps=5")
  assert res.returncode == 0
  assert r"--workdir /shared/my\ run --distributed --config.train.num_steps=5" in res.stdout
