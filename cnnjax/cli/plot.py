"""``cnnjax plot``: loss and accuracy curves of one or more runs."""

from __future__ import annotations

import argparse

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]

HELP = "loss/accuracy curves of one or more runs as a PNG"
DESCRIPTION = (
    "Loss and accuracy curves from each WORKDIR's metrics.jsonl: one colour per run, train "
    "dashed, test solid."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``plot`` arguments."""
    parser.add_argument("workdirs", nargs="+", metavar="WORKDIR", help="cnnjax run directories")
    parser.add_argument("--output", help="PNG path (default: WORKDIR/curves.png)")
    parser.add_argument(
        "--x-axis",
        choices=("step", "epoch"),
        default="step",
        help="horizontal axis: optimiser steps or epochs (default: step)",
    )


def run(args: argparse.Namespace) -> int:
    """Write the PNG and print its path."""
    from cnnjax.viz import plot_curves

    print(plot_curves(args.workdirs, args.output, x_axis=args.x_axis))
    return 0
