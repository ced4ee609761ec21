"""Training tasks as objects: what the steps, the loop and the evaluation ask of a task.

A task (``config.task``, default the model's registry task) gives

* ``objective(logits, aux_logits, labels) -> (mean loss, metric sums)``: the training loss of
  :func:`cnnjax.train.steps.train_step`, and ``eval_metrics(logits, labels, mask) -> sums`` for
  :func:`~cnnjax.train.steps.eval_step` (the functions of :mod:`cnnjax.train.losses`);
* ``align(labels, predictions)`` (the labels a prediction is compared with) and ``labelled(labels)``
  (which of them count), used by :func:`cnnjax.train.evaluate` for predictions and confusion;
* ``summarize(sums)``: the evaluation record from summed metrics, and ``describe(record)``
  for the final line;
* what the run may choose: ``best_metrics`` (``best.metric`` values), ``output`` (what the
  model's last axis holds, for the width check), ``fits_input`` (whether too-small images are
  resized to the model's paper input).

:class:`Classification`: per-example softmax cross-entropy (label smoothing, auxiliary heads).
:class:`Segmentation`: batches ``{"image": (N, H, W, C), "label": (N, H, W) int, "mask": (N,)?}``;
the label is centre-cropped to the model's output size (U-Net's valid convolutions), pixels
labelled ``IGNORE_INDEX`` count nowhere; ``accuracy`` is the pixel accuracy and the record adds
``pixel_accuracy``, ``mean_iou`` and (``per_class``) per-class ``iou`` (``None`` for a class
absent from labels and predictions).

:func:`segmentation_train_step` / :func:`segmentation_eval_step` are the steps with the
segmentation task bound (pure; ``axis_name`` for cross-device means and sums).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import ml_collections
import numpy as np
import optax

from cnnjax.data.pipeline import IGNORE_INDEX
from cnnjax.train.losses import (
    classification_metrics,
    classification_objective,
    crop_labels,
    iou_from_confusion,
    segmentation_loss,
    segmentation_metrics,
    segmentation_objective,
)
from cnnjax.train.state import TrainState
from cnnjax.train.steps import eval_step, train_step

__all__ = [
    "IGNORE_INDEX",
    "TASKS",
    "Classification",
    "Segmentation",
    "Task",
    "iou_from_confusion",
    "make_task",
    "segmentation_eval_step",
    "segmentation_loss",
    "segmentation_metrics",
    "segmentation_objective",
    "segmentation_train_step",
]

Metrics = dict[str, jax.Array]


class Task:
    """The interface every task implements (see the module docstring)."""

    name: ClassVar[str]
    output: ClassVar[str]  # what the model's last axis holds, for error messages
    best_metrics: ClassVar[tuple[str, ...]]
    fits_input: ClassVar[bool]  # resize too-small images to the model's paper input

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> Task:
        """The task with the loss options of ``config``; raises ``ValueError`` on options the
        task cannot honour."""
        raise NotImplementedError

    def objective(self, logits: jax.Array, aux: Any, labels: jax.Array):
        raise NotImplementedError

    def eval_metrics(self, logits: jax.Array, labels: jax.Array, mask: jax.Array) -> Metrics:
        raise NotImplementedError

    def align(self, labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
        """The labels the ``predictions`` (``argmax`` over the classes) are compared with."""
        return labels

    def labelled(self, labels: np.ndarray) -> np.ndarray:
        """Which aligned labels count (a boolean mask of their shape)."""
        return np.ones(np.shape(labels), bool)

    def summarize(self, sums: dict[str, Any], *, per_class: bool = True) -> dict[str, Any]:
        """``{"loss", "accuracy", "count"}`` (means over ``count``) from host metric sums, plus
        the task's own fields."""
        count = max(float(sums["count"]), 1.0)
        return {
            "loss": float(sums["loss"]) / count,
            "accuracy": float(sums["correct"]) / count,
            "count": int(float(sums["count"])),
        }

    def describe(self, record: dict[str, Any]) -> str:
        """What was scored, for the final line: ``"450 images"``."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Classification(Task):
    """One label per image: softmax cross-entropy with ``label_smoothing``, plus
    ``aux_loss_weight`` × the auxiliary heads' losses (GoogLeNet)."""

    label_smoothing: float = 0.0
    aux_loss_weight: float = 0.3

    name: ClassVar[str] = "classification"
    output: ClassVar[str] = "logits"
    best_metrics: ClassVar[tuple[str, ...]] = ("test_accuracy", "test_loss")
    fits_input: ClassVar[bool] = True

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> Classification:
        return cls(config.label_smoothing, config.aux_loss_weight)

    def objective(self, logits, aux, labels):
        return classification_objective(
            logits,
            aux,
            labels,
            label_smoothing=self.label_smoothing,
            aux_loss_weight=self.aux_loss_weight,
        )

    def eval_metrics(self, logits, labels, mask):
        return classification_metrics(logits, labels, mask)

    def describe(self, record):
        return f"{record['count']} images"


@dataclasses.dataclass(frozen=True)
class Segmentation(Task):
    """One label per pixel: mean cross-entropy over the pixels not labelled ``ignore_index``;
    auxiliary heads are classification-only (ignored here)."""

    ignore_index: int = IGNORE_INDEX

    name: ClassVar[str] = "segmentation"
    output: ClassVar[str] = "per-pixel class scores"
    best_metrics: ClassVar[tuple[str, ...]] = (
        "test_accuracy",
        "test_loss",
        "test_mean_iou",
        "test_pixel_accuracy",
    )
    fits_input: ClassVar[bool] = False  # resizing would not move the masks

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> Segmentation:
        if config.label_smoothing:
            raise ValueError(
                f"label_smoothing is classification-only; got {config.label_smoothing} with "
                "task=segmentation"
            )
        return cls()

    def objective(self, logits, aux, labels):
        return segmentation_objective(logits, labels, ignore_index=self.ignore_index)

    def eval_metrics(self, logits, labels, mask):
        return segmentation_metrics(logits, labels, ignore_index=self.ignore_index, weights=mask)

    def align(self, labels, predictions):
        return crop_labels(labels, np.shape(predictions)[1:])

    def labelled(self, labels):
        return np.asarray(labels) != self.ignore_index

    def summarize(self, sums, *, per_class=True):
        record = super().summarize(sums)
        scores = iou_from_confusion(np.asarray(sums["confusion"]))
        record["pixel_accuracy"] = scores["pixel_accuracy"]
        record["mean_iou"] = scores["mean_iou"]
        if per_class:
            record["iou"] = [None if np.isnan(x) else float(x) for x in scores["iou"]]
        return record

    def describe(self, record):
        return f"{record['count']} pixels, mean IoU {record['mean_iou']:.4f}"


TASKS: dict[str, type[Task]] = {"classification": Classification, "segmentation": Segmentation}


def make_task(config: ml_collections.ConfigDict, model_task: str) -> Task:
    """The task of ``config.task`` (default ``model_task``, the model's registry task).

    Raises ``ValueError`` for an unknown task, one the model was not built for, or loss options
    the task cannot honour.
    """
    name = config.get("task") or model_task
    if name not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {name!r}")
    if name != model_task:
        raise ValueError(
            f"model {config.model!r} is a {model_task} model; it cannot train task={name!r}"
        )
    return TASKS[name].from_config(config)


def segmentation_train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model,
    tx: optax.GradientTransformation,
    axis_name: str | None = None,
    ignore_index: int = IGNORE_INDEX,
    **kwargs,
) -> tuple[TrainState, Metrics]:
    """:func:`cnnjax.train.steps.train_step` with the :class:`Segmentation` task: the non-finite
    guard, float16 loss scaling, EMA and device augmentation (``kwargs``) apply unchanged."""
    kwargs.pop("label_smoothing", None)  # classification options: ignored, as the task does
    kwargs.pop("aux_loss_weight", None)
    task = Segmentation(ignore_index)
    return train_step(state, batch, model=model, tx=tx, task=task, axis_name=axis_name, **kwargs)


def segmentation_eval_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model,
    axis_name: str | None = None,
    ignore_index: int = IGNORE_INDEX,
    **kwargs,
) -> Metrics:
    """Metric sums over the batch; padding examples (``batch["mask"] == 0``) count nothing.
    ``kwargs`` (``use_ema``, ``preprocess``) go to :func:`cnnjax.train.steps.eval_step`."""
    task = Segmentation(ignore_index)
    return eval_step(state, batch, model=model, task=task, axis_name=axis_name, **kwargs)
