"""Image summaries: a tiny run's TensorBoard event file holds the validation images' pictures."""

import subprocess
import sys
import types

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from helpers import ROOT, event_images, tiny_config

from hemnet_jax.data import pipeline
from hemnet_jax.training import config as config_lib, images, state as state_lib
from hemnet_jax.vis import render

KINDS = ("prediction", "label", "attention")


@pytest.fixture(scope="module")
def run(data_dir, tiny_run):
  """The tiny run's config, the event file's pictures and the validation examples shown."""
  config = config_lib.validate(tiny_config(data_dir, **tiny_run.overrides))
  split = pipeline.load_split(config.data, config.data.eval_split)
  examples = [pipeline.decode(split.source[i]) for i in range(config.train.summary_images)]
  return types.SimpleNamespace(config=config, path=tiny_run.path, examples=examples,
                               found=event_images(tiny_run.path / "tensorboard"))


def expected_pictures(config, workdir, step, pictures_of):
  """The prediction overlay and attention grid of each image in `pictures_of`, from the
  checkpoint at `step`."""
  model = state_lib.build_model(config)
  raw = ocp.CheckpointManager(workdir / "checkpoints").restore(step)
  variables = {k: raw[k] for k in ("params", "batch_stats", "hem_bases")}
  forward, colours = images.make_forward(model, attention=True), render.palette(config.data)
  for image in pictures_of:
    label, gamma = images.predict(forward, variables, image, config.model.output_stride)
    yield render.overlay(image, render.colourise(label, colours)), render.attention_grid(gamma)


def test_every_evaluation_writes_each_images_pictures(run):
  n = run.config.train.summary_images
  assert n == 3  # the default
  want = {f"eval/images/{i}/{kind}" for i in range(n) for kind in KINDS}
  assert set(run.found) == want  # the first n validation images, no more
  for tag in want:
    assert sorted(run.found[tag]) == [1, 2], tag  # the periodic evaluation and the final one


def test_pictures_show_the_image_its_label_and_the_models_prediction(run):
  colours = render.palette(run.config.data)
  expected = expected_pictures(run.config, run.path, 2, [e["image"] for e in run.examples])
  for i, (example, (overlay, grid)) in enumerate(zip(run.examples, expected, strict=True)):
    image, label = example["image"], example["label"]
    overlay_png = run.found[f"eval/images/{i}/prediction"][2]
    assert overlay_png.shape == image.shape
    assert np.abs(overlay_png.astype(int) - image).mean() > 5  # not the raw image
    # The run compiled without XLA's optimisations: a near-tie may flip a few pixels.
    assert (overlay_png == overlay).all(-1).mean() > 0.99
    np.testing.assert_array_equal(run.found[f"eval/images/{i}/label"][2],
                                  render.colourise(label, colours))
    attention_png = run.found[f"eval/images/{i}/attention"][2]
    assert attention_png.shape == (*grid.shape, 3)  # grayscale, stored as RGB
    assert (np.abs(attention_png[..., 0].astype(int) - grid) <= 1).mean() > 0.99
    assert attention_png[..., 0].std() > 0  # maps, not a blank


def test_ignored_pixels_are_coloured_apart_from_every_class(run):
  colours = render.palette(run.config.data)
  picture = render.colourise(np.array([[0, 255]], np.uint8), colours)
  assert not any((picture[0, 1] == colours[c]).all() for c in range(run.config.data.num_classes))


class Writer:
  """Records what would go to TensorBoard."""

  def __init__(self):
    self.images = []

  def add_image(self, tag, picture, step, dataformats):
    self.images.append((tag, step, picture.shape, dataformats))

  def flush(self):
    pass


def test_fcn_head_has_no_attention_picture(run):
  config = run.config.copy_and_resolve_references()
  config.model.head = "fcn"
  model = state_lib.build_model(config)
  split = pipeline.load_split(config.data, config.data.eval_split)
  samples = images.choose(config, model, split, mesh=None)
  assert len(samples.images) == 3 and samples.images[0].dtype == np.uint8
  variables = state_lib.abstract_train_state(config, model).variables()
  padded = pipeline.eval_transform(run.examples[0], multiple=8)["image"]
  logits, gamma = jax.eval_shape(samples.forward, variables, padded)  # traced, not compiled
  assert gamma is None and logits.shape == (*padded.shape[:2], config.data.num_classes)

  # write() on a stand-in model without a HEM unit.
  fcn = lambda _, image: (np.zeros((*image.shape[:2], config.data.num_classes)), None)
  state = types.SimpleNamespace(variables=dict)
  writer = Writer()
  images.write(writer, 7, state, samples.__class__(**{**vars(samples), "forward": fcn}))
  assert writer.images == [(f"eval/images/{i}/{kind}", 7, samples.images[i].shape, "HWC")
                           for i in range(3) for kind in ("prediction", "label")]


def test_zero_summary_images_turns_them_off_and_negative_is_refused(run):
  config = run.config.copy_and_resolve_references()
  config.train.summary_images = 0
  split = pipeline.load_split(config.data, config.data.eval_split)
  assert images.choose(config, state_lib.build_model(config), split, mesh=None) is None
  images.write(Writer(), 1, None, None)  # nothing to do, and no model run
  config.train.summary_images = -1
  with pytest.raises(ValueError, match="config.train.summary_images"):
    config_lib.validate(config)


def test_the_summary_writer_leaves_torch_unloaded(tmp_path):
  """tensorboardX would import torch (seconds at every start) to accept torch tensors we never
  pass; the writer still writes, and torch stays importable afterwards."""
  code = ("import pathlib, sys; from hemnet_jax.training import loop; "
          "w = loop._summary_writer(pathlib.Path(sys.argv[1])); w.add_scalar('x', 1.5, 3); "
          "w.close(); print('torch' in sys.modules); import torch; print(torch.ones(2).sum().item())")
  proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.split() == ["False", "2.0"]
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
