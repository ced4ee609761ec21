"""The building blocks every family shares, bound once: layers, ``conv_bn_act``, shortcuts, heads.

A family does not re-declare its plumbing (``impl``, ``precision``, ``dtype``, the BatchNorm
axis name and constants) nor pass it to each layer: :class:`Builders` holds it once and makes
the layers — ``conv``, ``dense``, ``norm``, pools — the way Flax's ImageNet example passes
``conv`` and ``norm`` partials to its blocks. Every family and public block subclasses
:class:`BuilderModule`, whose fields are the plumbing (declared here only) and whose
:attr:`~BuilderModule.kit` is the :class:`Builders` its layers come from; a parent passes its
kit to its blocks as one argument, ``builders=self.kit``.

A new normalisation (or conv) touches this file only: subclass :class:`Builders`, override
``norm``, and pass ``builders=MyBuilders()`` to a model::

    >>> import jax, jax.numpy as jnp
    >>> from cnnjax.models import ResNet, ResNetBlock
    >>> from cnnjax.models.blocks import Builders
    >>> model = ResNet(stage_sizes=(1,), stage_widths=(8,), stem="cifar", num_classes=3,
    ...                builders=Builders(impl="xla"))
    >>> v = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)
    >>> model.apply(v, jnp.zeros((2, 8, 8, 3)), train=False).shape
    (2, 3)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax import ops
from cnnjax.layers import (
    AdaptiveAvgPool,
    AvgPool,
    BatchNorm,
    ConnectionTableConv,
    Conv,
    ConvTranspose,
    DepthwiseConv,
    Impl,
    LocalResponseNorm,
    MaxPool,
    TrainableSubsampling,
)

__all__ = [
    "PLUMBING",
    "BuilderModule",
    "Builders",
    "classifier",
    "conv_bn_act",
    "mlp_head",
]

KernelSize = int | Sequence[int]


def _pair(size: KernelSize) -> tuple[int, ...]:
    return (size, size) if isinstance(size, int) else tuple(size)


@dataclasses.dataclass(frozen=True)
class Builders:
    """The layers of a model with its plumbing bound once (frozen, hashable: a module field).

    ``impl`` goes to every ``cnnjax.ops`` call, ``precision`` to every convolution (forward and
    backward) and dense layer, ``dtype`` (compute dtype; parameters stay float32) to every
    layer; ``axis_name``, ``bn_momentum`` (flax's: 0.9 is PyTorch's 0.1) and ``bn_epsilon`` to
    every :meth:`norm`. Each method returns an unbound Linen layer: call it inside a compact
    ``__call__`` and the layer becomes a submodule of that module (keyword ``name=`` names it).
    Kernel and window sizes may be an int (square) or a tuple.
    """

    impl: Impl = "custom"
    precision: Any = None
    dtype: Any = None
    axis_name: str | None = None
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5

    def conv(self, features: int, kernel_size: KernelSize, **kwargs: Any) -> Conv:
        """:class:`~cnnjax.layers.Conv` (``stride``, ``padding``, ``use_bias``, inits, ...)."""
        return Conv(features, _pair(kernel_size), **self._conv_kwargs(), **kwargs)

    def conv_transpose(
        self, features: int, kernel_size: KernelSize, **kwargs: Any
    ) -> ConvTranspose:
        """:class:`~cnnjax.layers.ConvTranspose`."""
        return ConvTranspose(features, _pair(kernel_size), **self._conv_kwargs(), **kwargs)

    def depthwise_conv(self, kernel_size: KernelSize, **kwargs: Any) -> DepthwiseConv:
        """:class:`~cnnjax.layers.DepthwiseConv`."""
        return DepthwiseConv(_pair(kernel_size), **self._conv_kwargs(), **kwargs)

    def connection_table_conv(
        self, table: Sequence[Sequence[bool]], kernel_size: KernelSize, **kwargs: Any
    ) -> ConnectionTableConv:
        """:class:`~cnnjax.layers.ConnectionTableConv` (LeNet-5's C3)."""
        return ConnectionTableConv(table, _pair(kernel_size), **self._conv_kwargs(), **kwargs)

    def dense(self, features: int, **kwargs: Any) -> nn.Dense:
        """``flax.linen.Dense`` with this ``dtype`` and ``precision``."""
        return nn.Dense(features, dtype=self.dtype, precision=self.precision, **kwargs)

    def norm(self, train: bool, **kwargs: Any) -> nn.Module:
        """:class:`~cnnjax.layers.BatchNorm`: batch statistics when ``train``, else running."""
        return BatchNorm(
            use_running_average=not train,
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            axis_name=self.axis_name,
            dtype=self.dtype,
            **kwargs,
        )

    def max_pool(self, window: KernelSize, **kwargs: Any) -> MaxPool:
        """:class:`~cnnjax.layers.MaxPool`."""
        return MaxPool(_pair(window), **self._pool_kwargs(), **kwargs)

    def avg_pool(self, window: KernelSize, **kwargs: Any) -> AvgPool:
        """:class:`~cnnjax.layers.AvgPool`."""
        return AvgPool(_pair(window), **self._pool_kwargs(), **kwargs)

    def adaptive_avg_pool(self, output_size: KernelSize, **kwargs: Any) -> AdaptiveAvgPool:
        """:class:`~cnnjax.layers.AdaptiveAvgPool`."""
        return AdaptiveAvgPool(_pair(output_size), **self._pool_kwargs(), **kwargs)

    def lrn(self, size: int, **kwargs: Any) -> LocalResponseNorm:
        """:class:`~cnnjax.layers.LocalResponseNorm` (``alpha``, ``beta``, ``k``)."""
        return LocalResponseNorm(size, **self._pool_kwargs(), **kwargs)

    def subsampling(self, window: int, **kwargs: Any) -> TrainableSubsampling:
        """:class:`~cnnjax.layers.TrainableSubsampling` (LeNet-5's S2 and S4)."""
        return TrainableSubsampling(window, **self._pool_kwargs(), **kwargs)

    def global_avg_pool(self, x: jax.Array) -> jax.Array:
        """:func:`cnnjax.ops.global_avg_pool`, ``(N, *spatial, C) -> (N, C)``."""
        return ops.global_avg_pool(x, impl=self.impl)

    def _conv_kwargs(self) -> dict[str, Any]:
        return {"impl": self.impl, "dtype": self.dtype, "precision": self.precision}

    def _pool_kwargs(self) -> dict[str, Any]:
        return {"impl": self.impl, "dtype": self.dtype}


#: The plumbing fields of :class:`BuilderModule`, in :class:`Builders`' order.
PLUMBING = tuple(f.name for f in dataclasses.fields(Builders))
_DEFAULTS = Builders()


def _plumbing_field(default: Any) -> Any:
    # keyword-only, so families may declare fields without defaults after them
    return dataclasses.field(default=default, kw_only=True)


class BuilderModule(nn.Module):
    """Base of every family and public block: the plumbing, declared once, and its kit.

    The fields are :class:`Builders`' (``impl``, ``precision``, ``dtype``, ``axis_name``,
    ``bn_momentum``, ``bn_epsilon``), keyword-only, plus ``builders`` (a whole
    :class:`Builders`, e.g. a subclass with another ``norm``). :attr:`kit` is ``builders``
    (default ``Builders()``) with every plumbing field that was set to a non-default value
    replacing its own, so ``ResNet(..., impl="xla")`` and ``model.clone(axis_name="batch")``
    keep working.
    """

    impl: Impl = _plumbing_field(_DEFAULTS.impl)
    precision: Any = _plumbing_field(_DEFAULTS.precision)
    dtype: Any = _plumbing_field(_DEFAULTS.dtype)
    axis_name: str | None = _plumbing_field(_DEFAULTS.axis_name)
    bn_momentum: float = _plumbing_field(_DEFAULTS.bn_momentum)
    bn_epsilon: float = _plumbing_field(_DEFAULTS.bn_epsilon)
    builders: Builders | None = _plumbing_field(None)

    @property
    def kit(self) -> Builders:
        """The :class:`Builders` this module's layers (and its blocks') come from."""
        base = _DEFAULTS if self.builders is None else self.builders
        changed = {f: getattr(self, f) for f in PLUMBING if _is_set(self, f)}
        return dataclasses.replace(base, **changed) if changed else base


def _is_set(module: BuilderModule, field: str) -> bool:
    value, default = getattr(module, field), getattr(_DEFAULTS, field)
    return value is not default and value != default


def conv_bn_act(
    b: Builders,
    x: jax.Array,
    features: int,
    kernel_size: KernelSize,
    *,
    train: bool,
    name: str,
    norm_name: str | None,
    act: Callable[[jax.Array], jax.Array] | None = nn.relu,
    **conv_kwargs: Any,
) -> jax.Array:
    """``act(norm(conv(x)))``: the layer of VGG-BN, SegNet, ResNet's and DenseNet's stems.

    ``(N, H, W, C) -> (N, H', W', features)``. The conv (submodule ``name``) takes
    ``conv_kwargs`` (``stride``, ``padding``, ``use_bias``, inits); the norm (``norm_name``) is
    left out when ``norm_name`` is ``None``, the activation when ``act`` is ``None``. Called
    inside a compact module, both become that module's submodules (siblings), the paths that
    checkpoints and torchvision weights use.
    """
    x = b.conv(features, kernel_size, name=name, **conv_kwargs)(x)
    if norm_name is not None:
        x = b.norm(train, name=norm_name)(x)
    return x if act is None else act(x)


def option_a_shortcut(x: jax.Array, features: int, stride: int) -> jax.Array:
    """The paper's option-A shortcut: identity, subsampled by ``stride``, new channels zero.

    ``(N, H, W, C) -> (N, ceil(H/s), ceil(W/s), features)`` with ``features >= C``: takes every
    ``stride``-th pixel (the same grid as a stride-``s`` conv with padding 1) and appends
    ``features - C`` channels of zeros, so it has no parameters (He et al. 2016, §3.3 and §4.2).
    Raises ValueError when ``features < C``.
    """
    if features < x.shape[-1]:
        raise ValueError(f"option-A shortcut cannot reduce channels: {x.shape[-1]} -> {features}")
    if stride > 1:
        x = x[:, ::stride, ::stride, :]
    pad = features - x.shape[-1]
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, pad))) if pad else x


def classifier(
    b: Builders,
    x: jax.Array,
    num_classes: int,
    *,
    name: str,
    train: bool = False,
    dropout_rate: float | None = None,
    **dense_kwargs: Any,
) -> jax.Array:
    """The head of the fully convolutional families: global average pool, dropout, dense.

    ``(N, H, W, C) -> (N, num_classes)``; dropout (``dropout_rate``, before the dense layer
    ``name``) only when a rate is given (ResNet and DenseNet have none).
    """
    x = b.global_avg_pool(x)
    if dropout_rate is not None:
        x = nn.Dropout(dropout_rate, deterministic=not train)(x)
    return b.dense(num_classes, name=name, **dense_kwargs)(x)


def mlp_head(
    b: Builders,
    x: jax.Array,
    widths: Sequence[int],
    names: Sequence[str],
    *,
    train: bool,
    dropout_rate: float,
    dropout_first: bool = False,
    hidden_bias_init: nn.initializers.Initializer = nn.initializers.zeros,
    **dense_kwargs: Any,
) -> jax.Array:
    """Dense layers ``names`` of ``widths`` (the last without ReLU and dropout) on ``(N, F)``.

    Every hidden layer is ReLU then dropout (AlexNet's paper, ZFNet, VGG), or dropout first
    when ``dropout_first`` (torchvision's AlexNet); hidden biases start at
    ``hidden_bias_init``. Returns ``(N, widths[-1])``.
    """
    *hidden, last = zip(widths, names, strict=True)
    for width, name in hidden:
        if dropout_first:
            x = nn.Dropout(dropout_rate, deterministic=not train)(x)
        x = b.dense(width, name=name, bias_init=hidden_bias_init, **dense_kwargs)(x)
        x = nn.relu(x)
        if not dropout_first:
            x = nn.Dropout(dropout_rate, deterministic=not train)(x)
    return b.dense(last[0], name=last[1], **dense_kwargs)(x)
