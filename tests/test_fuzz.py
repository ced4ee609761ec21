"""Property-based fuzz over every public op of :mod:`cnnjax.ops` (hypothesis).

Each drawn call, valid or not, must either

* return the documented shape (the formulas of :mod:`cnnjax.shapes`), finite values and finite
  vector-Jacobian products, with ``impl="custom"`` equal to ``impl="xla"`` (float64, forward and
  VJP to 1e-9 relative), or
* raise a ValueError/TypeError whose message starts with the op's name (and names the argument
  that was made invalid on purpose), in both impls alike,

and a call predicted valid must not raise (and one predicted invalid must raise). Configurations
mix valid geometry with deliberately bad arguments (zero/negative sizes, NumPy integers,
bools, floats, huge dilations and paddings, wrong channel counts, zero batch/channels).

The CI run draws ``CI_EXAMPLES`` per op (a few hundred in all); ``pytest -m slow
tests/test_fuzz.py`` draws ``SLOW_EXAMPLES`` per op (over 2,000). Counts are printed at the end
(``-s``) and kept in ``COUNTS``.
"""

from __future__ import annotations

import collections
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnjax import ops, shapes

CI_EXAMPLES = 18
SLOW_EXAMPLES = 200
RTOL = 1e-9

COUNTS: collections.Counter = collections.Counter()

# Invalid values injected on purpose: (value, is a TypeError).
BAD_INTS = [(0, False), (-1, False), (1.5, True), (True, True), ("2", True)]
HUGE = [2**31, 10**6]


def _int(draw, low, high):
    """An int, sometimes a NumPy integer (which every op must accept)."""
    value = draw(st.integers(low, high))
    return np.int64(value) if draw(st.booleans()) else value


class Call:
    """One drawn call: ``run(impl)``, its expected shape (None: it must raise), the argument
    made invalid on purpose (or None), and the differentiable arrays."""

    def __init__(self, op, run, arrays, expected, bad=None, compare_grad=True):
        self.op, self.run, self.arrays = op, run, arrays
        self.expected, self.bad, self.compare_grad = expected, bad, compare_grad


def _maybe_bad(draw, name, value):
    """With probability ~1/8 replace ``value`` by a bad one; returns (value, bad name or None)."""
    if draw(st.integers(0, 7)) == 0:
        bad, _ = draw(st.sampled_from(BAD_INTS))
        return bad, name
    return value, None


def _x(draw, nd, low, high, channels=None):
    n = draw(st.integers(0, 2)) if draw(st.integers(0, 9)) == 0 else 2
    spatial = tuple(draw(st.integers(low, high)) for _ in range(nd))
    c = draw(st.integers(1, 3)) if channels is None else channels
    seed = draw(st.integers(0, 2**16))
    return np.random.default_rng(seed).standard_normal((n, *spatial, c)), seed


def _conv_call(draw, op):
    nd = draw(st.integers(1, 3))
    groups = draw(st.sampled_from([1, 1, 2]))
    c_in, c_out = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    x, _ = _x(draw, nd, 1, {1: 9, 2: 6, 3: 4}[nd], channels=c_in)
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    stride = tuple(_int(draw, 1, 3) for _ in range(nd))
    dilation = _int(draw, 1, 2)
    padding = tuple((_int(draw, 0, 2), _int(draw, 0, 2)) for _ in range(nd))
    bad = None
    if draw(st.integers(0, 9)) == 0:
        dilation, bad = draw(st.sampled_from(HUGE)), None  # too big: output < 1 or XLA limits
    stride, bad_stride = _maybe_bad(draw, "stride", stride)
    bad = bad or bad_stride
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    b = rng.standard_normal((c_out,))
    spatial = x.shape[1:-1]
    dil = (dilation,) * nd
    if op == "conv":
        w = rng.standard_normal((*kernel, c_in // groups, c_out))
        kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
        outs = (
            [shapes.conv_output_size(*a) for a in zip(spatial, kernel, stride, padding, dil)]
            if bad is None
            else [0]
        )
        run = lambda impl, x, w, b: ops.conv(x, w, b, impl=impl, **kw)  # noqa: E731
    else:
        w = rng.standard_normal((*kernel, c_in, c_out // groups))
        output_padding = tuple(draw(st.integers(0, 1)) for _ in range(nd))
        kw = dict(
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            output_padding=output_padding,
        )
        if bad is None:
            outs = [
                shapes.conv_transpose_output_size(*a)
                for a in zip(spatial, kernel, stride, padding, output_padding, dil)
            ]
            if any(op_ >= s and op_ >= dilation for op_, s in zip(output_padding, stride)):
                outs = [0]
        else:
            outs = [0]
        run = lambda impl, x, w, b: ops.conv_transpose(x, w, b, impl=impl, **kw)  # noqa: E731
    expected = (x.shape[0], *outs, c_out)
    if min(outs) < 1 or dilation in HUGE:
        expected = None  # output < 1, or extents beyond what XLA takes
    return Call(op, run, (x, w, b), expected, bad)


def _depthwise_call(draw, op):
    nd = draw(st.integers(1, 3))
    channels = draw(st.sampled_from([0, 1, 2, 3])) if draw(st.booleans()) else 2
    x, seed = _x(draw, nd, 1, {1: 9, 2: 6, 3: 4}[nd], channels=channels)
    multiplier = draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    stride = _int(draw, 1, 2)
    padding = _int(draw, 0, 1)
    stride, bad = _maybe_bad(draw, "stride", stride)
    rng = np.random.default_rng(seed + 1)
    wd = rng.standard_normal((*kernel, 1, channels * multiplier))
    c_out = draw(st.integers(1, 3))
    wp = rng.standard_normal((*(1,) * nd, channels * multiplier, c_out))
    spatial = x.shape[1:-1]
    outs = [0]
    if bad is None:
        outs = [shapes.conv_output_size(n, k, stride, padding) for n, k in zip(spatial, kernel)]
    if min(outs) < 1:
        expected = None
    elif op == "depthwise_conv":
        expected = (x.shape[0], *outs, channels * multiplier)
    else:
        expected = (x.shape[0], *outs, c_out)
    kw = dict(stride=stride, padding=padding)
    if op == "depthwise_conv":
        return Call(
            op, lambda impl, x, w: ops.depthwise_conv(x, w, impl=impl, **kw), (x, wd), expected, bad
        )
    return Call(
        op,
        lambda impl, x, wd, wp: ops.separable_conv(x, wd, wp, impl=impl, **kw),
        (x, wd, wp),
        expected,
        bad,
    )


def _pool_call(draw, op):
    nd = draw(st.integers(1, 3))
    x, seed = _x(draw, nd, 1, {1: 10, 2: 7, 3: 5}[nd])
    window = tuple(_int(draw, 1, 3) for _ in range(nd))
    stride = tuple(_int(draw, 1, 3) for _ in range(nd)) if draw(st.booleans()) else None
    ceil_mode = draw(st.booleans())
    padding = tuple(
        draw(st.integers(0, int(k) // 2 + (draw(st.integers(0, 9)) == 0))) for k in window
    )
    dilation = tuple(_int(draw, 1, 2) for _ in range(nd)) if op == "max_pool" else (1,) * nd
    if op == "lp_pool":
        padding = (0,) * nd
    window, bad = _maybe_bad(draw, "window", window)
    strides = window if stride is None else stride
    expected = None
    if (
        bad is None
        and all(p <= k // 2 for p, k in zip(padding, window))
        and _windows_see_input(x.shape[1:-1], window, strides, padding, dilation, ceil_mode)
    ):
        outs = [
            shapes.pool_output_size(n, k, s, p, d, ceil_mode)
            for n, k, s, p, d in zip(x.shape[1:-1], window, strides, padding, dilation)
        ]
        if min(outs) >= 1:
            expected = (x.shape[0], *outs, x.shape[-1])
    rng = np.random.default_rng(seed)
    compare_grad = True
    if op == "max_pool":
        # Distinct values: at ties the custom rule picks the first maximum (PyTorch) and autodiff
        # another, both documented; the fuzz compares gradients where the maximum is unique.
        x = rng.permutation(x.size).reshape(x.shape) / max(x.size, 1) - 0.5
        kw = dict(stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode)
        run = lambda impl, x: ops.max_pool(x, window, impl=impl, **kw)  # noqa: E731
    elif op == "avg_pool":
        kw = dict(
            stride=stride,
            padding=padding,
            ceil_mode=ceil_mode,
            count_include_pad=draw(st.booleans()),
        )
        run = lambda impl, x: ops.avg_pool(x, window, impl=impl, **kw)  # noqa: E731
    else:
        p = draw(st.sampled_from([1, 2, 3, 1.5, 0.5, np.float64(2.5)]))
        zeros = rng.random(x.shape) < draw(st.sampled_from([0.0, 0.3, 0.9]))
        x = np.where(zeros, 0.0, x)  # exact zeros and all-zero windows: the subgradient rule
        kw = dict(stride=stride, ceil_mode=ceil_mode)
        run = lambda impl, x: ops.lp_pool(x, p, window, impl=impl, **kw)  # noqa: E731
    return Call(op, run, (x,), expected, bad, compare_grad)


def _windows_see_input(spatial, window, stride, padding, dilation, ceil_mode) -> bool:
    """Every window holds at least one input position (brute force over the taps)."""
    for n, k, s, p, d in zip(spatial, window, stride, padding, dilation):
        o = shapes.pool_output_size(n, k, s, p, d, ceil_mode)
        for j in range(max(o, 0)):
            if not any(0 <= j * s - p + t * d < n for t in range(k)):
                return False
    return True


def _global_call(draw, op):
    nd = draw(st.integers(1, 3))
    x, seed = _x(draw, nd, 0 if draw(st.integers(0, 9)) == 0 else 1, 5)
    keepdims = draw(st.booleans())
    if op == "global_max_pool":
        x = np.random.default_rng(seed).permutation(x.size).reshape(x.shape) * 1.0
    expected = None
    if 0 not in x.shape[1:-1]:
        expected = (x.shape[0], *(1,) * nd, x.shape[-1]) if keepdims else (x.shape[0], x.shape[-1])
    fn = getattr(ops, op)
    return Call(op, lambda impl, x: fn(x, keepdims=keepdims, impl=impl), (x,), expected)


def _norm_call(draw, op):
    nd = draw(st.integers(1, 3))
    x, _ = _x(draw, nd, 1, 5, channels=draw(st.integers(1, 5)))
    if op == "local_response_norm":
        size, bad = _maybe_bad(draw, "size", _int(draw, 1, 6))
        kw = dict(
            alpha=draw(st.sampled_from([1e-4, 0.1, 1.0])),
            beta=draw(st.sampled_from([0.5, 0.75, 1.3])),
            k=draw(st.sampled_from([1.0, 2.0])),
        )
        run = lambda impl, x: ops.local_response_norm(x, size, impl=impl, **kw)  # noqa: E731
    else:
        size, bad = _maybe_bad(draw, "size", draw(st.sampled_from([1, 3, 5, np.int64(3), 4])))
        if size == 4:
            bad = "size"  # even sizes are refused
        sigma = draw(st.sampled_from([None, 0.7, 2.0]))
        run = lambda impl, x: ops.local_contrast_norm(x, size, sigma, impl=impl)  # noqa: E731
    expected = None if bad else x.shape
    return Call(op, run, (x,), expected, bad)


def _unpool_call(draw, op):
    """max_unpool of a max_pool's switches (valid pool geometry by construction; the unpool's
    own window may be made invalid, and the default output size may be too small for the
    switches, which must then raise)."""
    nd = draw(st.integers(1, 3))
    window = tuple(_int(draw, 1, 3) for _ in range(nd))
    stride = tuple(_int(draw, 1, 3) for _ in range(nd)) if draw(st.booleans()) else None
    padding = tuple(draw(st.integers(0, int(k) // 2)) for k in window)
    n = 2 if draw(st.integers(0, 9)) else draw(st.integers(0, 1))
    spatial = tuple(int(k) + draw(st.integers(0, 3)) for k in window)
    c = draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = rng.permutation(n * math.prod(spatial) * c).reshape(n, *spatial, c) * 1.0
    y, idx = ops.max_pool(jnp.asarray(x), window, stride, padding, return_indices=True)
    y, idx = np.asarray(y), np.asarray(idx)
    strides = window if stride is None else stride
    explicit = draw(st.booleans())
    out = (
        spatial
        if explicit
        else tuple(
            (m - 1) * int(s) - 2 * p + int(k)
            for m, k, s, p in zip(y.shape[1:-1], window, strides, padding)
        )
    )
    unpool_window, bad = _maybe_bad(draw, "window", window)
    fits = idx.size == 0 or int(idx.max()) < math.prod(out)
    expected = (n, *out, c) if bad is None and fits else None

    def run(impl, y):
        shape = spatial if explicit else None
        return ops.max_unpool(y, idx, unpool_window, stride, padding, shape, impl=impl)

    return Call(op, run, (y,), expected, bad)


MAKERS = {
    "conv": _conv_call,
    "conv_transpose": _conv_call,
    "depthwise_conv": _depthwise_call,
    "separable_conv": _depthwise_call,
    "max_pool": _pool_call,
    "avg_pool": _pool_call,
    "lp_pool": _pool_call,
    "global_avg_pool": _global_call,
    "global_max_pool": _global_call,
    "local_response_norm": _norm_call,
    "local_contrast_norm": _norm_call,
    "max_unpool": _unpool_call,
}


NOT_OPS = {"compiler_options", "CPU_CONVOLUTIONS"}  # tests/test_compile_options.py


def test_every_public_op_is_fuzzed():
    assert sorted(MAKERS) == sorted(set(ops.__all__) - NOT_OPS)


def _relative(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


def _trace(call: Call, impl: str, arrays):
    """Trace ``impl`` (where every check runs): the output shape, or the exception."""
    try:
        return jax.eval_shape(lambda *a: call.run(impl, *a), *arrays)
    except (TypeError, ValueError) as err:
        return err


def _values_and_vjps(call: Call, arrays, cotangent):
    """``{impl: (y, vjp)}`` for both impls in one jit (one compilation per drawn call)."""

    def both(cotangent, *arrays):
        out = {}
        for impl in ("custom", "xla"):
            y, pullback = jax.vjp(lambda *a, impl=impl: call.run(impl, *a), *arrays)
            out[impl] = (y, pullback(cotangent))
        return out

    return jax.jit(both)(cotangent, *arrays)


def check_call(call: Call) -> None:
    COUNTS["tried"] += 1
    arrays = tuple(jnp.asarray(a) for a in call.arrays)
    traced = {impl: _trace(call, impl, arrays) for impl in ("custom", "xla")}
    errors = [isinstance(t, Exception) for t in traced.values()]
    assert errors[0] == errors[1], (call.op, traced)
    if errors[0]:
        err = traced["custom"]
        assert type(err) is type(traced["xla"]), traced
        message = str(err)
        assert message.startswith(f"{call.op}: "), message
        if call.bad is not None:
            assert call.bad in message, (call.bad, message)
        assert call.expected is None, f"{call.op}: predicted valid, raised {message}"
        COUNTS["raised"] += 1
        COUNTS[f"raised {type(err).__name__}"] += 1
        return
    shape = traced["custom"].shape
    assert call.expected is not None, f"{call.op}: predicted invalid, returned {shape}"
    assert tuple(shape) == tuple(call.expected)
    cotangent = jnp.asarray(np.random.default_rng(0).standard_normal(shape))
    results = _values_and_vjps(call, arrays, cotangent)
    (y, grads), (y_xla, grads_xla) = results["custom"], results["xla"]
    assert np.isfinite(np.asarray(y)).all()
    assert _relative(y, y_xla) <= RTOL
    for g, g_xla in zip(grads, grads_xla, strict=True):
        assert np.isfinite(np.asarray(g)).all()
        assert np.isfinite(np.asarray(g_xla)).all()
        if call.compare_grad:
            assert _relative(g, g_xla) <= RTOL, (call.op, _relative(g, g_xla))
    COUNTS["held"] += 1


def _fuzz(op, max_examples):
    @settings(max_examples=max_examples)
    @given(st.data())
    def run(data):
        check_call(data.draw(st.composite(lambda draw: MAKERS[op](draw, op))()))

    run()


@pytest.mark.parametrize("op", sorted(MAKERS))
def test_fuzz_ci(op):
    _fuzz(op, CI_EXAMPLES)


@pytest.mark.slow
@pytest.mark.parametrize("op", sorted(MAKERS))
def test_fuzz_full(op):
    _fuzz(op, SLOW_EXAMPLES)


def teardown_module():
    if COUNTS:
        print(f"\nfuzz counts: {dict(COUNTS)}")  # tried = held (returned) + raised
