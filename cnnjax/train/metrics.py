"""Metrics: ``WORKDIR/metrics.jsonl``, optional TensorBoard events, and progress output.

Each evaluation appends one JSON object per split to ``metrics.jsonl``:
``{"step", "epoch", "split", "loss", "accuracy", "images_per_sec", "time"}`` (``split`` is
``"train"`` for the running averages over the epoch's training batches, ``"test"`` for the
evaluation). TensorBoard event files are written too when ``tensorboardX`` is importable.
Progress is a tqdm bar on a terminal and plain lines every ``log_every`` steps otherwise.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time

__all__ = ["MetricsWriter", "Progress", "read_metrics"]


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
        record = {"time": time.time(), **record}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key in ("loss", "accuracy", "images_per_sec"):
                if record.get(key) is not None:
                    self._tb.add_scalar(f"{record['split']}/{key}", record[key], record["step"])
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
    """All records of ``WORKDIR/metrics.jsonl`` (``[]`` if there is none)."""
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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

            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, step: int, epoch: int, stats: dict[str, float] | None) -> None:
        """Advance to ``step``; ``stats`` (loss, accuracy, img/s) when freshly computed."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            if stats:
                self._bar.set_postfix(
                    epoch=epoch,
                    loss=f"{stats['loss']:.4f}",
                    acc=f"{stats['accuracy']:.2%}",
                    img_s=f"{stats['images_per_sec']:.0f}",
                )
        elif stats:
            print(
                f"epoch {epoch} step {step}/{self.total} loss {stats['loss']:.4f} "
                f"accuracy {stats['accuracy']:.2%} {stats['images_per_sec']:.0f} img/s",
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
