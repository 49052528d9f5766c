"""models/batch_norm.BatchNorm against flax's nn.BatchNorm: the same variables and numbers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hemnet_jax.models import batch_norm


@pytest.mark.parametrize("train", [True, False])
def test_batch_norm_equals_flax_in_float64(train):
  with jax.enable_x64(True):
    x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (2, 5, 4, 6), jnp.float64)
    g = jax.random.normal(jax.random.key(1), x.shape, jnp.float64)
    ours = batch_norm.BatchNorm(use_running_average=not train, momentum=0.9)
    ref = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)
    variables = ref.init(jax.random.key(2), x)
    assert jax.tree.structure(ours.init(jax.random.key(2), x)) == jax.tree.structure(variables)
    # Scale, bias and running statistics away from their initial values.
    keys = iter(jax.random.split(jax.random.key(3), 4))
    variables = jax.tree.map(lambda v: v + 0.5 * jax.random.uniform(next(keys), v.shape, v.dtype),
                             variables)

    def run(module):
      def f(params, x):
        return module.apply({**variables, "params": params}, x, mutable=["batch_stats"])
      (y, stats), vjp = jax.vjp(f, variables["params"], x)
      grads = vjp((g, jax.tree.map(jnp.zeros_like, stats)))
      return y, stats, grads

    (y, stats, grads), (y_ref, stats_ref, grads_ref) = run(ours), run(ref)
    assert y.dtype == jnp.float64
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(jax.tree.leaves((stats, grads)), jax.tree.leaves((stats_ref, grads_ref))):
      np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_the_returned_statistics_have_their_gradients():
  """d(mean)/dx and d(var)/dx, which training never asks for, are still right."""
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.key(0), (3, 4, 5), jnp.float64)
    scale, bias = jnp.full((5,), 1.5), jnp.full((5,), 0.2)

    def reference(x):
      mean = jnp.mean(x, (0, 1))
      var = jnp.mean(x * x, (0, 1)) - mean * mean
      return (x - mean) * scale / jnp.sqrt(var + 1e-5) + bias, mean, var

    for i in range(3):
      f = lambda x, i=i: jnp.sum(jnp.sin(batch_norm.normalize_batch(x, scale, bias, 1e-5)[i]))
      r = lambda x, i=i: jnp.sum(jnp.sin(reference(x)[i]))
      np.testing.assert_allclose(jax.grad(f)(x), jax.grad(r)(x), rtol=1e-9, atol=1e-12)


def test_bfloat16_output_float32_statistics():
  x = jax.random.normal(jax.random.key(0), (2, 3, 3, 4)).astype(jnp.bfloat16)
  bn = batch_norm.BatchNorm(use_running_average=False, dtype=jnp.bfloat16)
  variables = bn.init(jax.random.key(1), x)
  y, stats = bn.apply(variables, x, mutable=["batch_stats"])
  assert y.dtype == jnp.bfloat16
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(stats))
