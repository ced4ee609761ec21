"""Every registered model as a Flax NNX module: native NNX for the plain stacks, the Linen model
behind :class:`flax.nnx.bridge.ToNNX` for the families built from nested blocks.

Use :func:`cnnjax.models.create_model` with ``api="nnx"``::

    >>> from flax import nnx
    >>> from cnnjax.models import create_model
    >>> model = create_model("lenet5", api="nnx", rngs=nnx.Rngs(0))
    >>> model.eval()  # BatchNorm running averages, no dropout; model.train() for the opposite
    >>> model(jnp.zeros((2, 32, 32, 1))).shape
    (2, 10)

* Native (:data:`NATIVE`): :class:`LeNet5`, :class:`VGG` (``vgg*``, ``vgg*_bn``),
  :class:`AllConvNet`, :class:`NiN`, :class:`AlexNet`, :class:`AlexNetTorchvision`,
  :class:`ZFNet`. They take the Linen model's fields as keyword arguments, plus ``input_shape``
  ``(H, W, C)`` (NNX creates parameters eagerly, so the input channels and the flattened size
  before the dense head must be known; default: the registry's paper input shape) and ``rngs``.
  Their attributes carry the Linen submodule names (``C1``, ``conv0``, ``bn0``, ``fc1``,
  ``Conv_0``, …), so the NNX state has the Linen variables' tree.
* Every other model (ResNet, DenseNet, GoogLeNet, MobileNet, and any family registered later):
  :class:`LinenModel`, an :class:`flax.nnx.Module` holding the Linen model in
  :class:`flax.nnx.bridge.ToNNX` under the attribute ``linen``; ``train()``/``eval()`` select
  the Linen ``train`` flag and batch statistics are written back in training mode.

Both kinds are ordinary NNX modules: ``nnx.Optimizer(model, tx, wrt=nnx.Param)``, ``nnx.jit``,
``nnx.grad``, ``nnx.state``. :mod:`cnnjax.nnx.convert` moves weights between them and Linen
variables. Modules start in training mode, as NNX layers do.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.nnx import bridge

from cnnjax import models as linen_models
from cnnjax import ops
from cnnjax.models import alexnet as linen_alexnet
from cnnjax.models import zfnet as linen_zfnet
from cnnjax.models.lenet import LENET5_C3_TABLE, scaled_tanh
from cnnjax.models.registry import ModelInfo
from cnnjax.nnx.layers import (
    AdaptiveAvgPool,
    AvgPool,
    BatchNorm,
    ConnectionTableConv,
    Conv,
    LocalResponseNorm,
    MaxPool,
    TrainableSubsampling,
    check_input_size,
    lecun1998_uniform,
)

__all__ = [
    "NATIVE",
    "VGG",
    "AlexNet",
    "AlexNetTorchvision",
    "AllConvNet",
    "LeNet5",
    "LinenModel",
    "NiN",
    "ZFNet",
    "from_linen_module",
]

Shape = tuple[int, int, int]


def _flat_size(features: Callable[[jax.Array], jax.Array], input_shape: Shape) -> int:
    """Size per example of ``features(x)``, ``x`` of shape ``(1, *input_shape)`` (traced only)."""
    out = jax.eval_shape(features, jax.ShapeDtypeStruct((1, *input_shape), jnp.float32))
    return int(np.prod(out.shape[1:]))


def _dropout(rate: float, rngs: nnx.Rngs) -> nnx.Dropout:
    return nnx.Dropout(rate, rngs=rngs)


class LeNet5(nnx.Module):
    """LeNet-5 (LeCun et al. 1998), as :class:`cnnjax.models.LeNet5`. ``(N, 32, 32, 1)`` in,
    logits ``(N, num_classes)`` out; ``output="softmax"`` or ``"rbf"`` (fixed ±1 codes)."""

    min_input_size = 32

    def __init__(
        self,
        num_classes: int = 10,
        impl: str = "custom",
        dtype: Any = None,
        output: str = "softmax",
        rbf_seed: int = 0,
        *,
        input_shape: Shape = (32, 32, 1),
        rngs: nnx.Rngs,
        **op_kwargs: Any,
    ):
        if output not in ("softmax", "rbf"):
            raise ValueError(f'LeNet5: output must be "softmax" or "rbf", got {output!r}')
        self.num_classes, self.output_kind, self.rbf_seed = num_classes, output, rbf_seed
        init = lecun1998_uniform()
        common = {"impl": impl, "dtype": dtype}
        channels = input_shape[-1]
        self.C1 = Conv(channels, 6, (5, 5), kernel_init=init, **common, rngs=rngs, **op_kwargs)
        self.S2 = TrainableSubsampling(6, 2, **common, rngs=rngs)
        self.C3 = ConnectionTableConv(LENET5_C3_TABLE, (5, 5), **common, rngs=rngs, **op_kwargs)
        self.S4 = TrainableSubsampling(16, 2, **common, rngs=rngs)
        self.C5 = Conv(16, 120, (5, 5), kernel_init=init, **common, rngs=rngs, **op_kwargs)
        flat = _flat_size(self._features, input_shape)
        self.F6 = nnx.Linear(flat, 84, kernel_init=init, dtype=dtype, rngs=rngs)
        self.output = (
            nnx.Linear(84, num_classes, kernel_init=init, dtype=dtype, rngs=rngs)
            if output == "softmax"
            else None  # the RBF codes are fixed, not parameters
        )

    def _features(self, x: jax.Array) -> jax.Array:
        check_input_size(x, model="LeNet5 (lenet5)", min_size=self.min_input_size)
        for layer in (self.C1, self.S2, self.C3, self.S4, self.C5):
            x = scaled_tanh(layer(x))
        return x.reshape(x.shape[0], -1)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = scaled_tanh(self.F6(self._features(x)))
        if self.output is not None:
            return self.output(x)
        codes = np.random.default_rng(self.rbf_seed).choice([-1.0, 1.0], (self.num_classes, 84))
        codes = jnp.asarray(codes, x.dtype)
        return -jnp.sum((x[:, None, :] - codes[None, :, :]) ** 2, axis=-1)


class VGG(nnx.Module):
    """VGG (Simonyan & Zisserman 2015), as :class:`cnnjax.models.VGG`: ``config`` channels and
    ``"M"`` pools, optional batch norm, torchvision's 7×7 adaptive pool and dense head."""

    min_input_size = 32

    def __init__(
        self,
        config: Sequence[int | str],
        num_classes: int = 1000,
        impl: str = "custom",
        dtype: Any = None,
        batch_norm: bool = False,
        head_width: int = 4096,
        dropout_rate: float = 0.5,
        bn_axis_name: str | None = None,
        *,
        input_shape: Shape = (224, 224, 3),
        rngs: nnx.Rngs,
        **op_kwargs: Any,
    ):
        self.config, self.batch_norm = tuple(config), batch_norm
        depth = sum(item != "M" for item in self.config) + 3
        self.model_name = f"vgg{depth}{'_bn' if batch_norm else ''}"
        common = {"impl": impl, "dtype": dtype}
        layer = {**common, "rngs": rngs, **op_kwargs}
        init = nn.initializers.glorot_uniform()
        channels = input_shape[-1]
        self.pool = MaxPool((2, 2), stride=2, **common)
        for i, item in enumerate(self.config):
            if item == "M":
                continue
            conv = Conv(channels, item, (3, 3), padding=1, kernel_init=init, **layer)
            setattr(self, f"conv{i}", conv)
            if batch_norm:
                bn = BatchNorm(
                    item,
                    momentum=0.9,
                    epsilon=1e-5,
                    dtype=dtype,
                    axis_name=bn_axis_name,
                    rngs=rngs,
                )
                setattr(self, f"bn{i}", bn)
            channels = item
        self.head_pool = AdaptiveAvgPool((7, 7), **common)
        width = 7 * 7 * channels
        for name in ("fc1", "fc2"):
            setattr(
                self, name, nnx.Linear(width, head_width, kernel_init=init, dtype=dtype, rngs=rngs)
            )
            width = head_width
        self.dropout1 = _dropout(dropout_rate, rngs)
        self.dropout2 = _dropout(dropout_rate, rngs)
        self.fc3 = nnx.Linear(width, num_classes, kernel_init=init, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        check_input_size(x, model=f"VGG ({self.model_name})", min_size=self.min_input_size)
        for i, item in enumerate(self.config):
            if item == "M":
                x = self.pool(x)
                continue
            x = getattr(self, f"conv{i}")(x)
            if self.batch_norm:
                x = getattr(self, f"bn{i}")(x)
            x = nn.relu(x)
        x = self.head_pool(x).reshape(x.shape[0], -1)
        x = self.dropout1(nn.relu(self.fc1(x)))
        x = self.dropout2(nn.relu(self.fc2(x)))
        return self.fc3(x)


class AllConvNet(nnx.Module):
    """All-CNN-C (Springenberg et al. 2015), as :class:`cnnjax.models.AllConvNet`. The nine
    convs are ``Conv_0`` … ``Conv_8`` (Linen's automatic names)."""

    min_input_size = 9

    def __init__(
        self,
        num_classes: int = 10,
        impl: str = "custom",
        dtype: Any = None,
        widths: tuple[int, int] = (96, 192),
        final_relu: bool = True,
        input_dropout: float = 0.2,
        dropout_rate: float = 0.5,
        *,
        input_shape: Shape = (32, 32, 3),
        rngs: nnx.Rngs,
        **op_kwargs: Any,
    ):
        self.impl, self.final_relu = impl, final_relu
        common = {"impl": impl, "dtype": dtype, "rngs": rngs, **op_kwargs}
        specs = []  # (features, kernel, stride, padding)
        for width in widths:
            specs += [(width, 3, 1, 1), (width, 3, 1, 1), (width, 3, 2, 1)]
        specs += [(widths[-1], 3, 1, 0), (widths[-1], 1, 1, 0), (num_classes, 1, 1, 0)]
        channels = input_shape[-1]
        for i, (features, kernel, stride, padding) in enumerate(specs):
            conv = Conv(channels, features, (kernel, kernel), stride, padding, **common)
            setattr(self, f"Conv_{i}", conv)
            channels = features
        self.input_dropout = _dropout(input_dropout, rngs)
        self.dropout1 = _dropout(dropout_rate, rngs)
        self.dropout2 = _dropout(dropout_rate, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        check_input_size(x, model="AllConvNet (allconv_c)", min_size=self.min_input_size)
        x = self.input_dropout(x)
        for stage, dropout in enumerate((self.dropout1, self.dropout2)):
            for i in range(3 * stage, 3 * stage + 3):
                x = nn.relu(getattr(self, f"Conv_{i}")(x))
            x = dropout(x)
        x = nn.relu(self.Conv_7(nn.relu(self.Conv_6(x))))
        x = self.Conv_8(x)
        if self.final_relu:
            x = nn.relu(x)
        return ops.global_avg_pool(x, impl=self.impl)


class MLPConvBlock(nnx.Module):
    """An mlpconv block (Lin et al. 2014), as :class:`cnnjax.models.MLPConvBlock`; its convs are
    ``Conv_0`` … (Linen's automatic names)."""

    def __init__(
        self,
        in_features: int,
        features: tuple[int, ...],
        kernel_size: int,
        impl: str = "custom",
        dtype: Any = None,
        final_relu: bool = True,
        *,
        rngs: nnx.Rngs,
        **op_kwargs: Any,
    ):
        self.depth, self.final_relu = len(features), final_relu
        for i, out in enumerate(features):
            kernel = kernel_size if i == 0 else 1
            conv = Conv(
                in_features,
                out,
                (kernel, kernel),
                padding=kernel // 2,
                impl=impl,
                dtype=dtype,
                rngs=rngs,
                **op_kwargs,
            )
            setattr(self, f"Conv_{i}", conv)
            in_features = out

    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.depth):
            x = getattr(self, f"Conv_{i}")(x)
            if self.final_relu or i < self.depth - 1:
                x = nn.relu(x)
        return x


class NiN(nnx.Module):
    """Network in Network for CIFAR-10 (Lin et al. 2014), as :class:`cnnjax.models.NiN`."""

    min_input_size = 4

    def __init__(
        self,
        num_classes: int = 10,
        impl: str = "custom",
        dtype: Any = None,
        final_relu: bool = True,
        dropout_rate: float = 0.5,
        *,
        input_shape: Shape = (32, 32, 3),
        rngs: nnx.Rngs,
        **op_kwargs: Any,
    ):
        self.impl = impl
        common = {"impl": impl, "dtype": dtype}
        block = {**common, "rngs": rngs, **op_kwargs}
        self.MLPConvBlock_0 = MLPConvBlock(input_shape[-1], (192, 160, 96), 5, **block)
        self.MLPConvBlock_1 = MLPConvBlock(96, (192, 192, 192), 5, **block)
        self.MLPConvBlock_2 = MLPConvBlock(
            192, (192, 192, num_classes), 3, final_relu=final_relu, **block
        )
        self.max_pool = MaxPool((3, 3), stride=2, ceil_mode=True, **common)
        self.avg_pool = AvgPool((3, 3), stride=2, ceil_mode=True, count_include_pad=False, **common)
        self.dropout1 = _dropout(dropout_rate, rngs)
        self.dropout2 = _dropout(dropout_rate, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        check_input_size(x, model="NiN (nin)", min_size=self.min_input_size)
        x = self.dropout1(self.max_pool(self.MLPConvBlock_0(x)))
        x = self.dropout2(self.avg_pool(self.MLPConvBlock_1(x)))
        return ops.global_avg_pool(self.MLPConvBlock_2(x), impl=self.impl)


class _AlexNetHead(nnx.Module):
    """fc6, fc7 (``head_width``, ReLU, dropout) and fc8, the head shared by AlexNet and ZFNet."""

    def _make_head(self, flat, head_width, num_classes, dropout_rate, dtype, fc_bias, rngs):
        init = linen_alexnet._PAPER_INIT
        for name in ("fc6", "fc7"):
            dense = nnx.Linear(
                flat, head_width, kernel_init=init, bias_init=fc_bias, dtype=dtype, rngs=rngs
            )
            setattr(self, name, dense)
            flat = head_width
        self.fc8 = nnx.Linear(flat, num_classes, kernel_init=init, dtype=dtype, rngs=rngs)
        self.dropout6 = _dropout(dropout_rate, rngs)
        self.dropout7 = _dropout(dropout_rate, rngs)

    def _head(self, x: jax.Array) -> jax.Array:
        x = self.dropout6(nn.relu(self.fc6(x)))
        x = self.dropout7(nn.relu(self.fc7(x)))
        return self.fc8(x)


class AlexNet(_AlexNetHead):
    """AlexNet (Krizhevsky et al. 2012, two towers as ``groups=2``, LRN), as
    :class:`cnnjax.models.AlexNet`. ``(N, 227, 227, 3)`` in; smallest input 67×67."""

    min_input_size = 67

    def __init__(
        self,
        num_classes: int = 1000,
        impl: str = "custom",
        dtype: Any = None,
        head_width: int = 4096,
        dropout_rate: float = 0.5,
        *,
        input_shape: Shape = (227, 227, 3),
        rngs: nnx.Rngs,
        **op_kwargs: Any,
    ):
        common = {"impl": impl, "dtype": dtype}
        layer = {**common, "kernel_init": linen_alexnet._PAPER_INIT, "rngs": rngs, **op_kwargs}

        def conv(cin, features, kernel, stride=1, padding=0, groups=1, bias=0.0):
            bias_init = nn.initializers.constant(bias)
            size = (kernel, kernel)
            return Conv(
                cin, features, size, stride, padding, groups=groups, bias_init=bias_init, **layer
            )

        self.conv1 = conv(input_shape[-1], 96, 11, stride=4)
        self.conv2 = conv(96, 256, 5, padding=2, groups=2, bias=1.0)
        self.conv3 = conv(256, 384, 3, padding=1)
        self.conv4 = conv(384, 384, 3, padding=1, groups=2, bias=1.0)
        self.conv5 = conv(384, 256, 3, padding=1, groups=2, bias=1.0)
        self.pool = MaxPool((3, 3), stride=2, **common)
        self.lrn = LocalResponseNorm(size=5, alpha=5 * 1e-4, beta=0.75, k=2.0, **common)
        flat = _flat_size(self._features, input_shape)
        ones = nn.initializers.ones
        self._make_head(flat, head_width, num_classes, dropout_rate, dtype, ones, rngs)

    def _features(self, x: jax.Array) -> jax.Array:
        check_input_size(x, model="AlexNet (alexnet)", min_size=self.min_input_size)
        x = self.pool(self.lrn(nn.relu(self.conv1(x))))
        x = self.pool(self.lrn(nn.relu(self.conv2(x))))
        x = nn.relu(self.conv4(nn.relu(self.conv3(x))))
        x = self.pool(nn.relu(self.conv5(x)))
        return x.reshape(x.shape[0], -1)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self._head(self._features(x))


class AlexNetTorchvision(nnx.Module):
    """torchvision's single-tower AlexNet, as :class:`cnnjax.models.AlexNetTorchvision`.
    ``(N, H, W, 3)`` in, ``H, W >= 63``; the 6×6 adaptive pool fixes fc6's fan-in."""

    min_input_size = 63

    def __init__(
        self,
        num_classes: int = 1000,
        impl: str = "custom",
        dtype: Any = None,
        head_width: int = 4096,
        dropout_rate: float = 0.5,
        *,
        input_shape: Shape = (224, 224, 3),
        rngs: nnx.Rngs,
        **op_kwargs: Any,
    ):
        common = {"impl": impl, "dtype": dtype}
        layer = {**common, "rngs": rngs, **op_kwargs}
        self.conv1 = Conv(input_shape[-1], 64, (11, 11), stride=4, padding=2, **layer)
        self.conv2 = Conv(64, 192, (5, 5), padding=2, **layer)
        self.conv3 = Conv(192, 384, (3, 3), padding=1, **layer)
        self.conv4 = Conv(384, 256, (3, 3), padding=1, **layer)
        self.conv5 = Conv(256, 256, (3, 3), padding=1, **layer)
        self.pool = MaxPool((3, 3), stride=2, **common)
        self.head_pool = AdaptiveAvgPool((6, 6), **common)
        init = linen_alexnet._PAPER_INIT
        width = 6 * 6 * 256
        for name in ("fc6", "fc7"):
            dense = nnx.Linear(width, head_width, kernel_init=init, dtype=dtype, rngs=rngs)
            setattr(self, name, dense)
            width = head_width
        self.fc8 = nnx.Linear(width, num_classes, kernel_init=init, dtype=dtype, rngs=rngs)
        self.dropout6 = _dropout(dropout_rate, rngs)
        self.dropout7 = _dropout(dropout_rate, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        check_input_size(
            x, model="AlexNetTorchvision (alexnet_torchvision)", min_size=self.min_input_size
        )
        x = self.pool(nn.relu(self.conv1(x)))
        x = self.pool(nn.relu(self.conv2(x)))
        x = nn.relu(self.conv4(nn.relu(self.conv3(x))))
        x = self.pool(nn.relu(self.conv5(x)))
        x = self.head_pool(x).reshape(x.shape[0], -1)
        x = nn.relu(self.fc6(self.dropout6(x)))
        x = nn.relu(self.fc7(self.dropout7(x)))
        return self.fc8(x)


class ZFNet(_AlexNetHead):
    """ZFNet (Zeiler & Fergus 2013), as :class:`cnnjax.models.ZFNet`. ``(N, 224, 224, 3)`` in;
    ``widths`` are conv3-5's channels."""

    min_input_size = 47

    def __init__(
        self,
        num_classes: int = 1000,
        impl: str = "custom",
        dtype: Any = None,
        widths: Sequence[int] = (384, 384, 256),
        head_width: int = 4096,
        dropout_rate: float = 0.5,
        *,
        input_shape: Shape = (224, 224, 3),
        rngs: nnx.Rngs,
        **op_kwargs: Any,
    ):
        common = {"impl": impl, "dtype": dtype}
        layer = {**common, "kernel_init": linen_zfnet._PAPER_INIT, "rngs": rngs, **op_kwargs}
        self.widths = tuple(widths)
        self.conv1 = Conv(input_shape[-1], 96, (7, 7), stride=2, padding=1, **layer)
        self.conv2 = Conv(96, 256, (5, 5), stride=2, **layer)
        channels = 256
        for i, width in enumerate(self.widths, start=3):
            setattr(self, f"conv{i}", Conv(channels, width, (3, 3), padding=1, **layer))
            channels = width
        self.pool = MaxPool((3, 3), stride=2, ceil_mode=True, **common)
        self.lrn = LocalResponseNorm(size=5, alpha=5 * 1e-4, beta=0.75, k=2.0, **common)
        flat = _flat_size(self._features, input_shape)
        zeros = nn.initializers.zeros
        self._make_head(flat, head_width, num_classes, dropout_rate, dtype, zeros, rngs)

    def _features(self, x: jax.Array) -> jax.Array:
        check_input_size(x, model="ZFNet (zfnet)", min_size=self.min_input_size)
        x = self.lrn(self.pool(nn.relu(self.conv1(x))))
        x = self.lrn(self.pool(nn.relu(self.conv2(x))))
        for i in range(3, 3 + len(self.widths)):
            x = nn.relu(getattr(self, f"conv{i}")(x))
        return self.pool(x).reshape(x.shape[0], -1)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self._head(self._features(x))


@functools.partial(nnx.jit, static_argnums=(0, 1))
def _bridge(module: nn.Module, input_shape: Shape, rngs: nnx.Rngs) -> bridge.ToNNX:
    """``ToNNX(module).lazy_init`` on a ``(1, *input_shape)`` input, compiled: eager Linen
    initialisation of a deep model dispatches hundreds of small programs."""
    linen = bridge.ToNNX(module, rngs=rngs)
    return linen.lazy_init(jnp.zeros((1, *input_shape), jnp.float32), train=False)


class LinenModel(nnx.Module):
    """A registered Linen model as an NNX module, through :class:`flax.nnx.bridge.ToNNX`.

    ``model(x)`` calls the Linen model's ``apply(variables, x, train=...)``; ``train`` is
    ``not self.deterministic`` (set by ``model.train()`` / ``model.eval()``, which also set
    ``use_running_average``; the two must agree, as the Linen model has one ``train`` flag). In
    training mode the ``batch_stats`` updates are written back into the module and dropout
    draws keys from ``rngs`` (the argument, else the ``dropout`` stream given at construction).
    The Linen variables live under the attribute ``linen`` (``model.linen.conv1['kernel']``).
    """

    def __init__(self, module: nn.Module, *, input_shape: Shape, rngs: nnx.Rngs):
        streams = nnx.Rngs(params=rngs.params(), dropout=rngs.dropout())
        self.linen = _bridge(module, tuple(input_shape), streams)
        self.deterministic = False
        self.use_running_average = False
        self.has_batch_stats = any(
            isinstance(v, nnx.BatchStat) for _, v in nnx.iter_graph(self.linen)
        )

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> Any:
        if self.deterministic != self.use_running_average:
            raise ValueError(
                "LinenModel: deterministic and use_running_average must agree (the Linen model "
                f"has one train flag); got {self.deterministic} and {self.use_running_average}. "
                "Use model.train() or model.eval()."
            )
        train = not self.deterministic
        mutable = ["batch_stats"] if train and self.has_batch_stats else False
        return self.linen(x, train=train, rngs=rngs, mutable=mutable)


#: Linen model class → native NNX class with the same fields.
NATIVE: dict[type[nn.Module], type[nnx.Module]] = {
    linen_models.LeNet5: LeNet5,
    linen_models.VGG: VGG,
    linen_models.AllConvNet: AllConvNet,
    linen_models.NiN: NiN,
    linen_models.AlexNet: AlexNet,
    linen_models.AlexNetTorchvision: AlexNetTorchvision,
    linen_models.ZFNet: ZFNet,
}


def from_linen_module(
    module: nn.Module,
    info: ModelInfo,
    *,
    rngs: nnx.Rngs,
    input_shape: Shape | None = None,
) -> nnx.Module:
    """The NNX model for the Linen ``module`` built by the registry entry ``info``: the
    :data:`NATIVE` class with the module's fields, else :class:`LinenModel`. Parameters are
    initialised afresh from ``rngs`` (load Linen weights with :func:`cnnjax.nnx.from_linen`)."""
    input_shape = tuple(info.input_shape if input_shape is None else input_shape)
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (H, W, C), got {input_shape}")
    native = NATIVE.get(type(module))
    if native is None:
        return LinenModel(module, input_shape=input_shape, rngs=rngs)
    fields = {
        f.name: getattr(module, f.name)
        for f in dataclasses.fields(module)
        if f.init and f.name not in ("parent", "name")
    }
    return native(**fields, input_shape=input_shape, rngs=rngs)
