"""Naive oracles for convolution, written straight from the seed formulas (tests only).

They loop over kernel offsets (and groups) and use no lax convolution, so they are independent of
the code under test; they are written in ``jax.numpy`` so that their autodiff is a third gradient
reference.

    conv:            y[n, o, co] = b[co] + sum_{k, ci} x_pad[n, o*s + k*d, ci] w[k, ci, co]
    conv_transpose:  y_pad[n, i*s + k*d, co] += x[n, i, ci] w[k, ci, co],  then crop (lo, hi)
"""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np


def _pairs(padding, ndim):
    if isinstance(padding, int):
        return ((padding, padding),) * ndim
    return tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)


def _tuple(v, ndim):
    return (v,) * ndim if isinstance(v, int) else tuple(v)


def conv_reference(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1):
    """``(N, *S, C_in) (*) (*K, C_in/G, C_out) -> (N, *O, C_out)`` by explicit kernel offsets."""
    ndim = x.ndim - 2
    stride, dilation = _tuple(stride, ndim), _tuple(dilation, ndim)
    pads = _pairs(padding, ndim)
    kernel = w.shape[:ndim]
    x_pad = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    out = [
        (n + lo + hi - d * (k - 1) - 1) // s + 1
        for n, (lo, hi), k, s, d in zip(x.shape[1:-1], pads, kernel, stride, dilation, strict=True)
    ]
    c_in_g, c_out = w.shape[-2], w.shape[-1]
    taps = []  # x_pad[n, o*s + k*d, :] for every kernel offset k
    for offset in itertools.product(*(range(k) for k in kernel)):
        index = tuple(
            slice(o_k * d, o_k * d + (o - 1) * s + 1, s)
            for o_k, d, o, s in zip(offset, dilation, out, stride, strict=True)
        )
        taps.append(x_pad[(slice(None), *index)])
    # (K, N, *O, G, C_in/G) . (K, C_in/G, G, C_out/G) summed over K and C_in/G, per group G
    patches = jnp.stack(taps).reshape(len(taps), x.shape[0], *out, groups, c_in_g)
    w_groups = w.reshape(len(taps), c_in_g, groups, c_out // groups)
    y = jnp.einsum("kn...gi,kigo->n...go", patches, w_groups).reshape(x.shape[0], *out, c_out)
    return y if b is None else y + b


def conv_transpose_reference(
    x, w, b=None, *, stride=1, padding=0, output_padding=0, dilation=1, groups=1
):
    """Scatter definition: every input pixel adds ``x * w[k]`` at ``i*s + k*d``, then crop."""
    ndim = x.ndim - 2
    stride, dilation = _tuple(stride, ndim), _tuple(dilation, ndim)
    output_padding = _tuple(output_padding, ndim)
    pads = _pairs(padding, ndim)
    kernel = w.shape[:ndim]
    c_in, c_out_g = w.shape[-2], w.shape[-1]
    c_in_g = c_in // groups
    full = [
        (n - 1) * s + d * (k - 1) + 1 + op
        for n, s, d, k, op in zip(
            x.shape[1:-1], stride, dilation, kernel, output_padding, strict=True
        )
    ]
    n_in = x.shape[1:-1]
    # every input pixel's contribution through every tap: (K, N, *I, G, C_out/G)
    w_groups = w.reshape(-1, groups, c_in_g, c_out_g)
    x_groups = x.reshape(*x.shape[:-1], groups, c_in_g)
    contributions = jnp.einsum("n...gi,kgio->kn...go", x_groups, w_groups)
    contributions = contributions.reshape(*contributions.shape[:-2], groups * c_out_g)
    y = jnp.zeros((x.shape[0], *full, c_out_g * groups), jnp.result_type(x, w))
    for k_index, offset in enumerate(itertools.product(*(range(k) for k in kernel))):
        index = tuple(
            slice(o_k * d, o_k * d + (n - 1) * s + 1, s)
            for o_k, d, n, s in zip(offset, dilation, n_in, stride, strict=True)
        )
        y = y.at[(slice(None), *index)].add(contributions[k_index])
    crop = tuple(slice(lo, f - hi) for (lo, hi), f in zip(pads, full, strict=True))
    y = y[(slice(None), *crop)]
    return y if b is None else y + b


def conv_reference_numpy(x, w, *, stride=1, padding=0, dilation=1, groups=1):
    """The same sum as scalar Python loops over every output element (tiny inputs only)."""
    x, w = np.asarray(x), np.asarray(w)
    ndim = x.ndim - 2
    stride, dilation = _tuple(stride, ndim), _tuple(dilation, ndim)
    pads = _pairs(padding, ndim)
    kernel = w.shape[:ndim]
    x_pad = np.pad(x, ((0, 0), *pads, (0, 0)))
    out = [
        (n + lo + hi - d * (k - 1) - 1) // s + 1
        for n, (lo, hi), k, s, d in zip(x.shape[1:-1], pads, kernel, stride, dilation, strict=True)
    ]
    c_in_g, c_out = w.shape[-2], w.shape[-1]
    c_out_g = c_out // groups
    y = np.zeros((x.shape[0], *out, c_out))
    for n in range(x.shape[0]):
        for o in itertools.product(*(range(v) for v in out)):
            for co in range(c_out):
                g = co // c_out_g
                total = 0.0
                for k in itertools.product(*(range(v) for v in kernel)):
                    pos = tuple(
                        oi * s + ki * d for oi, ki, s, d in zip(o, k, stride, dilation, strict=True)
                    )
                    for ci in range(c_in_g):
                        total += x_pad[(n, *pos, g * c_in_g + ci)] * w[(*k, ci, co)]
                y[(n, *o, co)] = total
    return y
