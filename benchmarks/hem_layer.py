r"""The HEM unit's forward + backward: our JAX version against PyTorch, eager and compiled.

  python -m benchmarks.hem_layer [--batch 2] [--reps 5] [--rounds 4] [--sections all]
  python -m benchmarks.hem_layer --isa avx2    # both frameworks capped to AVX2

The unit is the paper's (1x1 conv in, T HEM iterations, R-step, ReLU, 1x1 conv + BN,
residual, ReLU) at its shapes: N = 65 x 65 (OS 8 on 513 crops), C = 512, K = 64, T = 3,
eta = 0.5, temperature sqrt(C), in training mode (batch statistics, mu0's moving
average), with gradients to the parameters and to the input. The PyTorch version is
written here the way the EMANet release writes it (NCHW, bmm), and runs in the same
process on the same device, eager and under torch.compile: the CPU, or the GPU when JAX
runs on one and PyTorch sees CUDA (float32 matmuls in TF32 there, XLA's default); on a TPU
the JAX unit alone is timed.

Sections (comma-separated, default all):
  compare  JAX vs PyTorch eager vs torch.compile, and the fraction of the jnp.dot peak,
           all interleaved in the same rounds;
  eta      the highway's overhead: eta = 0.5 against eta = 1 (everything else equal);
  depth    T = 1..16: time, and peak memory from the compiled executable's memory
           analysis, without and with jax.checkpoint around each iteration;
  ablation the unit's implementation choices (HEMUnit.backward, HEMUnit.conv1x1) in
           turn, before / after in one run (not in the default: `--sections ablation`);
  profile  where the JAX unit's time goes, by XLA op (not in the default).
The last line is the summary:
  summary: speedup_vs_eager=X speedup_vs_compile=Y peak_fraction=Z
with speed-ups as PyTorch time / our time and Z = our matmul FLOP/s / jnp.dot's.

FLOPs are counted from the shapes: the matmuls of the unit as written (PyTorch's), and
those ours executes, fewer, as conv_in is folded into the iterations (hem/vjp.py); Z counts
the latter. XLA's own cost analysis is printed beside them.
"""

import argparse
import math
import os
import sys

from benchmarks import isa

isa.cap_from_argv(sys.argv[1:])  # before JAX or PyTorch loads

from hemnet_jax.cli import host_memory

# As training runs (hemnet_jax/main.py): set before JAX starts its threads.
host_memory.set_up(restart=__name__ == "__main__")

import jax
import jax.numpy as jnp

from benchmarks import common
from hemnet_jax.models.hem_unit import HEMUnit


def matmul_flops(batch, n, c, k, t):
  """Forward + backward matmul FLOPs of the unit as written (gradients to params and input).

  Forward: two 1x1 convs (2NC^2 each), per iteration an E-step and an M-step (2NKC
  each), the R-step (2NKC). Backward: two matmuls per forward one.
  """
  forward = 2 * (2 * n * c * c) + (2 * t + 1) * (2 * n * k * c)
  return 3 * forward * batch


def executed_flops(batch, n, c, k, t):
  """The same for our unit, conv_in folded into the iterations (hem/vjp.py): conv_out
  forward and backward (3 x 2NC^2), the iterations and R-step forward ((2T + 1) x 2NKC)
  and backward ((2T + 2) x 2NKC), and conv_in's input and weight gradients from d X's
  factors (2 x 2N 2KT C); the K x C products and the R-step's channels-first copy left out."""
  if k * t >= c:  # d X formed, conv_in's backward as two GEMMs (hem/vjp.py)
    return matmul_flops(batch, n, c, k, t) - 2 * n * c * c * batch
  return (3 * 2 * n * c * c + (8 * t + 3) * 2 * n * k * c) * batch


def jax_step(batch, hw, c, k, t, eta, remat=False, dtype=jnp.float32, **choices):
  """A jitted fwd+bwd of our HEMUnit (with HEMUnit's `choices`) and its inputs: (fn, args)."""
  unit = HEMUnit(num_bases=k, num_iters=t, eta=eta, bn_momentum=0.9, remat=remat, dtype=dtype,
                 **choices)
  x = jax.random.normal(jax.random.key(0), (batch, hw, hw, c), jnp.float32)
  variables = unit.init(jax.random.key(1), x)
  # Only the state training updates: the sown ELBO / attention collections stay off.
  params = variables["params"]
  state = {k_: variables[k_] for k_ in ("batch_stats", "hem_bases")}

  def loss(params, x, state):
    y, new_state = unit.apply({"params": params, **state}, x, train=True,
                              mutable=list(state))
    return jnp.mean(y.astype(jnp.float32)), new_state

  grad = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
  return jax.jit(grad), (params, x, state)


def torch_unit(c, k, t, eta, temperature):
  import torch
  from torch import nn
  import torch.nn.functional as F

  class HEMUnitTorch(nn.Module):
    """EMANet's EMAU with the N-step (Eq. 13), NCHW as the release."""

    def __init__(self):
      super().__init__()
      self.conv_in = nn.Conv2d(c, c, 1)
      self.conv_out = nn.Conv2d(c, c, 1, bias=False)
      self.bn = nn.BatchNorm2d(c, eps=1e-5, momentum=0.1)
      mu0 = torch.randn(1, c, k) * math.sqrt(2.0 / k)
      self.register_buffer("mu0", mu0 / (1e-6 + mu0.norm(dim=1, keepdim=True)))

    def forward(self, x):
      idn = x
      x = self.conv_in(x)
      b, _, h, w = x.shape
      x = x.view(b, c, h * w)
      mu = self.mu0.clone().expand(b, -1, -1)  # mu0 is updated in place below
      for _ in range(t):
        z = F.softmax(torch.bmm(x.transpose(1, 2), mu) / temperature, dim=2)  # [b, n, k]
        z_ = z / (1e-6 + z.sum(dim=1, keepdim=True))
        mu = (1 - eta) * mu + eta * torch.bmm(x, z_)
      with torch.no_grad():
        self.mu0.mul_(0.9).add_(0.1 * mu.mean(dim=0, keepdim=True))
      x = torch.bmm(mu, z.transpose(1, 2)).view(b, c, h, w)
      x = self.bn(self.conv_out(F.relu(x)))
      return F.relu(x + idn)

  return HEMUnitTorch()


def torch_device():
  """Where PyTorch runs beside JAX: "cpu" when JAX runs on the CPU, "cuda" when JAX runs on
  a GPU that PyTorch sees too; None when no same-device comparison exists (a TPU, no torch)."""
  platform = jax.devices()[0].platform
  try:
    import torch
  except ImportError:
    return None
  if platform == "cpu":
    return "cpu"
  return "cuda" if platform == "gpu" and torch.cuda.is_available() else None


def torch_steps(batch, hw, c, k, t, eta, device="cpu"):
  """{'torch_eager': fn, 'torch_compile': fn}, each one warm fwd+bwd, their results' sync,
  and the compile time."""
  import time
  import torch
  if device == "cpu":
    torch.set_num_threads(os.cpu_count())
  else:  # float32 matmuls in TF32, as XLA's default precision on a GPU
    torch.set_float32_matmul_precision("high")
  torch.manual_seed(0)
  x = torch.randn(batch, c, hw, hw, device=device, requires_grad=True)
  fns = {}
  compile_s = None
  for name in ("torch_eager", "torch_compile"):
    module = torch_unit(c, k, t, eta, math.sqrt(c)).train().to(device)
    fwd = torch.compile(module) if name == "torch_compile" else module

    def step(fwd=fwd, module=module):
      for p in module.parameters():
        p.grad = None
      x.grad = None
      loss = fwd(x).mean()
      loss.backward()
      return loss
    t0 = time.perf_counter()
    try:
      for _ in range(3):
        step()
    except Exception as e:  # pylint: disable=broad-except  (torch.compile needs a C compiler)
      if name != "torch_compile":
        raise
      print(f"torch.compile failed, left out: {type(e).__name__}: {str(e).splitlines()[0]}")
      continue
    if name == "torch_compile":
      compile_s = time.perf_counter() - t0
    fns[name] = step
  sync = (lambda r: torch.cuda.synchronize()) if device == "cuda" else (lambda r: r)
  return fns, sync, compile_s


def compiled_stats(fn, args):
  compiled = fn.lower(*args).compile()
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  peak = None
  if mem is not None:
    peak = (mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
            - mem.alias_size_in_bytes)
  return compiled, peak, (cost or {}).get("flops")


def compare(shape, eta, reps, rounds, peak_size=2048):
  """Our unit against PyTorch's (eager, torch.compile) where PyTorch runs on the same device,
  and a peak_size^3 float32 jnp.dot, interleaved: {times (s): {name: median}, flops (matmul
  count), xla_flops, peak (FLOP/s), torch_device, torch_compile_s}."""
  batch, hw, c, k, t = shape
  step, inputs = jax_step(batch, hw, c, k, t, eta)
  compiled, _, xla_flops = compiled_stats(step, inputs)
  common.block(compiled(*inputs))
  device = torch_device()
  torch_fns, torch_sync, compile_s = ({}, None, None) if device is None else torch_steps(
      batch, hw, c, k, t, eta, device)
  n = peak_size
  a = jax.random.normal(jax.random.key(2), (n, n), jnp.float32)
  dot = jax.jit(jnp.dot)
  common.block(dot(a, a))
  dot_name = f"jnp.dot {n}"
  fns = {"jax": lambda: compiled(*inputs), **torch_fns, dot_name: lambda: dot(a, a)}
  times = common.interleaved(fns, reps, rounds, {name: torch_sync for name in torch_fns})
  times["jnp.dot"] = times.pop(dot_name)
  return dict(times=times, flops=matmul_flops(batch, hw * hw, c, k, t),
              executed=executed_flops(batch, hw * hw, c, k, t), xla_flops=xla_flops,
              peak=2.0 * n ** 3 / times["jnp.dot"], peak_size=n, torch_device=device,
              torch_compile_s=compile_s)


def section_compare(args, shape):
  r = compare(shape, args.eta, args.reps, args.rounds)
  times, flops, executed, peak = r["times"], r["flops"], r["executed"], r["peak"]
  if r["torch_device"] is None:
    print("PyTorch: not compared (not installed, or it does not see this device)")
  elif r["torch_compile_s"] is not None:
    print(f"PyTorch on {r['torch_device']}; torch.compile warm-up (compile + 3 steps): "
          f"{r['torch_compile_s']:.1f} s")
  print(f"matmul FLOPs per fwd+bwd: {flops / 1e9:.2f} G as written (PyTorch's), "
        f"{executed / 1e9:.2f} G executed by ours (conv_in folded); XLA cost analysis of ours "
        f"{r['xla_flops'] / 1e9 if r['xla_flops'] else float('nan'):.2f} G")
  print(f"jnp.dot float32 peak ({r['peak_size']}^3, same rounds): {common.gflops(peak)}")
  for name in ("jax", "torch_eager", "torch_compile"):
    if name in times:
      done = executed if name == "jax" else flops
      print(f"{name:>14}: {times[name] * 1e3:8.1f} ms  {common.gflops(done / times[name]):>18} "
            f"executed, {done / times[name] / peak:6.1%} of peak")
  speedups = {f"speedup_vs_{name[6:]}": times[name] / times["jax"]
              for name in ("torch_eager", "torch_compile") if name in times}
  return dict(**speedups, peak_fraction=executed / times["jax"] / peak)


def section_eta(args, shape):
  batch, hw, c, k, t = shape
  fns = {}
  for eta in (1.0, 0.5):
    step, inputs = jax_step(batch, hw, c, k, t, eta)
    compiled = step.lower(*inputs).compile()
    common.block(compiled(*inputs))
    fns[f"eta={eta}"] = (lambda compiled=compiled, inputs=inputs: compiled(*inputs))
  times = common.interleaved(fns, args.reps, args.rounds)
  overhead = times["eta=0.5"] / times["eta=1.0"] - 1.0
  print(f"eta = 1: {times['eta=1.0'] * 1e3:.1f} ms, eta = 0.5: {times['eta=0.5'] * 1e3:.1f} ms; "
        f"the highway's overhead: {overhead:+.1%}")


def section_depth(args, shape):
  batch, hw, c, k, _ = shape
  print(f"{'T':>3} {'ms':>8} {'peak MiB':>9} | {'ms remat':>9} {'peak MiB remat':>15}")
  base = {}
  for t in (1, 2, 4, 8, 16):
    row = []
    for remat in (False, True):
      step, inputs = jax_step(batch, hw, c, k, t, args.eta, remat=remat)
      compiled, peak, _ = compiled_stats(step, inputs)
      common.block(compiled(*inputs))
      ms = common.time_call(lambda: compiled(*inputs), max(2, args.reps // 2)) * 1e3
      base.setdefault(remat, peak)
      row += [ms, peak / 2 ** 20, peak / base[remat]]
    print(f"{t:>3} {row[0]:8.1f} {row[1]:9.1f} | {row[3]:9.1f} {row[4]:15.1f}   "
          f"(peak vs T=1: {row[2]:.2f}x / {row[5]:.2f}x remat)")


def section_ablation(args, shape):
  """The unit with each implementation choice switched back, against the unit as it is."""
  batch, hw, c, k, t = shape
  variants = {
      "as is": {},
      "conv_in applied to the features (not folded)": {"fold_conv_in": False},
      "autodiff HEM backward": {"backward": "autodiff"},
      "1x1 convs as XLA convolutions": {"conv1x1": "xla"},
      "neither (the starting point)": {"backward": "autodiff", "conv1x1": "xla"},
  }
  fns = {}
  for name, choices in variants.items():
    step, inputs = jax_step(batch, hw, c, k, t, args.eta, **choices)
    compiled = step.lower(*inputs).compile()
    common.block(compiled(*inputs))
    fns[name] = (lambda compiled=compiled, inputs=inputs: compiled(*inputs))
  times = common.interleaved(fns, args.reps, args.rounds)
  for name, s in times.items():
    print(f"{name:>46}: {s * 1e3:8.1f} ms  ({times['as is'] / s:.2f}x the speed of the unit as is)")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--hw", type=int, default=65, help="feature map side (65: OS 8 on 513)")
  parser.add_argument("--channels", type=int, default=512)
  parser.add_argument("--bases", type=int, default=64)
  parser.add_argument("--num_iters", type=int, default=3)
  parser.add_argument("--eta", type=float, default=0.5)
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--rounds", type=int, default=4)
  parser.add_argument("--sections", default="compare,eta,depth")
  isa.add_flag(parser)
  args = parser.parse_args()
  sections = args.sections.split(",")
  shape = (args.batch, args.hw, args.channels, args.bases, args.num_iters)
  print(common.banner())
  print(isa.describe(args.isa))
  print(f"HEM unit fwd+bwd: batch {args.batch}, N {args.hw}x{args.hw}, C {args.channels}, "
        f"K {args.bases}, T {args.num_iters}, eta {args.eta}, float32")
  summary = None
  if "compare" in sections:
    print("\n== compare: JAX vs PyTorch (median of reps, interleaved rounds)")
    summary = section_compare(args, shape)
  if "eta" in sections:
    print("\n== eta: the highway's overhead")
    section_eta(args, shape)
  if "depth" in sections:
    print("\n== depth: T = 1..16, time and peak memory (XLA memory analysis)")
    section_depth(args, shape)
  if "ablation" in sections:
    print("\n== ablation: before / after each optimisation (interleaved)")
    section_ablation(args, shape)
  if "profile" in sections:
    print("\n== profile: the JAX unit by XLA op (share of summed op time)")
    batch, hw, c, k, t = shape
    step, inputs = jax_step(batch, hw, c, k, t, args.eta)
    compiled = step.lower(*inputs).compile()
    common.block(compiled(*inputs))
    for name, ms, share in common.profile_ops(lambda: compiled(*inputs), compiled.as_text(),
                                              reps=3, top=10):
      print(f"  {share:6.1%} {ms:8.1f} ms  {name}")
  if summary:
    if note := isa.caveat():
      print(note)  # beside the figures, too
    print("summary: " + " ".join(f"{k}={v:.2f}" for k, v in summary.items()))


if __name__ == "__main__":
  main()
