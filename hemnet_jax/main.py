r"""Train and evaluate: `python -m hemnet_jax.main --config configs/demo.py --workdir DIR`.

`--mode eval` evaluates the latest checkpoint in DIR instead of training
(hemnet_jax/training/evaluation.py: multi-scale + flip, T_eval via --config.hem.num_iters_eval).

Any config field can be overridden, e.g. `--config.hem.eta=0.8 --config.train.num_steps=100`;
`--config configs/voc.py:emanet` selects the EMANet baseline of a config.

A re-run in a workdir continues its run: a config that changes what is trained (the model,
the data, the schedule) stops with the differing fields unless `--allow_config_change`
(recorded in the workdir's config_changes.jsonl); see training/drift.py.

Several processes (hosts) run the same command. On TPU pods and SLURM clusters add
`--distributed` and JAX finds its peers; elsewhere (e.g. `launch/local.sh`) pass
`--coordinator_address`, `--num_processes` and `--process_id`.
"""

from absl import app, flags

from hemnet_jax import cli


def initialize_distributed(f):
  import jax
  if f.coordinator_address:
    if f.num_processes is None or f.process_id is None:
      raise app.UsageError("--coordinator_address needs --num_processes and --process_id")
    if jax.config.jax_platforms in (None, "", "cpu"):
      jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes talk via gloo
    jax.distributed.initialize(f.coordinator_address, f.num_processes, f.process_id,
                               heartbeat_timeout_seconds=_backstop(f.heartbeat_timeout))
  elif f.distributed:
    jax.distributed.initialize(heartbeat_timeout_seconds=_backstop(f.heartbeat_timeout))
  else:
    return
  from hemnet_jax.training import preemption
  preemption.watch_peers(f.heartbeat_timeout, on_lost=cli.exit_with_error)


def _backstop(timeout):
  """JAX's own heartbeat timeout: longer than the PeerWatch's, which names the dead process in
  one line where JAX's aborts every process with a stack trace."""
  return 2 * timeout + 10


def main(f):
  initialize_distributed(f)
  # Imported after flag parsing: a bad flag fails before JAX starts.
  from hemnet_jax.training import evaluation, loop, preemption
  try:
    if f.mode == "eval":
      evaluation.run(f.config, f.workdir)
    else:
      loop.train_and_evaluate(f.config, f.workdir, allow_config_change=f.allow_config_change)
  finally:
    preemption.stop_watching()


if __name__ == "__main__":
  cli.define_config_flags("Checkpoints, summaries and results.json go here.")
  flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (then evaluate), or only evaluate "
                    "the latest checkpoint in --workdir with config.eval's protocol.")
  flags.DEFINE_bool("distributed", False, "jax.distributed.initialize() from the cluster's "
                    "environment (TPU pod, SLURM).")
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for explicit set-ups.")
  flags.DEFINE_integer("num_processes", None, "Number of processes, with --coordinator_address.")
  flags.DEFINE_integer("process_id", None, "This process's index, with --coordinator_address.")
  flags.DEFINE_integer("heartbeat_timeout", 60, "Seconds without a heartbeat after which a "
                       "process counts as dead and every other one stops, naming it.")
  flags.DEFINE_bool("allow_config_change", False, "Continue the run in --workdir with a config "
                    "that changes what is trained; the change is recorded in the workdir.")
  cli.start(main)
