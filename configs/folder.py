r"""Your own dataset from folders (README.md, "Your own dataset"), with the demo's model.

  python -m hemnet_jax.main --config configs/folder.py --workdir runs/mydata \
      --config.data.folder.name=mydata --config.data.num_classes=11 \
      --config.data.folder.images=~/mydata/images --config.data.folder.labels=~/mydata/labels \
      --config.data.folder.holdout_fraction=0.1 [--config.data.folder.ignore_ids=(11,)] \
      [--config.data.folder.class_names_file=~/mydata/classes.txt]

The first run prepares the folders into the tfds data dir as folder/mydata (so does
`python -m hemnet_jax.tools.prepare --dataset folder ...` with the same fields); a later run
whose files or options changed rebuilds it. The model is the demo's (configs/demo.py).
Expected: on the worked example of docs/folder_dataset.md (the built-in shapes exported
to folders, 288 train / 72 val images of 96 x 96, void id 11 ignored) the 600 steps below
reach 38.63 % val mIoU in 16.5 min on a shared 2-core CPU.

Paper-sized settings, for real photographs on an accelerator: start from configs/voc.py
(ResNet-101, C 512, K 64, crop 513, batch 16, 30k steps, bf16) with an ImageNet backbone
(--config.model.backbone_checkpoint), keep the data fields below, and scale steps with the
dataset's size (EMANet: 30k steps for VOC's 10,582 images). Images of varying sizes
evaluate with data.eval_batch_size=1 (or a fixed data.eval_size).
"""

import importlib.util
import pathlib

# Loaded by path, as configs/voc_ablation.py loads voc.py: works from any working directory.
_spec = importlib.util.spec_from_file_location("_demo", pathlib.Path(__file__).with_name("demo.py"))
demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo)


def get_config(variant="hemnet"):
  config = demo.get_config(variant)
  config.data.name = "folder"
  config.data.folder.name = "mydata"  # prepared as folder/mydata in the tfds data dir
  config.data.num_classes = 11  # set to your classes (ids 0..num_classes-1)
  config.data.crop_size = 96
  config.data.scale_range = (0.5, 2.0)  # EMANet's; objects in photographs vary in size
  config.data.eval_batch_size = 1  # whole images of any size
  config.train.batch_size = 16
  config.train.lr = 0.06
  config.train.checkpoint_every = 200
  config.train.num_steps = 600
  config.train.eval_every = 300
  return config
