"""``cnnjax models``: the registry as a table (no model is built unless ``--params``)."""

from __future__ import annotations

import argparse

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]

HELP = "list registered models: input shape and paper"
DESCRIPTION = "List the registry (no model is built); --params also counts parameters."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``models`` arguments."""
    parser.add_argument("pattern", nargs="?", help="only names containing this substring")
    parser.add_argument(
        "--params",
        action="store_true",
        help="count parameters at the paper's input (traces every model: seconds, not ms)",
    )
    parser.add_argument("--no-params", action="store_true", help=argparse.SUPPRESS)  # the default


def run(args: argparse.Namespace) -> int:
    """Print one row per registered model matching ``pattern``."""
    from cnnjax.models import get_model_info, list_models

    names = list_models(args.pattern, task=None)
    if not names:
        print(f"cnnjax models: no model matches {args.pattern!r} (see `cnnjax models`)")
        return 0
    counts = _parameter_counts(names) if args.params else dict.fromkeys(names)
    width = max((len(n) for n in names), default=5)
    params_column = f"  {'params':>13}" if args.params else ""
    print(f"{'model':<{width}}  {'task':<14}  {'input':>12}{params_column}  paper")
    for name in names:
        info = get_model_info(name)
        shape = "×".join(map(str, info.input_shape))
        params = f"  {counts[name]:>13,}" if args.params else ""
        print(f"{name:<{width}}  {info.task:<14}  {shape:>12}{params}  {info.paper}")
    return 0


def _parameter_counts(names: list[str]) -> dict[str, int]:
    """Parameters of each model at its paper's input, from shapes only (``jax.eval_shape``)."""
    import jax
    import jax.numpy as jnp

    from cnnjax.models import create_model, get_model_info

    counts = {}
    for name in names:
        model = create_model(name)
        x = jax.ShapeDtypeStruct((1, *get_model_info(name).input_shape), jnp.float32)
        shapes = jax.eval_shape(lambda x, m=model: m.init(jax.random.PRNGKey(0), x, False), x)
        counts[name] = sum(int(v.size) for v in jax.tree.leaves(shapes.get("params", {})))
    return counts
