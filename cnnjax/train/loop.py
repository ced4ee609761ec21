"""The training loop: config → data, model, optimiser, driver → steps, evaluations, checkpoints.

:func:`train` runs (or resumes) a run in ``workdir``:

* ``WORKDIR/config.json`` the configuration, ``WORKDIR/metrics.jsonl`` one record per split per
  evaluation, ``WORKDIR/checkpoints/STEP`` orbax checkpoints (every ``checkpoint.every_steps``
  steps, else at the end of every epoch, and at the end; the newest ``checkpoint.keep`` kept).
* Resuming (the default when a checkpoint exists) restores the state and continues at the same
  step: batch order is a function of ``(seed, epoch)`` and the resumed epoch skips the batches
  already consumed, and step ``t``'s randomness is ``fold_in(rng, t)``, so an interrupted and
  resumed run ends with exactly the parameters of an uninterrupted one.
* SIGTERM / SIGINT finish the current step, save a checkpoint, and return normally (the CLI
  exits 0); a second SIGINT interrupts at once. In a multi-process run every process must get
  the signal (as schedulers send it): the stop is not negotiated between processes.
* ``resume=False`` refuses a workdir that already holds checkpoints rather than mixing runs.

:func:`evaluate` restores a run's latest checkpoint and scores it on a split, with predictions
for a confusion matrix.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
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
from cnnjax.data.augment import device_augment, device_normalize
from cnnjax.data.classes import save_class_names
from cnnjax.data.pipeline import prefetch_to_device
from cnnjax.train.checkpoint import Checkpointer
from cnnjax.train.metrics import MetricsWriter, Progress
from cnnjax.train.optim import make_optimizer, make_schedule
from cnnjax.train.parallel import Driver, initialize_distributed, make_driver
from cnnjax.train.state import TrainState, create_train_state
from cnnjax.train.steps import eval_step, train_step
from cnnjax.train.workdir import check_run, finished_test_metrics, preflight

__all__ = [
    "EvalResult",
    "Run",
    "TrainResult",
    "build_run",
    "evaluate",
    "load_workdir_config",
    "train",
]

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


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


@dataclasses.dataclass
class EvalResult:
    """Test metrics, per-example predictions and labels, and the ``K × K`` confusion matrix."""

    loss: float
    accuracy: float
    count: int
    predictions: np.ndarray
    labels: np.ndarray
    confusion: np.ndarray
    step: int


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

    def initial_state(self) -> TrainState:
        """A fresh host (NumPy) train state from the config's seed."""
        state = create_train_state(
            self.model,
            self.tx,
            seed=self.config.seed,
            input_shape=self.input_shape,
            ema=self.config.optimizer.ema_decay is not None,
        )
        return jax.device_get(state)

    def train_batches(self, epoch: int, start_batch: int = 0):
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
            normalize_images=self.normalize_on_host,
        )

    def eval_batches(self, dataset: Dataset | None = None):
        return batches(
            dataset or self.dataset,
            batch_size=self.config.eval_batch_size or self.config.batch_size,
            train=False,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            augment=self.eval_augment,
            normalize_images=self.normalize_on_host,
        )


def build_run(config: ml_collections.ConfigDict, *, dataset: Dataset | None = None) -> Run:
    """Load the data, build model, optimiser and driver for ``config``; validate sizes."""
    from cnnjax.models import create_model, get_model_info

    info = get_model_info(config.model)
    if config.dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {config.dtype!r}")
    if dataset is None:
        dataset = _load_for_model(config, info)
    aug = config.augment
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
    )
    device_aug = None
    preprocess = None
    if aug.on_device:
        device_aug = functools.partial(
            device_augment,
            mean=dataset.mean,
            std=dataset.std,
            padding=aug.padding,
            flip=aug.flip,
            size=(crop, crop) if crop else None,
        )
        preprocess = functools.partial(device_normalize, mean=dataset.mean, std=dataset.std)
    train_fn = functools.partial(
        train_step,
        model=model,
        tx=tx,
        label_smoothing=config.label_smoothing,
        aux_loss_weight=config.aux_loss_weight,
        ema_decay=opt.ema_decay,
        augment=device_aug,
    )
    eval_fn = functools.partial(
        eval_step, model=model, use_ema=opt.ema_decay is not None, preprocess=preprocess
    )
    driver = make_driver(config.parallel, train_fn, eval_fn)
    if jax.process_count() > 1 and driver.kind == "none":
        raise ValueError("a multi-process run needs --parallel pmap or sharded (or auto)")
    driver.check_batch_size(config.batch_size)
    driver.check_batch_size(config.eval_batch_size or config.batch_size)
    host_augment = AugmentConfig(aug.padding, aug.flip, crop)
    return Run(
        config=config,
        dataset=dataset,
        model=model,
        tx=tx,
        driver=driver,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        input_shape=input_shape,
        host_augment=None if aug.on_device else host_augment,
        eval_augment=AugmentConfig(crop_size=crop),
        normalize_on_host=not aug.on_device,
    )


def _load_for_model(config, info) -> Dataset:
    """Load ``config.dataset``, fitted to the model's paper input when natively too small."""
    kwargs = dict(
        data_dir=config.data_dir,
        resize_mode=config.resize_mode,
        num_classes=config.num_classes,
        seed=config.seed,
        val_split=config.get("val_split"),
        skip_bad_files=config.get("skip_bad_files", False),
    )
    dataset = load_dataset(config.dataset, image_size=config.image_size, **kwargs)
    if config.image_size is None and dataset.image_shape[0] < info.min_input_size:
        dataset = load_dataset(config.dataset, image_size=info.input_shape[0], **kwargs)
    return dataset


class _StopRequest:
    """SIGTERM / SIGINT handler: ask the loop to stop after the current step."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _run_eval(run: Run, state, dataset: Dataset | None = None) -> dict[str, float]:
    driver = run.driver
    total = None
    start = time.perf_counter()
    for batch in prefetch_to_device(
        run.eval_batches(dataset), driver.put_batch, run.config.prefetch
    ):
        m = driver.eval_step(state, batch)
        total = m if total is None else jax.tree.map(jnp.add, total, m)
    sums = driver.host_metrics(total)
    seconds = time.perf_counter() - start
    count = max(sums["count"], 1.0)
    return {
        "loss": sums["loss"] / count,
        "accuracy": sums["correct"] / count,
        "count": int(sums["count"]),
        "images_per_sec": sums["count"] / seconds if seconds > 0 else None,
    }


def train(
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    *,
    hooks: Sequence[Callable[[int], None]] = (),
    verbose: bool = True,
) -> TrainResult:
    """Train (or resume) ``config`` in ``workdir``; see the module docstring.

    ``hooks`` are called as ``hook(step)`` after every step (on the host, cheap callables only).
    """
    dist = config.distributed
    initialize_distributed(
        dist.coordinator, dist.num_processes, dist.process_id, dist.get("timeout_s", 120)
    )
    workdir = pathlib.Path(workdir).absolute()
    primary = jax.process_index() == 0
    run = build_run(config)  # validates everything before the workdir is touched
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
    host_state = run.initial_state()
    preflight(workdir, host_state, primary=primary)
    driver = run.driver

    def say(text: str) -> None:
        if verbose and primary:
            print(text, flush=True)

    checkpointer = Checkpointer(
        workdir / "checkpoints",
        keep=config.checkpoint.keep,
        async_save=config.checkpoint.async_save,
    )
    if config.resume and checkpointer.latest_step() is not None:
        host_state, _ = checkpointer.restore(host_state)  # newest intact; damage reported
        say(f"resuming from {checkpointer.path()} (step {int(host_state.step)})")
    contract.commit(primary)
    if primary:
        save_class_names(workdir, run.dataset)
    step = int(host_state.step)
    if checkpointer.restored_step is not None and step >= run.total_steps:
        return _already_finished(run, checkpointer, host_state, workdir, say)
    state = driver.place_state(host_state)
    del host_state

    spe, total_steps = run.steps_per_epoch, run.total_steps
    progress = Progress(
        total_steps, step, log_every=config.log_every_steps, enabled=verbose and primary
    )
    writer = MetricsWriter(workdir, enabled=primary)
    every = config.checkpoint.every_steps
    global_batch = config.batch_size
    say(
        f"training {config.model} on {run.dataset.name} ({len(run.dataset.train)} train / "
        f"{len(run.dataset.test)} test, {run.input_shape}) for {total_steps} steps "
        f"({spe} per epoch), driver {driver.kind} on {driver.global_devices} device(s), "
        f"{jax.process_count()} process(es), workdir {workdir}"
    )

    def save(current_state, current_step):
        checkpointer.save(
            current_step,
            driver.host_state(current_state),
            {"step": current_step, "epoch": current_step / spe, "model": config.model},
        )

    test = None
    interrupted = False
    warm = False  # throughput excludes the first (compiling) step of the run
    with _StopRequest() as stop:
        while step < total_steps and not interrupted:
            epoch = step // spe
            epoch_sums, window_sums = None, None
            epoch_images, epoch_time = 0, 0.0
            window_images, window_start = 0, time.perf_counter()
            last = min(spe, total_steps - epoch * spe)  # batches of this epoch we will run
            stream = run.train_batches(epoch, step % spe)
            feed = prefetch_to_device(stream, driver.put_batch, config.prefetch)
            for batch in feed:
                state, metrics = driver.train_step(state, batch)
                step += 1
                if not warm:
                    jax.block_until_ready(metrics)
                    warm = True
                    window_start = time.perf_counter()
                else:
                    window_images += global_batch
                epoch_sums = (
                    metrics if epoch_sums is None else jax.tree.map(jnp.add, epoch_sums, metrics)
                )
                window_sums = (
                    metrics if window_sums is None else jax.tree.map(jnp.add, window_sums, metrics)
                )
                for hook in hooks:
                    hook(step)
                if step % progress.log_every == 0 or step - epoch * spe == last:
                    sums = driver.host_metrics(window_sums)
                    elapsed = time.perf_counter() - window_start
                    epoch_time += elapsed
                    epoch_images += window_images
                    progress.update(step, epoch + 1, _rates(sums, window_images, elapsed))
                    window_sums, window_images, window_start = None, 0, time.perf_counter()
                if every and step % every == 0:
                    save(state, step)
                if stop.requested:
                    interrupted = True
                    break
                if step - epoch * spe >= last:
                    break
            feed.close()
            epoch_done = step % spe == 0 or step >= total_steps
            if epoch_done and not interrupted:
                if window_sums is not None:  # not yet counted (stopped between log points)
                    epoch_time += time.perf_counter() - window_start
                    epoch_images += window_images
                finished = step // spe if step % spe == 0 else epoch + 1
                sums = driver.host_metrics(epoch_sums)
                rec = _rates(sums, epoch_images, epoch_time)
                writer.write({"step": step, "epoch": finished, "split": "train", **rec})
                final = step >= total_steps
                if final or finished % max(1, config.eval_every_epochs) == 0:
                    test = _run_eval(run, state)
                    writer.write({"step": step, "epoch": finished, "split": "test", **test})
                    progress.message(
                        f"epoch {finished} step {step}: train loss {rec['loss']:.4f} "
                        f"accuracy {rec['accuracy']:.2%} | test loss {test['loss']:.4f} "
                        f"accuracy {test['accuracy']:.2%}"
                    )
                if not every or final:
                    save(state, step)
        if interrupted:
            save(state, step)
    progress.close()
    checkpointer.wait()
    ckpt_path = checkpointer.path() if checkpointer.latest_step() is not None else None
    checkpointer.close()
    writer.close()
    if not interrupted and test is None:  # nothing left to train: score the restored state
        test = _run_eval(run, state)
    host_state = driver.host_state(state)
    if verbose and primary:
        if interrupted:
            print(
                f"interrupted at step {step}/{total_steps}; checkpoint {ckpt_path}; "
                "run the same command again to resume",
                flush=True,
            )
        else:
            print(
                f"test accuracy {test['accuracy']:.2%} ({test['count']} images, "
                f"loss {test['loss']:.4f}); checkpoint {ckpt_path}",
                flush=True,
            )
    return TrainResult(
        state=host_state,
        test=test or {},
        checkpoint=ckpt_path,
        step=step,
        interrupted=interrupted,
        workdir=workdir,
    )


def _already_finished(run: Run, checkpointer: Checkpointer, host_state, workdir, say):
    """A rerun of a finished run: report its recorded result, train nothing."""
    step = int(host_state.step)
    path = checkpointer.path(checkpointer.restored_step)
    checkpointer.close()
    test = finished_test_metrics(workdir, step)
    if test is None:  # no record (e.g. metrics.jsonl removed): score the checkpoint
        test = _run_eval(run, run.driver.place_state(host_state))
    say(
        f"already finished at step {step} (test accuracy {test['accuracy']:.2%}); nothing to "
        f"train. Checkpoint {path}; to train longer, pass more --epochs with --extend"
    )
    return TrainResult(
        state=host_state,
        test={k: test.get(k) for k in ("loss", "accuracy", "count", "images_per_sec")},
        checkpoint=path,
        step=step,
        interrupted=False,
        workdir=workdir,
        already_finished=True,
    )


def _rates(sums: dict[str, float], images: int, seconds: float) -> dict[str, float]:
    count = max(sums["count"], 1.0)
    return {
        "loss": sums["loss"] / count,
        "accuracy": sums["correct"] / count,
        "images_per_sec": images / seconds if seconds > 0 and images else None,
    }


def load_workdir_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
    """The configuration a run saved in ``WORKDIR/config.json``."""
    path = pathlib.Path(workdir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {workdir} a cnnjax training workdir?")
    from cnnjax.train.config import default_config

    config = default_config()
    saved = json.loads(path.read_text())
    _merge(config, saved)
    return config


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
) -> EvalResult:
    """Score the checkpoint (latest, or ``step``) of the run in ``workdir`` on a test split.

    ``dataset`` replaces the run's own (e.g. evaluate a digits model on ``npz:...``); it must
    have the same class count and a compatible image shape.
    """
    workdir = pathlib.Path(workdir)
    config = load_workdir_config(workdir)
    config.parallel = parallel
    config.resume = True
    if dataset is not None:
        config.dataset = dataset
    run = build_run(config)
    checkpointer = Checkpointer(workdir / "checkpoints", keep=config.checkpoint.keep)
    try:  # the newest intact checkpoint; damaged ones are reported, left in place
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

    @jax.jit
    def predict(variables, images):
        if preprocess is not None:
            images = preprocess(images)
        logits = run.model.apply(variables, images, train=False).astype(jnp.float32)
        return logits

    predictions, labels, losses = [], [], []
    for batch in run.eval_batches():
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


def _logsumexp(x: np.ndarray) -> np.ndarray:
    m = x.max(-1, keepdims=True)
    return m + np.log(np.exp(x - m).sum(-1, keepdims=True))
