"""Flax NNX layers: the :mod:`cnnjax.layers` modules for users of ``flax.nnx``.

Each class has the name, arguments, parameter names, shapes and initialisers of its Linen
namesake in :mod:`cnnjax.layers` and calls the same :mod:`cnnjax.ops` function, so the forward
and backward rules (``impl="custom"``: hand-derived VJPs; ``"xla"``: plain ``lax``) are shared.
NNX creates parameters eagerly, so the layers that own parameters take what Linen infers from the
first input as a leading argument, as :class:`flax.nnx.Conv` and :class:`flax.nnx.Linear` do:
``in_features`` (the input channels), and ``rngs`` (an :class:`flax.nnx.Rngs`; parameters are
drawn from its ``params`` stream). Layers without parameters take exactly the Linen arguments.

Extra keyword arguments of a parameterised layer (``**op_kwargs``) go unchanged to its op, so an
op argument added later (e.g. a matmul ``precision``) needs no change here.

Example::

    >>> from flax import nnx
    >>> import jax.numpy as jnp
    >>> layer = Conv(1, 8, (3, 3), padding=1, rngs=nnx.Rngs(0))
    >>> layer.kernel.shape
    (3, 3, 1, 8)
    >>> layer(jnp.zeros((2, 28, 28, 1))).shape
    (2, 28, 28, 8)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.linen.dtypes import promote_dtype
from flax.nnx.module import first_from
from flax.nnx.nn.normalization import _compute_stats, _normalize

from cnnjax import layers as linen_layers
from cnnjax import ops
from cnnjax.layers import (
    _check_batch_norm_count,
    _check_groups,
    _check_rank,
    _kernel_tuple,
    check_input_size,
    he_normal,
    lecun1998_uniform,
)
from cnnjax.shapes import Padding

__all__ = [
    "AdaptiveAvgPool",
    "AvgPool",
    "BatchNorm",
    "ConnectionTableConv",
    "Conv",
    "ConvTranspose",
    "DepthwiseConv",
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

Initializer = Any
Dtype = Any


_HE_NORMAL = he_normal()  # the default kernel init of the conv layers (one shared instance)


def _static(value: Any) -> Any:
    """Lists to tuples, recursively: NNX keeps non-array attributes in the (hashed) graphdef."""
    if isinstance(value, list | tuple):
        return tuple(_static(v) for v in value)
    return value


def _param(init: Initializer, rngs: nnx.Rngs, shape: Sequence[int], dtype: Dtype) -> nnx.Param:
    return nnx.Param(init(rngs.params(), tuple(shape), dtype))


def _optional_bias(layer: nnx.Module, features: int, rngs: nnx.Rngs) -> nnx.Param | None:
    """The ``(features,)`` bias parameter of a layer with ``use_bias``, else ``None``."""
    if not layer.use_bias:
        return None
    return _param(layer.bias_init, rngs, (features,), layer.param_dtype)


def _value(param: nnx.Param | None) -> jax.Array | None:
    return None if param is None else param[...]


class _Layer(nnx.Module):
    """Stores the op arguments named in ``_OP_ARGS`` (plus any extra ``op_kwargs``) as static
    attributes and hands them back to the op as keyword arguments."""

    _OP_ARGS: tuple[str, ...] = ()

    def _store(self, op_args: dict[str, Any], op_kwargs: dict[str, Any]) -> None:
        for name in self._OP_ARGS:
            setattr(self, name, _static(op_args[name]))
        self.op_kwargs = tuple(sorted((k, _static(v)) for k, v in op_kwargs.items()))

    def _op_kwargs(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._OP_ARGS} | dict(self.op_kwargs)


class Conv(_Layer):
    """N-d convolution ``y = x ⋆ w + b`` (:func:`cnnjax.ops.conv`), as :class:`cnnjax.layers.Conv`.

    Input ``(N, *spatial, in_features)``; output ``(N, *spatial', features)``. Parameters:
    ``kernel`` ``(*kernel_size, in_features // groups, features)`` (default He normal) and
    ``bias`` ``(features,)`` (default zeros).
    """

    _OP_ARGS = ("stride", "padding", "dilation", "groups", "impl")

    def __init__(
        self,
        in_features: int,
        features: int,
        kernel_size: Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: Padding = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        use_bias: bool = True,
        kernel_init: Initializer = _HE_NORMAL,
        bias_init: Initializer = nn.initializers.zeros,
        impl: str = "custom",
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        *,
        rngs: nnx.Rngs,
        **op_kwargs: Any,
    ):
        self.kernel_size = _kernel_tuple(kernel_size, "Conv")
        _check_groups("Conv", in_features, features, groups)
        self._store(locals(), op_kwargs)
        self.in_features, self.features = in_features, features
        self.use_bias, self.dtype, self.param_dtype = use_bias, dtype, param_dtype
        self.bias_init = bias_init
        shape = (*self.kernel_size, in_features // groups, features)
        self.kernel = _param(kernel_init, rngs, shape, param_dtype)
        self.bias = _optional_bias(self, features, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        _check_rank(x, len(self.kernel_size), "Conv")
        x, kernel, bias = promote_dtype(x, self.kernel[...], _value(self.bias), dtype=self.dtype)
        return ops.conv(x, kernel, bias, **self._op_kwargs())


class ConvTranspose(_Layer):
    """N-d transposed convolution (:func:`cnnjax.ops.conv_transpose`), as
    :class:`cnnjax.layers.ConvTranspose`.

    Input ``(N, *spatial, in_features)``; output ``(N, *spatial', features)``. Parameters:
    ``kernel`` ``(*kernel_size, in_features, features // groups)`` and ``bias`` ``(features,)``;
    ``kernel_init=None`` is He normal with ``fan_in = prod(kernel) * in_features / groups``.
    """

    _OP_ARGS = ("stride", "padding", "output_padding", "dilation", "groups", "impl")

    def __init__(
        self,
        in_features: int,
        features: int,
        kernel_size: Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: Padding = 0,
        output_padding: int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        use_bias: bool = True,
        kernel_init: Initializer | None = None,
        bias_init: Initializer = nn.initializers.zeros,
        impl: str = "custom",
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        *,
        rngs: nnx.Rngs,
        **op_kwargs: Any,
    ):
        self.kernel_size = _kernel_tuple(kernel_size, "ConvTranspose")
        _check_groups("ConvTranspose", in_features, features, groups)
        self._store(locals(), op_kwargs)
        self.in_features, self.features = in_features, features
        self.use_bias, self.dtype, self.param_dtype = use_bias, dtype, param_dtype
        self.bias_init = bias_init
        # variance_scaling sees fan_in = prod(kernel) * C_in; a unit only sums C_in / groups.
        kernel_init = kernel_init or he_normal(2.0 * groups)
        shape = (*self.kernel_size, in_features, features // groups)
        self.kernel = _param(kernel_init, rngs, shape, param_dtype)
        self.bias = _optional_bias(self, features, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        _check_rank(x, len(self.kernel_size), "ConvTranspose")
        x, kernel, bias = promote_dtype(x, self.kernel[...], _value(self.bias), dtype=self.dtype)
        return ops.conv_transpose(x, kernel, bias, **self._op_kwargs())


class DepthwiseConv(_Layer):
    """Depthwise convolution (:func:`cnnjax.ops.depthwise_conv`), as
    :class:`cnnjax.layers.DepthwiseConv`.

    Input ``(N, *spatial, in_features)``; output ``(N, *spatial', in_features * depth_multiplier)``.
    Parameters: ``kernel`` ``(*kernel_size, 1, in_features * depth_multiplier)`` and ``bias``.
    """

    _OP_ARGS = ("stride", "padding", "dilation", "impl")

    def __init__(
        self,
        in_features: int,
        kernel_size: Sequence[int],
        depth_multiplier: int = 1,
        stride: int | Sequence[int] = 1,
        padding: Padding = 0,
        dilation: int | Sequence[int] = 1,
        use_bias: bool = True,
        kernel_init: Initializer = _HE_NORMAL,
        bias_init: Initializer = nn.initializers.zeros,
        impl: str = "custom",
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        *,
        rngs: nnx.Rngs,
        **op_kwargs: Any,
    ):
        self.kernel_size = _kernel_tuple(kernel_size, "DepthwiseConv")
        self._store(locals(), op_kwargs)
        self.in_features, self.depth_multiplier = in_features, depth_multiplier
        self.use_bias, self.dtype, self.param_dtype = use_bias, dtype, param_dtype
        self.bias_init = bias_init
        out_features = in_features * depth_multiplier
        shape = (*self.kernel_size, 1, out_features)
        self.kernel = _param(kernel_init, rngs, shape, param_dtype)
        self.bias = _optional_bias(self, out_features, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        _check_rank(x, len(self.kernel_size), "DepthwiseConv")
        x, kernel, bias = promote_dtype(x, self.kernel[...], _value(self.bias), dtype=self.dtype)
        return ops.depthwise_conv(x, kernel, bias, **self._op_kwargs())


class SeparableConv(_Layer):
    """Depthwise then 1×1 convolution (:func:`cnnjax.ops.separable_conv`), as
    :class:`cnnjax.layers.SeparableConv`.

    Parameters: ``depthwise_kernel`` ``(*kernel_size, 1, in_features * depth_multiplier)``,
    ``pointwise_kernel`` ``(1, ..., 1, in_features * depth_multiplier, features)``, ``bias``.
    """

    _OP_ARGS = ("stride", "padding", "dilation", "impl")

    def __init__(
        self,
        in_features: int,
        features: int,
        kernel_size: Sequence[int],
        depth_multiplier: int = 1,
        stride: int | Sequence[int] = 1,
        padding: Padding = 0,
        dilation: int | Sequence[int] = 1,
        use_bias: bool = True,
        depthwise_init: Initializer = _HE_NORMAL,
        pointwise_init: Initializer = _HE_NORMAL,
        bias_init: Initializer = nn.initializers.zeros,
        impl: str = "custom",
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        *,
        rngs: nnx.Rngs,
        **op_kwargs: Any,
    ):
        self.kernel_size = _kernel_tuple(kernel_size, "SeparableConv")
        self._store(locals(), op_kwargs)
        self.in_features, self.features = in_features, features
        self.depth_multiplier = depth_multiplier
        self.use_bias, self.dtype, self.param_dtype = use_bias, dtype, param_dtype
        self.bias_init = bias_init
        mid = in_features * depth_multiplier
        ones = (1,) * len(self.kernel_size)
        self.depthwise_kernel = _param(
            depthwise_init, rngs, (*self.kernel_size, 1, mid), param_dtype
        )
        self.pointwise_kernel = _param(pointwise_init, rngs, (*ones, mid, features), param_dtype)
        self.bias = _optional_bias(self, features, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        _check_rank(x, len(self.kernel_size), "SeparableConv")
        x, w_depthwise, w_pointwise, bias = promote_dtype(
            x,
            self.depthwise_kernel[...],
            self.pointwise_kernel[...],
            _value(self.bias),
            dtype=self.dtype,
        )
        return ops.separable_conv(x, w_depthwise, w_pointwise, bias, **self._op_kwargs())


class ConnectionTableConv(_Layer):
    """Convolution in which output map ``j`` sees only the input maps ``i`` with ``table[i][j]``,
    as :class:`cnnjax.layers.ConnectionTableConv` (LeNet-5's C3).

    The table fixes the input channels, so there is no ``in_features`` argument. Parameters:
    ``kernel`` ``(*kernel_size, n_connections)`` (connections ordered by output map, then input
    map; default init LeCun 1998 uniform with each output map's own fan-in) and ``bias``
    ``(C_out,)``. The dense kernel is rebuilt each call and passed to :func:`cnnjax.ops.conv`.
    """

    _OP_ARGS = ("stride", "padding", "impl")

    def __init__(
        self,
        table: Sequence[Sequence[bool]],
        kernel_size: Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: Padding = 0,
        use_bias: bool = True,
        kernel_init: Initializer | None = None,
        bias_init: Initializer = nn.initializers.zeros,
        impl: str = "custom",
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        *,
        rngs: nnx.Rngs,
        **op_kwargs: Any,
    ):
        self.kernel_size = _kernel_tuple(kernel_size, "ConnectionTableConv")
        self._store(locals(), op_kwargs)
        self.table = tuple(tuple(bool(v) for v in row) for row in table)
        self.use_bias, self.dtype, self.param_dtype = use_bias, dtype, param_dtype
        self.bias_init = bias_init
        dense = np.asarray(self.table, dtype=bool)
        outs, ins = np.nonzero(dense.T)  # ordered by output map, then input map
        if kernel_init is None:
            fan_in = math.prod(self.kernel_size) * dense.sum(axis=0)[outs]

            def kernel_init(key, shape, dtype=jnp.float32):
                bound = jnp.asarray(2.4 / fan_in, dtype)
                return jax.random.uniform(key, shape, dtype, -1.0, 1.0) * bound

        shape = (*self.kernel_size, len(outs))
        self.kernel = _param(kernel_init, rngs, shape, param_dtype)
        self.bias = _optional_bias(self, dense.shape[1], rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        _check_rank(x, len(self.kernel_size), "ConnectionTableConv")
        dense = np.asarray(self.table, dtype=bool)
        in_features, features = dense.shape
        if x.shape[-1] != in_features:
            raise ValueError(
                f"ConnectionTableConv: the table has {in_features} input maps, "
                f"the input has {x.shape[-1]} channels"
            )
        outs, ins = np.nonzero(dense.T)
        x, kernel, bias = promote_dtype(x, self.kernel[...], _value(self.bias), dtype=self.dtype)
        full = jnp.zeros((*self.kernel_size, in_features * features), kernel.dtype)
        full = full.at[..., ins * features + outs].set(kernel)
        full = full.reshape(*self.kernel_size, in_features, features)
        return ops.conv(x, full, bias, **self._op_kwargs())


class TrainableSubsampling(nnx.Module):
    """LeNet-5's subsampling layer (S2, S4): ``y = a_c * mean_window(x) + b_c``, as
    :class:`cnnjax.layers.TrainableSubsampling` (:func:`cnnjax.ops.avg_pool` then the affine map).

    Parameters ``coefficient`` ``(in_features,)`` (init ones) and ``bias`` ``(in_features,)``
    (init zeros).
    """

    def __init__(
        self,
        in_features: int,
        window: int | Sequence[int] = 2,
        coefficient_init: Initializer = nn.initializers.ones,
        bias_init: Initializer = nn.initializers.zeros,
        impl: str = "custom",
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        *,
        rngs: nnx.Rngs,
    ):
        self.in_features, self.window = in_features, _static(window)
        self.impl, self.dtype, self.param_dtype = impl, dtype, param_dtype
        self.coefficient = _param(coefficient_init, rngs, (in_features,), param_dtype)
        self.bias = _param(bias_init, rngs, (in_features,), param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        window = self.window
        window = (window,) * (x.ndim - 2) if isinstance(window, int) else window
        x, coefficient, bias = promote_dtype(
            x, self.coefficient[...], self.bias[...], dtype=self.dtype
        )
        return ops.avg_pool(x, window, window, impl=self.impl) * coefficient + bias


class BatchNorm(nnx.BatchNorm):
    """Batch normalisation (Ioffe & Szegedy 2015), the twin of :class:`cnnjax.layers.BatchNorm`:
    ``flax.nnx.BatchNorm``'s arguments and variables with the Linen layer's computation, so the
    two APIs agree exactly. ``x``: ``(..., C)`` with ``C = num_features`` on ``axis``.

    * In training (``use_running_average=False``) ``<= 1`` value per channel (``N * H * W``)
      raises the same ``ValueError`` as the Linen layer and PyTorch (unless ``axis_name``).
    * As ``flax.linen.BatchNorm`` (``force_float32_reductions``): batch mean and biased variance
      are computed in at least float32 (a bf16/f16 input is reduced in float32); the running
      ``mean``/``var`` (created float32) and ``scale``/``bias`` (``param_dtype``) are used as
      stored, and only the output is cast to ``dtype``. (``flax.nnx.BatchNorm`` first casts
      them to ``dtype``, so a bf16 model there normalises with bf16-rounded running averages.)
    * Running averages ``ra = momentum * ra + (1 - momentum) * batch`` replace the stored arrays,
      as Linen's do (a float64 input makes them float64; ``flax.nnx.BatchNorm`` writes into
      the float32 arrays). ``momentum=0.9`` is PyTorch's ``momentum=0.1``.

    Variables ``scale``, ``bias`` (``params``) and ``mean``, ``var`` (``batch_stats``), each
    ``(num_features,)``, have the Linen layer's names, so :func:`cnnjax.nnx.from_linen` and
    :func:`cnnjax.nnx.to_linen` map them one to one.
    """

    def __call__(
        self, x: jax.Array, use_running_average: bool | None = None, *, mask: Any = None
    ) -> jax.Array:
        running = first_from(
            use_running_average,
            self.use_running_average,
            error_msg="BatchNorm: pass use_running_average, or call model.train() / model.eval()",
        )
        _check_batch_norm_count(x, self.axis, self.axis_name, running)
        axes = self.axis if isinstance(self.axis, Sequence) else (self.axis,)
        feature_axes = tuple(sorted(a % x.ndim for a in axes))
        reduction_axes = tuple(i for i in range(x.ndim) if i not in feature_axes)
        if running:
            mean, var = self.mean[...], self.var[...]
        else:
            mean, var = _compute_stats(
                x,
                reduction_axes,
                dtype=self.dtype,
                axis_name=self.axis_name,
                axis_index_groups=self.axis_index_groups,
                use_fast_variance=self.use_fast_variance,
                mask=mask,
            )
            for stored, batch in ((self.mean, mean), (self.var, var)):
                new = self.momentum * stored[...] + (1 - self.momentum) * batch
                stored.set_value(jax.lax.stop_gradient(new))
        scale = None if self.scale is None else self.scale[...]
        bias = None if self.bias is None else self.bias[...]
        return _normalize(
            x, mean, var, scale, bias, reduction_axes, feature_axes, self.dtype, self.epsilon
        )


class _Stateless(nnx.Module):
    """A layer without parameters: it keeps the Linen layer of the same name (an immutable
    description of the op call) and applies it, so both APIs run literally the same code."""

    _LINEN: type[nn.Module]

    def __init__(self, *args: Any, **kwargs: Any):
        self.layer = self._LINEN(*_static(args), **{k: _static(v) for k, v in kwargs.items()})

    def __getattr__(self, name: str) -> Any:
        # The Linen layer's fields (window, stride, impl, …) read as this layer's attributes.
        if name != "layer" and "layer" in vars(self):
            return getattr(vars(self)["layer"], name)
        raise AttributeError(name)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.layer.apply({}, x)


class MaxPool(_Stateless):
    """Max pooling (:func:`cnnjax.ops.max_pool`); arguments as :class:`cnnjax.layers.MaxPool`."""

    _LINEN = linen_layers.MaxPool


class AvgPool(_Stateless):
    """Average pooling (:func:`cnnjax.ops.avg_pool`); as :class:`cnnjax.layers.AvgPool`."""

    _LINEN = linen_layers.AvgPool


class LpPool(_Stateless):
    """Power-average pooling (:func:`cnnjax.ops.lp_pool`); as :class:`cnnjax.layers.LpPool`."""

    _LINEN = linen_layers.LpPool


class AdaptiveAvgPool(_Stateless):
    """Average pooling to ``output_size`` with PyTorch's windows; as
    :class:`cnnjax.layers.AdaptiveAvgPool`."""

    _LINEN = linen_layers.AdaptiveAvgPool


class LocalResponseNorm(_Stateless):
    """Local response normalisation (:func:`cnnjax.ops.local_response_norm`); as
    :class:`cnnjax.layers.LocalResponseNorm`."""

    _LINEN = linen_layers.LocalResponseNorm


class LocalContrastNorm(_Stateless):
    """Local contrast normalisation (:func:`cnnjax.ops.local_contrast_norm`); as
    :class:`cnnjax.layers.LocalContrastNorm`."""

    _LINEN = linen_layers.LocalContrastNorm
