"""Shared output of the benchmarks: machine description, table, JSON, BENCHMARKS.md entry."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import shlex
import sys
import time
from collections.abc import Callable, Hashable, Sequence

import jax

__all__ = [
    "append_markdown",
    "emit",
    "format_table",
    "machine_meta",
    "peak_device_memory_mb",
    "split_list",
    "time_rotating_rounds",
]


def machine_meta() -> dict:
    """Date, versions, device, CPU count and load average: what a reader needs to compare."""
    device = jax.devices()[0]
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": f"{device.platform}: {device.device_kind}",
        "device_count": jax.device_count(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_avg": [round(x, 2) for x in load] if load else None,
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),  # the CLI sets malloc.hugetlb=1
        "xla_flags": os.environ.get("XLA_FLAGS"),  # (may override compiler_options)
        "command": "cnnjax " + shlex.join(sys.argv[1:]) if sys.argv else None,
    }


def peak_device_memory_mb() -> float | None:
    """``peak_bytes_in_use`` of device 0 in MiB (``None`` where the backend has no stats: CPU)."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:
        return None
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return stats["peak_bytes_in_use"] / 2**20


def time_rotating_rounds(
    blocks: dict[Hashable, Callable[[int], None]],
    repeats: int,
    *,
    settle_s: float = 0.0,
    done: Callable[[], None] = lambda: None,
) -> dict[Hashable, list[float]]:
    """Seconds of each ``blocks[key](round)`` call, ``repeats`` rounds of every block.

    The order rotates by one block from round to round, so that machine load falls on all
    alike; ``settle_s`` is slept before each block and ``done()`` called after it, both outside
    the timed span.
    """
    keys = list(blocks)
    times: dict[Hashable, list[float]] = {key: [] for key in keys}
    for r in range(repeats):
        shift = r % len(keys)
        for key in keys[shift:] + keys[:shift]:
            if settle_s:
                time.sleep(settle_s)
            start = time.perf_counter()
            blocks[key](r)
            times[key].append(time.perf_counter() - start)
            done()
    return times


def split_list(text: str, allowed: Sequence[str], flag: str) -> tuple[str, ...]:
    """``"a,b"`` → ``("a", "b")``, each in ``allowed`` (else a ValueError naming ``flag``)."""
    items = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in items if s not in allowed]
    if bad or not items:
        raise ValueError(f"{flag} must be a comma list of {', '.join(allowed)}; got {text!r}")
    return items


def format_table(rows: list[dict], columns) -> str:
    """Fixed-width text table; ``columns`` = ``(key, header, align+width, format)`` tuples."""
    lines = ["".join(f"{header:{align}}" for _, header, align, _ in columns)]
    for row in rows:
        cells = []
        for key, _, align, fmt in columns:
            value = row.get(key)
            text = "-" if value is None else format(value, fmt)
            cells.append(f"{text:{align}}")
        lines.append("".join(cells))
    return "\n".join(lines)


def _markdown_table(rows: list[dict], columns) -> str:
    out = ["| " + " | ".join(h for _, h, _, _ in columns) + " |"]
    out.append("|" + "|".join(" --- " for _ in columns) + "|")
    for row in rows:
        cells = ["-" if row.get(k) is None else format(row[k], f) for k, _, _, f in columns]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def append_markdown(path: str | os.PathLike, title: str, result: dict, columns) -> None:
    """Append ``## title`` with the machine, the command and the table to ``path``."""
    meta = result["meta"]
    settings = {k: v for k, v in meta.items() if k not in ("date_utc", "command", "jax")}
    text = (
        f"\n## {title} ({meta['date_utc']})\n\n"
        f"`{meta['command']}` — jax {meta['jax']}; "
        + ", ".join(f"{k}={v}" for k, v in settings.items())
        + "\n\n"
        + _markdown_table(result["results"], columns)
        + "\n"
    )
    path = pathlib.Path(path)
    with path.open("a") as f:
        f.write(text)


def emit(result: dict, columns, args: argparse.Namespace, *, title: str) -> None:
    """Print the table (and a one-line header); write ``--json``; append ``--append-md``."""
    meta = result["meta"]
    if getattr(args, "argv", None) is not None:
        meta["command"] = "cnnjax " + shlex.join(args.argv)
    print(
        f"# {title}: jax {meta['jax']} on {meta['device']}, {meta['cpu_count']} CPUs, "
        f"load {meta['load_avg']}; medians of {meta.get('repeats')} rounds"
    )
    print(format_table(result["results"], columns))
    if args.json:
        pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json}")
    if args.append_md:
        append_markdown(args.append_md, title, result, columns)
        print(f"appended to {args.append_md}")
