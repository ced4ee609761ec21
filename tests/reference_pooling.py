"""Slow oracles for the pooling and local-normalisation ops, written directly from the formulas.

Two kinds:

* NumPy functions with explicit Python loops over output positions and window taps (forward,
  and the textbook backward for max and mean pooling). They share no code with ``cnnjax`` and
  compute output sizes and divisors with PyTorch's own rules, written out here.
* ``*_jnp`` functions: the same formulas in ``jax.numpy``, looping over window offsets
  (vectorised over output positions), so that JAX autodiff of the oracle gives an independent
  gradient to compare the hand-written VJPs with.

Arrays are channels-last ``(N, *spatial, C)``; window arguments are ints or per-dim tuples and
``padding`` is an int, per-dim ints, or per-dim ``(lo, hi)`` pairs.
"""

from __future__ import annotations

import itertools
import math

import jax.numpy as jnp
import numpy as np


def _tup(value, nd):
    return (value,) * nd if isinstance(value, int) else tuple(value)


def _pairs(padding, nd):
    if isinstance(padding, int):
        return ((padding, padding),) * nd
    return tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)


def _geometry(x_shape, window, stride, padding, dilation, ceil_mode):
    nd = len(x_shape) - 2
    window = _tup(window, nd)
    stride = window if stride is None else _tup(stride, nd)
    dilation = _tup(dilation, nd)
    padding = _pairs(padding, nd)
    out = []
    for n, k, s, d, (lo, hi) in zip(x_shape[1:-1], window, stride, dilation, padding, strict=True):
        span = n + lo + hi - d * (k - 1) - 1
        if ceil_mode:
            o = math.ceil(span / s) + 1
            if (o - 1) * s >= n + lo:  # PyTorch: the last window must start inside input/left pad
                o -= 1
        else:
            o = span // s + 1
        out.append(o)
    return window, stride, dilation, padding, tuple(out)


def output_shape(x_shape, window, stride=None, padding=0, dilation=1, ceil_mode=False):
    """``(N, *out, C)`` by PyTorch's pooling output-size rule."""
    *_, out = _geometry(x_shape, window, stride, padding, dilation, ceil_mode)
    return (x_shape[0], *out, x_shape[-1])


def _taps(j, window, stride, dilation, padding):
    """Input positions read by output ``j`` (possibly out of range), tap offsets row-major."""
    for t in itertools.product(*(range(k) for k in window)):
        yield tuple(
            jj * s - lo + tt * d
            for jj, tt, s, d, (lo, _) in zip(j, t, stride, dilation, padding, strict=True)
        )


def _inside(i, spatial):
    return all(0 <= ii < n for ii, n in zip(i, spatial, strict=True))


# --------------------------------------------------------------------------------------------
# NumPy loop oracles
# --------------------------------------------------------------------------------------------


def max_pool(x, window, stride=None, padding=0, dilation=1, ceil_mode=False):
    """``y_j = max_t x_{j s - lo + t d}``, padding ``-inf``."""
    x = np.asarray(x)
    window, stride, dilation, padding, out = _geometry(
        x.shape, window, stride, padding, dilation, ceil_mode
    )
    spatial = x.shape[1:-1]
    y = np.empty((x.shape[0], *out, x.shape[-1]), x.dtype)
    for b, c in itertools.product(range(x.shape[0]), range(x.shape[-1])):
        for j in itertools.product(*(range(o) for o in out)):
            best = -np.inf
            for i in _taps(j, window, stride, dilation, padding):
                if _inside(i, spatial) and x[(b, *i, c)] > best:
                    best = x[(b, *i, c)]
            y[(b, *j, c)] = best
    return y


def max_pool_grad(x, g, window, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Switch routing: each ``g_j`` goes to the first maximum of window ``j``; overlaps add."""
    x, g = np.asarray(x), np.asarray(g)
    window, stride, dilation, padding, out = _geometry(
        x.shape, window, stride, padding, dilation, ceil_mode
    )
    spatial = x.shape[1:-1]
    dx = np.zeros_like(x)
    for b, c in itertools.product(range(x.shape[0]), range(x.shape[-1])):
        for j in itertools.product(*(range(o) for o in out)):
            best, where = -np.inf, None
            for i in _taps(j, window, stride, dilation, padding):
                if _inside(i, spatial) and x[(b, *i, c)] > best:
                    best, where = x[(b, *i, c)], i
            if where is not None:
                dx[(b, *where, c)] += g[(b, *j, c)]
    return dx


def _avg_divisor(j, window, stride, padding, spatial, count_include_pad):
    divisor = 1
    for jj, k, s, (lo, hi), n in zip(j, window, stride, padding, spatial, strict=True):
        start = jj * s - lo
        end = min(start + k, n + hi)
        if count_include_pad:
            divisor *= end - start
        else:
            divisor *= min(end, n) - max(start, 0)
    return divisor


def avg_pool(x, window, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    """``y_j = (1/K_j) sum_t x_{j s - lo + t}`` with PyTorch's divisor ``K_j``."""
    x = np.asarray(x)
    window, stride, _, padding, out = _geometry(x.shape, window, stride, padding, 1, ceil_mode)
    spatial = x.shape[1:-1]
    dilation = (1,) * len(window)
    y = np.zeros((x.shape[0], *out, x.shape[-1]), x.dtype)
    for b, c in itertools.product(range(x.shape[0]), range(x.shape[-1])):
        for j in itertools.product(*(range(o) for o in out)):
            total = 0.0
            for i in _taps(j, window, stride, dilation, padding):
                if _inside(i, spatial):
                    total += x[(b, *i, c)]
            y[(b, *j, c)] = total / _avg_divisor(
                j, window, stride, padding, spatial, count_include_pad
            )
    return y


def avg_pool_grad(
    x_shape, g, window, stride=None, padding=0, ceil_mode=False, count_include_pad=True
):
    """``dx_i = sum_{j: i in window j} g_j / K_j``: the mean-pool derivative spread out."""
    g = np.asarray(g)
    window, stride, _, padding, out = _geometry(x_shape, window, stride, padding, 1, ceil_mode)
    spatial = x_shape[1:-1]
    dilation = (1,) * len(window)
    dx = np.zeros(x_shape, g.dtype)
    for b, c in itertools.product(range(x_shape[0]), range(x_shape[-1])):
        for j in itertools.product(*(range(o) for o in out)):
            share = g[(b, *j, c)] / _avg_divisor(
                j, window, stride, padding, spatial, count_include_pad
            )
            for i in _taps(j, window, stride, dilation, padding):
                if _inside(i, spatial):
                    dx[(b, *i, c)] += share
    return dx


def lp_pool(x, p, window, stride=None, ceil_mode=False):
    """``y_j = (sum_t |x_{j s + t}|^p)^(1/p)`` (the norm), summing only the elements that exist."""
    x = np.asarray(x)
    window, stride, _, padding, out = _geometry(x.shape, window, stride, 0, 1, ceil_mode)
    spatial = x.shape[1:-1]
    dilation = (1,) * len(window)
    y = np.zeros((x.shape[0], *out, x.shape[-1]), x.dtype)
    for b, c in itertools.product(range(x.shape[0]), range(x.shape[-1])):
        for j in itertools.product(*(range(o) for o in out)):
            total = 0.0
            for i in _taps(j, window, stride, dilation, padding):
                if _inside(i, spatial):
                    total += abs(x[(b, *i, c)]) ** p
            y[(b, *j, c)] = total ** (1.0 / p)
    return y


def global_avg_pool(x):
    x = np.asarray(x)
    y = np.zeros((x.shape[0], x.shape[-1]), x.dtype)
    for b, c in itertools.product(range(x.shape[0]), range(x.shape[-1])):
        positions = list(itertools.product(*(range(n) for n in x.shape[1:-1])))
        y[b, c] = sum(x[(b, *i, c)] for i in positions) / len(positions)
    return y


def global_max_pool_grad(x, g):
    """One-hot at the first (row-major) maximum."""
    x, g = np.asarray(x), np.asarray(g)
    dx = np.zeros_like(x)
    for b, c in itertools.product(range(x.shape[0]), range(x.shape[-1])):
        best, where = -np.inf, None
        for i in itertools.product(*(range(n) for n in x.shape[1:-1])):
            if x[(b, *i, c)] > best:
                best, where = x[(b, *i, c)], i
        dx[(b, *where, c)] = g[b, c]
    return dx


def local_response_norm(x, size, alpha=1e-4, beta=0.75, k=1.0):
    """``y_c = x_c / (k + alpha/size * sum_{c'=c-size//2}^{c+(size-1)//2} x_{c'}^2)^beta``."""
    x = np.asarray(x)
    channels = x.shape[-1]
    y = np.empty_like(x)
    for c in range(channels):
        total = np.zeros(x.shape[:-1], x.dtype)
        for c2 in range(c - size // 2, c + (size - 1) // 2 + 1):
            if 0 <= c2 < channels:
                total += x[..., c2] ** 2
        y[..., c] = x[..., c] / (k + alpha / size * total) ** beta
    return y


def gaussian_window(size, sigma, nd):
    """``G_p = exp(-|p - r|^2 / (2 sigma^2))`` on a ``size^nd`` grid, summing to 1."""
    r = (size - 1) // 2
    grid = np.zeros((size,) * nd)
    for p in itertools.product(range(size), repeat=nd):
        grid[p] = math.exp(-sum((pp - r) ** 2 for pp in p) / (2.0 * sigma**2))
    return grid / grid.sum()


def local_contrast_parts(x, size, sigma):
    """``(v, sigma_map)`` of Jarrett et al. 2009 with ``w_p = G_p / C`` and zero padding::

    v_{c,j} = x_{c,j} - sum_{c', p} w_p x_{c', j+p},  sigma_j = sqrt(sum_{c', p} w_p v_{c', j+p}^2)
    """
    x = np.asarray(x)
    batch, spatial, channels = x.shape[0], x.shape[1:-1], x.shape[-1]
    w = gaussian_window(size, sigma, len(spatial)) / channels
    r = (size - 1) // 2

    def weighted(a, b, j):  # sum_{c, p} w_p a[b, j + p - r, c]
        total = 0.0
        for p in itertools.product(range(size), repeat=len(spatial)):
            i = tuple(jj + pp - r for jj, pp in zip(j, p, strict=True))
            if _inside(i, spatial):
                total += w[p] * a[(b, *i)].sum()
        return total

    positions = list(itertools.product(*(range(n) for n in spatial)))
    v = np.zeros_like(x)
    sigma_map = np.zeros((batch, *spatial), x.dtype)
    for b in range(batch):
        for j in positions:
            v[(b, *j)] = x[(b, *j)] - weighted(x, b, j)
    for b in range(batch):
        for j in positions:
            sigma_map[(b, *j)] = math.sqrt(weighted(v * v, b, j))
    return v, sigma_map


def local_contrast_norm(x, size, sigma, eps):
    """``y = v / max(mean_j sigma_j, sigma, eps)``, the mean over one sample's positions."""
    v, sigma_map = local_contrast_parts(x, size, sigma)
    y = np.empty_like(v)
    for b in range(v.shape[0]):
        mean = sigma_map[b].mean()
        for j in itertools.product(*(range(n) for n in v.shape[1:-1])):
            y[(b, *j)] = v[(b, *j)] / max(mean, sigma_map[(b, *j)], eps)
    return y


# --------------------------------------------------------------------------------------------
# Differentiable jnp oracles (loops over window offsets) for autodiff-of-oracle checks
# --------------------------------------------------------------------------------------------


def _window_taps_jnp(xp, window, stride, dilation, out):
    """Yield ``xp[:, j s + t d, :]`` (all outputs ``j``) for every tap ``t``, by basic slicing."""
    for t in itertools.product(*(range(k) for k in window)):
        index = [slice(None)]
        for tt, s, d, o in zip(t, stride, dilation, out, strict=True):
            start = tt * d
            index.append(slice(start, start + (o - 1) * s + 1, s))
        index.append(slice(None))
        yield xp[tuple(index)]


def _pad_for(x_shape, window, stride, dilation, padding, out):
    widths = [(0, 0)]
    for n, k, s, d, (lo, hi), o in zip(
        x_shape[1:-1], window, stride, dilation, padding, out, strict=True
    ):
        need = (o - 1) * s + d * (k - 1) + 1
        widths.append((lo, max(hi, need - n - lo)))
    widths.append((0, 0))
    return widths


def max_pool_jnp(x, window, stride=None, padding=0, dilation=1, ceil_mode=False):
    window, stride, dilation, padding, out = _geometry(
        x.shape, window, stride, padding, dilation, ceil_mode
    )
    xp = jnp.pad(
        x, _pad_for(x.shape, window, stride, dilation, padding, out), constant_values=-jnp.inf
    )
    y = None
    for tap in _window_taps_jnp(xp, window, stride, dilation, out):
        y = tap if y is None else jnp.maximum(y, tap)
    return y


def avg_pool_jnp(x, window, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    window, stride, dilation, padding, out = _geometry(
        x.shape, window, stride, padding, 1, ceil_mode
    )
    widths = _pad_for(x.shape, window, stride, dilation, padding, out)
    xp = jnp.pad(x, widths)
    # Divisor: the same window sum over an indicator of the positions that count.
    if count_include_pad:
        counted = np.pad(
            np.ones(tuple(n + lo + hi for n, (lo, hi) in zip(x.shape[1:-1], padding, strict=True))),
            [(0, w_hi - hi) for (_, w_hi), (_, hi) in zip(widths[1:-1], padding, strict=True)],
        )
    else:
        counted = np.pad(np.ones(x.shape[1:-1]), widths[1:-1])
    counted = counted[None, ..., None]
    total = sum(_window_taps_jnp(xp, window, stride, dilation, out))
    count = sum(_window_taps_jnp(counted, window, stride, dilation, out))
    return total / count


def lp_pool_jnp(x, p, window, stride=None, ceil_mode=False):
    window, stride, dilation, padding, out = _geometry(x.shape, window, stride, 0, 1, ceil_mode)
    xp = jnp.pad(jnp.abs(x) ** p, _pad_for(x.shape, window, stride, dilation, padding, out))
    return sum(_window_taps_jnp(xp, window, stride, dilation, out)) ** (1.0 / p)


def local_response_norm_jnp(x, size, alpha=1e-4, beta=0.75, k=1.0):
    channels = x.shape[-1]
    sq = jnp.pad(x * x, [(0, 0)] * (x.ndim - 1) + [(size // 2, (size - 1) // 2)])
    total = sum(sq[..., t : t + channels] for t in range(size))
    return x / (k + alpha / size * total) ** beta


def _lcn_weighted_jnp(a, size, sigma):
    """``sum_{c, p} w_p a[:, j + p - r, c]`` with ``w_p = G_p / C``, zero padding."""
    spatial, channels = a.shape[1:-1], a.shape[-1]
    nd = len(spatial)
    w = gaussian_window(size, sigma, nd) / channels
    r = (size - 1) // 2
    ap = jnp.pad(jnp.sum(a, axis=-1), [(0, 0)] + [(r, r)] * nd)
    total = 0.0
    for p in itertools.product(range(size), repeat=nd):
        index = (slice(None), *(slice(pp, pp + n) for pp, n in zip(p, spatial, strict=True)))
        total = total + w[p] * ap[index]
    return total[..., None]


def local_contrast_subtract_jnp(x, size, sigma):
    """The subtractive stage ``v = x - sum_{c, p} w_p x_{c, j+p}`` (linear in ``x``)."""
    return x - _lcn_weighted_jnp(x, size, sigma)


def local_contrast_norm_jnp(x, size, sigma, eps):
    nd = x.ndim - 2
    v = local_contrast_subtract_jnp(x, size, sigma)
    sigma_map = jnp.sqrt(_lcn_weighted_jnp(v * v, size, sigma))
    mean = jnp.mean(sigma_map, axis=tuple(range(1, nd + 1)), keepdims=True)
    return v / jnp.maximum(jnp.maximum(mean, sigma_map), eps)
