"""The benchmarks still run and print what scripts read (tiny shapes; no timing asserted)."""

import math
import os
import re
import subprocess
import sys

import pytest

from helpers import ROOT


def _run(*args):
  proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def test_hem_layer_prints_the_summary_line_last():
  out = _run("benchmarks.hem_layer", "--batch", "1", "--hw", "6", "--channels", "16",
             "--bases", "4", "--reps", "1", "--rounds", "1", "--sections", "compare,eta,depth",
             "--isa", "avx2")
  lines = out.strip().splitlines()
  # --isa avx2 caps both frameworks before they load, and the banner says so.
  assert re.search(r"isa: avx2 \(XLA_FLAGS='[^']*--xla_cpu_max_isa=AVX2', "
                   r"ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2, "
                   r"torch.compile cache [^)]*torchinductor_\w+_avx2\)", out), out[:2000]
  assert re.fullmatch(r"summary: speedup_vs_eager=\d+\.\d\d speedup_vs_compile=\d+\.\d\d "
                      r"peak_fraction=\d+\.\d\d", lines[-1]), lines[-1]
  assert any(line.startswith("device: ") for line in lines)
  assert "the highway's overhead" in out
  # The depth table: one row per T in 1, 2, 4, 8, 16, with and without remat.
  rows = [line for line in lines if re.match(r"\s*(1|2|4|8|16)\s+\d", line)]
  assert [int(r.split()[0]) for r in rows] == [1, 2, 4, 8, 16]


def test_each_isa_setting_has_its_own_torch_compile_cache(monkeypatch):
  """A torch.compile graph cached natively and loaded under the AVX2 cap segfaults (seen on
  an AVX-512 EPYC): the settings must never share inductor's cache, whether the cap came
  from --isa or from the environment; a user's own choice is kept."""
  from benchmarks import isa
  names = ("XLA_FLAGS", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "TORCHINDUCTOR_CACHE_DIR")
  for name in names:  # recorded, so that the worker's environment is restored afterwards
    monkeypatch.setenv(name, "")
  dirs = {}
  for argv, env in (([], {}), (["--isa", "avx2"], {}), (["--isa=avx2"], {}),
                    (["--isa", "native"], {}), ([], {"ATEN_CPU_CAPABILITY": "avx2"})):
    for name in names:
      os.environ.pop(name, None)
    os.environ.update(env)
    isa.cap_from_argv(argv)
    dirs[" ".join(argv) + str(env)] = os.environ["TORCHINDUCTOR_CACHE_DIR"]
  assert dirs["{}"] == dirs["--isa native{}"]
  assert dirs["--isa avx2{}"] == dirs["--isa=avx2{}"]
  assert len({dirs["{}"], dirs["--isa avx2{}"], dirs[str({"ATEN_CPU_CAPABILITY": "avx2"})]}) == 3
  os.environ["TORCHINDUCTOR_CACHE_DIR"] = "/somewhere/mine"
  isa.cap_from_argv(["--isa", "avx2"])
  assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/somewhere/mine"


def test_the_banner_says_when_the_cap_cannot_bind_xlas_matmuls(monkeypatch, tmp_path):
  """XLA's matmul library picks AVX-512 kernels from the CPU whatever --xla_cpu_max_isa says
  (seen with perf on an AVX-512 EPYC): under a cap below AVX-512 on such a CPU the banner
  must say the figures are not an AVX2 machine's; on a CPU without AVX-512, or with no cap
  or an AVX-512 cap, it says nothing."""
  from benchmarks import isa
  monkeypatch.setenv("XLA_FLAGS", "")
  with_avx512, avx2_only = tmp_path / "zen5", tmp_path / "zen2"
  with_avx512.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw\n")
  avx2_only.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n\nbugs\t: avx512f\n")
  for flags, cpuinfo, warned in (
      ("--xla_cpu_max_isa=AVX2", with_avx512, True),
      ("--xla_foo=1 --xla_cpu_max_isa=avx2", with_avx512, True),
      ("--xla_cpu_max_isa=AVX2", avx2_only, False),  # avx512f outside the flags line
      ("", with_avx512, False),
      ("--xla_cpu_max_isa=AVX512", with_avx512, False),
      ("--xla_cpu_max_isa=AVX2", tmp_path / "missing", False)):
    os.environ["XLA_FLAGS"] = flags
    banner = isa.describe("avx2", cpuinfo=str(cpuinfo))
    assert ("Not an AVX2 machine's figures" in banner) == warned, (flags, cpuinfo, banner)
    assert (isa.caveat(str(cpuinfo)) is not None) == warned


def test_peak_prints_float32(optimised_xla):
  out = _run("benchmarks.peak")
  assert re.search(r"float32 jnp.dot peak: [\d.]+ GFLOP/s", out), out


def test_device_check_smoke_writes_the_three_tables_rows(tmp_path, optimised_xla):
  """benchmarks/device_check.sh --smoke: every part runs (tiny shapes) and the rows file has
  rows of BENCHMARKS.md's three tables, with numbers, in their column counts."""
  import os
  out = tmp_path / "dc"
  env = {**os.environ, "PYTHON": sys.executable}
  proc = subprocess.run(["bash", "benchmarks/device_check.sh", "--smoke", "--out", str(out)],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
  assert "all parts done" in proc.stdout
  assert "all parts done" in (out / "device_check.log").read_text()
  text = (out / "device_rows.md").read_text()
  tables = {}
  for block in text.split("### ")[1:]:
    title, *lines = block.strip().splitlines()
    tables[title] = [line for line in lines if line.startswith("| ")]
  assert set(tables) == {"The device's matmul limit", "The HEM unit, forward + backward",
                         "The train step"}
  benchmarks_md = (ROOT / "BENCHMARKS.md").read_text()
  num, flops = r"\d+\.\d+", r"\d+\.\d+ [GT]FLOP/s"
  # Per row, the cells after the device's, as patterns (None: any text).
  expected = {
      "The device's matmul limit": [[rf"{flops} \(at \d+\^3\)", None]],
      "The HEM unit, forward + backward": [[rf"{num} ms"] * 3 + [rf"\*\*{num}x\*\*"] * 2
                                           + [rf"\*\*\d+ %\*\* \({flops} of {flops}\)"]],
      "The train step": [[None, rf"{num} s", rf"{num} ms", num, r"\*\*\d+ %\*\* .*", r"\d+ MiB"],
                         [None, None, rf"{num} ms \(mean\)", num, r"\*\*\d+ %\*\* .*", ""]],
  }
  for title, (header, _, *rows) in tables.items():
    assert header in benchmarks_md, header  # BENCHMARKS.md's own columns
    assert len(rows) == len(expected[title]), rows
    for row, patterns in zip(rows, expected[title]):
      cells = [c.strip() for c in row.strip().strip("|").split("|")]
      assert len(cells) == header.count("|") - 1, row
      for cell, pattern in zip(cells[1:], patterns):
        assert pattern is None or re.fullmatch(pattern, cell), (pattern, cell)


def test_device_check_imports_neither_tfds_nor_grain_nor_tensorboardx():
  """The accelerator machine it runs on has jax, flax, optax, orbax and torch, not these."""
  code = ("import sys; from benchmarks import device_check, hem_layer, train_step; "
          "from hemnet_jax.training import meter; "
          "print(sorted({m.split('.')[0] for m in sys.modules}))")
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  loaded = set(eval(proc.stdout.strip().splitlines()[-1]))  # noqa: S307 (our own output)
  assert "jax" in loaded and "flax" in loaded
  assert not loaded & {"tensorflow_datasets", "tensorflow", "grain", "array_record", "tensorboardX"}


# benchmarks/torch_emanet.py, the PyTorch side of benchmarks/train_step.py, at a tiny size. Stage
# 4 has the three multi-grid blocks (dilations 2, 8, 16); crop 65 gives a 9 x 9 map at OS 8, wide
# enough that each of them (and a wrong one in their place) reaches different pixels.
TINY_TORCH = dict(stage_sizes=(1, 1, 1, 3), width=4, stem_width=8, head_channels=16,
                  decoder_channels=8, num_bases=4)
TORCH_CROP, TORCH_CLASSES = 65, 21


@pytest.fixture
def one_torch_thread():
  """One intra-op thread: on a shared 2-core machine two threads wait on each other ~10 ms per op."""
  import torch
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


def _torch_batch(batch=2):
  from benchmarks import torch_emanet
  images, labels = torch_emanet.random_batch(TORCH_CROP, batch, TORCH_CLASSES)
  labels[:, :5] = torch_emanet.IGNORE_LABEL  # some ignored pixels
  return images, labels


def test_torch_emanet_step_trains_both_modes_and_hemnet_backprops_through_em(one_torch_thread):
  import torch
  from benchmarks import torch_emanet
  images, labels = _torch_batch()
  for mode in ("emanet", "hemnet"):
    torch.manual_seed(0)
    net = torch_emanet.EMANet(TORCH_CLASSES, mode, **TINY_TORCH)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    loss = torch_emanet.make_step(net, images, labels)()
    assert torch.isfinite(loss), (mode, loss)
    after = net.state_dict()
    for key in ("extractor.0.0.weight", "extractor.7.2.conv2.weight", "fc0.conv.weight",
                "emau.conv2.0.weight", "fc2.weight", "fc2.bias", "emau.mu"):
      assert not torch.equal(before[key], after[key]), (mode, key)
    grad = net.emau.conv1.weight.grad
    if mode == "emanet":  # conv1 only feeds the no_grad iterations: no gradient, no update
      assert grad is None
      assert torch.equal(before["emau.conv1.weight"], after["emau.conv1.weight"])
    else:  # its only path to the loss is through the T iterations
      assert grad is not None and grad.abs().max() > 0, mode
      assert not torch.equal(before["emau.conv1.weight"], after["emau.conv1.weight"])


def test_torch_emanet_train_steps_are_warm_callables(one_torch_thread):
  from benchmarks import torch_emanet
  fns, compile_s = torch_emanet.torch_train_steps(TORCH_CROP, 1, TORCH_CLASSES, "hemnet",
                                                  variants=("torch_eager",), warmup=1,
                                                  num_threads=1, **TINY_TORCH)
  assert list(fns) == ["torch_eager"] and compile_s is None
  losses = [float(fns["torch_eager"]()) for _ in range(2)]
  assert all(math.isfinite(x) for x in losses) and losses[0] != losses[1]  # it does train
  with pytest.raises(ValueError, match="mode"):
    torch_emanet.EMANet(mode="fcn")


def test_torch_emanet_is_our_hemnet(one_torch_thread):
  """Its weights converted (hemnet_jax.convert.emanet), our HEMNet of configs/voc.py gives its
  logits, loss, gradients and mu0 update in training mode, in float64 to 1e-9: both sides
  compute the same network (in float32 they differ by float32's rounding, ~1e-3). HEMNet mode;
  the EM unit of both modes is compared on its own below (each compile here takes seconds)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  import torch.nn.functional as F

  import configs.voc as voc
  from benchmarks import torch_emanet
  from hemnet_jax.convert import emanet as convert_emanet
  from hemnet_jax.training import metrics, state as state_lib
  from tests import torch_reference

  mode = "hemnet"
  torch.manual_seed(0)
  net = torch_emanet.EMANet(TORCH_CLASSES, mode, dropout=0.0, **TINY_TORCH)
  net = torch_reference.randomize(net, 0).double().train()  # random weights and BN statistics
  variables, _, _ = convert_emanet.convert(net.state_dict(), voc.get_config())
  config = voc.get_config(mode)
  for k in ("stage_sizes", "width", "stem_width", "head_channels", "decoder_channels"):
    config.model[k] = TINY_TORCH[k]
  config.model.aux_weight, config.model.dropout = 0.0, 0.0
  config.hem.num_bases, config.data.num_classes = TINY_TORCH["num_bases"], TORCH_CLASSES
  images, labels = _torch_batch()

  logits = net(images.double())
  loss = F.cross_entropy(logits, labels, ignore_index=torch_emanet.IGNORE_LABEL)
  loss.backward()

  with jax.enable_x64(True):
    model = state_lib.build_model(config).clone(dtype=jnp.float64)
    variables = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), variables)
    x = jnp.asarray(images.permute(0, 2, 3, 1).numpy(), jnp.float64)

    def loss_fn(params):
      (out, _), updates = model.apply({**variables, "params": params}, x, train=True,
                                      mutable=["batch_stats", "hem_bases"])
      return metrics.cross_entropy(out, jnp.asarray(labels.numpy())), (out, updates)
    (our_loss, (our_logits, updates)), grads = jax.jit(
        jax.value_and_grad(loss_fn, has_aux=True))(variables["params"])

  close = lambda a, b, **kw: np.testing.assert_allclose(
      a, b, rtol=1e-9, atol=1e-9 * np.abs(b).max(), **kw)
  ref_logits = logits.detach().permute(0, 2, 3, 1).numpy()
  assert np.abs(ref_logits).max() > 0.1
  close(our_logits, ref_logits)
  close(our_loss, loss.item())
  oihw = lambda k: np.asarray(k).transpose(3, 2, 0, 1)
  pairs = {("classifier",): net.fc2, ("head_conv_in",): net.fc0.conv,
           ("backbone", "stem_conv1"): net.extractor[0][0],
           ("backbone", "layer4_2", "conv2"): net.extractor[7][2].conv2,  # dilation 16
           ("hem", "conv_out"): net.emau.conv2[0]}
  for path, module in pairs.items():
    ours = grads
    for key in path:
      ours = ours[key]
    close(oihw(ours["kernel"]), module.weight.grad.numpy(), err_msg=str(path))
  conv_in = oihw(grads["hem"]["conv_in"]["kernel"])
  if mode == "emanet":  # no gradient through the iterations, the only path conv_in has
    assert net.emau.conv1.weight.grad is None and not np.any(conv_in)
  else:  # through the T iterations, as our hand-written backward (hem/vjp.py) computes it
    ref_grad = net.emau.conv1.weight.grad.numpy()
    assert np.abs(ref_grad).max() > 0
    close(conv_in, ref_grad)
  close(updates["hem_bases"]["hem"]["mu0"], net.emau.mu[0].T.numpy())


@pytest.mark.parametrize("mode", ["emanet", "hemnet"])
def test_torch_emau_is_our_hem_unit(mode, one_torch_thread):
  """The EM unit of each mode against our HEMUnit with configs/voc.py's variant, in float64:
  output, gradients (input, conv_in, conv_out) and mu0's moving average."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch

  import configs.voc as voc
  from benchmarks import torch_emanet
  from hemnet_jax.models.hem_unit import BASES, HEMUnit
  from hemnet_jax.training import config as config_lib
  from tests import torch_reference

  c, k = TINY_TORCH["head_channels"], TINY_TORCH["num_bases"]
  torch.manual_seed(0)
  unit = torch_emanet.EMANet(TORCH_CLASSES, mode, **TINY_TORCH).emau  # the mode as EMANet sets it
  unit = torch_reference.randomize(unit, 0).double().train()
  bn = unit.conv2[1]
  config = voc.get_config(mode)
  config.model.head_channels, config.hem.num_bases = c, k
  ours = HEMUnit(**config_lib.resolve(config).hem.to_dict(), bn_momentum=0.9997)
  arr = lambda t: t.detach().numpy().copy()  # float64 (jnp: float32 outside enable_x64), a copy
  hwio = lambda w: arr(w.permute(2, 3, 1, 0))
  variables = {"params": {"conv_in": {"kernel": hwio(unit.conv1.weight), "bias": arr(unit.conv1.bias)},
                          "conv_out": {"kernel": hwio(unit.conv2[0].weight)},
                          "bn_out": {"scale": arr(bn.weight), "bias": arr(bn.bias)}},
               "batch_stats": {"bn_out": {"mean": arr(bn.running_mean), "var": arr(bn.running_var)}},
               BASES: {"mu0": arr(unit.mu[0].T)}}
  g = torch.Generator().manual_seed(1)
  x = torch.randn(2, c, 5, 7, generator=g, dtype=torch.float64, requires_grad=True)
  w = torch.randn(2, c, 5, 7, generator=g, dtype=torch.float64)
  y = unit(x)
  (y * w).sum().backward()

  with jax.enable_x64(True):
    variables = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), variables)
    nhwc = lambda t: jnp.asarray(arr(t.permute(0, 2, 3, 1)))

    def fn(params, x):
      out, updates = ours.clone(dtype=jnp.float64).apply(
          {**variables, "params": params}, x, train=True, mutable=["batch_stats", BASES])
      return jnp.sum(out * nhwc(w)), (out, updates)
    (_, (our_y, updates)), (grads, dx) = jax.jit(jax.value_and_grad(fn, (0, 1), has_aux=True))(
        variables["params"], nhwc(x))

  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9 * np.abs(b).max())
  close(our_y, y.detach().permute(0, 2, 3, 1).numpy())
  close(dx, x.grad.permute(0, 2, 3, 1).numpy())
  close(grads["conv_out"]["kernel"], hwio(unit.conv2[0].weight.grad))
  if mode == "emanet":
    assert unit.conv1.weight.grad is None and not np.any(grads["conv_in"]["kernel"])
  else:
    close(grads["conv_in"]["kernel"], hwio(unit.conv1.weight.grad))
  close(updates[BASES]["mu0"], unit.mu[0].T.numpy())


@pytest.mark.parametrize("flags,message", [
    (["--with_torch"], "--with_torch goes with --ablation"),
    (["--copies", "0"], "--copies 0: a count of at least 1"),
    (["--ablation", "--copies", "0"], "--copies 0: a count of at least 1"),
    (["--copies", "2", "--gemm_floor"], "--copies 2 --gemm_floor: the floor times one compile's"),
    (["--only", "col2im"], "--only goes with --ablation"),
    (["--ablation", "--only", "nonesuch"],
     "--only nonesuch: no --ablation entry's name contains it"),
    (["--ablation", "--gemm_floor"], "--gemm_floor: our step on a CPU, without --ablation")])
def test_train_step_names_a_flag_that_needs_another(flags, message):
  """--with_torch and --only belong to --ablation, and --gemm_floor goes with neither it nor
  several copies; otherwise, or --copies under 1, or --only matching no entry, is a one-line
  usage error, before any work."""
  proc = subprocess.run([sys.executable, "-m", "benchmarks.train_step", *flags], cwd=ROOT,
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 2
  assert message in proc.stderr.strip().splitlines()[-1]


def test_over_copies_averages_each_variants_compiles_and_says_how_far_apart_they_ran():
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  times = {("as it is", 0): 1.00, ("undone", 0): 1.30, ("as it is", 1): 1.10, ("undone", 1): 1.20}
  out = common.over_copies(times)
  assert list(out) == ["as it is", "undone"]
  assert out["as it is"][0] == pytest.approx(1.05) and out["as it is"][1] == pytest.approx(0.10)
  assert out["undone"][0] == pytest.approx(1.25) and out["undone"][1] == pytest.approx(1.30 / 1.20 - 1)


def test_train_step_ablation_runs_only_the_entries_named():
  """--ablation --only: the step as it is, the same again as the noise floor's control, and
  the chosen entry, no other (the demo's model)."""
  from benchmarks import train_step
  proc = subprocess.run([sys.executable, "-m", "benchmarks.train_step", "--ablation", "--only",
                         "copied", "--config", "configs/demo.py", "--crop", "33", "--batch", "2",
                         "--steps", "1", "--modes", "hemnet"], cwd=ROOT, capture_output=True,
                        text=True, timeout=600, check=True)
  rows = [line.split(":")[0].strip() for line in proc.stdout.splitlines()
          if "the time as it is" in line]
  assert rows == ["as it is", train_step.CONTROL,
                  "every donated parameter copied (XLA's default copy insertion)"]


def test_gemms_finds_every_dot_as_often_as_the_program_runs_it():
  """benchmarks/gemms.py reads the compiled program: a dot in a loop of 7 counts 7 times,
  batch and contracting dimensions come through, FLOPs are 2 x batch x M x K x N."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax import lax  # pylint: disable=g-import-not-at-top
  from benchmarks import gemms  # pylint: disable=g-import-not-at-top

  def f(a, b, c, d, e):
    x = lax.fori_loop(0, 7, lambda i, x: jnp.tanh(x @ c), a @ b)
    return x, jnp.einsum("bij,bjk->bik", d, e)
  args = (jnp.ones((64, 32)), jnp.ones((32, 48)), jnp.ones((48, 48)), jnp.ones((3, 16, 8)),
          jnp.ones((3, 8, 24)))
  text = jax.jit(f).lower(*args).compile().as_text()
  assert " while(" in text  # the loop stays a loop: its trip count must be applied
  found, unknown = gemms.dots(text)
  plain = (((1,), (0,)), ((), ()))
  assert unknown == 0
  assert found == {
      gemms.Dot((64, 32), (32, 48), "f32", "f32", "f32", plain): 1,
      gemms.Dot((64, 48), (48, 48), "f32", "f32", "f32", plain): 7,
      gemms.Dot((3, 16, 8), (3, 8, 24), "f32", "f32", "f32", (((2,), (1,)), ((0,), (0,)))): 1}
  assert sorted(gemms.flops(d) for d in found) == sorted(
      [2 * 64 * 32 * 48, 2 * 64 * 48 * 48, 2 * 3 * 16 * 8 * 24])
  call, info = gemms.floor_call(text)
  assert (info["runs"], info["distinct"]) == (9, 3)
  assert info["flops"] == 2 * 64 * 32 * 48 + 7 * 2 * 64 * 48 * 48 + 2 * 3 * 16 * 8 * 24
  assert 0 < call() < 1.0


def test_interleaved_records_a_self_timed_callables_own_seconds():
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  out = common.interleaved({"own": lambda: 123.0, "wall": lambda: None}, reps=2, rounds=2,
                           self_timed=("own",))
  assert out["own"] == 123.0 and out["wall"] < 1.0
  values = iter([1.0, 2.0, 3.0])
  out = common.interleaved({"own": lambda: next(values)}, reps=1, rounds=3, self_timed=("own",),
                           every_call=True)
  assert out == {"own": [1.0, 2.0, 3.0]}


def test_copies_call_times_each_compile_once_and_returns_their_mean(monkeypatch):
  from benchmarks import train_step  # pylint: disable=g-import-not-at-top
  clock = iter([0.0, 1.0, 1.0, 4.0, 10.0, 12.0, 12.0, 13.0])  # (start, end) of each call
  monkeypatch.setattr(train_step.time, "perf_counter", lambda: next(clock))
  ran = []
  call, seconds = train_step.copies_call([lambda: ran.append("a"), lambda: ran.append("b")])
  assert call() == 2.0 and call() == 1.5  # (1 + 3) / 2, then (2 + 1) / 2
  assert ran == ["a", "b", "a", "b"] and seconds == {0: [1.0, 2.0], 1: [3.0, 1.0]}


def test_train_step_copies_times_several_compiles_as_one():
  """--copies 2 on the demo's model: the step compiled twice, each compile's median printed,
  and the line of ours their per-round mean's median (between the two, up to the rounding)."""
  proc = subprocess.run([sys.executable, "-m", "benchmarks.train_step", "--copies", "2",
                         "--config", "configs/demo.py", "--crop", "33", "--batch", "2",
                         "--steps", "3", "--modes", "hemnet"], cwd=ROOT, capture_output=True,
                        text=True, timeout=600, check=True)
  ours = float(re.search(r"^  ours: ([\d.]+) ms", proc.stdout, re.M).group(1))
  line = re.search(r"^  ours, each of its 2 compiles: ([\d.]+), ([\d.]+) ms \(([\d.]+)% apart\)$",
                   proc.stdout, re.M)
  assert line, proc.stdout
  a, b, apart = map(float, line.groups())
  slow, fast = max(a, b), min(a, b)  # each printed to 0.05 ms, the share to 0.05 %
  low, high = (slow - .05) / (fast + .05) - 1, (slow + .05) / (fast - .05) - 1
  assert low - 5e-4 <= apart / 100 <= high + 5e-4
  assert min(a, b) / 2 < ours < max(a, b) * 2  # a mean of the two, round by round
  assert proc.stdout.strip().splitlines()[-1].startswith("summary: images_per_s=")


def test_ratio_range_is_the_lowest_and_highest_round_by_round_ratio():
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  assert common.ratio_range([2.0, 3.0, 1.0], [1.0, 2.0, 1.0]) == (1.0, 2.0)


def test_train_step_gemm_floor_prints_the_steps_gemms_beside_it():
  """--gemm_floor on the demo's model: the step's dots, timed in its rounds, and the rest."""
  proc = subprocess.run([sys.executable, "-m", "benchmarks.train_step", "--gemm_floor",
                         "--config", "configs/demo.py", "--crop", "33", "--batch", "2",
                         "--steps", "1", "--modes", "hemnet"], cwd=ROOT, capture_output=True,
                        text=True, timeout=600, check=True)
  line = next(l for l in proc.stdout.splitlines() if "GEMMs alone:" in l)
  ms, share = re.search(r"GEMMs alone: ([\d.]+) ms per step, ([\d.]+)% of ours", line).groups()
  runs, distinct = map(int, re.search(r"\((\d+) dots, (\d+) distinct", line).groups())
  assert float(ms) > 0 and 0 < float(share) and runs >= distinct > 10
  assert "the rest of our step:" in line


def test_stages_times_each_part_of_the_backbone_against_pytorch():
  """benchmarks.stages on a narrow ResNet: the stem and four stages, each beside PyTorch's,
  with the parameter count both sides built and the ratios the summary repeats."""
  out = _run("benchmarks.stages", "--crop", "33", "--batch", "2", "--steps", "2", "--width", "8",
             "--stem_width", "16", "--blocks", "1,1,2,1")
  rows = re.findall(r"^  (\w+) \(output ([\dx]+), ([\d,]+) parameters\): ours ([\d.]+) ms, "
                    r"PyTorch eager ([\d.]+) ms; ours is ([\d.]+)x \(round by round "
                    r"([\d.]+)-([\d.]+)x\)$", out, re.M)
  assert [r[0] for r in rows] == ["stem", "layer1", "layer2", "layer3", "layer4"], out
  # The deep stem 3 -> 8 -> 8 -> 16 (3x3 kernels, no bias) and its three batch norms; its max
  # pool halves the 17 x 17 map; OS 8 keeps stages 2-4 at 5 x 5.
  assert rows[0][1:3] == ("9x9x16", f"{27 * 8 + 72 * 8 + 72 * 16 + 2 * (8 + 8 + 16):,}")
  assert [r[1] for r in rows[1:]] == ["9x9x32", "5x5x64", "5x5x128", "5x5x256"]
  summary = out.strip().splitlines()[-1]
  assert re.fullmatch(r"summary: stem=\S+ layer1=\S+ layer2=\S+ layer3=\S+ layer4=\S+ all=\S+",
                      summary), summary
  ratios = dict(kv.split("=") for kv in summary.split()[1:])
  for name, _, _, ours, torch_ms, ratio, lo, hi in rows:
    assert ratios[name] == ratio and float(lo) <= float(ratio) <= float(hi)
    # PyTorch's time over ours, as printed (to 0.01 ms).
    assert float(torch_ms) / float(ours) == pytest.approx(float(ratio), rel=0.1)


@pytest.mark.parametrize("flags, message", [
    (["--blocks", "3,4,23"], "--blocks 3,4,23: four counts of at least 1"),
    (["--blocks", "3,x,23,3"], "--blocks 3,x,23,3: four comma-separated counts"),
    (["--steps", "0"], "--steps 0: at least 1 round"),
    (["--crop", "8"], "--crop 8 --batch 2: a crop of at least 16 pixels")])
def test_stages_names_the_flag_to_fix(flags, message):
  proc = subprocess.run([sys.executable, "-m", "benchmarks.stages", *flags], cwd=ROOT,
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 2
  assert message in proc.stderr.strip().splitlines()[-1]
