"""``cnnjax bench SUITE``: benchmarks measured side by side in one process.

    cnnjax bench ops [--batch 8] [--repeats 15] [--json out.json]
    cnnjax bench train MODEL [--batch 128] [--steps 10] [--dtype float32,bfloat16] [--tiny]
    cnnjax bench data DATASET [--batch 128] [--steps 20] [--padding 4] [--workers 0,2] [--tiny]

One module per suite (:mod:`cnnjax.bench.ops`, :mod:`cnnjax.bench.train`,
:mod:`cnnjax.bench.data`), each with ``run_from_args(args)``, imported only when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pathlib

from cnnjax.cli.common import comma_list, int_at_least

__all__ = ["DESCRIPTION", "HELP", "SUITES", "add_arguments", "check_outputs", "run"]

HELP = "benchmarks: ops, train (img/s per model), data (pipeline img/s)"
DESCRIPTION = "Benchmarks measured side by side in one process (medians, ratios)."

_POSITIVE, _COUNT = int_at_least(1), int_at_least(0)

# suite: (help, description)
SUITES = {
    "ops": (
        "per-op forward and forward+backward time, custom VJP vs xla",
        "Median forward and forward+backward times of every op, custom VJP vs XLA autodiff "
        "(float32, jitted, timed in alternation). Times in ms; ratio = custom / xla (< 1: the "
        "hand-written rule is faster).",
    ),
    "train": (
        "training-step throughput (img/s) of a model on synthetic data",
        "Training-step throughput of MODEL on synthetic data: custom vs xla ops, float32 and "
        "bfloat16 compute, and the PyTorch twin (CIFAR ResNets, LeNet-5) when torch is "
        "installed; SGD + momentum 0.9 + weight decay 5e-4. Reports medians: img/s, ms/step, "
        "compile time (s), compiled memory (MiB), custom/xla and jax/torch step-time ratios.",
    ),
    "data": (
        "input-pipeline throughput (img/s) with the training augmentation",
        "Input pipeline alone: batches of DATASET with random crop (zero padding) and flip, on "
        "the host (NumPy) and on the device (jitted), copied to the device, with each --workers "
        "count of grain reader threads. Reports medians: img/s and ms per batch.",
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One sub-command per suite."""
    suites = parser.add_subparsers(dest="suite", metavar="SUITE", required=True)
    adders = {"ops": _ops_arguments, "train": _train_arguments, "data": _data_arguments}
    for name, (text, description) in SUITES.items():
        p = suites.add_parser(name, help=text, description=description)
        adders[name](p)
        p.set_defaults(bench_module=name)


def _ops_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", type=_POSITIVE, default=8, help="batch size N (default 8)")
    p.add_argument(
        "--repeats", type=_POSITIVE, default=15, help="timed calls; medians (default 15)"
    )
    p.add_argument("--only", help="run only workloads whose name contains this (default: all)")
    p.add_argument(
        "--json", metavar="PATH", help="also write the results as JSON to PATH (default: none)"
    )


def _train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="registered model name (see `cnnjax models`)")
    _timing_arguments(p, batch=128, steps=10, what="step")
    p.add_argument(
        "--impl",
        type=comma_list(("custom", "xla"), text=True),
        default="custom,xla",
        help="comma list of custom, xla (default custom,xla)",
    )
    p.add_argument(
        "--dtype",
        type=comma_list(("float32", "bfloat16"), text=True),
        default="float32,bfloat16",
        help="comma list of compute dtypes float32, bfloat16 (default both; params stay f32)",
    )
    p.add_argument(
        "--precision",
        choices=("default", "high", "highest"),
        help="conv/dense precision (default: the backend's; 'highest' = no TF32 on GPU)",
    )
    p.add_argument(
        "--cpu-convolutions",
        type=comma_list(("xla", "ynnpack"), text=True),
        default="xla",
        help="comma list of CPU convolution libraries to compare: xla (XLA's emitters, cnnjax's "
        "default), ynnpack (XLA's default); ignored off CPU (default xla)",
    )
    p.add_argument("--image-size", type=_POSITIVE, help="H = W in pixels (default: the paper's)")
    p.add_argument("--num-classes", type=_POSITIVE, help="classes (default: the paper's)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch twin")
    p.add_argument(
        "--compile-threads",
        type=_POSITIVE,
        default=1,
        help="compile the JAX variants in this many threads (default 1; compile s then "
        "includes waiting)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines, only the table")


def _data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", help="digits | synthetic | npz:PATH | folder:PATH | TFDS name")
    _timing_arguments(p, batch=128, steps=20, what="batch")
    p.add_argument(
        "--padding", type=_COUNT, default=4, help="zero padding before the crop in px (default 4)"
    )
    p.add_argument("--no-flip", action="store_true", help="no random horizontal flip")
    p.add_argument("--crop-size", type=_POSITIVE, help="crop side in px (default: the image size)")
    p.add_argument(
        "--image-size",
        type=_POSITIVE,
        help="fit images to this side first, px (default: as stored)",
    )
    p.add_argument(
        "--val-split",
        type=float,
        help="folder:ROOT with class folders only: hold out this fraction as the test split "
        "(only the train split is timed; default 0.1 when the folder has no test split)",
    )
    p.add_argument(
        "--skip-bad-files",
        action="store_true",
        help="folder sources: skip unreadable images instead of failing (default: fail)",
    )
    p.add_argument(
        "--workers",
        type=comma_list(item=_COUNT),
        default=(0,),
        help="comma list of data.workers counts (grain reader threads) to compare (default 0)",
    )
    p.add_argument(
        "--augment-on",
        type=comma_list(("host", "device")),
        default=("host", "device"),
        help="where to crop/flip/normalise: host, device or both (default host,device)",
    )


def _timing_arguments(p: argparse.ArgumentParser, *, batch: int, steps: int, what: str) -> None:
    """The arguments of a timed loop (``train`` and ``data``), and the output files."""
    whats = f"{what}es" if what.endswith("h") else f"{what}s"
    p.add_argument(
        "--batch", type=_POSITIVE, default=batch, help=f"images per {what} (default {batch})"
    )
    p.add_argument(
        "--steps", type=_POSITIVE, default=steps, help=f"{whats} timed per round (default {steps})"
    )
    p.add_argument(
        "--warmup", type=_COUNT, default=2, help=f"untimed {whats} after compiling (default 2)"
    )
    p.add_argument(
        "--repeats",
        type=_POSITIVE,
        default=5,
        help="timed rounds; the table shows medians (default 5)",
    )
    p.add_argument(
        "--tiny",
        action="store_true",
        help="smoke test: batch 4-8, 1-2 steps, 2 rounds, small images (numbers meaningless)",
    )
    p.add_argument(
        "--json", metavar="PATH", help="also write {meta, results} as JSON to PATH (default: none)"
    )
    p.add_argument(
        "--append-md",
        metavar="PATH",
        help="append the table, machine and command to PATH "
        "(e.g. experiments/BENCHMARKS.md; default: none)",
    )


def check_outputs(args: argparse.Namespace) -> None:
    """Before any timing: create the parent folder of ``--json`` / ``--append-md`` and check
    that both paths are writable (a ValueError naming the option, else none)."""
    for flag in ("json", "append_md"):
        path = getattr(args, flag, None)
        if not path:
            continue
        path = pathlib.Path(path)
        option = "--" + flag.replace("_", "-")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"{option} {path}: cannot create its folder ({e.strerror})") from None
        if path.is_dir():
            raise ValueError(f"{option} {path}: is a folder, not a file")
        target = path if path.exists() else path.parent
        if not os.access(target, os.W_OK):
            raise ValueError(f"{option} {path}: not writable")


def run(args: argparse.Namespace) -> int:
    """Check the output paths, then run ``cnnjax.bench.<suite>.run_from_args(args)``."""
    check_outputs(args)
    # By name: the suites import JAX and torch, and `python -m cnnjax.bench.ops` calls back here.
    module = importlib.import_module(f"cnnjax.bench.{args.bench_module}")
    return int(module.run_from_args(args) or 0)
