"""What every absl entry point does around its work: no stray arguments, user errors in one line."""

import sys

from absl import app

# Errors that mean "fix your input" (a config value, a missing file, a diverged loss):
# reported as one line, not a traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError)


def run(argv, work):
  """work() for an absl main(argv); a user error ends the process with exit status 1."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    return work()
  except USER_ERRORS as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
