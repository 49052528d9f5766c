"""The paper's ablation setting (Sec. 5.1, Tables 1-2): ResNet-50 at output stride 16 on VOC.

Run the grid with `python -m hemnet_jax.experiments.sweep --config configs/voc_ablation.py --workdir DIR`;
each cell overrides hem.num_iters (T_train) and hem.eta (eta_train), the EMANet column
uses the `emanet` variant. Everything else is configs/voc.py.
"""

import importlib.util
import pathlib

# voc.py by its path: config files are loaded as files, not as a package.
_spec = importlib.util.spec_from_file_location("_voc", pathlib.Path(__file__).with_name("voc.py"))
voc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(voc)


def get_config(variant="hemnet"):
  config = voc.get_config(variant)
  config.model.stage_sizes = (3, 4, 6, 3)  # ResNet-50
  config.model.output_stride = 16  # stage 3 strided, stage 4 dilated with multi-grid
  return config
