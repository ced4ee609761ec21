"""Slow loop oracles for max-pool switches (PyTorch's index convention) and max unpooling.

Written from the definitions, sharing no code with ``cnnjax``: output sizes come from
``reference_pooling``'s copy of PyTorch's rule.
"""

from __future__ import annotations

import itertools

import numpy as np
import reference_pooling as ref


def max_pool_indices(x, window, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Flat row-major position (in the unpadded plane) of each window's first maximum; a window
    of only ``-inf`` values points at its first real tap (PyTorch's CPU kernel)."""
    x = np.asarray(x)
    window, stride, dilation, padding, out = ref._geometry(
        x.shape, window, stride, padding, dilation, ceil_mode
    )
    spatial = x.shape[1:-1]
    idx = np.empty((x.shape[0], *out, x.shape[-1]), np.int64)
    for b, c in itertools.product(range(x.shape[0]), range(x.shape[-1])):
        for j in itertools.product(*(range(o) for o in out)):
            best, where = None, None
            for i in ref._taps(j, window, stride, dilation, padding):
                if not ref._inside(i, spatial):
                    continue
                v = x[(b, *i, c)]
                if where is None or v > best or np.isnan(v):
                    best, where = v, i
            idx[(b, *j, c)] = np.ravel_multi_index(where, spatial)
    return idx


def max_unpool(y, indices, out):
    """``z[b, unravel(idx), c] += y[b, j, c]`` for every position ``j``."""
    y, indices = np.asarray(y), np.asarray(indices)
    z = np.zeros((y.shape[0], *out, y.shape[-1]), y.dtype)
    for b, c in itertools.product(range(y.shape[0]), range(y.shape[-1])):
        for j in itertools.product(*(range(n) for n in y.shape[1:-1])):
            z[(b, *np.unravel_index(indices[(b, *j, c)], out), c)] += y[(b, *j, c)]
    return z


def max_unpool_grad(g, indices):
    """``dy[b, j, c] = g[b, unravel(idx), c]``: the gather at the switches."""
    g, indices = np.asarray(g), np.asarray(indices)
    out = g.shape[1:-1]
    dy = np.zeros(indices.shape, g.dtype)
    for b, c in itertools.product(range(g.shape[0]), range(g.shape[-1])):
        for j in itertools.product(*(range(n) for n in indices.shape[1:-1])):
            dy[(b, *j, c)] = g[(b, *np.unravel_index(indices[(b, *j, c)], out), c)]
    return dy
