"""Reads a PyTorch state dict from .pth/.pt or .safetensors into numpy arrays.

.pth files go through `torch.load(..., weights_only=True)`: tensors and plain
containers only, never arbitrary pickled objects. .safetensors files are read by
the small parser below (the format is a JSON header and raw little-endian
buffers), so neither torch nor the `safetensors` package is needed for them.
"""

import json

import ml_dtypes
import numpy as np
from etils import epath

# Containers that training frameworks wrap a model's state dict in ("net": EMANet's release).
WRAPPERS = ("state_dict", "model", "net")

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}


def load(path):
  """{name: np.ndarray} of the checkpoint at path, unwrapped from "state_dict"/"model"/"net"."""
  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"checkpoint {path} does not exist")
  if path.suffix == ".safetensors":
    return read_safetensors(path)
  return _read_torch(path)


def _read_torch(path):
  try:
    import torch  # only needed for .pth files: a converter dependency, not a training one
  except ImportError as e:
    raise ImportError(f"reading {path} needs PyTorch (the CPU build is enough: pip install torch), "
                      "or convert the file to .safetensors") from e
  obj = torch.load(str(path), map_location="cpu", weights_only=True)
  while isinstance(obj, dict):
    inner = next((obj[w] for w in WRAPPERS if isinstance(obj.get(w), dict)), None)
    if inner is None:
      break
    obj = inner
  if not isinstance(obj, dict):
    raise ValueError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
  out = {}
  for name, value in obj.items():
    if not isinstance(value, torch.Tensor):
      raise ValueError(f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor; "
                       f"expected a state dict, possibly wrapped in one of {WRAPPERS}")
    value = value.detach()
    # numpy has no bfloat16: go through float32, the dtype our parameters have anyway.
    out[name] = (value.float() if value.dtype == torch.bfloat16 else value).numpy()
  return out


def read_safetensors(path):
  """The tensors of a .safetensors file: an 8-byte header length, a JSON header, the data."""
  data = np.memmap(str(path), dtype=np.uint8, mode="r")
  header_len = int.from_bytes(data[:8].tobytes(), "little")
  if header_len <= 0 or 8 + header_len > data.size:
    raise ValueError(f"{path}: not a safetensors file (header length {header_len})")
  header = json.loads(data[8:8 + header_len].tobytes())
  start = 8 + header_len
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
    if dtype is None:
      raise ValueError(f"{path}: tensor {name!r} has dtype {info['dtype']}, which this reader does "
                       f"not support ({', '.join(_SAFETENSORS_DTYPES)})")
    begin, end = info["data_offsets"]
    # The format is little-endian, as every platform JAX runs on.
    out[name] = np.array(data[start + begin:start + end]).view(dtype).reshape(info["shape"])
  return out
