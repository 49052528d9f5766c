"""hem.reseed_cosine: a duplicated basis of mu0 is re-seeded, the rest stay; the unit sows
its gamma statistics."""

import jax
import jax.numpy as jnp
import numpy as np

from hemnet_jax.hem import diagnostics as hem_diagnostics
from hemnet_jax.models.hem_unit import DIAGNOSTICS, HEMUnit, reseed_duplicates


def test_duplicates_take_the_worst_reconstructed_features_and_the_rest_stay():
  a, b = jnp.array([1.0, 0.0, 0.0]), jnp.array([0.0, 1.0, 0.0])
  mu0 = jnp.stack([a, 2 * a, b, b + 0.001])  # rows 1 and 3 duplicate rows 0 and 2
  x = jnp.array([[[0.0, 0, 1], [0, 1, 1], [1, 0, 1], [1, 1, 1], [1, 1, 0], [1, 0, -1]]])
  err = jnp.array([[0.0, 5.0, 1.0, 9.0, 2.0, 3.0]])  # worst: pixel 3, then 1, 5, 4
  new = np.asarray(reseed_duplicates(mu0, x, err, 0.99))
  np.testing.assert_array_equal(new[[0, 2]], np.asarray(mu0)[[0, 2]])
  # Row k takes the k-th worst pixel: rows 1 and 3 get pixels 1 (2nd worst) and 4 (4th).
  np.testing.assert_array_equal(new[1], np.asarray(x[0, 1]))
  np.testing.assert_array_equal(new[3], np.asarray(x[0, 4]))
  assert hem_diagnostics.distinct_bases(new) == 4


def test_nothing_changes_below_the_threshold():
  mu0 = jnp.eye(4)
  x = jnp.ones((2, 5, 4))
  new = reseed_duplicates(mu0, x, jnp.ones((2, 5)), 0.99)
  np.testing.assert_array_equal(np.asarray(new), np.asarray(mu0))


def test_normalize_gives_unit_seeds():
  mu0 = jnp.ones((3, 4))
  x = jnp.arange(1.0, 25.0).reshape(1, 6, 4)
  new = np.asarray(reseed_duplicates(mu0, x, jnp.arange(6.0)[None], 0.99, normalize=True))
  np.testing.assert_allclose(np.linalg.norm(new[1:], axis=-1), 1.0, rtol=1e-5)


def test_a_collapsed_unit_comes_out_of_training_distinct_only_with_reseeding():
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 8))
  for threshold, distinct in ((None, 1), (0.95, 4)):
    unit = HEMUnit(num_bases=4, num_iters=2, reseed_cosine=threshold)
    v = unit.init(jax.random.key(1), x)
    # init sows too: keep only the variables, with a fully collapsed mu0
    v = {"params": v["params"], "batch_stats": v["batch_stats"], "hem_bases": {"mu0": jnp.ones((4, 8))}}
    _, upd = unit.apply(v, x, train=True, mutable=["batch_stats", "hem_bases", DIAGNOSTICS])
    assert hem_diagnostics.distinct_bases(upd["hem_bases"]["mu0"]) == distinct
    # identical bases share the mass evenly: all 4 "in use" though only one is distinct
    sums = [upd[DIAGNOSTICS][n][0] for n in ("entropy_sum", "mass", "count")]
    d = hem_diagnostics.gamma_diagnostics(*sums)
    assert float(sums[2]) == 2 * 36
    if threshold is None:
      assert abs(float(d["entropy"]) - 1) < 1e-5
      assert abs(float(d["bases_in_use"]) - 4) < 1e-4


def test_reseeding_is_off_in_the_paper_and_in_the_emanet_release():
  from hemnet_jax.training import config as config_utils
  import pytest
  assert config_utils.default_config().hem.reseed_cosine is None
  c = config_utils.apply_variant(config_utils.default_config(), "emanet")
  c.hem.reseed_cosine = 0.95
  assert config_utils.apply_variant(c, "emanet").hem.reseed_cosine is None
  c.hem.reseed_cosine = 0.95
  paper = config_utils.apply_variant(c, "paper")
  assert paper.hem.reseed_cosine is None and paper.hem.eta == 1.0  # nothing else changed
  c.hem.reseed_cosine = 1.0
  with pytest.raises(ValueError, match="hem.reseed_cosine"):
    config_utils.validate(c)
