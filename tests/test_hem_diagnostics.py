"""The attention diagnostics against hand-made gamma / mu0 whose answers are known."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hemnet_jax.hem import diagnostics as hd


def one_hot_gamma(assignments, k):
  return jax.nn.one_hot(jnp.asarray(assignments), k)  # [N, K]


def test_one_hot_gamma_has_zero_entropy_and_counts_the_bases_used_evenly():
  gamma = one_hot_gamma([0, 1, 2, 3] * 5, 8)  # 4 of 8 bases, 5 pixels each
  assert float(hd.responsibility_entropy(gamma)) == pytest.approx(0.0, abs=1e-6)
  assert float(hd.bases_in_use(gamma)) == pytest.approx(4.0, rel=1e-5)


def test_every_pixel_on_one_basis_is_one_basis_in_use():
  gamma = one_hot_gamma([5] * 12, 8)
  assert float(hd.bases_in_use(gamma)) == pytest.approx(1.0, rel=1e-6)


def test_uniform_gamma_has_entropy_one_and_all_bases_in_use():
  gamma = jnp.full((2, 30, 16), 1.0 / 16)  # [B, N, K]
  assert float(hd.responsibility_entropy(gamma)) == pytest.approx(1.0, rel=1e-5)
  assert float(hd.bases_in_use(gamma)) == pytest.approx(16.0, rel=1e-5)


def test_half_half_pixels_on_two_of_four_bases():
  # Each pixel splits 50/50 between two bases: H = ln 2, normalised by ln 4 -> 0.5.
  # Pixels alternate between the pairs (0, 1) and (2, 3): the mean is uniform over 4.
  gamma = jnp.asarray([[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]] * 10)
  assert float(hd.responsibility_entropy(gamma)) == pytest.approx(0.5, rel=1e-5)
  assert float(hd.bases_in_use(gamma)) == pytest.approx(4.0, rel=1e-5)


def test_uneven_mass_gives_exp_of_its_entropy():
  # 3 pixels on basis 0, 1 on basis 1: p = (3/4, 1/4), exp(H(p)) known in closed form.
  gamma = one_hot_gamma([0, 0, 0, 1], 3)
  p = np.array([0.75, 0.25])
  assert float(hd.bases_in_use(gamma)) == pytest.approx(math.exp(-np.sum(p * np.log(p))), rel=1e-5)


def test_entropy_sums_add_up_over_batches_to_the_whole():
  rng = np.random.default_rng(0)
  gamma = jax.nn.softmax(jnp.asarray(rng.normal(size=(4, 25, 6)) * 3), -1)
  parts = [hd.entropy_sums(gamma[:1]), hd.entropy_sums(gamma[1:])]
  h = sum(p[0] for p in parts) / sum(p[2] for p in parts)
  mass = sum(p[1] for p in parts)
  assert float(h) == pytest.approx(float(hd.responsibility_entropy(gamma)), rel=1e-5)
  assert float(hd.bases_in_use_from_mass(mass)) == pytest.approx(float(hd.bases_in_use(gamma)),
                                                                 rel=1e-5)


def test_duplicated_rows_count_once():
  a, b = np.array([1.0, 2.0, 0.0, 1.0]), np.array([0.0, -1.0, 3.0, 0.0])
  mu0 = np.stack([a, a, 2 * a, a, b])  # a scaled copy is the same direction
  d = hd.mu0_diagnostics(mu0)
  assert d["distinct_bases"] == 2
  assert d["max_cosine"] == pytest.approx(1.0, abs=1e-9)
  # 20 ordered off-diagonal pairs: 12 inside the a-group (cosine 1), 8 a-b ones.
  assert d["median_cosine"] == pytest.approx(1.0, abs=1e-9)
  assert d["min_norm"] == pytest.approx(np.linalg.norm(a))
  assert d["median_norm"] == pytest.approx(np.linalg.norm(a))
  assert d["max_norm"] == pytest.approx(np.linalg.norm(2 * a))


def test_orthogonal_rows_are_all_distinct():
  mu0 = np.diag([1.0, 2.0, 3.0, 4.0, 5.0])
  d = hd.mu0_diagnostics(mu0)
  assert d["distinct_bases"] == 5
  assert d["max_cosine"] == pytest.approx(0.0, abs=1e-12)
  assert d["median_cosine"] == pytest.approx(0.0, abs=1e-12)
  assert (d["min_norm"], d["median_norm"], d["max_norm"]) == pytest.approx((1.0, 3.0, 5.0))


def test_distinct_uses_the_threshold_and_groups_greedily():
  def unit(angle):
    return np.array([math.cos(angle), math.sin(angle)])
  near = math.acos(0.995)  # inside the 0.99 threshold
  far = math.acos(0.95)
  assert hd.distinct_bases(np.stack([unit(0), unit(near)])) == 1
  assert hd.distinct_bases(np.stack([unit(0), unit(far)])) == 2
  # A chain 0 - near - 2 near: the first group takes rows 0 and 1; row 2 is 2 near from
  # row 0 (cosine < 0.99) and starts its own group.
  assert hd.distinct_bases(np.stack([unit(0), unit(near), unit(2 * near)])) == 2
  # Median of the off-diagonal cosines of three rows at 0, 90, 180 degrees: (0, -1, 0) -> 0.
  d = hd.mu0_diagnostics(np.stack([unit(0), unit(math.pi / 2), unit(math.pi)]))
  assert d["max_cosine"] == pytest.approx(0.0, abs=1e-12)
  assert d["median_cosine"] == pytest.approx(0.0, abs=1e-12)


def test_mu0_must_be_a_matrix():
  with pytest.raises(ValueError, match=r"mu0 must be \[K, C\]"):
    hd.mu0_diagnostics(np.zeros((2, 3, 4)))


def test_gamma_diagnostics_run_under_jit():
  gamma = one_hot_gamma([0, 1] * 4, 4)
  assert float(jax.jit(hd.bases_in_use)(gamma)) == pytest.approx(2.0, rel=1e-5)
  assert float(jax.jit(hd.responsibility_entropy)(gamma)) == pytest.approx(0.0, abs=1e-6)


def test_train_reports_name_the_unit_and_show_each_number():
  from hemnet_jax.training import attention
  a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
  report = attention.mu0_report({"hem": {"mu0": np.stack([a, 3 * a, b])}})
  assert report["hem"]["distinct_bases"] == 2 and report["hem"]["max_norm"] == pytest.approx(3)
  sown = {"hem": {"entropy_sum": (jnp.float32(1.5),), "mass": (jnp.array([1.0, 1.0, 0.0]),),
                  "count": (jnp.float32(3.0),)}}
  sums = attention.per_unit(sown)["hem"]
  gamma = hd.gamma_diagnostics(**sums)
  assert float(gamma["entropy"]) == pytest.approx(0.5)
  assert float(gamma["bases_in_use"]) == pytest.approx(2.0, rel=1e-5)
  line = attention.format_attention({"attention": {"hem": {
      **{k: float(v) for k, v in gamma.items()}, **report["hem"]}}})
  assert line.startswith("HEM unit 'hem': entropy 0.500  bases in use 2.00  distinct bases in mu0 2")
