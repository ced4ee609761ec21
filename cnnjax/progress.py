"""Progress with an estimate of the time left, on stderr, for commands that run a while.

One helper for every long command (``cnnjax eval``, ``cnnjax bench ops|train|data``,
``cnnjax gradcheck``): a tqdm bar on stderr (``done/total [elapsed<left, rate]``), shown only
once the work has run ``delay`` seconds (quick runs print nothing extra); stdout (tables,
results) stays exactly as it was. On a terminal it redraws in place and is cleared when it ends;
piped into a log it writes a ``\\r``-separated update at most every 10 s and keeps its last
frame (count and time taken) as a line.

``CNNJAX_PROGRESS_DELAY`` (seconds; default 2) changes the delay, e.g. ``0`` to always show it;
``CNNJAX_PROGRESS=0`` turns it off.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

__all__ = ["DELAY_S", "echo", "progress_bar", "track"]

DELAY_S = 2.0  # a command that ends sooner shows no bar


def progress_bar(total: int | None, desc: str, unit: str = "it", *, enabled: bool = True):
    """A ``tqdm`` bar on stderr over ``total`` units (``None``: unknown, no estimate).

    Use ``bar.update(n)``, ``bar.set_description(text)``, :func:`echo` (prints a result line on
    stdout without tearing the bar) and ``bar.close()`` (or ``with``).
    Disabled (``enabled=False`` or ``CNNJAX_PROGRESS=0``) it accepts the same calls and prints
    only what ``write`` is given.
    """
    from tqdm.auto import tqdm

    terminal = sys.stderr.isatty()
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        delay=_delay(),
        mininterval=0.2 if terminal else 10.0,
        dynamic_ncols=terminal,
        leave=not terminal,  # a log keeps the last frame: count, time taken
        disable=not (_switched_on() and enabled),
    )


def track(iterable: Iterable, total: int | None, desc: str, unit: str = "it", enabled=True):
    """Iterate ``iterable`` with a :func:`progress_bar` (closed when the loop ends)."""
    with progress_bar(total, desc, unit, enabled=enabled) as bar:
        for item in iterable:
            yield item
            bar.update(1)


def echo(bar, line: str) -> None:
    """Print a result ``line`` on stdout without tearing ``bar``, flushed (logs see it now)."""
    bar.write(line, file=sys.stdout)
    sys.stdout.flush()


def _switched_on() -> bool:
    """``CNNJAX_PROGRESS``: ``1`` (the default) or ``0``; anything else raises ``ValueError``."""
    text = os.environ.get("CNNJAX_PROGRESS", "1")
    if text not in ("0", "1"):
        raise ValueError(f"CNNJAX_PROGRESS must be 0 (no progress bars) or 1, got {text!r}")
    return text == "1"


def _delay() -> float:
    text = os.environ.get("CNNJAX_PROGRESS_DELAY")
    if text is None:
        return DELAY_S
    try:
        return max(0.0, float(text))
    except ValueError:
        raise ValueError(
            f"CNNJAX_PROGRESS_DELAY must be a number of seconds, got {text!r}"
        ) from None
