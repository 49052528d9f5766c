"""`python -m hemnet_jax.attention_maps` on a tiny run, checked against a recomputation."""

import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from helpers import ROOT, tiny_config, tiny_flags
from test_plots import read_png

from hemnet_jax import hem
from hemnet_jax.data import pipeline
from hemnet_jax.models import hemnet
from hemnet_jax.training import checkpoints, sharding, state as state_lib
from hemnet_jax.vis import plots
from hemnet_jax.models.hem_unit import ATTENTION


def attention_cli(data_dir, workdir, out, *flags, overrides=None):
  env = {**os.environ, "TFDS_DATA_DIR": str(data_dir)}
  cmd = [sys.executable, "-m", "hemnet_jax.experiments.attention_maps", "--config=configs/demo.py",
         f"--workdir={workdir}", f"--out={out}", *flags, *tiny_flags(**(overrides or {}))]
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def expected(config, workdir, image_index, num_iters):
  """gamma^(1..T) [T, h, w, K], X_tilde^(1..T) [T, h, w, C] and X [h, w, C] of one validation
  image, from hem.hem_iterations; and the model's own last gamma (sown by the HEM unit)."""
  config = config.copy_and_resolve_references()
  config.hem.num_iters_eval = num_iters
  model = state_lib.build_model(config)
  state, _ = checkpoints.restore(workdir, state_lib.abstract_train_state(config, model),
                                 mesh=sharding.make_mesh())
  split = pipeline.load_split(config.data, config.data.eval_split)
  example = split.source[image_index]
  image = jnp.asarray(pipeline.eval_transform(example, multiple=8)["image"])[None]
  # Jitted: run op by op, the model would compile each of its operations on its own.
  x, mu0 = jax.jit(lambda v, im: hemnet.hem_inputs(model, v, im))(state.variables(), image)
  out = hem.hem_iterations(x, mu0, num_iters=num_iters, eta=config.hem.eta,
                           temperature=math.sqrt(config.model.head_channels))
  _, sown = jax.jit(lambda v, im: model.apply(v, im, train=False, mutable=[ATTENTION]))(
      state.variables(), image)
  h, w = np.asarray(example["label"]).shape
  fh, fw = image.shape[1] // 8, image.shape[2] // 8  # padded; the image covers ceil(h / 8) rows
  as_map = lambda a: np.asarray(a).reshape(a.shape[:-2] + (fh, fw, a.shape[-1]))[
      ..., :-(-h // 8), :-(-w // 8), :]
  model_gamma = jax.tree.leaves(sown)[0][0, :-(-h // 8), :-(-w // 8)]
  return (as_map(out.gammas[:, 0]), as_map(hem.r_step(out.gammas[:, 0], out.mus[:, 0])),
          as_map(x[0]), np.asarray(model_gamma))


def test_grid_is_gamma_and_x_tilde_of_each_iteration(data_dir, tiny_run, tmp_path):
  config = tiny_config(data_dir, **tiny_run.overrides)
  for num_iters, flags in ((3, []), (5, ["--config.hem.num_iters_eval=5"])):  # T_train, T_eval
    out = tmp_path / f"T{num_iters}"
    res = attention_cli(data_dir, tiny_run.path, out, "--image_index=2", "--bases=3,0",
                        "--channels=15,1", *flags, overrides=tiny_run.overrides)
    assert res.returncode == 0, res.stderr
    saved = np.load(out / "attention_2.npz")
    gammas, x_tilde, x, model_gamma = expected(config, tiny_run.path, 2, num_iters)
    assert saved["gammas"].shape[0] == num_iters == gammas.shape[0]
    np.testing.assert_allclose(saved["gammas"], gammas, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(saved["gammas"][-1], model_gamma, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(saved["x_tilde"], x_tilde[..., [15, 1]], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(saved["x"], x, rtol=1e-4, atol=1e-5)
    assert list(saved["bases"]) == [3, 0] and list(saved["channels"]) == [15, 1]
    # The grid's panels, (t, k) and (t, c), as the figure draws them from these arrays.
    _, axes = plots.attention_figure(saved["image"], saved["label"], saved["prediction"],
                                     saved["x"], saved["gammas"], saved["x_tilde"], [3, 0],
                                     [15, 1], np.zeros((256, 3), np.uint8))
    for t in range(num_iters):
      np.testing.assert_allclose(axes[1 + t, 1].images[0].get_array(), gammas[t, ..., 3], rtol=1e-4,
                                 atol=1e-6)
    # The PNG: a header row and one row per iteration, 1 + 2 bases + 2 channels columns.
    width, height = read_png(out / "attention_2.png")
    cw, ch = (round(plots.DPI * s) for s in plots.CELL_INCHES)
    assert (width, height) == (5 * cw, (1 + num_iters) * ch)


def test_default_bases_are_those_with_the_most_mass(data_dir, tiny_run, tmp_path):
  res = attention_cli(data_dir, tiny_run.path, tmp_path, overrides=tiny_run.overrides)
  assert res.returncode == 0, res.stderr
  saved = np.load(tmp_path / "attention_0.npz")
  mass = saved["gammas"][-1].sum((0, 1))
  assert len(saved["bases"]) == 4 and sorted(mass[saved["bases"]]) == sorted(mass)  # K = 4: all
  assert list(mass[saved["bases"]]) == sorted(mass, reverse=True)
  spread = saved["x"].std((0, 1))
  assert list(spread[saved["channels"]]) == sorted(spread, reverse=True)[:3]


def test_bad_indices_fail_naming_the_flag_and_the_limit(data_dir, tiny_run, tmp_path):
  # The tiny model: K = 4 bases, C = 16 channels; 4 validation images.
  for flag, message in (("--bases=1,4", "--bases=1,4: index 4 out of range, the model has K "
                                        "(config.hem.num_bases) = 4 (indices 0 to 3)"),
                        ("--channels=16", "--channels=16: index 16 out of range, the model has C "
                                          "(config.model.head_channels) = 16 (indices 0 to 15)"),
                        ("--image_index=4", "--image_index=4: 'validation[:4]' has 4 images")):
    res = attention_cli(data_dir, tiny_run.path, tmp_path, flag, overrides=tiny_run.overrides)
    assert res.returncode == 1 and message in res.stderr, (flag, res.stderr)
  assert not list(tmp_path.iterdir())  # nothing written
