"""A segmentation dataset from the user's own folders, as `folder/<name>`.

Three layouts (config.data.folder, README "Your own dataset"):
  list files   train_list / val_list: one `image label` pair a line, each path relative to
               the list file's folder or absolute (SegNet's and mmsegmentation's lists);
  subfolders   images/{train,val}/ and labels/{train,val}/, matched by file stem;
  hold-out     flat images/ and labels/ matched by stem; a seeded `holdout_fraction` of
               them is the validation split.
Images: PNG or JPEG in any PIL mode, stored as RGB. Labels: single-channel PNGs (mode P or
L) of class ids; the `ignore_ids` become 255, every other id must be < num_classes.

The prepared copy records a fingerprint of its inputs (every pair's paths, sizes and
modification times, and the options); a folder changed since is noticed by
`discard_if_stale`, which the input pipeline and `prepare` call, and rebuilt.
"""

import dataclasses
import hashlib
import io
import json
import os
import re
import shutil

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image

from hemnet_jax.data import _segmentation as seg

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
LABEL_SUFFIX = ".png"
SPLIT_DIRS = {"train": "train", "validation": "val"}


@dataclasses.dataclass(eq=False)
class FolderConfig(tfds.core.BuilderConfig):
  """One user dataset; `name` is the user's, the other fields config.data.folder's."""
  images: str | None = None
  labels: str | None = None
  train_list: str | None = None
  val_list: str | None = None
  ignore_ids: tuple[int, ...] = ()
  class_names: tuple[str, ...] = ()
  num_classes: int = 0
  holdout_fraction: float = 0.0
  holdout_seed: int = 0


def _path(p):
  return os.path.abspath(os.path.expanduser(p)) if p else None


def read_class_names(path):
  """One name a line; blank lines and surrounding spaces are dropped."""
  try:
    text = epath.Path(_path(path)).read_text()
  except OSError as e:
    raise FileNotFoundError(f"config.data.folder.class_names_file={path!r}: cannot read it "
                            f"({e.strerror or e})") from e
  names = tuple(line.strip() for line in text.splitlines() if line.strip())
  if not names:
    raise ValueError(f"config.data.folder.class_names_file={path!r} lists no class names")
  return names


def make_config(data_config):
  """The FolderConfig of config.data (its `folder` dict and num_classes), checked."""
  f = data_config.folder
  name = f.get("name")
  if not name or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
    raise ValueError(f"config.data.folder.name={name!r}: name the dataset with lower-case letters, "
                     "digits and underscores (it is prepared as folder/<name> in the tfds data dir)")
  names = read_class_names(f.class_names_file) if f.get("class_names_file") else ()
  num_classes = data_config.num_classes
  if names and len(names) != num_classes:
    raise ValueError(f"config.data.num_classes={num_classes} but config.data.folder."
                     f"class_names_file={f.class_names_file!r} lists {len(names)} names")
  ignore = tuple(sorted({int(i) for i in (f.get("ignore_ids") or ())}))
  bad = [i for i in ignore if not 0 <= i <= 255]
  if bad:
    raise ValueError(f"config.data.folder.ignore_ids={ignore}: ids must be in [0, 255], got {bad}")
  fraction = float(f.get("holdout_fraction") or 0.0)
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f"config.data.folder.holdout_fraction={fraction}: must be in [0, 1)")
  return FolderConfig(
      name=name, description=f"The user's dataset {name!r} from folders.",
      images=_path(f.get("images")), labels=_path(f.get("labels")),
      train_list=_path(f.get("train_list")), val_list=_path(f.get("val_list")),
      ignore_ids=ignore, class_names=names, num_classes=num_classes,
      holdout_fraction=fraction, holdout_seed=int(f.get("holdout_seed") or 0))


def builder_kwargs(data_config):
  """tfds.builder keyword arguments that select the user's dataset."""
  return {"config": make_config(data_config)}


# The layouts: each returns {split: [(example id, image path, label path)]}.


def _by_stem(folder, suffixes, what, option):
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"config.data.folder.{option}: {folder} is not a folder")
  found = {}
  for entry in sorted(os.listdir(folder)):
    stem, suffix = os.path.splitext(entry)
    if suffix.lower() not in suffixes or not os.path.isfile(os.path.join(folder, entry)):
      continue
    if stem in found:
      raise ValueError(f"{folder}: two {what} files share the stem {stem!r} "
                       f"({os.path.basename(found[stem])}, {entry}); keep one")
    found[stem] = os.path.join(folder, entry)
  return found


def _match(images_dir, labels_dir):
  images = _by_stem(images_dir, IMAGE_SUFFIXES, "image", "images")
  labels = _by_stem(labels_dir, (LABEL_SUFFIX,), "label", "labels")
  if not images:
    raise FileNotFoundError(f"config.data.folder.images: {images_dir} holds no "
                            f"{'/'.join(IMAGE_SUFFIXES)} images")
  pairs = []
  for stem, image in images.items():
    if stem not in labels:
      raise FileNotFoundError(f"image {image} has no label: expected "
                              f"{os.path.join(labels_dir, stem + LABEL_SUFFIX)}")
    pairs.append((stem, image, labels[stem]))
  orphans = sorted(set(labels) - set(images))
  if orphans:
    logging.warning("%s: %d labels have no image and are left out (e.g. %s)", labels_dir,
                    len(orphans), orphans[0])
  return pairs


def _read_list(list_file, option):
  if not os.path.isfile(list_file):
    raise FileNotFoundError(f"config.data.folder.{option}: {list_file} does not exist")
  root = os.path.dirname(list_file)
  pairs, seen = [], set()
  with open(list_file) as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      parts = line.split()
      if len(parts) != 2:
        raise ValueError(f"{list_file}, line {number}: expected `image label`, got {line.strip()!r}")
      image, label = (p if os.path.isabs(p) else os.path.normpath(os.path.join(root, p))
                      for p in parts)
      for path, what in ((image, "image"), (label, "label")):
        if not os.path.isfile(path):
          raise FileNotFoundError(f"{list_file}, line {number}: the {what} {path} does not exist")
      # The image's path from the list's folder (absolute if outside it), without suffix.
      rel = os.path.relpath(image, root)
      example_id = os.path.splitext(image if rel.startswith("..") else rel)[0]
      if example_id in seen:
        raise ValueError(f"{list_file}, line {number}: the image {parts[0]} is listed twice")
      seen.add(example_id)
      pairs.append((example_id, image, label))
  if not pairs:
    raise ValueError(f"config.data.folder.{option}: {list_file} lists no pairs")
  return pairs


def scan(config: FolderConfig):
  """{"train": pairs, "validation": pairs} in the layout the config describes."""
  if config.train_list or config.val_list:
    if not (config.train_list and config.val_list):
      raise ValueError("config.data.folder: give both train_list and val_list")
    return {"train": _read_list(config.train_list, "train_list"),
            "validation": _read_list(config.val_list, "val_list")}
  if not (config.images and config.labels):
    raise ValueError("config.data.folder: give images and labels (folders), or train_list and "
                     "val_list (files of `image label` lines)")
  if all(os.path.isdir(os.path.join(config.images, d)) for d in SPLIT_DIRS.values()):
    if config.holdout_fraction:
      raise ValueError(f"config.data.folder.holdout_fraction={config.holdout_fraction}: "
                       f"{config.images} has train/ and val/ subfolders, which are the splits; "
                       "set it to 0")
    return {split: _match(os.path.join(config.images, d), os.path.join(config.labels, d))
            for split, d in SPLIT_DIRS.items()}
  if not config.holdout_fraction:
    raise ValueError(f"config.data.folder: {config.images} has no train/ and val/ subfolders; "
                     "set holdout_fraction (e.g. 0.1) to hold out a validation split, or give "
                     "train_list and val_list")
  pairs = _match(config.images, config.labels)
  num_val = max(1, round(config.holdout_fraction * len(pairs)))
  if num_val >= len(pairs):
    raise ValueError(f"config.data.folder.holdout_fraction={config.holdout_fraction} of "
                     f"{len(pairs)} images leaves no training images")
  order = np.random.default_rng(config.holdout_seed).permutation(len(pairs))
  val = set(order[:num_val].tolist())
  return {"train": [p for i, p in enumerate(pairs) if i not in val],
          "validation": [p for i, p in enumerate(pairs) if i in val]}


def fingerprint(config: FolderConfig, splits):
  """sha256 of the options and of every pair's paths, sizes and modification times."""
  h = hashlib.sha256()
  options = {k: v for k, v in dataclasses.asdict(config).items()
             if k not in ("version", "release_notes", "supported_versions", "description", "tags")}
  h.update(json.dumps(options, sort_keys=True, default=str).encode())
  for split in sorted(splits):
    for example_id, *files in splits[split]:
      h.update(f"{split}\0{example_id}".encode())
      for path in files:
        st = os.stat(path)
        h.update(f"\0{path}\0{st.st_size}\0{st.st_mtime_ns}".encode())
  return h.hexdigest()


def _read_bytes(path, what):
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError as e:
    raise seg.CorruptExampleError(f"cannot read the {what} {path} ({e.strerror or e})") from e


def _decode(data, path, what):
  try:
    image = Image.open(io.BytesIO(data))
    image.load()  # a truncated file fails here rather than in training
    return image
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for bad bytes
    raise seg.CorruptExampleError(f"cannot decode the {what} {path} ({e})") from e


class Folder(seg.SegmentationBuilder):
  """The user's segmentation dataset from folders of images and label maps."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def __init__(self, *, config=None, **kwargs):
    if not isinstance(config, FolderConfig):
      raise ValueError("the folder dataset needs its options: set config.data.name='folder' and "
                       "config.data.folder (README.md, 'Your own dataset')")
    self.CLASS_NAMES = config.class_names or tuple(f"class_{i}" for i in range(config.num_classes))
    super().__init__(config=config, **kwargs)

  def _info(self):
    info = super()._info()
    info.metadata.update(fingerprint="", palette=None, ignore_ids=list(self.builder_config.ignore_ids))
    return info

  def current_fingerprint(self):
    return fingerprint(self.builder_config, scan(self.builder_config))

  def _split_generators(self, dl_manager):
    del dl_manager  # the files are where the config says
    config = self.builder_config
    splits = scan(config)
    self.info.metadata["fingerprint"] = fingerprint(config, splits)
    self.info.metadata["palette"] = _first_palette([label for p in splits.values()
                                                   for _, _, label in p])
    lut = np.arange(256, dtype=np.uint8)
    lut[list(config.ignore_ids)] = seg.IGNORE_LABEL

    def read(pair):
      _, image_file, label_file = pair
      data = _read_bytes(image_file, "image")
      image = _decode(data, image_file, "image")
      if image.format not in ("JPEG", "PNG"):
        raise ValueError(f"image {image_file} is {image.format}; expected PNG or JPEG")
      if image.mode != "RGB":  # palette, grey, RGBA, CMYK...: stored as RGB
        out = io.BytesIO()
        image.convert("RGB").save(out, format="PNG")
        data = out.getvalue()
      label_image = _decode(_read_bytes(label_file, "label"), label_file, "label")
      if label_image.format != "PNG" or label_image.mode not in ("P", "L"):
        raise ValueError(
            f"label {label_file} is a {label_image.format} image of mode {label_image.mode}; "
            "expected a single-channel PNG (mode P or L) of class ids (colour-coded labels must "
            "be converted to ids first)")
      raw = np.asarray(label_image)
      if image.size != label_image.size:
        raise ValueError(f"image {image_file} is {image.size[0]}x{image.size[1]} (width x height) "
                         f"but its label {label_file} is {label_image.size[0]}x"
                         f"{label_image.size[1]}")
      label = lut[raw]
      bad = np.unique(label[(label >= config.num_classes) & (label != seg.IGNORE_LABEL)])
      if bad.size:
        raise ValueError(
            f"label {label_file} holds ids {bad.tolist()[:10]} >= config.data.num_classes="
            f"{config.num_classes}; add them to config.data.folder.ignore_ids, or raise num_classes")
      return {"image": data, "label": seg.encode_label(label), "id": pair[0]}

    def generate(split):
      pairs = {example_id: (example_id, i, l) for example_id, i, l in splits[split]}
      return self._generate_examples(split, list(pairs), lambda k: read(pairs[k]))

    return {split: generate(split) for split in splits}


def _first_palette(label_files):
  """The colour table of the first palette (mode P) label, as [[r, g, b]] * 256, or None."""
  for path in label_files:
    try:
      with Image.open(path) as image:
        if image.mode == "P" and image.getpalette():
          colours = image.getpalette()[:768]
          colours += [0] * (768 - len(colours))
          return np.asarray(colours, np.uint8).reshape(256, 3).tolist()
    except Exception:  # pylint: disable=broad-except  (an unreadable file fails in `read`)
      continue
  return None


def discard_if_stale(builder):
  """Removes a prepared folder dataset whose inputs changed since; True if it did.

  Any other builder, or one not prepared yet, is left alone.
  """
  if not isinstance(builder, Folder) or not builder.is_prepared():
    return False
  stored = (builder.info.metadata or {}).get("fingerprint")
  if stored == builder.current_fingerprint():
    return False
  print(f"folder/{builder.builder_config.name}: the files or options changed since it was "
        f"prepared in {builder.data_dir}; rebuilding it", flush=True)
  shutil.rmtree(builder.data_dir)
  return True


def palette(data_config, data_dir):
  """[256, 3] uint8 colours stored with the prepared dataset (its first palette label), or None."""
  path = os.path.join(data_dir, "folder", data_config.folder.get("name") or "",
                      str(Folder.VERSION), "metadata.json")
  try:
    with open(path) as f:
      colours = json.load(f).get("palette")
  except (OSError, ValueError):
    return None
  return None if colours is None else np.asarray(colours, np.uint8)
