r"""Converts an ImageNet ResNet checkpoint from PyTorch to our Flax ResNet.

  python -m hemnet_jax.tools.convert_resnet --checkpoint resnet101.pth --out DIR

Then train with `--config.model.backbone_checkpoint=DIR` and the model fields it prints.
The layouts it reads are listed in hemnet_jax/convert/resnet.py.
"""

from absl import flags
from etils import epath

from hemnet_jax import cli
from hemnet_jax.convert import resnet, torch_file
from hemnet_jax.training import checkpoints


def run(checkpoint, out):
  out = epath.Path(out).absolute()
  if out.exists() and any(out.iterdir()):
    raise ValueError(f"--out {out} exists and is not empty; choose a new directory")
  try:
    variables, meta = resnet.convert(torch_file.load(checkpoint))
  except ImportError as e:
    raise ValueError(str(e)) from None
  except (ValueError, FileNotFoundError) as e:
    raise type(e)(f"{checkpoint}: {e}") from None
  meta["source"] = epath.Path(checkpoint).name
  checkpoints.save_backbone(out, variables, meta)
  print(f"Converted {meta['layout']} ResNet-{meta['depth']} ({meta['ignored_keys']} keys ignored: "
        f"classifier, BN step counters, non-backbone) to {out}\nTrain with:\n  "
        f"--config.model.backbone_checkpoint={out} "
        + " ".join(checkpoints.model_overrides(meta)), flush=True)
  return out


def main(f):
  run(f.checkpoint, f.out)


if __name__ == "__main__":
  flags.DEFINE_string("checkpoint", None, "A .pth/.pt or .safetensors state dict.")
  flags.DEFINE_string("out", None, "A new (or empty) output directory.")
  flags.mark_flags_as_required(["checkpoint", "out"])
  cli.start(main)
