"""Flax Linen layers: each creates its parameters and calls one :mod:`cnnjax.ops` function.

Nothing else happens here: no arithmetic beyond casting to the compute dtype, so the forward and
backward rules of every layer are those of the op (``impl="custom"``: hand-derived VJPs;
``impl="xla"``: plain ``lax`` and JAX autodiff). Activations are channels-last
``(N, *spatial, C)``; convolution kernels are ``(*kernel, C_in // groups, C_out)`` (HWIO).

Every layer takes ``impl`` (``"custom"`` or ``"xla"``), ``dtype`` (the compute dtype; ``None``
infers it from the input and parameters) and, where it has parameters, ``param_dtype``
(``float32`` by default), as :mod:`flax.linen` does. The convolution layers also take
``precision`` (``None`` = the backend default; ``"highest"`` = full float32 on GPU/TPU), passed to
the op for its forward and backward convolutions (:func:`cnnjax.ops.canonicalize_precision`).

Initialisers (all overridable through ``kernel_init`` / ``bias_init``):

* :class:`Conv`, :class:`ConvTranspose`, :class:`DepthwiseConv`, :class:`SeparableConv`:
  He et al. 2015 normal, ``std = sqrt(2 / fan_in)`` (the right scale for ReLU networks); biases 0.
* :func:`lecun1998_uniform`: LeCun et al. 1998's ``U(-2.4 / F_in, 2.4 / F_in)``, used by LeNet-5
  and by :class:`ConnectionTableConv` by default.
* Glorot & Bengio 2010 (``nn.initializers.glorot_uniform()``) and plain normals
  (``nn.initializers.normal(0.01)``, AlexNet's) are passed by the model families that used them.

``Dense`` and ``Dropout`` come from :mod:`flax.linen` directly; :class:`BatchNorm` is Flax's
with PyTorch's refusal of one value per channel (its NNX twin: :class:`cnnjax.nnx.BatchNorm`).
Models pass it ``axis_name`` so that, under ``pmap``/``shard_map``, batch statistics are
averaged across devices (``axis_name=None``: per-device statistics).

Example::

    >>> import jax, jax.numpy as jnp
    >>> layer = Conv(features=8, kernel_size=(3, 3), padding=1)
    >>> variables = layer.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    >>> variables["params"]["kernel"].shape
    (3, 3, 1, 8)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import ops
from cnnjax.shapes import Padding, is_int

__all__ = [
    "AdaptiveAvgPool",
    "AvgPool",
    "BatchNorm",
    "ConnectionTableConv",
    "Conv",
    "ConvTranspose",
    "DepthwiseConv",
    "Impl",
    "LocalContrastNorm",
    "LocalResponseNorm",
    "LpPool",
    "MaxPool",
    "SeparableConv",
    "TrainableSubsampling",
    "check_input_size",
    "he_normal",
    "lecun1998_uniform",
]

Initializer = Any  # jax.nn.initializers.Initializer: (key, shape, dtype) -> Array
Dtype = Any
#: The two implementations of every ``cnnjax.ops`` call: hand-derived VJPs or XLA's.
Impl = Literal["custom", "xla"]


def he_normal(scale: float = 2.0) -> Initializer:
    """He et al. 2015 ("Delving deep into rectifiers"): ``N(0, scale / fan_in)``, ``scale = 2``.

    ``fan_in = prod(kernel) * C_in`` for a kernel ``(*kernel, C_in, C_out)`` (``C_in`` already
    divided by ``groups`` in the HWIO layout).
    """
    return nn.initializers.variance_scaling(scale, "fan_in", "normal", in_axis=-2, out_axis=-1)


def lecun1998_uniform() -> Initializer:
    """LeCun et al. 1998 (Appendix A): ``U(-2.4 / F_in, 2.4 / F_in)``, ``F_in = prod(shape[:-1])``.

    ``F_in`` is the number of inputs of a unit: ``prod(kernel) * C_in`` for a conv kernel
    ``(*kernel, C_in, C_out)``, ``C_in`` for a dense kernel ``(C_in, C_out)``.
    """

    def init(key: jax.Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> jax.Array:
        bound = 2.4 / math.prod(shape[:-1])
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def check_input_size(x: jax.Array, *, model: str, min_size: int, hint: str = "") -> None:
    """Raise a ``ValueError`` naming ``model`` when a spatial side of ``x`` is below ``min_size``.

    Models call this first in ``__call__`` so that a too-small image fails with the model's
    minimum input size instead of deep inside an op. ``x`` is ``(N, *spatial, C)``; ``hint``
    (how to fix it) ends the message.
    """
    if x.ndim < 3 or min(x.shape[1:-1]) < min_size:
        raise ValueError(
            f"{model} needs inputs of shape (N, H, W, C) with H, W >= {min_size} "
            f"(its minimum input size is {min_size}x{min_size}); got {tuple(x.shape)}"
            + (f"; {hint}" if hint else "")
        )


def _kernel_tuple(kernel_size: int | Sequence[int], layer: str) -> tuple[int, ...]:
    if isinstance(kernel_size, int) or not isinstance(kernel_size, Sequence):
        raise TypeError(
            f"{layer}: kernel_size must be a sequence with one entry per spatial dimension "
            f"(e.g. (3, 3) for 2-D), got {kernel_size!r}"
        )
    return tuple(int(k) for k in kernel_size)


def _check_rank(x: jax.Array, ndim: int, layer: str) -> None:
    if x.ndim != ndim + 2:
        raise ValueError(
            f"{layer}: a {ndim}-D kernel needs inputs (N, *spatial, C) of rank {ndim + 2}, "
            f"got shape {tuple(x.shape)}"
        )


def _check_groups(layer: str, in_features: int, features: int, groups: int) -> None:
    # Checked here, before the kernel shape (which divides by groups) is created; the op would
    # otherwise report a channel mismatch against a kernel of the wrong shape.
    if in_features % groups or features % groups:
        raise ValueError(
            f"{layer}: input channels ({in_features}) and features ({features}) must be "
            f"divisible by groups ({groups})"
        )


def _keyword(default: Any) -> Any:
    # keyword-only, so that a layer's own fields (some without defaults) may follow
    return dataclasses.field(default=default, kw_only=True)


class _Layer(nn.Module):
    """``impl`` and ``dtype``, the fields every layer has (keyword-only), declared once."""

    impl: Impl = _keyword("custom")
    dtype: Dtype | None = _keyword(None)


class _ParamLayer(_Layer):
    """A layer with parameters: also ``param_dtype``."""

    param_dtype: Dtype = _keyword(jnp.float32)


class _ConvLayer(_ParamLayer):
    """A convolution layer: also ``precision``, for its forward and backward convolutions."""

    precision: str | jax.lax.Precision | None = _keyword(None)


def _optional_bias(module: nn.Module, features: int) -> jax.Array | None:
    """The ``(features,)`` bias parameter of a layer with ``use_bias``, else ``None``."""
    if not module.use_bias:
        return None
    return module.param("bias", module.bias_init, (features,), module.param_dtype)


class Conv(_ConvLayer):
    """N-d convolution (the dimension is ``len(kernel_size)``): ``y = x ⋆ w + b``.

    Input ``(N, *spatial, C_in)``; output ``(N, *spatial', features)`` with
    ``spatial'[i] = floor((n + lo + hi - d*(k-1) - 1) / s) + 1``. Parameters: ``kernel``
    ``(*kernel_size, C_in // groups, features)`` and ``bias`` ``(features,)``.

    Attributes:
        features: output channels.
        kernel_size: one int per spatial dimension.
        stride, padding, dilation, groups: as :func:`cnnjax.ops.conv` (padding default 0).
        use_bias: add a learned bias.
        kernel_init: default He normal (``std = sqrt(2 / (prod(kernel) * C_in / groups))``).
        bias_init: default zeros.
    """

    features: int
    kernel_size: Sequence[int]
    stride: int | Sequence[int] = 1
    padding: Padding = 0
    dilation: int | Sequence[int] = 1
    groups: int = 1
    use_bias: bool = True
    kernel_init: Initializer = he_normal()
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel_size = _kernel_tuple(self.kernel_size, "Conv")
        _check_rank(x, len(kernel_size), "Conv")
        in_features = x.shape[-1]
        _check_groups("Conv", in_features, self.features, self.groups)
        kernel = self.param(
            "kernel",
            self.kernel_init,
            (*kernel_size, in_features // self.groups, self.features),
            self.param_dtype,
        )
        bias = _optional_bias(self, self.features)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return ops.conv(
            x,
            kernel,
            bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            impl=self.impl,
            precision=self.precision,
        )


class ConvTranspose(_ConvLayer):
    """N-d transposed convolution (PyTorch semantics, channels-last), the adjoint of :class:`Conv`.

    Input ``(N, *spatial, C_in)``; output ``(N, *spatial', features)`` with
    ``spatial'[i] = (n - 1)*s - lo - hi + d*(k-1) + output_padding + 1``. Parameters: ``kernel``
    ``(*kernel_size, C_in, features // groups)`` and ``bias`` ``(features,)``.

    ``kernel_init=None`` (default) is He normal with ``fan_in = prod(kernel) * C_in / groups``,
    the number of inputs an output unit sums over at stride 1.
    """

    features: int
    kernel_size: Sequence[int]
    stride: int | Sequence[int] = 1
    padding: Padding = 0
    output_padding: int | Sequence[int] = 0
    dilation: int | Sequence[int] = 1
    groups: int = 1
    use_bias: bool = True
    kernel_init: Initializer | None = None
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel_size = _kernel_tuple(self.kernel_size, "ConvTranspose")
        _check_rank(x, len(kernel_size), "ConvTranspose")
        in_features = x.shape[-1]
        _check_groups("ConvTranspose", in_features, self.features, self.groups)
        # variance_scaling sees fan_in = prod(kernel) * C_in; a unit only sums C_in / groups.
        kernel_init = self.kernel_init or he_normal(2.0 * self.groups)
        kernel = self.param(
            "kernel",
            kernel_init,
            (*kernel_size, in_features, self.features // self.groups),
            self.param_dtype,
        )
        bias = _optional_bias(self, self.features)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return ops.conv_transpose(
            x,
            kernel,
            bias,
            stride=self.stride,
            padding=self.padding,
            output_padding=self.output_padding,
            dilation=self.dilation,
            groups=self.groups,
            impl=self.impl,
            precision=self.precision,
        )


class DepthwiseConv(_ConvLayer):
    """Depthwise convolution: every input channel gets its own ``depth_multiplier`` filters.

    Input ``(N, *spatial, C)``; output ``(N, *spatial', C * depth_multiplier)``. Parameters:
    ``kernel`` ``(*kernel_size, 1, C * depth_multiplier)`` (output channel ``c*m + j`` reads input
    channel ``c``) and ``bias`` ``(C * depth_multiplier,)``. Default init He normal with
    ``fan_in = prod(kernel)``.
    """

    kernel_size: Sequence[int]
    depth_multiplier: int = 1
    stride: int | Sequence[int] = 1
    padding: Padding = 0
    dilation: int | Sequence[int] = 1
    use_bias: bool = True
    kernel_init: Initializer = he_normal()
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel_size = _kernel_tuple(self.kernel_size, "DepthwiseConv")
        _check_rank(x, len(kernel_size), "DepthwiseConv")
        out_features = x.shape[-1] * self.depth_multiplier
        kernel = self.param(
            "kernel", self.kernel_init, (*kernel_size, 1, out_features), self.param_dtype
        )
        bias = _optional_bias(self, out_features)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return ops.depthwise_conv(
            x,
            kernel,
            bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            impl=self.impl,
            precision=self.precision,
        )


class SeparableConv(_ConvLayer):
    """Depthwise-separable convolution: a depthwise conv then a 1×1 (pointwise) conv.

    Input ``(N, *spatial, C)``; output ``(N, *spatial', features)``. Parameters:
    ``depthwise_kernel`` ``(*kernel_size, 1, C * depth_multiplier)``, ``pointwise_kernel``
    ``(1, ..., 1, C * depth_multiplier, features)`` and ``bias`` ``(features,)`` (added after the
    pointwise step). Default inits He normal (``fan_in = prod(kernel)``, ``C * depth_multiplier``).
    """

    features: int
    kernel_size: Sequence[int]
    depth_multiplier: int = 1
    stride: int | Sequence[int] = 1
    padding: Padding = 0
    dilation: int | Sequence[int] = 1
    use_bias: bool = True
    depthwise_init: Initializer = he_normal()
    pointwise_init: Initializer = he_normal()
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel_size = _kernel_tuple(self.kernel_size, "SeparableConv")
        _check_rank(x, len(kernel_size), "SeparableConv")
        mid = x.shape[-1] * self.depth_multiplier
        w_depthwise = self.param(
            "depthwise_kernel", self.depthwise_init, (*kernel_size, 1, mid), self.param_dtype
        )
        w_pointwise = self.param(
            "pointwise_kernel",
            self.pointwise_init,
            (*(1,) * len(kernel_size), mid, self.features),
            self.param_dtype,
        )
        bias = _optional_bias(self, self.features)
        x, w_depthwise, w_pointwise, bias = nn.dtypes.promote_dtype(
            x, w_depthwise, w_pointwise, bias, dtype=self.dtype
        )
        return ops.separable_conv(
            x,
            w_depthwise,
            w_pointwise,
            bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            impl=self.impl,
            precision=self.precision,
        )


class ConnectionTableConv(_ConvLayer):
    """Convolution in which output map ``j`` sees only the input maps ``i`` with ``table[i][j]``.

    LeNet-5's C3 (LeCun et al. 1998, Table I) is the classic case. Only the connected
    ``(kernel, i, j)`` weights are parameters, so parameter counts match the paper: ``kernel`` has
    shape ``(*kernel_size, n_connections)``, connections ordered by output map then input map
    (``[(i, j) for j in range(C_out) for i in range(C_in) if table[i][j]]``), and ``bias``
    ``(C_out,)``. The dense kernel ``(*kernel_size, C_in, C_out)`` is rebuilt each call by
    scattering them into zeros, and passed to :func:`cnnjax.ops.conv`; its gradient is gathered
    back, so unconnected weights never exist.

    ``table``: ``C_in`` rows of ``C_out`` booleans (a tuple of tuples, so the module is
    hashable). ``kernel_init=None`` is :func:`lecun1998_uniform` with each output map's own fan-in
    ``prod(kernel) * (its number of input maps)``; another initialiser receives the flat shape.
    """

    table: Sequence[Sequence[bool]]
    kernel_size: Sequence[int]
    stride: int | Sequence[int] = 1
    padding: Padding = 0
    use_bias: bool = True
    kernel_init: Initializer | None = None
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel_size = _kernel_tuple(self.kernel_size, "ConnectionTableConv")
        _check_rank(x, len(kernel_size), "ConnectionTableConv")
        table = np.asarray(self.table, dtype=bool)
        in_features, features = table.shape
        if x.shape[-1] != in_features:
            raise ValueError(
                f"ConnectionTableConv: the table has {in_features} input maps, "
                f"the input has {x.shape[-1]} channels"
            )
        outs, ins = np.nonzero(table.T)  # ordered by output map, then input map
        flat_index = ins * features + outs
        kernel_init = self.kernel_init
        if kernel_init is None:
            fan_in = math.prod(kernel_size) * table.sum(axis=0)[outs]

            def kernel_init(key, shape, dtype=jnp.float32):
                bound = jnp.asarray(2.4 / fan_in, dtype)
                return jax.random.uniform(key, shape, dtype, -1.0, 1.0) * bound

        kernel = self.param(
            "kernel", kernel_init, (*kernel_size, len(flat_index)), self.param_dtype
        )
        bias = _optional_bias(self, features)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        dense = jnp.zeros((*kernel_size, in_features * features), kernel.dtype)
        dense = dense.at[..., flat_index].set(kernel).reshape(*kernel_size, in_features, features)
        return ops.conv(
            x,
            dense,
            bias,
            stride=self.stride,
            padding=self.padding,
            impl=self.impl,
            precision=self.precision,
        )


def _check_batch_norm_count(
    x: jax.Array, axis: int | Sequence[int], axis_name: str | None, running: bool
) -> None:
    """Raise ``ValueError`` when batch norm would train on ``<= 1`` value per channel.

    ``count = N * spatial`` is the size of ``x`` over the non-feature axes (``axis`` are the
    feature axes). Checked only in training (``running`` false) and without ``axis_name``
    (then the statistics span devices and only the per-device count is known). Shared by
    :class:`BatchNorm` and :class:`cnnjax.nnx.BatchNorm`, so both raise the same error.
    """
    axes = axis if isinstance(axis, Sequence) else (axis,)
    feature_axes = {a % x.ndim for a in axes}
    count = math.prod(n for i, n in enumerate(x.shape) if i not in feature_axes)
    if not running and axis_name is None and count <= 1:
        # count 0 (an empty batch) would write NaN running statistics.
        raise ValueError(
            f"BatchNorm: expected more than 1 value per channel when training, got input "
            f"shape {tuple(x.shape)} (N * spatial = {count}); use a batch of at least 2"
        )


class BatchNorm(nn.BatchNorm):
    """``flax.linen.BatchNorm`` that refuses batch statistics of one value per channel.

    In training (``use_running_average=False``) a channel seen once (``N * H * W == 1``) has
    variance 0 and normalises to 0 whatever the input; PyTorch raises "Expected more than 1
    value per channel when training", and so does this (ValueError); so it does for an empty
    batch (count 0), whose statistics would be NaN. With ``axis_name`` the
    statistics span devices, so only the per-device count is known and nothing is checked.
    """

    def __call__(self, x, use_running_average: bool | None = None, **kwargs):
        running = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        _check_batch_norm_count(x, self.axis, self.axis_name, running)
        return super().__call__(x, use_running_average, **kwargs)


class _NoParams(_Layer):
    def _cast(self, x: jax.Array) -> jax.Array:
        return x if self.dtype is None else jnp.asarray(x, self.dtype)


class MaxPool(_NoParams):
    """Max pooling over ``window`` (one int per spatial dim): :func:`cnnjax.ops.max_pool`.

    ``(N, *spatial, C) -> (N, *spatial', C)``; ``stride=None`` means ``stride = window``.
    """

    window: Sequence[int]
    stride: int | Sequence[int] | None = None
    padding: Padding = 0
    dilation: int | Sequence[int] = 1
    ceil_mode: bool = False

    def __call__(self, x: jax.Array) -> jax.Array:
        return ops.max_pool(
            self._cast(x),
            self.window,
            self.stride,
            self.padding,
            self.dilation,
            self.ceil_mode,
            impl=self.impl,
        )


class AvgPool(_NoParams):
    """Average pooling over ``window``: :func:`cnnjax.ops.avg_pool`.

    ``(N, *spatial, C) -> (N, *spatial', C)``; ``count_include_pad`` as in PyTorch.
    """

    window: Sequence[int]
    stride: int | Sequence[int] | None = None
    padding: Padding = 0
    ceil_mode: bool = False
    count_include_pad: bool = True

    def __call__(self, x: jax.Array) -> jax.Array:
        return ops.avg_pool(
            self._cast(x),
            self.window,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
            impl=self.impl,
        )


class LpPool(_NoParams):
    """Lp pooling, each window's p-norm ``(sum_window |x|^p)^(1/p)``: :func:`cnnjax.ops.lp_pool`."""

    p: float
    window: Sequence[int]
    stride: int | Sequence[int] | None = None
    ceil_mode: bool = False

    def __call__(self, x: jax.Array) -> jax.Array:
        return ops.lp_pool(
            self._cast(x), self.p, self.window, self.stride, self.ceil_mode, impl=self.impl
        )


class AdaptiveAvgPool(_NoParams):
    """Average pooling to a fixed ``output_size``, with PyTorch's ``adaptive_avg_pool`` windows.

    ``(N, *spatial, C) -> (N, *output_size, C)``; ``output_size`` is an int (every spatial dim,
    as PyTorch) or one int ``>= 0`` per dim (0 gives an empty dim, as PyTorch). Raises
    TypeError for a non-floating ``x`` and ValueError for negative sizes or empty spatial dims.
    Output index ``i`` of a dimension of length
    ``n`` averages inputs ``[floor(i*n/o), ceil((i+1)*n/o))``. Three cases:

    * ``n == o`` in every dimension: the identity (e.g. VGG at 224×224 pooled to 7×7);
    * ``n`` a multiple of ``o`` in every dimension: exactly :func:`cnnjax.ops.avg_pool` with
      ``window = stride = n // o`` (so ``impl`` applies);
    * otherwise (including ``n < o``, which repeats inputs): a contraction with a fixed
      ``(o, n)`` averaging matrix per dimension, plain ``jnp`` (``impl`` does not apply; JAX
      differentiates it).
    """

    output_size: int | Sequence[int]

    def __call__(self, x: jax.Array) -> jax.Array:
        x = _adaptive_input(self._cast(x))
        spatial = tuple(x.shape[1:-1])
        output_size = _adaptive_output_size(self.output_size, x.shape)
        if spatial == output_size:
            return x
        if all(o > 0 and n % o == 0 for n, o in zip(spatial, output_size, strict=True)):
            window = tuple(n // o for n, o in zip(spatial, output_size, strict=True))
            return ops.avg_pool(x, window, window, impl=self.impl)
        # The sums accumulate in float32 or wider and round once, at the end (as the ops do).
        dtype, y = x.dtype, x.astype(jnp.promote_types(x.dtype, jnp.float32))
        for axis, (n, o) in enumerate(zip(spatial, output_size, strict=True), start=1):
            matrix = jnp.asarray(_adaptive_average_matrix(n, o), y.dtype)
            # HIGHEST: an average must stay exact on accelerators (no bf16 passes).
            y = jnp.tensordot(y, matrix, axes=([axis], [1]), precision=jax.lax.Precision.HIGHEST)
            y = jnp.moveaxis(y, -1, axis)
        return y.astype(dtype)


def _adaptive_input(x) -> jax.Array:
    """``x`` as a floating ``(N, *spatial, C)`` array with non-empty spatial dims (as PyTorch)."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        # Both paths alike: avg_pool refuses integers, the matrix path would truncate them.
        raise TypeError(
            "AdaptiveAvgPool: x must have a floating dtype (float16, bfloat16, float32, "
            f"float64), got {x.dtype}"
        )
    if x.ndim not in (3, 4, 5) or 0 in x.shape[1:-1]:
        raise ValueError(
            "AdaptiveAvgPool: x must have shape (N, *spatial, C) with 1-3 non-empty spatial "
            f"dims, got shape {tuple(x.shape)}"
        )
    return x


def _adaptive_output_size(output_size, shape) -> tuple[int, ...]:
    """An int (the same size in every spatial dim, as PyTorch) or one int >= 0 per spatial dim.

    A size of 0 gives an empty output dimension (as PyTorch); negative sizes raise ValueError.
    """
    ndim = len(shape) - 2
    sizes = (output_size,) * ndim if is_int(output_size) else output_size
    try:
        sizes = tuple(sizes)
    except TypeError:
        sizes = None
    if sizes is None or not all(is_int(o) for o in sizes):
        raise TypeError(
            f"AdaptiveAvgPool: output_size must be an int or {ndim} ints, got {output_size!r}"
        )
    sizes = tuple(int(o) for o in sizes)
    if len(sizes) != ndim:
        raise ValueError(
            f"AdaptiveAvgPool: output_size {sizes} needs {len(sizes)} spatial dims, got input "
            f"shape {tuple(shape)}"
        )
    if min(sizes) < 0:
        raise ValueError(f"AdaptiveAvgPool: output_size must be >= 0 per dim, got {sizes}")
    return sizes


def _adaptive_average_matrix(n: int, o: int) -> np.ndarray:
    """``(o, n)`` matrix whose row ``i`` averages ``[floor(i*n/o), ceil((i+1)*n/o))``."""
    matrix = np.zeros((o, n))
    for i in range(o):
        start, end = (i * n) // o, -(-((i + 1) * n) // o)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


class LocalResponseNorm(_NoParams):
    """Local response normalisation across channels: :func:`cnnjax.ops.local_response_norm`.

    ``y_c = x_c / (k + (alpha / size) * sum_{window} x^2)^beta`` (PyTorch's convention: ``alpha``
    is divided by ``size``). AlexNet's paper setting (Krizhevsky et al. 2012, §3.3: ``n=5, k=2,
    alpha=1e-4, beta=0.75`` without the division) is ``size=5, k=2, alpha=5e-4, beta=0.75``.
    """

    size: int
    alpha: float = 1e-4
    beta: float = 0.75
    k: float = 1.0

    def __call__(self, x: jax.Array) -> jax.Array:
        return ops.local_response_norm(
            self._cast(x), self.size, self.alpha, self.beta, self.k, impl=self.impl
        )


class LocalContrastNorm(_NoParams):
    """Subtractive then divisive local contrast normalisation (Jarrett et al. 2009).

    Calls :func:`cnnjax.ops.local_contrast_norm`; ``(N, *spatial, C) -> (N, *spatial, C)``.
    ``sigma=None`` uses the op's default Gaussian width for ``size``.
    """

    size: int = 9
    sigma: float | None = None

    def __call__(self, x: jax.Array) -> jax.Array:
        return ops.local_contrast_norm(self._cast(x), self.size, self.sigma, impl=self.impl)


class TrainableSubsampling(_ParamLayer):
    """LeNet-5's subsampling layer (S2, S4): a window average times a trainable per-channel
    coefficient plus a trainable per-channel bias.

    .. math:: y_{n,i,j,c} = a_c \\cdot \\operatorname{mean}_{(p,q) \\in \\text{window}(i,j)}
        x_{n,p,q,c} + b_c

    Input ``(N, *spatial, C)``; output ``(N, *spatial // window, C)`` (non-overlapping windows,
    LeCun et al. 1998 §II-B: "the four inputs to a unit in S2 are added, then multiplied by a
    trainable coefficient, and added to a trainable bias"; we average instead of add, which only
    rescales ``a``). Parameters ``coefficient`` ``(C,)`` (init ones) and ``bias`` ``(C,)`` (init
    zeros): 2 per map, e.g. S2's 12. The squashing function is applied by the model.
    """

    window: int | Sequence[int] = 2
    coefficient_init: Initializer = nn.initializers.ones
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        window = (
            (self.window,) * (x.ndim - 2) if isinstance(self.window, int) else tuple(self.window)
        )
        coefficient = self.param(
            "coefficient", self.coefficient_init, (channels,), self.param_dtype
        )
        bias = self.param("bias", self.bias_init, (channels,), self.param_dtype)
        x, coefficient, bias = nn.dtypes.promote_dtype(x, coefficient, bias, dtype=self.dtype)
        return ops.avg_pool(x, window, window, impl=self.impl) * coefficient + bias
