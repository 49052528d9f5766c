"""Preemption notices (SIGTERM: a preempted TPU VM, `scancel`), agreed on by every process.

A notice may reach one process only. If that process alone saved and left, the others would
wait for it at the next collective with no end; so each process reports what it saw at steps
every process stops at alike (log and checkpoint steps), and all save and exit together.
"""

import signal
import threading
import time

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


def _lost(dead, count, index):
  who = f"process {', '.join(map(str, dead))}" if dead else "another process"
  return PeerLost(
      f"{who} of this {count}-process run stopped (killed, crashed or unreachable), so "
      f"process {index} stops too. See {who}'s log for why; re-run the same "
      "command on every host to resume from the newest checkpoint.")


class PeerWatch:
  """Heartbeats between the processes of a run, through the coordination service's key-value
  store: a peer quiet for `timeout` seconds is named in a PeerLost passed to `on_lost`, which
  ends the process (main.py: one `error:` line; the main thread may be blocked in a collective
  that never returns, so nothing can be raised there).

  JAX's service watches heartbeats too, but when it finds a dead process it aborts every other
  one with a C++ stack trace, and a process blocked in a collective whose peer died (gloo on
  CPU) may wait there until it does. So this watch runs beside it, with the shorter timeout
  (main.py gives JAX's as a backstop). One thread beats and reads the store; a second judges
  from what the first saw, so a store call that hangs cannot silence the judgement.
  """

  PREFIX = "hemnet_jax/heartbeat/"

  def __init__(self, timeout, on_lost, client=None, index=None, count=None):
    if client is None:
      from jax._src import distributed  # pylint: disable=import-outside-toplevel
      client = distributed.global_state.client
    self.client, self.timeout = client, timeout
    self.index = jax.process_index() if index is None else index
    self.count = jax.process_count() if count is None else count
    self.on_lost = on_lost
    self.verdict = None  # the PeerLost, once a peer went quiet
    self.interval = min(max(timeout / 10, 0.05), 1.0)
    now = time.monotonic()
    self.heard = {p: now for p in range(self.count) if p != self.index}  # peer: last change
    self.store_ok = now  # last time the store answered
    self.done = threading.Event()
    self.lost = threading.Event()
    self._values = {}
    for target in (self._beat, self._judge):
      threading.Thread(target=target, daemon=True, name="hemnet_jax-peer-watch").start()

  def _beat(self):
    beat = 0
    while not self.done.wait(self.interval):
      beat += 1
      try:
        self.client.key_value_set(f"{self.PREFIX}{self.index}", str(beat), allow_overwrite=True)
        values = dict(self.client.key_value_dir_get(self.PREFIX))
      except Exception:  # pylint: disable=broad-except  (the judge counts the silence)
        continue
      now = time.monotonic()
      self.store_ok = now
      for peer in self.heard:
        value = values.get(f"{self.PREFIX}{peer}")
        if value == "done":
          self.heard[peer] = float("inf")  # finished its run: nothing more to hear
        elif value != self._values.get(peer):
          self._values[peer], self.heard[peer] = value, now

  def _judge(self):
    last = time.monotonic()
    while not self.done.wait(self.interval):
      now = time.monotonic()
      starved, last = now - last > self.timeout / 2, now  # this process stalled, not its peers
      # A peer is quiet when the store, at its last answer, still held its beat of `timeout`
      # seconds before.
      quiet = sorted(p for p, t in self.heard.items() if self.store_ok - t > self.timeout)
      if now - self.store_ok > self.timeout and not starved:
        quiet = [0]  # the store lives in process 0
      if quiet and not self.done.is_set():
        self.verdict = _lost(quiet, self.count, self.index)
        self.lost.set()
        self.on_lost(self.verdict)
        return

  def stop(self):
    """This process's run ended (done or failed on its own): peers stop listening for it."""
    self.done.set()
    try:
      self.client.key_value_set(f"{self.PREFIX}{self.index}", "done", allow_overwrite=True)
    except Exception:  # pylint: disable=broad-except  (the store is gone: nobody listens)
      pass


_watch = None


def watch_peers(timeout, on_lost):
  """Starts the PeerWatch of a multi-process run (nothing for one process); returns it."""
  global _watch  # pylint: disable=global-statement
  if jax.process_count() > 1 and _watch is None:
    _watch = PeerWatch(timeout, on_lost)
  return _watch


def stop_watching():
  global _watch  # pylint: disable=global-statement
  if _watch is not None:
    _watch.stop()
    _watch = None


def peer_failure(error, timeout=120.0):
  """A PeerLost naming the processes that stopped, when `error` (raised by a collective of a
  multi-process run) came from a peer that died; None for an error of this process's own.

  With a PeerWatch running, waits for its verdict (its `on_lost` normally ends the process
  first); without one, asks the coordination service which processes still send heartbeats,
  which answers once the dead ones missed theirs, so this waits at most `timeout` seconds.
  """
  if jax.process_count() == 1 or not isinstance(error, jax.errors.JaxRuntimeError):
    return None
  if _watch is not None:
    _watch.lost.wait(_watch.timeout + 5 * _watch.interval + 1.0)
    return _watch.verdict  # None: every peer still beats, so the error was this process's own
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
  return _lost(dead, len(everyone), jax.process_index())
