"""``cnnjax summary``: the per-layer table of a model (shapes only, nothing allocated)."""

from __future__ import annotations

import argparse

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]

HELP = "per-layer table of a model (shapes, params, MACs, receptive field)"
DESCRIPTION = "Per-layer table; parameters are never allocated (shapes only)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``summary`` arguments."""
    parser.add_argument("model", help="registered name, or module:Class / file.py:Class")
    parser.add_argument(
        "--input-size",
        type=int,
        nargs="+",
        metavar="N",
        help="input without the batch: S (S×S, the model's channels), H W, or H W C "
        "(default: the paper's input)",
    )
    parser.add_argument("--num-classes", type=int, help="classifier width (default: the paper's)")
    parser.add_argument(
        "--depth", type=int, help="group rows by module nesting depth (default: leaf layers)"
    )


def run(args: argparse.Namespace) -> int:
    """Print :func:`cnnjax.model_summary.print_summary` of the model."""
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
    """``S`` -> ``(S, S, C)``, ``H W`` -> ``(H, W, C)`` with the model's ``C``; ``H W C`` as
    given."""
    if len(sizes) > 3:
        raise ValueError(f"--input-size takes 1-3 numbers (S, H W or H W C), got {len(sizes)}")
    if len(sizes) == 3:
        return tuple(sizes)
    from cnnjax.models import get_model_info

    known = get_model_info(model).input_shape
    if known is None:
        raise ValueError(f"--input-size: {model} declares no input_shape; give H W C")
    return (*(sizes * 2 if len(sizes) == 1 else sizes), known[-1])
