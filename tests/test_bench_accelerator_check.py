"""experiments/accelerator_check.sh in its CPU tiny mode (issue 9, item 3): the plumbing that
the one GPU run depends on — stages, timeouts, budget, JSON under $OUT."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "accelerator_check.sh"

pytestmark = pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash, timeout"
)


def _run(out: pathlib.Path, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, **env}
    return subprocess.run(
        ["bash", str(SCRIPT)], env=full_env, capture_output=True, text=True, timeout=600
    )


def test_tiny_check_runs_every_stage_and_writes_json(tmp_path):
    proc = _run(tmp_path, CNNJAX_CHECK_TINY="1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    stages = summary["stages"]
    assert list(stages) == [
        "env",
        "import",
        "bench_big",
        "maxpool",
        "tests",
        "bench_small",
    ]
    assert all(s["status"] == "ok" for s in stages.values()), stages
    assert summary["env"]["backend"] == "cpu"
    big, small = summary["bench_big"], summary["bench_small"]
    assert big["model"] == small["model"] == "lenet5"
    assert [r["variant"] for r in big["results"]] == ["jax custom bfloat16", "jax custom float32"]
    assert [r["variant"] for r in small["results"]] == ["jax xla float32"]
    assert all(r["img_per_s"] > 0 for r in big["results"] + small["results"])
    det = summary["maxpool_determinism"]
    assert det["bitwise_equal_across_processes"] and det["bitwise_equal_within_process"]
    assert det["max_abs_diff_vs_xla_autodiff"] < 1e-5
    # at most 8 files come back from the device machine's $OUT
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) <= 8 and "check.log" in files, files


def test_spent_budget_skips_stages_and_fails(tmp_path):
    # A budget too small for any stage: everything is skipped, nothing hangs, exit is non-zero,
    # and the summary still says what happened.
    proc = _run(tmp_path, CNNJAX_CHECK_TINY="1", CNNJAX_CHECK_BUDGET_S="5")
    assert proc.returncode != 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {s["status"] for s in summary["stages"].values()} == {"skipped"}
    assert "SKIP env: budget spent" in (tmp_path / "check.log").read_text()
