"""Shared by the tests: the demo at a size that trains in seconds, and how to run main."""

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from configs import demo  # noqa: E402

# The demo's code at a size that trains in seconds, evaluated on 8 validation images (the
# unoptimised XLA of the tests takes seconds for the whole split, in every run that evaluates).
TINY = {"model.stage_sizes": (1, 1, 1, 1), "model.width": 4, "model.stem_width": 8,
        "model.head_channels": 16, "model.decoder_channels": 8, "model.aux_channels": 8,
        "hem.num_bases": 4, "data.crop_size": 32, "train.batch_size": 4,
        "data.eval_split": "validation[:8]", "data.eval_batch_size": 8, "train.log_every": 5,
        "train.summary_images": 0}  # each image size costs a compile; the runs that check them ask


def tiny_flags(**extra):
  items = {**TINY, **extra}
  return [f"--config.{k}={v}".replace(" ", "") for k, v in items.items()]


def tiny_config(data_dir, variant="hemnet", **extra):
  config = demo.get_config(variant)
  for k, v in {**TINY, **extra}.items():
    section, field = k.split(".")
    config[section][field] = v
  config.data.data_dir = str(data_dir)
  return config


def main_cmd(workdir, *flags, config="configs/demo.py"):
  return [sys.executable, "-m", "hemnet_jax.main", f"--config={config}", f"--workdir={workdir}",
          *flags]


def event_images(logdir):
  """{tag: {step: uint8 [H, W, C]}} of every image summary in the TensorBoard event files
  under `logdir`, read from the TFRecord framing (8-byte length, its CRC, the record, its
  CRC) with tensorboardX's protobufs (tensorboard itself need not be installed)."""
  import io  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  found = {}
  for path in sorted(pathlib.Path(logdir).rglob("events.out.tfevents.*")):
    data, pos = path.read_bytes(), 0
    while pos < len(data):
      length = int.from_bytes(data[pos:pos + 8], "little")
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for value in event.summary.value:
        if value.HasField("image"):
          image = np.asarray(Image.open(io.BytesIO(value.image.encoded_image_string)))
          found.setdefault(value.tag, {})[event.step] = image
  return found
