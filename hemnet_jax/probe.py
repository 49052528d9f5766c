r"""Gradient-flow and ELBO probes of the HEM iterations (the paper's Figure 3).

  python -m hemnet_jax.probe --config configs/demo.py --workdir DIR [--etas 0.1,0.2,0.4,0.8,1.0]
      [--num_samples 100] [--at_init]

The functions below are pure JAX on the HEM math of hemnet_jax/hem.py:
  (a) `elbo_curve`: Eq. 3's ELBO after each HEM iteration;
  (b), (c) `gradient_split`: d loss / d X from the N-step of each layer and from the
      E-step of each layer (the two sums of Eq. 17), which add up exactly to the full
      gradient;
  (d) the total mean |d loss / d X| (the sum of the parts).

The loss downstream of the HEM iterations is the caller's function of the R-step's
X_tilde (Eq. 10). The command line probes a trained run: X is the HEM unit's input
features (the output of its conv_in) for the first `num_samples` training images, mu0
is the run's, and the loss is a fixed random linear readout of X_tilde, so gradient
magnitudes are comparable across eta and checkpoints but are not the paper's
segmentation-loss gradients. It writes, under <workdir>/probe (or --out):
  probe_layers.csv  eta, layer t, ELBO after t, mean |grad X| from the N-step and the
                    E-step of layer t, and the N-step one with the E-step paths cut;
  probe_totals.csv  eta, total mean |grad X|, E-step / N-step ratio;
  probe_checkpoints.csv  (d) over the run's checkpoints at the config's eta (those kept:
                    raise train.keep_checkpoints to keep one every checkpoint_every steps);
and the plots of those CSVs (hemnet_jax/plots.py; `python -m hemnet_jax.plots DIR` re-makes
them from the CSVs alone): fig3a_elbo.png, fig3b_grad_n_step.png, fig3c_grad_e_step.png (one
line per eta over the layers t, (b) and (c) on a log axis), fig3d_grad_checkpoints.png (for a
run) and figure3.png, all of them side by side.
"""

import csv
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hemnet_jax import cli, hem


def elbo_curve(x, mu0, *, num_iters, eta, temperature, kernel="dot"):
  """(a) Eq. 3 after each of T iterations, L(mu^(t), gamma^(t)), [T, B]."""
  out = hem.hem_iterations(x, mu0, num_iters=num_iters, eta=eta, temperature=temperature,
                           kernel=kernel)
  return jax.vmap(lambda m, g: hem.elbo(x, m, g, temperature))(out.mus, out.gammas)


def _unrolled(x_e, x_n, mu0, *, eta, temperature, kernel, e_step_grad):
  """hem_iterations with one copy of X per use: x_e[t] feeds layer t's E-step, x_n[t]
  its N-step. The gradient to a copy is the gradient through that use alone (the
  others held fixed, as by stop_gradient), and by the chain rule the copies'
  gradients sum to the gradient to the shared X (Eqs. 16-17)."""
  mu = jnp.broadcast_to(mu0, (x_n.shape[1],) + mu0.shape[-2:]) if mu0.ndim == 2 else mu0
  mu = mu.astype(jnp.promote_types(x_n.dtype, jnp.float32))
  for t in range(x_e.shape[0]):
    gamma = hem.e_step(x_e[t], mu, temperature, kernel)  # Eq. 8 (or 7)
    if not e_step_grad:
      gamma = jax.lax.stop_gradient(gamma)
    mu = hem.n_step(x_n[t], gamma, mu, eta)  # Eq. 13
  return hem.r_step(gamma, mu)  # Eq. 10


class GradientSplit(NamedTuple):
  n_step: jax.Array  # [T, B, N, C]: d loss / d X through the N-step of layer t (Eq. 17, left)
  # [T, B, N, C]: through the E-step of layer t (Eq. 17, right); layer T's includes the
  # R-step's direct use of gamma^(T) (Eq. 10), usually the largest E-step part.
  e_step: jax.Array


def gradient_split(x, mu0, loss_fn, *, num_iters, eta, temperature, kernel="dot",
                   e_step_grad=True):
  """(b), (c) The gradient of loss_fn(X_tilde) to X, split by layer and by step.

  sum over t of n_step + e_step is exactly jax.grad of the whole function. With
  e_step_grad=False the E-step paths are cut (gamma constant, as
  hem_iterations(e_step_grad=False)): e_step is zero and n_step is Eq. 18.
  """
  copies = jnp.broadcast_to(x, (num_iters,) + x.shape)
  f = lambda x_e, x_n: loss_fn(_unrolled(x_e, x_n, mu0, eta=eta, temperature=temperature,
                                         kernel=kernel, e_step_grad=e_step_grad))
  g_e, g_n = jax.grad(f, argnums=(0, 1))(copies, copies)
  return GradientSplit(n_step=g_n, e_step=g_e)


def readout_loss(key, shape):
  """A fixed random linear readout of X_tilde [B, N, C], sum_nc X_tilde * V averaged over B."""
  v = jax.random.normal(key, shape[-2:])
  return lambda x_tilde: jnp.sum(x_tilde * v) / x_tilde.shape[0]


def layer_means(split):
  """Mean |gradient| per layer: (N-step [T], E-step [T], total over all paths)."""
  mean_abs = lambda g: np.asarray(jnp.mean(jnp.abs(g), axis=tuple(range(1, g.ndim))))
  total = float(jnp.mean(jnp.abs(split.n_step.sum(0) + split.e_step.sum(0))))
  return mean_abs(split.n_step), mean_abs(split.e_step), total


def probe_features(x, mu0, loss_fn, *, etas, num_iters, temperature, kernel="dot"):
  """Every probe for each eta: (per-layer rows, per-eta total rows), as dicts."""
  layers, totals = [], []
  for eta in etas:
    kw = dict(num_iters=num_iters, eta=eta, temperature=temperature, kernel=kernel)
    elbo = np.asarray(jnp.mean(elbo_curve(x, mu0, **kw), axis=1))
    n, e, total = layer_means(gradient_split(x, mu0, loss_fn, **kw))
    n_cut, _, _ = layer_means(gradient_split(x, mu0, loss_fn, e_step_grad=False, **kw))
    for t in range(num_iters):
      layers.append({"eta": eta, "layer": t + 1, "elbo": float(elbo[t]), "grad_x_n_step": float(n[t]),
                     "grad_x_e_step": float(e[t]), "grad_x_n_step_e_cut": float(n_cut[t])})
    totals.append({"eta": eta, "grad_x_total": total,
                   "e_step_over_n_step": float(e.sum() / max(n.sum(), 1e-30))})
  return layers, totals


def write_csv(path, rows):
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)


def hem_inputs(model, variables, images):
  """(X [B, N, C], mu0 [K, C]): the HEM unit's input features, captured from conv_in."""
  is_conv_in = lambda mdl, method: mdl.name == "conv_in" and method == "__call__"
  _, state = model.apply(variables, images, train=False, capture_intermediates=is_conv_in,
                         mutable=["intermediates"])
  x = state["intermediates"]["hem"]["conv_in"]["__call__"][0]
  # float32 even for a bfloat16 model: the probes measure gradients down to ~1e-7 of the total.
  x = x.reshape(x.shape[0], -1, x.shape[-1]).astype(jnp.float32)
  return x, variables["hem_bases"]["hem"]["mu0"]


def _samples(config, num_samples):
  """The first num_samples training images, normalised and padded as in evaluation."""
  from hemnet_jax import input_pipeline
  split = input_pipeline.load_split(config.data, config.data.train_split)
  if num_samples > split.num_examples:
    raise ValueError(f"--num_samples={num_samples}: the training split has {split.num_examples}")
  # One padded size for all: at least the crop (VOC's 513 holds every image), or eval_size.
  size = max(config.data.crop_size, config.data.get("eval_size") or 0)
  ex = [input_pipeline.eval_transform(split.source[i], multiple=config.model.output_stride,
                                      min_size=size) for i in range(num_samples)]
  shapes = {e["image"].shape for e in ex}
  if len(shapes) > 1:
    raise ValueError(f"the probe's samples differ in size ({shapes}): set config.data.eval_size "
                     "to at least the largest")
  return jnp.asarray(np.stack([e["image"] for e in ex]))


def run(config, workdir, *, etas, num_samples, at_init=False, out=None, seed=0):
  """The command line's work; returns the output directory."""
  from etils import epath
  from hemnet_jax import config_utils, evaluate, sharding, train
  config = config_utils.validate(config)
  workdir = epath.Path(workdir).absolute()
  out = epath.Path(out) if out else workdir / "probe"
  out.mkdir(parents=True, exist_ok=True)
  model = train.build_model(config)
  images = _samples(config, num_samples)
  c = config.model.head_channels
  temperature = math.sqrt(c) if config.hem.temperature is None else config.hem.temperature
  kw = dict(num_iters=config.hem.num_iters, temperature=temperature, kernel=config.hem.kernel)
  capture = jax.jit(lambda v, im: hem_inputs(model, v, im))

  mesh = sharding.make_mesh()
  if at_init:
    state, when = train.create_train_state(config, model, jax.random.key(config.seed)), "at init"
  else:
    state, latest = evaluate.restore_state(config, model, workdir / "checkpoints", mesh)
    when = f"after {latest} steps"
  x, mu0 = capture(state.variables(), images)
  loss_fn = readout_loss(jax.random.key(seed), x.shape)
  layers, totals = probe_features(x, mu0, loss_fn, etas=etas, **kw)
  write_csv(out / "probe_layers.csv", layers)
  write_csv(out / "probe_totals.csv", totals)

  if not at_init:  # (d) over the run's checkpoints, at the run's own eta
    import orbax.checkpoint as ocp  # only to list the steps
    mngr = ocp.CheckpointManager(workdir / "checkpoints",
                                 options=ocp.CheckpointManagerOptions(read_only=True))
    rows = []
    for step in mngr.all_steps():
      state, _ = evaluate.restore_state(config, model, workdir / "checkpoints", mesh, step)
      xs, m0 = capture(state.variables(), images)
      _, _, total = layer_means(gradient_split(xs, m0, loss_fn, eta=config.hem.eta, **kw))
      rows.append({"step": int(step), "eta": config.hem.eta, "grad_x_total": total})
    write_csv(out / "probe_checkpoints.csv", rows)
  from hemnet_jax import plots
  title = f"{when}: {num_samples} training images, T = {config.hem.num_iters}"
  plots.save(plots.figure_3(layers, None if at_init else rows, title), out)
  for r in totals:
    print(f"eta {r['eta']}: total mean |grad X| {r['grad_x_total']:.3e}, "
          f"E-step / N-step {r['e_step_over_n_step']:.3e}", flush=True)
  print(f"Wrote {out}", flush=True)
  return out


def main(argv):
  from absl import flags
  f = flags.FLAGS
  # Inside cli.run: a malformed --etas is a one-line error too.
  cli.run(argv, lambda: run(f.config, f.workdir, etas=tuple(float(e) for e in f.etas.split(",")),
                            num_samples=f.num_samples, at_init=f.at_init, out=f.out))


if __name__ == "__main__":
  from absl import app, flags, logging
  from ml_collections import config_flags
  flags.DEFINE_string("workdir", None, "A training run: its checkpoints are probed.")
  config_flags.DEFINE_config_file("config", None, "The run's config file.", lock_config=True)
  flags.DEFINE_string("etas", "0.1,0.2,0.4,0.8,1.0", "Comma-separated step sizes to probe.")
  flags.DEFINE_integer("num_samples", 100, "The first n training images are the fixed samples.")
  flags.DEFINE_bool("at_init", False, "Probe the freshly initialised model instead of the run.")
  flags.DEFINE_string("out", None, "Output directory; default <workdir>/probe.")
  flags.mark_flags_as_required(["config", "workdir"])
  logging.set_verbosity(logging.WARNING)
  app.run(main)
