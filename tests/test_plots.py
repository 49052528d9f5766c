"""Figure 3 re-made from the probes' CSV files alone, and Figure 4's grid panel by panel."""

import io
import subprocess
import sys

import numpy as np
from helpers import ROOT
from PIL import Image

from hemnet_jax.vis import plots, render

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_png(path):
  """(width, height) of a valid PNG file, decoded in full."""
  data = path.read_bytes()
  assert data[:8] == PNG_SIGNATURE, path
  image = Image.open(io.BytesIO(data))
  image.load()
  assert image.width > 0 and image.height > 0
  return image.size


def write_probe_csvs(directory):
  """Distinct, known values: (layers, checkpoints) rows, also written as CSV files."""
  layers = [{"eta": eta, "layer": t, "elbo": -10.0 + t * eta, "grad_x_n_step": eta * t * 1e-3,
             "grad_x_e_step": eta * t * 1e-6, "grad_x_n_step_e_cut": 0.0}
            for eta in (0.2, 1.0) for t in (1, 2, 3)]
  checkpoints = [{"step": s, "eta": 0.5, "grad_x_total": 1.0 / s} for s in (100, 200, 300)]
  plots.write_csv(directory / "probe_layers.csv", layers)
  plots.write_csv(directory / "probe_checkpoints.csv", checkpoints)
  return layers, checkpoints


def test_figure_3_is_re_made_from_the_csv_files(tmp_path):
  layers, checkpoints = write_probe_csvs(tmp_path)
  res = subprocess.run([sys.executable, "-m", "hemnet_jax.experiments.plots", f"--dir={tmp_path}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr
  names = ["fig3a_elbo.png", "fig3b_grad_n_step.png", "fig3c_grad_e_step.png",
           "fig3d_grad_checkpoints.png", "figure3.png"]
  for name in names:
    read_png(tmp_path / name)

  # The plotted lines are the CSV's columns, one per eta; (b)-(d) on log axes.
  figures = plots.figure_3(plots.read_csv(tmp_path / "probe_layers.csv"),
                           plots.read_csv(tmp_path / "probe_checkpoints.csv"))
  assert sorted(figures) == sorted(names)
  for name, column, log in (("fig3a_elbo.png", "elbo", False),
                            ("fig3b_grad_n_step.png", "grad_x_n_step", True),
                            ("fig3c_grad_e_step.png", "grad_x_e_step", True)):
    ax = figures[name].axes[0]
    assert ax.get_yscale() == ("log" if log else "linear")
    assert [line.get_label() for line in ax.lines] == ["eta 0.2", "eta 1"]
    for line, eta in zip(ax.lines, (0.2, 1.0)):
      np.testing.assert_array_equal(line.get_xdata(), [1, 2, 3])
      np.testing.assert_allclose(line.get_ydata(), [r[column] for r in layers if r["eta"] == eta])
  (line,) = figures["fig3d_grad_checkpoints.png"].axes[0].lines
  np.testing.assert_array_equal(line.get_xdata(), [100, 200, 300])
  np.testing.assert_allclose(line.get_ydata(), [r["grad_x_total"] for r in checkpoints])
  assert len(figures["figure3.png"].axes) == 4

  # Without checkpoints (a probe at initialisation) there is no (d).
  (tmp_path / "probe_checkpoints.csv").unlink()
  figures = plots.figure_3(plots.read_csv(tmp_path / "probe_layers.csv"))
  assert "fig3d_grad_checkpoints.png" not in figures and len(figures["figure3.png"].axes) == 3


def test_attention_figure_panels_are_the_arrays_given():
  rng = np.random.default_rng(0)
  T, h, w, K, C = 3, 5, 6, 7, 9
  bases, channels = [6, 0, 2], [8, 1]
  gammas = rng.dirichlet(np.ones(K), size=(T, h, w))
  x, x_tilde = rng.normal(size=(h, w, C)), rng.normal(size=(T, h, w, len(channels)))
  image = rng.integers(0, 256, (40, 48, 3)).astype(np.uint8)
  label, prediction = rng.integers(0, 5, (40, 48)), rng.integers(0, 5, (40, 48))
  colours = render.generic_palette()
  fig, axes = plots.attention_figure(image, label, prediction, x, gammas, x_tilde, bases, channels,
                                     colours)
  assert axes.shape == (1 + T, 1 + len(bases) + len(channels))
  panel = lambda r, c: np.asarray(axes[r, c].images[0].get_array())
  np.testing.assert_array_equal(panel(0, 0), image)
  np.testing.assert_array_equal(panel(0, 1), colours[label])
  np.testing.assert_array_equal(panel(0, 2), colours[prediction])
  for j, c in enumerate(channels):
    np.testing.assert_array_equal(panel(0, 1 + len(bases) + j), x[..., c])
  for t in range(T):
    assert axes[1 + t, 0].get_ylabel() == f"t = {t + 1}"
    for j, k in enumerate(bases):
      np.testing.assert_array_equal(panel(1 + t, 1 + j), gammas[t, ..., k])
    for j in range(len(channels)):
      np.testing.assert_array_equal(panel(1 + t, 1 + len(bases) + j), x_tilde[t, ..., j])
