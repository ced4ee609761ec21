"""Assertions and jitted VJP helpers shared by the op tests (float64 comparisons)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

RTOL = 1e-10


def assert_close(actual, expected, rtol=RTOL, what=""):
    """``max|actual - expected| <= rtol * max(1, max|expected|)``: relative for values of order
    one and above, absolute below (gradients that are exactly zero stay comparable)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * scale, err_msg=what)


def assert_rel_close(actual, expected, rtol=RTOL, what=""):
    """``max|actual - expected| <= rtol * max|expected|``: purely relative (the stricter check)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1e-300)
    err = float(np.max(np.abs(actual - expected), initial=0.0)) / scale
    assert err <= rtol, f"{what}: relative error {err:.3e} > {rtol:.1e}"


def vjps(fs, x, g):
    """``[(f(x), g^T df/dx) for f in fs]``, all in a single jit: compiling dominates the cost of
    these tiny tests, and one compilation per configuration keeps hypothesis affordable."""

    def run(x, g):
        out = []
        for f in fs:
            y, pullback = jax.vjp(f, x)
            out.append((y, pullback(g)[0]))
        return out

    return jax.jit(run)(jnp.asarray(x), jnp.asarray(g))


def vjp(f, x, g):
    """``(f(x), g^T df/dx)`` in one jit."""
    return vjps([f], x, g)[0]
