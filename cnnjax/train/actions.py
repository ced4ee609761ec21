"""The training loop's periodic actions: small objects the step loop calls after every step.

The loop in :func:`cnnjax.train.loop.train` only steps and adds the step's metric sums on device;
everything periodic is an action (the shape of ``clu.periodic_actions``, which big_vision uses;
clu itself imports TensorFlow for its metric writers, so cnnjax keeps these few lines):

* ``action.every(step)`` says whether it runs after ``step``; :class:`Every` is a pure function
  of the step and the run's constants, never of how many steps this session has run, so a
  resumed run acts at exactly the steps an uninterrupted one does (a first step that is a log
  point, an epoch end or the last step is not special).
* ``action(loop)`` does the work on the :class:`LoopState` (the step, the device state, the
  metric sums, the clocks, the stop reason).

After each step the loop runs, in order: :class:`LogProgress` (every ``log_every_steps`` and at
epoch ends), :class:`RecordEpoch` (epoch ends: the train record, the test evaluation every
``eval_every_epochs`` and at the end), :class:`KeepBest` (epoch ends with a fresh test
evaluation: the best checkpoint by ``best.metric``), :class:`SaveCheckpoint` (every
``checkpoint.every_steps``, else at epoch ends, and at the end) and :class:`CheckStop` (every
step: a signal). Host syncs happen only inside the first four, i.e. at log points, epoch ends
and saves; the non-finite guard is read there (:meth:`LoopState.check_finite`), never per step.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.train.optim import LossScaleState
from cnnjax.train.steps import TRAIN_METRICS
from cnnjax.train.workdir import write_json_atomic

__all__ = [
    "BEST_METRICS",
    "CheckStop",
    "Every",
    "KeepBest",
    "LogProgress",
    "LoopState",
    "MetricSums",
    "RecordEpoch",
    "SaveCheckpoint",
    "all_finite",
    "averages",
    "describe_best",
    "is_better",
]

# best.metric → whether larger is better ("max") or smaller ("min"); "none" keeps no best.
BEST_METRICS = {
    "test_accuracy": "max",
    "test_loss": "min",
    "test_mean_iou": "max",
    "test_pixel_accuracy": "max",
}


@dataclasses.dataclass(frozen=True)
class Every:
    """When an action runs after ``step``: every ``steps`` steps, at the end of every
    ``epochs``-th epoch, and always at the last step (``total_steps``)."""

    steps_per_epoch: int
    total_steps: int
    steps: int | None = None
    epochs: int | None = None

    def __call__(self, step: int) -> bool:
        if step >= self.total_steps:
            return True
        if self.steps and step % self.steps == 0:
            return True
        if self.epochs and step % self.steps_per_epoch == 0:
            return (step // self.steps_per_epoch) % self.epochs == 0
        return False


@jax.jit
def _add(sums: dict, metrics: dict) -> dict:
    return jax.tree.map(jnp.add, sums, metrics)


@jax.jit
def _first_nonfinite(first: jax.Array, nonfinite: jax.Array, step: jax.Array) -> jax.Array:
    return jnp.where((first < 0) & (nonfinite > 0), step, first)


class MetricSums:
    """Running float32 sums of the train step's metrics, kept on device (adding never waits).

    ``start`` (host floats, e.g. from a checkpoint's meta) seeds the sums, so an epoch resumed
    mid-way sums exactly as an uninterrupted one: the same float32 additions in the same order.
    """

    def __init__(self, start: dict[str, float] | None = None):
        self.reset(start)

    def reset(self, start: dict[str, float] | None = None) -> None:
        self.sums = {k: np.float32((start or {}).get(k, 0.0)) for k in TRAIN_METRICS}

    def add(self, metrics: dict[str, jax.Array]) -> None:
        self.sums = _add(self.sums, {k: metrics[k] for k in TRAIN_METRICS})

    def host(self, driver) -> dict[str, float]:
        """The sums as Python floats (a host sync)."""
        return driver.host_metrics(self.sums)


def averages(sums: dict[str, float]) -> dict[str, float]:
    """Mean loss and accuracy from metric sums (``count`` examples), and the skipped steps."""
    count = max(sums["count"], 1.0)
    return {
        "loss": sums["loss"] / count,
        "accuracy": sums["correct"] / count,
        "skipped": int(sums.get("skipped", 0)),
    }


def all_finite(tree: Any) -> bool:
    """Whether every floating-point leaf of a host pytree is finite."""
    return all(
        bool(np.isfinite(x).all())
        for x in jax.tree.leaves(tree)
        if np.issubdtype(np.asarray(x).dtype, np.floating)
    )


class _Meter:
    """Images and seconds since a mark (for img/s); ``None`` until one timed image exists."""

    def __init__(self, now: float):
        self.mark(now, 0)

    def mark(self, now: float, images: int) -> None:
        self.time, self.images = now, images

    def rate(self, now: float, images: int) -> float | None:
        seconds, count = now - self.time, images - self.images
        return count / seconds if count > 0 and seconds > 0 else None


@dataclasses.dataclass
class LoopState:
    """What the actions read and change.

    ``images`` counts training images since the session's first step completed (that step
    compiles, so throughput starts after it). ``wall_offset`` / ``epoch_offset`` are the seconds
    earlier sessions spent (restored from the checkpoint's meta).
    """

    step: int
    state: Any
    driver: Any
    steps_per_epoch: int
    batch_size: int
    on_nonfinite: str = "stop"
    epoch_sums: MetricSums = dataclasses.field(default_factory=MetricSums)
    window: MetricSums = dataclasses.field(default_factory=MetricSums)
    wall_offset: float = 0.0
    epoch_offset: float = 0.0
    stop_reason: str | None = None  # "signal" | "nonfinite"
    first_nonfinite: int | None = None
    saved_step: int | None = None
    test: dict[str, float] | None = None
    test_step: int | None = None  # the step :attr:`test` was evaluated at
    best: dict | None = None  # KeepBest's record: metric, mode, value, step, epoch
    clock: Callable[[], float] = time.perf_counter

    def __post_init__(self):
        now = self.clock()
        self.start = self.epoch_start = now
        self.images = 0
        self.warm = False
        self.window_meter = _Meter(now)
        self.epoch_meter = _Meter(now)
        self._first = np.int32(-1)  # a host value: combines with any device placement

    def after_step(self, metrics: dict[str, jax.Array]) -> None:
        """Count the step that just ran: sums, the guard, throughput (no host sync but one:
        the session's first step is waited for, so compilation stays out of img/s)."""
        self.step += 1
        self.window.add(metrics)
        self.epoch_sums.add(metrics)
        self._first = _first_nonfinite(self._first, metrics["nonfinite"], self.step)
        if not self.warm:
            jax.block_until_ready(metrics)
            self.warm = True
            now = self.clock()
            self.window_meter.mark(now, 0)
            self.epoch_meter.mark(now, 0)
        else:
            self.images += self.batch_size

    @property
    def epoch(self) -> int:
        """1-based epoch of the step that just ran."""
        return max(1, math.ceil(self.step / self.steps_per_epoch))

    def wall_time(self) -> float:
        """Seconds the run has trained, over all its sessions."""
        return self.wall_offset + self.clock() - self.start

    def epoch_time(self) -> float:
        return self.epoch_offset + self.clock() - self.epoch_start

    def loss_scale(self) -> dict[str, float]:
        """``{"loss_scale": value}`` for a float16 run (a host read), else ``{}``."""
        opt_state = getattr(self.state, "opt_state", None)
        if not isinstance(opt_state, LossScaleState):
            return {}
        return {"loss_scale": self.driver.host_metrics({"s": opt_state.scale})["s"]}

    def check_finite(self) -> bool:
        """Read the device guard (a host sync; call only where one happens anyway). Returns
        ``False`` once a divergence was seen and the policy is ``"stop"`` (then also sets
        :attr:`stop_reason`)."""
        if self.first_nonfinite is None:
            first = int(self.driver.host_metrics({"first": self._first})["first"])
            if first >= 0:
                self.first_nonfinite = first
        if self.first_nonfinite is not None and self.on_nonfinite == "stop":
            self.stop_reason = "nonfinite"
            return False
        return True


class LogProgress:
    """Progress line / tqdm postfix: window-average loss and accuracy, lr, img/s, wall time."""

    def __init__(self, every: Every, progress, lr: Callable[[int], float]):
        self.every, self.progress, self.lr = every, progress, lr

    def __call__(self, loop: LoopState) -> None:
        sums = loop.window.host(loop.driver)
        loop.check_finite()
        now = loop.clock()
        stats = {
            **averages(sums),
            "lr": self.lr(loop.step),
            "images_per_sec": loop.window_meter.rate(now, loop.images),
            "wall_time": loop.wall_time(),
            **loop.loss_scale(),
            "best": describe_best(loop.best),
        }
        self.progress.update(loop.step, loop.epoch, stats)
        loop.window.reset()
        loop.window_meter.mark(now, loop.images)


class RecordEpoch:
    """At an epoch end: write the train record, evaluate every ``eval_every`` epochs and at the
    last step, write the test record, print the epoch line; then start the next epoch's sums."""

    def __init__(
        self,
        every: Every,
        *,
        writer,
        progress,
        evaluate: Callable[[Any], dict[str, float]],
        lr: Callable[[int], float],
        eval_every: int,
        total_steps: int,
    ):
        self.every, self.writer, self.progress = every, writer, progress
        self.evaluate, self.lr = evaluate, lr
        self.eval_every, self.total_steps = max(1, eval_every), total_steps

    def __call__(self, loop: LoopState) -> None:
        sums = loop.epoch_sums.host(loop.driver)
        if not loop.check_finite():
            return  # a diverged epoch is neither recorded nor evaluated
        now = loop.clock()
        epoch, step = loop.epoch, loop.step
        train = {
            **averages(sums),
            "lr": self.lr(step),
            "images_per_sec": loop.epoch_meter.rate(now, loop.images),
            "epoch_time": loop.epoch_time(),
            "wall_time": loop.wall_time(),
            **loop.loss_scale(),
        }
        self.writer.write({"step": step, "epoch": epoch, "split": "train", **train})
        line = f"epoch {epoch} step {step}: train loss {train['loss']:.4f} "
        line += f"accuracy {train['accuracy']:.2%}"
        if step >= self.total_steps or epoch % self.eval_every == 0:
            loop.test, loop.test_step = self.evaluate(loop.state), step
            self.writer.write({"step": step, "epoch": epoch, "split": "test", **loop.test})
            line += f" | test loss {loop.test['loss']:.4f} accuracy {loop.test['accuracy']:.2%}"
        self.progress.message(f"{line} ({train['epoch_time']:.1f}s)")
        loop.epoch_sums.reset()
        loop.epoch_start, loop.epoch_offset = loop.clock(), 0.0
        loop.epoch_meter.mark(loop.epoch_start, loop.images)


def is_better(mode: str, value: float, best: float | None) -> bool:
    """Whether ``value`` beats ``best`` (``None``: nothing yet); a tie is not better, and a value
    that is not finite never is."""
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value > best if mode == "max" else value < best


def describe_best(best: dict | None) -> str | None:
    """``"best: epoch 3, test_accuracy 97.50%"`` for a :class:`KeepBest` record (``None``: none)."""
    if not best:
        return None
    value = best["value"]
    shown = f"{value:.2%}" if best["mode"] == "max" and 0 <= value <= 1 else f"{value:.4f}"
    return f"best: epoch {best['epoch']}, {best['metric']} {shown}"


class KeepBest:
    """At an epoch end with a fresh test evaluation: if ``metric`` (a key of
    :data:`BEST_METRICS`) beats the best so far, save the state into ``checkpointer`` (the
    ``keep=1`` one under ``WORKDIR/checkpoints_best``) with the record in its meta, then write
    ``best.json`` atomically; :attr:`LoopState.best` is the record.

    Never a non-finite state, nor a non-finite value, nor anything after an unobserved
    divergence (``on_nonfinite="stop"``). A finite divergence (a loss that explodes without
    overflowing) leaves the pre-divergence best in place, whatever keep-N rotates out.
    A best checkpoint at or after this step (saved by a session that was rolled back) is
    replaced, so the directory always holds the record's state.
    """

    def __init__(self, every: Every, *, metric: str, checkpointer, path, progress, meta: dict):
        if metric not in BEST_METRICS:
            raise ValueError(
                f"best.metric must be one of {', '.join([*BEST_METRICS, 'none'])}, got {metric!r}"
            )
        self.every, self.metric, self.mode = every, metric, BEST_METRICS[metric]
        self.checkpointer, self.path, self.progress, self.meta = checkpointer, path, progress, meta

    def __call__(self, loop: LoopState) -> None:
        if loop.test_step != loop.step or not loop.check_finite():
            return
        value = loop.test.get(self.metric.removeprefix("test_"))
        if value is None:
            raise ValueError(f"best.metric={self.metric}: the test evaluation has no such value")
        best = loop.best["value"] if loop.best else None
        if not is_better(self.mode, float(value), best):
            return
        host = loop.driver.host_state(loop.state)
        if not all_finite(host):
            return
        record = {
            "metric": self.metric,
            "mode": self.mode,
            "value": float(value),
            "step": loop.step,
            "epoch": loop.epoch,
        }
        for stale in self.checkpointer.all_steps():
            if stale >= loop.step:
                self.checkpointer.delete(stale)
        self.checkpointer.save(loop.step, host, {**self.meta, "step": loop.step, "best": record})
        self.checkpointer.wait()
        if self.checkpointer.primary:
            checkpoint = str(self.checkpointer.path(loop.step))
            write_json_atomic(self.path, {**record, "checkpoint": checkpoint})
        loop.best = record
        self.progress.message(f"new {describe_best(record)} (step {loop.step})")


class SaveCheckpoint:
    """Save the state with the meta a resume needs (mid-epoch sums, clocks); never a state
    that is not finite, nor any state after an unobserved divergence under ``"stop"``."""

    def __init__(self, every: Every, *, checkpointer, meta: dict):
        self.every, self.checkpointer, self.meta = every, checkpointer, meta

    def __call__(self, loop: LoopState) -> None:
        if not loop.check_finite():
            return
        host = loop.driver.host_state(loop.state)
        if not all_finite(host):  # cannot happen through train_step's guard; never saved anyway
            if loop.first_nonfinite is None:
                loop.first_nonfinite = loop.step
            loop.stop_reason = "nonfinite"
            return
        meta = {
            **self.meta,
            "step": loop.step,
            "epoch": loop.step / loop.steps_per_epoch,
            "wall_time": loop.wall_time(),
        }
        if loop.step % loop.steps_per_epoch:  # mid-epoch: carry the epoch so far
            meta["epoch_sums"] = loop.epoch_sums.host(loop.driver)
            meta["epoch_time"] = loop.epoch_time()
        self.checkpointer.save(loop.step, host, meta)
        loop.saved_step = loop.step


class CheckStop:
    """Every step: a SIGTERM / SIGINT received since the last step asks the loop to stop."""

    def __init__(self, request):
        self.request = request

    def every(self, step: int) -> bool:
        return True

    def __call__(self, loop: LoopState) -> None:
        if self.request.requested and loop.stop_reason is None:
            loop.stop_reason = "signal"
