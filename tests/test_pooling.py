"""Tests for cnnjax.ops.pooling: loop oracles, impl="xla", autodiff of the oracle, PyTorch.

Every gradient check runs in float64 (x64 is on in conftest). Inputs are scaled random
permutations, so every window has a unique maximum unless a test wants ties.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference_pooling as ref
from helpers import assert_close, vjp, vjps
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from cnnjax.ops import _window as window_module
from cnnjax.ops import avg_pool, global_avg_pool, global_max_pool, lp_pool, max_pool
from cnnjax.ops import max_pooling as max_pool_module


def distinct(shape, seed=0, positive=False):
    """Distinct float64 values (a scaled permutation): every max is unique."""
    rng = np.random.default_rng(seed)
    values = rng.permutation(int(np.prod(shape))).reshape(shape).astype(np.float64)
    values = values / values.size
    return values + 0.5 if positive else values - 0.5


def cotangent(shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape)


# --------------------------------------------------------------------------------------------
# One check per configuration: oracle forward, xla forward, custom grad vs xla / oracle grads
# --------------------------------------------------------------------------------------------


def check_max_pool(shape, window, stride, padding, dilation, ceil_mode, seed=0, xla_grad=True):
    """Custom forward and gradient vs the loop oracle and vs ``impl="xla"``.

    ``xla_grad=False`` (hypothesis) skips the ``impl="xla"`` gradient, whose CPU compilation
    (select-and-scatter) costs ~0.6 s per shape; the fixed cases check it.
    """
    x = distinct(shape, seed)
    kw = dict(stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode)
    expected = ref.max_pool(x, window, **kw)
    g = cotangent(expected.shape, seed + 1)

    def custom(x):
        return max_pool(x, window, **kw)

    def xla(x):
        y = max_pool(x, window, **kw, impl="xla")
        return y if xla_grad else jax.lax.stop_gradient(y)

    (y, dx), (y_xla, dx_xla) = vjps([custom, xla], x, g)
    assert_close(y, expected)
    assert_close(y_xla, expected)
    assert_close(dx, ref.max_pool_grad(x, g, window, **kw))
    if xla_grad:
        assert_close(dx, dx_xla)


def check_avg_pool(shape, window, stride, padding, ceil_mode, count_include_pad, seed=0):
    x = distinct(shape, seed)
    kw = dict(
        stride=stride, padding=padding, ceil_mode=ceil_mode, count_include_pad=count_include_pad
    )
    expected = ref.avg_pool(x, window, **kw)
    g = cotangent(expected.shape, seed + 1)
    (y, dx), (y_xla, dx_xla) = vjps(
        [lambda x: avg_pool(x, window, **kw), lambda x: avg_pool(x, window, **kw, impl="xla")],
        x,
        g,
    )
    assert_close(y, expected)
    assert_close(y_xla, expected)
    assert_close(dx, ref.avg_pool_grad(x.shape, g, window, **kw))
    assert_close(dx, dx_xla)


def check_lp_pool(shape, p, window, stride, ceil_mode, seed=0, oracle_grad=True):
    x = distinct(shape, seed, positive=True)
    kw = dict(stride=stride, ceil_mode=ceil_mode)
    expected = ref.lp_pool(x, p, window, **kw)
    g = cotangent(expected.shape, seed + 1)
    fs = [lambda x: lp_pool(x, p, window, **kw), lambda x: lp_pool(x, p, window, **kw, impl="xla")]
    if oracle_grad:
        fs.append(lambda x: ref.lp_pool_jnp(x, p, window, **kw))
    (y, dx), (y_xla, dx_xla), *oracle = vjps(fs, x, g)
    assert_close(y, expected)
    assert_close(y_xla, expected)
    assert_close(dx, dx_xla)
    for _, dx_oracle in oracle:
        assert_close(dx, dx_oracle)


MAX_CASES = [
    # shape, window, stride, padding, dilation, ceil_mode
    ((2, 9, 3), 3, 2, 1, 1, False),
    ((1, 10, 2), 4, 3, 2, 2, True),
    ((2, 7, 8, 2), 3, 2, 1, 1, True),
    ((1, 8, 8, 3), 2, None, 0, 1, False),
    ((1, 9, 7, 2), (3, 2), (1, 3), (1, 0), (2, 1), True),
    ((1, 6, 7, 2), 2, 3, 1, 2, False),  # stride > window, dilated
    ((1, 4, 5, 6, 2), (2, 3, 2), (2, 1, 2), (1, 1, 0), 1, True),
    ((1, 5, 4, 5, 1), 2, 1, 0, (1, 2, 1), False),
]


@pytest.mark.parametrize("case", MAX_CASES, ids=str)
def test_max_pool_matches_oracle_and_xla(case):
    check_max_pool(*case)


AVG_CASES = [
    # shape, window, stride, padding, ceil_mode, count_include_pad
    ((2, 9, 3), 3, 2, 1, False, True),
    ((1, 10, 2), 4, 3, 2, True, False),
    ((2, 7, 8, 2), 3, 2, 1, True, True),
    ((2, 7, 8, 2), 3, 2, 1, True, False),
    ((1, 8, 8, 3), 2, None, 0, False, True),
    ((1, 9, 7, 2), (3, 2), (1, 3), (1, 0), True, False),
    ((1, 4, 5, 6, 2), (2, 3, 2), (2, 1, 2), (1, 1, 0), True, True),
]


@pytest.mark.parametrize("case", AVG_CASES, ids=str)
def test_avg_pool_matches_oracle_and_xla(case):
    check_avg_pool(*case)


LP_CASES = [
    # shape, p, window, stride, ceil_mode
    ((2, 9, 3), 2, 3, 2, False),
    ((1, 10, 2), 1.5, 4, 3, True),
    ((2, 7, 8, 2), 3, 3, 2, True),
    ((1, 8, 8, 3), 1, 2, None, False),
    ((1, 4, 5, 6, 2), 2.5, (2, 3, 2), (2, 1, 2), True),
]


@pytest.mark.parametrize("case", LP_CASES, ids=str)
def test_lp_pool_matches_oracle_and_xla(case):
    check_lp_pool(*case)


def test_max_and_avg_grads_match_autodiff_of_oracle():
    x = distinct((2, 7, 6, 2))
    kw = dict(stride=2, padding=1, ceil_mode=True)
    g = cotangent(ref.output_shape(x.shape, 3, **kw))
    _, dx = vjp(lambda x: max_pool(x, 3, dilation=1, **kw), x, g)
    _, dx_oracle = vjp(lambda x: ref.max_pool_jnp(x, 3, **kw), x, g)
    assert_close(dx, dx_oracle)
    for include in (True, False):
        _, dx = vjp(lambda x, i=include: avg_pool(x, 3, **kw, count_include_pad=i), x, g)
        _, dx_oracle = vjp(
            lambda x, i=include: ref.avg_pool_jnp(x, 3, **kw, count_include_pad=i), x, g
        )
        assert_close(dx, dx_oracle)
    g = cotangent(ref.output_shape(x.shape, 2, 1, 1, 2))
    _, dx = vjp(lambda x: max_pool(x, 2, 1, 1, dilation=2), x, g)
    _, dx_oracle = vjp(lambda x: ref.max_pool_jnp(x, 2, 1, 1, dilation=2), x, g)
    assert_close(dx, dx_oracle)


def test_global_pools_match_oracle_and_xla():
    for shape in [(2, 5, 3), (2, 4, 3, 3), (1, 2, 3, 4, 2)]:
        x = distinct(shape)
        g = cotangent((shape[0], shape[-1]))
        (y, dx), (y_xla, dx_xla), (y_max, dx_max), (y_max_xla, dx_max_xla) = vjps(
            [
                global_avg_pool,
                lambda x: global_avg_pool(x, impl="xla"),
                global_max_pool,
                lambda x: global_max_pool(x, impl="xla"),
            ],
            x,
            g,
        )
        assert_close(y, ref.global_avg_pool(x))
        assert_close(y_xla, y)
        assert_close(dx, dx_xla)
        assert_close(
            dx,
            np.broadcast_to(
                g.reshape(shape[0], *(1,) * (len(shape) - 2), -1) / np.prod(shape[1:-1]), shape
            ),
        )
        assert_close(y_max, x.max(axis=tuple(range(1, len(shape) - 1))))
        assert_close(y_max_xla, y_max)
        assert_close(dx_max, dx_max_xla)
        assert_close(dx_max, ref.global_max_pool_grad(x, g))


def test_global_pools_keepdims():
    x = distinct((2, 3, 4, 5))
    fns = [
        functools.partial(fn, keepdims=True, impl=impl)
        for fn in (global_avg_pool, global_max_pool)
        for impl in ("custom", "xla")
    ]
    results = vjps(fns, x, cotangent((2, 1, 1, 5)))
    for fn, (y, dx) in zip(fns, results, strict=True):
        assert y.shape == (2, 1, 1, 5)
        assert dx.shape == x.shape
        assert_close(y[:, 0, 0], fn.func(x, impl=fn.keywords["impl"]))
    assert_close(results[0][1], results[1][1])
    assert_close(results[2][1], results[3][1])


# --------------------------------------------------------------------------------------------
# Hypothesis: random 1-3-d configurations
# --------------------------------------------------------------------------------------------


@st.composite
def window_configs(draw, *, dilation: bool, padding: bool):
    nd = draw(st.integers(1, 3))
    max_k = {1: 5, 2: 3, 3: 2}[nd]
    window, stride, dil, pad, spatial = [], [], [], [], []
    for _ in range(nd):
        k = draw(st.integers(1, max_k))
        s = draw(st.integers(1, k + 2))  # stride may exceed the window
        d = draw(st.integers(1, 3)) if dilation else 1
        p = draw(st.integers(0, k // 2)) if padding else 0
        span = d * (k - 1) + 1
        n = max(1, span - 2 * p + draw(st.integers(0, 4 if nd < 3 else 2)))
        window.append(k)
        stride.append(s)
        dil.append(d)
        pad.append(p)
        spatial.append(n)
    ceil_mode = draw(st.booleans())
    batch, channels = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    seed = draw(st.integers(0, 2**16))
    return (
        (batch, *spatial, channels),
        tuple(window),
        tuple(stride),
        tuple(pad),
        tuple(dil),
        ceil_mode,
        seed,
    )


@settings(max_examples=45)
@given(window_configs(dilation=True, padding=True))
def test_max_pool_hypothesis(config):
    shape, window, stride, padding, dilation, ceil_mode, seed = config
    check_max_pool(shape, window, stride, padding, dilation, ceil_mode, seed, xla_grad=False)


@settings(max_examples=35)
@given(window_configs(dilation=False, padding=True), st.booleans())
def test_avg_pool_hypothesis(config, count_include_pad):
    shape, window, stride, padding, _, ceil_mode, seed = config
    check_avg_pool(shape, window, stride, padding, ceil_mode, count_include_pad, seed)


@settings(max_examples=25)
@given(window_configs(dilation=False, padding=False), st.sampled_from([1, 2, 3, 1.5, 0.5]))
def test_lp_pool_hypothesis(config, p):
    shape, window, stride, _, _, ceil_mode, seed = config
    check_lp_pool(shape, p, window, stride, ceil_mode, seed, oracle_grad=False)


# --------------------------------------------------------------------------------------------
# Switch routing: ties, overlaps, dilation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["custom", "xla"])
def test_max_pool_ties_route_to_first_max(impl):
    x = jnp.ones((1, 4, 1))
    dx = jax.grad(lambda x: jnp.sum(max_pool(x, 2, impl=impl)))(x)
    np.testing.assert_array_equal(dx.ravel(), [1.0, 0.0, 1.0, 0.0])
    x = jnp.array([[[0.0, 3.0], [3.0, 1.0]]])[..., None]  # 2-d window with a tie
    dx = jax.grad(lambda x: jnp.sum(max_pool(x, 2, impl=impl)))(x)
    np.testing.assert_array_equal(dx[0, ..., 0], [[0.0, 1.0], [0.0, 0.0]])


def test_max_pool_ties_overlapping_windows():
    # Constant input, window 3, stride 1: every window's first tap wins.
    x = jnp.zeros((1, 6, 1))
    dx = jax.grad(lambda x: jnp.sum(max_pool(x, 3, 1)))(x)
    np.testing.assert_array_equal(dx.ravel(), [1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(
        dx, ref.max_pool_grad(np.zeros((1, 6, 1)), np.ones((1, 4, 1)), 3, 1)
    )


def test_max_pool_overlapping_windows_accumulate():
    x = jnp.array([0.0, 1.0, 2.0, 9.0, 3.0, 4.0, 5.0])[None, :, None]
    g = jnp.array([1.0, 10.0, 100.0, 1000.0, 10000.0])[None, :, None]
    _, dx = vjp(lambda x: max_pool(x, 3, 1), x, g)
    # The 9 is the max of windows 1, 2 and 3.
    np.testing.assert_array_equal(dx.ravel(), [0, 0, 1, 1110, 0, 0, 10000])


def test_max_pool_dilated_gradient():
    x = distinct((2, 9, 8, 2))
    g = cotangent(ref.output_shape(x.shape, 3, 2, 1, (2, 3)))
    _, dx = vjp(lambda x: max_pool(x, 3, 2, 1, (2, 3)), x, g)
    assert_close(dx, ref.max_pool_grad(x, g, 3, 2, 1, (2, 3)))
    # JAX's own dilated max reduce_window has no VJP; impl="xla" still differentiates.
    _, dx_xla = vjp(lambda x: max_pool(x, 3, 2, 1, (2, 3), impl="xla"), x, g)
    assert_close(dx, dx_xla)


def test_max_pool_nan_propagates():
    x = jnp.array([1.0, jnp.nan, 0.5, 2.0])[None, :, None]
    for impl in ("custom", "xla"):
        y = max_pool(x, 2, impl=impl)
        assert np.isnan(y[0, 0, 0]) and y[0, 1, 0] == 2.0


def test_max_pool_integer_input_and_switch_dtype():
    x = jnp.arange(12, dtype=jnp.int32).reshape(1, 12, 1)
    np.testing.assert_array_equal(max_pool(x, 3, 2, 1).ravel(), [1, 3, 5, 7, 9, 11])
    geom = window_module.window_geometry(
        "max_pool", jnp.zeros((1, 5, 5, 1)), 3, 1, 1, 1, False, check_half_window=True
    )
    _, switch = max_pool_module._max_pool_fwd(jnp.zeros((1, 5, 5, 1)), geom)
    assert switch.dtype == jnp.int8


def test_lp_pool_zero_window_has_zero_gradient():
    # y = 0 has no derivative for p > 1; both impls give the subgradient 0 (xla gave nan).
    x = np.concatenate([np.zeros((1, 2, 1)), distinct((1, 4, 1), positive=True)], axis=1)
    g = np.ones((1, 3, 1))
    (y, dx), (_, dx_xla) = vjps(
        [lambda x: lp_pool(x, 2, 2), lambda x: lp_pool(x, 2, 2, impl="xla")], x, g
    )
    assert y[0, 0, 0] == 0
    np.testing.assert_array_equal(dx[0, :2, 0], [0.0, 0.0])
    assert_close(dx, dx_xla)


def test_lp_pool_integer_p_accepts_negative_inputs():
    x = distinct((1, 6, 5, 2))  # values in [-0.5, 0.5)
    check_lp_pool_signed = [
        lambda x: lp_pool(x, 2, 2, 1),
        lambda x: lp_pool(x, 2, 2, 1, impl="xla"),
    ]
    g = cotangent((1, 5, 4, 2))
    (y, dx), (y_xla, dx_xla) = vjps(check_lp_pool_signed, x, g)
    assert_close(y, ref.lp_pool(x, 2, 2, 1))
    assert_close(y_xla, y)
    assert_close(dx, dx_xla)


def test_asymmetric_and_same_padding():
    x = distinct((1, 8, 7, 2))
    pad = ((1, 0), (0, 1))
    expected = ref.max_pool(x, 3, 2, pad)
    assert_close(max_pool(x, 3, 2, pad), expected)
    g = cotangent(expected.shape)
    _, dx = vjp(lambda x: max_pool(x, 3, 2, pad), x, g)
    assert_close(dx, ref.max_pool_grad(x, g, 3, 2, pad))
    same = max_pool(x, 3, 1, "SAME")
    assert same.shape == x.shape
    assert_close(same, ref.max_pool(x, 3, 1, 1))
    check_avg_pool((1, 8, 7, 2), 3, 2, pad, True, False)


# --------------------------------------------------------------------------------------------
# Second order, transformations, tracing
# --------------------------------------------------------------------------------------------


SECOND_ORDER = {
    "max_pool": (lambda x: max_pool(x, 3, 2, 1, 1, True), False),
    "max_pool_dilated": (lambda x: max_pool(x, 2, 1, 1, 2), False),
    "avg_pool": (lambda x: avg_pool(x, 3, 2, 1, True, False), False),
    "lp_pool": (lambda x: lp_pool(x, 2.5, 2, 1, True), True),
    "lp_pool_int_p": (lambda x: lp_pool(x, 3, (2, 3), (2, 1)), True),
    "global_avg_pool": (global_avg_pool, False),
    "global_max_pool": (global_max_pool, False),
}


@pytest.mark.parametrize("name", SECOND_ORDER)
def test_check_grads_second_order(name):
    fn, positive = SECOND_ORDER[name]
    x = distinct((1, 5, 6, 2), positive=positive)
    check_grads(jax.jit(fn), (x,), order=2, modes=["rev"])


@pytest.mark.parametrize("name", SECOND_ORDER)
def test_grad_of_grad_matches_xla(name):
    fn, positive = SECOND_ORDER[name]
    x = distinct((1, 5, 6, 2), positive=positive)
    w = cotangent(x.shape)

    def outer(f):
        inner = jax.grad(lambda x: jnp.sum(jnp.sin(f(x))))
        return jax.jit(jax.grad(lambda x: jnp.sum(inner(x) * w)))(x)

    xla_fn = SECOND_ORDER_XLA[name]
    assert_close(outer(fn), outer(xla_fn))


SECOND_ORDER_XLA = {
    "max_pool": lambda x: max_pool(x, 3, 2, 1, 1, True, impl="xla"),
    "max_pool_dilated": lambda x: max_pool(x, 2, 1, 1, 2, impl="xla"),
    "avg_pool": lambda x: avg_pool(x, 3, 2, 1, True, False, impl="xla"),
    "lp_pool": lambda x: lp_pool(x, 2.5, 2, 1, True, impl="xla"),
    "lp_pool_int_p": lambda x: lp_pool(x, 3, (2, 3), (2, 1), impl="xla"),
    "global_avg_pool": lambda x: global_avg_pool(x, impl="xla"),
    "global_max_pool": lambda x: global_max_pool(x, impl="xla"),
}


def test_jit_and_vmap():
    x = distinct((3, 2, 7, 6, 2))  # an extra leading axis for vmap
    f = lambda x: max_pool(x, 3, 2, 1)  # noqa: E731
    expected = np.stack([ref.max_pool(xi, 3, 2, 1) for xi in x])
    assert_close(jax.jit(jax.vmap(f))(x), expected)
    grad = jax.jit(jax.vmap(jax.grad(lambda x: jnp.sum(f(x) ** 2))))(x)
    grad_xla = jax.vmap(jax.grad(lambda x: jnp.sum(max_pool(x, 3, 2, 1, impl="xla") ** 2)))(x)
    assert_close(grad, grad_xla)
    for fn in (
        lambda x: avg_pool(x, 2, 1, 1, count_include_pad=False),
        lambda x: lp_pool(x + 1.0, 2, 2),
        global_avg_pool,
        global_max_pool,
    ):
        batched = jax.jit(jax.vmap(jax.grad(lambda x, fn=fn: jnp.sum(fn(x) ** 2))))(x)
        single = jax.jit(jax.grad(lambda x, fn=fn: jnp.sum(fn(x) ** 2)))
        looped = np.stack([single(xi) for xi in x])
        assert_close(batched, looped)


def test_no_retracing_for_same_shapes():
    traces = []

    def loss(x):
        traces.append(None)
        return (
            jnp.sum(max_pool(x, 3, 2, 1) ** 2) + jnp.sum(avg_pool(x, 2)) + jnp.sum(lp_pool(x, 2, 2))
        )

    step = jax.jit(jax.value_and_grad(loss))
    for seed in range(3):
        step(jnp.asarray(distinct((1, 6, 6, 2), seed, positive=True)))
    assert len(traces) == 1
    # Eager calls hit the ops' own jit caches: no new compilation for the same shapes.
    x = jnp.asarray(distinct((1, 7, 7, 2)))
    max_pool(x, 3, 2, 1)
    size = max_pool_module._max_pool_jit._cache_size()
    for seed in range(3):
        max_pool(jnp.asarray(distinct((1, 7, 7, 2), seed)), (3, 3), [2, 2], ((1, 1), (1, 1)))
    assert max_pool_module._max_pool_jit._cache_size() == size


def test_forward_mode_error_names_xla_impl():
    x = distinct((1, 4, 4, 1))
    for fn in (
        lambda x: max_pool(x, 2),
        lambda x: avg_pool(x, 2),
        lambda x: lp_pool(x + 1, 2, 2),
        global_avg_pool,
        global_max_pool,
    ):
        with pytest.raises(TypeError, match='impl="xla"'):
            jax.jvp(fn, (x,), (x,))
    # impl="xla" supports forward mode.
    _, tangent = jax.jvp(lambda x: max_pool(x, 2, impl="xla"), (x,), (jnp.ones_like(x),))
    np.testing.assert_array_equal(tangent, np.ones((1, 2, 2, 1)))


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda x: max_pool(x[0, 0], 2),
            ValueError,
            r"max_pool: x must have shape .*rank 3, 4 or 5",
        ),
        (lambda x: max_pool(x[None, None], 2), ValueError, r"rank 6"),
        (lambda x: max_pool(x, 0), ValueError, r"window must be >= 1"),
        (lambda x: max_pool(x, (2, 2, 2)), ValueError, r"window must have one entry"),
        (lambda x: max_pool(x, 2, stride=0), ValueError, r"stride must be >= 1"),
        (lambda x: max_pool(x, 2, dilation=(1, 0)), ValueError, r"dilation must be >= 1"),
        (lambda x: max_pool(x, 2.0), TypeError, r"window must be an int"),
        (
            lambda x: max_pool(x, 3, padding=2),
            ValueError,
            r"padding must be at most window // 2.*3 // 2 = 1",
        ),
        (
            lambda x: avg_pool(x, (3, 2), padding=(1, 2)),
            ValueError,
            r"padding must be at most window // 2",
        ),
        (lambda x: max_pool(x, 2, padding=-1), ValueError, r"padding must be non-negative"),
        (
            lambda x: max_pool(x, 6),
            ValueError,
            r"output size must be >= 1.*floor\(\(n \+ lo \+ hi - d\*\(k-1\) - 1\) / s\) \+ 1 = "
            r"floor\(\(5 \+ 0 \+ 0 - 1\*\(6-1\) - 1\) / 6\) \+ 1 = 0",
        ),
        (lambda x: max_pool(x, 3, dilation=3), ValueError, r"output size must be >= 1.*3\*\(3-1\)"),
        (lambda x: lp_pool(x, 0, 2), ValueError, r"p must be a finite number > 0"),
        (lambda x: lp_pool(x, -1.5, 2), ValueError, r"p must be"),
        (lambda x: lp_pool(x, float("inf"), 2), ValueError, r"p must be"),
        (lambda x: lp_pool(x, "2", 2), TypeError, r"p must be"),
        (lambda x: max_pool(x, 2, impl="cudnn"), ValueError, r"impl must be \"custom\" or \"xla\""),
        (lambda x: global_max_pool(x, impl="fast"), ValueError, r"impl must be"),
        (
            lambda x: avg_pool(x.astype(jnp.int32), 2),
            TypeError,
            r"avg_pool: x must have a floating",
        ),
        (lambda x: max_pool(x, 2, ceil_mode="yes"), TypeError, r"ceil_mode must be a bool"),
    ],
)
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call(jnp.zeros((1, 5, 5, 2)))


# --------------------------------------------------------------------------------------------
# PyTorch
# --------------------------------------------------------------------------------------------


def _torch_check(torch_fn, jax_fn, x):
    torch = pytest.importorskip("torch")
    xt = torch.tensor(np.moveaxis(x, -1, 1), requires_grad=True)
    yt = torch_fn(xt)
    g = cotangent(tuple(yt.shape))
    yt.backward(torch.tensor(g))
    expected_y = np.moveaxis(yt.detach().numpy(), 1, -1)
    expected_dx = np.moveaxis(xt.grad.numpy(), 1, -1)
    results = vjps(
        [lambda x, i=impl: jax_fn(x, i) for impl in ("custom", "xla")], x, np.moveaxis(g, 1, -1)
    )
    for y, dx in results:
        assert_close(y, expected_y)
        assert_close(dx, expected_dx)


TORCH_MAX = [
    # shape (N, *spatial, C), window, stride, padding, dilation, ceil_mode
    ((2, 11, 3), 3, 2, 1, 2, True),
    ((1, 10, 2), 4, 3, 2, 1, True),
    ((2, 9, 8, 3), 3, 2, 1, 1, True),
    ((1, 9, 10, 2), (3, 2), (2, 1), (1, 1), (2, 3), False),
    ((1, 8, 8, 2), 2, None, 0, 1, False),
    ((1, 5, 6, 7, 2), 3, 2, 1, (1, 2, 1), True),
    ((1, 4, 4, 4, 1), 2, 3, 1, 1, False),  # stride > window
]


@pytest.mark.parametrize("case", TORCH_MAX, ids=str)
def test_max_pool_matches_torch(case):
    torch = pytest.importorskip("torch")
    shape, window, stride, padding, dilation, ceil_mode = case
    torch_pool = {
        1: torch.nn.functional.max_pool1d,
        2: torch.nn.functional.max_pool2d,
        3: torch.nn.functional.max_pool3d,
    }[len(shape) - 2]
    _torch_check(
        lambda xt: torch_pool(xt, window, stride, padding, dilation, ceil_mode),
        lambda x, impl: max_pool(x, window, stride, padding, dilation, ceil_mode, impl=impl),
        distinct(shape),
    )


def test_max_pool_ties_match_torch():
    torch = pytest.importorskip("torch")
    x = np.round(distinct((1, 8, 9, 2)) * 4)  # many ties
    _torch_check(
        lambda xt: torch.nn.functional.max_pool2d(xt, 3, 2, 1, 1, True),
        lambda x, impl: max_pool(x, 3, 2, 1, 1, True, impl=impl),
        x,
    )


TORCH_AVG = [
    # shape, window, stride, padding, ceil_mode, count_include_pad
    ((2, 9, 8, 3), 3, 2, 1, True, True),
    ((2, 9, 8, 3), 3, 2, 1, True, False),
    ((1, 10, 7, 2), (4, 3), (3, 2), (2, 1), True, False),
    ((1, 10, 7, 2), (4, 3), (3, 2), (2, 1), False, True),
    ((1, 8, 8, 2), 2, None, 0, False, True),
    ((1, 5, 6, 7, 2), 3, 2, 1, True, False),
    ((1, 5, 6, 7, 2), (2, 3, 2), (3, 2, 1), (1, 1, 0), True, True),
]


@pytest.mark.parametrize("case", TORCH_AVG, ids=str)
def test_avg_pool_matches_torch(case):
    torch = pytest.importorskip("torch")
    shape, window, stride, padding, ceil_mode, include = case
    torch_pool = {2: torch.nn.functional.avg_pool2d, 3: torch.nn.functional.avg_pool3d}[
        len(shape) - 2
    ]
    _torch_check(
        lambda xt: torch_pool(xt, window, stride, padding, ceil_mode, include),
        lambda x, impl: avg_pool(x, window, stride, padding, ceil_mode, include, impl=impl),
        distinct(shape),
    )


@pytest.mark.parametrize("p", [1, 2, 3, 1.5])
@pytest.mark.parametrize(
    ("shape", "window", "stride"),
    [((2, 9, 8, 3), 3, 2), ((1, 8, 9, 2), (2, 3), (1, 3)), ((1, 7, 7, 1), 2, 3)],
)
def test_lp_pool_matches_torch_on_full_windows(p, shape, window, stride):
    torch = pytest.importorskip("torch")
    _torch_check(
        lambda xt: torch.nn.functional.lp_pool2d(xt, p, window, stride),
        lambda x, impl: lp_pool(x, p, window, stride, impl=impl),
        distinct(shape, positive=True),
    )


def test_lp_pool_partial_windows_differ_from_torch_as_documented():
    torch = pytest.importorskip("torch")
    x = distinct((1, 5, 5, 1), positive=True)
    ours = np.asarray(lp_pool(x, 2, 2, 2, ceil_mode=True))
    theirs = np.moveaxis(
        torch.nn.functional.lp_pool2d(
            torch.tensor(np.moveaxis(x, -1, 1)), 2, 2, 2, ceil_mode=True
        ).numpy(),
        1,
        -1,
    )
    assert_close(ours[:, :2, :2], theirs[:, :2, :2])  # full windows agree
    # Partial windows: PyTorch rescales the sum of squares by K / count (here 4 / 2 and 4 / 1).
    assert_close(ours[:, :2, 2] * np.sqrt(2.0), theirs[:, :2, 2])
    assert_close(ours[:, 2, 2] * np.sqrt(4.0), theirs[:, 2, 2])


def test_pooling_module_keeps_every_public_name():
    """max_pool moved to cnnjax.ops.max_pooling; cnnjax.ops.pooling still exports it."""
    import cnnjax.ops
    from cnnjax.ops import pooling

    names = ["avg_pool", "global_avg_pool", "global_max_pool", "lp_pool", "max_pool"]
    assert sorted(pooling.__all__) == names
    for name in names:
        assert getattr(pooling, name) is getattr(cnnjax.ops, name)
