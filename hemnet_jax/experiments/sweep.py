r"""The ablation grids of Tables 1 and 2: T_train x eta_train, then T_eval.

  python -m hemnet_jax.experiments.sweep --config configs/voc_ablation.py --workdir DIR \
      [--t_train 1,2,3,4,6,8,12,16] [--etas 0.1,0.2,0.4,0.8] [--emanet] [--t_eval 1,2,3,4,6,8,12,16]
      [--config.train.num_steps=...]

Any subset of the grid runs: each cell (T_train, eta_train) trains in DIR/T<T>_eta<eta>
(the EMANet column, with --emanet, in DIR/T<T>_emanet) with the config plus
hem.num_iters = T and hem.eta = eta (the `emanet` variant for that column). A cell
whose results.json is already there at config.train.num_steps is read, not retrained;
an interrupted cell resumes from its checkpoints. Table 1 (mIoU by T_train and
eta_train, best per column in bold) goes to DIR/table1.md and DIR/table1.csv. With
--t_eval, each column's best T_train run is evaluated at every T_eval without
retraining (Table 2, its T_train underlined) into DIR/table2.md and DIR/table2.csv.
"""

import csv
import json

from etils import epath

from hemnet_jax import cli
from hemnet_jax.training import config as config_lib, evaluation, loop

EMANET = "EMANet (1.0)"


def cell_name(t_train, eta):
  return f"T{t_train}_emanet" if eta == EMANET else f"T{t_train}_eta{eta:g}"


def cell_config(base, t_train, eta):
  """The base config with T_train and eta_train set; the EMANet variant for its column."""
  config = base.copy_and_resolve_references()
  if eta == EMANET:
    config = config_lib.apply_variant(config, "emanet")
  else:
    config.hem.eta = float(eta)
  config.hem.num_iters = int(t_train)
  config.hem.num_iters_eval = None
  return config


def run_cell(base, workdir, t_train, eta):
  """The cell's final evaluation: read if finished, else trained (or resumed)."""
  config = cell_config(base, t_train, eta)
  cell = epath.Path(workdir) / cell_name(t_train, eta)
  results = cell / "results.json"
  if results.exists():
    summary = json.loads(results.read_text())
    if summary["step"] == config.train.num_steps:
      return summary
  return loop.train_and_evaluate(config, cell)


def eval_cell(base, workdir, t_train, eta, t_eval):
  """mIoU of a trained cell at T_eval, without retraining (Table 2)."""
  config = cell_config(base, t_train, eta)
  config.hem.num_iters_eval = int(t_eval)
  cell = epath.Path(workdir) / cell_name(t_train, eta)
  path = cell / f"eval_{evaluation.protocol_name(config.eval)}_T{t_eval}.json"
  if path.exists():
    return json.loads(path.read_text())
  return evaluation.run(config, cell)


def _column_label(eta):
  return eta if eta == EMANET else f"{eta:g}"


def write_table(workdir, name, title, row_label, rows, columns, miou, underline=None):
  """Markdown (best per column in bold, `underline` cells underlined) and CSV, in %."""
  labels = [_column_label(c) for c in columns]
  best = {c: max((miou[r, c] for r in rows if (r, c) in miou), default=None) for c in columns}

  def cell(r, c, markdown):
    if (r, c) not in miou:
      return "–" if markdown else ""
    text = f"{100 * miou[r, c]:.2f}"
    if markdown and underline and underline.get(c) == r:
      text = f"<u>{text}</u>"
    if markdown and miou[r, c] == best[c]:
      text = f"**{text}**"
    return text

  lines = [title, "", f"| {row_label} \\ eta_train | " + " | ".join(labels) + " |",
           "| --- " * (len(columns) + 1) + "|"]
  lines += [f"| {r} | " + " | ".join(cell(r, c, True) for c in columns) + " |" for r in rows]
  (epath.Path(workdir) / f"{name}.md").write_text("\n".join(lines) + "\n")
  with open(epath.Path(workdir) / f"{name}.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow([row_label] + labels)
    w.writerows([[r] + [cell(r, c, False) for c in columns] for r in rows])
  return "\n".join(lines)


def sweep(base, workdir, *, t_trains, etas, emanet=False, t_evals=()):
  """Runs the grid; returns {"table1": {(T, eta): mIoU}, "table2": {(T_eval, eta): mIoU}}."""
  config_lib.validate(base)
  workdir = epath.Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  columns = list(etas) + ([EMANET] if emanet else [])
  table1 = {(t, c): run_cell(base, workdir, t, c)["miou"] for c in columns for t in t_trains}
  split = base.data.eval_split
  print(write_table(workdir, "table1", f"Table 1: mIoU (%) on '{split}' by T_train and eta_train "
                    "(best per column in bold).", "T_train", list(t_trains), columns, table1))
  table2 = {}
  if t_evals:
    best_t = {c: max(t_trains, key=lambda t: table1[t, c]) for c in columns}
    table2 = {(k, c): eval_cell(base, workdir, best_t[c], c, k)["miou"]
              for c in columns for k in t_evals}
    print(write_table(workdir, "table2", f"Table 2: mIoU (%) on '{split}' by T_eval, each column "
                      "the run of its best T_train (underlined; best T_eval in bold).", "T_eval",
                      list(t_evals), columns, table2, underline=best_t))
  return {"table1": table1, "table2": table2}


def _ints(text):
  return tuple(int(v) for v in text.split(",") if v)


def main(f):
  sweep(f.config, f.workdir, t_trains=_ints(f.t_train),
        etas=tuple(float(e) for e in f.etas.split(",") if e), emanet=f.emanet,
        t_evals=_ints(f.t_eval))


if __name__ == "__main__":
  from absl import flags
  cli.define_config_flags("One subdirectory per cell, and the tables.",
                          config_help="The base config, e.g. configs/voc_ablation.py.")
  flags.DEFINE_string("t_train", "1,2,3,4,6,8,12,16", "T_train values (Table 1 rows).")
  flags.DEFINE_string("etas", "0.1,0.2,0.4,0.8", "eta_train values (Table 1 columns).")
  flags.DEFINE_bool("emanet", False, "Add the EMANet column (eta 1, no backprop, l2-normalised).")
  flags.DEFINE_string("t_eval", "", "T_eval values for Table 2; empty: no Table 2.")
  cli.start(main)
