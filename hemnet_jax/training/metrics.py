"""Segmentation metrics from a confusion matrix, and the training loss."""

import jax
import jax.numpy as jnp
import numpy as np

# hemnet_jax.data.IGNORE_LABEL, the label the loss and metrics skip; not imported from there,
# because importing data/ imports tfds, which the train step does not need (a device-only
# install may lack it: benchmarks/device_check.py). tests/test_metrics.py checks they agree.
IGNORE_LABEL = 255


def cross_entropy(logits, labels, ignore_label=IGNORE_LABEL):
  """Mean per-pixel cross-entropy over the pixels whose label is not `ignore_label`."""
  valid = labels != ignore_label
  safe = jnp.where(valid, labels, 0)
  logp = jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), axis=-1)
  nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
  return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def confusion_matrix(labels, preds, num_classes, ignore_label=IGNORE_LABEL):
  """[num_classes, num_classes] counts, rows = ground truth, columns = prediction."""
  valid = labels != ignore_label
  idx = jnp.where(valid, labels * num_classes + preds, num_classes * num_classes)
  counts = jnp.bincount(idx.reshape(-1), length=num_classes * num_classes + 1)
  return counts[:-1].reshape(num_classes, num_classes)


def iou_from_confusion(cm):
  """Per-class IoU = TP / (TP + FP + FN); NaN for classes absent from labels and preds."""
  cm = np.asarray(cm, np.float64)
  tp = np.diag(cm)
  union = cm.sum(0) + cm.sum(1) - tp
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(union > 0, tp / union, np.nan)


def summarize(cm, class_names):
  """mIoU over the classes present, per-class IoU and pixel accuracy."""
  iou = iou_from_confusion(cm)
  cm = np.asarray(cm)
  return {
      "miou": float(np.nanmean(iou)),
      "per_class_iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(class_names, iou)},
      "pixel_accuracy": float(np.trace(cm) / max(cm.sum(), 1)),
  }


def format_table(summary):
  rows = [f"  {name:<20s} {'n/a' if v is None else f'{100 * v:6.2f}'}"
          for name, v in summary["per_class_iou"].items()]
  return "\n".join(["  class                  IoU (%)"] + rows +
                   [f"  {'mIoU':<20s} {100 * summary['miou']:6.2f}"])
