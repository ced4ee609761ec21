"""The ``cnnjax`` command: argument parsing only; every subcommand calls the library.

::

    cnnjax train lenet5                      # embedded digits, ~30 s on 2 CPU cores, ≈97 % test
    cnnjax train resnet20 --config experiments/configs/resnet20_cifar10.py
    cnnjax eval runs/lenet5_digits           # accuracy + confusion matrix PNG
    cnnjax models | summary MODEL | plot WORKDIR | gradcheck ... | bench ...
"""

from __future__ import annotations

import argparse
import functools
import os
import pathlib
import platform
import re
import sys

__all__ = ["build_parser", "console_main", "main"]

# glibc's huge-page malloc: see _use_huge_page_malloc. CNNJAX_HUGE_PAGE_MALLOC=0 turns it off.
HUGE_PAGE_TUNABLE = "glibc.malloc.hugetlb=1"
_HUGE_PAGE_COMMANDS = ("train", "eval", "bench")  # the ones that run long computations
_OFF = ("0", "false", "no", "off")
_RESTARTED = "CNNJAX_HUGE_PAGE_MALLOC_RESTARTED"

_DESCRIPTION = "cnnjax: a JAX functional CNN toolkit (ops → layers → models → data → train)."


def build_parser() -> argparse.ArgumentParser:
    """The ``cnnjax`` parser with one sub-parser per subcommand."""
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the full traceback of an error instead of one line",
    )
    parser = argparse.ArgumentParser(prog="cnnjax", description=_DESCRIPTION, parents=[debug])
    parser.add_argument("--version", action="version", version=f"cnnjax {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser = functools.partial(sub.add_parser, parents=[debug])

    p = sub.add_parser(
        "train",
        help="train a model (default: on the embedded digits data set)",
        description="Train MODEL. Precedence: defaults < --config file < flags < --set.",
    )
    p.add_argument(
        "model",
        nargs="?",
        help="registered name (see `cnnjax models`), or your own module:Class / "
        "file.py:Class (default: lenet5)",
    )
    p.add_argument(
        "--dataset",
        help="digits | synthetic | npz:PATH | folder:PATH | a TFDS name (default: digits)",
    )
    p.add_argument(
        "--epochs", type=int, help="passes over the training split (default: 10; clears num_steps)"
    )
    p.add_argument(
        "--batch-size", type=int, help="global batch size, images over all devices (default: 32)"
    )
    p.add_argument("--lr", type=float, help="peak learning rate (default: 0.005, AdamW + cosine)")
    p.add_argument("--workdir", help="run directory (default: runs/MODEL_DATASET)")
    p.add_argument(
        "--config", help="experiments/configs/NAME.py defining get_config() (default: none)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field, e.g. --set optimizer.weight_decay=1e-4 "
        "(repeatable; default: none)",
    )
    p.add_argument(
        "--parallel",
        choices=("auto", "none", "pmap", "sharded"),
        help="device driver: none = one device, pmap = replicated, sharded = jit over a mesh; "
        "auto = sharded when several devices divide the batch (default: auto)",
    )
    p.add_argument(
        "--impl",
        choices=("custom", "xla"),
        help="op implementation: custom VJPs or lax + autodiff (default: custom)",
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        help="compute dtype; parameters stay float32; float16 adds dynamic loss scaling "
        "(default: float32)",
    )
    p.add_argument(
        "--precision",
        choices=("default", "high", "highest"),
        help="conv/dense precision (default: the backend's, e.g. TF32 on NVIDIA GPUs)",
    )
    p.add_argument(
        "--cpu-convolutions",
        choices=("xla", "ynnpack"),
        help="library running convolutions on CPU: XLA's own emitters (faster for CNN "
        "training, measured) or YNNPACK (XLA's default); no effect on GPU/TPU or with "
        "--parallel pmap (default: xla)",
    )
    p.add_argument(
        "--on-nonfinite",
        choices=("stop", "skip"),
        help="a non-finite loss or gradient: stop the run (exit 1) or skip the update "
        "(default: stop)",
    )
    p.add_argument(
        "--seed",
        type=_non_negative_int,
        help="seed of initialisation, shuffling and augmentation (default: 0)",
    )
    p.add_argument(
        "--best-metric",
        choices=("test_accuracy", "test_loss", "test_mean_iou", "test_pixel_accuracy", "none"),
        help="keep the state of the best test evaluation by this metric in "
        "WORKDIR/checkpoints_best (loss: lowest, others: highest; none: keep no best) "
        "(default: test_accuracy)",
    )
    p.add_argument(
        "--val-split",
        type=float,
        help="folder:ROOT/CLASS data: hold out this fraction of every class (seeded) for testing "
        "(default: none, the ROOT/train and ROOT/test split)",
    )
    p.add_argument(
        "--skip-bad-files", action="store_true", help="folder data: skip unreadable images"
    )
    p.add_argument(
        "--data-workers",
        type=int,
        metavar="N",
        help="threads reading and decoding batches ahead (config data.workers; 0: none; "
        "default: min(cpus, 8) for folder/TFDS data, 0 for in-memory data)",
    )
    p.add_argument(
        "--no-resume", action="store_true", help="refuse to resume (workdir must be fresh)"
    )
    p.add_argument(
        "--extend",
        action="store_true",
        help="train a recorded run longer (more --epochs); a cosine schedule restarts for the "
        "added steps",
    )
    p.add_argument(
        "--coordinator",
        help="multi-process: coordinator host:port, or auto (SLURM, TPU, MPI; default: none)",
    )
    p.add_argument(
        "--num-processes",
        type=int,
        help="multi-process: number of processes (default: 1; detected with --coordinator auto)",
    )
    p.add_argument(
        "--process-id",
        type=int,
        help="multi-process: this process's index (default: 0; detected with --coordinator auto)",
    )
    p.add_argument("--quiet", action="store_true", help="print only the final line")
    p.set_defaults(handler=_train)

    p = sub.add_parser(
        "eval",
        help="evaluate a run's latest (or best) checkpoint; writes a confusion matrix PNG",
        description="Score WORKDIR's latest checkpoint (or, with --best, the best one kept in "
        "WORKDIR/checkpoints_best) on the test split of its data set.",
    )
    p.add_argument("workdir")
    p.add_argument(
        "--dataset", help="evaluate on another data set with the same classes (default: the run's)"
    )
    p.add_argument("--step", type=int, help="checkpoint step (default: latest)")
    p.add_argument(
        "--skip-bad-files",
        action="store_true",
        help="folder: data: skip unreadable images (with a count) instead of failing",
    )
    p.add_argument(
        "--checkpoint",
        choices=("latest", "best"),
        default="latest",
        help="latest: WORKDIR/checkpoints; best: the best test evaluation's state, "
        "WORKDIR/checkpoints_best (default: latest)",
    )
    p.add_argument(
        "--best",
        dest="checkpoint",
        action="store_const",
        const="best",
        help="the same as --checkpoint best",
    )
    p.add_argument(
        "--output",
        help="confusion matrix PNG (default: WORKDIR/confusion_[DATASET_]test_stepSTEP.png; "
        "segmentation runs: masks PNG WORKDIR/masks_[DATASET_]test_stepSTEP.png)",
    )
    p.set_defaults(handler=_eval)

    p = sub.add_parser(
        "models",
        help="list registered models: input shape and paper",
        description="List the registry (no model is built); --params also counts parameters.",
    )
    p.add_argument("pattern", nargs="?", help="only names containing this substring")
    p.add_argument(
        "--params",
        action="store_true",
        help="count parameters at the paper's input (traces every model: seconds, not ms)",
    )
    p.add_argument("--no-params", action="store_true", help=argparse.SUPPRESS)  # the default now
    p.set_defaults(handler=_models)

    p = sub.add_parser(
        "summary",
        help="per-layer table of a model (shapes, params, MACs, receptive field)",
        description="Per-layer table; parameters are never allocated (shapes only).",
    )
    p.add_argument("model", help="registered name, or module:Class / file.py:Class")
    p.add_argument(
        "--input-size",
        type=int,
        nargs="+",
        metavar="N",
        help="input without the batch: S (S×S, the model's channels), H W, or H W C "
        "(default: the paper's input)",
    )
    p.add_argument("--num-classes", type=int, help="classifier width (default: the paper's)")
    p.add_argument(
        "--depth", type=int, help="group rows by module nesting depth (default: leaf layers)"
    )
    p.set_defaults(handler=_summary)

    p = sub.add_parser("plot", help="loss/accuracy curves of one or more runs as a PNG")
    p.add_argument("workdirs", nargs="+", metavar="WORKDIR")
    p.add_argument("--output", help="PNG path (default: WORKDIR/curves.png)")
    p.add_argument(
        "--x-axis",
        choices=("step", "epoch"),
        default="step",
        help="horizontal axis: optimiser steps or epochs (default: step)",
    )
    p.set_defaults(handler=_plot)

    p = sub.add_parser(
        "bench",
        help="benchmarks: ops, train (img/s per model), data (pipeline img/s)",
        description="Benchmarks measured side by side in one process (medians, ratios).",
    )
    from cnnjax.bench import add_parsers as add_bench_parsers

    add_bench_parsers(p)
    p.set_defaults(handler=_bench)

    for name, text in (
        ("gradcheck", "compare every custom VJP with autodiff over random configurations"),
        ("viz", "pictures: edges, filters, features, deconv, receptive-field (PNG)"),
    ):
        p = sub.add_parser(name, help=text, add_help=False, prefix_chars="\0")
        p.add_argument("args", nargs=argparse.REMAINDER)
        p.set_defaults(handler=_forward(name))
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cnnjax")
    except PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
        from cnnjax import __version__

        return __version__


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cnnjax`` console script; returns the exit status."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug, rest = _pop_debug(argv)
    args = parser.parse_args(rest)
    args.debug = debug
    args.argv = argv  # recorded by the benchmarks
    try:
        status = args.handler(args)
    except (ValueError, TypeError, OSError) as e:  # user mistakes and environment faults
        if getattr(args, "debug", False):
            raise
        print(f"cnnjax {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if getattr(args, "debug", False):
            raise
        print(f"cnnjax {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


def _pop_debug(argv: list[str]) -> tuple[bool, list[str]]:
    """``--debug`` anywhere before ``--`` (any subcommand): (found, argv without it)."""
    end = argv.index("--") if "--" in argv else len(argv)
    kept = [a for a in argv[:end] if a != "--debug"]
    return len(kept) < end, kept + argv[end:]


def _non_negative_int(text: str) -> int:
    """``--seed``: an int >= 0 (JAX's own message for -1 names no option)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an int >= 0, got {text!r}")
    return value


def _one_line(error: BaseException) -> str:
    """The first line of the message (libraries' messages can run to thousands of lines)."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    more = " (--debug for the rest)" if len(lines) > 1 else ""
    return lines[0] + more


def _train(args: argparse.Namespace) -> int:
    from cnnjax.train import NonFiniteError, apply_overrides, default_config, load_config, train

    config = load_config(args.config) if args.config else default_config()
    flags = {
        "model": args.model,
        "dataset": args.dataset,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "parallel": args.parallel,
        "impl": args.impl,
        "dtype": args.dtype,
        "precision": args.precision,
        "cpu_convolutions": args.cpu_convolutions,
        "on_nonfinite": args.on_nonfinite,
        "seed": args.seed,
        "val_split": args.val_split,
        "skip_bad_files": args.skip_bad_files or None,
    }
    for key, value in flags.items():
        if value is not None:
            config[key] = value
    if args.best_metric is not None:
        config.best.metric = args.best_metric
    if args.epochs is not None:
        config.num_steps = None
    if args.lr is not None:
        config.optimizer.lr = args.lr
    if args.no_resume:
        config.resume = False
    if args.extend:
        config.extend = True
    if args.data_workers is not None:
        config.data.workers = args.data_workers
    for key, value in (
        ("coordinator", args.coordinator),
        ("num_processes", args.num_processes),
        ("process_id", args.process_id),
    ):
        if value is not None:
            config.distributed[key] = value
    apply_overrides(config, args.set)
    workdir = pathlib.Path(args.workdir or _default_workdir(config.model, config.dataset))
    try:
        result = train(config, workdir, verbose=not args.quiet)
    except NonFiniteError as e:  # a diverged run: not a usage error, so exit 1
        print(f"cnnjax train: error: {e}", file=sys.stderr)
        return 1
    if args.quiet:
        if result.already_finished:
            print(f"already finished at step {result.step}; checkpoint {result.checkpoint}")
        elif result.interrupted:
            print(f"interrupted at step {result.step}; checkpoint {result.checkpoint}")
        else:
            print(f"test accuracy {result.test['accuracy']:.2%}; checkpoint {result.checkpoint}")
    return 0


def _default_workdir(model: str, dataset: str) -> str:
    return f"runs/{_slug(model)}_{_slug(dataset)}"


def _slug(name: str) -> str:
    """``npz:data/mnist.npz`` → ``mnist``, ``mynet:Net`` → ``Net``: a file-name-safe tag."""
    tail = pathlib.Path(name.rsplit(":", 1)[1]).stem if ":" in name else name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", tail)


def _eval(args: argparse.Namespace) -> int:
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
        return _eval_segmentation(args, result)
    output = pathlib.Path(args.output or _confusion_path(args.workdir, args.dataset, result.step))
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


def _eval_segmentation(args: argparse.Namespace, result) -> int:
    """Print pixel accuracy, mean and per-class IoU; write image / truth / predicted masks."""
    from cnnjax.data import load_class_names
    from cnnjax.train import load_workdir_config
    from cnnjax.viz import plot_segmentation

    dataset = args.dataset or load_workdir_config(args.workdir).dataset
    path = _confusion_path(args.workdir, args.dataset, result.step)
    output = pathlib.Path(args.output or path.with_name(path.name.replace("confusion_", "masks_")))
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


def _confusion_path(workdir: str, dataset: str | None, step: int) -> pathlib.Path:
    """``WORKDIR/confusion_test_stepN.png``, or ``confusion_DATASET_test_stepN.png``."""
    tag = f"{_slug(dataset)}_" if dataset else ""
    return pathlib.Path(workdir) / f"confusion_{tag}test_step{step}.png"


def _models(args: argparse.Namespace) -> int:
    from cnnjax.models import create_model, get_model_info, list_models

    names = list_models(args.pattern, task=None)
    if not names:
        print(f"cnnjax models: no model matches {args.pattern!r} (see `cnnjax models`)")
        return 0
    if not args.params:
        counts = dict.fromkeys(names)
    else:
        import jax
        import jax.numpy as jnp

        counts = {}
        for name in names:
            info = get_model_info(name)
            model = create_model(name)
            x = jax.ShapeDtypeStruct((1, *info.input_shape), jnp.float32)
            shapes = jax.eval_shape(lambda x, m=model: m.init(jax.random.PRNGKey(0), x, False), x)
            counts[name] = sum(int(v.size) for v in jax.tree.leaves(shapes.get("params", {})))
    width = max((len(n) for n in names), default=5)
    params_column = f"  {'params':>13}" if args.params else ""
    print(f"{'model':<{width}}  {'task':<14}  {'input':>12}{params_column}  paper")
    for name in names:
        info = get_model_info(name)
        shape = "×".join(map(str, info.input_shape))
        params = f"  {counts[name]:>13,}" if args.params else ""
        print(f"{name:<{width}}  {info.task:<14}  {shape:>12}{params}  {info.paper}")
    return 0


def _summary(args: argparse.Namespace) -> int:
    from cnnjax.model_summary import print_summary

    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
    if args.depth is not None:
        kwargs["depth"] = args.depth
    if args.input_size is None:
        from cnnjax.models import get_model_info

        if get_model_info(args.model).input_shape is None:
            raise ValueError(f"{args.model} declares no input_shape: pass --input-size H W C")
        print_summary(args.model, **kwargs)
        return 0
    print_summary(args.model, _input_shape(args.model, args.input_size), **kwargs)
    return 0


def _input_shape(model: str, sizes: list[int]) -> tuple[int, ...]:
    """``S`` → ``(S, S, C)``, ``H W`` → ``(H, W, C)`` with the model's ``C``; ``H W C`` as given."""
    if len(sizes) > 3:
        raise ValueError(f"--input-size takes 1-3 numbers (S, H W or H W C), got {len(sizes)}")
    if len(sizes) == 3:
        return tuple(sizes)
    from cnnjax.models import get_model_info

    known = get_model_info(model).input_shape
    if known is None:
        raise ValueError(f"--input-size: {model} declares no input_shape; give H W C")
    return (*(sizes * 2 if len(sizes) == 1 else sizes), known[-1])


def _plot(args: argparse.Namespace) -> int:
    from cnnjax.viz import plot_curves

    print(plot_curves(args.workdirs, args.output, x_axis=args.x_axis))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from cnnjax.bench import run

    return run(args)


def _forward(name: str):
    """Hand the rest of the command line to ``cnnjax.<name>.main`` (imported only when used)."""

    def handler(args: argparse.Namespace) -> int:
        import importlib

        forwarded = list(args.args) + (["--debug"] if args.debug and name == "viz" else [])
        return int(importlib.import_module(f"cnnjax.{name}").main(forwarded) or 0)

    return handler


def console_main() -> None:
    """The ``cnnjax`` console script: :func:`main`, for ``train``/``eval``/``bench`` in a process
    restarted with huge-page malloc (:func:`_use_huge_page_malloc`)."""
    argv = sys.argv[1:]
    command = next((a for a in argv if not a.startswith("-")), None)
    # Restart only a process that *is* this command (console script, python -m cnnjax.cli):
    # never a REPL, notebook or script that called console_main itself.
    own_process = bool(argv) and sys.orig_argv[-len(argv) :] == argv
    if command in _HUGE_PAGE_COMMANDS and own_process:
        _use_huge_page_malloc()
    sys.exit(main())


def _use_huge_page_malloc() -> None:
    """Restart this process (same pid, argv, streams) once with ``glibc.malloc.hugetlb=1``.

    Every XLA:CPU execution allocates its scratch buffer (~290 MiB for ResNet-20 at batch 128)
    and every Eigen convolution its packed input panel (up to 72 MiB) from glibc arenas whose
    heaps hold at most 64 MiB, so each is a fresh ``mmap`` released after use: ~73,500 page
    faults a ResNet-20 step. With the tunable (glibc >= 2.35; read only at process start, hence
    the restart) glibc backs those mappings with 2 MiB pages: ResNet-20's CPU step took 0.83x as
    long, LeNet-5's the same (experiments/cpu_malloc_hugetlb.py); the restart costs ~0.4 s of
    start-up (importing cnnjax twice), hence only for long commands. Nothing happens off Linux, on
    other C libraries or older glibc, when ``GLIBC_TUNABLES`` already names the tunable (your
    setting wins), after the restart (``CNNJAX_HUGE_PAGE_MALLOC_RESTARTED``), or with
    ``CNNJAX_HUGE_PAGE_MALLOC`` = ``0``/``false``/``no``/``off``.
    """
    off = os.environ.get("CNNJAX_HUGE_PAGE_MALLOC", "1").strip().lower() in _OFF
    if sys.platform != "linux" or off or os.environ.get(_RESTARTED):
        return  # (_RESTARTED: glibc blanks GLIBC_TUNABLES in privileged processes: no loop)
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in tunables or not sys.executable or not sys.orig_argv:
        return
    libc, version = platform.libc_ver()
    try:
        major_minor = tuple(int(v) for v in version.split(".")[:2])
    except ValueError:
        return
    if libc != "glibc" or major_minor < (2, 35):
        return
    os.environ["GLIBC_TUNABLES"] = ":".join(filter(None, [tunables, HUGE_PAGE_TUNABLE]))
    os.environ[_RESTARTED] = "1"
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:  # (None: the stream was closed, e.g. `cnnjax train >&-`)
            stream.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


if __name__ == "__main__":
    console_main()
