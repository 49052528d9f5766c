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

Better still is an allocator with per-thread caches for large blocks. XLA:CPU's GEMM
library allocates its packing buffers from its worker threads, many per train step
(BENCHMARKS.md counts them); with glibc's one arena they queue on its lock and search its
fragmented heap.
Where tcmalloc or jemalloc is installed (Debian: libtcmalloc-minimal4, libjemalloc2), a
program restarts itself once with it preloaded (`preload_allocator`, before anything else);
HEMNET_ALLOCATOR=glibc keeps glibc, HEMNET_ALLOCATOR=/path/lib.so names another.
"""

import ctypes
import ctypes.util
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

# Allocators to preload, in order of preference: (name, ctypes.util.find_library name,
# environment it runs with unless the user set that variable). tcmalloc first: jemalloc
# held more memory for the same speed (BENCHMARKS.md), and by default hands freed pages back
# to the system after 10 s, which would fault the step's scratch buffer in again.
ALLOCATORS = (("tcmalloc", "tcmalloc_minimal", {}),
              ("tcmalloc", "tcmalloc", {}),
              ("jemalloc", "jemalloc", {"MALLOC_CONF": "dirty_decay_ms:-1,muzzy_decay_ms:-1"}))
_PRELOADED = "HEMNET_ALLOCATOR_PRELOADED"  # set on the restart: never restart twice


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


def preloaded_allocator():
  """The allocator this process was restarted with (a library path or name), or None."""
  return os.environ.get(_PRELOADED) or None


def loaded_allocator():
  """The name of a known allocator mapped into this process (one the user preloaded, or
  ours after the restart), or None."""
  return next((name for name, lib, _ in ALLOCATORS if _loaded(f"lib{lib}.so")), None)


def _wanted():
  """HEMNET_ALLOCATOR: 'auto' (also when unset or empty), 'glibc', or a library's path."""
  return os.environ.get("HEMNET_ALLOCATOR", "").strip() or "auto"


def choose_allocator(find=ctypes.util.find_library):
  """(library to preload or None, environment to add, why), from HEMNET_ALLOCATOR and what
  is installed; the library is a path or a name the dynamic loader resolves."""
  wanted = _wanted()
  if wanted == "glibc" or os.environ.get("HEMNET_REUSE_HOST_MEMORY", "1") == "0":
    return None, {}, ("HEMNET_ALLOCATOR=glibc" if wanted == "glibc" else "HEMNET_REUSE_HOST_MEMORY=0")
  if wanted != "auto":
    if not os.path.isfile(wanted):
      raise FileNotFoundError(f"HEMNET_ALLOCATOR={wanted}: no such file (a shared library to "
                              "preload, or 'auto', or 'glibc')")
    return wanted, {}, f"HEMNET_ALLOCATOR={wanted}"
  cpu, why = cpu_trains()
  if not cpu:
    return None, {}, f"an accelerator trains ({why})"
  if not sys.platform.startswith("linux"):
    return None, {}, "not Linux"
  for name, lib, env in ALLOCATORS:
    found = find(lib)
    if found:
      return found, {k: v for k, v in env.items() if k not in os.environ}, f"{name} is installed"
  return None, {}, "neither tcmalloc nor jemalloc is installed"


def preload_allocator(find=ctypes.util.find_library):
  """Restart this program with a faster allocator preloaded, where one is chosen
  (`choose_allocator`) and not yet loaded; returns otherwise (at once after the restart).

  Call it first thing in a program's entry point, never from library code: the process
  is replaced (os.execve, same arguments, same pid).
  """
  if preloaded_allocator() or not sys.executable:
    return
  lib, env, _ = choose_allocator(find)
  if lib is None or _loaded(lib) or (_wanted() == "auto" and loaded_allocator()):
    return  # none chosen, or the user preloaded it (or another) already
  preload = os.environ.get("LD_PRELOAD", "")
  env = {**os.environ, **env, _PRELOADED: lib,
         "LD_PRELOAD": f"{lib}:{preload}" if preload else lib}
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def allocator():
  """The host allocator in words, for benchmark banners."""
  lib = preloaded_allocator()
  if lib:
    return f"{lib} preloaded" + ("" if _loaded(lib) else ", but not loaded")
  loaded = loaded_allocator()
  if loaded:
    return f"{loaded}, preloaded by the user"
  try:
    why = choose_allocator()[2]
  except FileNotFoundError as e:
    why = str(e)
  return (("glibc, freed memory kept" if ACTIVE else "glibc's default")
          + f" ({REASON}); no allocator preloaded: {why}")


def set_up(restart):
  """A program's host set-up, before JAX starts: `preload_allocator` if restart (a program's
  entry point), then `reuse_freed_memory`. A HEMNET_ALLOCATOR that names no file ends the
  process with one error line."""
  if restart:
    try:
      preload_allocator()
    except FileNotFoundError as e:
      print(f"error: {e}", file=sys.stderr, flush=True)
      sys.exit(1)
  reuse_freed_memory()


def _loaded(lib):
  """Whether the shared library `lib` (a path or a name) is mapped into this process."""
  stem = os.path.basename(lib).split(".so")[0]
  try:
    with open("/proc/self/maps") as f:
      return any(f"/{stem}.so" in line for line in f)
  except OSError:
    return False


def reuse_freed_memory():
  """Tell glibc's malloc to keep large freed blocks, where the CPU trains; True if it took effect.

  Call it before importing jax (or anything that starts threads): threads that
  already have their own malloc arena keep mmapping their large blocks.
  """
  global ACTIVE, REASON
  if preloaded_allocator() or loaded_allocator():
    REASON = "another allocator is preloaded: glibc's malloc is not the one in use"
    return False
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
