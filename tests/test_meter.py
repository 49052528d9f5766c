"""The throughput meter counts train steps only: not compiling, evaluating or saving."""

import time

import jax
import jax.numpy as jnp
import pytest

from hemnet_jax.training import meter as meter_lib

BATCH = 4


class FakeClock:
  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def test_a_deliberate_2s_pause_is_not_counted():
  meter = meter_lib.Throughput(BATCH)
  meter.resume()
  for i in range(20):
    time.sleep(0.05)  # a 50 ms train step
    meter.step()
    if i == 9:
      with meter.paused():
        time.sleep(2.0)  # evaluation, a checkpoint save
  rate = meter.rate()
  # 80 images in 20 x 50 ms = 1 s: at most 80 img/s (sleeps only overshoot). Counting the
  # 2 s would give at most 80 / 3 = 26.7; more than 40 means under 2 s were counted.
  assert 40 < rate <= 80, rate


def test_the_first_step_and_paused_regions_are_left_out():
  clock = FakeClock()
  meter = meter_lib.Throughput(BATCH, clock=clock)
  clock.now += 30.0  # the first step compiles
  meter.step()  # paused until the loop resumes it: not counted
  meter.resume()
  for _ in range(5):
    clock.now += 0.5
    meter.step()
  with meter.paused():
    clock.now += 100.0
  for _ in range(5):
    clock.now += 0.5
    meter.step()
  assert meter.rate() == pytest.approx(10 * BATCH / 5.0)
  # ETA from the same rate: 100 steps of 4 images at 8 img/s.
  assert meter.progress(100) == "8.0 img/s  ETA 00:00:50"
  # A new interval starts at each rate().
  clock.now += 2.0
  meter.step()
  assert meter.rate() == pytest.approx(BATCH / 2.0)


def test_nothing_timed_reads_as_no_rate():
  clock = FakeClock()
  meter = meter_lib.Throughput(BATCH, clock=clock)
  clock.now += 10.0
  meter.step()  # the compiling step was the interval's only one
  assert meter.rate() is None
  assert meter.progress(10) == "-- img/s  ETA --"


def test_long_etas_count_days():
  clock = FakeClock()
  meter = meter_lib.Throughput(1, clock=clock)
  meter.resume()
  clock.now += 1.0
  meter.step()
  meter.rate()
  assert meter.progress(90_061) == "1.0 img/s  ETA 1d 01:01:01"


def test_paused_resumes_after_an_error():
  meter = meter_lib.Throughput(BATCH)
  meter.resume()
  with pytest.raises(RuntimeError):
    with meter.paused():
      raise RuntimeError("save failed")
  assert meter.running


def test_time_is_read_once_queued_work_is_done():
  """A jitted call returns before its work is done: rate(after=) waits for it, so the step's
  time is counted (without waiting, the meter would see only the dispatch)."""
  f = jax.jit(lambda x: jax.lax.fori_loop(0, 30, lambda i, a: jnp.tanh(a @ a), x))
  x = jnp.full((512, 512), 1 / 512)
  f(x).block_until_ready()  # compiled
  work = min(_timed(lambda: f(x).block_until_ready()) for _ in range(3))
  meter = meter_lib.Throughput(BATCH)
  meter.resume()
  y = f(x)
  meter.step()
  assert meter.rate(after=y) <= BATCH / (0.5 * work)


def _timed(fn):
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0
