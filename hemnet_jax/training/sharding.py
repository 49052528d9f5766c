"""The device mesh and how the train state and batches are laid out on it.

One mesh axis, "data": the global batch is split over every device of every
process. Parameters and optimizer state are replicated (data parallel), or with
FSDP split over the same axis along their largest evenly divisible dimension; XLA
inserts the all-gathers and reduce-scatters. BN statistics and the mu0 moving
average are means over the global batch either way: they are computed on global
arrays, so they are the synchronised BN that EMANet uses, on any device count.
"""

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P


def make_mesh(devices=None):
  devices = jax.devices() if devices is None else devices
  # Auto axes: shardings are propagated by XLA (the jit + shardings form of pjit).
  return Mesh(np.asarray(devices), ("data",), axis_types=(AxisType.Auto,))


def replicated(mesh):
  return NamedSharding(mesh, P())


def _fsdp_spec(shape, num_shards, min_size):
  if int(np.prod(shape)) < min_size:
    return P()  # small arrays (BN scales, biases) cost more to gather than to replicate
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % num_shards == 0:
      return P(*([None] * dim), "data")
  return P()


def state_shardings(state, mesh, *, fsdp=False, min_size=2**14):
  """A NamedSharding for every array of `state` (arrays or ShapeDtypeStructs)."""
  def sharding(x):
    spec = _fsdp_spec(np.shape(x), mesh.size, min_size) if fsdp else P()
    return NamedSharding(mesh, spec)
  return jax.tree.map(sharding, state)


def batch_sharding(mesh):
  return NamedSharding(mesh, P("data"))


def shard_batch(batch, mesh):
  """This process's examples, as one global array split over the data axis."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(batch_sharding(mesh), x), batch)


def abstract_state(state, shardings):
  """Restore targets: shapes, dtypes and the shardings to restore onto (any mesh)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), jax.numpy.result_type(x),
                                                       sharding=s), state, shardings)
