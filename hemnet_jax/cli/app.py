"""What every program does around its work: absl flags, host set-up, one-line user errors.

A program defines its flags (with `define_config_flags` where it reads a config) in its
`if __name__ == "__main__":` block, so programs never clash over flag names when tests
import several, and calls `start(work)`. Exit status: 0 done, 1 a user error (one
`error:` line on stderr), 2 a usage error (absl's usage text), anything else a bug
(its traceback).
"""

import os
import sys

from absl import app, flags, logging

from hemnet_jax.cli import host_memory

# Errors that mean "fix your input" (a config value, a missing file, a diverged loss):
# reported as one line, not a traceback. So is any error whose class sets `user_error = True`
# (the library's own, e.g. a checkpoint that cannot be written to a full disk).
USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError)


def define_config_flags(workdir_help, *, config_help="A config file from configs/.",
                        workdir_required=True):
  """--config (a configs/ file, overridable field by field) and --workdir."""
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, config_help, lock_config=True)
  flags.DEFINE_string("workdir", None, workdir_help)
  flags.mark_flags_as_required(["config", "workdir"] if workdir_required else ["config"])


def run(argv, work):
  """work() for an absl main(argv); a user error ends the process with exit status 1."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    return work()
  except Exception as e:  # pylint: disable=broad-except
    if not isinstance(e, USER_ERRORS) and not getattr(e, "user_error", False):
      raise
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)


def start(work):
  """Runs a program: host set-up, flag parsing, then work(flags.FLAGS) inside `run`;
  its return value (None or an int) is the exit status."""
  host_memory.set_up(restart=True)  # before XLA's first computation (see host_memory.py)
  sys.unraisablehook = _quiet_abandoned_checkpoint_io

  def main(argv):
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # orbax logs every save step at INFO
    try:
      return run(argv, lambda: work(flags.FLAGS))
    except SystemExit as e:
      if e.code == 1:
        _exit_now(1)
      raise

  app.run(main)


def exit_with_error(error):
  """One `error:` line, then the process ends at once with status 1: for a thread that must
  stop the program while the main thread may be blocked (training/preemption.PeerWatch)."""
  print(f"error: {error}", file=sys.stderr, flush=True)
  _exit_now(1)


def _quiet_abandoned_checkpoint_io(unraisable):
  """Silences what a failed orbax restore leaves behind, and only that.

  When one read of a damaged checkpoint fails, orbax abandons its sibling reads: their
  coroutines are collected later ("Exception ignored in: <coroutine ...>") and their
  callbacks find orbax's event loop closed. The failure itself is reported (a fallback
  line, or the one error line); these echoes of it would print tracebacks before it.
  """
  exc, code = unraisable.exc_value, getattr(unraisable.object, "cr_code", None)
  if (isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed") or (
      code is not None and "/orbax/" in code.co_filename):
    return
  sys.__unraisablehook__(unraisable)


def _exit_now(status):
  """Ends the process without interpreter shutdown, once the error line is out.

  An error raised inside an orbax restore or save leaves its sibling tensorstore reads and
  writes in flight; at shutdown their callbacks hit the event loop orbax already closed and
  print `RuntimeError: Event loop is closed` tracebacks after the one line that matters.
  Nothing is left to clean up: the loop closed its checkpoint manager, files are flushed.
  """
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)
