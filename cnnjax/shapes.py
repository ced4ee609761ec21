"""Shape arithmetic for convolution and pooling: output sizes, padding, receptive fields.

Everything here is plain Python on integers (no JAX), so it runs at trace time and its results
are hashable, static arguments of the ops. One padding helper, :func:`canonicalize_padding`, is
shared by every op's forward rule, and one, :func:`vjp_padding`, by every backward rule that
spreads an output gradient back over a window (the conv input gradient, the average and Lp
pools), as ``jax/_src/lax/windowed_reductions.py`` reuses the conv VJP padding.

Formulas (per spatial dimension, from the CS231n notes "Convolutional Neural Networks", with
dilation ``d`` added)::

    conv:            o = floor((n + lo + hi - d*(k-1) - 1) / s) + 1        # (W - F + 2P)/S + 1
    conv transpose:  o = (n - 1)*s - lo - hi + d*(k-1) + output_padding + 1
    pool:            o = floor_or_ceil((n + 2p - d*(k-1) - 1) / s) + 1     # PyTorch's rule
    VJP padding:     (d*(k-1) - lo, n + lo - (o-1)*s - 1)                   # of g dilated by s
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import NamedTuple

Padding = str | int | Sequence[int] | Sequence[tuple[int, int]]

__all__ = [
    "ReceptiveField",
    "canonicalize_padding",
    "canonicalize_tuple",
    "conv_output_size",
    "conv_param_count",
    "conv_transpose_output_size",
    "pool_output_size",
    "receptive_field",
    "same_padding",
    "vjp_padding",
]


# The largest stride, dilation, padding or window entry any op accepts: XLA's CPU kernels index
# extents with int32, and a Python int beyond int64 overflows inside JAX (OverflowError).
# One rule for every op, checked at canonicalisation (the callers prefix the op name).
MAX_ARGUMENT = 2**31 - 1


def _check_magnitude(values, name: str, value) -> None:
    if any(v > MAX_ARGUMENT for v in values):
        raise ValueError(
            f"{name} must be <= 2**31 - 1 (the largest extent XLA accepts) in every dimension, "
            f"got {value!r}"
        )


def is_int(value) -> bool:
    """True for Python and NumPy integers (``np.int64(2)``), False for bools."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def canonicalize_tuple(
    value: int | Sequence[int], ndim: int, name: str, *, minimum: int = 1
) -> tuple[int, ...]:
    """Turn an int or a length-``ndim`` sequence into a tuple of ints, each ``>= minimum``.

    >>> canonicalize_tuple(2, 2, "stride")
    (2, 2)
    """
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a sequence of {ndim} ints, got bool {value!r}")
    if is_int(value):
        values = (int(value),) * ndim
    elif isinstance(value, Sequence) and not isinstance(value, str):
        values = tuple(value)
        if len(values) != ndim:
            raise ValueError(
                f"{name} must have one entry per spatial dimension ({ndim}), got {value!r}"
            )
        if not all(is_int(v) for v in values):
            raise TypeError(f"{name} entries must be ints, got {value!r}")
        values = tuple(int(v) for v in values)
    else:
        raise TypeError(f"{name} must be an int or a sequence of {ndim} ints, got {value!r}")
    for v in values:
        if v < minimum:
            raise ValueError(f"{name} must be >= {minimum} in every dimension, got {value!r}")
    _check_magnitude(values, name, value)
    return values


def same_padding(n: int, k: int, stride: int = 1, dilation: int = 1) -> tuple[int, int]:
    """``(lo, hi)`` padding so that a conv gives ``ceil(n / stride)`` outputs (TF/XLA "SAME").

    The total is ``max((ceil(n/s) - 1)*s + d*(k-1) + 1 - n, 0)``; the odd pixel goes to ``hi``.
    """
    out = -(-n // stride)
    total = max((out - 1) * stride + dilation * (k - 1) + 1 - n, 0)
    return (total // 2, total - total // 2)


def canonicalize_padding(
    padding: Padding,
    ndim: int,
    *,
    kernel: Sequence[int] | None = None,
    stride: Sequence[int] | None = None,
    dilation: Sequence[int] | None = None,
    spatial: Sequence[int] | None = None,
    name: str = "padding",
) -> tuple[tuple[int, int], ...]:
    """Canonicalise ``padding`` to ``ndim`` ``(lo, hi)`` pairs.

    Accepts an int (same on every side), a per-dimension int tuple (symmetric), a sequence of
    ``(lo, hi)`` pairs, or ``"SAME"``/``"VALID"`` (``"SAME"`` needs ``kernel``, ``stride``,
    ``dilation`` and the input's ``spatial`` size). Negative padding is rejected.
    """
    if isinstance(padding, str):
        mode = padding.upper()
        if mode == "VALID":
            return ((0, 0),) * ndim
        if mode == "SAME":
            if kernel is None or spatial is None:
                raise ValueError(f'{name}="SAME" is only defined for ops with a kernel/window')
            stride = stride or (1,) * ndim
            dilation = dilation or (1,) * ndim
            return tuple(
                same_padding(n, k, s, d)
                for n, k, s, d in zip(spatial, kernel, stride, dilation, strict=True)
            )
        raise ValueError(f'{name} string must be "SAME" or "VALID", got {padding!r}')
    if isinstance(padding, bool):
        raise TypeError(f"{name} must be an int, a sequence, or a string, got {padding!r}")
    if is_int(padding):
        pairs = ((int(padding), int(padding)),) * ndim
    elif isinstance(padding, Sequence):
        items = tuple(padding)
        if len(items) != ndim:
            raise ValueError(
                f"{name} must have one entry per spatial dimension ({ndim}), got {padding!r}"
            )
        pairs_list = []
        for item in items:
            if is_int(item):
                pairs_list.append((int(item), int(item)))
            elif isinstance(item, Sequence) and len(item) == 2 and all(is_int(v) for v in item):
                pairs_list.append((int(item[0]), int(item[1])))
            else:
                raise TypeError(
                    f"{name} entries must be ints or (lo, hi) pairs of ints, got {padding!r}"
                )
        pairs = tuple(pairs_list)
    else:
        raise TypeError(f"{name} must be an int, a sequence, or a string, got {padding!r}")
    for lo, hi in pairs:
        if lo < 0 or hi < 0:
            raise ValueError(f"{name} must be non-negative, got {padding!r}")
    _check_magnitude([v for pair in pairs for v in pair], name, padding)
    return pairs


def conv_output_size(
    n: int, k: int, stride: int = 1, padding: int | tuple[int, int] = 0, dilation: int = 1
) -> int:
    """Output length of a convolution: ``floor((n + lo + hi - d*(k-1) - 1) / s) + 1``.

    With ``d = 1`` and ``lo = hi = P`` this is CS231n's ``(W - F + 2P)/S + 1``;
    e.g. AlexNet's first layer ``conv_output_size(227, 11, 4) == 55``.
    """
    lo, hi = (padding, padding) if is_int(padding) else padding
    return (n + lo + hi - dilation * (k - 1) - 1) // stride + 1


def conv_transpose_output_size(
    n: int,
    k: int,
    stride: int = 1,
    padding: int | tuple[int, int] = 0,
    output_padding: int = 0,
    dilation: int = 1,
) -> int:
    """Output length of a transposed conv: ``(n-1)*s - lo - hi + d*(k-1) + output_padding + 1``."""
    lo, hi = (padding, padding) if is_int(padding) else padding
    return (n - 1) * stride - lo - hi + dilation * (k - 1) + output_padding + 1


def vjp_padding(
    n: int,
    out: int,
    k: int,
    stride: int = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int = 1,
) -> tuple[int, int]:
    """``(lo', hi')`` padding of an output gradient in the backward pass of a window op.

    A window op (conv, sum or average pool) maps an input of length ``n`` to ``out`` outputs,
    output ``j`` reading inputs ``j*s - lo + t*d`` for taps ``t < k``. Its input gradient
    dilates the output gradient by the stride (``s - 1`` zeros between entries), pads it by
    ``(d*(k-1) - lo, n + lo - (out-1)*s - 1)`` (a negative amount crops) and runs a stride-1
    window of the same ``k`` and ``d`` over it, which gives exactly ``n`` values: input ``i``
    collects every output ``j`` with ``j*s - lo + t*d = i``. The same arithmetic as JAX's
    ``_conv_general_vjp_lhs_padding``.

    >>> vjp_padding(5, 3, 3, stride=2, padding=1)   # conv 5 -> 3 outputs, k=3, s=2, p=1
    (1, 1)
    """
    lo, _ = (padding, padding) if is_int(padding) else padding
    return (dilation * (k - 1) - lo, n + lo - (out - 1) * stride - 1)


def pool_output_size(
    n: int,
    window: int,
    stride: int | None = None,
    padding: int | tuple[int, int] = 0,
    dilation: int = 1,
    ceil_mode: bool = False,
) -> int:
    """Output length of a pooling window, with PyTorch's ``ceil_mode`` rule.

    ``o = floor_or_ceil((n + lo + hi - d*(k-1) - 1) / s) + 1``; in ceil mode a last window that
    would start inside the right padding is dropped (``(o-1)*s >= n + lo`` → ``o - 1``).
    """
    stride = window if stride is None else stride
    lo, hi = (padding, padding) if is_int(padding) else padding
    span = n + lo + hi - dilation * (window - 1) - 1
    if ceil_mode:
        out = -(-span // stride) + 1
        if (out - 1) * stride >= n + lo:
            out -= 1
    else:
        out = span // stride + 1
    return out


def conv_param_count(
    kernel: int | Sequence[int],
    in_channels: int,
    out_channels: int,
    *,
    groups: int = 1,
    bias: bool = True,
) -> int:
    """Parameters of a conv layer: ``(F*F*D1/groups)*K + K`` (CS231n's count, with groups)."""
    size = kernel * kernel if is_int(kernel) else math.prod(kernel)
    return size * (in_channels // groups) * out_channels + (out_channels if bias else 0)


class ReceptiveField(NamedTuple):
    """Receptive field of one layer's output units, in input pixels.

    ``size``: side of the region one unit sees (``r``); ``jump``: distance in input pixels between
    adjacent units (the product of strides so far); ``start``: centre of the first unit's field
    (in input coordinates; negative when padding pushes it outside the image).
    """

    size: int
    jump: int
    start: float


def receptive_field(
    layers: Sequence[tuple[int, int] | tuple[int, int, int] | tuple[int, int, int, int]],
) -> list[ReceptiveField]:
    """Receptive field after each layer, from ``(kernel, stride[, padding[, dilation]])`` tuples.

    Uses the looking-forward recurrence (Dang Ha The Hien, "A guide to receptive field
    arithmetic for convolutional neural networks", 2017) (``k_eff = d*(k-1) + 1``)::

        r_{l+1} = r_l + (k_eff - 1) * jump_l,   jump_{l+1} = jump_l * s,
        start_{l+1} = start_l + ((k_eff - 1)/2 - p) * jump_l

    and checks it against the looking-back recurrence ``r_{l-1} = r_l*s_l + (f_l - s_l)``
    (Araujo, Norris & Sim, "Computing receptive fields of convolutional neural networks",
    Distill 2019) run from one output unit down to the input (both must agree; a mismatch raises).

    >>> [rf.size for rf in receptive_field([(3, 1), (3, 1)])]   # two 3x3 convs see 5x5
    [3, 5]
    """
    fields: list[ReceptiveField] = []
    size, jump, start = 1, 1, 0.5
    parsed = []
    for i, layer in enumerate(layers):
        if not 2 <= len(layer) <= 4:
            raise ValueError(
                f"layers[{i}] must be (kernel, stride[, padding[, dilation]]), got {layer!r}"
            )
        kernel, stride, padding, dilation = (*layer, *(0, 1)[len(layer) - 2 :])
        if kernel < 1 or stride < 1 or dilation < 1 or padding < 0:
            raise ValueError(f"layers[{i}] has a non-positive kernel/stride/dilation: {layer!r}")
        k_eff = dilation * (kernel - 1) + 1
        parsed.append((k_eff, stride))
        start = start + ((k_eff - 1) / 2 - padding) * jump
        size = size + (k_eff - 1) * jump
        jump = jump * stride
        fields.append(ReceptiveField(size, jump, start))
    for depth in range(1, len(parsed) + 1):
        r = 1
        for k_eff, stride in reversed(parsed[:depth]):
            r = r * stride + (k_eff - stride)
        if r != fields[depth - 1].size:  # pragma: no cover - the two recurrences are identities
            raise AssertionError(f"receptive field recurrences disagree at layer {depth}")
    return fields
