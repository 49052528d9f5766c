r"""ResNet-101's stages one at a time, forward + backward, against the same stages in PyTorch.

  python -m benchmarks.stages                  # CPU: crop 129, batch 2, float32, 10 rounds
  python -m benchmarks.stages --isa avx2       # both frameworks capped to AVX2
  python -m benchmarks.stages --steps 20       # more rounds where the machine is noisy

Where the train step's time goes, framework against framework. Each part of configs/voc.py's
backbone (the deep stem with its max pool, then stages 1-4 at output stride 8 with multi-grid)
runs alone in training mode (batch norm with batch statistics): forward, then backward to its
parameters and, after the stem, to its input, with a random cotangent. Its input is what the
parts before it output for one random batch. Ours is `models/resnet.py`'s code jitted,
PyTorch's the EMANet release's layout in eager mode (`benchmarks/torch_emanet.py`'s
`extractor`), in interleaved rounds. A part alone is not that part inside the step, where XLA
overlaps and fuses across stages and the head and the optimizer update run too
(`benchmarks/train_step.py` times the step): the table says whose kernels are faster at which
shapes. Last line: `summary: stem=... layer1=... ... all=...` (PyTorch's time / ours).
"""

import sys

from benchmarks import isa

isa.cap_from_argv(sys.argv[1:])  # before JAX or PyTorch loads

import argparse
import functools
import os

from hemnet_jax.cli import host_memory

# As training and benchmarks.train_step run: set before JAX starts its threads.
host_memory.set_up(restart=__name__ == "__main__")

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from hemnet_jax.models import resnet

BN_MOMENTUM = 3e-4  # PyTorch's convention; ours is 1 - this, as configs/voc.py's
OUTPUT_STRIDE, MULTI_GRID = 8, (1, 2, 4)  # configs/voc.py's, on both sides


class Part(nn.Module):
  """The stem (index 0) or stage `index` of models/resnet.ResNet, alone, in training mode."""
  index: int
  stage_sizes: tuple
  width: int
  stem_width: int

  @nn.compact
  def __call__(self, x):
    norm = functools.partial(nn.BatchNorm, use_running_average=False,
                             momentum=1.0 - BN_MOMENTUM, epsilon=1e-5)
    if self.index == 0:
      return resnet.stem(x, norm, "deep", self.width, self.stem_width)
    stride, dilations = resnet.stage_plan(self.stage_sizes, OUTPUT_STRIDE,
                                          MULTI_GRID)[self.index - 1]
    return resnet.stage(x, self.index - 1, stride, dilations, norm, self.width)


def part_names(stage_sizes):
  return ["stem"] + [f"layer{i + 1}" for i in range(len(stage_sizes))]


def our_parts(args, images):
  """[(name, jitted forward + backward, its arguments, parameter count, output)], in order."""
  parts, x = [], jnp.asarray(images)
  rng = np.random.default_rng(1)
  for index, name in enumerate(part_names(args.blocks)):
    module = Part(index, args.blocks, args.width, args.stem_width)
    variables = module.init(jax.random.key(index), x)
    y, _ = module.apply(variables, x, mutable=["batch_stats"])
    d_y = jnp.asarray(rng.standard_normal(y.shape, dtype=np.float32))
    argnums = (0,) if index == 0 else (0, 1)  # the stem's input is the images: no gradient

    def fwd_bwd(params, batch_stats, x, d_y, module=module, argnums=argnums):
      def loss(params, x):
        y, updates = module.apply({"params": params, "batch_stats": batch_stats}, x,
                                  mutable=["batch_stats"])
        return jnp.vdot(y, d_y), updates
      return jax.grad(loss, argnums=argnums, has_aux=True)(params, x)

    count = sum(a.size for a in jax.tree_util.tree_leaves(variables["params"]))
    parts.append((name, jax.jit(fwd_bwd), (variables["params"], variables["batch_stats"], x, d_y),
                  count, y))
    x = y
  return parts


def torch_parts(args, ours):
  """{name: (callable running PyTorch's forward + backward, parameter count)} for the same
  parts, on our parts' inputs and cotangents (NCHW copies)."""
  import torch  # pylint: disable=import-outside-toplevel
  from benchmarks import torch_emanet  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  net, _ = torch_emanet.extractor(args.blocks, args.width, args.stem_width, OUTPUT_STRIDE,
                                  MULTI_GRID, BN_MOMENTUM)
  modules = [net[:4]] + [net[4 + i] for i in range(len(args.blocks))]
  out = {}
  for (name, _, (_, _, x, d_y), _, _), module in zip(ours, modules):
    module.train()
    t_x = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
    t_x.requires_grad_(name != "stem")
    t_dy = torch.from_numpy(np.asarray(d_y).transpose(0, 3, 1, 2).copy())

    def step(module=module, t_x=t_x, t_dy=t_dy):
      module.zero_grad(set_to_none=True)
      t_x.grad = None
      module(t_x).backward(t_dy)

    out[name] = (step, sum(p.numel() for p in module.parameters()))
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--crop", type=int, default=129)
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--steps", type=int, default=10, help="timed rounds")
  parser.add_argument("--blocks", default="3,4,23,3",
                      help="blocks per stage (ResNet-101's by default; fewer for a quick check)")
  parser.add_argument("--width", type=int, default=64, help="planes of stage 1")
  parser.add_argument("--stem_width", type=int, default=128, help="the deep stem's output channels")
  isa.add_flag(parser)
  args = parser.parse_args()
  flag = args.blocks
  try:
    args.blocks = tuple(int(b) for b in flag.split(","))
  except ValueError:
    parser.error(f"--blocks {flag}: four comma-separated counts, as 3,4,23,3")
  if len(args.blocks) != 4 or min(args.blocks) < 1:
    parser.error(f"--blocks {flag}: four counts of at least 1, as 3,4,23,3")
  if args.steps < 1:
    parser.error(f"--steps {args.steps}: at least 1 round")
  if args.crop < 16 or args.batch < 1:
    parser.error(f"--crop {args.crop} --batch {args.batch}: a crop of at least 16 pixels (stage 4 "
                 "then has a 2 x 2 map for batch norm's statistics) and a batch of at least 1")
  if args.width < 1 or args.stem_width < 2:
    parser.error(f"--width {args.width} --stem_width {args.stem_width}: at least 1 and 2")
  if jax.default_backend() != "cpu":
    parser.error("benchmarks.stages compares against PyTorch on the CPU; on an accelerator, "
                 "benchmarks.train_step times the whole step")

  import torch  # pylint: disable=import-outside-toplevel
  print(common.banner())
  print(isa.describe(args.isa))
  print(f"torch {torch.__version__}, {os.cpu_count()} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}")
  print(f"\n== ResNet blocks {','.join(map(str, args.blocks))}, width {args.width}, deep stem "
        f"{args.stem_width}, OS {OUTPUT_STRIDE}, multi-grid {MULTI_GRID}, crop {args.crop}, "
        f"batch {args.batch}, float32, training mode, forward + backward", flush=True)
  images = np.random.default_rng(0).standard_normal((args.batch, args.crop, args.crop, 3),
                                                    dtype=np.float32)
  ours = our_parts(args, images)
  theirs = torch_parts(args, ours)
  for name, _, _, count, _ in ours:  # before any timing
    if count != theirs[name][1]:
      raise SystemExit(f"{name}: {count} parameters in ours, {theirs[name][1]} in PyTorch's; "
                       "the two sides must build the same network")
  calls, sync = {}, {}
  for name, fn, fn_args, _, _ in ours:
    calls[("ours", name)] = functools.partial(fn, *fn_args)
    calls[("torch", name)] = theirs[name][0]
    sync[("torch", name)] = lambda r: r  # PyTorch's CPU ops are synchronous
  for name, call in calls.items():  # compile and warm up
    for _ in range(2):
      sync.get(name, common.block)(call())
  times = common.interleaved(calls, reps=1, rounds=args.steps, sync=sync, every_call=True)
  median = lambda ts: float(np.median(ts))
  ratios, total = {}, {"ours": np.zeros(args.steps), "torch": np.zeros(args.steps)}
  for name, _, _, count, y in ours:
    t_ours, t_torch = times[("ours", name)], times[("torch", name)]
    lo, hi = common.ratio_range(t_torch, t_ours)
    ratios[name] = median(t_torch) / median(t_ours)
    total["ours"] += t_ours
    total["torch"] += t_torch
    print(f"  {name} (output {'x'.join(map(str, y.shape[1:]))}, {count:,} parameters): "
          f"ours {median(t_ours) * 1e3:.2f} ms, PyTorch eager {median(t_torch) * 1e3:.2f} ms; "
          f"ours is {ratios[name]:.2f}x (round by round {lo:.2f}-{hi:.2f}x)", flush=True)
  ratios["all"] = median(total["torch"]) / median(total["ours"])
  print(f"  all parts: ours {median(total['ours']) * 1e3:.1f} ms, PyTorch eager "
        f"{median(total['torch']) * 1e3:.1f} ms; ours is {ratios['all']:.2f}x")
  print("summary: " + " ".join(f"{name}={r:.2f}" for name, r in ratios.items()))


if __name__ == "__main__":
  main()
