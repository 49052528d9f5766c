"""What clusters do to a run: kills at any moment, damaged checkpoints, changed configs, a full
disk, unreadable inputs; each ends in a resumable workdir and at most one error line."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import ROOT, main_cmd, tiny_config, tiny_flags

from hemnet_jax.training import checkpoints, config as config_lib, drift, loop, preemption

# Short runs evaluated on 4 validation images.
SHORT = {"train.num_steps": 4, "train.checkpoint_every": 2, "train.log_every": 2,
         "data.eval_split": "validation[:4]", "data.eval_batch_size": 4}


def env(data_dir, **extra):
  return {**os.environ, "TFDS_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1", **extra}


def results(workdir):
  return json.loads((pathlib.Path(workdir) / "results.json").read_text())


def truncate_largest_file(step_dir):
  files = sorted((p for p in pathlib.Path(step_dir).rglob("*") if p.is_file()),
                 key=lambda p: p.stat().st_size)
  with open(files[-1], "r+b") as f:
    f.truncate(files[-1].stat().st_size // 3)


def snapshot(directory):
  return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in pathlib.Path(directory).rglob("*")}


@pytest.fixture(scope="module")
def short_run(data_dir, tmp_path_factory):
  """A finished 4-step run (checkpoints at 2 and 4), trained in this process."""
  path = tmp_path_factory.mktemp("short_run") / "run"
  loop.train_and_evaluate(tiny_config(data_dir, **SHORT), path)
  return path


def test_killed_at_random_moments_the_rerun_ends_bit_identical(data_dir, tmp_path):
  flags = tiny_flags(**{**SHORT, "train.num_steps": 12, "train.checkpoint_every": 4})
  ref = subprocess.run(main_cmd(tmp_path / "ref", *flags), cwd=ROOT, env=env(data_dir),
                       capture_output=True, text=True, timeout=600)
  assert ref.returncode == 0, ref.stderr
  work, rng = tmp_path / "killed", np.random.default_rng(17)
  ckpts = work / "checkpoints"
  # Every write lingers 1 s before it commits, so that half the kills land inside one.
  slow = env(data_dir, **{"HEMNET_TEST_SAVE_DELAY_S": "1"})
  in_write = 0
  for kill in range(2):
    proc = subprocess.Popen(main_cmd(work, *flags), cwd=ROOT, env=slow, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    done = max(checkpoints.committed_steps(work), default=0)
    writing = lambda: [p for p in ckpts.glob("*.orbax-checkpoint-tmp*")
                       if int(p.name.split(".")[0]) > done]
    # Kill 0 lands inside the write of a new step, kill 1 anywhere after one more commit.
    inside = kill % 2 == 0
    ready = writing if inside else lambda: max(checkpoints.committed_steps(work), default=0) > done
    t0 = time.time()
    while not ready():
      assert proc.poll() is None and time.time() - t0 < 300, "the run ended before the kill"
      time.sleep(0.02)
    time.sleep(rng.uniform(0, 0.8 if inside else 1.5))
    in_write += inside and bool(writing())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (work / "results.json").exists()
  assert in_write >= 1  # at least one kill hit a write in progress
  final = subprocess.run(main_cmd(work, *flags), cwd=ROOT, env=slow, capture_output=True,
                         text=True, timeout=600)
  assert final.returncode == 0, final.stderr
  assert "Resumed from" in final.stdout
  a, b = results(tmp_path / "ref"), results(work)
  assert a["step"] == b["step"] == 12
  assert a["confusion_matrix"] == b["confusion_matrix"] and a["miou"] == b["miou"]


def test_damaged_latest_checkpoint_falls_back_and_is_kept(data_dir, short_run, tmp_path, capsys):
  work = tmp_path / "run"
  shutil.copytree(short_run, work)
  truncate_largest_file(work / "checkpoints" / "4")
  again = loop.train_and_evaluate(tiny_config(data_dir, **SHORT), work)
  out = capsys.readouterr().out
  assert f"Checkpoint {work / 'checkpoints' / '4'} is damaged" in out
  assert "Resuming from step 2, the newest restorable checkpoint." in out
  kept = list((work / "damaged_checkpoints").glob("4.*"))
  assert len(kept) == 1 and any(p.is_file() for p in kept[0].rglob("*"))  # moved, not deleted
  # Steps 3 and 4 trained again from step 2 give the same model as the first time.
  assert again["confusion_matrix"] == results(short_run)["confusion_matrix"]
  assert checkpoints.committed_steps(work) == [2, 4]


def test_no_restorable_checkpoint_is_one_error_line(data_dir, short_run, tmp_path):
  work = tmp_path / "run"
  shutil.copytree(short_run, work)
  for step in (2, 4):
    truncate_largest_file(work / "checkpoints" / str(step))
  before = snapshot(work)
  res = subprocess.run(main_cmd(work, *tiny_flags(**SHORT)), cwd=ROOT, env=env(data_dir),
                       capture_output=True, text=True, timeout=600)
  assert res.returncode == 1
  # Exactly the one line: no traceback, no asyncio noise from orbax at shutdown.
  assert res.stderr.splitlines() == [
      f"error: no checkpoint in {work / 'checkpoints'} can be restored (steps [2, 4] are "
      f"damaged). Move {work / 'checkpoints'} aside to start this run again from step 0, or put "
      "back an intact copy."], res.stderr
  assert snapshot(work) == before


def test_a_changed_config_stops_before_touching_the_workdir(data_dir, short_run, tmp_path):
  work = tmp_path / "run"
  shutil.copytree(short_run, work)
  before = snapshot(work)
  changed = tiny_config(data_dir, **SHORT, **{"hem.eta": 0.8, "hem.num_bases": 8})
  with pytest.raises(ValueError) as e:
    loop.train_and_evaluate(changed, work)
  assert "hem.eta: 0.5 -> 0.8; hem.num_bases: 4 -> 8" in str(e.value)
  assert "--allow_config_change" in str(e.value)
  assert snapshot(work) == before

  # Logging, saving and evaluation settings may change; the stored values are resolved ones
  # (temperature sqrt(C)), compared with this config's resolved values.
  harmless = tiny_config(data_dir, **{**SHORT, "train.log_every": 1, "train.checkpoint_every": 1,
                                      "data.eval_batch_size": 2, "eval.flip": True,
                                      "train.summary_images": 0})
  assert harmless.hem.temperature is None
  assert drift.check(work, config_lib.validate(harmless)) == {}
  schedule = config_lib.validate(tiny_config(data_dir, **{**SHORT, "train.num_steps": 6}))
  with pytest.raises(ValueError, match=r"train.num_steps: 4 -> 6"):
    drift.check(work, schedule)
  changes = drift.check(work, schedule, allow_change=True)
  assert changes == {"train.num_steps": (4, 6)}
  drift.record(work, changes, 4)
  line = json.loads((work / drift.CHANGES).read_text())
  assert line["resumed_from_step"] == 4 and line["changes"] == {"train.num_steps": {"old": 4, "new": 6}}


DISK_FULL = r"""
import resource, signal, sys
import numpy as np
sys.path.insert(0, ".")
from hemnet_jax.training import checkpoints
workdir = sys.argv[1]
mngr = checkpoints.manager(workdir, keep=3)
w = np.random.default_rng(0).normal(size=200_000).astype(np.float32)  # 800 kB, incompressible
checkpoints.save(mngr, 1, {"w": w})
checkpoints.wait(mngr)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))  # no file may grow past 100 kB
try:
  checkpoints.save(mngr, 2, {"w": w + 1})
  checkpoints.wait(mngr)
  print("SAVED")
except checkpoints.CheckpointError as e:
  print("ERROR " + str(e))
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
checkpoints.close(mngr)
state, step = checkpoints.restore(workdir, {"w": w})
print("RESTORED", step, bool(np.array_equal(state["w"], w)), checkpoints.committed_steps(workdir))
"""


def test_a_full_disk_stops_with_the_workdir_named_and_the_last_checkpoint_intact(tmp_path):
  res = subprocess.run([sys.executable, "-c", DISK_FULL, str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr[-3000:]
  error = [l for l in res.stdout.splitlines() if l.startswith("ERROR ")]
  assert error, res.stdout
  assert f"writing a checkpoint under {tmp_path} failed (the disk is full)" in error[0]
  assert "(steps [1]) are intact" in error[0]
  assert "RESTORED 1 True [1]" in res.stdout


def launch_two(workdir, logs, port, data_dir):
  """launch/local.sh with two processes of a long run; (launcher, {process index: pid})."""
  flags = tiny_flags(**{**SHORT, "train.num_steps": 10_000, "train.checkpoint_every": 10_000})
  cmd = ["launch/local.sh", "-n", "2", "-p", str(port), "-l", str(logs), "--",
         *main_cmd(workdir, *flags, "--heartbeat_timeout=10")]
  launcher = subprocess.Popen(cmd, cwd=ROOT, env=env(data_dir), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
  pids, t0 = {}, time.time()
  try:
    while len(pids) < 2:
      assert launcher.poll() is None and time.time() - t0 < 60
      for pid in subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True,
                                text=True).stdout.split():
        try:
          args = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:  # a short-lived child of the launcher, gone since pgrep listed it
          continue
        pids.update({int(a.split(b"=")[1]): int(pid) for a in args
                     if a.startswith(b"--process_id=")})
      time.sleep(0.1)
  except BaseException:
    stop(launcher)
    raise
  return launcher, pids


def stop(launcher):
  """Kills a launcher still running and its processes (a failed test leaves no 10,000-step run)."""
  if launcher.poll() is None:
    subprocess.run(["pkill", "-KILL", "-P", str(launcher.pid)], check=False)
    launcher.kill()
    launcher.wait(timeout=60)


def wait_for_line(log, text, launcher, timeout=400):
  t0 = time.time()
  while not (log.exists() and text in log.read_text()):
    assert launcher.poll() is None, log.read_text()[-3000:]
    assert time.time() - t0 < timeout
    time.sleep(0.1)


def test_hosts_share_a_preemption_notice_and_name_a_dead_peer(data_dir, tmp_path):
  launchers = []
  try:
    _preemption_then_a_dead_peer(data_dir, tmp_path, launchers)
  finally:
    for launcher in launchers:
      stop(launcher)


def _preemption_then_a_dead_peer(data_dir, tmp_path, launchers):
  work, logs = tmp_path / "mp", tmp_path / "logs"
  # SIGTERM to process 1 alone: both save the same step and exit.
  launcher, pids = launch_two(work, logs, 12393, data_dir)
  launchers.append(launcher)
  wait_for_line(logs / "process_0.log", "step 2/", launcher)
  os.kill(pids[1], signal.SIGTERM)
  launcher.wait(timeout=120)
  log0 = (logs / "process_0.log").read_text()
  saved = [l for l in log0.splitlines() if l.startswith("SIGTERM: saved a checkpoint at step")]
  assert saved and saved[0].endswith("exiting (the notice reached process [1]).")
  step = int(saved[0].split("step ")[1].split(";")[0])
  assert checkpoints.committed_steps(work) == [step]

  # Process 1 killed: process 0 stops within the heartbeat timeout, naming it.
  launcher, pids = launch_two(work, tmp_path / "logs2", 12394, data_dir)
  launchers.append(launcher)
  wait_for_line(tmp_path / "logs2" / "process_0.log", f"step {step + 2}/", launcher)
  os.kill(pids[1], signal.SIGKILL)
  launcher.wait(timeout=120)  # a hang fails here
  log0 = (tmp_path / "logs2" / "process_0.log").read_text()
  # The PeerWatch's line, last: not JAX's abort with its stack trace.
  last = log0.rstrip().splitlines()[-1]
  assert last.startswith("error: process 1 of this 2-process run stopped"), log0[-3000:]


class FakeStore:
  """The coordination service's key-value store as PeerWatch uses it; `down` makes it fail."""

  def __init__(self):
    self.values, self.down = {}, False

  def key_value_set(self, key, value, allow_overwrite=False):
    if self.down:
      raise RuntimeError("UNAVAILABLE: the coordinator is gone")
    assert allow_overwrite
    self.values[key] = value

  def key_value_dir_get(self, prefix):
    if self.down:
      raise RuntimeError("UNAVAILABLE: the coordinator is gone")
    return [(k, v) for k, v in self.values.items() if k.startswith(prefix)]


def wait_until(condition, seconds):
  t0 = time.monotonic()
  while not condition() and time.monotonic() - t0 < seconds:
    time.sleep(0.05)
  return condition()


def test_peer_watch_names_a_quiet_peer_but_not_one_that_finished():
  store, lost = FakeStore(), {0: [], 1: [], 2: []}
  watches = [preemption.PeerWatch(1.0, lost[i].append, store, i, 3) for i in range(3)]
  time.sleep(2)
  assert lost == {0: [], 1: [], 2: []}  # all beating
  watches[2].stop()  # its run ended: the others stop listening for it
  time.sleep(2)
  assert lost == {0: [], 1: [], 2: []}
  watches[1].done.set()  # process 1 dies: its beats stop without a word
  assert wait_until(lambda: lost[0], 3), "process 0 never noticed"
  assert str(lost[0][0]).startswith("process 1 of this 3-process run stopped (killed, crashed "
                                    "or unreachable), so process 0 stops too.")
  assert watches[0].verdict is lost[0][0] and watches[2].verdict is None
  watches[0].stop()

  store, lost = FakeStore(), {0: [], 1: []}
  watches = [preemption.PeerWatch(1.0, lost[i].append, store, i, 2) for i in range(2)]
  time.sleep(0.5)
  store.down = True  # process 0, which holds the store, is gone
  assert wait_until(lambda: lost[1], 3)
  assert str(lost[1][0]).startswith("process 0 of this 2-process run stopped")
  for w in watches:
    w.stop()
