"""Max pooling with switches: the forward keeps, per window, the tap of its first maximum.

:func:`max_pool` (also exported by :mod:`cnnjax.ops.pooling`) and the machinery behind it: the
switch pass over the window taps (unrolled up to ``MAX_UNROLLED_TAPS`` taps, a ``lax.fori_loop``
above, bit-identical), the backward rule that routes each output gradient to its switch, and
PyTorch's flat indices for ``return_indices``. Windows and padding as in
:mod:`cnnjax.ops.pooling`.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cnnjax.ops._common import Impl, as_real, call_custom_vjp, check_impl
from cnnjax.ops._window import (
    Geometry,
    full_rank,
    lowest_value,
    pad_config,
    reduce_window,
    window_geometry,
    zero_value,
)
from cnnjax.shapes import Padding

__all__ = ["MAX_UNROLLED_TAPS", "max_pool"]


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
    x = as_real("max_pool", x)
    geom = window_geometry(
        "max_pool", x, window, stride, padding, dilation, ceil_mode, check_half_window=True
    )
    if impl == "xla":
        y = _max_pool_xla(x, geom)
    else:
        y = call_custom_vjp("max_pool", _max_pool_jit, x, geom)
    return (y, _max_pool_indices_jit(x, geom)) if return_indices else y


def _offsets(geom: Geometry):
    """Window offsets ``t`` in row-major order (the order that defines "first maximum")."""
    return itertools.product(*(range(k) for k in geom.window))


def _tap(xp: jax.Array, geom: Geometry, offset) -> jax.Array:
    """``xp[:, j s + t d, :]`` for all outputs ``j``: one window tap as a strided slice of the
    fully padded input."""
    start = [0, *(t * d for t, d in zip(offset, geom.dilation, strict=True)), 0]
    limit = [
        xp.shape[0],
        *(b + (o - 1) * s + 1 for b, o, s in zip(start[1:-1], geom.out, geom.stride, strict=True)),
        xp.shape[-1],
    ]
    return lax.slice(xp, start, limit, full_rank(geom.stride))


# Above this many window taps (prod(window)) the max-pool switch, its backward, the indices and
# the dilated xla forward run as a ``lax.fori_loop`` over the taps instead of one unrolled step
# per tap: the unrolled program grows with the window and XLA's compile time with it, while the
# loop's program has a fixed size. The loop body performs exactly the operations of one
# unrolled step, in the same order, so both give bit-identical results (ties, NaN, -0.0).
# At 64 taps the unrolled and looped programs trade compile time against run time about evenly
# (experiments/BENCHMARKS.md, "Max-pool windows: unrolled or looped taps").
MAX_UNROLLED_TAPS = 64


def _unrolled(geom: Geometry) -> bool:
    return math.prod(geom.window) <= MAX_UNROLLED_TAPS


def _offset_of(index: jax.Array, geom: Geometry) -> list[jax.Array]:
    """Row-major window offset ``t`` (one traced int32 per dim) of the flat tap ``index``."""
    offset = []
    index = lax.convert_element_type(index, jnp.int32)  # the loop counter is int64 under x64
    for k in reversed(geom.window):
        offset.append(index % k)
        index = index // k
    return offset[::-1]


def _tap_dynamic(xp: jax.Array, geom: Geometry, offset) -> jax.Array:
    """:func:`_tap` for a traced ``offset``: a dynamic slice, then the static strided slice."""
    zero = jnp.zeros((), jnp.int32)
    start = [zero, *(t * d for t, d in zip(offset, geom.dilation, strict=True)), zero]
    sizes = [xp.shape[0], *((o - 1) * s + 1 for o, s in zip(geom.out, geom.stride)), xp.shape[-1]]
    window = lax.dynamic_slice(xp, start, sizes)
    return lax.slice(window, [0] * xp.ndim, sizes, full_rank(geom.stride))


def _switch_dtype(geom: Geometry):
    num_taps = math.prod(geom.window)
    return jnp.int8 if num_taps <= 127 else jnp.int16 if num_taps <= 32767 else jnp.int32


def _max_switch(x: jax.Array, geom: Geometry) -> tuple[jax.Array, jax.Array]:
    """The window max and its switch (flat row-major tap index of the first maximum; a NaN tap
    always wins, so NaN propagates as in PyTorch), unrolled or looped over the taps."""
    # One pass over the window taps keeps the running max and the switch: a later tap wins
    # only if strictly greater (ties keep the first maximum) or if it is NaN.
    xp = lax.pad(x, lowest_value(x.dtype), pad_config(geom.full_padding))
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


def _switch_to_a_real_tap(best: jax.Array, switch: jax.Array, geom: Geometry) -> jax.Array:
    """A window whose real taps are all ``-inf`` ties with its padding; its switch (still tap 0,
    as nothing was greater) moves to the window's first real tap, where PyTorch routes the
    gradient and where ``return_indices`` points."""
    first = _first_real_tap(geom)
    if not first.any():  # every window starts inside the input: tap 0 is real
        return switch
    first = jnp.asarray(first.astype(switch.dtype)[None, ..., None])
    return jnp.where(best == lowest_value(best.dtype), first, switch)


def _first_real_tap(geom: Geometry) -> np.ndarray:
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


def _max_pool_reduce_window(x: jax.Array, geom: Geometry) -> jax.Array:
    return reduce_window(x, lowest_value(x.dtype), lax.max, geom)


def _max_pool_xla(x: jax.Array, geom: Geometry) -> jax.Array:
    if all(d == 1 for d in geom.dilation):
        return _max_pool_reduce_window(x, geom)
    # JAX's max reduce_window VJP refuses window dilation.
    xp = lax.pad(x, lowest_value(x.dtype), pad_config(geom.full_padding))
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
        taps, lowest_value(x.dtype), lax.max, (k, *(1,) * x.ndim), (1,) * taps.ndim, "VALID"
    )
    return y[0]


def _switch_positions(switch: jax.Array, geom: Geometry) -> jax.Array:
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
def _max_pool_custom(x: jax.Array, geom: Geometry) -> jax.Array:
    # Without differentiation only y is needed: XLA's reduce_window is faster than the
    # tap-by-tap pass of the fwd rule (which also builds the switch). Both give exactly max.
    return _max_pool_reduce_window(x, geom)


def _max_pool_fwd(x: jax.Array, geom: Geometry):
    return _max_switch(x, geom)


def _max_pool_bwd(geom: Geometry, switch: jax.Array, g: jax.Array):
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
        piece = lax.pad(routed, zero_value(g.dtype), config)
        dx = piece if dx is None else dx + piece
    return (dx,)


def _max_pool_bwd_looped(geom: Geometry, switch: jax.Array, g: jax.Array) -> jax.Array:
    """:func:`_max_pool_bwd` as a loop over the taps: each piece is placed in the fully padded
    plane (a zero array, updated at ``t d``) and the sum is cropped at the end; every element
    sees the same additions, in the same order, as the unrolled rule."""
    padded = (g.shape[0], *(n + lo + hi for n, (lo, hi) in zip(geom.spatial, geom.full_padding)))
    padded = (*padded, g.shape[-1])
    interior = [(0, 0, 0), *((0, 0, s - 1) for s in geom.stride), (0, 0, 0)]
    zero = jnp.zeros((), jnp.int32)

    def piece(index):
        routed = jnp.where(switch == index.astype(switch.dtype), g, jnp.zeros((), g.dtype))
        spread = lax.pad(routed, zero_value(g.dtype), interior)
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


def _static_tap_positions(geom: Geometry, offset) -> tuple[np.ndarray, np.ndarray]:
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


def _traced_tap_positions(geom: Geometry, offset) -> tuple[jax.Array, jax.Array]:
    """:func:`_static_tap_positions` for a traced offset, shaped ``(1, *out, 1)``."""
    shape = full_rank(geom.out)
    flat = jnp.zeros(shape, jnp.int32)
    inside = jnp.ones(shape, bool)
    for axis, (s, (lo, _), t, d, n) in enumerate(
        zip(geom.stride, geom.padding, offset, geom.dilation, geom.spatial, strict=True)
    ):
        position = lax.broadcasted_iota(jnp.int32, shape, axis + 1) * s - lo + t * d
        inside = inside & (position >= 0) & (position < n)
        flat = flat * n + jnp.clip(position, 0, n - 1)
    return flat, inside


def _max_pool_indices(x: jax.Array, geom: Geometry) -> jax.Array:
    """PyTorch's switches: flat position ``sum_i p_i prod_{i' > i} n_{i'}`` of the first maximum
    of each window, ``p = j s - lo + t d``, among the taps that fall inside the input."""
    x = lax.stop_gradient(x)
    xp = lax.pad(x, lowest_value(x.dtype), pad_config(geom.full_padding))

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
