"""Reading files straight out of the archives publishers serve (tar, tgz, zip) or their extraction.

Member names are the paths inside the archive ("VOCdevkit/VOC2012/JPEGImages/x.jpg"); an
extracted copy is addressed the same way, relative to the folder the archive was extracted in.
"""

import dataclasses
import io
import pathlib
import tarfile
import zipfile
from collections.abc import Callable, Iterator

from etils import epath


@dataclasses.dataclass(frozen=True)
class Download:
  """One file the user fetches by hand: its name, where to get it, what it unpacks to."""
  filename: str
  url: str
  extracted: str | None = None  # a top-level member; if present in manual_dir, used instead


def find(manual_dir, downloads: list[Download], dataset: str) -> list["Archive"]:
  """Each archive (or its extracted copy) in manual_dir; else names each missing file and page."""
  manual_dir = epath.Path(manual_dir)
  found, missing = [], []
  for d in downloads:
    if (manual_dir / d.filename).is_file():
      found.append(Archive(manual_dir / d.filename))
    elif d.extracted and (manual_dir / d.extracted).is_dir():
      found.append(Archive(manual_dir))
    else:
      missing.append(f"  {d.filename}: download it from {d.url}")
  if missing:
    raise FileNotFoundError(
        f"{dataset}: the manual download folder {manual_dir} lacks:\n" + "\n".join(missing) +
        "\nPut the files there as downloaded, unextracted (see docs/datasets.md).")
  return found


class Archive:
  """Random access to uncompressed tar, zip and folders; one streaming pass for compressed tar."""

  def __init__(self, path):
    self.path = epath.Path(path)
    self._tar = self._zip = None
    self._stream_only = False
    if self.path.is_dir():
      root = pathlib.Path(self.path)  # epath refuses recursive globs (costly on GCS)
      self._names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    elif zipfile.is_zipfile(self.path):
      self._zip = zipfile.ZipFile(self.path)
      self._names = [n for n in self._zip.namelist() if not n.endswith("/")]
    elif self._is_plain_tar():
      self._tar = tarfile.open(self.path, "r:")
      self._members = {m.name: m for m in self._tar.getmembers() if m.isfile()}
      self._names = list(self._members)
    else:
      # Compressed tar: seeking means decompressing from the start, so only `stream` is offered.
      self._stream_only = True
      self._names = None

  def _is_plain_tar(self):
    try:
      with tarfile.open(self.path, "r:"):
        return True
    except tarfile.ReadError:
      return False

  def names(self) -> list[str]:
    if self._stream_only:
      return [name for name, _ in self.stream(lambda n: False, names_only=True)]
    return self._names

  def read(self, name: str) -> bytes:
    if self._stream_only:
      raise ValueError(f"{self.path} is a compressed tar: read it with Archive.stream")
    try:
      if self._zip is not None:
        return self._zip.read(name)
      if self._tar is not None:
        return self._tar.extractfile(self._members[name]).read()
      return (self.path / name).read_bytes()
    except (KeyError, FileNotFoundError) as e:
      raise FileNotFoundError(f"{self.path} has no member {name}") from e

  def stream(self, wanted: Callable[[str], bool], names_only=False) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of the members `wanted` accepts, in archive order, in one pass."""
    if not self._stream_only:
      for name in self._names:
        if names_only:
          yield name, b""
        elif wanted(name):
          yield name, self.read(name)
      return
    with self.path.open("rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
      for member in tar:
        if not member.isfile():
          continue
        if names_only:
          yield member.name, b""
        elif wanted(member.name):
          yield member.name, tar.extractfile(member).read()


def lines(data: bytes) -> list[str]:
  """Non-empty stripped lines of a text file (split lists, label lists)."""
  return [l.strip() for l in io.StringIO(data.decode("utf-8")) if l.strip()]
