"""The ``cnnjax`` command: argument parsing only; every subcommand calls the library.

::

    cnnjax train lenet5                      # embedded digits, ~30 s on 2 CPU cores, ≈97 % test
    cnnjax train resnet20 --config experiments/configs/resnet20_cifar10.py
    cnnjax eval runs/lenet5_digits           # accuracy + confusion matrix PNG
    cnnjax models | summary MODEL | plot WORKDIR | gradcheck ... | bench ...
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys

__all__ = ["build_parser", "main"]

_DESCRIPTION = "cnnjax: a JAX functional CNN toolkit (ops → layers → models → data → train)."


def build_parser() -> argparse.ArgumentParser:
    """The ``cnnjax`` parser with one sub-parser per subcommand."""
    parser = argparse.ArgumentParser(prog="cnnjax", description=_DESCRIPTION)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "train",
        help="train a model (default: on the embedded digits data set)",
        description="Train MODEL. Precedence: defaults < --config file < flags < --set.",
    )
    p.add_argument("model", nargs="?", help="registered model name (see `cnnjax models`)")
    p.add_argument("--dataset", help="digits | synthetic | npz:PATH | folder:PATH | TFDS name")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="global batch size (all devices)")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--workdir", help="run directory (default: runs/MODEL_DATASET)")
    p.add_argument("--config", help="experiments/configs/NAME.py defining get_config()")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field, e.g. --set optimizer.weight_decay=1e-4 (repeatable)",
    )
    p.add_argument("--parallel", choices=("auto", "none", "pmap", "sharded"))
    p.add_argument("--impl", choices=("custom", "xla"), help="op implementation")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), help="compute dtype")
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--no-resume", action="store_true", help="refuse to resume (workdir must be fresh)"
    )
    p.add_argument(
        "--coordinator", help="multi-process: coordinator host:port, or auto (SLURM, TPU, MPI)"
    )
    p.add_argument("--num-processes", type=int, help="multi-process: number of processes")
    p.add_argument("--process-id", type=int, help="multi-process: this process's index")
    p.add_argument("--quiet", action="store_true", help="print only the final line")
    p.set_defaults(handler=_train)

    p = sub.add_parser(
        "eval",
        help="evaluate a run's latest checkpoint; writes a confusion matrix PNG",
        description="Score WORKDIR's latest checkpoint on the test split of its data set.",
    )
    p.add_argument("workdir")
    p.add_argument("--dataset", help="evaluate on another data set with the same classes")
    p.add_argument("--step", type=int, help="checkpoint step (default: latest)")
    p.add_argument("--output", help="confusion matrix PNG (default: WORKDIR/confusion.png)")
    p.set_defaults(handler=_eval)

    p = sub.add_parser("models", help="list registered models with input shape and parameters")
    p.add_argument("pattern", nargs="?", help="only names containing this substring")
    p.add_argument("--no-params", action="store_true", help="skip counting parameters (faster)")
    p.set_defaults(handler=_models)

    p = sub.add_parser("summary", help="per-layer table of a model (shapes, params, MACs, RF)")
    p.add_argument("model")
    p.set_defaults(handler=_summary)

    p = sub.add_parser("plot", help="loss/accuracy curves of one or more runs as a PNG")
    p.add_argument("workdirs", nargs="+", metavar="WORKDIR")
    p.add_argument("--output", help="PNG path (default: WORKDIR/curves.png)")
    p.set_defaults(handler=_plot)

    for name, text in (
        ("gradcheck", "compare every custom VJP with autodiff over random configurations"),
        ("bench", "benchmark the ops, custom VJP vs xla, side by side"),
        ("viz", "pictures: edges, filters, features, deconv, receptive-field (PNG)"),
    ):
        p = sub.add_parser(name, help=text, add_help=False, prefix_chars="\0")
        p.add_argument("args", nargs=argparse.REMAINDER)
        p.set_defaults(handler=_forward(name))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cnnjax`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = args.handler(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"cnnjax {args.command}: error: {e}", file=sys.stderr)
        return 2
    return int(status or 0)


def _train(args: argparse.Namespace) -> int:
    from cnnjax.train import apply_overrides, default_config, load_config, train

    config = load_config(args.config) if args.config else default_config()
    flags = {
        "model": args.model,
        "dataset": args.dataset,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "parallel": args.parallel,
        "impl": args.impl,
        "dtype": args.dtype,
        "seed": args.seed,
    }
    for key, value in flags.items():
        if value is not None:
            config[key] = value
    if args.epochs is not None:
        config.num_steps = None
    if args.lr is not None:
        config.optimizer.lr = args.lr
    if args.no_resume:
        config.resume = False
    for key, value in (
        ("coordinator", args.coordinator),
        ("num_processes", args.num_processes),
        ("process_id", args.process_id),
    ):
        if value is not None:
            config.distributed[key] = value
    apply_overrides(config, args.set)
    workdir = pathlib.Path(args.workdir or _default_workdir(config.model, config.dataset))
    result = train(config, workdir, verbose=not args.quiet)
    if args.quiet:
        if result.interrupted:
            print(f"interrupted at step {result.step}; checkpoint {result.checkpoint}")
        else:
            print(f"test accuracy {result.test['accuracy']:.2%}; checkpoint {result.checkpoint}")
    return 0


def _default_workdir(model: str, dataset: str) -> str:
    tail = pathlib.Path(dataset.split(":", 1)[1]).stem if ":" in dataset else dataset
    return f"runs/{model}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', tail)}"


def _eval(args: argparse.Namespace) -> int:
    from cnnjax.train import evaluate
    from cnnjax.viz import plot_confusion

    result = evaluate(args.workdir, dataset=args.dataset, step=args.step)
    output = pathlib.Path(args.output or pathlib.Path(args.workdir) / "confusion.png")
    plot_confusion(result.confusion, output, title=f"step {result.step}")
    errors = result.count - round(result.accuracy * result.count)
    print(
        f"step {result.step}: test accuracy {result.accuracy:.2%} ({errors} errors in "
        f"{result.count}), loss {result.loss:.4f}; confusion matrix {output}"
    )
    return 0


def _models(args: argparse.Namespace) -> int:
    from cnnjax.models import create_model, get_model_info, list_models

    names = list_models(args.pattern)
    if args.no_params:
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
    print(f"{'model':<{width}}  {'input':>12}  {'params':>13}  paper")
    for name in names:
        info = get_model_info(name)
        shape = "×".join(map(str, info.input_shape))
        params = "" if counts[name] is None else f"{counts[name]:,}"
        print(f"{name:<{width}}  {shape:>12}  {params:>13}  {info.paper.split(',')[0]}")
    return 0


def _summary(args: argparse.Namespace) -> int:
    from cnnjax.model_summary import print_summary

    print_summary(args.model)
    return 0


def _plot(args: argparse.Namespace) -> int:
    from cnnjax.viz import plot_curves

    print(plot_curves(args.workdirs, args.output))
    return 0


def _forward(name: str):
    """Hand the rest of the command line to ``cnnjax.<name>.main`` (imported only when used)."""

    def handler(args: argparse.Namespace) -> int:
        import importlib

        return int(importlib.import_module(f"cnnjax.{name}").main(list(args.args)) or 0)

    return handler


if __name__ == "__main__":
    sys.exit(main())
