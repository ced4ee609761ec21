"""Plots as PNG files (matplotlib, Agg backend: no display needed).

* :func:`plot_curves` — loss and accuracy against step or epoch for the train (dashed) and test
  (solid) records of one or more runs' ``metrics.jsonl``; several workdirs overlay, one colour per
  run (e.g. ``impl="custom"`` vs ``"xla"``).
* :func:`plot_confusion` — a ``K × K`` confusion matrix (rows: true class, columns: predicted).
* :func:`plot_filters` — first-layer kernels ``(kh, kw, C_in, C_out)`` as a grid of images.
* :func:`plot_edges`, :func:`plot_feature_maps`, :func:`plot_deconv`,
  :func:`plot_receptive_field` — the ``cnnjax viz`` pictures (the numbers come from
  :mod:`cnnjax.analysis`; the command is
  :mod:`cnnjax.cli.viz`).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

import numpy as np

__all__ = [
    "field_box",
    "plot_confusion",
    "plot_curves",
    "plot_deconv",
    "plot_edges",
    "plot_feature_maps",
    "plot_filters",
    "plot_receptive_field",
    "plot_segmentation",
]


def __getattr__(name: str):
    """``main(argv)`` and ``build_parser()`` of the ``cnnjax viz`` command, kept for their old
    callers; looked up by name (PEP 562) so that this module does not import the command line,
    which imports it."""
    if name in ("main", "build_parser"):
        import importlib

        cli = importlib.import_module("cnnjax.cli")
        return cli.entry_point("viz") if name == "main" else lambda: cli.command_parser("viz")
    raise AttributeError(f"module 'cnnjax.viz' has no attribute {name!r}")


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


# --------------------------------------------------------------------------------------------
# Seeing inside a CNN: `cnnjax viz edges | filters | features | deconv | receptive-field`
# --------------------------------------------------------------------------------------------

EDGE_IMAGE = np.repeat([[10.0] * 3 + [0.0] * 3], 6, axis=0)  # bright left half, dark right
EDGE_FILTER = np.array([[1.0, 0.0, -1.0]] * 3)  # vertical edge detector: columns 1, 0, -1


def _matrix(ax, values: np.ndarray, title: str) -> None:
    """A small matrix as a grey image with its numbers printed in the cells."""
    ax.imshow(values, cmap="gray", vmin=min(values.min(), 0), vmax=max(values.max(), 1e-9))
    span = np.ptp(values) or 1.0
    for (i, j), v in np.ndenumerate(values):
        dark = (v - values.min()) / span < 0.5
        ax.text(j, i, f"{v:g}", ha="center", va="center", color="white" if dark else "black")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)


def plot_edges(output: str | os.PathLike) -> tuple[pathlib.Path, np.ndarray]:
    """The seeds' edge example: 6×6 image ⊛ 3×3 vertical-edge filter = 4×4 map whose two middle
    columns light up (30) at the boundary and stay 0 elsewhere. Returns the PNG and the map."""
    from cnnjax.ops import conv

    image = EDGE_IMAGE.astype(np.float32)
    kernel = EDGE_FILTER.astype(np.float32)
    result = np.asarray(conv(image[None, :, :, None], kernel[:, :, None, None]))[0, :, :, 0]
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(11, 4), gridspec_kw={"width_ratios": [6, 3, 4]})
    _matrix(axes[0], image, "input 6×6")
    _matrix(axes[1], kernel, "filter 3×3")
    _matrix(axes[2], result, "output 4×4 (VALID conv)")
    fig.suptitle("vertical edge detection: the edge shows as the bright middle columns")
    return _save(fig, output), result


def _save(fig, output) -> pathlib.Path:
    path = pathlib.Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def _show_image(ax, image: np.ndarray, mean=None, std=None) -> None:
    """A normalised ``(H, W, C)`` image, un-normalised for display."""
    img = np.asarray(image, np.float32)
    if mean is not None:
        img = img * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    img = (img - img.min()) / (np.ptp(img) or 1.0)
    ax.imshow(
        img if img.shape[-1] == 3 else img[..., 0], cmap=None if img.shape[-1] == 3 else "gray"
    )
    ax.set_xticks([])
    ax.set_yticks([])


def plot_feature_maps(
    maps: dict[str, np.ndarray],
    image: np.ndarray,
    output: str | os.PathLike,
    *,
    mean=None,
    std=None,
    max_channels: int = 16,
) -> pathlib.Path:
    """One row per layer: the input, then up to ``max_channels`` channels of ``(H', W', C')``."""
    plt = _pyplot()
    cols = 1 + max_channels
    fig, axes = plt.subplots(len(maps), cols, figsize=(cols * 1.1, len(maps) * 1.3), squeeze=False)
    for row, (path, fmap) in enumerate(maps.items()):
        _show_image(axes[row, 0], image, mean, std)
        axes[row, 0].set_title(path, fontsize=7, loc="left")
        fmap = fmap.reshape(*fmap.shape[:2], -1) if fmap.ndim >= 3 else fmap[None, None]
        for c, ax in enumerate(axes[row, 1:]):
            ax.axis("off")
            if c < fmap.shape[-1]:
                ax.imshow(fmap[..., c], cmap="viridis")
                ax.set_title(f"{fmap.shape[0]}×{fmap.shape[1]} c{c}", fontsize=6)
    return _save(fig, output)


def field_box(row, position) -> list[tuple[float, float]]:
    """``[lo, hi)`` per spatial dim of the theoretical receptive field of the unit at
    ``position`` of ``row``'s map: ``start + position * jump ± size / 2`` (the row's
    ``rf_start``, ``rf_jump``, ``rf_size`` from :mod:`cnnjax.analysis`)."""
    return [
        (start + p * jump - size / 2, start + p * jump + size / 2)
        for start, jump, size, p in zip(row.rf_start, row.rf_jump, row.rf_size, position)
    ]


def plot_deconv(
    results: list[dict],
    images: np.ndarray,
    row,
    output: str | os.PathLike,
    *,
    mean=None,
    std=None,
) -> pathlib.Path:
    """Per projected activation: the deconvnet projection, and the input patch under the unit's
    theoretical receptive field (box on the input)."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(results), 3, figsize=(7.5, 2.5 * len(results)), squeeze=False)
    for ax_row, r in zip(axes, results, strict=True):
        image = images[r["image"]]
        (y0, y1), (x0, x1) = field_box(row, r["position"])
        _show_image(ax_row[0], image, mean, std)
        ax_row[0].add_patch(
            _pyplot().Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color="red")
        )
        ax_row[0].set_title(f"image {r['image']}, unit {r['position']}", fontsize=8)
        h, w = image.shape[:2]
        crop = (
            slice(max(int(y0), 0), min(int(np.ceil(y1)), h)),
            slice(max(int(x0), 0), min(int(np.ceil(x1)), w)),
        )
        _show_image(ax_row[1], image[crop], mean, std)
        ax_row[1].set_title("input patch (RF)", fontsize=8)
        proj = r["projection"]
        _show_image(ax_row[2], proj if proj.shape[-1] == 3 else proj[..., :1])
        ax_row[2].set_title(f"deconv c{r['channel']} ({r['value']:.2g})", fontsize=8)
    fig.suptitle(f"{row.path}: strongest activations projected to pixels", fontsize=9)
    return _save(fig, output)


def plot_receptive_field(
    image: np.ndarray,
    erf: np.ndarray,
    row,
    position: Sequence[int],
    output: str | os.PathLike,
    *,
    mean=None,
    std=None,
) -> pathlib.Path:
    """The input with the theoretical RF box of one unit, and the effective RF heat map."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.5))
    (y0, y1), (x0, x1) = field_box(row, position)
    _show_image(axes[0], image, mean, std)
    axes[1].imshow(erf / (erf.max() or 1.0), cmap="hot")
    for ax in axes:
        ax.add_patch(
            plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color="cyan", lw=2)
        )
        ax.set_xlim(-0.5, image.shape[1] - 0.5)
        ax.set_ylim(image.shape[0] - 0.5, -0.5)
    size = "×".join(str(s) for s in row.rf_size)
    jump = "×".join(str(s) for s in row.rf_jump)
    axes[0].set_title(
        f"{row.path} unit {tuple(position)}: theoretical RF {size}, jump {jump}", fontsize=8
    )
    axes[1].set_title("effective RF |d unit / d input| (Luo et al. 2016)", fontsize=8)
    return _save(fig, output)


def plot_segmentation(
    images: np.ndarray,
    labels: np.ndarray,
    predictions: np.ndarray,
    output: str | os.PathLike,
    *,
    num_classes: int,
    title: str = "",
) -> pathlib.Path:
    """Per example a row: the image, the ground-truth mask, the predicted mask (same colours)."""
    plt = _pyplot()
    rows = len(images)
    fig, axes = plt.subplots(rows, 3, figsize=(6, 2 * rows), squeeze=False)
    cmap = plt.get_cmap("tab20", max(num_classes, 2))
    for row, (image, label, pred) in enumerate(zip(images, labels, predictions, strict=True)):
        _show_image(axes[row, 0], image)
        for ax, mask, name in (
            (axes[row, 1], label, "ground truth"),
            (axes[row, 2], pred, "predicted"),
        ):
            ax.imshow(
                mask, cmap=cmap, vmin=0, vmax=max(num_classes - 1, 1), interpolation="nearest"
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, output)
