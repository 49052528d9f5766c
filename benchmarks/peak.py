r"""The device's practical matmul limit: FLOP/s of a large jnp.dot, float32 and bfloat16.

  python -m benchmarks.peak

Every other benchmark measures this again in its own run and reports its figures as a
fraction of it (`benchmarks.common.matmul_peak`); this script prints it alone.
"""

from hemnet_jax.cli import host_memory

# As training runs (hemnet_jax/main.py): set before JAX starts its threads.
host_memory.set_up(restart=__name__ == "__main__")

import jax.numpy as jnp

from benchmarks import common


def main():
  print(common.banner())
  for dtype in (jnp.float32, jnp.bfloat16):
    if dtype == jnp.bfloat16 and not common.has_fast_bf16():
      print("bfloat16: skipped (no bf16 matmul units on this device)")
      continue
    flops, n = common.matmul_peak(dtype)
    print(f"{jnp.dtype(dtype).name} jnp.dot peak: {common.gflops(flops)} (at {n}x{n} @ {n}x{n})")


if __name__ == "__main__":
  main()
