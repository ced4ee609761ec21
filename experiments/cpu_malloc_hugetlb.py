"""CPU training step with and without glibc's huge-page malloc (``glibc.malloc.hugetlb=1``).

    python experiments/cpu_malloc_hugetlb.py resnet20 [PAIRS] [--torch]

Issue 9. Every XLA:CPU execution ``posix_memalign``s its temporary buffer (~290 MiB for ResNet-20
at batch 128) and every Eigen convolution ``malloc``s its packed im2col panel (72 MiB for a
32x32x16 layer). These come from the thread pool's (non-main) glibc arenas, whose heaps are at
most 64 MiB, so each one is a fresh ``mmap`` that is ``munmap``ped when freed: ~73,500 minor page
faults and ~150 ms of kernel CPU time per ResNet-20 step (``strace -k``, ``getrusage``). With
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (glibc >= 2.35, transparent huge pages in ``madvise``
or ``always`` mode) malloc ``madvise``s those mappings to 2 MiB pages: ~700 faults a step.
The tunable is read when the process starts, so each variant runs in its own process; the
processes alternate (ABBA...) and the script prints medians over all rounds, the ratio to the
plain process, page faults and system CPU per step, and the load average (read ratios with it).

Measured 2026-12-01 01:05-01:11 UTC (2-core EPYC, jax 0.10.2, float32, batch 128, load ~1.8):
ResNet-20 381.5 -> 317.3 ms/step (0.832; 73,639 -> 756 faults, 146 -> 47 ms system CPU a step),
LeNet-5 15.3 -> 15.3 ms (0.999), the PyTorch ResNet-20 twin 213.5 -> 196.6 ms (0.921).
Setting ``MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0`` (possible in-process with ``mallopt``) also
removes the faults but serialises the threads on one arena lock: 1.05x as long, not faster.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

TUNABLE = "glibc.malloc.hugetlb=1"


def child(model: str, framework: str, rounds: int, steps: int) -> None:
    """Time ``rounds`` x ``steps`` training steps; print per-round ms/step, faults, sys ms."""
    shape = (32, 32, 1) if model == "lenet5" else (32, 32, 3)
    if framework == "torch":
        from cnnjax.bench.train import torch_variant

        step = torch_variant(
            model, dtype="float32", batch=128, shape=shape, num_classes=10,
            threads=os.cpu_count() or 1,
        ).step  # fmt: skip
    else:
        step = _jax_step(model, shape)
    step(3)
    before, times = resource.getrusage(resource.RUSAGE_SELF), []
    for _ in range(rounds):
        start = time.perf_counter()
        step(steps)
        times.append((time.perf_counter() - start) / steps * 1e3)
    after, n = resource.getrusage(resource.RUSAGE_SELF), rounds * steps
    faults = (after.ru_minflt - before.ru_minflt) / n
    print(json.dumps([times, faults, (after.ru_stime - before.ru_stime) / n * 1e3]))


def _jax_step(model: str, shape: tuple[int, int, int]):
    """The step ``cnnjax bench train`` times (custom VJPs, compiled with compiler_options())."""
    from cnnjax.bench.train import jax_variant

    variant = jax_variant(
        model, impl="custom", dtype="float32", precision=None, batch=128, shape=shape,
        num_classes=10,
    )  # fmt: skip
    return variant.step


def main(model: str, pairs: int, framework: str) -> None:
    rounds, steps = (10, 10) if model == "lenet5" else (4, 3)
    results: dict[str, list] = {"plain": [], TUNABLE: []}
    for i in range(pairs):
        order = list(results) if i % 2 == 0 else list(results)[::-1]
        for name in order:
            env = dict(os.environ)
            if name == TUNABLE:
                env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES"), name]))
            cmd = [sys.executable, __file__, "--child", model, framework, str(rounds), str(steps)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = statistics.median(t for r in results["plain"] for t in r[0])
    print(f"{model} {framework}, {pairs} processes each, load {os.getloadavg()[0]:.2f}")
    for name, runs in results.items():
        times = [t for r in runs for t in r[0]]
        med = statistics.median(times)
        faults = statistics.median(r[1] for r in runs)
        sys_ms = statistics.median(r[2] for r in runs)
        print(
            f"  {name:24s} median {med:7.1f} ms/step (ratio {med / base:.3f}, min {min(times):.1f},"
            f" n={len(times)}), {faults:,.0f} page faults and {sys_ms:.0f} ms system CPU a step"
        )


if __name__ == "__main__":
    if sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        args = [a for a in sys.argv[1:] if not a.startswith("--")]
        main(
            args[0],
            int(args[1]) if len(args) > 1 else 6,
            "torch" if "--torch" in sys.argv else "jax",
        )
