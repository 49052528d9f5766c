r"""The ablation grids of Tables 1 and 2: T_train x eta_train, then T_eval; over seeds.

  python -m hemnet_jax.experiments.sweep --config configs/voc_ablation.py --workdir DIR \
      [--t_train 1,2,3,4,6,8,12,16] [--etas 0.1,0.2,0.4,0.8] [--emanet] [--fcn]
      [--seeds 0,1,2] [--t_eval 1,2,3,4,6,8,12,16] [--config.train.num_steps=...]

Any subset of the grid runs: each cell (T_train, eta_train) trains in DIR/T<T>_eta<eta>
(the EMANet column, with --emanet, in DIR/T<T>_emanet) with the config plus
hem.num_iters = T and hem.eta = eta (the `emanet` variant for that column). With --fcn,
a "no attention" column trains the same head without its HEM unit (model.head = "fcn")
once, in DIR/fcn: T_train does not apply to it, so every row shows that one run, and
Table 2 leaves it out. With --seeds, every cell trains once per seed (config.seed);
with more than one seed the cell directories end in _seed<s> and each table cell is
the mean ± std over seeds (std with ddof 1), each seed's mIoU in parentheses. A cell
whose results.json is already there at config.train.num_steps is read, not retrained;
an interrupted cell resumes from its checkpoints. Table 1 (mIoU by T_train and
eta_train, best mean per column in bold) goes to DIR/table1.md and DIR/table1.csv.
With --t_eval, each column's best T_train (by mean) is evaluated at every T_eval,
for every seed, without retraining (Table 2, its T_train underlined) into
DIR/table2.md and DIR/table2.csv.
"""

import csv
import json

import numpy as np
from etils import epath

from hemnet_jax import cli
from hemnet_jax.training import config as config_lib, evaluation, loop

EMANET = "EMANet (1.0)"
FCN = "no attention"  # model.head = "fcn": the head without its HEM unit


def cell_name(t_train, eta, seed=None):
  """The cell's directory; seed None: the single-seed name, without a suffix."""
  name = ("fcn" if eta == FCN else f"T{t_train}_emanet" if eta == EMANET
          else f"T{t_train}_eta{eta:g}")
  return name if seed is None else f"{name}_seed{seed}"


def cell_config(base, t_train, eta, seed=None):
  """The base config with T_train, eta_train (the EMANet variant / the fcn head for
  their columns) and, unless None, the seed set."""
  config = base.copy_and_resolve_references()
  if eta == EMANET:
    config = config_lib.apply_variant(config, "emanet")
  elif eta == FCN:
    config.model.head = "fcn"
  else:
    config.hem.eta = float(eta)
  config.hem.num_iters = int(t_train)
  config.hem.num_iters_eval = None
  if seed is not None:
    config.seed = int(seed)
  return config


def run_cell(base, workdir, t_train, eta, seed=None):
  """The cell's final evaluation: read if finished, else trained (or resumed)."""
  config = cell_config(base, t_train, eta, seed)
  cell = epath.Path(workdir) / cell_name(t_train, eta, seed)
  results = cell / "results.json"
  if results.exists():
    summary = json.loads(results.read_text())
    if summary["step"] == config.train.num_steps:
      return summary
  return loop.train_and_evaluate(config, cell)


def eval_cell(base, workdir, t_train, eta, t_eval, seed=None):
  """mIoU of a trained cell at T_eval, without retraining (Table 2)."""
  config = cell_config(base, t_train, eta, seed)
  config.hem.num_iters_eval = int(t_eval)
  cell = epath.Path(workdir) / cell_name(t_train, eta, seed)
  path = cell / f"eval_{evaluation.protocol_name(config.eval)}_T{t_eval}.json"
  if path.exists():
    return json.loads(path.read_text())
  return evaluation.run(config, cell)


def _column_label(eta):
  return eta if eta in (EMANET, FCN) else f"{eta:g}"


def mean_std(values):
  """(mean, std with ddof 1; 0 for one value) of a cell's per-seed mIoUs."""
  values = np.asarray(values, np.float64)
  return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def write_table(workdir, name, title, row_label, rows, columns, miou, underline=None, seeds=None):
  """Markdown (best mean per column in bold, `underline` cells underlined) and CSV, in %.

  miou[r, c] is one mIoU, or with `seeds` a list of one mIoU per seed: then the Markdown
  cell reads "mean ± std (seed values)" and the CSV has, per column, mean, std and one
  column per seed.
  """
  labels = [_column_label(c) for c in columns]
  per_seed = {k: [v] if seeds is None else list(v) for k, v in miou.items()}
  mean = {k: mean_std(v)[0] for k, v in per_seed.items()}
  best = {c: max((mean[r, c] for r in rows if (r, c) in mean), default=None) for c in columns}

  def md_cell(r, c):
    if (r, c) not in mean:
      return "–"
    m, sd = mean_std(per_seed[r, c])
    text = f"{100 * m:.2f}"
    if seeds is not None:
      text += f" ± {100 * sd:.2f} (" + ", ".join(f"{100 * v:.2f}" for v in per_seed[r, c]) + ")"
    if underline and underline.get(c) == r:
      text = f"<u>{text}</u>"
    if mean[r, c] == best[c]:
      text = f"**{text}**"
    return text

  def csv_cells(r, c):
    width = 1 if seeds is None else 2 + len(seeds)
    if (r, c) not in mean:
      return [""] * width
    if seeds is None:
      return [f"{100 * mean[r, c]:.2f}"]
    return [f"{100 * v:.2f}" for v in (*mean_std(per_seed[r, c]), *per_seed[r, c])]

  header = labels if seeds is None else [
      f"{label} {part}" for label in labels for part in ("mean", "std", *(f"seed{s}" for s in seeds))]
  seeds_note = [] if seeds is None else [f"Mean ± std over seeds {', '.join(map(str, seeds))}; "
                                         "each seed's mIoU in parentheses.", ""]
  lines = [title, "", *seeds_note, f"| {row_label} \\ eta_train | " + " | ".join(labels) + " |",
           "| --- " * (len(columns) + 1) + "|"]
  lines += [f"| {r} | " + " | ".join(md_cell(r, c) for c in columns) + " |" for r in rows]
  (epath.Path(workdir) / f"{name}.md").write_text("\n".join(lines) + "\n")
  with open(epath.Path(workdir) / f"{name}.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow([row_label] + header)
    w.writerows([[r] + [x for c in columns for x in csv_cells(r, c)] for r in rows])
  return "\n".join(lines)


def sweep(base, workdir, *, t_trains, etas, emanet=False, fcn=False, t_evals=(), seeds=()):
  """Runs the grid once per seed (none given: config.seed alone).

  Returns {"table1": {(T, eta): mean mIoU}, "table2": {(T_eval, eta): mean mIoU}} and, per
  seed, "table1_seeds" / "table2_seeds": {(T, eta): (mIoU of each seed, ...)}.
  """
  config_lib.validate(base)
  if len(set(seeds)) != len(seeds):
    raise ValueError(f"--seeds: each seed once, got {','.join(map(str, seeds))}")
  workdir = epath.Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  columns = list(etas) + ([EMANET] if emanet else []) + ([FCN] if fcn else [])
  # One seed keeps the single-seed directory names (and reads cells trained before --seeds).
  if len(seeds) == 1:
    base = base.copy_and_resolve_references()
    base.seed = int(seeds[0])
  run_seeds = list(seeds) if len(seeds) > 1 else [None]
  shown = None if len(seeds) <= 1 else list(seeds)
  fcn_runs = [run_cell(base, workdir, t_trains[0], FCN, s)["miou"] for s in run_seeds] if fcn else None
  table1 = {(t, c): fcn_runs if c == FCN else [run_cell(base, workdir, t, c, s)["miou"]
                                               for s in run_seeds]
            for c in columns for t in t_trains}
  split = base.data.eval_split
  fcn_note = " The no-attention column is one run per seed, shown in every row." if fcn else ""
  print(write_table(workdir, "table1", f"Table 1: mIoU (%) on '{split}' by T_train and eta_train "
                    f"(best per column in bold).{fcn_note}", "T_train", list(t_trains), columns,
                    _unwrap(table1, shown), seeds=shown))
  table2 = {}
  if t_evals:
    hem_columns = [c for c in columns if c != FCN]  # T_eval does not apply to the fcn head
    best_t = {c: max(t_trains, key=lambda t: mean_std(table1[t, c])[0]) for c in hem_columns}
    table2 = {(k, c): [eval_cell(base, workdir, best_t[c], c, k, s)["miou"] for s in run_seeds]
              for c in hem_columns for k in t_evals}
    print(write_table(workdir, "table2", f"Table 2: mIoU (%) on '{split}' by T_eval, each column "
                      "the run of its best T_train (underlined; best T_eval in bold).", "T_eval",
                      list(t_evals), hem_columns, _unwrap(table2, shown), underline=best_t,
                      seeds=shown))
  means = lambda table: {k: mean_std(v)[0] for k, v in table.items()}
  return {"table1": means(table1), "table2": means(table2),
          "table1_seeds": {k: tuple(v) for k, v in table1.items()},
          "table2_seeds": {k: tuple(v) for k, v in table2.items()}}


def _unwrap(table, seeds):
  """Single seed: each cell's one mIoU, as write_table takes it without seeds."""
  return table if seeds is not None else {k: v[0] for k, v in table.items()}


def _ints(text):
  return tuple(int(v) for v in text.split(",") if v)


def main(f):
  sweep(f.config, f.workdir, t_trains=_ints(f.t_train),
        etas=tuple(float(e) for e in f.etas.split(",") if e), emanet=f.emanet, fcn=f.fcn,
        t_evals=_ints(f.t_eval), seeds=_ints(f.seeds))


if __name__ == "__main__":
  from absl import flags
  cli.define_config_flags("One subdirectory per cell, and the tables.",
                          config_help="The base config, e.g. configs/voc_ablation.py.")
  flags.DEFINE_string("t_train", "1,2,3,4,6,8,12,16", "T_train values (Table 1 rows).")
  flags.DEFINE_string("etas", "0.1,0.2,0.4,0.8", "eta_train values (Table 1 columns).")
  flags.DEFINE_bool("emanet", False, "Add the EMANet column (eta 1, no backprop, l2-normalised).")
  flags.DEFINE_bool("fcn", False, "Add the no-attention column: model.head='fcn', one run per seed.")
  flags.DEFINE_string("t_eval", "", "T_eval values for Table 2; empty: no Table 2.")
  flags.DEFINE_string("seeds", "", "Seeds, e.g. 0,1,2: every cell trains once per seed; "
                      "empty: config.seed alone.")
  cli.start(main)
