"""Pooling: max, average, Lp and global pools over channels-last ``(N, *spatial, C)`` arrays.

Every op has two implementations selected by ``impl``:

* ``impl="custom"`` (default): a :func:`jax.custom_vjp` whose backward rule is the textbook
  derivation, written right below its forward function (max pool routes each output gradient
  through the saved "switch", mean pool spreads ``g / K`` over the window, Lp pool uses
  ``dy/dx_i = sign(x_i) |x_i|^(p-1) y^(1-p)``). The backward rules are themselves differentiable, so
  reverse-over-reverse (``jax.grad(jax.grad(f))``) works. Forward mode (``jax.jvp``,
  ``jax.jacfwd``) is impossible through a ``custom_vjp``; use ``impl="xla"`` for it.
* ``impl="xla"``: the forward in plain ``lax`` (``lax.reduce_window``) and JAX's own autodiff.

Low precision: window sums (and the sums inside every VJP) accumulate in float32 for
float16/bfloat16 inputs (float64 stays float64) and round once to the input dtype, in both impls.
Every spatial dim must be >= 1; a zero batch size or channel count gives an empty result.

Window semantics follow PyTorch's ``torch.nn.functional`` pools: per spatial dimension, with
window ``k``, stride ``s`` (default ``k``), dilation ``d`` and padding ``(lo, hi)``::

    o = floor_or_ceil((n + lo + hi - d*(k-1) - 1) / s) + 1

(:func:`cnnjax.shapes.pool_output_size`); output ``j`` reads input positions
``j*s - lo + t*d`` for ``t = 0..k-1``. In ``ceil_mode`` the last window may run past the padded
input; the missing positions are treated as padding (``-inf`` for max, absent for the average's
divisor, exactly as PyTorch). Padding may be at most ``window // 2`` on each side (PyTorch's
rule).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cnnjax.ops._common import (
    Impl,
    accumulation_dtype,
    as_floating,
    call_custom_vjp,
    check_extents,
    check_impl,
    spatial_ndim,
)
from cnnjax.shapes import Padding, canonicalize_padding, canonicalize_tuple, pool_output_size

__all__ = ["avg_pool", "global_avg_pool", "global_max_pool", "lp_pool", "max_pool"]


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def max_pool(
    x: jax.typing.ArrayLike,
    window: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: Padding = 0,
    dilation: int | Sequence[int] = 1,
    ceil_mode: bool = False,
    *,
    return_indices: bool = False,
    impl: Impl = "custom",
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Max pooling over a (dilated) window, like ``torch.nn.functional.max_pool{1,2,3}d``.

    Shapes: ``x`` is ``(N, *spatial, C)`` with 1-3 spatial dims; returns ``(N, *out, C)`` with
    ``out[i] = floor_or_ceil((n_i + lo_i + hi_i - d_i*(k_i-1) - 1) / s_i) + 1``.

    .. math:: y_j = \\max_{t} \\, x_{j s - lo + t d}  \\qquad (\\text{padding is } -\\infty)

    Backward (``impl="custom"``): the forward pass saves the "switch", the index ``t*`` of the
    first maximum inside each window (ties go to the first maximum, as in PyTorch), in a small
    integer dtype; the gradient ``dy_j`` is routed to ``x_{j s - lo + t* d}`` and contributions of
    overlapping windows add up. Unlike JAX's own max-pool VJP, window dilation is supported.
    NaN propagates like PyTorch (a NaN in the window is the maximum, and takes the gradient). A
    window whose real taps are all ``-inf`` routes its gradient to its first real tap, where
    ``return_indices`` points (as PyTorch does), not to the padding it ties with.

    Where ``impl="xla"`` differs: its gradient follows XLA's select-and-scatter, which in a
    window holding a NaN goes to the largest non-NaN tap (custom: the NaN), and in an all-``-inf``
    window touching the padding goes to the padding (lost). ``-0.0`` and ``+0.0`` compare equal:
    the switch and the index point at the first of them, while the sign of a zero maximum is
    the backend's ``max`` (``max_pool([-0., 0.], 2)`` is ``+0.0`` on XLA:CPU, ``-0.0`` in PyTorch).

    Large windows: up to 64 taps (``prod(window)``) the switch pass, its backward and the
    indices are unrolled, one step per tap (fast at run time); above, they loop over the taps
    (``lax.fori_loop``) with the same per-tap steps, bit-identical results and a program whose
    size does not depend on the window, so compile time stays flat (an unrolled 2001-tap window
    took ~100 s to compile). With ``impl="xla"`` and dilation above 64 taps, the forward gathers
    each window's first maximum found by that loop and autodiff routes ``dy`` there (in a
    window holding a NaN, to its last NaN, like the custom VJP; XLA's own select rule has no
    documented order there).

    Args:
      x: ``(N, *spatial, C)`` array.
      window: window size ``k``, an int or one int per spatial dim.
      stride: ``s``; defaults to ``window``.
      padding: int, per-dim ints, per-dim ``(lo, hi)`` pairs, or ``"SAME"``/``"VALID"``; the pad
        value is ``-inf``. Each side must be ``<= window // 2``.
      dilation: window dilation ``d`` (spacing between window taps).
      ceil_mode: round the output size up (PyTorch's rule; a last window that would start in the
        right padding is dropped).
      impl: ``"custom"`` (hand-written switch-routing VJP; reverse mode only: ``jax.jvp`` /
        ``jax.jacfwd`` cannot go through a ``custom_vjp`` and raise a ``TypeError``) or
        ``"xla"`` (``lax.reduce_window`` + JAX autodiff, forward mode included; with
        ``dilation > 1`` the forward is a ``reduce_window`` over the stacked dilated taps
        because JAX cannot differentiate a dilated max ``reduce_window``).
      return_indices: also return the switches as ``int32`` indices, shape ``(N, *out, C)``,
        in PyTorch's convention: the flat row-major position of each window's first maximum
        within its channel's spatial plane of the *unpadded* input (so they port to and from
        ``torch.nn.functional.max_pool*d(..., return_indices=True)`` and feed
        :func:`cnnjax.ops.max_unpool`). A window whose real taps are all ``-inf`` points at its
        first real tap, as in PyTorch. The indices carry no gradient.

    >>> max_pool(jnp.arange(16.0).reshape(1, 4, 4, 1), 2).ravel()
    Array([ 5.,  7., 13., 15.], dtype=float32)
    """
    check_impl(impl, "max_pool")
    x = _real("max_pool", x)
    geom = _window_geometry(
        "max_pool", x, window, stride, padding, dilation, ceil_mode, check_half_window=True
    )
    if impl == "xla":
        y = _max_pool_xla(x, geom)
    else:
        y = call_custom_vjp("max_pool", _max_pool_jit, x, geom)
    return (y, _max_pool_indices_jit(x, geom)) if return_indices else y


def avg_pool(
    x: jax.typing.ArrayLike,
    window: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: Padding = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    *,
    impl: Impl = "custom",
) -> jax.Array:
    """Average pooling, like ``torch.nn.functional.avg_pool{1,2,3}d``.

    Shapes: ``(N, *spatial, C) -> (N, *out, C)``, ``out`` as for :func:`max_pool` (no dilation).

    .. math:: y_j = \\frac{1}{K_j} \\sum_{t} x_{j s - lo + t}  \\qquad (\\text{padding is } 0)

    The divisor ``K_j`` is PyTorch's, a product over spatial dims of per-dim counts computed
    statically with NumPy: with ``count_include_pad=True`` the number of window taps inside the
    zero-padded input ``[-lo, n + hi)`` (so ceil-mode windows running past the padding count
    only up to it); with ``False`` the number of taps inside the real input ``[0, n)``.

    Backward (``impl="custom"``): ``dx_i = sum_{j: i in window j} dy_j / K_j`` ("the derivative
    of mean pooling is distributed over the pool"), computed as the adjoint of the window sum:
    interior-pad ``dy/K`` by ``stride - 1``, edge-pad by the conv-VJP amounts and take a
    stride-1 window sum (:func:`_window_sum_transpose`).

    Args:
      x: ``(N, *spatial, C)`` floating array.
      window, stride, padding, ceil_mode: as in :func:`max_pool` (zero padding).
      count_include_pad: whether zero padding counts in the divisor (PyTorch's default True).
      impl: ``"custom"`` (hand-written VJP; reverse mode only: forward mode is impossible
        through a ``custom_vjp``) or ``"xla"`` (``lax.reduce_window`` + autodiff, forward mode
        included).
    """
    check_impl(impl, "avg_pool")
    x = _floating("avg_pool", x)
    geom = _window_geometry(
        "avg_pool", x, window, stride, padding, 1, ceil_mode, check_half_window=True
    )
    cfg = _AvgConfig(geom, bool(count_include_pad))
    if impl == "xla":
        return _avg_pool_xla(x, cfg)
    return call_custom_vjp("avg_pool", _avg_pool_jit, x, cfg)


def lp_pool(
    x: jax.typing.ArrayLike,
    p: float,
    window: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    ceil_mode: bool = False,
    *,
    impl: Impl = "custom",
) -> jax.Array:
    """Lp pooling: the p-norm of each window, ``y = (sum_window |x|^p)^(1/p)``, no padding.

    Shapes: ``(N, *spatial, C) -> (N, *out, C)``, ``out`` as for :func:`max_pool` with zero
    padding and no dilation.

    .. math:: y_j = \\Big(\\sum_{t} |x_{j s + t}|^{\\,p}\\Big)^{1/p}

    This is the norm of the seeds (and of Sermanet et al. 2012); on non-negative input (e.g.
    after a ReLU) it equals PyTorch's ``lp_pool``, which raises the *signed* ``x`` to ``p``. For
    real inputs of either sign it is always defined (odd ``p`` on a negative window is not NaN).
    In ``ceil_mode`` a partial last window sums only the elements that exist. PyTorch differs
    there: it computes ``(K * avg_pool(x^p))^(1/p)`` and its average divides by the number of
    existing elements, so a partial window is rescaled by ``K / count``. The two agree wherever
    windows are full.

    Gradient: ``dy_j/dx_i = sign(x_i) |x_i|^(p-1) y_j^(1-p)``, so
    ``dx_i = sign(x_i) |x_i|^(p-1) sum_{j: i in window j} y_j^(1-p) dy_j``.
    Convention at the non-differentiable points (a subgradient, identical in both impls, always
    finite): a window whose sum ``sum |x|^p`` is 0 passes no gradient (0 is in the
    subdifferential of the norm at 0), and ``x_i == 0`` receives no gradient (``sign(0) = 0``;
    for ``p < 1`` the derivative there is infinite). ``impl="xla"`` gets the same numbers from
    autodiff through "double where" safe powers. The window sum accumulates in float32 (or
    wider) and rounds once.

    Range (large ``p``): ``|x|^p`` and ``S = sum |x|^p`` are formed in the accumulation dtype
    (float32 for float32/float16/bfloat16 input, float64 for float64), as PyTorch does. The
    result and the gradient are exact while ``tiny <= S <= max`` (``tiny``: the smallest
    *normal* number, since XLA:CPU flushes subnormals to zero; ``max``: the largest finite
    one). For a window of ``K`` equal values ``v`` that is
    ``(tiny/K)^(1/p) <= |v| <= (max/K)^(1/p)``: at ``p = 100, K = 2`` float32 gives
    ``[0.413, 2.41]`` and float64 ``[8.33e-4, 1201]``. Above, ``S`` overflows: ``y = inf`` and
    the gradient is 0 or NaN (``lp_pool(jnp.full((1, 4, 1), 10.), 100, 2)`` is ``inf`` with a
    NaN gradient, in PyTorch too). Below, ``S`` is 0: ``y = 0`` and a zero gradient. One
    exception: the float32 gradient of ``impl="xla"`` (autodiff's intermediates overflow
    first) is exact only up to about ``0.95 (max/K)^(1/p)`` (2.29 at ``p = 100, K = 2``); the
    custom VJP covers the whole range. For large ``p`` compute in float64, scale the input,
    or use :func:`max_pool` (the limit ``p -> inf``). ``tests/test_edges.py`` checks these
    bounds 1 % inside and outside.

    Args:
      x: ``(N, *spatial, C)`` floating array.
      p: the power, a finite number ``> 0`` (``p = 1`` is the sum of ``|x|``, ``p = 2`` L2
        pooling).
      window, stride, ceil_mode: as in :func:`max_pool`.
      impl: ``"custom"`` (hand-written VJP; reverse mode only: forward mode is impossible
        through a ``custom_vjp``) or ``"xla"`` (``lax.reduce_window`` + autodiff, forward mode
        included).
    """
    check_impl(impl, "lp_pool")
    if isinstance(p, bool) or not isinstance(p, int | float | np.integer | np.floating):
        raise TypeError(f"lp_pool: p must be a positive number, got {p!r}")
    if not (math.isfinite(p) and p > 0):
        raise ValueError(f"lp_pool: p must be a finite number > 0 (y = (sum x^p)^(1/p)), got {p!r}")
    x = _floating("lp_pool", x)
    geom = _window_geometry("lp_pool", x, window, stride, 0, 1, ceil_mode, check_half_window=False)
    cfg = _LpConfig(geom, float(p))
    if impl == "xla":
        return _lp_pool_xla(x, cfg)
    return call_custom_vjp("lp_pool", _lp_pool_jit, x, cfg)


def global_avg_pool(
    x: jax.typing.ArrayLike, keepdims: bool = False, *, impl: Impl = "custom"
) -> jax.Array:
    """Global average pooling: the mean over all spatial positions.

    Shapes: ``(N, *spatial, C) -> (N, C)``, or ``(N, 1, ..., 1, C)`` with ``keepdims``.

    .. math:: y_{nc} = \\frac{1}{P} \\sum_{i} x_{n i c}, \\qquad P = \\prod \\text{spatial}

    Backward (``impl="custom"``): ``dx_{nic} = dy_{nc} / P`` broadcast over space.
    ``impl="xla"`` is ``jnp.mean`` + autodiff. Forward mode (``jax.jvp``) is impossible through
    the custom VJP: it needs ``impl="xla"``.
    """
    check_impl(impl, "global_avg_pool")
    x = _floating("global_avg_pool", x)
    spatial_ndim(x, op="global_avg_pool")
    _check_positions("global_avg_pool", x)
    if impl == "xla":
        return _global_mean(x, bool(keepdims))
    cfg = _GlobalConfig(tuple(x.shape), bool(keepdims))
    return call_custom_vjp("global_avg_pool", _global_avg_pool_jit, x, cfg)


def global_max_pool(
    x: jax.typing.ArrayLike, keepdims: bool = False, *, impl: Impl = "custom"
) -> jax.Array:
    """Global max pooling: the max over all spatial positions.

    Shapes: ``(N, *spatial, C) -> (N, C)``, or ``(N, 1, ..., 1, C)`` with ``keepdims``.

    .. math:: y_{nc} = \\max_{i} x_{n i c}

    Backward (``impl="custom"``): a one-hot at the first argmax (in row-major spatial order):
    ``dx_{nic} = dy_{nc} [i = argmax_i x_{nic}]``. ``impl="xla"`` is ``jnp.max`` + autodiff,
    which splits the gradient evenly between tied maxima instead. Forward mode (``jax.jvp``)
    is impossible through the custom VJP: it needs ``impl="xla"``.
    """
    check_impl(impl, "global_max_pool")
    x = _real("global_max_pool", x)
    nd = spatial_ndim(x, op="global_max_pool")
    _check_positions("global_max_pool", x)
    if impl == "xla":
        return jnp.max(x, axis=tuple(range(1, nd + 1)), keepdims=bool(keepdims))
    cfg = _GlobalConfig(tuple(x.shape), bool(keepdims))
    return call_custom_vjp("global_max_pool", _global_max_pool_jit, x, cfg)


# --------------------------------------------------------------------------------------------
# Window geometry (static, hashable) and argument checks
# --------------------------------------------------------------------------------------------


class _Geometry(NamedTuple):
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


def _window_geometry(
    op: str,
    x: jax.Array,
    window,
    stride,
    padding,
    dilation,
    ceil_mode: bool,
    *,
    check_half_window: bool,
) -> _Geometry:
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
    return _Geometry(spatial, window, stride, dilation, padding, tuple(out), tuple(extra))


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


def _floating(op: str, x) -> jax.Array:
    return as_floating(op, x)


def _real(op: str, x) -> jax.Array:
    """Max pools accept every real dtype (bool, integers, floats; both impls return it) but not
    complex numbers, which have no order."""
    try:
        x = jnp.asarray(x)
    except TypeError as err:
        raise TypeError(f"{op}: x must be an array, got {type(x).__name__}") from err
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise TypeError(f"{op}: x must be real (complex numbers have no maximum), got {x.dtype}")
    return x


def _check_positions(op: str, x: jax.Array) -> None:
    if 0 in x.shape[1:-1]:
        raise ValueError(
            f"{op}: the pool over P = prod(spatial) = 0 positions is undefined (x.shape = "
            f"{tuple(x.shape)}); a zero batch size N or channel count C gives an empty result"
        )


# Init and pad values are NumPy scalars, not jnp arrays: lax.reduce_window recognises a max/add
# monoid (and hence has a VJP) only when the init value is concrete, and under jit a jnp
# constant may be a tracer.
def _lowest(dtype) -> np.ndarray:
    if jnp.issubdtype(dtype, jnp.floating):
        return np.array(-np.inf, dtype)
    if jnp.issubdtype(dtype, jnp.bool_):
        return np.array(False)
    return np.array(jnp.iinfo(dtype).min, dtype)


def _zero(dtype) -> np.ndarray:
    return np.zeros((), dtype)


def _full(t):
    """Spatial per-dim values -> full-rank values with batch and channel entries."""
    return (1, *t, 1)


def _pad_config(pairs) -> list[tuple[int, int, int]]:
    return [(0, 0, 0), *((lo, hi, 0) for lo, hi in pairs), (0, 0, 0)]


def _reduce_window(x: jax.Array, init, op, geom: _Geometry) -> jax.Array:
    """``op`` over each window ``x_{j s - lo + t d}``; padding (and ceil-mode extra) is ``init``."""
    return lax.reduce_window(
        x,
        init,
        op,
        _full(geom.window),
        _full(geom.stride),
        [(0, 0), *geom.full_padding, (0, 0)],
        window_dilation=_full(geom.dilation),
    )


def _window_sum(x: jax.Array, geom: _Geometry) -> jax.Array:
    """``sum_t x_{j s - lo + t d}`` with zero padding (including the ceil-mode extra).

    Accumulates in :func:`accumulation_dtype` (float32 for float16/bfloat16) and returns that
    dtype: callers round once, at the end.
    """
    x = x.astype(accumulation_dtype(x.dtype))
    return _reduce_window(x, _zero(x.dtype), lax.add, geom)


def _window_sum_transpose(g: jax.Array, geom: _Geometry) -> jax.Array:
    """Adjoint of :func:`_window_sum`: ``dx_i = sum_{j, t: j s - lo + t d = i} g_j``.

    The conv-VJP padding arithmetic: interior-pad ``g`` by ``s - 1`` (so output ``j`` sits at
    ``j s``), pad ``d(k-1) - lo`` before and ``n + lo - (o-1)s - 1`` after (negative = crop),
    giving length ``n + d(k-1)``; a stride-1 window sum of width ``k`` (dilation ``d``) then
    collects, at input ``i``, every ``g_j`` with ``j s - lo + t d = i``. The window is all ones,
    so no kernel flip is needed. Accumulates (and returns) in :func:`accumulation_dtype`.
    """
    g = g.astype(accumulation_dtype(g.dtype))
    config = [(0, 0, 0)]
    for n, k, s, d, (lo, _), o in zip(
        geom.spatial, geom.window, geom.stride, geom.dilation, geom.padding, geom.out, strict=True
    ):
        config.append((d * (k - 1) - lo, n + lo - (o - 1) * s - 1, s - 1))
    config.append((0, 0, 0))
    spread = lax.pad(g, _zero(g.dtype), config)
    ones = (1,) * g.ndim
    return lax.reduce_window(
        spread,
        _zero(g.dtype),
        lax.add,
        _full(geom.window),
        ones,
        "VALID",
        window_dilation=_full(geom.dilation),
    )


def _offsets(geom: _Geometry):
    """Window offsets ``t`` in row-major order (the order that defines "first maximum")."""
    return itertools.product(*(range(k) for k in geom.window))


def _tap(xp: jax.Array, geom: _Geometry, offset) -> jax.Array:
    """``xp[:, j s + t d, :]`` for all outputs ``j``: one window tap as a strided slice of the
    fully padded input."""
    start = [0, *(t * d for t, d in zip(offset, geom.dilation, strict=True)), 0]
    limit = [
        xp.shape[0],
        *(b + (o - 1) * s + 1 for b, o, s in zip(start[1:-1], geom.out, geom.stride, strict=True)),
        xp.shape[-1],
    ]
    return lax.slice(xp, start, limit, _full(geom.stride))


# Above this many window taps (prod(window)) the max-pool switch, its backward, the indices and
# the dilated xla forward run as a ``lax.fori_loop`` over the taps instead of one unrolled step
# per tap: the unrolled program grows with the window and XLA's compile time with it (jitted
# fwd+VJP on CPU: 33 taps 0.6 s, 129 taps 1.4 s, 257 taps 4.3 s, 2001 taps ~100 s), while the
# loop's program has a fixed size. The loop body performs exactly the operations of one
# unrolled step, in the same order, so both give bit-identical results (ties, NaN, -0.0).
# Trade-off at the threshold (CPU, jitted fwd+VJP, 9x9 window, stride 1, (8, 32, 32, 16)):
# unrolled 3.9 s compile / 56 ms run, looped 1.8 s / 96 ms, impl="xla" 1.9 s / 279 ms.
_MAX_UNROLLED_TAPS = 64


def _unrolled(geom: _Geometry) -> bool:
    return math.prod(geom.window) <= _MAX_UNROLLED_TAPS


def _offset_of(index: jax.Array, geom: _Geometry) -> list[jax.Array]:
    """Row-major window offset ``t`` (one traced int32 per dim) of the flat tap ``index``."""
    offset = []
    index = lax.convert_element_type(index, jnp.int32)  # the loop counter is int64 under x64
    for k in reversed(geom.window):
        offset.append(index % k)
        index = index // k
    return offset[::-1]


def _tap_dynamic(xp: jax.Array, geom: _Geometry, offset) -> jax.Array:
    """:func:`_tap` for a traced ``offset``: a dynamic slice, then the static strided slice."""
    zero = jnp.zeros((), jnp.int32)
    start = [zero, *(t * d for t, d in zip(offset, geom.dilation, strict=True)), zero]
    sizes = [xp.shape[0], *((o - 1) * s + 1 for o, s in zip(geom.out, geom.stride)), xp.shape[-1]]
    window = lax.dynamic_slice(xp, start, sizes)
    return lax.slice(window, [0] * xp.ndim, sizes, _full(geom.stride))


def _switch_dtype(geom: _Geometry):
    num_taps = math.prod(geom.window)
    return jnp.int8 if num_taps <= 127 else jnp.int16 if num_taps <= 32767 else jnp.int32


def _max_switch(x: jax.Array, geom: _Geometry) -> tuple[jax.Array, jax.Array]:
    """The window max and its switch (flat row-major tap index of the first maximum; a NaN tap
    always wins, so NaN propagates as in PyTorch), unrolled or looped over the taps."""
    # One pass over the window taps keeps the running max and the switch: a later tap wins
    # only if strictly greater (ties keep the first maximum) or if it is NaN.
    xp = lax.pad(x, _lowest(x.dtype), _pad_config(geom.full_padding))
    switch_dtype = _switch_dtype(geom)
    best = _tap(xp, geom, (0,) * len(geom.window))
    switch = jnp.zeros(best.shape, switch_dtype)

    def step(index, tap, best, switch):
        take = (tap > best) | (tap != tap)
        return jnp.where(take, tap, best), jnp.where(take, index.astype(switch_dtype), switch)

    if _unrolled(geom):
        for index, offset in enumerate(_offsets(geom)):
            if index:
                best, switch = step(np.int32(index), _tap(xp, geom, offset), best, switch)
    else:

        def body(index, carry):
            return step(index, _tap_dynamic(xp, geom, _offset_of(index, geom)), *carry)

        best, switch = lax.fori_loop(1, math.prod(geom.window), body, (best, switch))
    return best, _switch_to_a_real_tap(best, switch, geom)


def _switch_to_a_real_tap(best: jax.Array, switch: jax.Array, geom: _Geometry) -> jax.Array:
    """A window whose real taps are all ``-inf`` ties with its padding; its switch (still tap 0,
    as nothing was greater) moves to the window's first real tap, where PyTorch routes the
    gradient and where ``return_indices`` points."""
    first = _first_real_tap(geom)
    if not first.any():  # every window starts inside the input: tap 0 is real
        return switch
    first = jnp.asarray(first.astype(switch.dtype)[None, ..., None])
    return jnp.where(best == _lowest(best.dtype), first, switch)


def _first_real_tap(geom: _Geometry) -> np.ndarray:
    """Static ``out``-shaped flat tap number of each window's first tap inside the input
    (row-major over the window; windows wholly in the padding are refused earlier)."""
    firsts = [
        np.clip(-((np.arange(o) * s - lo) // d), 0, k - 1)  # ceil((lo - j s) / d), at least 0
        for o, s, (lo, _), d, k in zip(
            geom.out, geom.stride, geom.padding, geom.dilation, geom.window, strict=True
        )
    ]
    grids = np.meshgrid(*firsts, indexing="ij")
    return np.ravel_multi_index(tuple(grids), geom.window)


# --------------------------------------------------------------------------------------------
# max_pool
# --------------------------------------------------------------------------------------------


def _max_pool_reduce_window(x: jax.Array, geom: _Geometry) -> jax.Array:
    return _reduce_window(x, _lowest(x.dtype), lax.max, geom)


def _max_pool_xla(x: jax.Array, geom: _Geometry) -> jax.Array:
    if all(d == 1 for d in geom.dilation):
        return _max_pool_reduce_window(x, geom)
    # JAX's max reduce_window VJP refuses window dilation.
    xp = lax.pad(x, _lowest(x.dtype), _pad_config(geom.full_padding))
    if not _unrolled(geom):
        # Large windows: gather each window's first maximum (found by the looped switch pass,
        # which carries no gradient); autodiff of the gather routes dy to that element.
        switch = _max_switch(lax.stop_gradient(x), geom)[1]
        flat = xp.reshape(xp.shape[0], -1, xp.shape[-1])
        position = _switch_positions(switch, geom).reshape(flat.shape[0], -1, flat.shape[-1])
        return jnp.take_along_axis(flat, position, axis=1).reshape(switch.shape)
    # Stack the taps on a new leading axis and take a plain (undilated) max reduce_window over
    # it, which JAX can differentiate.
    taps = jnp.stack([_tap(xp, geom, t) for t in _offsets(geom)])
    k = taps.shape[0]
    y = lax.reduce_window(
        taps, _lowest(x.dtype), lax.max, (k, *(1,) * x.ndim), (1,) * taps.ndim, "VALID"
    )
    return y[0]


def _switch_positions(switch: jax.Array, geom: _Geometry) -> jax.Array:
    """Flat row-major position ``p = j s + t* d`` of each switch in the fully padded spatial
    plane (int32, shape of ``switch``)."""
    offset = _offset_of(switch.astype(jnp.int32), geom)
    padded = [n + lo + hi for n, (lo, hi) in zip(geom.spatial, geom.full_padding, strict=True)]
    flat = jnp.zeros(switch.shape, jnp.int32)
    for axis, (t, s, d, size) in enumerate(
        zip(offset, geom.stride, geom.dilation, padded, strict=True)
    ):
        j = lax.broadcasted_iota(jnp.int32, switch.shape, axis + 1)
        flat = flat * size + j * s + t * d
    return flat


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool_custom(x: jax.Array, geom: _Geometry) -> jax.Array:
    # Without differentiation only y is needed: XLA's reduce_window is faster than the
    # tap-by-tap pass of the fwd rule (which also builds the switch). Both give exactly max.
    return _max_pool_reduce_window(x, geom)


def _max_pool_fwd(x: jax.Array, geom: _Geometry):
    return _max_switch(x, geom)


def _max_pool_bwd(geom: _Geometry, switch: jax.Array, g: jax.Array):
    # dx_i = sum_j g_j [i = j s - lo + switch_j d]: for each tap t, keep g where the switch is t
    # and place it at j s + t d - lo with lax.pad (interior s - 1, low t d - lo, high crops to
    # n); the pieces of overlapping windows add up, in tap order. Linear in g, hence
    # differentiable again.
    if not _unrolled(geom):
        return (_max_pool_bwd_looped(geom, switch, g),)
    dx = None
    for index, offset in enumerate(_offsets(geom)):
        routed = jnp.where(switch == index, g, jnp.zeros((), g.dtype))
        config = [(0, 0, 0)]
        for n, t, s, d, (lo, _), o in zip(
            geom.spatial, offset, geom.stride, geom.dilation, geom.padding, geom.out, strict=True
        ):
            low = t * d - lo
            config.append((low, n - low - ((o - 1) * s + 1), s - 1))
        config.append((0, 0, 0))
        piece = lax.pad(routed, _zero(g.dtype), config)
        dx = piece if dx is None else dx + piece
    return (dx,)


def _max_pool_bwd_looped(geom: _Geometry, switch: jax.Array, g: jax.Array) -> jax.Array:
    """:func:`_max_pool_bwd` as a loop over the taps: each piece is placed in the fully padded
    plane (a zero array, updated at ``t d``) and the sum is cropped at the end; every element
    sees the same additions, in the same order, as the unrolled rule."""
    padded = (g.shape[0], *(n + lo + hi for n, (lo, hi) in zip(geom.spatial, geom.full_padding)))
    padded = (*padded, g.shape[-1])
    interior = [(0, 0, 0), *((0, 0, s - 1) for s in geom.stride), (0, 0, 0)]
    zero = jnp.zeros((), jnp.int32)

    def piece(index):
        routed = jnp.where(switch == index.astype(switch.dtype), g, jnp.zeros((), g.dtype))
        spread = lax.pad(routed, _zero(g.dtype), interior)
        start = [zero, *(t * d for t, d in zip(_offset_of(index, geom), geom.dilation)), zero]
        return lax.dynamic_update_slice(jnp.zeros(padded, g.dtype), spread, start)

    dxp = lax.fori_loop(
        1, math.prod(geom.window), lambda i, acc: acc + piece(i), piece(jnp.int32(0))
    )
    lows = [lo for lo, _ in geom.padding]
    return lax.slice(
        dxp,
        [0, *lows, 0],
        [g.shape[0], *(lo + n for lo, n in zip(lows, geom.spatial)), g.shape[-1]],
    )


_max_pool_custom.defvjp(_max_pool_fwd, _max_pool_bwd)
_max_pool_jit = jax.jit(_max_pool_custom, static_argnums=1)


def _static_tap_positions(geom: _Geometry, offset) -> tuple[np.ndarray, np.ndarray]:
    """Flat unpadded position (clipped into the input) and inside-the-input mask of one tap,
    static NumPy arrays of shape ``out``."""
    grids = np.meshgrid(
        *(
            np.arange(o) * s - lo + t * d
            for o, s, (lo, _), t, d in zip(
                geom.out, geom.stride, geom.padding, offset, geom.dilation, strict=True
            )
        ),
        indexing="ij",
    )
    inside = np.all([(g >= 0) & (g < n) for g, n in zip(grids, geom.spatial, strict=True)], 0)
    flat = np.ravel_multi_index(
        tuple(np.clip(g, 0, n - 1) for g, n in zip(grids, geom.spatial)), geom.spatial
    )
    return flat, inside


def _traced_tap_positions(geom: _Geometry, offset) -> tuple[jax.Array, jax.Array]:
    """:func:`_static_tap_positions` for a traced offset, shaped ``(1, *out, 1)``."""
    shape = _full(geom.out)
    flat = jnp.zeros(shape, jnp.int32)
    inside = jnp.ones(shape, bool)
    for axis, (s, (lo, _), t, d, n) in enumerate(
        zip(geom.stride, geom.padding, offset, geom.dilation, geom.spatial, strict=True)
    ):
        position = lax.broadcasted_iota(jnp.int32, shape, axis + 1) * s - lo + t * d
        inside = inside & (position >= 0) & (position < n)
        flat = flat * n + jnp.clip(position, 0, n - 1)
    return flat, inside


def _max_pool_indices(x: jax.Array, geom: _Geometry) -> jax.Array:
    """PyTorch's switches: flat position ``sum_i p_i prod_{i' > i} n_{i'}`` of the first maximum
    of each window, ``p = j s - lo + t d``, among the taps that fall inside the input."""
    x = lax.stop_gradient(x)
    xp = lax.pad(x, _lowest(x.dtype), _pad_config(geom.full_padding))

    def step(tap, flat, inside, best, found, index):
        take = inside & (~found | (tap > best) | (tap != tap))
        return jnp.where(take, tap, best), found | inside, jnp.where(take, flat, index)

    best = found = index = None
    first = -1
    for number, offset in enumerate(_offsets(geom)):
        # static per-tap positions: flat index and whether the tap lies inside the input
        flat, inside = _static_tap_positions(geom, offset)
        if not inside.any():
            continue
        flat = jnp.asarray(flat.astype(np.int32)[None, ..., None])
        inside = jnp.asarray(inside[None, ..., None])
        tap = _tap(xp, geom, offset)
        if best is None:
            best, found, index = tap, inside, jnp.broadcast_to(flat, tap.shape)
            if not _unrolled(geom):
                first = number
                break
            continue
        best, found, index = step(tap, flat, inside, best, found, index)
    if _unrolled(geom):
        return index

    # Loop over the remaining taps; a tap with no position inside the input takes nothing,
    # exactly as the unrolled pass that skips it.
    def body(number, carry):
        offset = _offset_of(number, geom)
        tap = _tap_dynamic(xp, geom, offset)
        return step(tap, *_traced_tap_positions(geom, offset), *carry)

    carry = lax.fori_loop(first + 1, math.prod(geom.window), body, (best, found, index))
    return carry[2]


_max_pool_indices_jit = jax.jit(_max_pool_indices, static_argnums=1)


# --------------------------------------------------------------------------------------------
# avg_pool
# --------------------------------------------------------------------------------------------


class _AvgConfig(NamedTuple):
    geom: _Geometry
    count_include_pad: bool


def _avg_divisor(cfg: _AvgConfig) -> np.ndarray:
    """PyTorch's per-output divisor, shape ``(1, *out, 1)``, as a static NumPy array.

    Per dim: window ``[j s - lo, j s - lo + k)`` clipped to ``[-lo, n + hi)`` (count_include_pad)
    or to ``[0, n)``; the divisor is the product of the per-dim counts.
    """
    geom = cfg.geom
    divisor = np.ones((), np.int64)
    for n, k, s, (lo, hi), o in zip(
        geom.spatial, geom.window, geom.stride, geom.padding, geom.out, strict=True
    ):
        start = np.arange(o) * s - lo
        end = np.minimum(start + k, n + hi)
        if cfg.count_include_pad:
            count = end - start
        else:
            count = np.minimum(end, n) - np.maximum(start, 0)
        divisor = np.multiply.outer(divisor, count)
    return divisor.reshape(_full(geom.out))


def _avg_pool_xla(x: jax.Array, cfg: _AvgConfig) -> jax.Array:
    total = _window_sum(x, cfg.geom)
    return (total / _avg_divisor(cfg).astype(total.dtype)).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _avg_pool_custom(x: jax.Array, cfg: _AvgConfig) -> jax.Array:
    return _avg_pool_xla(x, cfg)


def _avg_pool_fwd(x: jax.Array, cfg: _AvgConfig):
    return _avg_pool_custom(x, cfg), None


def _avg_pool_bwd(cfg: _AvgConfig, _, g: jax.Array):
    # dx_i = sum_{j: i in window j} g_j / K_j: the window-sum adjoint of g / K (in float32 or
    # wider, rounded once).
    acc = accumulation_dtype(g.dtype)
    scaled = g.astype(acc) / _avg_divisor(cfg).astype(acc)
    return (_window_sum_transpose(scaled, cfg.geom).astype(g.dtype),)


_avg_pool_custom.defvjp(_avg_pool_fwd, _avg_pool_bwd)
_avg_pool_jit = jax.jit(_avg_pool_custom, static_argnums=1)


# --------------------------------------------------------------------------------------------
# lp_pool
# --------------------------------------------------------------------------------------------


class _LpConfig(NamedTuple):
    geom: _Geometry
    p: float


def _power(x: jax.Array, p: float) -> jax.Array:
    # Integer powers use exact repeated multiplication.
    if float(p).is_integer():
        return lax.integer_pow(x, int(p))
    return lax.pow(x, np.array(p, x.dtype))


def _safe_power(a: jax.Array, p: float) -> jax.Array:
    """``a^p`` for ``a >= 0``, 0 at ``a == 0`` with derivative 0 there (the "double where":
    the power never sees a 0, so autodiff never forms ``0 * inf``)."""
    positive = a > 0
    a_safe = jnp.where(positive, a, jnp.ones((), a.dtype))
    return jnp.where(positive, _power(a_safe, p), jnp.zeros((), a.dtype))


def _lp_norm_wide(x: jax.Array, cfg: _LpConfig) -> jax.Array:
    """``(sum_window |x|^p)^(1/p)`` in the accumulation dtype (not yet rounded)."""
    a = jnp.abs(x.astype(accumulation_dtype(x.dtype)))
    return _safe_power(_window_sum(_safe_power(a, cfg.p), cfg.geom), 1.0 / cfg.p)


def _lp_pool_xla(x: jax.Array, cfg: _LpConfig) -> jax.Array:
    return _lp_norm_wide(x, cfg).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _lp_pool_custom(x: jax.Array, cfg: _LpConfig) -> jax.Array:
    return _lp_pool_xla(x, cfg)


def _lp_pool_fwd(x: jax.Array, cfg: _LpConfig):
    y_wide = _lp_norm_wide(x, cfg)
    return y_wide.astype(x.dtype), (x, y_wide)


def _lp_pool_bwd(cfg: _LpConfig, residuals, g: jax.Array):
    # dx_i = sign(x_i) |x_i|^(p-1) * sum_{j: i in window j} y_j^(1-p) g_j, in the accumulation
    # dtype; windows with y_j = 0 and inputs x_i = 0 contribute 0 (the subgradient convention).
    # The safe powers keep y^(1-p) and |x|^(p-1) finite, so differentiating this rule again is
    # NaN-free too.
    x, y = residuals
    acc = y.dtype
    coef = _safe_power(y, 1.0 - cfg.p) * g.astype(acc)
    spread = _window_sum_transpose(coef, cfg.geom)
    x = x.astype(acc)
    factor = jnp.sign(x) * _safe_power(jnp.abs(x), cfg.p - 1.0)
    return ((factor * spread).astype(g.dtype),)


_lp_pool_custom.defvjp(_lp_pool_fwd, _lp_pool_bwd)
_lp_pool_jit = jax.jit(_lp_pool_custom, static_argnums=1)


# --------------------------------------------------------------------------------------------
# global pools
# --------------------------------------------------------------------------------------------


class _GlobalConfig(NamedTuple):
    shape: tuple[int, ...]  # input shape (N, *spatial, C)
    keepdims: bool

    def output_shape(self) -> tuple[int, ...]:
        n, c = self.shape[0], self.shape[-1]
        return (n, *(1,) * (len(self.shape) - 2), c) if self.keepdims else (n, c)


def _global_mean(x: jax.Array, keepdims: bool) -> jax.Array:
    """Mean over the spatial axes, summed in float32 (or wider) and rounded once."""
    axes = tuple(range(1, x.ndim - 1))
    return jnp.mean(x, axis=axes, keepdims=keepdims, dtype=accumulation_dtype(x.dtype)).astype(
        x.dtype
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _global_avg_pool_custom(x: jax.Array, cfg: _GlobalConfig) -> jax.Array:
    return _global_mean(x, cfg.keepdims)


def _global_avg_pool_fwd(x: jax.Array, cfg: _GlobalConfig):
    return _global_avg_pool_custom(x, cfg), None


def _global_avg_pool_bwd(cfg: _GlobalConfig, _, g: jax.Array):
    # dx_{nic} = g_{nc} / P, broadcast over every spatial position i (divided in float32 or
    # wider: P can exceed float16's range).
    shape = cfg.shape
    g = g.reshape(shape[0], *(1,) * (len(shape) - 2), shape[-1])
    share = (g.astype(accumulation_dtype(g.dtype)) / math.prod(shape[1:-1])).astype(g.dtype)
    return (jnp.broadcast_to(share, shape),)


_global_avg_pool_custom.defvjp(_global_avg_pool_fwd, _global_avg_pool_bwd)
_global_avg_pool_jit = jax.jit(_global_avg_pool_custom, static_argnums=1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _global_max_pool_custom(x: jax.Array, cfg: _GlobalConfig) -> jax.Array:
    return _global_max_pool_fwd(x, cfg)[0]


def _global_max_pool_fwd(x: jax.Array, cfg: _GlobalConfig):
    flat = x.reshape(x.shape[0], math.prod(x.shape[1:-1]), x.shape[-1])
    argmax = jnp.argmax(flat, axis=1)  # the first maximum (a NaN counts as the maximum)
    y = jnp.take_along_axis(flat, argmax[:, None, :], axis=1)
    return y.reshape(cfg.output_shape()), argmax


def _global_max_pool_bwd(cfg: _GlobalConfig, argmax: jax.Array, g: jax.Array):
    # dx_{nic} = g_{nc} [i = argmax_i x_{nic}]: a one-hot over the flattened spatial positions.
    shape = cfg.shape
    size = math.prod(shape[1:-1])
    g = g.reshape(shape[0], 1, shape[-1])
    onehot = jnp.arange(size)[None, :, None] == argmax[:, None, :]
    return (jnp.where(onehot, g, jnp.zeros((), g.dtype)).reshape(shape),)


_global_max_pool_custom.defvjp(_global_max_pool_fwd, _global_max_pool_bwd)
_global_max_pool_jit = jax.jit(_global_max_pool_custom, static_argnums=1)
