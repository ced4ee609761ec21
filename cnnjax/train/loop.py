"""The training loop: config → data, model, optimiser, driver → steps, evaluations, checkpoints.

:func:`train` runs (or resumes) a run in ``workdir``:

* ``WORKDIR/config.json`` the configuration, ``WORKDIR/metrics.jsonl`` one record per split per
  evaluation, ``WORKDIR/checkpoints/STEP`` orbax checkpoints (every ``checkpoint.every_steps``
  steps, else at the end of every epoch, and at the end; the newest ``checkpoint.keep`` kept).
  ``WORKDIR/checkpoints_best/STEP`` the state of the best test evaluation by ``best.metric``
  (default ``test_accuracy``; one kept, never rotated out by keep-N) and ``WORKDIR/best.json``
  its record (metric, value, step, epoch); the best survives resume and ``--extend``, and a
  fresh start in the workdir clears it.
* Resuming (the default when a checkpoint exists) restores the state and continues at the same
  step: batch order is a function of ``(seed, epoch)`` and the resumed epoch skips the batches
  already consumed, and step ``t``'s randomness is ``fold_in(rng, t)``, so an interrupted and
  resumed run ends with exactly the parameters of an uninterrupted one.
* The loop (:func:`train`) is a setup of named calls, then a plain step loop that runs the
  periodic actions of :mod:`cnnjax.train.actions` after each step (log, record the epoch and
  evaluate, checkpoint, stop check). A checkpoint's meta carries the epoch's metric sums so far,
  and on resume ``metrics.jsonl`` is rolled back to the checkpoint's step: after any sequence of
  interruptions the history holds exactly one record per ``(epoch, split)``, equal (timings
  aside) to an uninterrupted run's.
* SIGTERM / SIGINT finish the current step (and that step's epoch record and save, when due),
  save a checkpoint, and return normally (the CLI exits 0); a second SIGINT interrupts at once,
  except during the final save, which signals never cut short. In a multi-process run every
  process must get the signal (as schedulers send it): the stop is not negotiated.
* Non-finite guard (``on_nonfinite``): a step with a non-finite loss or gradient norm is skipped
  on device (see :mod:`cnnjax.train.steps`); the loop reads the guard only at its host syncs
  (log points, epoch ends, saves). ``"stop"`` raises :class:`NonFiniteError` naming the first
  bad step and the last good checkpoint, and saves nothing after that step; ``"skip"`` goes on
  and counts the skipped steps (``skipped`` in the train records). A state that is not finite is
  never saved.
* ``resume=False`` refuses a workdir that already holds checkpoints rather than mixing runs.

:func:`evaluate` restores a run's latest (or best) checkpoint and scores it on a split, with
predictions for a confusion matrix.

Task ``segmentation`` (``config.task``, default the model's registry task): the steps of
:mod:`cnnjax.train.tasks` (per-pixel cross-entropy through the same guarded
:func:`~cnnjax.train.steps.train_step`); labels are ``(N, H, W)`` masks, cropped and flipped
with their images; ``accuracy`` is the pixel accuracy, and every
test record adds ``pixel_accuracy`` and ``mean_iou`` (the final one also per-class ``iou``,
``null`` for a class absent from labels and predictions); :func:`evaluate` returns per-pixel
predictions and labels.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import pathlib
import shutil
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cnnjax.data import AugmentConfig, Dataset, batches, load_dataset, num_batches
from cnnjax.data.augment import check_augment_geometry, device_normalize
from cnnjax.data.classes import save_class_names
from cnnjax.data.pipeline import default_workers, device_preprocess, in_memory, prefetch_to_device
from cnnjax.ops import compiler_options
from cnnjax.train.actions import (
    BEST_METRICS,
    CheckStop,
    Every,
    KeepBest,
    LogProgress,
    LoopState,
    MetricSums,
    RecordEpoch,
    SaveCheckpoint,
    describe_best,
)
from cnnjax.train.checkpoint import BEST_DIR, LATEST_DIR, Checkpointer, checkpoint_directory
from cnnjax.train.metrics import MetricsWriter, Progress
from cnnjax.train.optim import make_optimizer, make_schedule
from cnnjax.train.parallel import Driver, initialize_distributed, make_driver
from cnnjax.train.state import TrainState, create_train_state
from cnnjax.train.steps import eval_step, train_step
from cnnjax.train.tasks import iou_from_confusion, segmentation_eval_step, segmentation_train_step
from cnnjax.train.workdir import check_run, finished_test_metrics, lock_workdir, preflight

__all__ = [
    "EvalResult",
    "NonFiniteError",
    "Run",
    "TrainResult",
    "build_run",
    "evaluate",
    "load_workdir_config",
    "train",
]

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
LOSS_SCALE = 2.0**15  # initial dynamic loss scale of float16 runs (jmp's default)


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns: the final host state, test metrics and checkpoint path."""

    state: TrainState
    test: dict[str, float]
    checkpoint: pathlib.Path | None
    step: int
    interrupted: bool
    workdir: pathlib.Path
    already_finished: bool = False  # a rerun of a finished run: nothing was trained
    best: dict | None = None  # best.json's record: metric, mode, value, step, epoch


@dataclasses.dataclass
class EvalResult:
    """Test metrics, per-example predictions and labels, and the ``K × K`` confusion matrix.

    Segmentation: ``predictions`` / ``labels`` are ``(N, H', W')`` masks (labels centre-cropped
    to the logits; unlabelled pixels keep ``IGNORE_INDEX``), ``accuracy`` is the pixel
    accuracy and ``count`` the labelled pixels; ``mean_iou``, per-class ``iou`` and the first
    raw test ``images`` are set."""

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


@dataclasses.dataclass
class Run:
    """Everything :func:`build_run` derives from a config (shared by train and evaluate)."""

    config: ml_collections.ConfigDict
    dataset: Dataset
    model: Any
    tx: Any
    driver: Driver
    steps_per_epoch: int
    total_steps: int
    input_shape: tuple[int, int, int]
    host_augment: AugmentConfig | None
    eval_augment: AugmentConfig
    normalize_on_host: bool
    schedule: Callable[[int], Any] | None = None  # learning rate per optimiser update
    task: str = "classification"  # or "segmentation"
    workers: int = 0  # grain threads assembling batches (config data.workers)

    def initial_state(self) -> TrainState:
        """A fresh host (NumPy) train state from the config's seed."""
        state = create_train_state(
            self.model,
            self.tx,
            seed=self.config.seed,
            input_shape=self.input_shape,
            ema=self.config.optimizer.ema_decay is not None,
        )
        self.check_output_width(state)
        return jax.device_get(state)

    def check_output_width(self, state: TrainState) -> None:
        """The model's logits end in the data set's class count (per pixel for segmentation).

        Traced with ``jax.eval_shape`` (no compute). A wider or narrower head would train on
        out-of-range labels without an error. Raises ``ValueError`` naming model, widths, data.
        """
        variables = {"params": state.params}
        if state.batch_stats:
            variables["batch_stats"] = state.batch_stats
        image = jax.ShapeDtypeStruct((1, *self.input_shape), jnp.float32)
        out = jax.eval_shape(lambda v, x: self.model.apply(v, x, train=False), variables, image)
        logits = out[0] if isinstance(out, (tuple, list)) else out
        width, want = logits.shape[-1], self.dataset.num_classes
        if width != want:
            what = "per-pixel class scores" if self.task == "segmentation" else "logits"
            raise ValueError(
                f"model {self.config.model!r} outputs {width} {what} (shape "
                f"{tuple(logits.shape)}) but data set {self.config.dataset!r} has {want} "
                f"classes; give the model a {want}-wide output (it is passed num_classes={want})"
            )

    def train_batches(self, epoch: int, start_batch: int = 0, *, deferred: bool = False):
        """One epoch's training batches from ``start_batch``: finished on the host (float32,
        augmented), or with ``deferred=True`` as the run's step takes them (raw ``uint8`` plus
        the crop/flip draws when augmentation runs on the device)."""
        device = deferred and not self.normalize_on_host
        return batches(
            self.dataset,
            batch_size=self.config.batch_size,
            train=True,
            seed=self.config.seed,
            epoch=epoch,
            start_batch=start_batch,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            augment=self.host_augment,
            normalize_images=not device,
            defer_augment=device,
            workers=self.workers,
        )

    def eval_batches(self, dataset: Dataset | None = None, *, deferred: bool = False):
        """Evaluation batches, normalised on the host, or with ``deferred=True`` as the run's
        eval step takes them (``uint8`` when normalisation runs on the device)."""
        return batches(
            dataset or self.dataset,
            batch_size=self.config.eval_batch_size or self.config.batch_size,
            train=False,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            augment=self.eval_augment,
            normalize_images=not (deferred and not self.normalize_on_host),
            workers=self.workers,
        )


def build_run(config: ml_collections.ConfigDict, *, dataset: Dataset | None = None) -> Run:
    """Load the data, build model, optimiser and driver for ``config``; validate sizes."""
    from cnnjax.models import create_model, get_model_info
    from cnnjax.train.config import validate_config

    validate_config(config)
    info = get_model_info(config.model)
    if config.dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {config.dtype!r}")
    if config.on_nonfinite not in ("stop", "skip"):
        raise ValueError(f'on_nonfinite must be "stop" or "skip", got {config.on_nonfinite!r}')
    options = compiler_options(config.get("cpu_convolutions", "xla"))  # (validates the name)
    task = _check_task(config, info)
    _check_best_metric(config, task)
    if dataset is None:
        dataset = _load_for_model(config, info, task)
    aug = config.augment
    check_augment_geometry(aug.padding, aug.crop_size, dataset.image_shape[:2])
    crop = aug.crop_size
    input_shape = (crop, crop, dataset.image_shape[2]) if crop else tuple(dataset.image_shape)
    model = create_model(
        config.model,
        num_classes=dataset.num_classes,
        impl=config.impl,
        dtype=DTYPES[config.dtype],
        precision=config.get("precision"),
        **dict(config.model_overrides),
    )
    steps_per_epoch = num_batches(len(dataset.train), config.batch_size, train=True)
    if steps_per_epoch == 0:
        raise ValueError(
            f"batch size {config.batch_size} is larger than the training split "
            f"({len(dataset.train)} examples)"
        )
    total_steps = config.num_steps or config.epochs * steps_per_epoch
    opt = config.optimizer
    accumulate = max(1, opt.accumulate_steps)
    schedule = make_schedule(
        config.schedule.name,
        opt.lr,
        total_steps=max(1, total_steps // accumulate),
        warmup_steps=config.schedule.warmup_steps,
        milestones=config.schedule.milestones,
        decay_factor=config.schedule.decay_factor,
        end_lr=config.schedule.end_lr,
        cycles=[(start // accumulate, end // accumulate) for start, end in config.schedule.cycles],
    )
    tx = make_optimizer(
        opt.name,
        schedule,
        momentum=opt.momentum,
        nesterov=opt.nesterov,
        weight_decay=opt.weight_decay,
        b1=opt.b1,
        b2=opt.b2,
        eps=opt.eps,
        grad_clip_norm=opt.grad_clip_norm,
        accumulate_steps=accumulate,
        loss_scale=LOSS_SCALE if config.dtype == "float16" else None,
    )
    host_augment = AugmentConfig(aug.padding, aug.flip, crop)
    on_device = in_memory(dataset) if aug.on_device is None else aug.on_device
    device_aug = None
    preprocess = None
    if on_device:
        device_aug = functools.partial(
            device_preprocess, augment=host_augment, mean=dataset.mean, std=dataset.std
        )
        preprocess = functools.partial(device_normalize, mean=dataset.mean, std=dataset.std)
    train_fn = functools.partial(
        segmentation_train_step if task == "segmentation" else train_step,
        model=model,
        tx=tx,
        label_smoothing=config.label_smoothing,
        aux_loss_weight=config.aux_loss_weight,
        ema_decay=opt.ema_decay,
        augment=device_aug,
    )
    eval_fn = functools.partial(
        segmentation_eval_step if task == "segmentation" else eval_step,
        model=model,
        use_ema=opt.ema_decay is not None,
        preprocess=preprocess,
    )
    driver = make_driver(config.parallel, train_fn, eval_fn, options)
    if jax.process_count() > 1 and driver.kind == "none":
        raise ValueError("a multi-process run needs --parallel pmap or sharded (or auto)")
    driver.check_batch_size(config.batch_size)
    driver.check_batch_size(config.eval_batch_size or config.batch_size)
    workers = config.get("data", {}).get("workers")
    if workers is None:
        workers = 0 if in_memory(dataset) else default_workers()
    if workers < 0:
        raise ValueError(f"data.workers must be >= 0 (0: no reader threads), got {workers}")
    return Run(
        config=config,
        dataset=dataset,
        model=model,
        tx=tx,
        driver=driver,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        input_shape=input_shape,
        host_augment=host_augment,
        eval_augment=AugmentConfig(crop_size=crop),
        normalize_on_host=not on_device,
        schedule=schedule,
        task=task,
        workers=workers,
    )


TASKS = ("classification", "segmentation")


def _check_task(config, info) -> str:
    """``config.task`` (default: the model's) checked against the model and the augmentation."""
    task = config.get("task") or info.task
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if task != info.task:
        raise ValueError(
            f"model {config.model!r} is a {info.task} model; it cannot train task={task!r}"
        )
    if task == "segmentation" and config.label_smoothing:
        raise ValueError(
            f"label_smoothing is classification-only; got {config.label_smoothing} with "
            "task=segmentation"
        )
    return task


def _check_best_metric(config, task: str) -> None:
    """``best.metric`` is ``none`` or a test value this task's evaluation produces."""
    metric = config.get("best", {}).get("metric", "none")
    segmentation_only = ("test_mean_iou", "test_pixel_accuracy")
    known = [m for m in BEST_METRICS if task == "segmentation" or m not in segmentation_only]
    if metric not in (*known, "none"):
        raise ValueError(
            f"best.metric must be one of {', '.join([*known, 'none'])} for a {task} run, "
            f"got {metric!r}"
        )


def _load_for_model(config, info, task: str = "classification") -> Dataset:
    """Load ``config.dataset``, fitted to the model's paper input when natively too small
    (classification only: resizing would not move segmentation masks)."""
    kwargs = dict(
        data_dir=config.data_dir,
        resize_mode=config.resize_mode,
        num_classes=config.num_classes,
        seed=config.seed,
        val_split=config.get("val_split"),
        skip_bad_files=config.get("skip_bad_files", False),
    )
    dataset = load_dataset(config.dataset, image_size=config.image_size, **kwargs)
    too_small = dataset.image_shape[0] < info.min_input_size
    if config.image_size is None and too_small and task == "classification":
        dataset = load_dataset(config.dataset, image_size=info.input_shape[0], **kwargs)
    return dataset


class NonFiniteError(RuntimeError):
    """A run diverged (``on_nonfinite="stop"``): a non-finite loss or gradient norm at ``step``.

    ``checkpoint`` is the newest checkpoint saved before it (``None`` if there is none); no
    state after ``step`` was saved.
    """

    def __init__(self, step: int, stopped_at: int, checkpoint: pathlib.Path | None):
        self.step, self.stopped_at, self.checkpoint = step, stopped_at, checkpoint
        where = f"last good checkpoint {checkpoint}" if checkpoint else "no checkpoint was saved"
        super().__init__(
            f"non-finite loss or gradient norm at step {step} (stopped at step {stopped_at}, "
            f"the update skipped); {where}. Lower the learning rate, clip gradients "
            "(--set optimizer.grad_clip_norm=1.0) or pass --on-nonfinite skip"
        )


class _StopRequest:
    """SIGTERM / SIGINT handler: ask the loop to stop after the current step.

    A second SIGINT interrupts at once, except once :attr:`saving` is set (the final save):
    from then on signals only note the request, so the last checkpoint is always written.
    """

    def __init__(self):
        self.requested = False
        self.saving = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT and not self.saving:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _run_eval(
    run: Run, state, dataset: Dataset | None = None, *, per_class: bool = True
) -> dict[str, float]:
    """Mean loss and accuracy over the eval split; segmentation adds ``pixel_accuracy``,
    ``mean_iou`` and (``per_class``) the per-class ``iou`` list (``None`` for absent classes)."""
    driver = run.driver
    total = None
    start = time.perf_counter()
    for batch in prefetch_to_device(
        run.eval_batches(dataset, deferred=True), driver.put_batch, run.config.prefetch
    ):
        m = driver.eval_step(state, batch)
        total = m if total is None else jax.tree.map(jnp.add, total, m)
    confusion = total.pop("confusion", None)
    sums = driver.host_metrics(total)
    seconds = time.perf_counter() - start
    count = max(sums["count"], 1.0)
    images = len(dataset.test if dataset is not None else run.dataset.test)
    result = {
        "loss": sums["loss"] / count,
        "accuracy": sums["correct"] / count,
        "count": int(sums["count"]),
        "images_per_sec": (images if confusion is not None else sums["count"]) / seconds
        if seconds > 0
        else None,
        "eval_time": seconds,
    }
    if confusion is not None:
        scores = iou_from_confusion(np.asarray(driver.host_state(confusion)))
        result["pixel_accuracy"] = scores["pixel_accuracy"]
        result["mean_iou"] = scores["mean_iou"]
        if per_class:
            result["iou"] = [None if np.isnan(x) else float(x) for x in scores["iou"]]
    return result


@dataclasses.dataclass
class _Session:
    """One call of :func:`train`: the run, its workdir and the objects that write into it."""

    config: ml_collections.ConfigDict
    run: Run
    workdir: pathlib.Path
    primary: bool
    verbose: bool
    checkpointer: Checkpointer
    writer: MetricsWriter
    contract: Any  # cnnjax.train.workdir's record of the run, committed once restore succeeds
    initial: TrainState  # the fresh host state (restored into, or trained from)
    lock: Any = None  # the open WORKDIR/.cnnjax.lock (primary process), closed when train ends
    best_checkpointer: Checkpointer | None = None  # WORKDIR/checkpoints_best; None: metric none

    def say(self, text: str) -> None:
        if self.verbose and self.primary:
            print(text, flush=True)

    def lr(self, step: int) -> float:
        """The schedule's learning rate for the update of ``step`` (counted in batches)."""
        accumulate = max(1, self.config.optimizer.accumulate_steps)
        return float(self.run.schedule(max(0, step - 1) // accumulate))


def train(
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    *,
    hooks: Sequence[Callable[[int], None]] = (),
    verbose: bool = True,
) -> TrainResult:
    """Train (or resume) ``config`` in ``workdir``; see the module docstring.

    ``hooks`` are called as ``hook(step)`` after every step (on the host, cheap callables only).
    Raises :class:`NonFiniteError` when the run diverges under ``on_nonfinite="stop"``.
    """
    if config.get("origin_dir") is None:
        config.origin_dir = os.getcwd()
    session = _open_session(config, workdir, verbose)
    try:
        return _train_session(session, config, hooks, verbose)
    finally:
        if session.lock is not None:
            session.lock.close()  # releases the workdir lock


def _train_session(session: _Session, config, hooks, verbose: bool) -> TrainResult:
    loop = _restore(session)
    if session.checkpointer.restored_step is not None and loop.step >= session.run.total_steps:
        return _already_finished(session, loop)
    _announce(session)  # before the bar exists: a tqdm bar drawn first would share its line
    progress = Progress(
        session.run.total_steps,
        loop.step,
        log_every=config.log_every_steps,
        enabled=verbose and session.primary,
    )
    try:
        with _StopRequest() as stop:
            actions = [*_make_actions(session, progress, loop), CheckStop(stop)]
            _step_loop(session, loop, actions, hooks)
            stop.saving = True  # signals from here on are noted, never fatal: the save completes
            if loop.stop_reason == "signal":
                SaveCheckpoint(None, checkpointer=session.checkpointer, meta=_meta(session))(loop)
            session.checkpointer.wait()
    except BaseException:
        progress.close()
        _close_after_error(session)
        raise
    progress.close()
    return _finish(session, loop)


def _close_after_error(session: _Session) -> None:
    """An error inside the loop (an image that went bad mid-run, a failing hook): let a save in
    flight commit — its state was complete when it started — and close the checkpointers and
    the writer, so no half-written step and no orbax thread outlive the error; errors while
    closing are secondary and dropped, the original one is what the caller sees."""
    for close in _closers(session):
        with contextlib.suppress(Exception):
            close()


def _closers(session: _Session) -> list[Callable[[], None]]:
    """What a session closes at its end, in order: the checkpointers, then the writer."""
    best = session.best_checkpointer
    return [session.checkpointer.close, *([best.close] if best else []), session.writer.close]


def _open_session(config, workdir, verbose: bool) -> _Session:
    """Join the processes, build the run (validating everything before the workdir is
    touched), check the workdir may hold this run, write ``config.json``, open the writers."""
    dist = config.distributed
    initialize_distributed(
        dist.coordinator, dist.num_processes, dist.process_id, dist.get("timeout_s", 120)
    )
    workdir = pathlib.Path(workdir).absolute()
    primary = jax.process_index() == 0
    run = build_run(config)
    old = workdir / "checkpoints"
    if not config.resume and old.is_dir() and any(old.iterdir()):
        raise ValueError(
            f"resume=False but {workdir} already holds checkpoints; choose another workdir or "
            "delete it"
        )
    contract = check_run(workdir, config, run)  # a changed run is refused before any work
    if contract.config is not config:
        config = contract.config
        run = build_run(config, dataset=run.dataset)
    initial = run.initial_state()
    keeps_best = str(config.best.metric) != "none"
    preflight(workdir, initial, primary=primary, checkpoints=3 if keeps_best else 2)
    lock = lock_workdir(workdir, primary=primary)  # before orbax touches checkpoints/
    checkpointer = Checkpointer(
        workdir / LATEST_DIR,
        keep=config.checkpoint.keep,
        async_save=config.checkpoint.async_save,
    )
    best = None
    if config.best.metric != "none":  # saved synchronously: best.json names a committed step
        best = Checkpointer(workdir / BEST_DIR, keep=1, async_save=False)
    writer = MetricsWriter(workdir, enabled=primary)
    return _Session(
        config, run, workdir, primary, verbose, checkpointer, writer, contract, initial, lock, best
    )


def _restore(session: _Session) -> LoopState:
    """The loop's starting point: the latest checkpoint (state, mid-epoch sums, clocks) or a
    fresh state; metrics written after that checkpoint are rolled back (they will be redone)."""
    config, run = session.config, session.run
    host_state, meta = session.initial, {}
    if config.resume and session.checkpointer.latest_step() is not None:
        host_state, meta = session.checkpointer.restore(host_state)  # newest intact one
        session.say(f"resuming from {session.checkpointer.path()} (step {int(host_state.step)})")
    session.contract.commit(session.primary)  # config.json: only once the run is known good
    if session.primary:
        save_class_names(session.workdir, run.dataset)
    step = int(host_state.step)
    session.writer.rollback(step)
    loop = LoopState(
        step=step,
        state=run.driver.place_state(host_state),
        driver=run.driver,
        steps_per_epoch=run.steps_per_epoch,
        batch_size=config.batch_size,
        on_nonfinite=config.on_nonfinite,
        epoch_sums=MetricSums(meta.get("epoch_sums") if step % run.steps_per_epoch else None),
        wall_offset=float(meta.get("wall_time", 0.0)),
        epoch_offset=float(meta.get("epoch_time", 0.0)) if step % run.steps_per_epoch else 0.0,
    )
    loop.saved_step = session.checkpointer.latest_step()
    loop.best = _restore_best(session, resumed=session.checkpointer.restored_step is not None)
    return loop


def _restore_best(session: _Session, *, resumed: bool) -> dict | None:
    """The run's best record (from its best checkpoint's meta), or ``None``.

    A fresh start clears ``checkpoints_best`` and ``best.json`` (they belong to a run whose
    checkpoints are gone); so does a changed ``best.metric`` (a new best is kept from then on).
    A best saved after the restored step (by a session killed before its next checkpoint) is
    kept: it is a state of this run, and the rerun replaces it only by a better one."""
    best = session.best_checkpointer
    if best is None:
        _drop_best(session)
        return None
    record = best.read_meta().get("best") if resumed else None
    metric = session.config.best.metric
    if record is not None and record.get("metric") == metric:
        return record
    stale = best.all_steps()
    if stale:
        why = f"best.metric is now {metric}" if resumed else "the run starts afresh"
        session.say(f"clearing best checkpoint(s) {stale} in {best.directory}: {why}")
    for step in stale:
        best.delete(step)
    if session.primary:
        (session.workdir / "best.json").unlink(missing_ok=True)
    return None


def _drop_best(session: _Session) -> None:
    """``best.metric none``: a best kept under another metric is removed (``none`` keeps no best,
    so ``eval --best`` must not score a state that this run no longer vouches for)."""
    directory, record = session.workdir / BEST_DIR, session.workdir / "best.json"
    if not session.primary or not (directory.exists() or record.exists()):
        return
    session.say(f"clearing best checkpoint(s) in {directory}: best.metric is now none")
    shutil.rmtree(directory, ignore_errors=True)
    record.unlink(missing_ok=True)


def _announce(session: _Session) -> None:
    run, driver = session.run, session.run.driver
    session.say(
        f"training {session.config.model} on {run.dataset.name} ({len(run.dataset.train)} "
        f"train / {len(run.dataset.test)} test, {run.input_shape}) for {run.total_steps} steps "
        f"({run.steps_per_epoch} per epoch), driver {driver.kind} on {driver.global_devices} "
        f"device(s), {jax.process_count()} process(es), workdir {session.workdir}"
    )


def _meta(session: _Session) -> dict:
    return {"model": session.config.model}


def _make_actions(session: _Session, progress: Progress, loop: LoopState) -> list:
    """The periodic actions in the order they run after a step (see ``cnnjax.train.actions``)."""
    config, run = session.config, session.run
    spe, total = run.steps_per_epoch, run.total_steps
    every_save = config.checkpoint.every_steps
    return [
        LogProgress(
            Every(spe, total, steps=max(1, config.log_every_steps), epochs=1),
            progress,
            session.lr,
        ),
        RecordEpoch(
            Every(spe, total, epochs=1),
            writer=session.writer,
            progress=progress,
            evaluate=lambda state: _run_eval(run, state, per_class=loop.step >= total),
            lr=session.lr,
            eval_every=config.eval_every_epochs,
            total_steps=total,
        ),
        *_keep_best(session, progress),
        SaveCheckpoint(
            Every(spe, total, steps=every_save, epochs=None if every_save else 1),
            checkpointer=session.checkpointer,
            meta=_meta(session),
        ),
    ]


def _keep_best(session: _Session, progress: Progress) -> list:
    """``[KeepBest]`` at every epoch end (it acts where a test evaluation ran), or ``[]``."""
    if session.best_checkpointer is None:
        return []
    return [
        KeepBest(
            Every(session.run.steps_per_epoch, session.run.total_steps, epochs=1),
            metric=session.config.best.metric,
            checkpointer=session.best_checkpointer,
            path=session.workdir / "best.json",
            progress=progress,
            meta=_meta(session),
        )
    ]


def _step_loop(session: _Session, loop: LoopState, actions: list, hooks) -> None:
    """Step until the last step or a stop; after each step run the actions that are due."""
    run, config = session.run, session.config
    spe, total = run.steps_per_epoch, run.total_steps
    while loop.step < total and loop.stop_reason is None:
        epoch = loop.step // spe
        epoch_end = min((epoch + 1) * spe, total)
        stream = run.train_batches(epoch, loop.step % spe, deferred=True)
        feed = prefetch_to_device(stream, run.driver.put_batch, config.prefetch)
        try:
            for batch in feed:
                loop.state, metrics = run.driver.train_step(loop.state, batch)
                loop.after_step(metrics)
                for hook in hooks:
                    hook(loop.step)
                for action in actions:
                    if action.every(loop.step):
                        action(loop)
                if loop.stop_reason is not None or loop.step >= epoch_end:
                    break
        finally:
            feed.close()


def _finish(session: _Session, loop: LoopState) -> TrainResult:
    """Close the writers; raise on a divergence; score a run that had nothing left to train."""
    checkpointer = session.checkpointer
    ckpt_path = checkpointer.path() if checkpointer.latest_step() is not None else None
    for close in _closers(session):
        close()
    if loop.stop_reason == "nonfinite":
        raise NonFiniteError(loop.first_nonfinite, loop.step, ckpt_path)
    total = session.run.total_steps
    interrupted = loop.stop_reason == "signal" and loop.step < total  # a signal on the last
    test = loop.test  # step stops nothing: the run is finished and saved
    if not interrupted and test is None:  # nothing left to train: score the restored state
        test = _run_eval(session.run, loop.state)
    if interrupted:
        session.say(
            f"interrupted at step {loop.step}/{total}; checkpoint {ckpt_path}; "
            "run the same command again to resume"
        )
    else:
        _say_best(session, loop.best)
        unit = "pixels" if "mean_iou" in test else "images"
        iou = f", mean IoU {test['mean_iou']:.4f}" if "mean_iou" in test else ""
        session.say(
            f"test accuracy {test['accuracy']:.2%} ({test['count']} {unit}{iou}, "
            f"loss {test['loss']:.4f}); checkpoint {ckpt_path}"
        )
    return TrainResult(
        state=session.run.driver.host_state(loop.state),
        test=test or {},
        checkpoint=ckpt_path,
        step=loop.step,
        interrupted=interrupted,
        workdir=session.workdir,
        best=loop.best,
    )


def _say_best(session: _Session, best: dict | None) -> None:
    """``best: epoch 3, test_accuracy 97.50% (step 135); checkpoint …`` (before the last line)."""
    if best:
        path = checkpoint_directory(session.workdir, "best") / str(best["step"])
        session.say(f"{describe_best(best)} (step {best['step']}); checkpoint {path}")


def _already_finished(session: _Session, loop: LoopState) -> TrainResult:
    """A rerun of a finished run: report its recorded result, train nothing."""
    checkpointer, step = session.checkpointer, loop.step
    path = checkpointer.path(checkpointer.restored_step)
    for close in _closers(session):
        close()
    test = finished_test_metrics(session.workdir, step)
    if test is None:  # no record (e.g. metrics.jsonl removed): score the checkpoint
        test = _run_eval(session.run, loop.state)
    _say_best(session, loop.best)
    session.say(
        f"already finished at step {step} (test accuracy {test['accuracy']:.2%}); nothing to "
        f"train. Checkpoint {path}; to train longer, pass more --epochs with --extend"
    )
    return TrainResult(
        state=session.run.driver.host_state(loop.state),
        test={k: test.get(k) for k in ("loss", "accuracy", "count", "images_per_sec")},
        checkpoint=path,
        step=step,
        interrupted=False,
        workdir=session.workdir,
        already_finished=True,
        best=loop.best,
    )


def load_workdir_config(
    workdir: str | pathlib.Path, *, data: bool = True
) -> ml_collections.ConfigDict:
    """The configuration a run saved in ``WORKDIR/config.json``; relative recorded paths that
    are missing here are resolved against where it trained (``data=False``: the data set's
    path may be missing, for callers that load no data)."""
    path = pathlib.Path(workdir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {workdir} a cnnjax training workdir?")
    from cnnjax.train.config import default_config

    config = default_config()
    saved = json.loads(path.read_text())
    _merge(config, saved)
    _resolve_recorded_paths(config, path, data=data)
    return config


def _resolve_recorded_paths(
    config: ml_collections.ConfigDict, source: pathlib.Path, *, data: bool = True
) -> None:
    """Recorded relative ``folder:``/``npz:`` data and ``file.py:Class`` model paths that do not
    exist from here are taken relative to ``origin_dir`` (where ``train`` ran), in place.

    Raises ``FileNotFoundError`` (one line) when the path exists from neither directory.
    """
    origin = config.get("origin_dir")
    if not origin:
        return
    for key, prefix in (("dataset", ("folder:", "npz:")), ("model", None)):
        value = str(config[key])
        if prefix is not None:
            kind = next((p for p in prefix if value.startswith(p)), None)
            if kind is None:
                continue
            head, text = kind, value[len(kind) :]
        elif ".py:" in value:
            text, attr = value.rsplit(":", 1)
            head = None
        else:
            continue
        path = pathlib.Path(text).expanduser()
        if path.is_absolute() or path.exists():
            continue
        there = pathlib.Path(origin) / path
        if not there.exists():
            if key == "dataset" and not data:
                continue
            raise FileNotFoundError(
                f"{key} {value!r} recorded in {source} exists neither under the current "
                f"directory {os.getcwd()} nor under {origin}, where the run was trained"
            )
        config[key] = f"{head}{there}" if head else f"{there}:{attr}"


def _merge(config: ml_collections.ConfigDict, values: dict) -> None:
    for key, value in values.items():
        if (
            isinstance(value, dict)
            and key in config
            and isinstance(config[key], ml_collections.ConfigDict)
        ):
            if key == "model_overrides":
                for k, v in value.items():
                    config[key][k] = v
            else:
                _merge(config[key], value)
        elif key in config:
            if isinstance(value, list):
                value = tuple(value)
            config[key] = value


def evaluate(
    workdir: str | pathlib.Path,
    *,
    dataset: str | None = None,
    step: int | None = None,
    parallel: str = "none",
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
    """
    workdir = pathlib.Path(workdir)
    config = load_workdir_config(workdir)
    config.parallel = parallel
    config.resume = True
    if dataset is not None:
        config.dataset = dataset
    if skip_bad_files:
        config.skip_bad_files = True
    run = build_run(config)
    directory = checkpoint_directory(workdir, checkpoint)
    if checkpoint == "best" and not directory.is_dir():
        raise FileNotFoundError(
            f"{workdir} has no best checkpoint ({directory} does not exist): the run kept none "
            "(best.metric none, or trained before best checkpoints existed)"
        )
    checkpointer = Checkpointer(directory, keep=config.checkpoint.keep)
    try:  # the newest intact checkpoint; damaged ones are reported, left in place
        if checkpoint == "best" and not checkpointer.all_steps():
            raise FileNotFoundError(
                f"no checkpoint under {directory} (no test evaluation has run yet: the best "
                "is kept at each test evaluation, every eval_every_epochs epochs and at the end)"
            )
        state, _ = checkpointer.restore(run.initial_state(), step, quarantine=False)
    finally:
        checkpointer.close()
    params = state.ema_params if config.optimizer.ema_decay is not None else state.params
    variables = {"params": params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    preprocess = (
        None
        if run.normalize_on_host
        else functools.partial(device_normalize, mean=run.dataset.mean, std=run.dataset.std)
    )

    @functools.partial(jax.jit, compiler_options=run.driver.compiler_options or None)
    def predict(variables, images):
        if preprocess is not None:
            images = preprocess(images)
        logits = run.model.apply(variables, images, train=False).astype(jnp.float32)
        return logits

    batches_ = _eval_progress(run, int(state.step), progress)
    if run.task == "segmentation":
        return _evaluate_segmentation(run, variables, predict, int(state.step), batches_)
    predictions, labels, losses = [], [], []
    for batch in batches_:
        logits = np.asarray(predict(variables, batch["image"]))
        keep = batch["mask"] > 0
        logits, y = logits[keep], batch["label"][keep]
        log_probs = logits - _logsumexp(logits)
        losses.append(-log_probs[np.arange(len(y)), y])
        predictions.append(np.argmax(logits, -1))
        labels.append(y)
    predictions, labels = np.concatenate(predictions), np.concatenate(labels)
    k = run.dataset.num_classes
    confusion = np.zeros((k, k), np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    return EvalResult(
        loss=float(np.concatenate(losses).mean()),
        accuracy=float((predictions == labels).mean()),
        count=len(labels),
        predictions=predictions,
        labels=labels,
        confusion=confusion,
        step=int(state.step),
    )


def _eval_progress(run: Run, step: int, enabled: bool):
    """The test batches, with a progress bar and estimate on stderr when scoring takes a while."""
    from cnnjax.progress import track

    size = run.config.eval_batch_size or run.config.batch_size
    total = num_batches(len(run.dataset.test), size, train=False)
    return track(
        run.eval_batches(deferred=True), total, f"eval step {step}", "batch", enabled=enabled
    )


def _evaluate_segmentation(run: Run, variables, predict, step: int, batches_) -> EvalResult:
    """Per-pixel predictions, loss over labelled pixels, confusion and IoU on the test split."""
    from cnnjax.data.pipeline import IGNORE_INDEX
    from cnnjax.train.tasks import _crop_labels

    k = run.dataset.num_classes
    predictions, labels = [], []
    confusion = np.zeros((k, k), np.int64)
    loss_sum = 0.0
    for batch in batches_:
        logits = np.asarray(predict(variables, batch["image"]))
        keep = batch["mask"] > 0
        logits = logits[keep]
        y = np.asarray(_crop_labels(batch["label"][keep], logits.shape[1:-1]))
        valid = y != IGNORE_INDEX
        safe = np.where(valid, y, 0)
        log_probs = logits - _logsumexp(logits)
        picked = np.take_along_axis(log_probs, safe[..., None], -1)[..., 0]
        loss_sum -= float(picked[valid].sum())
        pred = np.argmax(logits, -1)
        np.add.at(confusion, (y[valid], pred[valid]), 1)
        predictions.append(pred)
        labels.append(y)
    scores = iou_from_confusion(confusion)
    count = int(confusion.sum())
    shown = np.arange(min(8, len(run.dataset.test)))
    images = np.asarray(run.dataset.test.get(shown)[0])
    return EvalResult(
        loss=loss_sum / max(count, 1),
        accuracy=scores["pixel_accuracy"],
        count=count,
        predictions=np.concatenate(predictions),
        labels=np.concatenate(labels),
        confusion=confusion,
        step=step,
        task="segmentation",
        mean_iou=scores["mean_iou"],
        iou=scores["iou"],
        images=images,
    )


def _logsumexp(x: np.ndarray) -> np.ndarray:
    m = x.max(-1, keepdims=True)
    return m + np.log(np.exp(x - m).sum(-1, keepdims=True))
