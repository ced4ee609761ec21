"""``cnnjax gradcheck``: sweep random configurations of every op, custom VJP vs autodiff.

For each op it draws ``--cases`` random configurations (rank, sizes, stride, padding, dilation,
groups, ceil_mode, …), computes the vector-Jacobian product of a random cotangent through the
hand-written rule (``impl="custom"``) and through JAX's autodiff of the plain-lax forward
(``impl="xla"``), in float64, and prints the worst relative error per op and argument. The exit
status is 1 when any error exceeds ``--tol`` (default 1e-10).

    cnnjax gradcheck                      # all ops, 25 configurations each
    cnnjax gradcheck --ops conv max_pool --cases 200
    cnnjax gradcheck --dtype bfloat16     # rounding error vs float64, with edge inputs

With ``--dtype float32/float16/bfloat16`` each impl runs in that dtype and is compared with the
same impl in float64 on the same rounded inputs and cotangent (tolerances per dtype, edge inputs
with exact zeros, ties and negatives by default for the 16-bit types). A progress bar with an
estimate goes to stderr (:mod:`cnnjax.progress`); each op's line gives its time and an estimate
of the time left.

This module holds the sweeps (:data:`SWEEPS`, :func:`check_op`, :func:`relative_error`); the
command line is :mod:`cnnjax.cli.gradcheck`.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable

import numpy as np

from cnnjax import shapes


@dataclasses.dataclass(frozen=True)
class Case:
    """One configuration: ``call(*arrays, impl=...)`` and its differentiable ``arrays``."""

    description: str
    arrays: tuple[np.ndarray, ...]
    call: Callable


def _spatial(rng, ndim, low, high):
    return tuple(int(rng.integers(low, high + 1)) for _ in range(ndim))


def _conv_case(rng: np.random.Generator) -> Case | None:
    from cnnjax import ops

    ndim = int(rng.integers(1, 4))
    groups = int(rng.choice([1, 1, 2, 3]))
    c_in, c_out = groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 3))
    geometry = _conv_geometry(rng, ndim)
    if geometry is None:
        return None
    spatial, kernel, kw = geometry
    kw = dict(kw, groups=groups)
    x = rng.standard_normal((2, *spatial, c_in))
    w = rng.standard_normal((*kernel, c_in // groups, c_out))
    b = rng.standard_normal((c_out,))
    return Case(str(kw), (x, w, b), lambda x, w, b, impl: ops.conv(x, w, b, impl=impl, **kw))


def _depthwise_geometry(rng: np.random.Generator):
    """Random (x, w_depthwise, conv keywords) for depthwise/separable conv, or None."""
    ndim = int(rng.integers(1, 4))
    channels, multiplier = int(rng.integers(1, 4)), int(rng.integers(1, 3))
    geometry = _conv_geometry(rng, ndim)
    if geometry is None:
        return None
    spatial, kernel, kw = geometry
    x = rng.standard_normal((2, *spatial, channels))
    w = rng.standard_normal((*kernel, 1, channels * multiplier))
    return x, w, kw


def _conv_geometry(rng: np.random.Generator, ndim: int):
    """Random ``ndim``-d (spatial, kernel, {stride, padding, dilation}) with every output size
    >= 1, or None (drawn in the order the cases always drew them: seeds keep their cases)."""
    kernel = _spatial(rng, ndim, 1, 3)
    stride, dilation = _spatial(rng, ndim, 1, 3), _spatial(rng, ndim, 1, 2)
    padding = tuple((int(rng.integers(0, 3)), int(rng.integers(0, 3))) for _ in range(ndim))
    spatial = _spatial(rng, ndim, 1, {1: 12, 2: 8, 3: 5}[ndim])
    outs = [shapes.conv_output_size(*a) for a in zip(spatial, kernel, stride, padding, dilation)]
    if min(outs) < 1:
        return None
    return spatial, kernel, dict(stride=stride, padding=padding, dilation=dilation)


def _depthwise_conv_case(rng: np.random.Generator) -> Case | None:
    from cnnjax import ops

    geometry = _depthwise_geometry(rng)
    if geometry is None:
        return None
    x, w, kw = geometry
    b = rng.standard_normal((w.shape[-1],))
    return Case(
        str(kw), (x, w, b), lambda x, w, b, impl: ops.depthwise_conv(x, w, b, impl=impl, **kw)
    )


def _separable_conv_case(rng: np.random.Generator) -> Case | None:
    """Arrays (x, w_depthwise, w_pointwise); the bias is the pointwise conv's, checked by conv."""
    from cnnjax import ops

    geometry = _depthwise_geometry(rng)
    if geometry is None:
        return None
    x, wd, kw = geometry
    wp = rng.standard_normal((*(1,) * (x.ndim - 2), wd.shape[-1], int(rng.integers(1, 4))))
    return Case(
        str(kw),
        (x, wd, wp),
        lambda x, wd, wp, impl: ops.separable_conv(x, wd, wp, impl=impl, **kw),
    )


def _conv_transpose_case(rng: np.random.Generator) -> Case | None:
    from cnnjax import ops

    ndim = int(rng.integers(1, 4))
    groups = int(rng.choice([1, 1, 2]))
    c_in, c_out = groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 3))
    kernel = _spatial(rng, ndim, 1, 3)
    stride, dilation = _spatial(rng, ndim, 1, 3), _spatial(rng, ndim, 1, 2)
    padding = tuple((int(rng.integers(0, 2)), int(rng.integers(0, 2))) for _ in range(ndim))
    output_padding = tuple(int(rng.integers(0, max(s, d))) for s, d in zip(stride, dilation))
    spatial = _spatial(rng, ndim, 1, {1: 8, 2: 5, 3: 3}[ndim])
    outs = [
        shapes.conv_transpose_output_size(*a)
        for a in zip(spatial, kernel, stride, padding, output_padding, dilation)
    ]
    if min(outs) < 1:
        return None
    kw = dict(
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        output_padding=output_padding,
    )
    x = rng.standard_normal((2, *spatial, c_in))
    w = rng.standard_normal((*kernel, c_in, c_out // groups))
    b = rng.standard_normal((c_out,))
    return Case(
        str(kw), (x, w, b), lambda x, w, b, impl: ops.conv_transpose(x, w, b, impl=impl, **kw)
    )


def _pool_geometry(rng, ndim, *, max_pad=True):
    window = _spatial(rng, ndim, 1, 3)
    stride = _spatial(rng, ndim, 1, 3)
    padding = tuple(int(rng.integers(0, k // 2 + 1)) for k in window) if max_pad else 0
    ceil_mode = bool(rng.integers(0, 2))
    spatial = _spatial(rng, ndim, 1, {1: 12, 2: 8, 3: 5}[ndim])
    return window, stride, padding, ceil_mode, spatial


def _pool_fits(spatial, window, stride, padding, dilation, ceil_mode: bool) -> bool:
    """Whether every output size of the pool is >= 1 (padding and dilation: per-dim tuples or
    one int for every dim)."""
    ndim = len(spatial)
    pads = padding if isinstance(padding, tuple) else (padding,) * ndim
    dils = dilation if isinstance(dilation, tuple) else (dilation,) * ndim
    sizes = zip(spatial, window, stride, pads, dils, strict=True)
    return min(shapes.pool_output_size(*size, ceil_mode) for size in sizes) >= 1


def _distinct(rng, shape):
    """Distinct values (a scaled permutation), so a max is unique and has a gradient."""
    size = int(np.prod(shape))
    return (rng.permutation(size).reshape(shape) - size / 2) / size + 0.01 * rng.random(shape)


def _max_pool_case(rng: np.random.Generator) -> Case | None:
    from cnnjax import ops

    ndim = int(rng.integers(1, 4))
    window, stride, padding, ceil_mode, spatial = _pool_geometry(rng, ndim)
    dilation = _spatial(rng, ndim, 1, 2)
    pads = padding if isinstance(padding, tuple) else (padding,) * ndim
    if any(2 * p > d * (k - 1) + 1 for p, k, d in zip(pads, window, dilation)):
        return None
    if not _pool_fits(spatial, window, stride, padding, dilation, ceil_mode):
        return None
    kw = dict(stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode)
    x = _distinct(rng, (2, *spatial, 3))
    return Case(
        f"window={window}, {kw}", (x,), lambda x, impl: ops.max_pool(x, window, impl=impl, **kw)
    )


def _avg_pool_case(rng: np.random.Generator) -> Case | None:
    from cnnjax import ops

    ndim = int(rng.integers(1, 4))
    window, stride, padding, ceil_mode, spatial = _pool_geometry(rng, ndim)
    if not _pool_fits(spatial, window, stride, padding, 1, ceil_mode):
        return None
    kw = dict(
        stride=stride,
        padding=padding,
        ceil_mode=ceil_mode,
        count_include_pad=bool(rng.integers(0, 2)),
    )
    x = rng.standard_normal((2, *spatial, 3))
    return Case(
        f"window={window}, {kw}", (x,), lambda x, impl: ops.avg_pool(x, window, impl=impl, **kw)
    )


def _lp_pool_case(rng: np.random.Generator) -> Case | None:
    from cnnjax import ops

    ndim = int(rng.integers(1, 4))
    window, stride, _, ceil_mode, spatial = _pool_geometry(rng, ndim, max_pad=False)
    if not _pool_fits(spatial, window, stride, 0, 1, ceil_mode):
        return None
    p = float(rng.choice([1.0, 2.0, 3.0, 1.5]))
    kw = dict(stride=stride, ceil_mode=ceil_mode)
    x = rng.standard_normal((2, *spatial, 3))  # any sign: the norm (sum |x|^p)^(1/p)
    return Case(
        f"p={p}, window={window}, {kw}",
        (x,),
        lambda x, impl: ops.lp_pool(x, p, window, impl=impl, **kw),
    )


def _global_case(name):
    def make(rng: np.random.Generator) -> Case:
        from cnnjax import ops

        ndim = int(rng.integers(1, 4))
        spatial = _spatial(rng, ndim, 1, {1: 9, 2: 6, 3: 4}[ndim])
        x = _distinct(rng, (2, *spatial, 3))
        fn = getattr(ops, name)
        keepdims = bool(rng.integers(0, 2))
        return Case(
            f"spatial={spatial}, keepdims={keepdims}",
            (x,),
            lambda x, impl: fn(x, keepdims=keepdims, impl=impl),
        )

    return make


def _lrn_case(rng: np.random.Generator) -> Case:
    from cnnjax import ops

    ndim = int(rng.integers(1, 4))
    spatial = _spatial(rng, ndim, 1, {1: 6, 2: 4, 3: 3}[ndim])
    channels = int(rng.integers(1, 9))
    kw = dict(
        size=int(rng.integers(1, 7)),
        alpha=float(rng.choice([1e-4, 0.1, 1.0])),
        beta=float(rng.choice([0.75, 0.5, 1.3])),
        k=float(rng.choice([1.0, 2.0])),
    )
    x = rng.standard_normal((2, *spatial, channels))
    return Case(str(kw), (x,), lambda x, impl: ops.local_response_norm(x, impl=impl, **kw))


def _lcn_case(rng: np.random.Generator) -> Case:
    from cnnjax import ops

    ndim = 2
    spatial = _spatial(rng, ndim, 3, 8)
    channels = int(rng.integers(1, 4))
    kw = dict(size=int(rng.choice([3, 5])), sigma=float(rng.choice([1.0, 2.0])))
    x = rng.standard_normal((2, *spatial, channels))
    return Case(str(kw), (x,), lambda x, impl: ops.local_contrast_norm(x, impl=impl, **kw))


SWEEPS: dict[str, Callable[[np.random.Generator], Case | None]] = {
    "conv": _conv_case,
    "conv_transpose": _conv_transpose_case,
    "depthwise_conv": _depthwise_conv_case,
    "separable_conv": _separable_conv_case,
    "max_pool": _max_pool_case,
    "avg_pool": _avg_pool_case,
    "lp_pool": _lp_pool_case,
    "global_avg_pool": _global_case("global_avg_pool"),
    "global_max_pool": _global_case("global_max_pool"),
    "local_response_norm": _lrn_case,
    "local_contrast_norm": _lcn_case,
}


@dataclasses.dataclass
class OpResult:
    op: str
    cases: int
    worst_forward: float
    worst_grad: dict[int, float]
    worst_case: str
    seconds: float = 0.0


# Default tolerances: float64 compares custom with xla (the rule itself); lower precisions
# compare each impl with the same impl in float64 on the same (rounded) inputs and cotangent,
# i.e. the rounding error: about 4 units of the dtype's unit roundoff (2^-11, 2^-8).
TOLERANCES = {"float64": 1e-10, "float32": 1e-5, "float16": 2e-3, "bfloat16": 1.6e-2}
EDGES = ("zeros", "ties", "negatives")


def relative_error(actual, expected) -> float:
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    if actual.size == 0:
        return 0.0
    same = actual == expected  # equal infinities (e.g. a max over padding only) agree
    diff = np.where(same, 0.0, np.abs(np.where(same, 0.0, actual) - np.where(same, 0.0, expected)))
    if np.isnan(diff).any():
        return float("inf")
    finite = np.abs(expected[np.isfinite(expected)])
    scale = max(float(np.max(finite, initial=0.0)), 1e-300)
    return float(np.max(diff) / scale)


def _edge(x: np.ndarray, edge: str, rng: np.random.Generator) -> np.ndarray:
    """An edge input: some exact zeros (and all-zero windows), ties, or all negative values."""
    if edge == "zeros":
        return np.where(rng.random(x.shape) < 0.5, 0.0, x)
    if edge == "ties":
        return np.round(x * 2) / 2
    return -np.abs(x) - 0.1


def _evaluate(case: Case, arrays, cotangent, impls):
    """``{impl: (y, grads)}`` for ``impls``, all in one jit (one compilation per case)."""
    import jax
    import jax.numpy as jnp

    def run(cotangent, *arrays):
        out = {}
        for impl in impls:
            y, pullback = jax.vjp(lambda *a, impl=impl: case.call(*a, impl=impl), *arrays)
            out[impl] = (y, pullback(cotangent.astype(y.dtype)))
        return out

    return jax.jit(run)(jnp.asarray(cotangent), *arrays)


def _compare(result: OpResult, case: Case, pairs) -> None:
    """Record the worst relative errors of ``[((y, grads), (y_ref, grads_ref)), ...]``."""
    worst_here = 0.0
    for (y, grads), (y_ref, grads_ref) in pairs:
        forward = relative_error(y, y_ref)
        worst_here = max(worst_here, forward)
        result.worst_forward = max(result.worst_forward, forward)
        for i, (g, g_ref) in enumerate(zip(grads, grads_ref, strict=True)):
            err = relative_error(g, g_ref)
            if not np.isfinite(np.asarray(g, np.float64)).all():
                err = float("inf")
            worst_here = max(worst_here, err)
            result.worst_grad[i] = max(result.worst_grad.get(i, 0.0), err)
    if worst_here >= max([result.worst_forward, *result.worst_grad.values()]):
        result.worst_case = case.description


def check_op(
    op: str, cases: int, seed: int, dtype: str = "float64", edges: bool = False, progress=None
) -> OpResult:
    """Run ``cases`` random configurations of ``op``; return the worst relative errors.

    float64: custom VJP vs autodiff (``impl="xla"``). Other dtypes: each impl in ``dtype``
    against the same impl in float64 on the same rounded inputs; with ``edges`` every other
    case uses an edge input (zeros, ties, negatives). ``progress(done)`` is called per case.
    """
    import time

    import jax
    import jax.numpy as jnp

    start = time.perf_counter()
    rng = np.random.default_rng([seed, sorted(SWEEPS).index(op)])
    result = OpResult(op, 0, 0.0, {}, "")
    attempts = 0
    while result.cases < cases and attempts < 20 * cases:
        attempts += 1
        case = SWEEPS[op](rng)
        if case is None:
            continue
        if edges and result.cases % 2 == 1:
            edge = EDGES[(result.cases // 2) % len(EDGES)]
            arrays = (_edge(case.arrays[0], edge, rng), *case.arrays[1:])
            case = dataclasses.replace(case, description=f"{edge}: {case.description}")
        else:
            arrays = case.arrays
        low = tuple(jnp.asarray(a, dtype) for a in arrays)
        wide = tuple(a.astype(jnp.float64) for a in low)
        try:
            y_shape = jax.eval_shape(lambda *a, case=case: case.call(*a, impl="xla"), *wide).shape
        except ValueError:
            continue  # a configuration the op refuses (e.g. a dilated window over padding only)
        cotangent = jnp.asarray(rng.standard_normal(y_shape), dtype)
        if dtype == "float64":
            out = _evaluate(case, wide, cotangent, ("custom", "xla"))
            _compare(result, case, [(out["custom"], out["xla"])])
        else:
            out = _evaluate(case, low, cotangent, ("custom", "xla"))
            ref = _evaluate(case, wide, cotangent.astype(jnp.float64), ("custom", "xla"))
            _compare(result, case, [(out[i], ref[i]) for i in ("custom", "xla")])
        result.cases += 1
        if progress is not None:
            progress(result.cases)
    result.seconds = time.perf_counter() - start
    return result


def __getattr__(name: str):
    """``main(argv)`` and ``build_parser()`` of the ``cnnjax gradcheck`` command, kept for their
    old callers; looked up by name (PEP 562) so that this module does not import the command
    line, which imports it."""
    if name in ("main", "build_parser"):
        import importlib

        cli = importlib.import_module("cnnjax.cli")
        if name == "main":
            return cli.entry_point("gradcheck")
        return lambda: cli.command_parser("gradcheck")
    raise AttributeError(f"module 'cnnjax.gradcheck' has no attribute {name!r}")


if __name__ == "__main__":  # python -m cnnjax.gradcheck ARGS = cnnjax gradcheck ARGS
    import importlib

    sys.exit(importlib.import_module("cnnjax.cli").entry_point("gradcheck")())
