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
"""

import ctypes
import os
import sys

# mallopt parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

ACTIVE = False  # whether reuse_freed_memory() took effect in this process


def reuse_freed_memory():
  """Tell glibc's malloc to keep large freed blocks; True if it took effect.

  Call it before importing jax (or anything that starts threads): threads that
  already have their own malloc arena keep mmapping their large blocks.
  """
  if os.environ.get("HEMNET_REUSE_HOST_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
    return False
  try:
    libc = ctypes.CDLL(None)
    libc.gnu_get_libc_version  # glibc only: musl's mallopt is a no-op
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  # One arena: a thread's own arena falls back to mmap for blocks over its 64 MiB heap.
  global ACTIVE
  ACTIVE = bool(mallopt(_M_ARENA_MAX, 1) and mallopt(_M_MMAP_MAX, 0)
                and mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1))
  return ACTIVE
