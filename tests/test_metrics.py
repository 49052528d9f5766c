"""Loss and mIoU against direct numpy computations."""

import jax
import jax.numpy as jnp
import numpy as np

from hemnet_jax.training import metrics


def test_cross_entropy_ignores_255():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 6, 4)).astype(np.float32)
  labels = rng.integers(0, 4, size=(2, 5, 6))
  labels[0, :2] = 255
  logp = np.asarray(jax.nn.log_softmax(jnp.asarray(logits), -1))
  valid = labels != 255
  expected = -np.mean(np.take_along_axis(logp, np.where(valid, labels, 0)[..., None], -1)[..., 0][valid])
  np.testing.assert_allclose(metrics.cross_entropy(logits, labels), expected, rtol=1e-6)
  # Changing the logits of ignored pixels changes nothing.
  logits[0, :2] = 100.0
  np.testing.assert_allclose(metrics.cross_entropy(logits, labels), expected, rtol=1e-6)


def test_confusion_matrix_and_iou():
  labels = np.array([[0, 0, 1, 1, 2, 255]])
  preds = np.array([[0, 1, 1, 1, 0, 2]])
  cm = np.asarray(metrics.confusion_matrix(labels, preds, 4))
  expected = np.zeros((4, 4), int)
  for l, p in [(0, 0), (0, 1), (1, 1), (1, 1), (2, 0)]:
    expected[l, p] += 1
  np.testing.assert_array_equal(cm, expected)
  iou = metrics.iou_from_confusion(cm)
  np.testing.assert_allclose(iou[:3], [1 / 3, 2 / 3, 0.0])
  assert np.isnan(iou[3])  # absent from labels and predictions: left out of the mean
  s = metrics.summarize(cm, ["a", "b", "c", "d"])
  np.testing.assert_allclose(s["miou"], (1 / 3 + 2 / 3 + 0) / 3)
  assert s["per_class_iou"]["d"] is None and s["pixel_accuracy"] == 3 / 5


def test_the_loss_skips_the_label_the_data_pipeline_pads_with():
  from hemnet_jax import data
  assert metrics.IGNORE_LABEL == data.IGNORE_LABEL
