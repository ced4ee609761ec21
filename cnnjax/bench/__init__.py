"""``cnnjax bench``: benchmarks, reported as ratios measured side by side in one process.

    cnnjax bench ops [--batch 8] [--repeats 15] [--json out.json]
    cnnjax bench train MODEL [--batch 128] [--steps 10] [--dtype float32,bfloat16] [--tiny]
    cnnjax bench data DATASET [--batch 128] [--steps 20] [--padding 4] [--workers 0,2] [--tiny]

One module per suite (:mod:`~cnnjax.bench.ops`, :mod:`~cnnjax.bench.train`,
:mod:`~cnnjax.bench.data`), each with ``run_from_args(args)``; the arguments are defined here
(no JAX import) so that ``cnnjax bench SUITE --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pathlib
import re
import sys
from collections.abc import Sequence

__all__ = ["add_parsers", "main"]

_COMMON_OUTPUT = (
    (
        "--json",
        {"metavar": "PATH", "help": "also write {meta, results} as JSON to PATH (default: none)"},
    ),
    (
        "--append-md",
        {
            "metavar": "PATH",
            "help": "append the table, machine and command to PATH "
            "(e.g. experiments/BENCHMARKS.md; default: none)",
        },
    ),
)


class _OneLineErrors(argparse.ArgumentParser):
    """Bad arguments: one line on stderr (no usage block), ``--flag must ...``, exit status 2."""

    def error(self, message: str):
        message = re.sub(r"^argument (\S+): ", r"\1 ", message)
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _int_at_least(low: int):
    """An argparse ``type=``: an ``int >= low`` (else an error that argparse prefixes with the
    option's name, exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def _comma_list(allowed: Sequence[str] | None = None, *, item=str, text: bool = False):
    """An argparse ``type=``: ``"a,b"`` → ``("a", "b")``; no empty or repeated entry, each one
    in ``allowed`` (when given) and parsed by ``item``; ``text=True`` keeps the checked string."""

    def parse(raw: str):
        parts = [s.strip() for s in raw.split(",")]
        if not raw.strip() or "" in parts:
            raise argparse.ArgumentTypeError(
                f"must be a comma list without empty entries, got {raw!r}"
            )
        if len(set(parts)) < len(parts):
            raise argparse.ArgumentTypeError(f"must be a comma list without repeats, got {raw!r}")
        if allowed is not None and set(parts) - set(allowed):
            raise argparse.ArgumentTypeError(
                f"must be a comma list of {', '.join(allowed)}; got {raw!r}"
            )
        values = tuple(item(s) for s in parts)
        return ",".join(parts) if text else values

    return parse


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


def _timing_args(p: argparse.ArgumentParser, *, batch: int, steps: int, what: str) -> None:
    whats = f"{what}es" if what.endswith("h") else f"{what}s"
    positive, count = _int_at_least(1), _int_at_least(0)
    p.add_argument(
        "--batch", type=positive, default=batch, help=f"images per {what} (default {batch})"
    )
    p.add_argument(
        "--steps", type=positive, default=steps, help=f"{whats} timed per round (default {steps})"
    )
    p.add_argument(
        "--warmup", type=count, default=2, help=f"untimed {whats} after compiling (default 2)"
    )
    p.add_argument(
        "--repeats",
        type=positive,
        default=5,
        help="timed rounds; the table shows medians (default 5)",
    )
    p.add_argument(
        "--tiny",
        action="store_true",
        help="smoke test: batch 4-8, 1-2 steps, 2 rounds, small images (numbers meaningless)",
    )
    for flag, kwargs in _COMMON_OUTPUT:
        p.add_argument(flag, **kwargs)


def add_parsers(bench: argparse.ArgumentParser) -> None:
    """Add the ``ops``, ``train`` and ``data`` sub-commands to the ``bench`` parser."""
    sub = bench.add_subparsers(
        dest="suite", metavar="SUITE", required=True, parser_class=_OneLineErrors
    )
    p = sub.add_parser(
        "ops",
        help="per-op forward and forward+backward time, custom VJP vs xla",
        description="Median forward and forward+backward times of every op, custom VJP vs XLA "
        "autodiff (float32, jitted, timed in alternation). Times in ms; ratio = custom / xla "
        "(< 1: the hand-written rule is faster).",
    )
    p.add_argument("--batch", type=_int_at_least(1), default=8, help="batch size N (default 8)")
    p.add_argument(
        "--repeats", type=_int_at_least(1), default=15, help="timed calls; medians (default 15)"
    )
    p.add_argument("--only", help="run only workloads whose name contains this (default: all)")
    p.add_argument(
        "--json", metavar="PATH", help="also write the results as JSON to PATH (default: none)"
    )
    p.set_defaults(bench_module="ops")

    p = sub.add_parser(
        "train",
        help="training-step throughput (img/s) of a model on synthetic data",
        description="Training-step throughput of MODEL on synthetic data: custom vs xla ops, "
        "float32 and bfloat16 compute, and the PyTorch twin (CIFAR ResNets, LeNet-5) when torch "
        "is installed; SGD + momentum 0.9 + weight decay 5e-4. Reports medians: img/s, ms/step, "
        "compile time (s), compiled memory (MiB), custom/xla and jax/torch step-time ratios.",
    )
    p.add_argument("model", help="registered model name (see `cnnjax models`)")
    _timing_args(p, batch=128, steps=10, what="step")
    p.add_argument(
        "--impl",
        type=_comma_list(("custom", "xla"), text=True),
        default="custom,xla",
        help="comma list of custom, xla (default custom,xla)",
    )
    p.add_argument(
        "--dtype",
        type=_comma_list(("float32", "bfloat16"), text=True),
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
        type=_comma_list(("xla", "ynnpack"), text=True),
        default="xla",
        help="comma list of CPU convolution libraries to compare: xla (XLA's emitters, cnnjax's "
        "default), ynnpack (XLA's default); ignored off CPU (default xla)",
    )
    p.add_argument(
        "--image-size", type=_int_at_least(1), help="H = W in pixels (default: the paper's)"
    )
    p.add_argument("--num-classes", type=_int_at_least(1), help="classes (default: the paper's)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch twin")
    p.add_argument(
        "--compile-threads",
        type=_int_at_least(1),
        default=1,
        help="compile the JAX variants in this many threads (default 1; compile s then "
        "includes waiting)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines, only the table")
    p.set_defaults(bench_module="train")

    p = sub.add_parser(
        "data",
        help="input-pipeline throughput (img/s) with the training augmentation",
        description="Input pipeline alone: batches of DATASET with random crop (zero padding) "
        "and flip, on the host (NumPy) and on the device (jitted), copied to the device, "
        "with each --workers count of grain reader threads. "
        "Reports medians: img/s and ms per batch.",
    )
    p.add_argument("dataset", help="digits | synthetic | npz:PATH | folder:PATH | TFDS name")
    _timing_args(p, batch=128, steps=20, what="batch")
    p.add_argument(
        "--padding",
        type=_int_at_least(0),
        default=4,
        help="zero padding before the crop in px (default 4)",
    )
    p.add_argument("--no-flip", action="store_true", help="no random horizontal flip")
    p.add_argument(
        "--crop-size", type=_int_at_least(1), help="crop side in px (default: the image size)"
    )
    p.add_argument(
        "--image-size",
        type=_int_at_least(1),
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
        type=_comma_list(item=_int_at_least(0)),
        default=(0,),
        help="comma list of data.workers counts (grain reader threads) to compare (default 0)",
    )
    p.add_argument(
        "--augment-on",
        type=_comma_list(("host", "device")),
        default=("host", "device"),
        help="where to crop/flip/normalise: host, device or both (default host,device)",
    )
    p.set_defaults(bench_module="data")


def run(args: argparse.Namespace) -> int:
    """Dispatch parsed ``bench`` arguments to ``cnnjax.bench.<suite>.run_from_args``."""
    check_outputs(args)
    module = importlib.import_module(f"cnnjax.bench.{args.bench_module}")
    return int(module.run_from_args(args) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cnnjax.bench SUITE ...``: the same as ``cnnjax bench SUITE ...``."""
    parser = argparse.ArgumentParser(prog="cnnjax bench", description=__doc__.splitlines()[0])
    add_parsers(parser)
    args = parser.parse_args(argv)
    args.argv = ["bench", *(sys.argv[1:] if argv is None else argv)]
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
