r"""Re-makes a probe directory's Figure 3 PNGs from its CSVs alone.

  python -m hemnet_jax.experiments.plots --dir DIR   # DIR: the output of experiments/probe.py
"""

from absl import flags

from hemnet_jax import cli
from hemnet_jax.vis import plots


def main(f):
  paths = plots.probe_plots(f.dir)
  print("Wrote " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
  flags.DEFINE_string("dir", None, "A probe output directory (probe_layers.csv, ...).")
  flags.mark_flag_as_required("dir")
  cli.start(main)
