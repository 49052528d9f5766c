"""The dataset configs: the paper's HEM settings, class counts that match the builders."""

import subprocess
import sys

import pytest
import tensorflow_datasets as tfds

from hemnet_jax import data
from hemnet_jax.training import config as config_lib
from helpers import ROOT

TESTDATA = ROOT / "tests" / "testdata"

sys.path.insert(0, str(ROOT))
from configs import cocostuff, context, voc  # noqa: E402


@pytest.mark.parametrize("module,name,num_classes,eta", [
    (voc, "voc_aug", 21, 0.5), (context, "pascal_context", 59, 0.5),
    (cocostuff, "coco_stuff/10k", 171, 0.6)])
def test_configs_match_paper_and_builders(module, name, num_classes, eta):
  assert module.get_config().hem.temperature is None  # None: sqrt(C), resolved by validate
  config = config_lib.validate(module.get_config())
  assert (config.data.name, config.data.num_classes, config.hem.eta) == (name, num_classes, eta)
  assert config.hem.num_iters == 3 and config.hem.num_iters_eval == 3
  assert config.hem.temperature == pytest.approx(512 ** 0.5)
  assert config.data.eval_batch_size == 1 and config.data.crop_size == 513
  builder_cls = type(tfds.builder(name, data_dir="/nonexistent"))
  assert len(builder_cls.CLASS_NAMES) == num_classes
  assert data.class_names(config.data) == builder_cls.CLASS_NAMES
  emanet = module.get_config("emanet")
  assert (emanet.hem.eta, emanet.hem.backprop) == (1.0, False)


def test_prepare_command_builds_and_reports_split_sizes(tmp_path):
  ok = subprocess.run([sys.executable, "-m", "hemnet_jax.tools.prepare", "--dataset=voc_aug",
                       f"--manual_dir={TESTDATA / 'voc_aug'}", f"--data_dir={tmp_path}"],
                      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert ok.returncode == 0, ok.stderr
  assert "voc_aug train: 5 examples" in ok.stdout and "voc_aug validation: 2 examples" in ok.stdout
  missing = subprocess.run([sys.executable, "-m", "hemnet_jax.tools.prepare", "--dataset=coco_stuff/164k",
                            f"--manual_dir={tmp_path / 'none'}", f"--data_dir={tmp_path}"],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert missing.returncode == 1
  assert "train2017.zip" in missing.stderr and "images.cocodataset.org" in missing.stderr
