"""host_memory: XLA:CPU's scratch buffer is reused between calls instead of faulted in anew."""

import json
import subprocess
import sys

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
