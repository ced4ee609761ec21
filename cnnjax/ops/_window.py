"""Pooling windows: the static geometry every pool shares, and the window sum with its adjoint.

Per spatial dimension, with window ``k``, stride ``s`` (default ``k``), dilation ``d`` and padding
``(lo, hi)``, output ``j`` reads input positions ``j*s - lo + t*d`` for ``t = 0..k-1``
(:func:`cnnjax.shapes.pool_output_size` gives the output length). Used by
:mod:`cnnjax.ops.max_pooling` and :mod:`cnnjax.ops.pooling`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cnnjax.ops._common import accumulation_dtype, check_extents, spatial_ndim
from cnnjax.shapes import canonicalize_padding, canonicalize_tuple, pool_output_size, vjp_padding

__all__ = [
    "Geometry",
    "full_rank",
    "lowest_value",
    "pad_config",
    "reduce_window",
    "window_geometry",
    "window_sum",
    "window_sum_transpose",
    "zero_value",
]


class Geometry(NamedTuple):
    """Static description of a pooling window; every field is a tuple with one entry per dim."""

    spatial: tuple[int, ...]  # input sizes n
    window: tuple[int, ...]  # k
    stride: tuple[int, ...]  # s
    dilation: tuple[int, ...]  # d
    padding: tuple[tuple[int, int], ...]  # user (lo, hi)
    out: tuple[int, ...]  # o
    extra: tuple[int, ...]  # ceil-mode positions past n + lo + hi that the last window reads

    @property
    def full_padding(self) -> tuple[tuple[int, int], ...]:
        """``(lo, hi + extra)``: the padding that makes every window lie inside the array."""
        return tuple((lo, hi + e) for (lo, hi), e in zip(self.padding, self.extra, strict=True))


def window_geometry(
    op: str,
    x: jax.Array,
    window,
    stride,
    padding,
    dilation,
    ceil_mode: bool,
    *,
    check_half_window: bool,
) -> Geometry:
    nd = spatial_ndim(x, op=op)
    spatial = tuple(int(n) for n in x.shape[1:-1])
    if 0 in spatial:
        raise ValueError(
            f"{op}: every spatial dim of x must be >= 1 (a window over an empty input has no "
            f"value), got x.shape = {tuple(x.shape)}; a zero batch size N or channel count C is "
            "allowed and gives an empty result"
        )
    try:
        window = canonicalize_tuple(window, nd, "window")
        stride = window if stride is None else canonicalize_tuple(stride, nd, "stride")
        dilation = canonicalize_tuple(dilation, nd, "dilation")
        padding = canonicalize_padding(
            padding, nd, kernel=window, stride=stride, dilation=dilation, spatial=spatial
        )
    except (TypeError, ValueError) as err:
        raise type(err)(f"{op}: {err}") from None
    if not isinstance(ceil_mode, bool | np.bool_):
        raise TypeError(f"{op}: ceil_mode must be a bool, got {ceil_mode!r}")
    if check_half_window:
        for i, ((lo, hi), k) in enumerate(zip(padding, window, strict=True)):
            if lo > k // 2 or hi > k // 2:
                raise ValueError(
                    f"{op}: padding must be at most window // 2 on each side (PyTorch's rule), "
                    f"got padding={padding} for window={window} (dim {i}: ({lo}, {hi}) > "
                    f"{k} // 2 = {k // 2})"
                )
    out, extra = [], []
    for i, (n, k, s, d, (lo, hi)) in enumerate(
        zip(spatial, window, stride, dilation, padding, strict=True)
    ):
        o = pool_output_size(n, k, s, (lo, hi), d, bool(ceil_mode))
        if o < 1:
            rounding = "ceil" if ceil_mode else "floor"
            raise ValueError(
                f"{op}: output size must be >= 1, but in spatial dim {i} "
                f"o = {rounding}((n + lo + hi - d*(k-1) - 1) / s) + 1 = "
                f"{rounding}(({n} + {lo} + {hi} - {d}*({k}-1) - 1) / {s}) + 1 = {o} "
                f"for input shape {tuple(x.shape)}, window={window}, stride={stride}, "
                f"padding={padding}, dilation={dilation}"
            )
        out.append(o)
        extra.append(max(0, (o - 1) * s + d * (k - 1) + 1 - (n + lo + hi)))
        _check_windows_see_input(op, i, n, k, s, d, lo, o)
    # The same rule as conv: the padded extent (the ceil-mode extra padding < d*(k-1) + 1
    # included) plus d*(k-1) for the backward pass.
    extents = [
        n + lo + hi + e + d * (k - 1)
        for n, k, d, (lo, hi), e in zip(spatial, window, dilation, padding, extra)
    ]
    check_extents(
        op,
        "padded input of the window reduction",
        (x.shape[0], *extents, x.shape[-1]),
        "per dim n + lo + hi + extra + d*(k-1)",
    )
    return Geometry(spatial, window, stride, dilation, padding, tuple(out), tuple(extra))


def _check_windows_see_input(op: str, dim: int, n, k, s, d, lo, o) -> None:
    """With dilation a window can fall entirely in the padding (taps ``j s - lo + t d`` all
    outside ``[0, n)``); its max would be ``-inf``. PyTorch refuses such configurations too."""
    if d == 1:
        return  # with lo <= k // 2 every window holds at least one input
    start = np.arange(o) * s - lo
    t_min = np.maximum(0, -(start // d))  # first tap >= 0: ceil(-start / d)
    t_max = np.minimum(k - 1, (n - 1 - start) // d)
    empty = np.nonzero(t_min > t_max)[0]
    if empty.size:
        j = int(empty[0])
        raise ValueError(
            f"{op}: window {j} of spatial dim {dim} reads only padding: its taps "
            f"j*s - lo + t*d = {j}*{s} - {lo} + t*{d} (t < {k}) all lie outside [0, n) = "
            f"[0, {n}); use less padding or dilation"
        )


# Init and pad values are NumPy scalars, not jnp arrays: lax.reduce_window recognises a max/add
# monoid (and hence has a VJP) only when the init value is concrete, and under jit a jnp
# constant may be a tracer.
def lowest_value(dtype) -> np.ndarray:
    if jnp.issubdtype(dtype, jnp.floating):
        return np.array(-np.inf, dtype)
    if jnp.issubdtype(dtype, jnp.bool_):
        return np.array(False)
    return np.array(jnp.iinfo(dtype).min, dtype)


def zero_value(dtype) -> np.ndarray:
    return np.zeros((), dtype)


def full_rank(t):
    """Spatial per-dim values -> full-rank values with batch and channel entries."""
    return (1, *t, 1)


def pad_config(pairs) -> list[tuple[int, int, int]]:
    return [(0, 0, 0), *((lo, hi, 0) for lo, hi in pairs), (0, 0, 0)]


def reduce_window(x: jax.Array, init, op, geom: Geometry) -> jax.Array:
    """``op`` over each window ``x_{j s - lo + t d}``; padding (and ceil-mode extra) is ``init``."""
    return lax.reduce_window(
        x,
        init,
        op,
        full_rank(geom.window),
        full_rank(geom.stride),
        [(0, 0), *geom.full_padding, (0, 0)],
        window_dilation=full_rank(geom.dilation),
    )


def window_sum(x: jax.Array, geom: Geometry) -> jax.Array:
    """``sum_t x_{j s - lo + t d}`` with zero padding (including the ceil-mode extra).

    Accumulates in :func:`accumulation_dtype` (float32 for float16/bfloat16) and returns that
    dtype: callers round once, at the end.
    """
    x = x.astype(accumulation_dtype(x.dtype))
    return reduce_window(x, zero_value(x.dtype), lax.add, geom)


def window_sum_transpose(g: jax.Array, geom: Geometry) -> jax.Array:
    """Adjoint of :func:`window_sum`: ``dx_i = sum_{j, t: j s - lo + t d = i} g_j``.

    The conv-VJP padding arithmetic (:func:`cnnjax.shapes.vjp_padding`): interior-pad ``g`` by
    ``s - 1`` (so output ``j`` sits at ``j s``), pad ``d(k-1) - lo`` before and
    ``n + lo - (o-1)s - 1`` after (negative = crop), giving length ``n + d(k-1)``; a stride-1
    window sum of width ``k`` (dilation ``d``) then
    collects, at input ``i``, every ``g_j`` with ``j s - lo + t d = i``. The window is all ones,
    so no kernel flip is needed. Accumulates (and returns) in :func:`accumulation_dtype`.
    """
    g = g.astype(accumulation_dtype(g.dtype))
    config = [(0, 0, 0)]
    for n, k, s, d, pad, o in zip(
        geom.spatial, geom.window, geom.stride, geom.dilation, geom.padding, geom.out, strict=True
    ):
        config.append((*vjp_padding(n, o, k, s, pad, d), s - 1))
    config.append((0, 0, 0))
    spread = lax.pad(g, zero_value(g.dtype), config)
    ones = (1,) * g.ndim
    return lax.reduce_window(
        spread,
        zero_value(g.dtype),
        lax.add,
        full_rank(geom.window),
        ones,
        "VALID",
        window_dilation=full_rank(geom.dilation),
    )
