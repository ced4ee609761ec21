"""Forward and forward+backward timings of every op, ``impl="custom"`` vs ``impl="xla"``.

Both implementations are jitted, warmed up, then timed in alternation (custom and xla back to
back, the first of the pair alternating) so that machine load and cache state hit both alike;
the table reports medians and the ratio custom/xla (< 1 means the hand-written rule is
faster). Shapes are ResNet-like (ImageNet stages at a small batch, so a CPU finishes in minutes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from cnnjax import ops


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    shapes: tuple[tuple[int, ...], ...]  # shapes of the differentiable arguments
    call: Callable  # call(*arrays, impl=...)


def _workload(name: str, shapes, op: Callable, *args, **kwargs) -> Workload:
    """``op(*arrays, *args, impl=impl, **kwargs)`` on arrays of ``shapes``."""
    return Workload(name, shapes, lambda *arrays, impl: op(*arrays, *args, impl=impl, **kwargs))


def workloads(batch: int) -> list[Workload]:
    """The timed ops: ResNet/AlexNet-like layers at batch ``batch``."""
    n = batch
    image = (n, 56, 56, 64)
    return [
        _workload(
            "conv 3x3/1 56x56x64->64", (image, (3, 3, 64, 64)), ops.conv, stride=1, padding=1
        ),
        _workload(
            "conv 3x3/2 56x56x64->128", (image, (3, 3, 64, 128)), ops.conv, stride=2, padding=1
        ),
        _workload("conv 1x1/1 28x28x256->64", ((n, 28, 28, 256), (1, 1, 256, 64)), ops.conv),
        _workload(
            "conv 7x7/2 224x224x3->64",
            ((n, 224, 224, 3), (7, 7, 3, 64)),
            ops.conv,
            stride=2,
            padding=3,
        ),
        _workload(
            "depthwise 3x3/1 56x56x128",
            ((n, 56, 56, 128), (3, 3, 1, 128)),
            ops.depthwise_conv,
            padding=1,
        ),
        _workload(
            "conv_transpose 4x4/2 28x28x128->64",
            ((n, 28, 28, 128), (4, 4, 128, 64)),
            ops.conv_transpose,
            stride=2,
            padding=1,
        ),
        _workload(
            "max_pool 3x3/2 p1 112x112x64", ((n, 112, 112, 64),), ops.max_pool, 3, 2, padding=1
        ),
        _workload("max_pool 2x2/2 56x56x64", (image,), ops.max_pool, 2, 2),
        _workload("avg_pool 3x3/2 p1 56x56x64", (image,), ops.avg_pool, 3, 2, padding=1),
        _workload("lp_pool p=2 2x2/2 56x56x64", (image,), ops.lp_pool, 2.0, 2),
        _workload("global_avg_pool 7x7x512", ((n, 7, 7, 512),), ops.global_avg_pool),
        _workload(
            "local_response_norm n=5 27x27x96",
            ((n, 27, 27, 96),),
            ops.local_response_norm,
            5,
            1e-4,
            0.75,
            2.0,
        ),
        _workload(
            "local_contrast_norm 9x9 32x32x16", ((n, 32, 32, 16),), ops.local_contrast_norm, 9
        ),
    ]


def _compile(workload: Workload, impl: str, arrays):
    def forward(*a):
        return workload.call(*a, impl=impl)

    def loss(*a):
        return jnp.sum(workload.call(*a, impl=impl))

    options = ops.compiler_options() or None  # as cnnjax train compiles (CPU conv library)
    fwd = jax.jit(forward, compiler_options=options)
    fwd_bwd = jax.jit(
        jax.value_and_grad(loss, argnums=tuple(range(len(arrays)))), compiler_options=options
    )
    jax.block_until_ready(fwd(*arrays))
    jax.block_until_ready(fwd_bwd(*arrays))
    return fwd, fwd_bwd


def _time(fn, arrays) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(*arrays))
    return time.perf_counter() - start


def run(batch: int, repeats: int, only: str | None) -> list[dict]:
    from cnnjax.progress import echo, progress_bar

    rows = []
    chosen = [wl for wl in workloads(batch) if not only or only in wl.name]
    bar = progress_bar(len(chosen), "bench ops", "workload")
    for wl in chosen:
        bar.set_description(wl.name, refresh=False)
        keys = jax.random.split(jax.random.PRNGKey(0), len(wl.shapes))
        arrays = tuple(jax.random.normal(k, s, jnp.float32) for k, s in zip(keys, wl.shapes))
        compiled = {impl: _compile(wl, impl, arrays) for impl in ("custom", "xla")}
        times = {(impl, kind): [] for impl in compiled for kind in ("fwd", "fwd+bwd")}
        for repeat in range(repeats):
            # Same kind back to back, and which impl goes first alternates, so cache state and
            # machine load fall on both alike.
            order = ("custom", "xla") if repeat % 2 == 0 else ("xla", "custom")
            for kind_index, kind in enumerate(("fwd", "fwd+bwd")):
                for impl in order:
                    times[(impl, kind)].append(_time(compiled[impl][kind_index], arrays))
        median = {k: statistics.median(v) for k, v in times.items()}
        row = {"workload": wl.name, "batch": batch}
        for kind in ("fwd", "fwd+bwd"):
            row[f"custom {kind} ms"] = 1e3 * median[("custom", kind)]
            row[f"xla {kind} ms"] = 1e3 * median[("xla", kind)]
            row[f"ratio {kind}"] = median[("custom", kind)] / median[("xla", kind)]
        rows.append(row)
        echo(bar, _format_row(row))
        bar.update(1)
    bar.close()
    return rows


_COLUMNS = [
    ("workload", 36, "s"),
    ("custom fwd ms", 13, ".2f"),
    ("xla fwd ms", 13, ".2f"),
    ("ratio fwd", 10, ".2f"),
    ("custom fwd+bwd ms", 13, ".2f"),
    ("xla fwd+bwd ms", 13, ".2f"),
    ("ratio fwd+bwd", 10, ".2f"),
]


def _header() -> str:
    names = ["workload", "cust fwd ms", "xla fwd ms", "ratio", "cust f+b ms", "xla f+b ms", "ratio"]
    return "".join(
        f"{n:<{w}}" if i == 0 else f"{n:>{w}}"
        for i, (n, (_, w, _)) in enumerate(zip(names, _COLUMNS))
    )


def _format_row(row: dict) -> str:
    return "".join(
        f"{row[k]:<{w}{f}}" if i == 0 else f"{row[k]:>{w}{f}}"
        for i, (k, w, f) in enumerate(_COLUMNS)
    )


def run_from_args(args: argparse.Namespace) -> int:
    """The ``cnnjax bench ops`` handler (arguments defined in :mod:`cnnjax.bench`)."""
    for name in ("batch", "repeats"):
        if getattr(args, name) < 1:
            raise ValueError(f"bench ops: --{name} must be >= 1, got {getattr(args, name)}")
    device = jax.devices()[0]
    print(
        f"# jax {jax.__version__} on {device.platform} ({device.device_kind}), "
        f"{platform.processor() or platform.machine()}, batch {args.batch}, "
        f"median of {args.repeats}"
    )
    print(_header())
    rows = run(args.batch, args.repeats, args.only)
    if args.json:
        meta = {"jax": jax.__version__, "device": str(device), "repeats": args.repeats}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": rows}, f, indent=2)
        print(f"wrote {args.json}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cnnjax.bench.ops ...`` = ``cnnjax bench ops ...``."""
    from cnnjax.bench import main as bench_main

    argv = sys.argv[1:] if argv is None else argv
    return bench_main(["ops", *argv])


if __name__ == "__main__":
    sys.exit(main())
