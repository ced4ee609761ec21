"""Issue 8, kind 4: no input may kill the process (the XLA:CPU conv kernel SIGSEGV).

jax 0.10.2's XLA:CPU emits a convolution with exactly one input feature and one output feature
as its loop kernel, which LLVM vectorises across output positions with *plain* vector loads of
the input at padded (out-of-range) positions. With large padding those loads leave the mapped
memory: SIGSEGV. cnnjax computes such convs with a zero second output feature on CPU
(``cnnjax/ops/xla_cpu.py::conv_general_dilated``); docs/gradients.md ("XLA limits") has the
rule and the plain-``lax`` reproducer. The crashing examples run in a subprocess, so a regression
fails the test instead of killing the pytest worker.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_rel_close
from jax import lax
from reference import conv_reference, conv_transpose_reference

from cnnjax import ops

IMPLS = ("custom", "xla")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        env={"JAX_PLATFORMS": "cpu", **__import__("os").environ},
    )


def _assert_survived(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, (
        f"exit {result.returncode} (negative = killed by signal {-result.returncode}): "
        f"{result.stdout[-500:]} {result.stderr[-1500:]}"
    )


def test_issue_examples_of_one_channel_convs_with_large_padding_return_correct_values():
    """The issue's SIGSEGV examples (N, W, C, k, pad) = (1, 10**6, 1, 1, 1000), (1, 2, 1, 1,
    7e5), (1, 2, 1, 3, 7e5) and a float64 one, forward and VJP, both impls, against numpy."""
    code = """
        import jax, numpy as np
        jax.config.update("jax_enable_x64", True)
        from cnnjax import ops
        rng = np.random.default_rng(0)
        for (n, w_len, k, pad, dtype) in [(1, 10**6, 1, 1000, "float32"), (1, 2, 1, 700_000,
                "float32"), (1, 2, 3, 700_000, "float32"), (1, 1000, 4, 1_000_000, "float64")]:
            x = rng.standard_normal((n, w_len, 1)).astype(dtype)
            w = rng.standard_normal((k, 1, 1)).astype(dtype)
            x_pad = np.pad(x[0, :, 0].astype("float64"), pad)
            expected = np.correlate(x_pad, w[:, 0, 0].astype("float64"), "valid")
            for impl in ("custom", "xla"):
                f = lambda x, w: ops.conv(x, w, padding=pad, impl=impl)
                y, (dx, dw) = jax.value_and_grad(lambda x, w: f(x, w).sum(), (0, 1))(x, w)
                y = np.asarray(f(x, w))[0, :, 0]
                tol = 1e-5 if dtype == "float32" else 1e-12
                np.testing.assert_allclose(y, expected, rtol=tol, atol=tol)
                # every x sees every tap (the padding exceeds the kernel): dx = sum(w),
                # dw[k] = sum(x)
                np.testing.assert_allclose(np.asarray(dx), w.sum(), rtol=tol)
                np.testing.assert_allclose(np.asarray(dw)[:, 0, 0], x.sum(), rtol=10 * tol)
        print("survived")
    """
    result = _run(code)
    _assert_survived(result)
    assert "survived" in result.stdout


def test_the_other_one_channel_routes_survive_large_padding():
    """depthwise_conv (C=1), separable_conv, conv_transpose (huge dilation), 2-d and 3-d convs
    with one channel, and avg_pool (reduce_window with padding, not a conv): finite values and
    VJPs."""
    code = """
        import jax, jax.numpy as jnp, numpy as np
        from cnnjax import ops
        x1 = jnp.ones((1, 2, 1)); pad = 700_000
        calls = [
            lambda x, impl: ops.depthwise_conv(x, jnp.ones((1, 1, 1)), padding=pad, impl=impl),
            lambda x, impl: ops.separable_conv(
                x, jnp.ones((3, 1, 1)), jnp.ones((1, 1, 1)), padding=pad, impl=impl),
            lambda x, impl: ops.conv_transpose(
                x, jnp.ones((2, 1, 1)), dilation=3_000_000, impl=impl),
            lambda x, impl: ops.conv(x.reshape(1, 2, 1, 1), jnp.ones((1, 1, 1, 1)),
                                     padding=((pad, pad), (0, 0)), impl=impl),
            lambda x, impl: ops.conv(x.reshape(1, 2, 1, 1, 1), jnp.ones((1, 1, 1, 1, 1)),
                                     padding=((pad, pad), (0, 0), (0, 0)), impl=impl),
            lambda x, impl: ops.avg_pool(x, 2001, stride=1, padding=1000, impl=impl),
        ]
        for impl in ("custom", "xla"):
            for call in calls:
                y, grad = jax.value_and_grad(lambda x: call(x, impl).sum())(x1)
                assert np.isfinite(float(y)) and bool(jnp.isfinite(grad).all()), (impl, y)
        print("survived")
    """
    result = _run(code)
    _assert_survived(result)
    assert "survived" in result.stdout


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("ndim", [1, 2])
def test_one_channel_convs_match_plain_lax_autodiff_in_float64(ndim, impl):
    """The routed convs (C_in = C_out = 1) give the values and gradients of the reference conv
    and of plain ``lax.conv_general_dilated`` + autodiff, incl. stride, dilation and
    asymmetric padding; conv_transpose against its scatter definition."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(ndim)
        x = jnp.asarray(rng.standard_normal((2, *(7,) * ndim, 1)))
        w = jnp.asarray(rng.standard_normal((*(3,) * ndim, 1, 1)))
        pads = ((2, 0),) + ((1, 3),) * (ndim - 1)
        kw = dict(stride=2, dilation=(2,) + (1,) * (ndim - 1))
        spec = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC")}[ndim]

        def plain(x, w):
            return lax.conv_general_dilated(
                x, w, (2,) * ndim, pads, rhs_dilation=kw["dilation"], dimension_numbers=spec
            )

        def ours(x, w):
            return ops.conv(x, w, padding=pads, impl=impl, **kw)

        y, vjp = jax.vjp(ours, x, w)
        y_ref, vjp_ref = jax.vjp(plain, x, w)
        assert_rel_close(y, y_ref, what="forward")
        assert_rel_close(y, conv_reference(x, w, padding=pads, **kw), what="forward vs reference")
        g = jnp.asarray(rng.standard_normal(y.shape))
        for got, want, name in zip(vjp(g), vjp_ref(g), ("dx", "dw"), strict=True):
            assert_rel_close(got, want, what=name)
        if ndim == 1:  # second order: grad of grad goes through the routed backward convs
            hess = jax.grad(lambda x: jnp.sum(jax.grad(lambda x: jnp.sum(ours(x, w) ** 2))(x) ** 2))
            hess_ref = jax.grad(
                lambda x: jnp.sum(jax.grad(lambda x: jnp.sum(plain(x, w) ** 2))(x) ** 2)
            )
            assert_rel_close(hess(x), hess_ref(x), what="grad of grad")

        if ndim == 2:  # conv_transpose is checked in 1-d (its route is the same helper)
            return

        def transpose(x, w):
            return ops.conv_transpose(x, w, stride=2, padding=1, impl=impl)

        yt, vjp_t = jax.vjp(transpose, x, w)
        assert_rel_close(yt, conv_transpose_reference(x, w, stride=2, padding=1), what="transp.")
        gt = jnp.asarray(rng.standard_normal(yt.shape))
        _, vjp_t_ref = jax.vjp(
            lambda x, w: conv_transpose_reference(x, w, stride=2, padding=1), x, w
        )
        for got, want, name in zip(vjp_t(gt), vjp_t_ref(gt), ("dx", "dw"), strict=True):
            assert_rel_close(got, want, what=f"conv_transpose {name}")


def test_one_channel_route_supports_forward_mode_and_vmap_with_impl_xla():
    with jax.enable_x64(True):
        x, w = jnp.linspace(-1.0, 1.0, 10).reshape(1, 10, 1), jnp.full((3, 1, 1), 0.5)
        f = lambda x: ops.conv(x, w, padding=4, impl="xla")  # noqa: E731
        y, ty = jax.jvp(f, (x,), (jnp.ones_like(x),))
        assert_rel_close(ty, f(jnp.ones_like(x)), what="jvp of a linear map")
        batched = jax.vmap(f)(jnp.stack([x, 2 * x]))
        assert_rel_close(batched[1], 2 * y, what="vmap")


@pytest.mark.slow
def test_plain_lax_reproducer_still_crashes_xla():
    """Documents the upstream bug (docs/gradients.md): the raw lax call dies with SIGSEGV on
    jax 0.10.2. If this starts passing, XLA fixed it and the workaround can be retired."""
    code = """
        import jax.numpy as jnp
        from jax import lax
        x, w = jnp.ones((1, 2, 1)), jnp.ones((1, 1, 1))
        lax.conv_general_dilated(x, w, (1,), [(0, 3_000_000)], dimension_numbers=("NWC", "WIO",
            "NWC")).block_until_ready()
    """
    assert _run(code).returncode == -11
