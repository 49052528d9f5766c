"""Is the HEM attention alive? Diagnostics of gamma and mu0 as plain JAX / numpy functions.

gamma [..., N, K] are responsibilities (Eq. 8), mu0 [K, C] the bases the iterations start
from. Nothing here depends on Flax: the train step calls the gamma ones inside jit, the
mu0 ones run on the host at log time.

  responsibility_entropy  mean_n H(gamma_n) / ln K: 0 = every pixel picks one basis,
                          1 = every pixel spreads evenly over all K.
  bases_in_use            exp(H(mean_n gamma_n)): the effective number of bases the
                          pixels use together, 1..K (K when the mass is spread evenly).
  mu0_diagnostics         distinct bases (greedy groups at cosine > 0.99), the largest
                          and median off-diagonal cosine, min / median / max ||mu0_k||.
"""

import math

import jax.numpy as jnp
import numpy as np

# Two bases closer than this (cosine) count as one: the threshold.
DISTINCT_COSINE = 0.99
_EPS = 1e-12


def _entropy(p, axis=-1):
  """Shannon entropy in nats; 0 ln 0 = 0."""
  return -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=axis)


def responsibility_entropy(gamma):
  """mean over pixels of H(gamma_n) / ln K, in [0, 1]; gamma [..., N, K]."""
  k = gamma.shape[-1]
  gamma = gamma.astype(jnp.float32)
  return jnp.mean(_entropy(gamma)) / math.log(k)


def entropy_sums(gamma):
  """(sum over pixels of H(gamma_n) / ln K, sum over pixels of gamma_n [K], pixel count):
  the sufficient statistics of both gamma diagnostics, to add up over batches."""
  k = gamma.shape[-1]
  gamma = gamma.astype(jnp.float32).reshape(-1, k)
  return jnp.sum(_entropy(gamma)) / math.log(k), jnp.sum(gamma, 0), gamma.shape[0]


def bases_in_use_from_mass(mass):
  """exp(H(p)) of the mass over bases p = mass / sum(mass); mass [K]."""
  p = mass / jnp.maximum(jnp.sum(mass), _EPS)
  return jnp.exp(_entropy(p))


def bases_in_use(gamma):
  """exp(H(mean_n gamma_n)) over all pixels (and batch elements), in [1, K]."""
  k = gamma.shape[-1]
  return bases_in_use_from_mass(jnp.sum(gamma.astype(jnp.float32).reshape(-1, k), 0))


def cosine_matrix(mu0):
  """Pairwise cosine [K, K] of the rows of mu0 [K, C] (a zero row has cosine 0)."""
  mu0 = np.asarray(mu0, np.float64)
  unit = mu0 / np.maximum(np.linalg.norm(mu0, axis=-1, keepdims=True), _EPS)
  return unit @ unit.T


def distinct_bases(mu0, threshold=DISTINCT_COSINE):
  """Number of greedy groups: each row not yet grouped starts a group that takes every
  ungrouped row with cosine > threshold to it."""
  cos = cosine_matrix(mu0)
  grouped = np.zeros(cos.shape[0], bool)
  groups = 0
  for k in range(cos.shape[0]):
    if not grouped[k]:
      groups += 1
      grouped |= cos[k] > threshold
      grouped[k] = True
  return groups


def mu0_diagnostics(mu0):
  """A dict of floats: the mu0 [K, C] diagnostics of the module docstring."""
  mu0 = np.asarray(mu0, np.float64)
  if mu0.ndim != 2:
    raise ValueError(f"mu0_diagnostics: mu0 must be [K, C], got shape {mu0.shape}")
  k = mu0.shape[0]
  off = cosine_matrix(mu0)[~np.eye(k, dtype=bool)]
  norms = np.linalg.norm(mu0, axis=-1)
  return {
      "distinct_bases": distinct_bases(mu0),
      "max_cosine": float(off.max()) if k > 1 else float("nan"),
      "median_cosine": float(np.median(off)) if k > 1 else float("nan"),
      "min_norm": float(norms.min()),
      "median_norm": float(np.median(norms)),
      "max_norm": float(norms.max()),
  }


def gamma_diagnostics(entropy_sum, mass, count):
  """{"entropy", "bases_in_use"} from entropy_sums' statistics (summed over batches)."""
  return {"entropy": entropy_sum / count, "bases_in_use": bases_in_use_from_mass(mass)}
