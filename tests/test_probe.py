"""The probes, and the paper's claims checked on our HEM math, each only where it holds."""

import csv
import os
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ROOT, tiny_flags
from test_plots import read_png

from hemnet_jax import hem
from hemnet_jax.hem import probes

x64 = jax.enable_x64(True)


def clustered(seed, b=2, n=60, k=5, c=8, spread=0.5):
  """Points around k centres, and bases of unequal norms near some of them (float64)."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(k, c)) * 2.0
  x = centres[rng.integers(0, k, size=(b, n))] + spread * rng.normal(size=(b, n, c))
  mu = rng.normal(size=(b, k, c)) * rng.uniform(0.3, 3.0, size=(b, k, 1))
  return jnp.asarray(x), jnp.asarray(mu)


def n_step_gain(x, mu, eta, kernel):
  """L(mu^(t+1), gamma^(t+1)) - L(mu^(t), gamma^(t+1)) of Eq. 19, [B]."""
  gamma = hem.e_step(x, mu, 1.3, kernel)
  return hem.elbo(x, hem.n_step(x, gamma, mu, eta), gamma, 1.3) - hem.elbo(x, mu, gamma, 1.3)


@pytest.mark.parametrize("kernel", ["dot", "gaussian"])
def test_proposition_1_holds_for_eta_in_0_1_and_fails_beyond_2(kernel):
  with x64:
    for seed in range(20):
      x, mu = clustered(seed)
      for eta in (0.05, 0.3, 0.7, 1.0):
        assert np.all(n_step_gain(x, mu, eta, kernel) > 0)
    # A concave quadratic: steps past twice the maximiser lower it, so the check can fail.
    assert np.any(n_step_gain(*clustered(0), 2.5, kernel) < 0)


@pytest.mark.parametrize("eta", [0.1, 0.5, 1.0])
def test_gaussian_kernel_elbo_curve_never_decreases(eta):
  with x64:
    for seed in range(10):
      x, mu = clustered(seed)
      curve = np.asarray(probes.elbo_curve(x, mu, num_iters=8, eta=eta, temperature=1.3,
                                          kernel="gaussian"))
      assert np.all(np.diff(curve, axis=0) >= -1e-9 * np.abs(curve[1:]))


def full_grad(x, mu, loss_fn, **kw):
  def f(x):
    out = hem.hem_iterations(x, mu, **kw)
    return loss_fn(hem.r_step(out.gamma, out.mu))
  return jax.grad(f)(x)


@pytest.mark.parametrize("eta", [0.3, 1.0])
@pytest.mark.parametrize("e_step_grad", [True, False])
def test_n_step_and_e_step_parts_add_up_to_the_full_gradient(eta, e_step_grad):
  with x64:
    x, mu = clustered(3)
    loss_fn = probes.readout_loss(jax.random.key(0), x.shape)
    kw = dict(num_iters=4, eta=eta, temperature=1.3)
    split = probes.gradient_split(x, mu, loss_fn, e_step_grad=e_step_grad, **kw)
    assert split.n_step.shape == split.e_step.shape == (4,) + x.shape
    full = full_grad(x, mu, loss_fn, e_step_grad=e_step_grad, **kw)
    np.testing.assert_allclose(split.n_step.sum(0) + split.e_step.sum(0), full, rtol=1e-10,
                               atol=1e-14)
    if e_step_grad:  # both kinds of path carry gradient: the split is not trivially exact
      assert np.abs(split.e_step).max() > 1e-6 and np.abs(split.n_step).max() > 1e-6
    else:
      assert np.abs(split.e_step).max() == 0


@pytest.mark.parametrize("eta", [0.2, 0.5, 1.0])
def test_n_step_gradient_of_each_layer_is_eq_18_when_e_steps_are_cut(eta):
  with x64:
    x, mu0 = clustered(4)
    b, n, c = x.shape
    T = 4
    v = np.asarray(jax.random.normal(jax.random.key(1), (n, c)))
    loss_fn = probes.readout_loss(jax.random.key(1), x.shape)  # sum(X_tilde * v) / B
    split = probes.gradient_split(x, mu0, loss_fn, num_iters=T, eta=eta, temperature=1.3,
                                 e_step_grad=False)
    # Independently, in numpy: forward pass, then Eq. 18 term by term.
    mu, gammas = np.asarray(mu0), []
    for _ in range(T):
      logits = np.einsum("bnc,bkc->bnk", x, mu) / 1.3
      g = np.exp(logits - logits.max(-1, keepdims=True))
      g /= g.sum(-1, keepdims=True)
      gammas.append(g)
      mu = (1 - eta) * mu + eta * np.einsum("bnk,bnc->bkc", g / (1e-6 + g.sum(1, keepdims=True)), x)
    # dE/dmu_k^(T) through the R-step X_tilde = gamma^(T) mu^(T) (gamma a constant).
    d_mu_T = np.einsum("bnk,nc->bkc", gammas[-1], v) / b
    for t in range(1, T + 1):
      g = gammas[t - 1]
      expected = (1 - eta) ** (T - t) * eta * np.einsum(
          "bnk,bkc->bnc", g / (1e-6 + g.sum(1, keepdims=True)), d_mu_T)
      np.testing.assert_allclose(split.n_step[t - 1], expected, rtol=1e-9, atol=1e-12)


def test_share_of_gradient_reaching_layer_1_grows_as_eta_falls():
  with x64:
    x, mu = clustered(5)
    loss_fn = probes.readout_loss(jax.random.key(2), x.shape)
    shares = []
    for eta in (1.0, 0.8, 0.5, 0.3, 0.1):
      split = probes.gradient_split(x, mu, loss_fn, num_iters=4, eta=eta, temperature=1.3,
                                   e_step_grad=False)
      n, _, _ = probes.layer_means(split)
      shares.append(n[0] / n.sum())
    assert shares[0] < 1e-12  # eta = 1: no highway, the cut graph gives layer 1 nothing
    assert np.all(np.diff(shares) > 0), shares


def test_e_step_to_n_step_ratio_is_measured_not_assumed():
  with x64:
    x, mu = clustered(6)
    loss_fn = probes.readout_loss(jax.random.key(3), x.shape)
    layers, totals = probes.probe_features(x, mu, loss_fn, etas=(0.5, 1.0), num_iters=3,
                                          temperature=1.3)
  assert [r["layer"] for r in layers] == [1, 2, 3, 1, 2, 3]
  ratios = [r["e_step_over_n_step"] for r in totals]
  assert all(np.isfinite(ratios)) and all(r >= 0 for r in ratios)
  print("E-step / N-step gradient ratio on clustered data:", ratios)


def test_command_line_probes_a_run(data_dir, tiny_run, tmp_path):
  env = {**os.environ, "TFDS_DATA_DIR": str(data_dir)}
  flags = tiny_flags(**tiny_run.overrides)
  cmd = ["python", "-m", "hemnet_jax.experiments.probe", "--config=configs/demo.py", f"--workdir={tiny_run.path}",
         "--etas=0.5,1.0", "--num_samples=6", f"--out={tmp_path}", *flags]
  res = subprocess.run([os.sys.executable, *cmd[1:]], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
  assert res.returncode == 0, res.stderr
  read = lambda name: list(csv.DictReader(open(tmp_path / name)))
  layers, totals, ckpts = read("probe_layers.csv"), read("probe_totals.csv"), read("probe_checkpoints.csv")
  assert [(float(r["eta"]), int(r["layer"])) for r in layers] == [(0.5, 1), (0.5, 2), (0.5, 3),
                                                                  (1.0, 1), (1.0, 2), (1.0, 3)]
  assert all(np.isfinite(float(r[k])) for r in layers for k in r)
  assert float(layers[3]["grad_x_n_step_e_cut"]) == 0  # eta = 1, layer 1 of 3: no highway
  assert len(totals) == 2 and "E-step / N-step" in res.stdout
  assert [int(r["step"]) for r in ckpts] == tiny_run.steps
  # Figure 3's PNGs next to the CSVs, at the plots' size (4.5 x 3.5 inches at 100 dpi).
  for name in ("fig3a_elbo.png", "fig3b_grad_n_step.png", "fig3c_grad_e_step.png",
               "fig3d_grad_checkpoints.png"):
    assert read_png(tmp_path / name) == (450, 350)
  assert read_png(tmp_path / "figure3.png") == (4 * 450, 360)  # (a)-(d) side by side
