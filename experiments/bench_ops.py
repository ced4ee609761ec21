"""Benchmark: every op, custom VJP vs XLA autodiff, side by side (same as `cnnjax bench ops`).

    python experiments/bench_ops.py --batch 8 --repeats 15 \\
        --json experiments/results/bench_ops_cpu.json
"""

import sys

from cnnjax.bench.ops import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
