"""The ``segmentation`` task: per-pixel loss, metrics and pure train/eval steps.

Batches are ``{"image": (N, H, W, C), "label": (N, H', W') int, "mask": (N,)?}`` where ``H', W'``
is the model's output size (the label is centre-cropped to it, for U-Net's valid convolutions).

* :func:`segmentation_loss`: mean softmax cross-entropy over the pixels whose label is not
  ``ignore_index``.
* :func:`segmentation_metrics`: *sums* (so batches and devices add up exactly): ``loss``,
  ``correct`` and ``count`` (labelled pixels), and the confusion matrix ``confusion[true, pred]``
  from which :func:`iou_from_confusion` gives per-class IoU ``TP / (TP + FP + FN)``, the mean IoU
  (over classes that occur in the labels or the predictions) and the pixel accuracy.
* :func:`segmentation_train_step` / :func:`segmentation_eval_step`: the same contract as
  :func:`cnnjax.train.steps.train_step` / ``eval_step`` (pure; ``axis_name`` for cross-device
  means and sums).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cnnjax.data.pipeline import IGNORE_INDEX
from cnnjax.train.state import TrainState
from cnnjax.train.steps import eval_step, train_step

__all__ = [
    "IGNORE_INDEX",
    "iou_from_confusion",
    "segmentation_eval_step",
    "segmentation_loss",
    "segmentation_metrics",
    "segmentation_objective",
    "segmentation_train_step",
]


def _crop_labels(labels: jax.Array, spatial) -> jax.Array:
    """Centre crop ``(N, H, W)`` labels to the logits' ``spatial`` size."""
    starts = [(n - m) // 2 for n, m in zip(labels.shape[1:], spatial, strict=True)]
    index = tuple(slice(s, s + m) for s, m in zip(starts, spatial, strict=True))
    return labels[(slice(None), *index)]


def _pixel_losses(logits, labels, ignore_index):
    labels = _crop_labels(labels, logits.shape[1:-1])
    valid = labels != ignore_index
    safe = jnp.where(valid, labels, 0)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe)
    return jnp.where(valid, losses, 0.0), valid, labels


def segmentation_loss(
    logits: jax.Array, labels: jax.Array, *, ignore_index: int = IGNORE_INDEX
) -> jax.Array:
    """Mean cross-entropy over labelled pixels: ``(N, H', W', K), (N, H, W) -> ()``.

    ``labels`` larger than the logits are centre-cropped; pixels labelled ``ignore_index``
    count neither in the sum nor in the divisor (0 when no pixel is labelled).
    """
    losses, valid, _ = _pixel_losses(logits, labels, ignore_index)
    return jnp.sum(losses) / jnp.maximum(jnp.sum(valid), 1)


def segmentation_metrics(
    logits: jax.Array,
    labels: jax.Array,
    *,
    ignore_index: int = IGNORE_INDEX,
    weights: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """Metric sums: ``loss`` (summed pixel losses), ``correct``, ``count`` (labelled pixels) and
    ``confusion`` ``(K, K)`` (rows true class, columns predicted). ``weights`` ``(N,)`` zeroes
    padding examples (an eval batch's ``mask``)."""
    num_classes = logits.shape[-1]
    losses, valid, labels = _pixel_losses(logits, labels, ignore_index)
    if weights is not None:
        valid = valid & (weights.reshape(-1, *(1,) * (valid.ndim - 1)) > 0)
    v = valid.astype(jnp.float32)
    predictions = jnp.argmax(logits, -1)
    flat = jnp.where(valid, labels * num_classes + predictions, num_classes * num_classes)
    confusion = jnp.bincount(flat.ravel(), length=num_classes * num_classes + 1)[:-1]
    return {
        "loss": jnp.sum(losses * v),
        "correct": jnp.sum((predictions == labels) * v),
        "count": jnp.sum(v),
        "confusion": confusion.reshape(num_classes, num_classes).astype(jnp.float32),
    }


def iou_from_confusion(confusion: np.ndarray) -> dict[str, object]:
    """``{"pixel_accuracy", "mean_iou", "iou": per-class array}`` from a ``(K, K)`` confusion
    matrix. Classes absent from both labels and predictions get ``nan`` IoU and are left out of
    the mean."""
    confusion = np.asarray(confusion, np.float64)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    total = confusion.sum()
    return {
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
        "mean_iou": float(np.nanmean(iou)) if np.any(union > 0) else float("nan"),
        "iou": iou,
    }


def segmentation_objective(
    logits: jax.Array, labels: jax.Array, *, ignore_index: int = IGNORE_INDEX
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``(mean labelled-pixel loss, metric sums)``: the ``objective`` of
    :func:`cnnjax.train.steps.train_step` for segmentation."""
    loss = segmentation_loss(logits, labels, ignore_index=ignore_index)
    return loss, segmentation_metrics(logits, labels, ignore_index=ignore_index)


def _eval_metrics(logits, labels, mask, *, ignore_index: int = IGNORE_INDEX):
    return segmentation_metrics(logits, labels, ignore_index=ignore_index, weights=mask)


def segmentation_train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    axis_name: str | None = None,
    ignore_index: int = IGNORE_INDEX,
    **kwargs,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step on the mean labelled-pixel cross-entropy; returns metric sums.

    :func:`cnnjax.train.steps.train_step` with the segmentation ``objective``, so the
    non-finite guard (``skipped`` / ``nonfinite`` sums), float16 loss scaling, EMA and device
    augmentation (``kwargs``) apply unchanged.
    """
    objective = functools.partial(segmentation_objective, ignore_index=ignore_index)
    return train_step(
        state, batch, model=model, tx=tx, axis_name=axis_name, objective=objective, **kwargs
    )


def segmentation_eval_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: nn.Module,
    axis_name: str | None = None,
    ignore_index: int = IGNORE_INDEX,
    **kwargs,
) -> dict[str, jax.Array]:
    """Metric sums over the batch; padding examples (``batch["mask"] == 0``) count nothing.
    ``kwargs`` (``use_ema``, ``preprocess``) go to :func:`cnnjax.train.steps.eval_step`."""
    metrics_fn = functools.partial(_eval_metrics, ignore_index=ignore_index)
    return eval_step(
        state, batch, model=model, axis_name=axis_name, metrics_fn=metrics_fn, **kwargs
    )
