"""`python -m hemnet_jax.predict` on a tiny trained demo model: files, sizes, argmax."""

import math
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from hemnet_jax.tools import predict
from hemnet_jax.training import checkpoints, loop, state as state_lib
from hemnet_jax.vis import render
from hemnet_jax.data import shapes
from hemnet_jax.models.hem_unit import ATTENTION
from helpers import ROOT, demo, tiny_config

# A 2-step tiny demo run, evaluated on 16 images, with 5 bases (so the attention grid has an empty cell).
RUN = {"hem.num_bases": 5, "data.eval_split": "validation[:16]", "data.eval_batch_size": 16,
       "train.log_every": 1, "train.num_steps": 2, "train.checkpoint_every": 1}


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
  """A 2-step demo run (checkpoints at steps 1 and 2) and two images of different sizes."""
  d = tmp_path_factory.mktemp("predict")
  loop.train_and_evaluate(tiny_config(data_dir, **RUN), d / "run")
  image, _ = shapes.render_example(np.random.default_rng([1, 0]))
  Image.fromarray(image).save(d / "square.png")
  Image.fromarray(image[3:73, 10:63]).save(d / "tall.jpg", quality=90)  # 53 x 70, lossy
  return d


def expected(workdir, step, image_path):
  """logits and the last gamma, computed here from the checkpoint without predict.py."""
  config = checkpoints.load_config(workdir)
  model = state_lib.build_model(config)
  raw = ocp.CheckpointManager(workdir / "checkpoints").restore(step)
  variables = {k: raw[k] for k in ("params", "batch_stats", "hem_bases")}
  image = np.asarray(Image.open(image_path).convert("RGB"), np.float32)
  h, w = image.shape[:2]
  x = (image - np.array([0.485, 0.456, 0.406]) * 255) / (np.array([0.229, 0.224, 0.225]) * 255)
  x = np.pad(x, ((0, -h % 8), (0, -w % 8), (0, 0)))  # zeros: the mean colour
  (logits, _), upd = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=[ATTENTION]))(
      variables, jnp.asarray(x[None], jnp.float32))
  return np.asarray(logits[0, :h, :w]), np.asarray(upd[ATTENTION]["hem"]["gamma"][0][0])


def assert_label_is_argmax(label, logits):
  top2 = np.sort(logits, axis=-1)[..., -2:]
  decided = top2[..., 1] - top2[..., 0] > 1e-5  # argmax is not a near-tie
  assert decided.mean() > 0.99
  np.testing.assert_array_equal(label[decided], np.argmax(logits, -1)[decided])


def test_predict_writes_label_mask_overlay_and_attention(run, tmp_path):
  res = subprocess.run(
      [sys.executable, "-m", "hemnet_jax.tools.predict", "--workdir", str(run / "run"), "--images",
       f"{run / 'square.png'},{run / 'tall.jpg'}", "--out", str(tmp_path), "--attention"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr
  assert "step 2" in res.stdout

  for name, size in (("square", (96, 96)), ("tall", (53, 70))):
    source = np.asarray(Image.open(run / f"{name}.{'png' if name == 'square' else 'jpg'}"))
    label_img = Image.open(tmp_path / f"{name}_label.png")
    assert (label_img.mode, label_img.size) == ("L", size)
    label = np.asarray(label_img)
    assert label.max() < shapes.NUM_CLASSES

    mask = Image.open(tmp_path / f"{name}_mask.png")
    assert (mask.mode, mask.size) == ("RGB", size)
    np.testing.assert_array_equal(np.asarray(mask), np.asarray(shapes.PALETTE, np.uint8)[label])
    over = Image.open(tmp_path / f"{name}_overlay.png")
    assert (over.mode, over.size) == ("RGB", size)
    np.testing.assert_array_equal(np.asarray(over), render.overlay(source, np.asarray(mask)))

    logits, gamma = expected(run / "run", 2, run / f"{name}.{'png' if name == 'square' else 'jpg'}")
    assert_label_is_argmax(label, logits)

    # One cell per basis, 5 bases on 3 columns: each cell is its basis' gamma, enlarged.
    grid = np.asarray(Image.open(tmp_path / f"{name}_attention.png"))
    fh, fw, k = gamma.shape
    assert (fh, fw, k) == (math.ceil(size[1] / 8), math.ceil(size[0] / 8), 5)
    s = 64 // max(fh, fw)
    assert grid.shape == (2 * fh * s + 2, 3 * fw * s + 4)
    cell = lambda r, c: grid[r * (fh * s + 2):r * (fh * s + 2) + fh * s:s,
                             c * (fw * s + 2):c * (fw * s + 2) + fw * s:s]
    for i in range(k):
      np.testing.assert_allclose(cell(*divmod(i, 3)), gamma[..., i] * 255, atol=1.01)
    assert np.all(cell(1, 2) == 128)  # no sixth basis


def test_checkpoint_path_picks_that_step(run, tmp_path):
  predict.run(None, run / "run" / "checkpoints" / "1", [str(run / "tall.jpg")], tmp_path)
  label = np.asarray(Image.open(tmp_path / "tall_label.png"))
  logits, _ = expected(run / "run", 1, run / "tall.jpg")
  assert_label_is_argmax(label, logits)
  assert not (tmp_path / "tall_attention.png").exists()


def test_missing_run_or_step_is_a_clear_error(run, tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json not found"):
    predict.run(tmp_path, None, ["x.png"], tmp_path)
  with pytest.raises(FileNotFoundError, match="no checkpoint of step 7"):
    predict.run(None, run / "run" / "checkpoints" / "7", ["x.png"], tmp_path)


def test_the_command_line_reports_a_missing_run_in_one_line(tmp_path):
  res = subprocess.run([sys.executable, "-m", "hemnet_jax.tools.predict", "--workdir", str(tmp_path),
                        "--images", "x.png", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert res.returncode == 1
  assert res.stderr.strip().splitlines() == [f"error: {tmp_path / 'config.json'} not found: "
                                             "expected a training run's directory"]


def test_generic_palette_for_datasets_without_one():
  colours = render.generic_palette()
  assert colours.shape == (256, 3) and len({tuple(c) for c in colours}) == 256
  np.testing.assert_array_equal(colours[:3], [[0, 0, 0], [128, 0, 0], [0, 128, 0]])  # VOC's
  config = demo.get_config()
  np.testing.assert_array_equal(render.palette(config.data)[:11], shapes.PALETTE)
  config.data.name = "voc_aug"
  np.testing.assert_array_equal(render.palette(config.data), colours)


def test_an_unreadable_file_is_one_line_and_the_others_are_still_done(run, tmp_path, capsys):
  empty, missing = tmp_path / "empty.jpg", tmp_path / "missing.png"
  empty.write_bytes(b"")
  out = tmp_path / "out"
  failed = predict.run(run / "run", None, [str(empty), str(run / "square.png"), str(missing)], out)
  assert failed == 2
  errors = capsys.readouterr().err.splitlines()
  assert len(errors) == 2
  assert errors[0].startswith(f"error: {empty}: cannot read the image")
  assert errors[1].startswith(f"error: {missing}: cannot read the image")
  assert (out / "square_label.png").exists() and not list(out.glob("empty_*"))
  flags = lambda images: types.SimpleNamespace(workdir=run / "run", checkpoint=None, images=images,
                                               out=out, attention=False, max_side=0)
  assert predict.main(flags([str(empty), str(run / "square.png")])) == 1  # the exit status
  assert predict.main(flags([str(run / "square.png")])) == 0


def test_exif_orientation_is_applied(run, tmp_path):
  image = Image.open(run / "tall.jpg")  # 53 wide, 70 high as stored
  exif = Image.Exif()
  exif[0x0112] = 6  # the camera was turned: display rotated 90 degrees clockwise
  image.save(tmp_path / "turned.jpg", exif=exif, quality=95)
  predict.run(run / "run", None, [str(tmp_path / "turned.jpg")], tmp_path / "out")
  label = Image.open(tmp_path / "out" / "turned_label.png")
  overlay = np.asarray(Image.open(tmp_path / "out" / "turned_overlay.png"))
  assert label.size == (70, 53)  # upright: as wide as the stored image is high
  upright = np.asarray(Image.open(tmp_path / "turned.jpg").transpose(Image.Transpose.ROTATE_270))
  mask = np.asarray(Image.open(tmp_path / "out" / "turned_mask.png"))
  np.testing.assert_array_equal(overlay, render.overlay(upright, mask))


def test_a_large_image_is_segmented_at_max_side_and_resized_back(run):
  config, model, variables, _ = predict.restore_variables(run / "run")
  forward = predict.make_forward(model)
  big = np.asarray(Image.open(run / "square.png").convert("RGB").resize((300, 200), Image.BILINEAR))
  label, _ = predict.predict(forward, variables, big, config.model.output_stride, max_side=60)
  assert label.shape == (200, 300)
  small = np.asarray(Image.fromarray(big).resize((60, 40), Image.BILINEAR))
  want, _ = predict.predict(forward, variables, small, config.model.output_stride)
  np.testing.assert_array_equal(label, np.asarray(Image.fromarray(want).resize((300, 200),
                                                                               Image.NEAREST)))
