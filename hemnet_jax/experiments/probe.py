r"""Gradient-flow and ELBO probes of the HEM iterations (the paper's Figure 3).

  python -m hemnet_jax.experiments.probe --config configs/demo.py --workdir DIR
      [--etas 0.1,0.2,0.4,0.8,1.0] [--num_samples 100] [--at_init]

The probes themselves are pure JAX on the HEM math (hemnet_jax/hem/probes.py): (a) the
ELBO after each iteration, (b), (c) the gradient to X from the N-step and the E-step of
each layer, (d) the total gradient. This program probes a trained run: X is the HEM unit's input
features (the output of its conv_in) for the first `num_samples` training images, mu0
is the run's, and the loss is a fixed random linear readout of X_tilde, so gradient
magnitudes are comparable across eta and checkpoints but are not the paper's
segmentation-loss gradients. It writes, under <workdir>/probe (or --out):
  probe_layers.csv  eta, layer t, ELBO after t, mean |grad X| from the N-step and the
                    E-step of layer t, and the N-step one with the E-step paths cut;
  probe_totals.csv  eta, total mean |grad X|, E-step / N-step ratio;
  probe_checkpoints.csv  (d) over the run's checkpoints at the config's eta (those kept:
                    raise train.keep_checkpoints to keep one every checkpoint_every steps);
and the plots of those CSVs (hemnet_jax/vis/plots.py; `python -m hemnet_jax.experiments.plots DIR`
re-makes them from the CSVs alone): fig3a_elbo.png, fig3b_grad_n_step.png, fig3c_grad_e_step.png (one
line per eta over the layers t, (b) and (c) on a log axis), fig3d_grad_checkpoints.png (for a
run) and figure3.png, all of them side by side.
"""

import jax
import jax.numpy as jnp
from etils import epath

from hemnet_jax import cli
from hemnet_jax.data import pipeline
from hemnet_jax.hem import probes
from hemnet_jax.models.hemnet import hem_inputs
from hemnet_jax.training import checkpoints, config as config_lib, sharding, state as state_lib
from hemnet_jax.vis import plots


def run(config, workdir, *, etas, num_samples, at_init=False, out=None, seed=0):
  """The command line's work; returns the output directory."""
  config = config_lib.validate(config)
  workdir = epath.Path(workdir).absolute()
  out = epath.Path(out) if out else workdir / "probe"
  out.mkdir(parents=True, exist_ok=True)
  model = state_lib.build_model(config)
  images = jnp.asarray(pipeline.fixed_samples(config, num_samples))
  kw = dict(num_iters=config.hem.num_iters, temperature=config.hem.temperature,
            kernel=config.hem.kernel)
  capture = jax.jit(lambda v, im: hem_inputs(model, v, im))

  mesh = sharding.make_mesh()
  abstract = state_lib.abstract_train_state(config, model)
  restore = lambda step=None: checkpoints.restore(workdir, abstract, step=step, mesh=mesh,
                                                  fsdp=config.train.fsdp)
  if at_init:
    state = state_lib.create_train_state(config, model, jax.random.key(config.seed))
    when = "at init"
  else:
    state, latest = restore()
    when = f"after {latest} steps"
  x, mu0 = capture(state.variables(), images)
  loss_fn = probes.readout_loss(jax.random.key(seed), x.shape)
  layers, totals = probes.probe_features(x, mu0, loss_fn, etas=etas, **kw)
  plots.write_csv(out / "probe_layers.csv", layers)
  plots.write_csv(out / "probe_totals.csv", totals)

  if not at_init:  # (d) over the run's checkpoints, at the run's own eta
    rows = []
    for step in checkpoints.steps(workdir):
      state, _ = restore(step)
      xs, m0 = capture(state.variables(), images)
      split = probes.gradient_split(xs, m0, loss_fn, eta=config.hem.eta, **kw)
      rows.append({"step": int(step), "eta": config.hem.eta,
                   "grad_x_total": probes.layer_means(split)[2]})
    plots.write_csv(out / "probe_checkpoints.csv", rows)
  title = f"{when}: {num_samples} training images, T = {config.hem.num_iters}"
  plots.save(plots.figure_3(layers, None if at_init else rows, title), out)
  for r in totals:
    print(f"eta {r['eta']}: total mean |grad X| {r['grad_x_total']:.3e}, "
          f"E-step / N-step {r['e_step_over_n_step']:.3e}", flush=True)
  print(f"Wrote {out}", flush=True)
  return out


def main(f):
  try:
    etas = tuple(float(e) for e in f.etas.split(","))
  except ValueError:
    raise ValueError(f"--etas={f.etas}: expected comma-separated numbers") from None
  run(f.config, f.workdir, etas=etas, num_samples=f.num_samples, at_init=f.at_init, out=f.out)


if __name__ == "__main__":
  from absl import flags
  cli.define_config_flags("A training run: its checkpoints are probed.",
                          config_help="The run's config file.")
  flags.DEFINE_string("etas", "0.1,0.2,0.4,0.8,1.0", "Comma-separated step sizes to probe.")
  flags.DEFINE_integer("num_samples", 100, "The first n training images are the fixed samples.")
  flags.DEFINE_bool("at_init", False, "Probe the freshly initialised model instead of the run.")
  flags.DEFINE_string("out", None, "Output directory; default <workdir>/probe.")
  cli.start(main)
