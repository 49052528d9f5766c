r"""Why mu0 collapses: its moving average replayed on the frozen features of a checkpoint.

  python -m hemnet_jax.experiments.collapse_study --config configs/demo.py --workdir DIR [--step 200]

Takes the HEM unit's input features X of the first 64 training images (evaluation
padding) from checkpoint --step of DIR, prints the spectrum of their covariance against
the temperature, then replays training's mu0 update (T_train HEM iterations on a random
batch of 16, then mu0 <- m mu0 + (1 - m) mean_b mu^(T)) for 300 steps from a fresh
EMANet initialisation under each setting of docs/collapse.md, and prints the attention
diagnostics (hem/diagnostics.py) of the mu0 it ends with. The features stay fixed: this
isolates the bases' dynamics from the network's.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from etils import epath

from hemnet_jax import cli, hem
from hemnet_jax.data import pipeline
from hemnet_jax.hem import diagnostics as hem_diagnostics
from hemnet_jax.models.hemnet import hem_inputs
from hemnet_jax.training import checkpoints, sharding, state as state_lib
from hemnet_jax.models.hem_unit import init_mu0, reseed_duplicates

NUM_IMAGES, BATCH, STEPS = 64, 16, 300


def settings(c):
  """(name, keyword arguments of `replay`) of the study; c = the channels."""
  tau = math.sqrt(c)
  return [
      ("HEMNet (eta 0.5, sqrt(C), dot)", {}),
      ("EMANet release", dict(eta=1.0, temperature=1.0, l2_normalize=True)),
      ("renorm_mu0", dict(renorm=True)),
      ("l2-normalised batch bases (EMAHead)", dict(prenorm=True)),
      ("  + renorm_mu0", dict(prenorm=True, renorm=True)),
      ("kernel gaussian", dict(kernel="gaussian")),
      ("temperature 1", dict(temperature=1.0)),
      (f"temperature C = {c}", dict(temperature=float(c))),
      ("kernel gaussian, temperature 1", dict(kernel="gaussian", temperature=1.0)),
      ("K 8", dict(num_bases=8)),
      ("K 32", dict(num_bases=32)),
      ("reseed_cosine 0.95", dict(reseed=0.95)),
      ("EMANet release + reseed_cosine 0.95",
       dict(eta=1.0, temperature=1.0, l2_normalize=True, reseed=0.95)),
  ], tau


def replay(x, *, tau, num_iters=3, eta=0.5, temperature=None, l2_normalize=False, kernel="dot",
           renorm=False, prenorm=False, reseed=None, num_bases=16, momentum=0.9, seed=0):
  """mu0 after STEPS moving-average updates on batches of the frozen x [M, N, C]."""
  temperature = tau if temperature is None else temperature
  run = lambda m0, xb: hem.hem_iterations(xb, m0, num_iters=num_iters, eta=eta,
                                          temperature=temperature, l2_normalize=l2_normalize,
                                          kernel=kernel)

  @jax.jit
  def update(m0, xb):
    out = run(m0, xb)
    mu = hem.l2_normalize(out.mu) if prenorm else out.mu
    new = momentum * m0 + (1.0 - momentum) * jnp.mean(mu, 0)
    new = hem.l2_normalize(new) if renorm else new
    if reseed is not None:
      err = jnp.sum(jnp.square(xb - hem.r_step(out.gamma, out.mu)), -1)
      new = reseed_duplicates(new, xb, err, reseed, normalize=renorm)
    return new

  m0 = init_mu0(jax.random.key(seed), num_bases, x.shape[-1])
  rng = np.random.default_rng(seed)
  for _ in range(STEPS):
    m0 = update(m0, x[rng.choice(x.shape[0], BATCH, replace=False)])
  gamma = run(m0, x).gamma
  return {**hem_diagnostics.mu0_diagnostics(m0),
          **{k: float(v) for k, v in hem_diagnostics.gamma_diagnostics(
              *hem_diagnostics.entropy_sums(gamma)).items()}}


def run(config, workdir, step):
  model = state_lib.build_model(config)
  state, step = checkpoints.restore(epath.Path(workdir), state_lib.abstract_train_state(config, model),
                                    step=step, mesh=sharding.make_mesh())
  images = jnp.asarray(pipeline.fixed_samples(config, NUM_IMAGES))
  xs = [hem_inputs(model, state.variables(), images[i:i + BATCH]) for i in
        range(0, NUM_IMAGES, BATCH)]
  x, mu0 = jnp.concatenate([a for a, _ in xs]), xs[0][1]
  flat = np.asarray(x).reshape(-1, x.shape[-1])
  eig = np.linalg.eigvalsh(np.cov(flat.T))[::-1]
  table, tau = settings(x.shape[-1])
  print(f"checkpoint step {step}: ||mean x|| {np.linalg.norm(flat.mean(0)):.2f}, mean ||x_n|| "
        f"{np.linalg.norm(flat, axis=1).mean():.2f}; top covariance eigenvalues "
        f"{np.array2string(eig[:6], precision=2)}; {int((eig > tau).sum())} above sqrt(C) = {tau:.2f}")
  print("its mu0:", hem_diagnostics.mu0_diagnostics(mu0))
  print("| setting | distinct | max cos | median cos | norm min / med / max | entropy | in use |")
  print("|---|---|---|---|---|---|---|")
  for name, kwargs in table:
    d = replay(x, tau=tau, num_iters=config.hem.num_iters, **kwargs)
    print(f"| {name} | {d['distinct_bases']} | {d['max_cosine']:.4f} | {d['median_cosine']:.3f} | "
          f"{d['min_norm']:.2f} / {d['median_norm']:.2f} / {d['max_norm']:.2f} | "
          f"{d['entropy']:.3f} | {d['bases_in_use']:.2f} |", flush=True)


def main(f):
  run(f.config, f.workdir, f.step)


if __name__ == "__main__":
  from absl import flags
  cli.define_config_flags("A training run's directory (its checkpoints/).",
                          config_help="The run's config file.")
  flags.DEFINE_integer("step", None, "Checkpoint step; None: the latest.")
  cli.start(main)
