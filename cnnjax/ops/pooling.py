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

Max pooling, with its switches, is in :mod:`cnnjax.ops.max_pooling` (re-exported here); the
window geometry and the window sum shared by every pool in :mod:`cnnjax.ops._window`.
"""

from __future__ import annotations

import functools
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
    as_real,
    call_custom_vjp,
    check_impl,
    spatial_ndim,
)
from cnnjax.ops._window import (
    Geometry,
    full_rank,
    window_geometry,
    window_sum,
    window_sum_transpose,
)
from cnnjax.ops.max_pooling import max_pool
from cnnjax.shapes import Padding

__all__ = ["avg_pool", "global_avg_pool", "global_max_pool", "lp_pool", "max_pool"]


# --------------------------------------------------------------------------------------------
# Public API (max_pool: cnnjax/ops/max_pooling.py)
# --------------------------------------------------------------------------------------------


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
    stride-1 window sum (:func:`window_sum_transpose`).

    Args:
      x: ``(N, *spatial, C)`` floating array.
      window, stride, padding, ceil_mode: as in :func:`max_pool` (zero padding).
      count_include_pad: whether zero padding counts in the divisor (PyTorch's default True).
      impl: ``"custom"`` (hand-written VJP; reverse mode only: forward mode is impossible
        through a ``custom_vjp``) or ``"xla"`` (``lax.reduce_window`` + autodiff, forward mode
        included).
    """
    check_impl(impl, "avg_pool")
    x = as_floating("avg_pool", x)
    geom = window_geometry(
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

    This is the norm of Sermanet, Chintala & LeCun (2012) ("Convolutional neural networks applied
    to house numbers digit classification"); on non-negative input (e.g.
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
    x = as_floating("lp_pool", x)
    geom = window_geometry("lp_pool", x, window, stride, 0, 1, ceil_mode, check_half_window=False)
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
    x = as_floating("global_avg_pool", x)
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
    x = as_real("global_max_pool", x)
    nd = spatial_ndim(x, op="global_max_pool")
    _check_positions("global_max_pool", x)
    if impl == "xla":
        return jnp.max(x, axis=tuple(range(1, nd + 1)), keepdims=bool(keepdims))
    cfg = _GlobalConfig(tuple(x.shape), bool(keepdims))
    return call_custom_vjp("global_max_pool", _global_max_pool_jit, x, cfg)


def _check_positions(op: str, x: jax.Array) -> None:
    if 0 in x.shape[1:-1]:
        raise ValueError(
            f"{op}: the pool over P = prod(spatial) = 0 positions is undefined (x.shape = "
            f"{tuple(x.shape)}); a zero batch size N or channel count C gives an empty result"
        )


# --------------------------------------------------------------------------------------------
# avg_pool
# --------------------------------------------------------------------------------------------


class _AvgConfig(NamedTuple):
    geom: Geometry
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
    return divisor.reshape(full_rank(geom.out))


def _avg_pool_xla(x: jax.Array, cfg: _AvgConfig) -> jax.Array:
    total = window_sum(x, cfg.geom)
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
    return (window_sum_transpose(scaled, cfg.geom).astype(g.dtype),)


_avg_pool_custom.defvjp(_avg_pool_fwd, _avg_pool_bwd)
_avg_pool_jit = jax.jit(_avg_pool_custom, static_argnums=1)


# --------------------------------------------------------------------------------------------
# lp_pool
# --------------------------------------------------------------------------------------------


class _LpConfig(NamedTuple):
    geom: Geometry
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
    return _safe_power(window_sum(_safe_power(a, cfg.p), cfg.geom), 1.0 / cfg.p)


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
    spread = window_sum_transpose(coef, cfg.geom)
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
