"""host_memory: XLA:CPU's scratch buffer is reused between calls instead of faulted in anew."""

import json
import subprocess
import sys

import pytest

from helpers import ROOT

from hemnet_jax.cli import host_memory

# How many of 20 calls of a jitted function with a 128 MiB scratch buffer fault in more
# than half of it, in a fresh process (the malloc settings must precede JAX's threads).
_PROBE = r"""
import json, resource
from hemnet_jax.cli import host_memory
took = host_memory.reuse_freed_memory()
import jax, jax.numpy as jnp
x = jnp.ones((4096, 4096))
f = jax.jit(lambda x: jnp.sum(jnp.cumsum(jnp.sin(x), axis=0)[::7]))
compiled = f.lower(x).compile()
pages = compiled.memory_analysis().temp_size_in_bytes / 4096
faulting = 0
for i in range(25):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  compiled(x).block_until_ready()
  after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  faulting += i >= 5 and after - before > pages / 2  # after 5 warm-up calls
print(json.dumps({"took": took, "faulting_calls": int(faulting), "pages": pages}))
"""


def _probe(reuse):
  env = {"HEMNET_REUSE_HOST_MEMORY": "1" if reuse else "0", "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
  proc = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_scratch_buffer_is_not_faulted_in_each_call():
  reused, default = _probe(reuse=True), _probe(reuse=False)
  assert not default["took"]
  if not reused["took"]:  # not glibc: nothing to check but that it said so
    assert not sys.platform.startswith("linux") or not _has_glibc()
    return
  # glibc's default maps the 128 MiB buffer afresh on each call: every call faults it in.
  assert default["faulting_calls"] >= 18, default
  # Kept, most calls reuse it; some still grow the heap by the buffer's size instead of
  # reusing the freed block (fragmentation: 0-5 of 20 calls seen).
  assert reused["faulting_calls"] <= 10, reused


def _has_glibc():
  import ctypes
  return hasattr(ctypes.CDLL(None), "gnu_get_libc_version")


def test_opt_out(monkeypatch):
  monkeypatch.setenv("HEMNET_REUSE_HOST_MEMORY", "0")
  assert host_memory.reuse_freed_memory() is False


# What reuse_freed_memory() decides in a fresh process with this environment.
_DECIDE = r"""
import json, sys
from hemnet_jax.cli import host_memory
took = host_memory.reuse_freed_memory()
print(json.dumps({"took": took, "active": host_memory.ACTIVE, "reason": host_memory.REASON,
                  "jax_imported": "jax" in sys.modules}))
"""


def _decide(**env):
  env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", **env}
  proc = subprocess.run([sys.executable, "-c", _DECIDE], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_an_accelerator_backend_leaves_malloc_alone():
  for env in ({"JAX_PLATFORMS": "cuda"}, {"JAX_PLATFORMS": "tpu,cpu"},
              {"JAX_PLATFORM_NAME": "gpu"}):
    out = _decide(**env)
    assert out["took"] is False and out["active"] is False, (env, out)
    assert out["reason"].startswith("an accelerator trains: JAX_PLATFORM"), out
    assert not out["jax_imported"]  # decided before JAX (and its threads) start


def test_the_cpu_backend_keeps_freed_memory():
  out = _decide(JAX_PLATFORMS="cpu")
  if not _has_glibc():
    assert out["took"] is False and out["reason"] in ("not glibc", "not Linux")
    return
  assert out["took"] is True and out["active"] is True, out
  assert out["reason"] == "the CPU trains: JAX_PLATFORMS=cpu"


def test_without_jax_platforms_an_installed_runtime_with_its_device_decides(monkeypatch):
  monkeypatch.delenv("JAX_PLATFORMS", raising=False)
  monkeypatch.delenv("JAX_PLATFORM_NAME", raising=False)
  monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
  plugins = [("xla_cuda12", "cuda")]
  monkeypatch.setattr(host_memory, "accelerator_plugins", lambda: plugins)
  files = {"cuda": ["/dev/nvidia0"]}
  monkeypatch.setattr(host_memory.glob, "glob",
                      lambda pattern: files.get("cuda", []) if "nvidia" in pattern else [])
  assert host_memory.cpu_trains() == (False, "xla_cuda12 installed and /dev/nvidia0 present")
  monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # every GPU hidden: JAX falls back to the CPU
  assert host_memory.cpu_trains()[0] is True
  monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
  files.clear()  # the plugin without a GPU: the CPU trains
  assert host_memory.cpu_trains() == (True, "no accelerator runtime with its device")
  plugins[:] = [("libtpu", "tpu")]
  monkeypatch.setattr(host_memory.glob, "glob",
                      lambda pattern: ["/dev/accel0"] if "accel" in pattern else [])
  assert host_memory.cpu_trains() == (False, "libtpu installed and /dev/accel0 present")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")  # set, it decides
  assert host_memory.cpu_trains() == (True, "JAX_PLATFORMS=cpu")


def test_plugins_are_found_by_their_package_names(monkeypatch, tmp_path):
  for name in ("jax_cuda12_plugin", "libtpu", "jax_rocm60_plugin", "unrelated"):
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("raise ImportError('never imported')\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  found = dict(host_memory.accelerator_plugins())
  expected = {"jax_cuda12_plugin": "cuda", "jax_rocm60_plugin": "rocm", "libtpu": "tpu"}
  assert {k: found.get(k) for k in expected} == expected and "unrelated" not in found


# A program's set-up in a fresh process; prints what it ended up with. Run as
# `python -c _PROGRAM a b`, so that a restart must carry the arguments over.
_PROGRAM = r"""
import json, os, sys
from hemnet_jax.cli import host_memory
host_memory.set_up(restart=True)
print(json.dumps({"preload": os.environ.get("LD_PRELOAD"), "chosen": host_memory.preloaded_allocator(),
                  "banner": host_memory.allocator(), "kept": host_memory.ACTIVE, "argv": sys.argv[1:]}))
"""


def _program(**env):
  env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", **env}
  return subprocess.run([sys.executable, "-c", _PROGRAM, "a", "b"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)


def _unloaded_system_library():
  """A path to a library that a bare Python has not loaded, harmless to preload: glibc's
  libanl (asynchronous name lookup), which every glibc system has."""
  import ctypes.util
  name = ctypes.util.find_library("anl")
  assert name, "glibc's libanl not found"
  ctypes.CDLL(name)
  with open("/proc/self/maps") as f:
    return next(line.split()[-1] for line in f if f"/{name}" in line)


def test_a_program_restarts_once_with_the_chosen_allocator_preloaded():
  if not _has_glibc():  # LD_PRELOAD and /proc/self/maps: what is tested does not exist there
    pytest.skip("not glibc")
  lib = _unloaded_system_library()
  proc = _program(HEMNET_ALLOCATOR=lib, JAX_PLATFORMS="cpu")
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 1, lines  # the first process printed nothing: it was replaced
  out = json.loads(lines[0])
  assert out["preload"] == lib and out["chosen"] == lib, out
  assert out["banner"] == f"{lib} preloaded", out  # and it is mapped in the new process
  assert out["argv"] == ["a", "b"] and out["kept"] is False, out  # glibc's malloc left alone


def test_no_restart_for_glibc_or_where_an_accelerator_trains():
  for env in ({"HEMNET_ALLOCATOR": "glibc", "JAX_PLATFORMS": "cpu"},
              {"HEMNET_REUSE_HOST_MEMORY": "0", "JAX_PLATFORMS": "cpu"},
              {"JAX_PLATFORMS": "cuda"}):
    proc = _program(**env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["preload"] is None and out["chosen"] is None, (env, out)


def test_a_missing_allocator_file_is_a_one_line_error():
  proc = _program(HEMNET_ALLOCATOR="/no/such/libjemalloc.so.2", JAX_PLATFORMS="cpu")
  assert proc.returncode == 1 and proc.stdout == "", proc
  assert proc.stderr.strip().splitlines() == [
      "error: HEMNET_ALLOCATOR=/no/such/libjemalloc.so.2: no such file (a shared library to "
      "preload, or 'auto', or 'glibc')"]


def test_the_allocator_is_chosen_from_what_is_installed(monkeypatch):
  for var in ("HEMNET_ALLOCATOR", "HEMNET_REUSE_HOST_MEMORY", "MALLOC_CONF"):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  installed = {"jemalloc": "libjemalloc.so.2"}
  find = installed.get
  lib, env, why = host_memory.choose_allocator(find)  # told to keep freed pages
  assert (lib, why) == ("libjemalloc.so.2", "jemalloc is installed")
  assert env == {"MALLOC_CONF": "dirty_decay_ms:-1,muzzy_decay_ms:-1"}
  monkeypatch.setenv("MALLOC_CONF", "narenas:2")  # the user's own settings win
  assert host_memory.choose_allocator(find)[:2] == ("libjemalloc.so.2", {})
  installed["tcmalloc_minimal"] = "libtcmalloc_minimal.so.4"  # preferred
  assert host_memory.choose_allocator(find) == ("libtcmalloc_minimal.so.4", {}, "tcmalloc is installed")
  assert host_memory.choose_allocator({}.get)[0] is None  # none installed: glibc
  monkeypatch.setenv("JAX_PLATFORMS", "tpu")
  assert host_memory.choose_allocator(find)[0] is None
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("HEMNET_ALLOCATOR", "glibc")
  assert host_memory.choose_allocator(find)[0] is None


def test_the_restart_adds_the_allocator_to_ld_preload_unless_one_is_loaded(monkeypatch):
  for var in ("HEMNET_ALLOCATOR", "HEMNET_REUSE_HOST_MEMORY", "HEMNET_ALLOCATOR_PRELOADED"):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("LD_PRELOAD", "libmine.so")
  calls = []
  monkeypatch.setattr(host_memory.os, "execve", lambda *a: calls.append(a))
  find = {"tcmalloc_minimal": "libtcmalloc_minimal.so.4"}.get
  monkeypatch.setattr(host_memory, "loaded_allocator", lambda: None)
  host_memory.preload_allocator(find)
  (path, argv, env), = calls
  assert path == sys.executable and argv[0] == sys.executable
  assert env["LD_PRELOAD"] == "libtcmalloc_minimal.so.4:libmine.so"  # the user's kept, after
  assert env["HEMNET_ALLOCATOR_PRELOADED"] == "libtcmalloc_minimal.so.4"
  calls.clear()
  monkeypatch.setattr(host_memory, "loaded_allocator", lambda: "jemalloc")  # the user's choice
  host_memory.preload_allocator(find)
  assert calls == []
  monkeypatch.setenv("HEMNET_ALLOCATOR", "")  # empty: auto, as unset
  host_memory.preload_allocator(find)
  assert calls == []
