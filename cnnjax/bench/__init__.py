"""``cnnjax bench``: benchmarks, reported as ratios measured side by side in one run.

    cnnjax bench ops [--batch 8] [--repeats 20] [--json out.json]

Subcommands live in this package, one module each; each exposes ``main(argv) -> int``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cnnjax bench", description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=["ops"], help="which benchmark suite to run")
    args, rest = parser.parse_known_args(argv)
    if args.suite == "ops":
        from cnnjax.bench import ops

        return ops.main(rest)
    raise AssertionError(args.suite)  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
