"""``cnnjax bench``: benchmarks, reported as ratios measured side by side in one process.

    cnnjax bench ops [--batch 8] [--repeats 15] [--json out.json]
    cnnjax bench train MODEL [--batch 128] [--steps 10] [--dtype float32,bfloat16] [--tiny]
    cnnjax bench data DATASET [--batch 128] [--steps 20] [--padding 4] [--workers 0,2] [--tiny]

One module per suite (:mod:`~cnnjax.bench.ops`, :mod:`~cnnjax.bench.train`,
:mod:`~cnnjax.bench.data`), each with ``run_from_args(args)``; their arguments are defined with
the command, in :mod:`cnnjax.cli.bench`.
"""

from __future__ import annotations

__all__ = ["add_parsers", "main"]

# name here -> name in cnnjax.cli.bench
_COMMAND = {"add_parsers": "add_arguments", "check_outputs": "check_outputs", "run": "run"}


def __getattr__(name: str):
    """``main(argv)``, ``add_parsers(parser)``, ``run(args)`` and ``check_outputs(args)`` of the
    ``cnnjax bench`` command, kept for their old callers; looked up by name (PEP 562) so that
    the suites do not import the command line, which runs them."""
    if name == "main" or name in _COMMAND:
        import importlib

        if name == "main":
            return importlib.import_module("cnnjax.cli").entry_point("bench")
        return getattr(importlib.import_module("cnnjax.cli.bench"), _COMMAND[name])
    raise AttributeError(f"module 'cnnjax.bench' has no attribute {name!r}")
