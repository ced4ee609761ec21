"""Plots as PNG files (matplotlib, Agg backend: no display needed).

* :func:`plot_curves` — loss and accuracy against step or epoch for the train (dashed) and test
  (solid) records of one or more runs' ``metrics.jsonl``; several workdirs overlay, one colour per
  run (e.g. ``impl="custom"`` vs ``"xla"``).
* :func:`plot_confusion` — a ``K × K`` confusion matrix (rows: true class, columns: predicted).
* :func:`plot_filters` — first-layer kernels ``(kh, kw, C_in, C_out)`` as a grid of images.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

import numpy as np

__all__ = ["plot_confusion", "plot_curves", "plot_filters"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_curves(
    workdirs: str | os.PathLike | Sequence[str | os.PathLike],
    output: str | os.PathLike | None = None,
    *,
    x_axis: str = "step",
) -> pathlib.Path:
    """Loss and accuracy curves from ``metrics.jsonl``; returns the PNG path.

    Each run gets one colour; its train curve is dashed and its test curve solid.
    ``x_axis`` is ``"step"`` (optimiser steps) or ``"epoch"`` (the record's epoch; a train record
    logged mid-epoch sits at its fractional epoch ``step / steps_per_epoch``).
    ``output`` defaults to ``WORKDIR/curves.png`` (the first workdir's).
    """
    from cnnjax.train.metrics import read_metrics

    if isinstance(workdirs, str | os.PathLike):
        workdirs = [workdirs]
    workdirs = [pathlib.Path(w) for w in workdirs]
    if x_axis not in ("step", "epoch"):
        raise ValueError(f'x_axis must be "step" or "epoch", got {x_axis!r}')
    plt = _pyplot()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    found = False
    for index, workdir in enumerate(workdirs):
        records = read_metrics(workdir)
        if not records:
            continue
        found = True
        label = workdir.name if len(workdirs) > 1 else ""
        x = _epoch_axis(records) if x_axis == "epoch" else (lambda r: r["step"])
        for split, style in (("train", "--"), ("test", "-")):
            rows = sorted((r for r in records if r["split"] == split), key=lambda r: r["step"])
            if not rows:
                continue
            xs = [x(r) for r in rows]
            kw = dict(
                color=colors[index % len(colors)], marker=".", label=f"{label} {split}".strip()
            )
            ax_loss.plot(xs, [r["loss"] for r in rows], style, **kw)
            ax_acc.plot(xs, [100 * r["accuracy"] for r in rows], style, **kw)
    if not found:
        plt.close(fig)
        raise FileNotFoundError(
            f"no metrics.jsonl records under {', '.join(map(str, workdirs))}: train first"
        )
    ax_loss.set(xlabel=x_axis, ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel=x_axis, ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = pathlib.Path(output) if output else workdirs[0] / "curves.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _epoch_axis(records: list[dict]):
    """``record -> epoch``: steps per epoch from the end-of-epoch test records (else the epoch)."""
    ends = sorted({(r["epoch"], r["step"]) for r in records if r["split"] == "test"})
    per_epoch = ends[-1][1] / ends[-1][0] if ends and ends[-1][0] else None
    return lambda r: r["step"] / per_epoch if per_epoch else r["epoch"]


def plot_confusion(
    confusion: np.ndarray,
    output: str | os.PathLike,
    *,
    class_names: Sequence[str] | None = None,
    title: str = "confusion matrix",
) -> pathlib.Path:
    """Save a ``K × K`` confusion matrix (counts; rows true, columns predicted) as a PNG."""
    confusion = np.asarray(confusion)
    k = confusion.shape[0]
    names = list(class_names) if class_names else [str(i) for i in range(k)]
    plt = _pyplot()
    size = min(12, 2 + 0.5 * k)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(confusion, cmap="Blues")
    if k <= 20:
        threshold = confusion.max() / 2 if confusion.size else 0
        for i in range(k):
            for j in range(k):
                color = "white" if confusion[i, j] > threshold else "black"
                ax.text(j, i, int(confusion[i, j]), ha="center", va="center", color=color)
        ax.set_xticks(range(k), names, rotation=45 if k > 10 else 0)
        ax.set_yticks(range(k), names)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    path = pathlib.Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_filters(kernel: np.ndarray, output: str | os.PathLike) -> pathlib.Path:
    """First-layer kernels ``(kh, kw, C_in, C_out)`` as a grid (RGB if ``C_in == 3``)."""
    kernel = np.asarray(kernel, np.float32)
    cin, cout = kernel.shape[2:]
    cols = int(np.ceil(np.sqrt(cout)))
    rows = int(np.ceil(cout / cols))
    plt = _pyplot()
    fig, axes = plt.subplots(rows, cols, figsize=(cols, rows), squeeze=False)
    for idx, ax in enumerate(axes.flat):
        ax.axis("off")
        if idx >= cout:
            continue
        f = kernel[..., idx]
        f = (f - f.min()) / (np.ptp(f) or 1.0)
        ax.imshow(f if cin == 3 else f.mean(-1), cmap=None if cin == 3 else "gray")
    fig.tight_layout()
    path = pathlib.Path(output)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
