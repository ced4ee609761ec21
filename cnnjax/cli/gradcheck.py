"""``cnnjax gradcheck``: every custom VJP against autodiff; the sweeps live in
:mod:`cnnjax.gradcheck`."""

from __future__ import annotations

import argparse

from cnnjax import gradcheck
from cnnjax.cli.common import int_at_least, number_at_least

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]

HELP = "compare every custom VJP with autodiff over random configurations"
DESCRIPTION = (
    "Compare every op's hand-written VJP with JAX autodiff over random configurations "
    "(float64), or measure both impls' rounding error in a lower precision against float64 "
    "(--dtype), and print the worst relative errors. Exit status 1 when an op fails."
)
_HEADER = (
    f"{'op':<22}{'cases':>6}{'forward':>11}{'d arg0':>11}{'d arg1':>11}{'d arg2':>11}{'time':>8}"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``gradcheck`` arguments."""
    ops = list(gradcheck.SWEEPS)
    parser.add_argument(
        "--ops",
        nargs="+",
        choices=sorted(ops),
        default=ops,
        metavar="OP",
        help=f"ops to check (default: all: {', '.join(ops)})",
    )
    parser.add_argument(
        "--cases",
        type=int_at_least(1),
        default=25,
        help="configurations per op, >= 1, about 0.2 s each (default: 25)",
    )
    parser.add_argument(
        "--seed", type=int_at_least(0), default=0, help="random seed, an int >= 0 (default: 0)"
    )
    parser.add_argument(
        "--dtype",
        choices=sorted(gradcheck.TOLERANCES),
        default="float64",
        help="float64: custom vs autodiff; float32/float16/bfloat16: each impl vs itself in "
        "float64 on the same rounded inputs, with dtype-appropriate tolerances (default: float64)",
    )
    parser.add_argument(
        "--edges",
        action="store_true",
        help="every other case uses an edge input: exact zeros, ties or negative values "
        "(default on for float16/bfloat16)",
    )
    parser.add_argument(
        "--tol",
        type=number_at_least(0),
        default=None,
        help="max allowed relative error, a finite number >= 0 (default per dtype)",
    )


def run(args: argparse.Namespace) -> int:
    """The table on stdout, a progress bar on stderr; 1 if any op fails."""
    import jax

    from cnnjax.progress import progress_bar

    tol = gradcheck.TOLERANCES[args.dtype] if args.tol is None else args.tol
    edges = args.edges or args.dtype in ("float16", "bfloat16")
    jax.config.update("jax_enable_x64", True)
    what = (
        "custom VJP vs autodiff, float64"
        if args.dtype == "float64"
        else f"custom and xla in {args.dtype} vs float64"
    )
    print(
        f"gradcheck: {len(args.ops)} ops x {args.cases} cases ({what}"
        f"{', with edge inputs' if edges else ''}); tolerance {tol:.2g}",
        flush=True,
    )
    print(_HEADER)
    print("-" * len(_HEADER), flush=True)
    bar = progress_bar(len(args.ops) * args.cases, "gradcheck", "case")
    failed = [_check(bar, index, op, args, edges, tol) for index, op in enumerate(args.ops)]
    failed = [f for f in failed if f is not None]
    bar.close()
    print("-" * len(_HEADER))
    print(
        "arg0 is x; arg1/arg2 are w/b for conv, conv_transpose and depthwise_conv, "
        "w_depthwise/w_pointwise for separable_conv."
    )
    if failed:
        for op, worst, case in failed:
            print(f"FAIL {op}: relative error {worst:.3e} > {tol:.1e} at {case}")
        return 1
    if args.dtype == "float64":
        print(f"OK: every custom VJP equals autodiff to <= {tol:.0e} relative (float64).")
    else:
        print(f"OK: both impls in {args.dtype} are within {tol:.2g} relative of float64.")
    return 0


def _check(bar, index: int, op: str, args: argparse.Namespace, edges: bool, tol: float):
    """Check ``op``, print its row; ``(op, worst error, case)`` when it fails, else None."""
    from cnnjax.progress import echo

    bar.set_description(f"[{index + 1}/{len(args.ops)}] {op}", refresh=False)
    done_before = index * args.cases

    def show(done: int) -> None:  # moves the shared bar to done_before + done
        bar.update(done_before + done - bar.n)

    r = gradcheck.check_op(op, args.cases, args.seed, args.dtype, edges, show)
    grads = [r.worst_grad.get(i) for i in range(3)]
    cells = "".join(f"{g:>11.1e}" if g is not None else f"{'':>11}" for g in grads)
    worst = max([r.worst_forward, *r.worst_grad.values()])
    flag = "  FAIL" if not worst <= tol else ""
    echo(bar, f"{op:<22}{r.cases:>6}{r.worst_forward:>11.1e}{cells}{r.seconds:>7.1f}s{flag}")
    return None if worst <= tol else (op, worst, r.worst_case)
