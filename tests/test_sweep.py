"""`python -m hemnet_jax.experiments.sweep` on a 2x2 subset of Table 1 with a tiny model, and Table 2."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import ROOT, tiny_config, tiny_flags

from hemnet_jax.experiments import sweep
from hemnet_jax.training import loop

# A tiny model (no auxiliary head, 7x7 stem, no ELBO logging: less to compile), one training
# step per cell, 4 validation images.
TINY_SWEEP = {"train.num_steps": 1, "train.checkpoint_every": 1, "model.aux_weight": 0.0,
              "train.log_elbo": False, "model.stem": "torchvision",
              "data.eval_split": "validation[:4]", "data.eval_batch_size": 4}


def test_two_by_two_subset_writes_table_1_and_table_2(data_dir, tmp_path, monkeypatch):
  cmd = [sys.executable, "-m", "hemnet_jax.experiments.sweep", "--config=configs/demo.py",
         f"--workdir={tmp_path}", "--t_train=1,2", "--etas=0.4,0.8", "--t_eval=3",
         *tiny_flags(**TINY_SWEEP)]
  env = {**os.environ, "TFDS_DATA_DIR": str(data_dir)}
  res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr

  rows = list(csv.reader(open(tmp_path / "table1.csv")))
  assert rows[0] == ["T_train", "0.4", "0.8"] and [r[0] for r in rows[1:]] == ["1", "2"]
  miou = {}
  for r, t in zip(rows[1:], (1, 2)):
    for value, eta in zip(r[1:], ("0.4", "0.8")):
      cell = json.loads((tmp_path / f"T{t}_eta{eta}" / "results.json").read_text())
      assert value == f"{100 * cell['miou']:.2f}" and cell["step"] == 1
      config = json.loads((tmp_path / f"T{t}_eta{eta}" / "config.json").read_text())
      assert (config["hem"]["num_iters"], config["hem"]["eta"]) == (t, float(eta))
      miou[t, eta] = cell["miou"]
  md = (tmp_path / "table1.md").read_text().splitlines()
  assert md[2] == "| T_train \\ eta_train | 0.4 | 0.8 |" and len(md) == 6
  for col, eta in ((2, "0.4"), (3, "0.8")):  # the best of each column, and only it, is bold
    best = max((1, 2), key=lambda t: miou[t, eta])
    bold = [int(line.split("|")[1]) for line in md[4:] if "**" in line.split("|")[col]]
    assert best in bold and all(miou[t, eta] == miou[best, eta] for t in bold)

  # Table 2: each column's best T_train run, evaluated at T_eval = 3 without retraining.
  rows2 = list(csv.reader(open(tmp_path / "table2.csv")))
  assert rows2[0] == ["T_eval", "0.4", "0.8"] and [r[0] for r in rows2[1:]] == ["3"]
  for value, eta in zip(rows2[1][1:], ("0.4", "0.8")):
    best = max((1, 2), key=lambda t: miou[t, eta])
    out = json.loads((tmp_path / f"T{best}_eta{eta}" / "eval_ss_T3.json").read_text())
    assert value == f"{100 * out['miou']:.2f}" and len(out["elbo_per_iter"]) == 3

  # A second run of the same grid reads the finished cells: nothing trains again.
  monkeypatch.setattr(loop, "train_and_evaluate", lambda *a: pytest.fail("retrained a cell"))
  again = sweep.sweep(tiny_config(data_dir, **TINY_SWEEP), tmp_path, t_trains=(1, 2),
                      etas=(0.4, 0.8), t_evals=(3,))
  assert again["table1"] == {(t, float(e)): m for (t, e), m in miou.items()}


def test_voc_ablation_config_is_the_papers_ablation_setting():
  import importlib.util
  spec = importlib.util.spec_from_file_location("voc_ablation", ROOT / "configs" / "voc_ablation.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  assert (tuple(config.model.stage_sizes), config.model.output_stride) == ((3, 4, 6, 3), 16)
  assert (config.data.name, config.hem.eta, config.hem.num_iters) == ("voc_aug", 0.5, 3)
  emanet = sweep.cell_config(module.get_config(), 2, sweep.EMANET)
  assert (emanet.hem.eta, emanet.hem.backprop, emanet.hem.num_iters) == (1.0, False, 2)
  assert sweep.cell_name(2, sweep.EMANET) == "T2_emanet" and sweep.cell_name(4, 0.2) == "T4_eta0.2"


def test_seeds_and_no_attention_column_give_mean_and_std_per_cell(data_dir, tmp_path):
  # T_train 1, eta 0.4 and T_eval 3, as in the test above: seed 0's HEM cell reuses its programs.
  cmd = [sys.executable, "-m", "hemnet_jax.experiments.sweep", "--config=configs/demo.py",
         f"--workdir={tmp_path}", "--t_train=1", "--etas=0.4", "--fcn", "--seeds=0,1",
         "--t_eval=3", *tiny_flags(**TINY_SWEEP)]
  env = {**os.environ, "TFDS_DATA_DIR": str(data_dir)}
  res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr

  runs = {}
  for name in ("T1_eta0.4", "fcn"):
    for seed in (0, 1):
      cell = tmp_path / f"{name}_seed{seed}"
      config = json.loads((cell / "config.json").read_text())
      assert config["seed"] == seed
      assert config["model"]["head"] == ("fcn" if name == "fcn" else "hem")
      runs[name, seed] = json.loads((cell / "results.json").read_text())["miou"]
  assert not (tmp_path / "T1_eta0.4").exists()  # several seeds: only suffixed cells
  # Different seeds train different models (else the std would say nothing).
  assert runs["T1_eta0.4", 0] != runs["T1_eta0.4", 1]

  rows = list(csv.reader(open(tmp_path / "table1.csv")))
  assert rows[0] == ["T_train", "0.4 mean", "0.4 std", "0.4 seed0", "0.4 seed1", "no attention mean",
                     "no attention std", "no attention seed0", "no attention seed1"]
  for name, values in (("T1_eta0.4", rows[1][1:5]), ("fcn", rows[1][5:9])):
    per_seed = [runs[name, 0], runs[name, 1]]
    expected = [np.mean(per_seed), np.std(per_seed, ddof=1), *per_seed]
    assert values == [f"{100 * v:.2f}" for v in expected]
  md = (tmp_path / "table1.md").read_text()
  m, sd = np.mean([runs["fcn", 0], runs["fcn", 1]]), np.std([runs["fcn", 0], runs["fcn", 1]], ddof=1)
  assert f"{100 * m:.2f} ± {100 * sd:.2f} ({100 * runs['fcn', 0]:.2f}, {100 * runs['fcn', 1]:.2f})" in md

  # Table 2: every seed of the eta 0.4 cell at T_eval 3; no fcn column (T does not apply).
  rows2 = list(csv.reader(open(tmp_path / "table2.csv")))
  assert rows2[0] == ["T_eval", "0.4 mean", "0.4 std", "0.4 seed0", "0.4 seed1"]
  t2 = [json.loads((tmp_path / f"T1_eta0.4_seed{s}" / "eval_ss_T3.json").read_text())["miou"]
        for s in (0, 1)]
  assert rows2[1][3:] == [f"{100 * v:.2f}" for v in t2]


def test_cell_config_sets_seed_and_head():
  config = sweep.cell_config(tiny_config("/nonexistent"), 3, sweep.FCN, seed=4)
  assert (config.seed, config.model.head) == (4, "fcn")
  config = sweep.cell_config(tiny_config("/nonexistent"), 3, 0.2)
  assert (config.seed, config.model.head, config.hem.eta) == (0, "hem", 0.2)
  assert sweep.cell_name(3, sweep.FCN, 2) == "fcn_seed2" and sweep.cell_name(3, 0.2, 0) == "T3_eta0.2_seed0"
  assert sweep.mean_std([0.5]) == (0.5, 0.0)
  assert sweep.mean_std([0.4, 0.6]) == pytest.approx((0.5, np.sqrt(0.02)))


def test_seed_names_and_means_without_training(tmp_path, monkeypatch):
  """One seed keeps the plain cell names (with config.seed set); several get suffixes."""
  trained = []

  def fake_train(config, cell):
    trained.append((cell.name, config.seed, config.model.head))
    miou = 0.1 * config.seed + (0.0 if config.model.head == "fcn" else 0.5)
    return {"miou": miou, "step": config.train.num_steps}

  monkeypatch.setattr(loop, "train_and_evaluate", fake_train)
  base = tiny_config("/nonexistent")
  out = sweep.sweep(base, tmp_path / "one", t_trains=(3,), etas=(0.5,), fcn=True, seeds=(5,))
  assert sorted(trained) == [("T3_eta0.5", 5, "hem"), ("fcn", 5, "fcn")]
  assert out["table1"] == {(3, 0.5): pytest.approx(1.0), (3, sweep.FCN): pytest.approx(0.5)}

  trained.clear()
  out = sweep.sweep(base, tmp_path / "three", t_trains=(3,), etas=(0.5,), fcn=True, seeds=(0, 1, 2))
  assert sorted(trained) == sorted([(f"T3_eta0.5_seed{s}", s, "hem") for s in (0, 1, 2)]
                                   + [(f"fcn_seed{s}", s, "fcn") for s in (0, 1, 2)])
  assert out["table1_seeds"][3, 0.5] == pytest.approx((0.5, 0.6, 0.7))
  assert out["table1"][3, sweep.FCN] == pytest.approx(0.1)
  md = (tmp_path / "three" / "table1.md").read_text()
  assert "| 3 | **60.00 ± 10.00 (50.00, 60.00, 70.00)** | **10.00 ± 10.00 (0.00, 10.00, 20.00)** |" in md
  with pytest.raises(ValueError, match="--seeds"):
    sweep.sweep(base, tmp_path / "dup", t_trains=(3,), etas=(0.5,), seeds=(1, 1))
