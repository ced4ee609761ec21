"""Max unpooling: put pooled values back at their switches (the adjoint of gathering there).

``max_pool(x, ..., return_indices=True)`` returns ``(y, indices)``; ``max_unpool(y, indices,
...)`` scatters each ``y_j`` to the input position ``indices_j`` it came from and leaves zeros
elsewhere. This is the "unpooling with switches" of Zeiler & Fergus's deconvnet (2014) and of
SegNet's decoder (Badrinarayanan et al. 2017).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.ops._common import Impl, call_custom_vjp, check_impl, spatial_ndim
from cnnjax.shapes import canonicalize_tuple

__all__ = ["max_unpool", "unpool_output_size"]


def unpool_output_size(n: int, window: int, stride: int, padding: int) -> int:
    """PyTorch's default unpooled size ``(n - 1) * s - 2 p + k`` (the input size of a pool that
    produced ``n`` outputs with no ceil-mode remainder)."""
    return (n - 1) * stride - 2 * padding + window


def max_unpool(
    y: jax.typing.ArrayLike,
    indices: jax.typing.ArrayLike,
    window: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
    output_shape: Sequence[int] | None = None,
    *,
    impl: Impl = "custom",
) -> jax.Array:
    """Scatter ``y`` to its switches ``indices``, like ``torch.nn.functional.max_unpool{1,2,3}d``.

    Shapes: ``y`` and ``indices`` are ``(N, *in, C)`` (``indices`` integer, PyTorch's convention:
    flat row-major positions within one channel's spatial plane of the output, as returned by
    :func:`cnnjax.ops.max_pool` with ``return_indices=True``). Returns ``(N, *out, C)`` with
    ``out`` = ``output_shape`` (the spatial sizes, or the full shape) or by default
    ``out_i = (in_i - 1) * s_i - 2 p_i + k_i``.

    .. math:: z_{n,p,c} = \\sum_{j:\\ \\mathrm{idx}_{n,j,c} = p} y_{n,j,c}

    This is the adjoint (transpose) of gathering at the switches, ``G(z)_j = z_{idx_j}``, which is
    exactly how max pooling routes its gradient. Where two windows share a switch (overlapping
    windows, ``stride < window``) the values *add*; PyTorch writes one of them instead (the two
    agree whenever the indices of one example and channel are distinct, e.g. ``stride >= window``).
    Indices outside ``[0, prod(out))`` are dropped (checked eagerly when ``indices`` is concrete).

    Backward (``impl="custom"``): linear in ``y``, so ``dL/dy_j = dL/dz_{idx_j}``, the gather of
    the output gradient at the switches (``jnp.take_along_axis``); itself differentiable, so
    grad-of-grad works. ``impl="xla"``: the same scatter-add with JAX's own autodiff. ``indices``
    receive no gradient.

    Args:
      y: ``(N, *in, C)`` pooled values (1-3 spatial dims).
      indices: integer array of ``y``'s shape.
      window, stride, padding: the pool's window, stride (default ``window``) and symmetric
        padding (ints or one int per dim); used only for the default output size.
      output_shape: spatial output sizes (or ``(N, *out, C)``), e.g. ``x.shape`` of the pooled
        input when ceil mode, dilation or an odd size makes the default wrong. Unlike PyTorch
        it is not limited to ``default -/+ stride`` (dilated windows reach further); the
        indices are checked against it instead.
      impl: ``"custom"`` or ``"xla"``.

    >>> from cnnjax.ops import max_pool
    >>> x = jnp.array([[1.0, 3.0, 2.0, 0.0]])[..., None]
    >>> y, idx = max_pool(x, 2, return_indices=True)
    >>> max_unpool(y, idx, 2).ravel()
    Array([0., 3., 2., 0.], dtype=float32)
    """
    check_impl(impl)
    y = jnp.asarray(y)
    known = _known_values(indices)
    indices = jnp.asarray(indices)
    cfg = _unpool_config(y, indices, window, stride, padding, output_shape)
    if known is not None and known.size:
        size = math.prod(cfg.out)
        concrete = known
        lo, hi = int(concrete.min()), int(concrete.max())
        if lo < 0 or hi >= size:
            raise ValueError(
                f"max_unpool: indices must lie in [0, prod(out)) = [0, {size}) for output "
                f"spatial shape {cfg.out}, got values in [{lo}, {hi}]"
            )
    if impl == "xla":
        return _unpool_scatter(y, indices, cfg)
    return call_custom_vjp("max_unpool", _max_unpool_jit, y, indices, cfg)


def _known_values(indices) -> np.ndarray | None:
    """The values of ``indices`` when they are known at trace time, else ``None`` (a tracer).

    Taken from the argument as given: under jit, ``jnp.asarray`` of a NumPy constant is staged
    (a tracer), but the values are still known here.
    """
    try:
        return np.asarray(indices)
    except jax.errors.TracerArrayConversionError:
        return None


class _UnpoolConfig(NamedTuple):
    out: tuple[int, ...]  # output spatial sizes


def _unpool_config(y, indices, window, stride, padding, output_shape) -> _UnpoolConfig:
    nd = spatial_ndim(y, "y", op="max_unpool")
    if indices.shape != y.shape:
        raise ValueError(
            f"max_unpool: indices must have the shape of y, got {tuple(indices.shape)} "
            f"and {tuple(y.shape)}"
        )
    if not jnp.issubdtype(indices.dtype, jnp.integer):
        raise TypeError(f"max_unpool: indices must be an integer array, got {indices.dtype}")
    try:
        window = canonicalize_tuple(window, nd, "window")
        stride = window if stride is None else canonicalize_tuple(stride, nd, "stride")
        padding = canonicalize_tuple(padding, nd, "padding", minimum=0)
    except (TypeError, ValueError) as err:
        raise type(err)(f"max_unpool: {err}") from None
    default = tuple(
        unpool_output_size(n, k, s, p)
        for n, k, s, p in zip(y.shape[1:-1], window, stride, padding, strict=True)
    )
    if output_shape is None:
        out = default
    else:
        out = tuple(int(o) for o in output_shape)
        if len(out) == nd + 2:
            out = out[1:-1]
        if len(out) != nd:
            raise ValueError(
                f"max_unpool: output_shape must give {nd} spatial sizes (or the full shape), "
                f"got {tuple(output_shape)}"
            )
    if any(o < 1 for o in out):
        raise ValueError(f"max_unpool: output spatial shape must be positive, got {out}")
    return _UnpoolConfig(out)


def _flat(a: jax.Array) -> jax.Array:
    # Explicit sizes: ``-1`` cannot be inferred for an empty batch or channel axis.
    return a.reshape(a.shape[0], math.prod(a.shape[1:-1]), a.shape[-1])


def _unpool_scatter(y: jax.Array, indices: jax.Array, cfg: _UnpoolConfig) -> jax.Array:
    """``z_{n, idx_{n,j,c}, c} += y_{n,j,c}`` over the flattened spatial plane."""
    n, c = y.shape[0], y.shape[-1]
    batch = np.arange(n)[:, None, None]
    channel = np.arange(c)[None, None, :]
    z = jnp.zeros((n, math.prod(cfg.out), c), y.dtype)
    z = z.at[batch, _flat(indices), channel].add(_flat(y), mode="drop")
    return z.reshape(n, *cfg.out, c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _max_unpool_custom(y: jax.Array, indices: jax.Array, cfg: _UnpoolConfig) -> jax.Array:
    return _unpool_scatter(y, indices, cfg)


def _max_unpool_fwd(y, indices, cfg):
    return _unpool_scatter(y, indices, cfg), indices


def _max_unpool_bwd(cfg, indices, g):
    # z = S y with S the scatter at the switches, so dL/dy = S^T g: gather g at the switches.
    # Out-of-range switches were dropped forward, so they read zero here.
    flat = _flat(indices)
    inside = (flat >= 0) & (flat < math.prod(cfg.out))
    picked = jnp.take_along_axis(_flat(g), jnp.where(inside, flat, 0), axis=1)
    dy = jnp.where(inside, picked, jnp.zeros((), g.dtype)).reshape(indices.shape)
    return dy, None


_max_unpool_custom.defvjp(_max_unpool_fwd, _max_unpool_bwd)
_max_unpool_jit = jax.jit(_max_unpool_custom, static_argnums=2)
