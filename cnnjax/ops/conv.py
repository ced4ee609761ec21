"""N-d convolution and transposed convolution with hand-derived backward rules.

Conventions: activations ``x`` are channels-last ``(N, *spatial, C)`` (1-3 spatial dims), conv
kernels ``w`` are ``(*kernel, C_in // groups, C_out)`` (HWIO). Three private lax primitives do
all the work, and the two public ops are built from them with the roles swapped::

    _conv_forward(x, w)          y[n, o, co] = sum_{k, ci} x_pad[n, o*s + k*d, ci] w[k, ci, co]
    _conv_input_grad(g, w)       dx = (g dilated by s, padded) (*) flip(w), in/out channels swapped
    _conv_weight_grad(x, g)      dw[k, ci, co] = sum_{n, o} x_pad[n, o*s + k*d, ci] g[n, o, co]

    conv            forward = _conv_forward,     backward = (_conv_input_grad, _conv_weight_grad)
    conv_transpose  forward = _conv_input_grad,  backward = (_conv_forward,    _conv_weight_grad)

(with ``(*)`` a stride-1 correlation). This is the derivation of the CS231n notes
("Convolutional Neural Networks"): the gradient w.r.t. the input is a "full" convolution of the
output gradient with the flipped filter, the gradient w.r.t. the filter is the correlation of
the input with the output gradient, and a transposed convolution is exactly the input-gradient
map of a convolution.

Forward-mode differentiation (``jax.jvp``/``jax.jacfwd``) is impossible through a
``jax.custom_vjp``; use ``impl="xla"`` for it. Reverse-over-reverse (grad of grad) works: the
backward rules are themselves differentiable lax code.

XLA:CPU workarounds (a one-feature convolution guard, batch-chunked weight gradients) live in
:mod:`cnnjax.ops.xla_cpu`; the primitives here call them and stay the maths.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from cnnjax.ops._common import (
    PrecisionLike,
    accumulation_dtype,
    as_floating,
    call_custom_vjp,
    canonicalize_precision,
    check_extents,
    check_impl,
    conv_dimension_numbers,
    spatial_ndim,
)
from cnnjax.ops.xla_cpu import conv_general_dilated, sum_over_batch_chunks
from cnnjax.shapes import (
    Padding,
    canonicalize_padding,
    canonicalize_tuple,
    conv_output_size,
    conv_transpose_output_size,
    is_int,
    vjp_padding,
)

__all__ = ["conv", "conv_transpose", "depthwise_conv", "separable_conv"]

Pairs = tuple[tuple[int, int], ...]


# --------------------------------------------------------------------------------------------
# Public ops
# --------------------------------------------------------------------------------------------


def conv(
    x: jax.Array,
    w: jax.Array,
    b: jax.Array | None = None,
    *,
    stride: int | Sequence[int] = 1,
    padding: Padding = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    impl: str = "custom",
    precision: PrecisionLike = None,
) -> jax.Array:
    """N-d convolution (cross-correlation, as in every deep-learning library), channels-last.

    .. math::
        y[n, o, c_o] = b[c_o] + \\sum_{k, c_i} x_{pad}[n, o s + k d, g(c_o) + c_i]\\, w[k, c_i, c_o]

    Args:
      x: ``(N, *spatial, C_in)`` with 1, 2 or 3 spatial dims.
      w: ``(*kernel, C_in // groups, C_out)``.
      b: optional ``(C_out,)``.
      stride, dilation: an int or one int per spatial dim, each ``>= 1``.
      padding: an int, a per-dim int tuple (symmetric), a sequence of ``(lo, hi)`` pairs, or
        ``"SAME"``/``"VALID"``.
      groups: ``C_in`` and ``C_out`` are split into ``groups`` independent convolutions.
      impl: ``"custom"`` (our ``jax.custom_vjp``) or ``"xla"`` (lax + autodiff; needed for
        forward-mode differentiation, which a custom VJP cannot provide).
      precision: ``None`` (the backend's default, as :func:`jax.lax.conv_general_dilated`),
        ``"default"``, ``"high"``, ``"highest"`` or a :class:`jax.lax.Precision`; the custom
        VJP's backward convolutions use the same precision (see :func:`canonicalize_precision`).

    Returns:
      ``(N, *out, C_out)`` with ``out = floor((n + lo + hi - d*(k-1) - 1) / s) + 1`` per dim.

    >>> x = jnp.ones((1, 5, 5, 3)); w = jnp.ones((3, 3, 3, 8))
    >>> conv(x, w, stride=2, padding=1).shape
    (1, 3, 3, 8)
    """
    check_impl(impl, "conv")
    ndim = spatial_ndim(x, op="conv")
    kernel = _check_kernel(x, w, ndim, groups, op="conv", transpose=False)
    groups = int(groups)
    try:
        stride_t = canonicalize_tuple(stride, ndim, "stride")
        dilation_t = canonicalize_tuple(dilation, ndim, "dilation")
        pads = canonicalize_padding(
            padding,
            ndim,
            kernel=kernel,
            stride=stride_t,
            dilation=dilation_t,
            spatial=x.shape[1:-1],
        )
    except (TypeError, ValueError) as err:
        raise type(err)(f"conv: {err}") from None
    _check_spatial_nonempty(x, "conv")
    for i, (n, k, s, (lo, hi), d) in enumerate(
        zip(x.shape[1:-1], kernel, stride_t, pads, dilation_t, strict=True)
    ):
        out = conv_output_size(n, k, s, (lo, hi), d)
        if out < 1:
            raise ValueError(
                f"conv: output size {out} < 1 in spatial dim {i}: "
                f"floor((n + lo + hi - d*(k-1) - 1) / s) + 1 = "
                f"floor(({n} + {lo} + {hi} - {d}*({k}-1) - 1) / {s}) + 1 = {out}; "
                "use a larger input, more padding, or a smaller kernel/dilation"
            )
    extents = [
        n + lo + hi + d * (k - 1)
        for n, k, (lo, hi), d in zip(x.shape[1:-1], kernel, pads, dilation_t)
    ]
    check_extents(
        "conv",
        "padded input of the forward/backward convolutions",
        (x.shape[0], *extents, max(x.shape[-1], w.shape[-1])),
        "per dim n + lo + hi + d*(k-1)",
    )
    precision = canonicalize_precision(precision, op="conv")
    x, w, b = _promote(x, w, b, op="conv", c_out=w.shape[-1])
    args = (stride_t, pads, dilation_t, groups, precision)
    if impl == "xla":
        return _add_bias(_conv_forward(x, w, *args), b)
    return call_custom_vjp("conv", _conv_custom, x, w, b, *args)


def conv_transpose(
    x: jax.Array,
    w: jax.Array,
    b: jax.Array | None = None,
    *,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | Sequence[tuple[int, int]] = 0,
    output_padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    impl: str = "custom",
    precision: PrecisionLike = None,
) -> jax.Array:
    """N-d transposed convolution with PyTorch's semantics, channels-last.

    The adjoint of :func:`conv` w.r.t. its input: ``conv_transpose(g, w) == vjp(conv(., w'))(g)``
    with ``w' = swapaxes(w, -1, -2)`` (for groups=1; for groups the same swap per group), at the
    input size below. Equivalently: dilate ``x`` by the stride, pad by ``d*(k-1) - p`` (plus
    ``output_padding`` on the high side), and convolve with the spatially flipped kernel.

    Args:
      x: ``(N, *spatial, C_in)``.
      w: ``(*kernel, C_in, C_out // groups)`` (PyTorch's ``(C_in, C_out/groups, *kernel)`` moved
        channels-last).
      b: optional ``(C_out,)``.
      padding: an int, per-dim ints or ``(lo, hi)`` pairs: the padding of the *forward* conv that
        this op transposes (PyTorch's ``padding``); removes ``lo``/``hi`` from the output.
      output_padding: extra size added on the high side, ``< stride`` or ``< dilation`` per dim.
      precision: as :func:`conv` (forward and backward).

    Returns:
      ``(N, *out, C_out)`` with ``out = (n-1)*s - lo - hi + d*(k-1) + output_padding + 1``.
    """
    check_impl(impl, "conv_transpose")
    ndim = spatial_ndim(x, op="conv_transpose")
    kernel = _check_kernel(x, w, ndim, groups, op="conv_transpose", transpose=True)
    groups = int(groups)
    if isinstance(padding, str):
        if padding.upper() != "VALID":
            raise ValueError(
                'conv_transpose: padding must be ints or (lo, hi) pairs (or "VALID"); '
                f'"SAME" has no unique meaning for a transposed conv, got {padding!r}'
            )
    try:
        stride_t = canonicalize_tuple(stride, ndim, "stride")
        dilation_t = canonicalize_tuple(dilation, ndim, "dilation")
        output_padding_t = canonicalize_tuple(output_padding, ndim, "output_padding", minimum=0)
        pads = canonicalize_padding(padding, ndim)
    except (TypeError, ValueError) as err:
        raise type(err)(f"conv_transpose: {err}") from None
    _check_spatial_nonempty(x, "conv_transpose")
    out_spatial = []
    for i, (n, k, s, (lo, hi), op_, d) in enumerate(
        zip(x.shape[1:-1], kernel, stride_t, pads, output_padding_t, dilation_t, strict=True)
    ):
        if op_ >= s and op_ >= d:
            raise ValueError(
                f"conv_transpose: output_padding must be smaller than stride or dilation, "
                f"got output_padding={output_padding_t}, stride={stride_t}, "
                f"dilation={dilation_t} (dim {i})"
            )
        out = conv_transpose_output_size(n, k, s, (lo, hi), op_, d)
        if out < 1:
            raise ValueError(
                f"conv_transpose: output size {out} < 1 in spatial dim {i}: "
                f"(n-1)*s - lo - hi + d*(k-1) + output_padding + 1 = "
                f"({n}-1)*{s} - {lo} - {hi} + {d}*({k}-1) + {op_} + 1 = {out}"
            )
        out_spatial.append(out)
    extents = [
        o + lo + hi + d * (k - 1) + (n - 1) * s
        for o, n, k, s, (lo, hi), d in zip(
            out_spatial, x.shape[1:-1], kernel, stride_t, pads, dilation_t
        )
    ]
    check_extents(
        "conv_transpose",
        "stride-dilated, padded input of the forward/backward convolutions",
        (x.shape[0], *extents, max(x.shape[-1], w.shape[-1] * groups)),
        "per dim out + lo + hi + d*(k-1) + (n-1)*s",
    )
    # The forward conv that this op transposes maps out_spatial -> x.spatial. Its high padding is
    # reduced by output_padding so that it sees exactly the out_spatial inputs it uses.
    conv_pads = tuple((lo, hi - op_) for (lo, hi), op_ in zip(pads, output_padding_t, strict=True))
    precision = canonicalize_precision(precision, op="conv_transpose")
    x, w, b = _promote(x, w, b, op="conv_transpose", c_out=w.shape[-1] * groups)
    w_conv = jnp.swapaxes(w, -1, -2)  # (*k, C_out/groups, C_in): the kernel of that forward conv
    args = (tuple(out_spatial), stride_t, conv_pads, dilation_t, groups, precision)
    if impl == "xla":
        return _add_bias(_conv_input_grad(x, w_conv, *args), b)
    return call_custom_vjp("conv_transpose", _conv_transpose_custom, x, w_conv, b, *args)


def _errors_named(op: str, *inner: str):
    """Re-raise a TypeError/ValueError of the inner ops ``inner`` with ``op`` as its prefix."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except (TypeError, ValueError) as err:
                message = str(err)
                for name in inner:
                    if message.startswith(f"{name}: "):
                        raise type(err)(f"{op}: {message[len(name) + 2 :]}") from None
                raise

        return wrapped

    return decorate


@_errors_named("depthwise_conv", "conv")
def depthwise_conv(
    x: jax.Array,
    w: jax.Array,
    b: jax.Array | None = None,
    *,
    stride: int | Sequence[int] = 1,
    padding: Padding = 0,
    dilation: int | Sequence[int] = 1,
    impl: str = "custom",
    precision: PrecisionLike = None,
) -> jax.Array:
    """Depthwise convolution: each input channel gets its own ``multiplier`` filters.

    ``x``: ``(N, *spatial, C)``; ``w``: ``(*kernel, 1, C * multiplier)``; returns
    ``(N, *out, C * multiplier)``. It is :func:`conv` with ``groups = C`` (``precision`` as
    there).
    """
    spatial_ndim(x, op="depthwise_conv")
    _check_array(w, "depthwise_conv", "w")
    channels = x.shape[-1]
    if (
        w.ndim != x.ndim
        or w.shape[-2] != 1
        or (w.shape[-1] % channels if channels else w.shape[-1])
    ):
        raise ValueError(
            f"depthwise_conv: w must have shape (*kernel, 1, C * multiplier) with "
            f"C = x.shape[-1] = {channels}, got w.shape = {tuple(w.shape)}"
        )
    if channels == 0:
        # C = 0: the empty result (N, *out, 0). A conv with groups=1 over zero input channels
        # has exactly that shape and goes through the same checks.
        w = jnp.reshape(w, (*w.shape[:-2], 0, 0))
    return conv(
        x,
        w,
        b,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=max(channels, 1),
        impl=impl,
        precision=precision,
    )


@_errors_named("separable_conv", "depthwise_conv", "conv")
def separable_conv(
    x: jax.Array,
    w_depthwise: jax.Array,
    w_pointwise: jax.Array,
    b: jax.Array | None = None,
    *,
    stride: int | Sequence[int] = 1,
    padding: Padding = 0,
    dilation: int | Sequence[int] = 1,
    impl: str = "custom",
    precision: PrecisionLike = None,
) -> jax.Array:
    """Depthwise-separable convolution: a depthwise conv, then a 1×1 (pointwise) conv.

    ``w_depthwise``: ``(*kernel, 1, C * multiplier)``; ``w_pointwise``:
    ``(1, ..., 1, C * multiplier, C_out)``; ``b``: optional ``(C_out,)`` added after the
    pointwise conv. Returns ``(N, *out, C_out)``. ``precision`` as :func:`conv`, for both convs.
    """
    _check_array(w_pointwise, "separable_conv", "w_pointwise")
    h = depthwise_conv(
        x,
        w_depthwise,
        stride=stride,
        padding=padding,
        dilation=dilation,
        impl=impl,
        precision=precision,
    )
    return conv(h, w_pointwise, b, impl=impl, precision=precision)


# --------------------------------------------------------------------------------------------
# The three lax primitives (matmul picture: batch n, input channel ci, output channel co)
# --------------------------------------------------------------------------------------------


def _conv_forward(
    x: jax.Array,
    w: jax.Array,
    stride: tuple,
    pads: Pairs,
    dilation: tuple,
    groups: int,
    precision: lax.Precision | None,
    input_dilation: tuple | None = None,
) -> jax.Array:
    """``y[n, o, co] = sum_{k, ci} x_pad[n, o*s + k*d, ci] w[k, ci, co]`` (per group).

    ``input_dilation`` (``s - 1`` zeros between the entries of ``x``) serves
    :func:`_conv_input_grad`, which is this correlation over the stride-dilated output grad.
    """
    return _conv_general_dilated(
        x,
        w,
        window_strides=stride,
        padding=pads,
        lhs_dilation=input_dilation,
        rhs_dilation=dilation,
        dimension_numbers=conv_dimension_numbers(x.ndim - 2),
        feature_group_count=groups,
        precision=precision,
    )


def _conv_input_grad(
    g: jax.Array,
    w: jax.Array,
    in_spatial: tuple,
    stride: tuple,
    pads: Pairs,
    dilation: tuple,
    groups: int,
    precision: lax.Precision | None,
) -> jax.Array:
    """``dx`` of ``y = _conv_forward(x, w)`` for output grad ``g``; ``x`` spatial = in_spatial.

    dx[n, i, ci] = sum_{k, co} g[n, (i + lo - k*d)/s, co] w[k, ci, co]  (terms with integral,
    in-range output index). Implemented as the CS231n notes say: dilate ``g`` by the stride
    (``lhs_dilation``), zero-pad it by :func:`cnnjax.shapes.vjp_padding`, ``d*(k-1) - lo`` below
    and ``n - 1 - (o-1)*s + lo`` above (negative = crop), and run a stride-1 correlation with
    the spatially flipped kernel whose in/out channels are swapped (per group).
    """
    ndim = g.ndim - 2
    kernel = w.shape[:ndim]
    grad_pads = tuple(
        vjp_padding(n, o, k, s, pad, d)
        for n, o, k, s, pad, d in zip(
            in_spatial, g.shape[1:-1], kernel, stride, pads, dilation, strict=True
        )
    )
    w_flipped = _swap_in_out_per_group(jnp.flip(w, axis=tuple(range(ndim))), groups)
    unit = (1,) * ndim
    return _conv_forward(g, w_flipped, unit, grad_pads, dilation, groups, precision, stride)


def _conv_weight_grad(
    x: jax.Array,
    g: jax.Array,
    kernel: tuple,
    stride: tuple,
    pads: Pairs,
    dilation: tuple,
    groups: int,
    precision: lax.Precision | None,
) -> jax.Array:
    """``dw`` of ``y = _conv_forward(x, w)``.

    ``dw[k, ci, co] = sum_{n, o} x_pad[n, o*s + k*d, ci] g[n, o, co]``.

    A correlation of the input with the output grad in which the batch is the contracted
    "feature" axis, the input channels play the batch, the output grad is dilated by the
    conv's stride and the conv's dilation becomes the window stride. The high padding is
    trimmed so exactly ``k`` positions come out; groups pair input-channel group ``j`` with
    output-channel group ``j`` (``batch_group_count``).
    """
    ndim = x.ndim - 2
    weight_pads = tuple(
        (lo, d * (k - 1) + (o - 1) * s + 1 - n - lo)
        for n, o, k, s, (lo, _), d in zip(
            x.shape[1:-1], g.shape[1:-1], kernel, stride, pads, dilation, strict=True
        )
    )
    spatial = tuple(range(1, ndim + 1))
    dimension_numbers = lax.ConvDimensionNumbers(
        lhs_spec=(ndim + 1, 0, *spatial),  # x: channels act as batch, batch as features
        rhs_spec=(ndim + 1, 0, *spatial),  # g: out-channels as output features, batch as input
        out_spec=(ndim, ndim + 1, *range(ndim)),  # result laid out as (*kernel, C_in/G, C_out)
    )
    conv = functools.partial(
        _conv_general_dilated,
        window_strides=dilation,
        padding=weight_pads,
        rhs_dilation=stride,
        dimension_numbers=dimension_numbers,
        batch_group_count=groups,
        precision=precision,
    )
    return sum_over_batch_chunks(conv, x, g)


def _conv_general_dilated(lhs: jax.Array, rhs: jax.Array, **kwargs) -> jax.Array:
    """``lax.conv_general_dilated`` accumulating in float32 (or wider), rounded once to lhs's dtype.

    On accelerators a float16/bfloat16 conv may otherwise accumulate in its own dtype; this also
    fixes the dtype of JAX's transpose rules for ``impl="xla"``. (Through
    :func:`cnnjax.ops.xla_cpu.conv_general_dilated`: its one-feature guard.)
    """
    acc = accumulation_dtype(lhs.dtype)
    wide = None if acc == lhs.dtype else acc
    return conv_general_dilated(lhs, rhs, preferred_element_type=wide, **kwargs).astype(lhs.dtype)


def _swap_in_out_per_group(w: jax.Array, groups: int) -> jax.Array:
    """``(*k, I/G, O)`` → ``(*k, O/G, I)``: transpose each group's ``(I/G, O/G)`` block."""
    *kernel, in_per_group, out = w.shape
    out_per_group = out // groups
    w = w.reshape(*kernel, in_per_group, groups, out_per_group)
    w = jnp.moveaxis(w, -3, -1)  # (*k, G, O/G, I/G)
    w = jnp.swapaxes(w, -3, -2)  # (*k, O/G, G, I/G)
    return w.reshape(*kernel, out_per_group, groups * in_per_group)


# --------------------------------------------------------------------------------------------
# conv: custom VJP
# --------------------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7))
def _conv_custom(x, w, b, stride, pads, dilation, groups, precision):
    return _add_bias(_conv_forward(x, w, stride, pads, dilation, groups, precision), b)


def _conv_custom_fwd(x, w, b, stride, pads, dilation, groups, precision):
    return _conv_custom(x, w, b, stride, pads, dilation, groups, precision), (x, w, b)


def _conv_custom_bwd(stride, pads, dilation, groups, precision, residuals, g):
    # dL/dx = full conv of g (dilated by s) with the flipped, channel-swapped kernel;
    # dL/dw = correlation of x with g (dilated by s); dL/db = sum of g over batch and space.
    x, w, b = residuals
    # The backward convolutions run at the forward's precision (a static, hashable argument).
    dx = _conv_input_grad(g, w, x.shape[1:-1], stride, pads, dilation, groups, precision)
    dw = _conv_weight_grad(x, g, w.shape[:-2], stride, pads, dilation, groups, precision)
    return dx, dw, _bias_grad(g, b)


_conv_custom.defvjp(_conv_custom_fwd, _conv_custom_bwd)


# --------------------------------------------------------------------------------------------
# conv_transpose: custom VJP (the conv rules with roles swapped)
# --------------------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7, 8))
def _conv_transpose_custom(x, w_conv, b, out_spatial, stride, pads, dilation, groups, precision):
    y = _conv_input_grad(x, w_conv, out_spatial, stride, pads, dilation, groups, precision)
    return _add_bias(y, b)


def _conv_transpose_custom_fwd(x, w_conv, b, *args):
    return _conv_transpose_custom(x, w_conv, b, *args), (x, w_conv, b)


def _conv_transpose_custom_bwd(out_spatial, stride, pads, dilation, groups, precision, res, g):
    # y = A^T x for the forward conv A = conv(., w_conv), so dL/dx = A g = conv(g, w_conv), and
    # dL/dw_conv[k, i, j] = sum g_pad[n, o*s + k*d, i] x[n, o, j] = weight grad with (g, x).
    x, w_conv, b = res
    dx = _conv_forward(g, w_conv, stride, pads, dilation, groups, precision)
    dw_conv = _conv_weight_grad(g, x, w_conv.shape[:-2], stride, pads, dilation, groups, precision)
    return dx, dw_conv, _bias_grad(g, b)


_conv_transpose_custom.defvjp(_conv_transpose_custom_fwd, _conv_transpose_custom_bwd)


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


def _check_array(value, op: str, name: str) -> None:
    if not (hasattr(value, "ndim") and hasattr(value, "shape") and hasattr(value, "dtype")):
        raise TypeError(f"{op}: {name} must be an array, got {type(value).__name__}")


def _check_spatial_nonempty(x, op: str) -> None:
    """Zero-length spatial dims are refused; a zero batch or channel count gives an empty result."""
    if 0 in x.shape[1:-1]:
        raise ValueError(
            f"{op}: every spatial dim of x must be >= 1 (an empty image has no output size under "
            f"the formula, whose n must be >= 1), got x.shape = {tuple(x.shape)}; "
            "a zero batch size N or channel count C is allowed and gives an empty result"
        )


def _check_kernel(x, w, ndim: int, groups: int, *, op: str, transpose: bool) -> tuple[int, ...]:
    _check_array(w, op, "w")
    layout = "(*kernel, C_in, C_out // groups)" if transpose else "(*kernel, C_in // groups, C_out)"
    if w.ndim != ndim + 2:
        raise ValueError(
            f"{op}: w must have shape {layout} with {ndim} kernel dims to match x of shape "
            f"{tuple(x.shape)}, got w.shape = {tuple(w.shape)}"
        )
    if not is_int(groups) or groups < 1:
        raise ValueError(f"{op}: groups must be a positive int, got {groups!r}")
    groups = int(groups)
    c_in = x.shape[-1]
    if c_in % groups:
        raise ValueError(
            f"{op}: groups={groups} must divide the input channels C_in = x.shape[-1] = {c_in}"
        )
    if transpose:
        if w.shape[-2] != c_in:
            raise ValueError(
                f"{op}: channel mismatch: w.shape[-2] = {w.shape[-2]} must equal "
                f"C_in = x.shape[-1] = {c_in} (w is {layout})"
            )
    else:
        if w.shape[-2] * groups != c_in:
            raise ValueError(
                f"{op}: channel mismatch: w.shape[-2] * groups = {w.shape[-2]} * {groups} must "
                f"equal C_in = x.shape[-1] = {c_in} (w is {layout})"
            )
        if w.shape[-1] % groups:
            raise ValueError(
                f"{op}: groups={groups} must divide the output channels C_out = w.shape[-1] = "
                f"{w.shape[-1]}"
            )
    kernel = tuple(int(k) for k in w.shape[:ndim])
    if min(kernel) < 1:
        raise ValueError(f"{op}: kernel sizes must be >= 1, got w.shape = {tuple(w.shape)}")
    return kernel


def _promote(x, w, b, *, op: str, c_out: int):
    """Cast to one floating dtype (integer, bool, complex refused); check ``b`` is ``(C_out,)``."""
    x, w = as_floating(op, x, "x"), as_floating(op, w, "w")
    if b is not None:
        b = as_floating(op, b, "b")
        if b.shape != (c_out,):
            raise ValueError(f"{op}: b must have shape (C_out,) = ({c_out},), got {tuple(b.shape)}")
    dtype = jnp.result_type(x, w) if b is None else jnp.result_type(x, w, b)
    b = None if b is None else b.astype(dtype)
    return x.astype(dtype), w.astype(dtype), b


def _add_bias(y, b):
    """``y + b`` computed in the accumulation dtype, so that JAX's transpose (the bias
    gradient of ``impl="xla"``) sums in float32 or wider too."""
    if b is None:
        return y
    if b.shape != (y.shape[-1],):
        raise ValueError(f"b must have shape (C_out,) = ({y.shape[-1]},), got {tuple(b.shape)}")
    acc = accumulation_dtype(y.dtype)
    return (y.astype(acc) + b.astype(acc)).astype(y.dtype)


def _bias_grad(g, b):
    """dL/db = sum of the output grad over batch and space (``None`` when there is no bias),
    accumulated in float32 or wider and rounded once."""
    if b is None:
        return None
    total = jnp.sum(g, axis=tuple(range(g.ndim - 1)), dtype=accumulation_dtype(g.dtype))
    return total.astype(g.dtype)
