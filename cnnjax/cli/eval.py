"""``cnnjax eval``: score a run's checkpoint; a confusion matrix (or masks) PNG."""

from __future__ import annotations

import argparse
import pathlib

from cnnjax.cli.common import slug

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]

HELP = "evaluate a run's latest (or best) checkpoint; writes a confusion matrix PNG"
DESCRIPTION = (
    "Score WORKDIR's latest checkpoint (or, with --best, the best one kept in "
    "WORKDIR/checkpoints_best) on the test split of its data set."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``eval`` arguments."""
    parser.add_argument("workdir", help="a cnnjax training run directory")
    parser.add_argument(
        "--dataset", help="evaluate on another data set with the same classes (default: the run's)"
    )
    parser.add_argument("--step", type=int, help="checkpoint step (default: latest)")
    parser.add_argument(
        "--skip-bad-files",
        action="store_true",
        help="folder: data: skip unreadable images (with a count) instead of failing",
    )
    parser.add_argument(
        "--checkpoint",
        choices=("latest", "best"),
        default="latest",
        help="latest: WORKDIR/checkpoints; best: the best test evaluation's state, "
        "WORKDIR/checkpoints_best (default: latest)",
    )
    parser.add_argument(
        "--best",
        dest="checkpoint",
        action="store_const",
        const="best",
        help="the same as --checkpoint best",
    )
    parser.add_argument(
        "--output",
        help="confusion matrix PNG (default: WORKDIR/confusion_[DATASET_]test_stepSTEP.png; "
        "segmentation runs: masks PNG WORKDIR/masks_[DATASET_]test_stepSTEP.png)",
    )


def run(args: argparse.Namespace) -> int:
    """Evaluate, print one line of numbers, write the picture."""
    from cnnjax.data import load_class_names
    from cnnjax.train import evaluate, load_workdir_config
    from cnnjax.viz import plot_confusion

    result = evaluate(
        args.workdir,
        dataset=args.dataset,
        step=args.step,
        checkpoint=args.checkpoint,
        progress=True,
        skip_bad_files=args.skip_bad_files,
    )
    if result.task == "segmentation":
        return _segmentation(args, result)
    output = pathlib.Path(args.output or _picture_path(args, "confusion", result.step))
    dataset = args.dataset or load_workdir_config(args.workdir).dataset
    names = load_class_names(args.workdir)
    names = names if names and len(names) == len(result.confusion) else None
    plot_confusion(
        result.confusion,
        output,
        class_names=names,
        title=f"{dataset}, test split, step {result.step}",
    )
    errors = result.count - round(result.accuracy * result.count)
    which = "best checkpoint, " if args.checkpoint == "best" else ""
    print(
        f"{which}step {result.step}: test accuracy {result.accuracy:.2%} ({errors} errors in "
        f"{result.count}), loss {result.loss:.4f}; confusion matrix {output}"
    )
    return 0


def _segmentation(args: argparse.Namespace, result) -> int:
    """Print pixel accuracy, mean and per-class IoU; write image / truth / predicted masks."""
    from cnnjax.data import load_class_names
    from cnnjax.train import load_workdir_config
    from cnnjax.viz import plot_segmentation

    dataset = args.dataset or load_workdir_config(args.workdir).dataset
    output = pathlib.Path(args.output or _picture_path(args, "masks", result.step))
    shown = len(result.images)
    plot_segmentation(
        result.images,
        result.labels[:shown],
        result.predictions[:shown],
        output,
        num_classes=len(result.confusion),
        title=f"{dataset}, test split, step {result.step}",
    )
    names = load_class_names(args.workdir) or []
    names = names if len(names) == len(result.iou) else [str(i) for i in range(len(result.iou))]
    per_class = ", ".join(f"{n} {x:.3f}" for n, x in zip(names, result.iou, strict=True))
    print(
        f"step {result.step}: test pixel accuracy {result.accuracy:.2%} ({result.count} "
        f"pixels), mean IoU {result.mean_iou:.4f}, loss {result.loss:.4f}; masks {output}\n"
        f"per-class IoU: {per_class}"
    )
    return 0


def _picture_path(args: argparse.Namespace, kind: str, step: int) -> pathlib.Path:
    """``WORKDIR/KIND_test_stepN.png``, or ``KIND_DATASET_test_stepN.png`` for another data
    set (so that evaluating on it does not overwrite the run's own picture)."""
    tag = f"{slug(args.dataset)}_" if args.dataset else ""
    return pathlib.Path(args.workdir) / f"{kind}_{tag}test_step{step}.png"
