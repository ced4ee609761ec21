#!/usr/bin/env bash
# One-shot accelerator check for cnnjax (issue 9): < 8 minutes on one H100/H200, never hangs.
#
#   OUT=/some/dir experiments/accelerator_check.sh        # real run (GPU/TPU)
#   CNNJAX_CHECK_TINY=1 OUT=/tmp/x experiments/accelerator_check.sh   # CPU smoke test (1-4 min)
#
# Stages, each under `timeout` and skipped when the overall budget is spent:
#   env      nvidia-smi, jax devices, versions                       -> summary.json
#   import   `import cnnjax.train`; if it fails, installs wheels from .whl/ (or
#            $CNNJAX_WHEELS) offline into a temporary --target (the device machine has no
#            internet; ml_collections is the one package its image lacks)
#   bench    `cnnjax bench train resnet50` batch 256 bf16 and f32 (custom, xla), one process
#                                                                    -> bench_big.json
#   maxpool  custom max-pool backward under XLA_FLAGS=--xla_gpu_deterministic_ops=true, run in
#            two processes: bitwise equal?                            -> maxpool_determinism.json
#   tests    ops custom vs xla in float32, gradients, max-pool ties, precision threading, on
#            the GPU (JAX_DEFAULT_MATMUL_PRECISION=highest: these tests check exactness)
#   bench    `cnnjax bench train resnet20` batch 128 (custom, xla, f32, bf16, torch twin)
#                                                                    -> bench_small.json
# On this workplace's lent H200 (no internet; its python3 has jax 0.11 + CUDA, flax, optax,
# orbax, torch, pytest, hypothesis, but not ml_collections), once, in the repo root here:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .whl ml-collections==1.1.0
# then run it with carry [".whl"], timeout_s 540: `bash experiments/accelerator_check.sh`.
# Everything printed also goes to $OUT/check.log. Env knobs: CNNJAX_CHECK_BUDGET_S (total
# seconds, default 460), PYTHON (default python3), CNNJAX_CHECK_TINY=1.
set -u -o pipefail

START=$(date +%s)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
OUT="${OUT:-$(mktemp -d /tmp/cnnjax_check.XXXXXX)}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
TINY="${CNNJAX_CHECK_TINY:-0}"
BUDGET="${CNNJAX_CHECK_BUDGET_S:-460}"
LOG="$OUT/check.log"
STATUS="$OUT/.stages"
: >"$LOG"
: >"$STATUS"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export TF_CPP_MIN_LOG_LEVEL=2

if [ "$TINY" = "1" ]; then
    # The plumbing only: one small compile per bench stage.
    BIG_MODEL=lenet5 BIG_ARGS="--tiny --no-torch --impl custom --image-size 32"
    SMALL_MODEL=lenet5 SMALL_ARGS="--tiny --no-torch --impl xla --dtype float32"
    TEST_SELECT=(tests/test_precision.py -k "canonicalize")
    POOL_SHAPE="2,8,8,3"
    TEST_WORKERS=0
else
    BIG_MODEL=resnet50 BIG_ARGS="--batch 256 --steps 10 --warmup 3 --repeats 3 --no-torch"
    SMALL_MODEL=resnet20 SMALL_ARGS="--batch 128 --steps 20 --warmup 3 --repeats 5"
    # ~310 tests: conv/pool/precision/edge-case forward and gradients vs oracles, xla and torch,
    # max-pool ties (not: hypothesis sweeps, export lists). Measured on an H200 on 2026-11-30:
    # 312 tests in 72 s with -n 6 (a serial run did not finish in 120 s).
    TEST_SELECT=(tests/test_conv.py tests/test_pooling.py tests/test_precision.py
        tests/test_edges.py -k "not (hypothesis or reexported)")
    POOL_SHAPE="64,112,112,64"
    TEST_WORKERS=6
fi

log() { echo "[$(($(date +%s) - START))s] $*" | tee -a "$LOG"; }

# stage NAME MAX_SECONDS CMD...: run CMD under timeout min(MAX, what the budget leaves - 10 s).
stage() {
    local name=$1 max=$2
    shift 2
    local left=$((BUDGET - ($(date +%s) - START) - 10))
    local limit=$((max < left ? max : left))
    if [ "$limit" -lt 5 ]; then
        log "SKIP $name: budget spent"
        echo "$name skipped 0 0" >>"$STATUS"
        return 0
    fi
    log "BEGIN $name (timeout ${limit}s): $*"
    local t0 rc
    t0=$(date +%s)
    # bash -c so that shell functions run too; timeout signals the whole process group.
    timeout --kill-after=5 "$limit" bash -c '"$@"' stage "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    local took=$(($(date +%s) - t0))
    local what=ok
    [ "$rc" -ne 0 ] && what=failed
    [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && what=timeout
    log "END $name: $what (rc=$rc, ${took}s)"
    echo "$name $what $rc $took" >>"$STATUS"
}

env_info() {
    command -v nvidia-smi >/dev/null && nvidia-smi || echo "no nvidia-smi"
    "$PY" - <<'EOF'
import json, os, platform, sys
import jax
info = {
    "python": sys.version.split()[0],
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "devices": [f"{d.platform}:{d.device_kind}" for d in jax.devices()],
    "cpu_count": os.cpu_count(),
    "machine": platform.machine(),
    "load_avg": os.getloadavg(),
}
for name in ("jaxlib", "flax", "optax", "torch", "numpy"):
    try:
        info[name] = __import__(name).__version__
    except Exception as e:  # noqa: BLE001
        info[name] = f"missing ({type(e).__name__})"
print(json.dumps(info, indent=1))
json.dump(info, open(os.environ["OUT"] + "/.env.json", "w"))
EOF
}

ensure_import() {
    if "$PY" -c "import cnnjax.train, cnnjax.bench.train" 2>/dev/null; then
        echo "cnnjax imports from $ROOT"
        return 0
    fi
    local wheels="${CNNJAX_WHEELS:-$ROOT/.whl}"
    if ls "$wheels"/*.whl >/dev/null 2>&1; then
        echo "installing $(ls "$wheels"/*.whl | wc -l) wheel(s) from $wheels (offline)"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
            --target /tmp/cnnjax_site "$wheels"/*.whl || return 1
    else
        echo "no wheels in $wheels; trying pip install -e .[test] (needs network)"
        "$PY" -m pip install -q -e ".[test]" || return 1
    fi
    PYTHONPATH="$PYTHONPATH:/tmp/cnnjax_site" "$PY" -c "import cnnjax.train, cnnjax.bench.train"
}

maxpool_determinism() {
    # Gradient of the custom max pool (3x3/2, overlapping windows, many ties from rounding to a
    # coarse grid) in two fresh processes under --xla_gpu_deterministic_ops; bitwise comparison.
    local code='
import hashlib, sys
import jax, jax.numpy as jnp, numpy as np
from cnnjax import ops
shape = tuple(int(s) for s in sys.argv[1].split(","))
x = jnp.round(jax.random.normal(jax.random.key(0), shape) * 4) / 4  # many ties
g = jax.random.normal(jax.random.key(1), (shape[0], (shape[1] + 1) // 2, (shape[2] + 1) // 2, shape[3]))
def f(x, impl):
    y = ops.max_pool(x, (3, 3), (2, 2), padding=1, impl=impl)
    return jnp.vdot(y, g)
dx = jax.jit(jax.grad(f), static_argnums=1)
a = np.asarray(dx(x, "custom")); b = np.asarray(dx(x, "custom"))
r = np.asarray(dx(x, "xla"))
print(hashlib.sha256(a.tobytes()).hexdigest(), int((a == b).all()), float(np.abs(a - r).max()))
'
    local h1 h2
    h1=$(XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_deterministic_ops=true" "$PY" -c "$code" "$POOL_SHAPE") || return 1
    h2=$(XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_deterministic_ops=true" "$PY" -c "$code" "$POOL_SHAPE") || return 1
    echo "run1: $h1"
    echo "run2: $h2"
    "$PY" - "$h1" "$h2" "$POOL_SHAPE" >"$OUT/maxpool_determinism.json" <<'EOF'
import json, sys
(h1, same1, d1), (h2, same2, d2) = (s.split() for s in sys.argv[1:3])
print(json.dumps({
    "shape": sys.argv[3], "xla_flags": "--xla_gpu_deterministic_ops=true",
    "sha256_run1": h1, "sha256_run2": h2,
    "bitwise_equal_across_processes": h1 == h2,
    "bitwise_equal_within_process": same1 == same2 == "1",
    "max_abs_diff_vs_xla_autodiff": max(float(d1), float(d2)),
}, indent=1))
EOF
    cat "$OUT/maxpool_determinism.json"
    [ "$h1" = "$h2" ]
}

export OUT PY ROOT POOL_SHAPE
export -f env_info ensure_import maxpool_determinism
log "cnnjax accelerator check in $ROOT, OUT=$OUT, budget ${BUDGET}s, tiny=$TINY"
stage env 60 env_info
stage import 90 ensure_import
export PYTHONPATH="$PYTHONPATH:/tmp/cnnjax_site"
# The headline numbers first: all four ResNet-50 variants (custom/xla x bf16/f32) in one
# process, compiled in parallel threads (compiles are CPU-bound, the host has 16 cores), timed
# interleaved so that the custom/xla ratios hold.
# shellcheck disable=SC2086
stage bench_big 240 "$PY" -m cnnjax.cli bench train "$BIG_MODEL" $BIG_ARGS \
    --dtype bfloat16,float32 --compile-threads 4 --json "$OUT/bench_big.json"
stage maxpool 60 maxpool_determinism
# tests/conftest.py pins JAX_PLATFORMS=cpu unless set: set it empty so the tests use the GPU.
# Several pytest workers share the GPU: no preallocation. pytest-benchmark (in the device image)
# warns under xdist, which filterwarnings=error would turn into an error: disable it.
stage tests 120 env JAX_PLATFORMS= JAX_DEFAULT_MATMUL_PRECISION=highest \
    XLA_PYTHON_CLIENT_PREALLOCATE=false "$PY" -m pytest -q -n "$TEST_WORKERS" -p no:benchmark \
    -p no:cacheprovider -W ignore::DeprecationWarning -W ignore::FutureWarning \
    -o faulthandler_timeout=60 --junitxml="$OUT/tests.xml" \
    "${TEST_SELECT[@]}"
# torch shares the GPU with JAX here: leave it room.
# shellcheck disable=SC2086
stage bench_small 80 env XLA_PYTHON_CLIENT_MEM_FRACTION=0.5 "$PY" -m cnnjax.cli bench train \
    "$SMALL_MODEL" $SMALL_ARGS --json "$OUT/bench_small.json"

"$PY" - "$STATUS" "$OUT" "$(($(date +%s) - START))" <<'EOF' | tee -a "$LOG"
import json, os, pathlib, sys
status, out, took = sys.argv[1], pathlib.Path(sys.argv[2]), int(sys.argv[3])
stages = {}
for line in open(status):
    name, what, rc, secs = line.split()
    stages[name] = {"status": what, "rc": int(rc), "seconds": int(secs)}
summary = {"seconds": took, "stages": stages}
env = out / ".env.json"
if env.exists():
    summary["env"] = json.loads(env.read_text())
for f in sorted(out.glob("bench_*.json")):
    data = json.loads(f.read_text())
    keys = ("variant", "img_per_s", "step_ms", "compile_s", "custom_over_xla", "jax_over_torch")
    summary[f.stem] = {
        "model": data["meta"]["model"],
        "batch": data["meta"]["batch"],
        "peak_device_memory_mb": data["meta"].get("peak_device_memory_mb"),
        "results": [{k: r.get(k) for k in keys} for r in data["results"]],
    }
det = out / "maxpool_determinism.json"
if det.exists():
    summary["maxpool_determinism"] = json.loads(det.read_text())
(out / "summary.json").write_text(json.dumps(summary, indent=1))
print(json.dumps({k: v for k, v in summary.items() if k != "env"}, indent=1))
EOF
rm -f "$OUT/.env.json" "$STATUS"
log "done in $(($(date +%s) - START))s; results in $OUT"
# exit status: 0 only when every stage passed
[ -f "$OUT/summary.json" ] && ! grep -q '"status": "\(failed\|timeout\|skipped\)"' "$OUT/summary.json"
