"""``cnnjax.compiler_options`` (issue 9, item 4): which library runs CPU convolutions.

The default moves convolutions from YNNPACK to XLA's own emitters (measured faster for CNN
training; experiments/BENCHMARKS.md). Checked here: the options it returns, that they reach
the compiled programs of ``cnnjax train`` and ``cnnjax bench``, that they change *where*
convolutions run (the optimized HLO) and not *what* is computed.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cnnjax
from cnnjax import ops
from cnnjax.ops import xla_cpu as compile_options
from cnnjax.train import apply_overrides, default_config, evaluate, train

OPTION = "xla_cpu_experimental_ynn_fusion_type"
pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU compiler options")


def _ynn_convolutions(hlo: str) -> int:
    """How many YNNPACK fusions of an optimized HLO module contain a convolution."""
    bodies = dict(re.findall(r"^%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo, flags=re.M | re.S))
    called = re.findall(r'calls=%?([\w.\-]+)[^\n]*"kind":"__ynn_fusion"', hlo)
    return sum(" convolution(" in bodies.get(name, "") for name in called)


def _conv_step(x, w):
    return jax.grad(lambda w: jnp.sum(jnp.tanh(ops.conv(x, w, padding=1))))(w)


def _compiled_hlo(options) -> str:
    x = jnp.ones((8, 8, 8, 32), jnp.float32)
    w = jnp.ones((3, 3, 32, 32), jnp.float32)
    return jax.jit(_conv_step).lower(x, w).compile(compiler_options=options or None).as_text()


def test_default_moves_convolutions_off_ynnpack_and_keeps_dots():
    options = cnnjax.compiler_options()
    assert options == {OPTION: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
    assert _ynn_convolutions(_compiled_hlo({})) > 0  # XLA's default: YNNPACK convolutions
    assert _ynn_convolutions(_compiled_hlo(options)) == 0
    dot = jax.jit(lambda a, b: a @ b).lower(jnp.ones((64, 64)), jnp.ones((64, 64)))
    assert '"kind":"__ynn_fusion"' in dot.compile(compiler_options=options).as_text()


def test_values_are_unchanged():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((8, 8, 8, 32), dtype=np.float32))
    w = jnp.asarray(rng.standard_normal((3, 3, 32, 32), dtype=np.float32))
    ours = jax.jit(_conv_step, compiler_options=cnnjax.compiler_options())(x, w)
    xla_default = jax.jit(_conv_step)(x, w)
    # different kernels, different float32 summation order: measured 3.4e-6 of the largest value
    scale = float(np.max(np.abs(xla_default)))
    assert float(np.max(np.abs(ours - xla_default))) <= 1e-5 * scale


def test_ynnpack_other_backends_and_user_flags_give_no_options(monkeypatch):
    assert cnnjax.compiler_options("ynnpack") == {}
    assert cnnjax.compiler_options(backend="gpu") == {}
    assert cnnjax.compiler_options(backend="tpu") == {}
    monkeypatch.setenv("XLA_FLAGS", f"--{OPTION}=-reduce")  # the user's own choice wins
    assert cnnjax.compiler_options() == {}


def test_an_option_this_jaxlib_refuses_is_left_out():
    assert not compile_options._accepted((("xla_cpu_no_such_option", "1"),))
    assert not compile_options._accepted(((OPTION, "-individual_convolution"),))  # no +/- here
    assert compile_options._accepted(((OPTION, "LIBRARY_FUSION_TYPE_REDUCE"),))


@pytest.mark.parametrize("bad", ["eigen", "XLA", "", None])
def test_unknown_library_is_a_value_error_naming_the_choices(bad):
    with pytest.raises(ValueError, match=r"cpu_convolutions must be one of 'xla', 'ynnpack'"):
        cnnjax.compiler_options(bad)


def _short_run(tmp_path, library, steps=3, hooks=()):
    config = default_config()
    overrides = ["impl=custom", "parallel=none", f"num_steps={steps}", "eval_batch_size=450"]
    apply_overrides(config, [*overrides, f"cpu_convolutions={library}"])
    return train(config, tmp_path / "run", verbose=False, hooks=hooks)


def _spy_jit(monkeypatch):
    seen, jit = [], jax.jit

    def spy(fun=None, /, **kwargs):
        if fun is None:
            return functools.partial(spy, **kwargs)
        seen.append(kwargs.get("compiler_options") or {})
        return jit(fun, **kwargs)

    monkeypatch.setattr(jax, "jit", spy)
    return seen


def test_train_compiles_with_the_chosen_library_and_both_train_alike(tmp_path, monkeypatch):
    seen = _spy_jit(monkeypatch)
    ours = _short_run(tmp_path / "a", "xla")
    assert seen.count(cnnjax.compiler_options()) == 2  # the train step and the eval step
    seen.clear()
    evaluate(tmp_path / "a" / "run")  # `cnnjax eval`
    assert seen.count(cnnjax.compiler_options()) == 3  # its driver's two steps and predict
    seen.clear()
    theirs = _short_run(tmp_path / "b", "ynnpack")
    assert cnnjax.compiler_options() not in seen and seen  # the setting is obeyed, not ignored
    monkeypatch.undo()
    for a, b in zip(jax.tree.leaves(ours.state.params), jax.tree.leaves(theirs.state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert ours.test["loss"] == pytest.approx(theirs.test["loss"], rel=1e-4)


def test_a_run_resumes_with_the_other_library(tmp_path):
    """Which kernels run is operational, like --parallel: a resumed run may change it."""

    def stop_at_2(step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # train() stops cleanly at the next step

    assert _short_run(tmp_path, "xla", steps=4, hooks=[stop_at_2]).interrupted
    result = _short_run(tmp_path, "ynnpack", steps=4)
    assert result.step == 4 and not result.interrupted


@pytest.mark.parametrize("kind", ["none", "sharded"])
def test_the_driver_compiles_both_steps_with_the_options(monkeypatch, kind):
    from cnnjax.train.parallel import make_driver

    seen = _spy_jit(monkeypatch)
    options = cnnjax.compiler_options()

    def step(state, batch, *, axis_name):
        return state

    driver = make_driver(kind, step, step, options)
    assert seen == [options, options] and driver.compiler_options == options


def test_cli_passes_the_flag_to_the_config(monkeypatch):
    import cnnjax.train
    from cnnjax import cli

    captured = {}

    def fake_train(config, workdir, **kwargs):
        captured["library"] = config.cpu_convolutions
        raise KeyboardInterrupt

    monkeypatch.setattr(cnnjax.train, "train", fake_train)
    assert cli.main(["train", "--cpu-convolutions", "ynnpack"]) == 130
    assert captured == {"library": "ynnpack"}


def test_train_refuses_an_unknown_library_before_loading_data(tmp_path):
    config = default_config()
    apply_overrides(config, ["cpu_convolutions=eigen", "dataset=npz:/no/such/file.npz"])
    with pytest.raises(ValueError, match="cpu_convolutions must be one of"):
        train(config, tmp_path, verbose=False)


def test_cli_flag_choices_exit_2():
    out = subprocess.run(
        [sys.executable, "-m", "cnnjax.cli", "train", "--cpu-convolutions", "eigen"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert (
        "--cpu-convolutions: invalid choice: 'eigen' (choose from 'xla', 'ynnpack')" in out.stderr
    )


def test_bench_train_compares_both_libraries(monkeypatch):
    from cnnjax.bench import train as bench_train

    compiled_for = []

    def recording(cpu_convolutions="xla", backend=None):
        compiled_for.append(cpu_convolutions)
        return compile_options.compiler_options(cpu_convolutions, backend)

    monkeypatch.setattr(ops, "compiler_options", recording)

    result = bench_train.run(
        "lenet5",
        impls=("custom", "xla"),
        dtypes=("float32",),
        cpu_convolutions=("xla", "ynnpack"),
        batch=4,
        steps=1,
        warmup=1,
        repeats=1,
        use_torch=False,
        log=lambda s: None,
    )
    assert sorted(compiled_for) == ["xla", "xla", "ynnpack", "ynnpack"]
    rows = {r["variant"]: r for r in result["results"]}
    assert set(rows) == {
        "jax custom float32",
        "jax xla float32",
        "jax custom float32 ynnpack",
        "jax xla float32 ynnpack",
    }
    assert result["meta"]["cpu_convolutions"] == ["xla", "ynnpack"]
    for name, row in rows.items():
        assert row["cpu_convolutions"] == ("ynnpack" if "ynnpack" in name else "xla")
        if name.startswith("jax custom"):
            other = rows[name.replace("custom", "xla")]
            assert row["custom_over_xla"] == pytest.approx(row["step_ms"] / other["step_ms"])


def test_compile_options_module_is_an_alias_of_xla_cpu():
    from cnnjax.ops import compile_options as alias
    from cnnjax.ops import xla_cpu

    assert alias.compiler_options is xla_cpu.compiler_options
    assert alias.CPU_CONVOLUTIONS is xla_cpu.CPU_CONVOLUTIONS
