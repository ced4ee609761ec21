"""Building a run from a configuration: checks, data fitted to the model, model, optimiser,
task and driver (:func:`build_run`), shared by :func:`cnnjax.train.train` and
:func:`cnnjax.train.evaluate`.

Everything is validated here, before a workdir is touched: the configuration's values, the task
against the model, ``best.metric`` against the task, the augmentation's geometry against the
images, the batch size against the training split and the devices, and (in
:meth:`Run.initial_state`) the model's output width against the data set's class count.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from cnnjax.data import AugmentConfig, Dataset, batches, load_dataset, num_batches
from cnnjax.data.augment import check_augment_geometry, device_normalize
from cnnjax.data.pipeline import default_workers, device_preprocess, in_memory
from cnnjax.models import create_model, get_model_info
from cnnjax.ops import compiler_options
from cnnjax.train.actions import BEST_METRICS
from cnnjax.train.config import validate_config
from cnnjax.train.optim import make_optimizer, make_schedule
from cnnjax.train.parallel import Driver, make_driver
from cnnjax.train.state import TrainState, create_train_state
from cnnjax.train.steps import eval_step, train_step
from cnnjax.train.tasks import Classification, Task, make_task

__all__ = ["DTYPES", "LOSS_SCALE", "Run", "build_run"]

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
LOSS_SCALE = 2.0**15  # initial dynamic loss scale of float16 runs (jmp's default)


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
    task: Task = dataclasses.field(default_factory=Classification)  # loss, metrics, record
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
            raise ValueError(
                f"model {self.config.model!r} outputs {width} {self.task.output} (shape "
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
    """Load the data, build model, optimiser, task and driver for ``config``; validate sizes.

    ``dataset`` (already loaded) replaces loading ``config.dataset``. Raises ``ValueError``
    naming the setting at fault.
    """
    validate_config(config)
    info = get_model_info(config.model)
    if config.dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {config.dtype!r}")
    if config.on_nonfinite not in ("stop", "skip"):
        raise ValueError(f'on_nonfinite must be "stop" or "skip", got {config.on_nonfinite!r}')
    options = compiler_options(config.get("cpu_convolutions", "xla"))  # (validates the name)
    task = make_task(config, info.task)
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
    schedule, tx = _optimizer(config, total_steps)
    host_augment = AugmentConfig(aug.padding, aug.flip, crop)
    on_device = in_memory(dataset) if aug.on_device is None else aug.on_device
    driver = _driver(config, model, tx, task, dataset, host_augment if on_device else None, options)
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
        workers=_workers(config, dataset),
    )


def _optimizer(config: ml_collections.ConfigDict, total_steps: int):
    """``(schedule, optax transformation)`` of ``config.optimizer`` and ``config.schedule``;
    the schedule counts optimiser updates (``accumulate_steps`` batches each)."""
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
    return schedule, tx


def _driver(config, model, tx, task: Task, dataset: Dataset, device_augment, options) -> Driver:
    """The driver running the task's train and eval steps; ``device_augment`` (the host
    augmentation's settings) moves augmentation and normalisation onto the device."""
    augment = preprocess = None
    if device_augment is not None:
        augment = functools.partial(
            device_preprocess, augment=device_augment, mean=dataset.mean, std=dataset.std
        )
        preprocess = functools.partial(device_normalize, mean=dataset.mean, std=dataset.std)
    ema_decay = config.optimizer.ema_decay
    train_fn = functools.partial(
        train_step, model=model, tx=tx, task=task, ema_decay=ema_decay, augment=augment
    )
    eval_fn = functools.partial(
        eval_step, model=model, task=task, use_ema=ema_decay is not None, preprocess=preprocess
    )
    driver = make_driver(config.parallel, train_fn, eval_fn, options)
    if jax.process_count() > 1 and driver.kind == "none":
        raise ValueError("a multi-process run needs --parallel pmap or sharded (or auto)")
    driver.check_batch_size(config.batch_size)
    driver.check_batch_size(config.eval_batch_size or config.batch_size)
    return driver


def _workers(config: ml_collections.ConfigDict, dataset: Dataset) -> int:
    """Reader threads: ``data.workers``, by default none for in-memory data."""
    workers = config.get("data", {}).get("workers")
    if workers is None:
        workers = 0 if in_memory(dataset) else default_workers()
    if workers < 0:
        raise ValueError(f"data.workers must be >= 0 (0: no reader threads), got {workers}")
    return workers


def _check_best_metric(config: ml_collections.ConfigDict, task: Task) -> None:
    """``best.metric`` is ``none`` or a test value this task's evaluation produces."""
    metric = config.get("best", {}).get("metric", "none")
    known = [m for m in BEST_METRICS if m in task.best_metrics]
    if metric not in (*known, "none"):
        raise ValueError(
            f"best.metric must be one of {', '.join([*known, 'none'])} for a {task.name} run, "
            f"got {metric!r}"
        )


def _load_for_model(config: ml_collections.ConfigDict, info, task: Task) -> Dataset:
    """Load ``config.dataset``, fitted to the model's paper input when natively too small
    (where the task allows: resizing would not move segmentation masks)."""
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
    if config.image_size is None and too_small and task.fits_input:
        dataset = load_dataset(config.dataset, image_size=info.input_shape[0], **kwargs)
    return dataset
