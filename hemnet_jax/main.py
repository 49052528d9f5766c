r"""Entry point: `python -m hemnet_jax.main --config configs/demo.py --workdir DIR`.

`--mode eval` evaluates the latest checkpoint in DIR instead of training (see
hemnet_jax/evaluate.py: multi-scale + flip, T_eval via --config.hem.num_iters_eval).

Any config field can be overridden, e.g. `--config.hem.eta=0.8 --config.train.num_steps=100`;
`--config configs/voc.py:emanet` selects the EMANet baseline of a config.

Several processes (hosts) run the same command. On TPU pods and SLURM clusters add
`--distributed` and JAX finds its peers; elsewhere (e.g. `launch/local.sh`) pass
`--coordinator_address`, `--num_processes` and `--process_id`.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from hemnet_jax import cli, host_memory

flags.DEFINE_string("workdir", None, "Checkpoints, summaries and results.json go here.")
config_flags.DEFINE_config_file("config", None, "A config file from configs/.", lock_config=True)
flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (then evaluate), or only evaluate "
                  "the latest checkpoint in --workdir with config.eval's protocol.")
flags.DEFINE_bool("distributed", False, "jax.distributed.initialize() from the cluster's "
                  "environment (TPU pod, SLURM).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for explicit set-ups.")
flags.DEFINE_integer("num_processes", None, "Number of processes, with --coordinator_address.")
flags.DEFINE_integer("process_id", None, "This process's index, with --coordinator_address.")
flags.mark_flags_as_required(["config", "workdir"])

FLAGS = flags.FLAGS


def initialize_distributed():
  import jax
  if FLAGS.coordinator_address:
    if FLAGS.num_processes is None or FLAGS.process_id is None:
      raise app.UsageError("--coordinator_address needs --num_processes and --process_id")
    if jax.config.jax_platforms in (None, "", "cpu"):
      jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes talk via gloo
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  elif FLAGS.distributed:
    jax.distributed.initialize()


def run():
  initialize_distributed()
  # Imported after flag parsing: a bad flag fails before JAX starts.
  from hemnet_jax import evaluate, train
  if FLAGS.mode == "eval":
    evaluate.run(FLAGS.config, FLAGS.workdir)
  else:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


def main(argv):
  host_memory.reuse_freed_memory()  # before JAX starts: XLA's scratch is not re-faulted each step
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save step at INFO
  cli.run(argv, run)


if __name__ == "__main__":
  app.run(main)
