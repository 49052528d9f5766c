"""A compiled program's GEMMs, each timed alone: how much of its time they take.

`dots(hlo_text)` reads XLA's optimised HLO (`compiled.as_text()`) for every dot the program
runs and how many times per call (a dot in a while loop counts the loop's known trip count);
`floor_call(hlo_text)` compiles each distinct one alone with `lax.dot_general` and returns a
call that runs each warm and alone and adds them up as often as the program runs them. On
a CPU, where every convolution of our step is a GEMM (models/layers.py), that sum is about what
the step would take if nothing but its GEMMs ran: the share of the step that no change around
them can remove. An estimate, not a strict bound: the step also runs independent GEMMs side by
side (one per core), which can be faster for short ones than each spread over every core alone.
Accelerators hand their GEMMs to libraries as custom calls, which are not dots in the HLO;
there it finds none.
"""

import collections
import math
import re

import jax
import jax.numpy as jnp
from jax import lax

from benchmarks import common

_DTYPES = {"f64": jnp.float64, "f32": jnp.float32, "bf16": jnp.bfloat16, "f16": jnp.float16,
           "s32": jnp.int32, "s8": jnp.int8}

Dot = collections.namedtuple("Dot", "lhs rhs lhs_dtype rhs_dtype out_dtype dimension_numbers")


def _shape(text):
  """'f32[8450,27]{1,0}' -> ('f32', (8450, 27))."""
  dtype, dims = re.match(r"(\w+)\[([\d,]*)\]", text).groups()
  return dtype, tuple(int(d) for d in dims.split(",") if d)


def _dims(line, name):
  m = re.search(name + r"=\{([\d,]*)\}", line)
  return tuple(int(d) for d in m.group(1).split(",") if d) if m else ()


def _computations(hlo_text):
  """{name: (is_entry, [instruction lines], {value name: shape text})}."""
  comps = {}
  for m in re.finditer(r"^(ENTRY )?%([\w.\-]+) \((.*?)\) -> .*?\{\n(.*?)\n\}", hlo_text,
                       re.S | re.M):
    lines = m.group(4).splitlines()
    shapes = dict(re.findall(r"([\w.\-]+): (\w+\[[\d,]*\])", m.group(3)))
    for line in lines:
      d = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (\w+\[[\d,]*\])", line)
      if d:
        shapes[d.group(1)] = d.group(2)
    comps[m.group(2)] = (bool(m.group(1)), lines, shapes)
  return comps


def dots(hlo_text):
  """({Dot: times run per call of the program}, number of while loops without a known trip
  count, each counted as running once)."""
  comps = _computations(hlo_text)
  callers = collections.defaultdict(list)  # callee: [(caller, times per caller run)]
  unknown = 0
  for name, (_, lines, _) in comps.items():
    for line in lines:
      trips = 1
      if " while(" in line:
        n = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', line)
        trips = int(n.group(1)) if n else 1
        unknown += n is None
      for key, callee in re.findall(r"\b(calls|to_apply|body|condition)=%([\w.\-]+)", line):
        callers[callee].append((name, trips if key == "body" else 1))
      for group in re.findall(r"branch_computations=\{([^}]*)\}", line):
        for callee in re.findall(r"%([\w.\-]+)", group):
          callers[callee].append((name, 1))

  runs = {}

  def times_run(name):
    if name not in runs:
      runs[name] = 1 if comps[name][0] else sum(times_run(c) * k for c, k in callers[name]
                                                if c in comps)
    return runs[name]

  found = collections.Counter()
  for name, (_, lines, shapes) in comps.items():
    for line in lines:
      m = re.match(r"\s*(?:ROOT )?%[\w.\-]+ = (\w+)\[[\d,]*\]\S* dot\(%([\w.\-]+), %([\w.\-]+)\)",
                   line)
      if not m or not times_run(name):
        continue
      (lt, ls), (rt, rs) = _shape(shapes[m.group(2)]), _shape(shapes[m.group(3)])
      dn = ((_dims(line, "lhs_contracting_dims"), _dims(line, "rhs_contracting_dims")),
            (_dims(line, "lhs_batch_dims"), _dims(line, "rhs_batch_dims")))
      found[Dot(ls, rs, lt, rt, m.group(1), dn)] += times_run(name)
  return dict(found), unknown


def flops(dot):
  """2 x batch x M x K x N of one run of `dot`: the lhs holds batch, M and K; N is the rhs's
  dimensions that are neither contracted nor batch."""
  (_, rhs_contracting), (_, rhs_batch) = dot.dimension_numbers
  n = math.prod(d for i, d in enumerate(dot.rhs) if i not in rhs_contracting + rhs_batch)
  return 2 * math.prod(dot.lhs) * n


def _compile(dot):
  """(the dot jitted and compiled, its random operands)."""
  key = jax.random.key(0)

  def operand(shape, dtype):
    if dtype not in _DTYPES:
      raise ValueError(f"benchmarks/gemms.py: a dot of {dtype} operands {shape}; it times "
                       f"only {', '.join(_DTYPES)}")
    dtype = _DTYPES[dtype]
    if jnp.issubdtype(dtype, jnp.integer):
      return jax.random.randint(key, shape, -3, 4, dtype)
    return jax.random.normal(key, shape, dtype)

  lhs, rhs = operand(dot.lhs, dot.lhs_dtype), operand(dot.rhs, dot.rhs_dtype)
  fn = jax.jit(lambda a, b: lax.dot_general(a, b, dot.dimension_numbers,
                                            preferred_element_type=_DTYPES[dot.out_dtype]))
  return fn.lower(lhs, rhs).compile(), (lhs, rhs)


def floor_call(hlo_text, reps=3):
  """(call, info): call() runs each distinct dot of the program `reps` times back to back,
  alone, and returns the floor in seconds: the sum over dots of the median run times the
  runs per call of the program (warm, with the machine to itself; see the module's note).
  info: flops, runs (dots per call), distinct (dots compiled) and unknown_loops. Call it
  interleaved with the program (benchmarks.common.interleaved's self_timed), so that both
  see the same machine."""
  found, unknown = dots(hlo_text)
  compiled = [(*_compile(d), n) for d, n in found.items()]

  def call():
    return sum(n * common.time_call(lambda fn=fn, args=args: fn(*args), reps)
               for fn, args, n in compiled)

  call()  # the first runs allocate
  return call, dict(flops=sum(n * flops(d) for d, n in found.items()),
                    runs=sum(found.values()), distinct=len(found), unknown_loops=unknown)
