"""ResNet-20 / LeNet-5 CPU training steps with and without the batch-chunked weight gradient.

    python experiments/cpu_weight_grad_chunks.py resnet20 [ROUNDS]

Issue 9, item 4: builds ``cnnjax bench train``'s variants in one process: custom VJP with the
weight gradient in one piece (the chunk size set above the batch at trace time, the old
lowering), custom VJP as shipped (batch chunks on CPU), ``impl="xla"`` and the PyTorch twin, then
times 2 steps of each in rotating rounds. Prints medians and minima in ms, ratios to the old
lowering and to torch, and the load average (read the ratios with it).
"""

from __future__ import annotations

import os
import statistics
import sys
import time

from cnnjax.bench.train import jax_variant, torch_variant
from cnnjax.ops import xla_cpu as C


def main(model: str, rounds: int) -> None:
    shape = (32, 32, 1) if model == "lenet5" else (32, 32, 3)
    kw = dict(dtype="float32", precision=None, batch=128, shape=shape, num_classes=10)
    chunk = C.WEIGHT_GRAD_BATCH_CHUNK
    C.WEIGHT_GRAD_BATCH_CHUNK = 10**9  # no chunks: the previous lowering
    variants = {"custom, whole dw": jax_variant(model, impl="custom", **kw)}
    C.WEIGHT_GRAD_BATCH_CHUNK = chunk
    variants["custom, chunked dw"] = jax_variant(model, impl="custom", **kw)
    variants["xla"] = jax_variant(model, impl="xla", **kw)
    threads = os.cpu_count() or 1
    torch = torch_variant(model, dtype="float32", batch=128, shape=shape, num_classes=10,
                          threads=threads)  # fmt: skip
    if torch is not None:
        variants[torch.name] = torch
    keys = list(variants)
    times = {k: [] for k in keys}
    for v in variants.values():
        v.step(1)
    for r in range(rounds):
        for k in keys[r % len(keys) :] + keys[: r % len(keys)]:
            start = time.perf_counter()
            variants[k].step(2)
            times[k].append((time.perf_counter() - start) / 2 * 1e3)
    base = statistics.median(times[keys[0]])
    ref = statistics.median(times[torch.name]) if torch is not None else None
    for k in keys:
        m = statistics.median(times[k])
        vs_torch = f"  /torch {m / ref:.2f}" if ref else ""
        print(f"{model} {k:30s} median {m:8.1f}  min {min(times[k]):8.1f}  /whole {m / base:.3f}"
              f"{vs_torch}")  # fmt: skip
    print("load", open("/proc/loadavg").read().strip())


if __name__ == "__main__":
    main(
        sys.argv[1] if len(sys.argv) > 1 else "resnet20",
        int(sys.argv[2]) if len(sys.argv) > 2 else 7,
    )
