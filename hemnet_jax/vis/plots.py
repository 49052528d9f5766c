"""The paper's figures as PNGs: Figure 3 from the probes' CSVs, Figure 4's attention grid.

Everything here reads rows (dicts of strings, as csv.DictReader gives them, or of numbers)
or arrays, never a model, so a figure can be re-made from the CSV or npz files alone.
Figures are matplotlib `Figure`s drawn by its Agg canvas: no pyplot, no screen, no global
backend state.
"""

import csv

import numpy as np
from etils import epath
from matplotlib.figure import Figure

DPI = 100  # the figures in docs/ stay well under 150 KB
CELL_INCHES = (1.5, 1.5)  # width, height of one panel of the attention grid
# Figure 3's panels: (file, CSV column, y label, title, log y-axis).
LAYER_PANELS = (
    ("fig3a_elbo.png", "elbo", "ELBO (Eq. 3)", "(a) ELBO after HEM iteration t", False),
    ("fig3b_grad_n_step.png", "grad_x_n_step", "mean |dL/dX|",
     "(b) gradient to X from the N-step of layer t", True),
    ("fig3c_grad_e_step.png", "grad_x_e_step", "mean |dL/dX|",
     "(c) gradient to X from the E-step of layer t", True),
)
CHECKPOINTS_PANEL = ("fig3d_grad_checkpoints.png", "(d) total gradient to X during training")


def read_csv(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def write_csv(path, rows):
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)


def _by_eta(rows):
  groups = {}
  for r in rows:
    groups.setdefault(float(r["eta"]), []).append(r)
  return sorted(groups.items())


def layer_panel(ax, layers, column, ylabel, title, log):
  """One line per eta: `column` of probe_layers.csv against the layer t."""
  for eta, rows in _by_eta(layers):
    rows = sorted(rows, key=lambda r: int(r["layer"]))
    ax.plot([int(r["layer"]) for r in rows], [float(r[column]) for r in rows], marker="o",
            label=f"eta {eta:g}")
  if log:
    ax.set_yscale("log", nonpositive="mask")  # an exact 0 (no path) is left out, not clipped
  ax.set_xticks(sorted({int(r["layer"]) for r in layers}))
  ax.set(xlabel="HEM layer t", ylabel=ylabel, title=title)
  ax.legend(fontsize="small")


def checkpoints_panel(ax, checkpoints, title):
  """The total mean |dL/dX| against the training step, one line per eta (the run's)."""
  for eta, rows in _by_eta(checkpoints):
    rows = sorted(rows, key=lambda r: int(r["step"]))
    ax.plot([int(r["step"]) for r in rows], [float(r["grad_x_total"]) for r in rows], marker="o",
            label=f"eta {eta:g}")
  ax.set_yscale("log", nonpositive="mask")
  ax.set(xlabel="training step", ylabel="total mean |dL/dX|", title=title)
  ax.legend(fontsize="small")


def figure_3(layers, checkpoints=None, suptitle=None):
  """{file name: Figure}: Figs. 3a-c (3d with checkpoint rows), and all of them as figure3.png."""
  figures, panels = {}, [(name, lambda ax, p=p: layer_panel(ax, layers, *p)) for name, *p in
                         LAYER_PANELS]
  if checkpoints:
    name, title = CHECKPOINTS_PANEL
    panels.append((name, lambda ax: checkpoints_panel(ax, checkpoints, title)))
  for name, draw in panels:
    fig = Figure(figsize=(4.5, 3.5), dpi=DPI, layout="constrained")
    draw(fig.add_subplot())
    figures[name] = fig
  combined = Figure(figsize=(4.5 * len(panels), 3.6), dpi=DPI, layout="constrained")
  for ax, (_, draw) in zip(combined.subplots(1, len(panels), squeeze=False)[0], panels):
    draw(ax)
  if suptitle:
    combined.suptitle(suptitle)
  figures["figure3.png"] = combined
  return figures


def save(figures, directory):
  """Writes {file name: Figure} as PNGs into directory; returns the paths."""
  paths = []
  for name, fig in figures.items():
    path = epath.Path(directory) / name
    fig.savefig(path, dpi=DPI)
    paths.append(path)
  return paths


def probe_plots(directory, suptitle=None):
  """Figure 3's PNGs from probe_layers.csv (and probe_checkpoints.csv, if there) in directory."""
  directory = epath.Path(directory)
  ckpt = directory / "probe_checkpoints.csv"
  figures = figure_3(read_csv(directory / "probe_layers.csv"),
                     read_csv(ckpt) if ckpt.exists() else None, suptitle)
  return save(figures, directory)


def attention_figure(image, label, prediction, x, gammas, x_tilde, bases, channels, colours,
                     title=None):
  """Figure 4's grid: (Figure, axes [1 + T, 1 + len(bases) + len(channels)]).

  Row 0: the image, its label and the prediction, then the input features X_.c of each
  channel. Row t (1..T): argmax_k gamma^(t), then gamma^(t)_.k of each chosen basis on
  [0, 1], then the reconstruction X_tilde^(t)_.c = (gamma^(t) mu^(t))_.c (Eq. 10) of each
  chosen channel, on one colour scale per channel over t (X_.c has its own: X_tilde, a
  mixture of K bases, spans a narrower range).

  image [H, W, 3] uint8; label, prediction [H, W] class ids; x [h, w, C]; gammas
  [T, h, w, K]; x_tilde [T, h, w, len(channels)]; colours [256, 3] uint8.
  """
  num_iters, nb, nc = gammas.shape[0], len(bases), len(channels)
  cols = 1 + nb + nc
  fig = Figure(figsize=(CELL_INCHES[0] * cols, CELL_INCHES[1] * (1 + num_iters)), dpi=DPI,
               layout="constrained")
  axes = fig.subplots(1 + num_iters, cols, squeeze=False)
  for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_axis_off()

  def show(ax, array, title=None, **kw):
    ax.set_axis_on()
    ax.imshow(array, interpolation="nearest", **kw)
    if title:
      ax.set_title(title, fontsize="small")

  header = [(image, "image"), (colours[label], "label"), (colours[prediction], "prediction")]
  for ax, (array, name) in zip(axes[0, :1 + nb], header):
    show(ax, array, name)
  for j, c in enumerate(channels):
    show(axes[0, 1 + nb + j], x[..., c], rf"input $X_{{\cdot {c}}}$", cmap="viridis")
  limits = [(float(x_tilde[..., j].min()), float(x_tilde[..., j].max())) for j in range(nc)]
  # Hard assignments in the bases' own colours (palette entries 1..K: 0 is black).
  basis_colours = colours[1:][np.arange(gammas.shape[-1]) % 255]
  for t in range(num_iters):
    row, first = axes[1 + t], t == 0
    show(row[0], basis_colours[np.argmax(gammas[t], -1)],
         r"$\arg\max_k\,\gamma_{\cdot k}$" if first else None)
    row[0].set_ylabel(f"t = {t + 1}", fontsize="medium")
    for j, k in enumerate(bases):
      show(row[1 + j], gammas[t, ..., k], rf"$\gamma_{{\cdot {k}}}$" if first else None,
           cmap="gray", vmin=0.0, vmax=1.0)
    for j, c in enumerate(channels):
      show(row[1 + nb + j], x_tilde[t, ..., j], rf"$\tilde{{X}}_{{\cdot {c}}}$" if first else None,
           cmap="viridis", vmin=limits[j][0], vmax=limits[j][1])
  if title:
    fig.suptitle(title, fontsize="medium")
  return fig, axes
