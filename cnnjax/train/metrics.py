"""Metrics: ``WORKDIR/metrics.jsonl``, optional TensorBoard events, and progress output.

Each epoch appends one JSON object per split to ``metrics.jsonl``:
``{"step", "epoch", "split", "loss", "accuracy", "images_per_sec", "time", ...}`` (``split`` is
``"train"`` for the averages over the epoch's training batches, with ``lr`` (the schedule's
learning rate at the epoch's last step), ``skipped`` (steps whose update a non-finite loss or
gradient skipped), ``epoch_time`` (seconds), ``wall_time`` (seconds since the run started,
over all its sessions) and, for float16 runs, ``loss_scale``; ``"test"`` for the evaluation,
with ``eval_time``). ``time`` is the Unix
time of writing. On resume :meth:`MetricsWriter.rollback` drops the records written after the
restored checkpoint, so an interrupted run ends with exactly one record per ``(epoch, split)``.
TensorBoard event files are written too when ``tensorboardX`` is importable.
Progress is a tqdm bar on a terminal and plain lines every ``log_every`` steps otherwise.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import sys
import time

__all__ = ["MetricsWriter", "Progress", "format_stats", "read_metrics"]


class MetricsWriter:
    """Append records to ``WORKDIR/metrics.jsonl`` (process 0 only: ``enabled=False`` elsewhere)."""

    def __init__(self, workdir: str | os.PathLike, *, enabled: bool = True):
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self.enabled = enabled
        self._tb = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                pass
            else:
                self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        # A non-finite value (the test loss of a model trained with skipped updates) is written
        # as null: metrics.jsonl stays standard JSON.
        record = {"time": time.time(), **{k: _finite_or_none(v) for k, v in record.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key in ("loss", "accuracy", "images_per_sec"):
                if record.get(key) is not None:
                    self._tb.add_scalar(f"{record['split']}/{key}", record[key], record["step"])
            self._tb.flush()

    def rollback(self, step: int) -> int:
        """Keep only records with ``record["step"] <= step``, one per ``(epoch, split)`` (the
        last), dropping a torn last line; rewrite the file atomically. Returns records dropped.

        Called on resume with the restored checkpoint's step: records written after it (by a
        session killed before its checkpoint committed) are written again by the rerun.
        """
        if not self.enabled or not self.path.exists():
            return 0
        lines = self.path.read_text().splitlines()
        kept: dict[tuple, dict] = {}
        for record in _parse_lines(lines):
            if record.get("step", math.inf) <= step:
                kept.pop((record.get("epoch"), record.get("split")), None)
                kept[(record.get("epoch"), record.get("split"))] = record
        dropped = sum(1 for line in lines if line.strip()) - len(kept)
        if dropped:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept.values()))
            os.replace(tmp, self.path)
        return dropped

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _finite_or_none(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _parse_lines(lines: list[str]) -> list[dict]:
    """JSON records of ``lines``; a line torn by a kill mid-write is skipped."""
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
    """All records of ``WORKDIR/metrics.jsonl`` (``[]`` if there is none)."""
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return _parse_lines(path.read_text().splitlines())


def format_stats(stats: dict) -> str:
    """``loss 0.1234 accuracy 97.50% lr 1.00e-03 1234 img/s 12.3s`` from whatever ``stats``
    holds; a missing or ``None`` value (no timed images yet, e.g. the first step after a
    (re)start) is left out rather than formatted."""
    formats = (
        ("loss", "loss {:.4f}"),
        ("accuracy", "accuracy {:.2%}"),
        ("lr", "lr {:.3g}"),
        ("skipped", "skipped {:.0f}"),
        ("loss_scale", "loss scale {:.0f}"),
        ("images_per_sec", "{:.0f} img/s"),
        ("wall_time", "{:.1f}s"),
        ("best", "| {}"),
    )
    parts = []
    for key, text in formats:
        value = stats.get(key)
        if value is None or (key == "skipped" and not value):
            continue
        parts.append(text.format(value))
    return " ".join(parts)


class Progress:
    """A tqdm bar on a TTY, plain ``print`` lines every ``log_every`` steps otherwise."""

    def __init__(
        self, total: int, initial: int, *, log_every: int, enabled: bool = True, stream=None
    ):
        self.stream = stream or sys.stdout
        self.enabled = enabled
        self.log_every = max(1, log_every)
        self.total = total
        self._bar = None
        if enabled and self.stream.isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total, initial=initial, unit="step", dynamic_ncols=True, leave=False
            )

    def update(self, step: int, epoch: int, stats: dict[str, float] | None) -> None:
        """Advance to ``step``; ``stats`` (see :func:`format_stats`) when freshly computed."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            if stats:
                self._bar.set_postfix_str(f"epoch {epoch} {format_stats(stats)}")
        elif stats:
            print(
                f"epoch {epoch} step {step}/{self.total} {format_stats(stats)}",
                file=self.stream,
                flush=True,
            )

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
