"""Preemption notices (SIGTERM: a preempted TPU VM, `scancel`), agreed on by every process.

A notice may reach one process only. If that process alone saved and left, the others would
wait for it at the next collective with no end; so each process reports what it saw at steps
every process stops at alike (log and checkpoint steps), and all save and exit together.
"""

import signal

import jax
import numpy as np


class Preemption:
  """`noticed(step_is_sync)`: the processes that received SIGTERM, agreed on by all."""

  def __init__(self):
    self.requested = False
    try:
      signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not in the main thread: no handler, nothing to save early
      pass

  def _handle(self, *_):
    self.requested = True

  def noticed(self, step_is_sync):
    """[process index, ...] that received a notice ([] for none). One process checks at every
    step; several exchange their flags (a collective) at the steps where `step_is_sync`."""
    if jax.process_count() == 1:
      return [0] if self.requested else []
    if not step_is_sync:
      return []
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.int32(self.requested))
    return [i for i, f in enumerate(np.ravel(flags)) if f]
