"""Helpers shared by every op: argument checks, channels-last dimension numbers, ``impl``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
from jax import lax

Impl = Literal["custom", "xla"]
IMPLS = ("custom", "xla")

PrecisionLike = str | lax.Precision | None
PRECISIONS = ("default", "high", "highest")

FORWARD_MODE_MESSAGE = (
    "forward-mode differentiation (jvp/jacfwd) is impossible through a jax.custom_vjp; "
    'call the op with impl="xla" (plain lax + autodiff) to use forward mode'
)


def check_impl(impl: str, op: str = "") -> None:
    if impl not in IMPLS:
        prefix = f"{op}: " if op else ""
        raise ValueError(f'{prefix}impl must be "custom" or "xla", got {impl!r}')


def accumulation_dtype(dtype) -> jnp.dtype:
    """The dtype that sums and VJP reductions run in: float32 for float16/bfloat16, else ``dtype``.

    Rule (issue 8): window sums, channel sums and every reduction inside a VJP accumulate in at
    least float32 and round to the input dtype once, in both impls; a bfloat16 running sum stops
    growing at 256 and a float16 one overflows at 65504.
    """
    return jnp.promote_types(dtype, jnp.float32)


def as_floating(op: str, x, name: str = "x") -> jax.Array:
    """``jnp.asarray(x)``, refusing non-floating dtypes with a TypeError naming ``op``/``name``.

    Integer, bool and complex inputs are refused by every op that computes sums or gradients
    (both impls alike), rather than silently promoted by one impl and not the other.
    """
    try:
        x = jnp.asarray(x)
    except TypeError as err:
        raise TypeError(f"{op}: {name} must be an array, got {type(x).__name__}") from err
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{op}: {name} must have a floating dtype (float16, bfloat16, float32, float64), "
            f"got {x.dtype}"
        )
    return x


# XLA aborts the process (SIGABRT, "overflow in static extent product") when the element count
# of a shape overflows int64, and its CPU kernels index extents with int32: both are checked
# before any lax call. The limits were found by running the ops in subprocesses
# (tests/test_edges.py::test_size_limits_match_what_xla_accepts documents the probes).
MAX_EXTENT = 2**31 - 1
MAX_ELEMENTS = 2**60


def check_extents(op: str, what: str, shape: Sequence[int], formula: str) -> None:
    """Raise a ValueError naming ``op`` if ``shape`` (one array ``op`` builds) is too big for XLA.

    ``shape`` is the full array shape (batch, spatial extents, channels); ``formula`` says how
    the extents were computed, for the message.
    """
    shape = tuple(int(s) for s in shape)
    big = [s for s in shape if s > MAX_EXTENT]
    if big or math.prod(shape) > MAX_ELEMENTS:
        raise ValueError(
            f"{op}: the {what} would have shape {shape} ({formula}); XLA accepts extents up to "
            f"2**31 - 1 and at most 2**60 elements per array. Reduce the padding, dilation or "
            f"stride, or the input size"
        )


def canonicalize_precision(precision: PrecisionLike, *, op: str = "conv") -> lax.Precision | None:
    """``None`` | ``"default"`` | ``"high"`` | ``"highest"`` | ``lax.Precision`` → hashable value.

    The result is passed as ``precision=`` to every ``lax.conv_general_dilated`` of an op, the
    custom VJP's backward convolutions included (it is a static argument of the custom VJP).
    What each setting computes for float32 operands (bfloat16/float16 operands are multiplied
    in their own type at every setting; accumulation is float32 on GPU/TPU):

    ============ ======================= ============================== =========================
    precision    CPU (XLA:CPU, Eigen)    NVIDIA GPU (cuDNN)              TPU (MXU)
    ============ ======================= ============================== =========================
    ``None``     float32 (exact f32)     TF32 on Ampere/Hopper (10-bit   one bfloat16 pass
                                         mantissa), unless                (``jax_default_matmul_
                                         ``jax_default_matmul_precision``  precision`` applies)
                                         says otherwise
    "default"    float32                 TF32 on Ampere/Hopper           one bfloat16 pass
    "high"       float32                 TF32 (cuDNN has no bf16x3)      three bfloat16 passes
    "highest"    float32                 full float32 (no TF32):         six bfloat16 passes
                                         several times slower on          (≈ float32)
                                         A100/H100/H200
    ============ ======================= ============================== =========================

    ``None`` differs from ``"default"`` only in that it lets the global
    ``jax.default_matmul_precision`` setting decide. float64 is always computed in float64.

    Raises:
      ValueError: an unknown string or type, naming ``op`` and the accepted values.
    """
    if precision is None or isinstance(precision, lax.Precision):
        return precision
    if isinstance(precision, str) and precision.lower() in PRECISIONS:
        return lax.Precision(precision.lower())
    raise ValueError(
        f"{op}: precision must be None, one of {', '.join(map(repr, PRECISIONS))} or a "
        f"jax.lax.Precision, got {precision!r}"
    )


def spatial_ndim(x: jax.Array, name: str = "x", *, op: str) -> int:
    """Number of spatial dims of a channels-last ``(N, *spatial, C)`` array (1, 2 or 3)."""
    if not hasattr(x, "ndim") or not hasattr(x, "shape"):
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


def as_real(op: str, x) -> jax.Array:
    """Max pools accept every real dtype (bool, integers, floats; both impls return it) but not
    complex numbers, which have no order."""
    try:
        x = jnp.asarray(x)
    except TypeError as err:
        raise TypeError(f"{op}: x must be an array, got {type(x).__name__}") from err
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise TypeError(f"{op}: x must be real (complex numbers have no maximum), got {x.dtype}")
    return x
