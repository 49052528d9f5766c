r"""Training input pipeline throughput at 513 crops, in images/s per CPU core.

Runs hemnet_jax.data.pipeline.train_batches (decode JPEG + PNG, random scale in [0.5, 2],
pad, random crop, flip, normalise, batch) on synthetic VOC-sized examples stored as the
builders store them: JPEG image bytes (500x375, about VOC's average file size) and a PNG label.

  python -m benchmarks.input_pipeline [--threads 2] [--batches 20] [--profile]

--threads defaults to config.data.num_threads' default (2), as training reads.

Per-core figure: images divided by the process's CPU seconds (all threads), so that other
load on a shared machine does not count against it; wall-clock images/s is printed too.
"""

import argparse
import cProfile
import io
import os
import pstats
import time

from hemnet_jax.cli import host_memory

# As training runs (hemnet_jax/main.py): set before JAX starts its threads.
host_memory.set_up(restart=__name__ == "__main__")

import ml_collections
import numpy as np
from PIL import Image

from benchmarks import common
from hemnet_jax.data import pipeline as input_pipeline
from hemnet_jax.training import config as config_lib


def synthetic_examples(n, seed=0, size=(375, 500)):
  """Smooth colour fields with edges and noise: JPEGs of a natural image's size and entropy."""
  rng = np.random.default_rng(seed)
  h, w = size
  examples = []
  for _ in range(n):
    coarse = rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), np.float32)
    image += rng.normal(0, 22, image.shape)
    image = np.clip(image, 0, 255).astype(np.uint8)
    label = np.asarray(Image.fromarray(rng.integers(0, 21, (6, 8), dtype=np.uint8))
                       .resize((w, h), Image.NEAREST))
    jpeg, png = io.BytesIO(), io.BytesIO()
    Image.fromarray(image).save(jpeg, format="JPEG", quality=90)
    Image.fromarray(label, mode="L").save(png, format="PNG")
    examples.append({"image": jpeg.getvalue(), "label": png.getvalue(), "id": b"x"})
  return examples


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--threads", type=int, default=config_lib.default_config().data.num_threads,
                      help="Grain reader threads (default: config.data.num_threads', as training)")
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--batches", type=int, default=20)
  parser.add_argument("--crop", type=int, default=513)
  parser.add_argument("--profile", action="store_true", help="cProfile one thread's transforms")
  args = parser.parse_args()

  print(common.banner())
  examples = synthetic_examples(64)
  print(f"{len(examples)} synthetic examples, mean JPEG "
        f"{np.mean([len(e['image']) for e in examples]) / 1024:.0f} KiB; crop {args.crop}, "
        f"batch {args.batch_size}, {args.threads} thread(s), {os.cpu_count()} CPUs visible")
  config = ml_collections.ConfigDict(dict(crop_size=args.crop, scale_range=(0.5, 2.0),
                                          num_threads=args.threads, prefetch=2))
  split = input_pipeline.Split(examples, len(examples))

  if args.profile:
    rng = np.random.default_rng(0)
    profiler = cProfile.Profile()
    profiler.enable()
    for i in range(args.batches * args.batch_size):
      input_pipeline.train_transform(input_pipeline.decode(examples[i % len(examples)]), rng,
                                     crop_size=args.crop, scale_range=(0.5, 2.0))
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(12)
    return

  batches = input_pipeline.train_batches(split, config, batch_size=args.batch_size, seed=0)
  next(batches)  # start-up: threads, first prefetch
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(args.batches):
    batch = next(batches)
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  assert batch["image"].shape == (args.batch_size, args.crop, args.crop, 3)
  images = args.batches * args.batch_size
  print(f"{images} images: {images / cpu:.1f} images per CPU-second (per core), "
        f"{images / wall:.1f} images/s wall-clock")


if __name__ == "__main__":
  main()
