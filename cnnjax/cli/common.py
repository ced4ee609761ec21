"""What every ``cnnjax`` command shares: the parser class (one error policy) and argument types.

The error policy, one for the whole command tree:

* a bad command line (unknown option, a value its type refuses): one line on stderr,
  ``cnnjax CMD: error: MESSAGE (see --help)``, exit status 2, no usage block;
* a bad input found while running (:data:`USER_ERRORS`: a missing file, an unknown model, a
  value out of range): one line, ``cnnjax CMD: error: FIRST LINE``, exit status 2;
* ``--debug`` anywhere on the line shows the full traceback instead;
* Ctrl-C: ``cnnjax CMD: interrupted``, exit status 130.

Argument types raise :class:`argparse.ArgumentTypeError` with a message that starts with
``must``; the parser prints it after the option's name: ``--batch must be >= 1, got 0``.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import re
from collections.abc import Callable, Sequence

__all__ = [
    "DEBUG_HELP",
    "USER_ERRORS",
    "CommandParser",
    "comma_list",
    "int_at_least",
    "number_at_least",
    "one_line",
    "slug",
]

# Mistakes in the user's input or environment, and the libraries' ways of saying so; any other
# exception is a bug and keeps its traceback.
USER_ERRORS = (ValueError, TypeError, OSError, KeyError)

DEBUG_HELP = "show the full traceback of an error instead of one line"


class CommandParser(argparse.ArgumentParser):
    """The parser of ``cnnjax`` and of each of its (sub)commands.

    Lists ``--debug`` in its help (``cnnjax.cli.main`` takes it from anywhere on the line) and
    reports a bad command line as one line with exit status 2. Sub-parsers made with
    ``add_subparsers`` are of the same class.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP
        )
        # The deepest parser that parsed the line names the command in error messages.
        self.set_defaults(command_parser=self)

    def error(self, message: str):
        """Print ``PROG: error: MESSAGE (see --help)`` on stderr and exit with status 2."""
        # "argument --batch: must be >= 1" -> "--batch must be >= 1" (our types' messages)
        message = re.sub(r"^argument (\S+): (?=must )", r"\1 ", message)
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def one_line(error: BaseException) -> str:
    """The first line of ``error``'s message, saying so when there is more (libraries' messages
    can run to thousands of lines)."""
    text = error.args[0] if isinstance(error, KeyError) and error.args else error
    lines = str(text).strip().splitlines() or [type(error).__name__]
    more = " (--debug for the rest)" if len(lines) > 1 else ""
    return lines[0] + more


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type=``: an integer ``>= low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def number_at_least(low: float) -> Callable[[str], float]:
    """An argparse ``type=``: a finite number ``>= low`` (NaN compares false with everything)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value >= low):
            raise argparse.ArgumentTypeError(f"must be a finite number >= {low:g}, got {text!r}")
        return value

    return parse


def comma_list(allowed: Sequence[str] | None = None, *, item=str, text: bool = False):
    """An argparse ``type=``: ``"a,b"`` -> ``("a", "b")``; no empty or repeated entry, each one
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


def slug(name: str) -> str:
    """``npz:data/mnist.npz`` -> ``mnist``, ``mynet:Net`` -> ``Net``: a file-name-safe tag."""
    tail = pathlib.Path(name.rsplit(":", 1)[1]).stem if ":" in name else name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", tail)
