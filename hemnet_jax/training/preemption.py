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


class PeerLost(RuntimeError):
  """Another process of the run stopped: this one stops too, with one line naming it."""
  user_error = True  # cli.run prints it as one `error:` line


def peer_failure(error, timeout=120.0):
  """A PeerLost naming the processes that stopped, when `error` (raised by a collective of a
  multi-process run) came from a peer that died; None for an error of this process's own.

  Asks the coordination service which processes still send heartbeats; it answers once the
  dead ones missed theirs (--heartbeat_timeout), so this waits at most `timeout` seconds.
  """
  if jax.process_count() == 1 or not isinstance(error, jax.errors.JaxRuntimeError):
    return None
  import threading
  from jax._src import distributed
  everyone, answer = list(range(jax.process_count())), []

  def ask():
    try:
      answer.append(set(distributed.global_state.client.get_live_nodes(everyone)))
    except Exception:  # pylint: disable=broad-except  (the coordinator, process 0, is gone)
      answer.append({i for i in everyone if i != 0})

  thread = threading.Thread(target=ask, daemon=True)
  thread.start()
  thread.join(timeout)
  dead = sorted(set(everyone) - answer[0]) if answer else None
  if dead == []:
    return None
  who = f"process {', '.join(map(str, dead))}" if dead else "another process"
  return PeerLost(
      f"{who} of this {len(everyone)}-process run stopped (killed, crashed or unreachable), so "
      f"process {jax.process_index()} stops too. See {who}'s log for why; re-run the same "
      "command on every host to resume from the newest checkpoint.")
