"""Scoring a run: on its test split during training, and offline from a checkpoint.

Both use the run's task (:mod:`cnnjax.train.tasks`): its ``eval_metrics`` give the metric sums
(one loss, the one the run trained with, without label smoothing), its ``summarize`` the record.

* :func:`evaluate_state`: the test record written to ``metrics.jsonl`` during training, through
  the run's driver (every device, every process).
* :func:`evaluate`: restores a run's latest (or best) checkpoint and scores it on a split, with
  the per-example (per-pixel) predictions and labels and the confusion matrix
  (``cnnjax eval``).
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.data import Dataset, num_batches
from cnnjax.data.augment import device_normalize
from cnnjax.data.pipeline import prefetch_to_device
from cnnjax.progress import track
from cnnjax.train.checkpoint import Checkpointer, checkpoint_directory
from cnnjax.train.run import Run, build_run
from cnnjax.train.state import TrainState
from cnnjax.train.workdir import load_workdir_config

__all__ = ["EvalResult", "evaluate", "evaluate_state"]


@dataclasses.dataclass
class EvalResult:
    """Test metrics, per-example predictions and labels, and the ``K × K`` confusion matrix
    (rows true class, columns predicted); ``images`` are the first (up to 8) raw test images.

    Segmentation: ``predictions`` / ``labels`` are ``(N, H', W')`` masks (labels centre-cropped
    to the logits; unlabelled pixels keep ``IGNORE_INDEX``), ``accuracy`` is the pixel
    accuracy and ``count`` the labelled pixels; ``mean_iou`` and per-class ``iou`` (``nan`` for
    a class absent from labels and predictions) are set."""

    loss: float
    accuracy: float
    count: int
    predictions: np.ndarray
    labels: np.ndarray
    confusion: np.ndarray
    step: int
    task: str = "classification"
    mean_iou: float | None = None
    iou: np.ndarray | None = None
    images: np.ndarray | None = None


def evaluate_state(
    run: Run, state, dataset: Dataset | None = None, *, per_class: bool = True
) -> dict[str, float]:
    """The test record of a placed ``state``: mean ``loss``, ``accuracy``, ``count``,
    ``images_per_sec``, ``eval_time`` and the task's own fields (segmentation:
    ``pixel_accuracy``, ``mean_iou``, with ``per_class`` the per-class ``iou`` list)."""
    driver = run.driver
    total = None
    start = time.perf_counter()
    for batch in prefetch_to_device(
        run.eval_batches(dataset, deferred=True), driver.put_batch, run.config.prefetch
    ):
        m = driver.eval_step(state, batch)
        total = m if total is None else jax.tree.map(jnp.add, total, m)
    record = run.task.summarize(driver.host_state(total), per_class=per_class)
    seconds = time.perf_counter() - start
    images = len(dataset.test if dataset is not None else run.dataset.test)
    head = {k: record.pop(k) for k in ("loss", "accuracy", "count")}
    return {
        **head,
        "images_per_sec": images / seconds if seconds > 0 else None,
        "eval_time": seconds,
        **record,
    }


def evaluate(
    workdir: str | pathlib.Path,
    *,
    dataset: str | None = None,
    step: int | None = None,
    checkpoint: str = "latest",
    progress: bool = False,
    skip_bad_files: bool = False,
) -> EvalResult:
    """Score the checkpoint (latest, or ``step``) of the run in ``workdir`` on a test split.

    ``checkpoint="best"`` reads ``WORKDIR/checkpoints_best`` (the best test evaluation's state)
    instead of ``WORKDIR/checkpoints``. ``dataset`` replaces the run's own (e.g. evaluate a
    digits model on ``npz:...``); it must have the same class count and a compatible image
    shape. ``progress`` shows a bar with an estimate on stderr when scoring takes a while.
    ``skip_bad_files`` skips unreadable images of a ``folder:`` data set (with a count).
    Raises ``FileNotFoundError`` when the workdir or the checkpoint does not exist.
    """
    workdir = pathlib.Path(workdir)
    config = load_workdir_config(workdir)
    config.parallel = "none"  # offline scoring runs in one process on one device
    config.resume = True
    if dataset is not None:
        config.dataset = dataset
    if skip_bad_files:
        config.skip_bad_files = True
    run = build_run(config)
    state = _restore(workdir, run, checkpoint, step)
    return _score(run, state, progress)


def _restore(workdir: pathlib.Path, run: Run, checkpoint: str, step: int | None) -> TrainState:
    """The host state of ``checkpoint`` (``latest`` or ``best``) at ``step`` (newest intact)."""
    directory = checkpoint_directory(workdir, checkpoint)
    if checkpoint == "best" and not directory.is_dir():
        raise FileNotFoundError(
            f"{workdir} has no best checkpoint ({directory} does not exist): the run kept none "
            "(best.metric none, or trained before best checkpoints existed)"
        )
    checkpointer = Checkpointer(directory, keep=run.config.checkpoint.keep)
    try:  # the newest intact checkpoint; damaged ones are reported, left in place
        if checkpoint == "best" and not checkpointer.all_steps():
            raise FileNotFoundError(
                f"no checkpoint under {directory} (no test evaluation has run yet: the best "
                "is kept at each test evaluation, every eval_every_epochs epochs and at the end)"
            )
        state, _ = checkpointer.restore(run.initial_state(), step, quarantine=False)
    finally:
        checkpointer.close()
    return state


def _score(run: Run, state: TrainState, progress: bool) -> EvalResult:
    """Predictions, aligned labels, confusion and the task's record over the test split."""
    task, k, step = run.task, run.dataset.num_classes, int(state.step)
    params = state.ema_params if run.config.optimizer.ema_decay is not None else state.params
    variables = {"params": params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    predict = _predictor(run)
    predictions, labels, sums = [], [], {}
    confusion = np.zeros((k, k), np.int64)
    for batch in _eval_progress(run, step, progress):
        logits, metrics = predict(variables, batch["image"], batch["label"], batch["mask"])
        for name, value in metrics.items():  # float64 on the host: exact over any split
            sums[name] = sums.get(name, 0.0) + np.asarray(value, np.float64)
        keep = batch["mask"] > 0
        pred = np.argmax(np.asarray(logits)[keep], -1)
        y = np.asarray(task.align(batch["label"][keep], pred))
        labelled = task.labelled(y)
        np.add.at(confusion, (y[labelled], pred[labelled]), 1)
        predictions.append(pred)
        labels.append(y)
    record = task.summarize(sums)
    shown = np.arange(min(8, len(run.dataset.test)))
    return EvalResult(
        loss=record["loss"],
        accuracy=record["accuracy"],
        count=record["count"],
        predictions=np.concatenate(predictions),
        labels=np.concatenate(labels),
        confusion=confusion,
        step=step,
        task=task.name,
        mean_iou=record.get("mean_iou"),
        iou=np.array(record["iou"], float) if "iou" in record else None,
        images=np.asarray(run.dataset.test.get(shown)[0]),
    )


def _predictor(run: Run):
    """``predict(variables, images, labels, mask) -> (float32 logits, task metric sums)``."""
    dataset = run.dataset
    preprocess = (
        None
        if run.normalize_on_host
        else functools.partial(device_normalize, mean=dataset.mean, std=dataset.std)
    )

    @functools.partial(jax.jit, compiler_options=run.driver.compiler_options or None)
    def predict(variables, images, labels, mask):
        if preprocess is not None:
            images = preprocess(images)
        logits = run.model.apply(variables, images, train=False).astype(jnp.float32)
        return logits, run.task.eval_metrics(logits, labels, mask.astype(jnp.float32))

    return predict


def _eval_progress(run: Run, step: int, enabled: bool):
    """The test batches, with a progress bar and estimate on stderr when scoring takes a while."""
    size = run.config.eval_batch_size or run.config.batch_size
    total = num_batches(len(run.dataset.test), size, train=False)
    return track(
        run.eval_batches(deferred=True), total, f"eval step {step}", "batch", enabled=enabled
    )
