"""`cnnjax gradcheck` and `cnnjax bench ops` run, and gradcheck fails on a wrong rule."""

from __future__ import annotations

import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import gradcheck
from cnnjax.bench import ops as bench_ops


def test_gradcheck_passes_on_every_op(capsys):
    assert gradcheck.main(["--cases", "2", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    for op in gradcheck.SWEEPS:
        assert op in out
    assert "OK: every custom VJP equals autodiff" in out


def test_gradcheck_fails_on_a_wrong_backward_rule(monkeypatch, capsys):
    import jax

    @jax.custom_vjp
    def square(x):
        return x**2

    square.defvjp(lambda x: (x**2, x), lambda x, g: (g * x,))  # wrong: should be 2 g x

    def case(rng):
        x = rng.standard_normal((2, 3))
        return gradcheck.Case(
            "square", (x,), lambda x, impl: square(x) if impl == "custom" else x**2
        )

    monkeypatch.setitem(gradcheck.SWEEPS, "conv", case)
    assert gradcheck.main(["--ops", "conv", "--cases", "2"]) == 1
    out = capsys.readouterr().out
    assert "FAIL conv" in out


def test_relative_error():
    assert gradcheck.relative_error(jnp.ones(3), jnp.ones(3)) == 0.0
    np.testing.assert_allclose(
        gradcheck.relative_error(jnp.array([1.0, 2.0]), jnp.array([1.0, 4.0])), 0.5
    )


def test_bench_ops_runs_and_writes_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert (
        bench_ops.main(
            ["--batch", "1", "--repeats", "1", "--only", "global_avg", "--json", str(path)]
        )
        == 0
    )
    rows = json.loads(path.read_text())["results"]
    assert [r["workload"] for r in rows] == ["global_avg_pool 7x7x512"]
    assert rows[0]["ratio fwd+bwd"] > 0
    assert "ratio" in capsys.readouterr().out


def test_gradcheck_low_precision_against_float64_with_edge_inputs(capsys):
    code = gradcheck.main(["--dtype", "bfloat16", "--cases", "2", "--ops", "avg_pool", "lp_pool"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "custom and xla in bfloat16 vs float64, with edge inputs" in out
    assert "OK: both impls in bfloat16 are within 0.016 relative of float64." in out
    assert "left" not in out  # the time-left estimate is the stderr bar's, not in the table


def test_gradcheck_low_precision_fails_on_a_lossy_low_precision_op(monkeypatch, capsys):
    def case(rng):
        x = rng.random((1, 16, 1)) + 0.5

        def lossy(x, impl):
            # Below float64 it keeps 3 fractional bits (far coarser than bfloat16's 8 bits).
            return x if x.dtype == jnp.float64 else jnp.round(x * 8) / 8

        return gradcheck.Case("lossy", (x,), lossy)

    monkeypatch.setitem(gradcheck.SWEEPS, "avg_pool", case)
    assert gradcheck.main(["--ops", "avg_pool", "--cases", "1", "--dtype", "bfloat16"]) == 1
    assert "FAIL avg_pool" in capsys.readouterr().out


def test_relative_error_of_infinities_and_nan():
    inf = np.array([-np.inf, 1.0])
    assert gradcheck.relative_error(inf, inf) == 0.0
    assert gradcheck.relative_error(np.array([np.nan, 1.0]), np.array([0.0, 1.0])) == np.inf


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--cases", "0"], "--cases must be >= 1, got 0"),
        (["--cases", "-2"], "--cases must be >= 1, got -2"),
        (["--tol", "nan"], "--tol must be a finite number >= 0, got 'nan'"),
        (["--tol", "-0.5"], "--tol must be a finite number >= 0, got '-0.5'"),
        (["--seed", "-1"], "--seed must be >= 0, got -1"),
    ],
)
def test_gradcheck_refuses_arguments_that_check_nothing(argv, match):
    # --cases 0 printed "OK" after checking nothing; --tol nan failed every op; --seed -1 raised
    # a NumPy traceback. Now: one line on stderr, exit status 2, nothing on stdout.
    result = subprocess.run(
        [sys.executable, "-m", "cnnjax.cli", "gradcheck", "--ops", "conv", *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], result.stderr


def test_gradcheck_covers_depthwise_and_separable_conv(capsys):
    assert gradcheck.main(["--ops", "depthwise_conv", "separable_conv", "--cases", "2"]) == 0
    out = capsys.readouterr().out
    assert "depthwise_conv             2" in out and "separable_conv             2" in out
