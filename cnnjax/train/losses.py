"""The losses and metric sums of the training tasks: pure functions over logits and labels.

Every function returns what the steps need and nothing more; :mod:`cnnjax.train.tasks` bundles
them into task objects.

* Classification: softmax cross-entropy with optional label smoothing ``ε`` (targets
  ``(1 - ε) onehot + ε / K``), plus ``aux_loss_weight × Σ`` the auxiliary heads' losses when the
  model returns ``(logits, aux_logits)`` in training (GoogLeNet: 0.3; Szegedy et al. 2015, §5).
* Segmentation: the same cross-entropy per pixel, averaged over the pixels whose label is not
  ``ignore_index``; labels larger than the logits are centre-cropped to them (U-Net's valid
  convolutions; Ronneberger et al. 2015). The confusion matrix ``confusion[true, pred]`` gives
  per-class IoU ``TP / (TP + FP + FN)`` (:func:`iou_from_confusion`).

Metric functions return *sums* (``loss``, ``correct``, ``count``, and for segmentation
``confusion``), so batches, devices and processes add up exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cnnjax.data.pipeline import IGNORE_INDEX

__all__ = [
    "classification_metrics",
    "classification_objective",
    "crop_labels",
    "cross_entropy",
    "iou_from_confusion",
    "segmentation_loss",
    "segmentation_metrics",
    "segmentation_objective",
]

Metrics = dict[str, jax.Array]


def cross_entropy(
    logits: jax.Array, labels: jax.Array, *, label_smoothing: float = 0.0
) -> jax.Array:
    """Per-example softmax cross-entropy ``(N, K), (N,) → (N,)`` in float32."""
    logits = logits.astype(jnp.float32)
    num_classes = logits.shape[-1]
    targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
    return optax.softmax_cross_entropy(logits, targets)


def classification_objective(
    logits: jax.Array,
    aux: tuple,
    labels: jax.Array,
    *,
    label_smoothing: float = 0.0,
    aux_loss_weight: float = 0.3,
) -> tuple[jax.Array, Metrics]:
    """``(mean loss + aux_loss_weight × Σ mean aux-head losses, metric sums)`` of a train batch.

    ``logits`` ``(N, K)``, ``aux`` a pytree of auxiliary head logits (``()`` for none),
    ``labels`` ``(N,)``. The sums cover the main head: ``loss``, ``correct``, ``count``.
    """
    losses = cross_entropy(logits, labels, label_smoothing=label_smoothing)
    total = jnp.mean(losses)
    for head in jax.tree.leaves(aux):
        total += aux_loss_weight * jnp.mean(
            cross_entropy(head, labels, label_smoothing=label_smoothing)
        )
    sums = {
        "loss": jnp.sum(losses),
        "correct": jnp.sum(jnp.argmax(logits, -1) == labels).astype(jnp.float32),
        "count": jnp.asarray(labels.shape[0], jnp.float32),
    }
    return total, sums


def classification_metrics(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> Metrics:
    """Sums ``loss``, ``correct``, ``count`` over a batch, weighted by ``mask`` ``(N,)``
    (padding rows, ``mask == 0``, count nothing)."""
    losses = cross_entropy(logits, labels)
    return {
        "loss": jnp.sum(losses * mask),
        "correct": jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
        "count": jnp.sum(mask),
    }


def crop_labels(labels: jax.Array, spatial) -> jax.Array:
    """Centre crop ``(N, H, W)`` labels to the logits' ``spatial`` size ``(H', W')``."""
    starts = [(n - m) // 2 for n, m in zip(labels.shape[1:], spatial, strict=True)]
    index = tuple(slice(s, s + m) for s, m in zip(starts, spatial, strict=True))
    return labels[(slice(None), *index)]


def _pixel_losses(logits, labels, ignore_index):
    labels = crop_labels(labels, logits.shape[1:-1])
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
) -> Metrics:
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


def segmentation_objective(
    logits: jax.Array, labels: jax.Array, *, ignore_index: int = IGNORE_INDEX
) -> tuple[jax.Array, Metrics]:
    """``(mean labelled-pixel loss, metric sums)`` of a segmentation train batch."""
    loss = segmentation_loss(logits, labels, ignore_index=ignore_index)
    return loss, segmentation_metrics(logits, labels, ignore_index=ignore_index)


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
