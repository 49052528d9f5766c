"""Images/s and ETA of the train steps alone: compiling, evaluating and saving are left out.

Jitted steps run asynchronously: a step call returns once the work is queued. The clock is
therefore read only where the queued work is known to be done (`after=`: arrays the work
produces, waited on first), so time is charged to the steps that spent it. The loop already
fetches metrics at log steps, and evaluating and saving wait for the state anyway, so the
meter adds no host sync to an ordinary step.
"""

import contextlib
import time

import jax


class Throughput:
  """Images per second over the timed part of each log interval.

  Starts paused: the loop resumes it once the first (compiling) step is done, pauses it
  around evaluation and checkpoint saves, and reads `rate()` at log steps.
  """

  def __init__(self, images_per_step, clock=time.perf_counter):
    self.images_per_step = images_per_step
    self._clock = clock
    self._started = None  # clock reading where the running segment began; None: paused
    self._seconds = 0.0  # timed seconds of this interval's finished segments
    self._images = 0  # images of steps dispatched while the clock ran, this interval
    self.last_rate = None

  @property
  def running(self):
    return self._started is not None

  def step(self):
    """One train step dispatched: its images count if the clock is running."""
    if self.running:
      self._images += self.images_per_step

  def resume(self, after=None):
    """Starts the clock once `after` (the work so far, left out) is done."""
    if after is not None:
      jax.block_until_ready(after)
    if not self.running:
      self._started = self._clock()

  def pause(self, after=None):
    """Stops the clock once `after` (the counted steps' output) is done."""
    if after is not None:
      jax.block_until_ready(after)
    if self.running:
      self._seconds += self._clock() - self._started
      self._started = None

  @contextlib.contextmanager
  def paused(self, after=None):
    """`with meter.paused(state): evaluate(...)`: the block's time is not counted."""
    self.pause(after)
    try:
      yield
    finally:
      self.resume()

  def rate(self, after=None):
    """Images/s over the timed part since the last call, which starts a new interval; None
    when nothing was timed (the interval held only the compiling step)."""
    running = self.running
    self.pause(after)
    seconds, images = self._seconds, self._images
    self._seconds, self._images = 0.0, 0
    if running:
      self.resume()
    self.last_rate = images / seconds if images and seconds > 0 else None
    return self.last_rate

  def progress(self, remaining_steps):
    """`12.3 img/s  ETA 01:02:03` from the last rate (ETA: train steps only)."""
    if not self.last_rate:
      return "-- img/s  ETA --"
    eta = remaining_steps * self.images_per_step / self.last_rate
    days, rest = divmod(int(eta), 86400)
    clock = time.strftime("%H:%M:%S", time.gmtime(rest))
    return f"{self.last_rate:.1f} img/s  ETA {f'{days}d ' if days else ''}{clock}"
