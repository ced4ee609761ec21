"""The training session: open the workdir, resume, step, evaluate, checkpoint, report.

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

:func:`build_run` (:mod:`cnnjax.train.run`) builds what a run needs from its configuration;
:func:`evaluate` (:mod:`cnnjax.train.evaluation`) restores a run's latest (or best) checkpoint
and scores it on a split, with predictions for a confusion matrix. Both are re-exported here.

The task (``config.task``, default the model's registry task; :mod:`cnnjax.train.tasks`) gives
the loss, the metric sums and the test record: for ``segmentation`` labels are ``(N, H, W)``
masks, cropped and flipped with their images, ``accuracy`` is the pixel accuracy, and every test
record adds ``pixel_accuracy`` and ``mean_iou`` (the final one also per-class ``iou``, ``null``
for a class absent from labels and predictions). The loop itself knows no task.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import shutil
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections

from cnnjax.data.classes import save_class_names
from cnnjax.data.pipeline import prefetch_to_device
from cnnjax.train.actions import (
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
from cnnjax.train.evaluation import EvalResult, evaluate, evaluate_state
from cnnjax.train.metrics import MetricsWriter, Progress
from cnnjax.train.parallel import initialize_distributed
from cnnjax.train.run import Run, build_run
from cnnjax.train.signals import StopRequest
from cnnjax.train.state import TrainState
from cnnjax.train.workdir import (
    check_run,
    finished_test_metrics,
    load_workdir_config,
    lock_workdir,
    preflight,
)

# EvalResult, Run, build_run, evaluate and load_workdir_config are re-exported from the modules
# they moved to (cnnjax.train.run, .evaluation, .workdir).
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
        with StopRequest() as stop:
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
            evaluate=lambda state: evaluate_state(run, state, per_class=loop.step >= total),
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
        test = evaluate_state(session.run, loop.state)
    if interrupted:
        session.say(
            f"interrupted at step {loop.step}/{total}; checkpoint {ckpt_path}; "
            "run the same command again to resume"
        )
    else:
        _say_best(session, loop.best)
        session.say(
            f"test accuracy {test['accuracy']:.2%} ({session.run.task.describe(test)}, "
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
        test = evaluate_state(session.run, loop.state)
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
