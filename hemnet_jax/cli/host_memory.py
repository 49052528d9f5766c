"""Keep freed host memory in the process, so XLA:CPU's scratch buffer is not faulted in anew each step.

XLA:CPU allocates one scratch buffer per executable call (over 100 MiB for the HEM unit's
forward + backward at the paper's shapes) and frees it at the end. glibc serves a request
that large from a fresh mmap and unmaps it on free, so every call page-faults the whole
buffer in again, and a large share of the CPU time goes to the kernel. With mmap off and
one arena, glibc keeps the memory on its heap and later calls reuse it
(docs/performance.md and BENCHMARKS.md have the figures).

The cost: memory freed by the process is not given back to the system until it exits,
and the heap fragments: now and then a call grows it by a new buffer instead of reusing
the freed one. Set HEMNET_REUSE_HOST_MEMORY=0 to leave glibc as it is. Without glibc
(macOS, musl) this does nothing.

It acts only where the CPU is the backend that trains: on a GPU or TPU host XLA's scratch
buffers are device memory, and one malloc arena would only slow the input pipeline's
threads. That is decided from the environment, before JAX is imported (`cpu_trains`).
"""

import ctypes
import glob
import importlib.metadata
import importlib.util
import os
import pkgutil
import sys

# mallopt parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

# The device files an accelerator runtime needs, by the kind named in its package.
_DEVICE_FILES = {"cuda": ("/dev/nvidia[0-9]*",), "rocm": ("/dev/kfd",),
                 "tpu": ("/dev/accel[0-9]*", "/dev/vfio/[0-9]*")}

ACTIVE = False  # whether reuse_freed_memory() took effect in this process
REASON = "reuse_freed_memory() not called"  # why ACTIVE is what it is (benchmark banners)


def accelerator_plugins():
  """[(package, kind)] of the accelerator runtimes JAX would load, found without importing
  JAX or them: jax_plugins entry points and namespace modules (xla_cuda12, ...), the
  jax_cuda*_plugin / jax_rocm*_plugin packages and libtpu."""
  names = set()
  try:
    names |= {e.name for e in importlib.metadata.entry_points(group="jax_plugins")}
  except Exception:  # pylint: disable=broad-except  (a broken distribution's metadata)
    pass
  spec = importlib.util.find_spec("jax_plugins")  # a namespace package: nothing runs
  if spec is not None and spec.submodule_search_locations:
    names |= {m.name for m in pkgutil.iter_modules(spec.submodule_search_locations)}
  names |= {m.name for m in pkgutil.iter_modules() if m.name == "libtpu"
            or (m.name.startswith(("jax_cuda", "jax_rocm")) and m.name.endswith("_plugin"))}
  kind = lambda name: next((k for k in _DEVICE_FILES if k in name), None)
  return sorted((name, kind(name)) for name in names if kind(name))


def device_files(kind):
  """The device files present for an accelerator kind ("cuda", "rocm", "tpu")."""
  if kind == "cuda" and os.environ.get("CUDA_VISIBLE_DEVICES", "0").strip() in ("", "-1"):
    return []  # every GPU hidden: JAX falls back to the CPU
  return sorted(f for pattern in _DEVICE_FILES[kind] for f in glob.glob(pattern))


def cpu_trains():
  """(whether the CPU is the backend JAX will train on, why), without importing JAX.

  JAX_PLATFORMS (or the older JAX_PLATFORM_NAME) decides when set: its first entry.
  Otherwise an accelerator trains if its runtime is installed and its device is present.
  """
  for var in ("JAX_PLATFORMS", "JAX_PLATFORM_NAME"):
    value = os.environ.get(var, "").strip()
    if value:
      return value.split(",")[0].strip().lower() == "cpu", f"{var}={value}"
  for name, kind in accelerator_plugins():
    files = device_files(kind)
    if files:
      return False, f"{name} installed and {files[0]} present"
  return True, "no accelerator runtime with its device"


def reuse_freed_memory():
  """Tell glibc's malloc to keep large freed blocks, where the CPU trains; True if it took effect.

  Call it before importing jax (or anything that starts threads): threads that
  already have their own malloc arena keep mmapping their large blocks.
  """
  global ACTIVE, REASON
  if os.environ.get("HEMNET_REUSE_HOST_MEMORY", "1") == "0":
    REASON = "HEMNET_REUSE_HOST_MEMORY=0"
    return False
  cpu, why = cpu_trains()
  if not cpu:
    REASON = f"an accelerator trains: {why}"
    return False
  if not sys.platform.startswith("linux"):
    REASON = "not Linux"
    return False
  try:
    libc = ctypes.CDLL(None)
    libc.gnu_get_libc_version  # glibc only: musl's mallopt is a no-op
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    REASON = "not glibc"
    return False
  # One arena: a thread's own arena falls back to mmap for blocks over its 64 MiB heap.
  ACTIVE = bool(mallopt(_M_ARENA_MAX, 1) and mallopt(_M_MMAP_MAX, 0)
                and mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1))
  REASON = f"the CPU trains: {why}" if ACTIVE else "glibc's mallopt refused"
  return ACTIVE
