"""Helpers shared by every op: argument checks, channels-last dimension numbers, ``impl``."""

from __future__ import annotations

from typing import Literal

import jax
from jax import lax

Impl = Literal["custom", "xla"]
IMPLS = ("custom", "xla")

FORWARD_MODE_MESSAGE = (
    "forward-mode differentiation (jvp/jacfwd) is impossible through a jax.custom_vjp; "
    'call the op with impl="xla" (plain lax + autodiff) to use forward mode'
)


def check_impl(impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f'impl must be "custom" or "xla", got {impl!r}')


def spatial_ndim(x: jax.Array, name: str = "x", *, op: str) -> int:
    """Number of spatial dims of a channels-last ``(N, *spatial, C)`` array (1, 2 or 3)."""
    if not hasattr(x, "ndim"):
        raise TypeError(f"{op}: {name} must be an array, got {type(x).__name__}")
    if x.ndim not in (3, 4, 5):
        raise ValueError(
            f"{op}: {name} must have shape (N, *spatial, C) with 1-3 spatial dims "
            f"(rank 3, 4 or 5), got rank {x.ndim} with shape {tuple(x.shape)}"
        )
    return x.ndim - 2


def conv_dimension_numbers(ndim: int) -> lax.ConvDimensionNumbers:
    """Dimension numbers for channels-last activations ``(N, *S, C)`` and kernels ``(*K, I, O)``."""
    spatial = tuple(range(1, ndim + 1))
    return lax.ConvDimensionNumbers(
        lhs_spec=(0, ndim + 1, *spatial),
        rhs_spec=(ndim + 1, ndim, *range(ndim)),
        out_spec=(0, ndim + 1, *spatial),
    )


def call_custom_vjp(op: str, fn, *args):
    """Call a custom-VJP function, turning JAX's forward-mode error into one naming ``op``.

    Catches the error when it is raised eagerly (``jax.jvp`` outside ``jit``); inside a ``jit``
    JAX raises its own "can't apply forward-mode autodiff (jvp) to a custom_vjp function" later,
    at lowering.
    """
    try:
        return fn(*args)
    except TypeError as err:
        if "forward-mode" in str(err) and "custom_vjp" in str(err):
            raise TypeError(f"{op}: {FORWARD_MODE_MESSAGE}") from err
        raise
