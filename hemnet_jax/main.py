r"""Entry point: `python -m hemnet_jax.main --config configs/demo.py --workdir DIR`.

Any config field can be overridden, e.g. `--config.hem.eta=0.8 --config.train.num_steps=100`;
`--config configs/voc.py:emanet` selects the EMANet baseline of a config.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

flags.DEFINE_string("workdir", None, "Checkpoints, summaries and results.json go here.")
config_flags.DEFINE_config_file("config", None, "A config file from configs/.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from hemnet_jax import train  # after flag parsing: a bad flag fails before JAX starts
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save step at INFO
  try:
    train.train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
  except (ValueError, FileNotFoundError, FloatingPointError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
