"""The HEM math against float64 references and the paper's claims."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hemnet_jax import hem

x64 = jax.enable_x64(True)


def clustered(seed, b=2, n=60, k=5, c=8, spread=0.5, dtype=np.float64):
  """Points around k centres, and bases of unequal norms near some of them."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(k, c)) * 2.0
  x = centres[rng.integers(0, k, size=(b, n))] + spread * rng.normal(size=(b, n, c))
  mu = rng.normal(size=(b, k, c)) * rng.uniform(0.3, 3.0, size=(b, k, 1))
  return x.astype(dtype), mu.astype(dtype)


def np_softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def np_em(x, mu, num_iters, temperature):
  """Plain EM as EMANet writes it, in float64 numpy."""
  for _ in range(num_iters):
    gamma = np_softmax(np.einsum("bnc,bkc->bnk", x, mu) / temperature)
    gamma_bar = gamma / (1e-6 + gamma.sum(1, keepdims=True))
    mu = np.einsum("bnk,bnc->bkc", gamma_bar, x)
  return mu, gamma


def np_elbo(x, mu, gamma, temperature):
  sq = ((x[:, :, None, :] - mu[:, None, :, :]) ** 2).sum(-1)
  return (gamma * (-sq / (2 * temperature)) - gamma * np.log(gamma)).sum((1, 2))


def test_eta_one_is_plain_em():
  with x64:
    x, mu0 = clustered(0)
    out = hem.hem_iterations(jnp.asarray(x), jnp.asarray(mu0), num_iters=4, eta=1.0,
                             temperature=1.5)
    mu_ref, gamma_ref = np_em(x, mu0, 4, 1.5)
    np.testing.assert_allclose(out.mu, mu_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out.gamma, gamma_ref, rtol=1e-12, atol=1e-12)


def test_eta_below_one_is_not_em():
  with x64:
    x, mu0 = clustered(1)
    out = hem.hem_iterations(jnp.asarray(x), jnp.asarray(mu0), num_iters=3, eta=0.5, temperature=1.0)
    mu_ref, _ = np_em(x, mu0, 3, 1.0)
    assert np.abs(np.asarray(out.mu) - mu_ref).max() > 1e-3


@pytest.mark.parametrize("l2_normalize", [False, True])
@pytest.mark.parametrize("kernel", ["dot", "gaussian"])
def test_scan_equals_python_loop(l2_normalize, kernel):
  with x64:
    x, mu = map(jnp.asarray, clustered(2))
    out = hem.hem_iterations(x, mu, num_iters=5, eta=0.3, temperature=2.0,
                             l2_normalize=l2_normalize, kernel=kernel)
    for t in range(5):
      gamma = hem.e_step(x, mu, 2.0, kernel)
      mu = hem.n_step(x, gamma, mu, 0.3)
      if l2_normalize:
        mu = hem.l2_normalize(mu)
      np.testing.assert_allclose(out.mus[t], mu, rtol=1e-13)
      np.testing.assert_allclose(out.gammas[t], gamma, rtol=1e-13)
    np.testing.assert_allclose(out.mu, mu, rtol=1e-13)
    np.testing.assert_allclose(out.gamma, gamma, rtol=1e-13)


def test_n_step_matches_eq_12_newton_form():
  """Eq. 13 is Eq. 12 rearranged: mu - eta (-sigma^2/N_k) sum_n gamma_nk/sigma^2 (x_n - mu_k)."""
  with x64:
    x, mu = clustered(3)
    gamma = np.asarray(hem.e_step(jnp.asarray(x), jnp.asarray(mu), 1.0))
    n_k = gamma.sum(1)[:, :, None]
    grad = np.einsum("bnk,bnkc->bkc", gamma, x[:, :, None, :] - mu[:, None, :, :])
    newton = mu + 0.4 * grad / n_k
    # EMANet's 1e-6 guard in the denominator is the only difference.
    np.testing.assert_allclose(hem.n_step(jnp.asarray(x), jnp.asarray(gamma), jnp.asarray(mu), 0.4),
                               newton, rtol=1e-5)


@pytest.mark.parametrize("eta", [0.05, 0.3, 0.5, 0.8, 1.0])
@pytest.mark.parametrize("kernel", ["dot", "gaussian"])
def test_proposition_1_n_step_never_lowers_elbo(eta, kernel):
  with x64:
    for seed in range(4):
      x, mu = map(jnp.asarray, clustered(seed, b=50, spread=0.2 + seed))
      tau = 0.5 + seed
      gamma = hem.e_step(x, mu, tau, kernel)
      before = hem.elbo(x, mu, gamma, tau)
      after = hem.elbo(x, hem.n_step(x, gamma, mu, eta), gamma, tau)
      assert np.all(np.asarray(after) >= np.asarray(before) - 1e-9), (seed, before, after)


@pytest.mark.parametrize("eta", [0.2, 0.5, 1.0])
def test_gaussian_kernel_whole_iterations_never_lower_elbo(eta):
  with x64:
    for seed in range(4):
      x, mu0 = map(jnp.asarray, clustered(seed, b=50, spread=0.3 + seed))
      out = hem.hem_iterations(x, mu0, num_iters=6, eta=eta, temperature=1.0, kernel="gaussian")
      # L(mu^(t), gamma^(t)), starting from L(mu^(0), E(mu^(0))): one value per whole iteration.
      mus = jnp.concatenate([mu0[None], out.mus])
      gammas = jnp.concatenate([hem.e_step(x, mu0, 1.0, "gaussian")[None], out.gammas])
      elbos = np.asarray(jax.vmap(lambda m, g: hem.elbo(x, m, g, 1.0))(mus, gammas))
      assert np.all(np.diff(elbos, axis=0) >= -1e-9), (seed, elbos)


def test_dot_kernel_can_lower_elbo_so_no_test_claims_it():
  """With unequal base norms the dot E-step is not the bound's maximiser (see hem.elbo)."""
  with x64:
    lowered = 0
    for seed in range(3):
      x, mu0 = map(jnp.asarray, clustered(seed, b=100, spread=0.3 + seed))
      out = hem.hem_iterations(x, mu0, num_iters=4, eta=0.5, temperature=1.0, kernel="dot")
      mus = jnp.concatenate([mu0[None], out.mus])
      gammas = jnp.concatenate([hem.e_step(x, mu0, 1.0, "dot")[None], out.gammas])
      elbos = np.asarray(jax.vmap(lambda m, g: hem.elbo(x, m, g, 1.0))(mus, gammas))
      lowered += np.sum(np.any(np.diff(elbos, axis=0) < -1e-9, axis=0))
    assert lowered > 0


def test_kernels_agree_for_equal_norm_bases():
  with x64:
    x, mu = clustered(4)
    mu = mu / np.linalg.norm(mu, axis=-1, keepdims=True) * 1.7
    np.testing.assert_allclose(hem.e_step(x, mu, 0.7, "dot"), hem.e_step(x, mu, 0.7, "gaussian"),
                               rtol=1e-12, atol=1e-14)


def test_gaussian_kernel_is_exact_gmm_posterior():
  with x64:
    x, mu = clustered(5)
    sq = ((x[:, :, None, :] - mu[:, None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(hem.e_step(x, mu, 0.8, "gaussian"), np_softmax(-sq / 1.6),
                               rtol=1e-10, atol=1e-14)


def test_elbo_matches_reference():
  with x64:
    x, mu = clustered(6)
    gamma = np.asarray(hem.e_step(x, mu, 1.3))
    np.testing.assert_allclose(hem.elbo(x, mu, gamma, 1.3), np_elbo(x, mu, gamma, 1.3), rtol=1e-10)


def test_r_step_is_eq_10():
  with x64:
    x, mu = clustered(7)
    gamma = np.asarray(hem.e_step(x, mu, 1.0))
    np.testing.assert_allclose(hem.r_step(gamma, mu), gamma @ mu, rtol=1e-12)


@pytest.mark.parametrize("num_iters", [2, 3, 5])
@pytest.mark.parametrize("eta", [0.2, 0.5, 0.9])
def test_highway_jacobian_is_scaled_identity(num_iters, eta):
  """Eqs. 14-15: with the E-step paths cut, d mu^(T) / d mu^(t) = (1 - eta)^(T - t) I."""
  with x64:
    x, mu_t = map(jnp.asarray, clustered(8, b=1, k=3, c=4))
    f = lambda m: hem.hem_iterations(x, m, num_iters=num_iters, eta=eta, temperature=1.0,
                                     e_step_grad=False).mu
    jac = jax.jacobian(f)(mu_t).reshape(mu_t.size, mu_t.size)
    np.testing.assert_allclose(jac, (1 - eta) ** num_iters * np.eye(mu_t.size), atol=1e-12)
    # With the E-step paths open, the Jacobian is not that (the E-step adds a term).
    full = jax.jacobian(lambda m: hem.hem_iterations(x, m, num_iters=num_iters, eta=eta,
                                                     temperature=1.0).mu)(mu_t)
    assert np.abs(full.reshape(jac.shape) - jac).max() > 1e-6


def test_no_backprop_blocks_all_gradients():
  x, mu0 = map(jnp.asarray, clustered(9, dtype=np.float32))
  loss = lambda x, m: jnp.sum(hem.hem_iterations(x, m, num_iters=3, eta=1.0, temperature=1.0,
                                                 backprop=False).mu ** 2)
  gx, gm = jax.grad(loss, argnums=(0, 1))(x, mu0)
  assert not np.any(gx) and not np.any(gm)
  gx, gm = jax.grad(lambda x, m: jnp.sum(hem.hem_iterations(
      x, m, num_iters=3, eta=1.0, temperature=1.0).mu ** 2), argnums=(0, 1))(x, mu0)
  assert np.any(gx) and np.any(gm)


def test_shared_mu_broadcasts_over_batch():
  x, mu = clustered(10, dtype=np.float32)
  shared = mu[0]
  a = hem.hem_iterations(x, shared, num_iters=2, eta=0.5, temperature=1.0)
  b = hem.hem_iterations(x, np.broadcast_to(shared, mu.shape), num_iters=2, eta=0.5, temperature=1.0)
  np.testing.assert_allclose(a.mu, b.mu, rtol=1e-6)
  np.testing.assert_allclose(hem.e_step(x, shared, 1.0), hem.e_step(x, np.broadcast_to(shared, mu.shape), 1.0))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_softmax_runs_in_float32(dtype):
  x, mu = clustered(11, dtype=np.float32)
  gamma = hem.e_step(jnp.asarray(x, dtype), jnp.asarray(mu, dtype), 1.0)
  assert gamma.dtype == jnp.float32
  np.testing.assert_allclose(gamma.sum(-1), 1.0, rtol=1e-6)
  out = hem.hem_iterations(jnp.asarray(x, dtype), jnp.asarray(mu, dtype), num_iters=2, eta=0.5,
                           temperature=1.0)
  assert out.mu.dtype == jnp.float32 and out.gamma.dtype == jnp.float32


def test_float64_stays_float64():
  with x64:
    x, mu = map(jnp.asarray, clustered(12))
    out = hem.hem_iterations(x, mu, num_iters=2, eta=0.5, temperature=1.0)
    for a in (*out, hem.elbo(x, out.mu, out.gamma, 1.0), hem.r_step(out.gamma, out.mu)):
      assert a.dtype == jnp.float64


def test_bad_arguments_name_the_problem():
  x, mu = clustered(13, dtype=np.float32)
  with pytest.raises(ValueError, match="kernel"):
    hem.e_step(x, mu, 1.0, kernel="cosine")
  with pytest.raises(ValueError, match="num_iters"):
    hem.hem_iterations(x, mu, num_iters=0, eta=0.5, temperature=1.0)
