"""DenseNet (Huang, Liu, van der Maaten & Weinberger 2017, "Densely connected convolutional
networks", CVPR).

Inside a dense block every layer receives the concatenation of all earlier feature maps and
adds ``growth_rate`` (``k``) new ones::

    x_l = H_l([x_0, x_1, ..., x_{l-1}]),   H_l = BN-ReLU-Conv1x1(4k) - BN-ReLU-Conv3x3(k)

(the "B" bottleneck). Between blocks a transition layer BN-ReLU-Conv1x1-AvgPool2x2 halves the
spatial size and multiplies the channels by the compression ``θ = 0.5`` (the "C"). A block of
``L`` layers on ``C`` input channels outputs ``C + L*k`` channels.

* ImageNet DenseNet-121/169/201/264 (paper Table 1): ``k = 32``, 64 initial features from a
  7×7/2 conv + BN-ReLU + 3×3/2 max pool, blocks of (6, 12, 24, 16) / (6, 12, 32, 32) /
  (6, 12, 48, 32) / (6, 12, 64, 48) layers, a final BN-ReLU, global average pool and a dense
  layer. Layout and names follow torchvision, whose weights load one-to-one; parameters:
  7,978,856 / 14,149,480 / 20,013,928 / 33,337,704.
* CIFAR DenseNet-BC (L=100, k=12): a 3×3 conv with ``2k`` filters, three blocks of 16
  bottleneck layers, two transitions, 0.77M parameters (the paper's 0.8M).

>>> import jax, jax.numpy as jnp
>>> block = DenseBlock(num_layers=2, growth_rate=4)
>>> variables = block.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)
>>> block.apply(variables, jnp.zeros((1, 8, 8, 3)), train=False).shape   # 3 + 2*4 channels
(1, 8, 8, 11)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax import ops
from cnnjax.layers import AvgPool, BatchNorm, Conv, MaxPool, check_input_size
from cnnjax.models.registry import register_model

__all__ = [
    "DenseBlock",
    "DenseNet",
    "Transition",
    "densenet121",
    "densenet169",
    "densenet201",
    "densenet264",
    "densenet_bc_100_12",
]

_PAPER = (
    "Huang, Liu, van der Maaten & Weinberger 2017, Densely connected convolutional networks, CVPR"
)


def _bn_relu(module: nn.Module, x: jax.Array, train: bool, name: str) -> jax.Array:
    """BatchNorm (with the module's BN fields) then ReLU, created inside ``module``."""
    norm = BatchNorm(
        use_running_average=not train,
        momentum=module.bn_momentum,
        epsilon=module.bn_epsilon,
        axis_name=module.axis_name,
        dtype=module.dtype,
        name=name,
    )
    return nn.relu(norm(x))


def _conv(module: nn.Module, x: jax.Array, features: int, kernel: int, name: str) -> jax.Array:
    """A bias-free ``kernel``×``kernel`` conv with "same" padding, created inside ``module``."""
    return Conv(
        features,
        (kernel, kernel),
        padding=kernel // 2,
        use_bias=False,
        impl=module.impl,
        dtype=module.dtype,
        name=name,
        precision=module.precision,
    )(x)


class DenseBlock(nn.Module):
    """``num_layers`` densely connected bottleneck layers.

    ``(N, H, W, C) -> (N, H, W, C + num_layers * growth_rate)``. Layer ``l`` (named
    ``denselayer{l+1}``) maps the concatenation of the block input and all earlier layer
    outputs through BN-ReLU-Conv1x1(``bn_size * growth_rate``)-BN-ReLU-Conv3x3(``growth_rate``)
    (no conv biases; BN names ``norm1``/``norm2``, conv names ``conv1``/``conv2`` as in
    torchvision).

    Attributes:
      num_layers: layers in the block. growth_rate: ``k``, channels each layer adds.
      bn_size: bottleneck width multiplier (4 in the paper).
      axis_name: BatchNorm's cross-device axis.
    """

    num_layers: int = 6
    growth_rate: int = 32
    bn_size: int = 4
    axis_name: str | None = None
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    impl: str = "custom"
    precision: Any = None
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        features = [x]
        for i in range(self.num_layers):
            name = f"denselayer{i + 1}"
            y = jnp.concatenate(features, axis=-1) if len(features) > 1 else x
            y = _bn_relu(self, y, train, f"{name}_norm1")
            y = _conv(self, y, self.bn_size * self.growth_rate, 1, f"{name}_conv1")
            y = _bn_relu(self, y, train, f"{name}_norm2")
            features.append(_conv(self, y, self.growth_rate, 3, f"{name}_conv2"))
        return jnp.concatenate(features, axis=-1)


class Transition(nn.Module):
    """Transition between dense blocks: BN-ReLU-Conv1x1-AvgPool 2×2/2.

    ``(N, H, W, C) -> (N, H//2, W//2, features)`` with ``features = floor(compression * C)``
    unless given (names ``norm``, ``conv`` as in torchvision).
    """

    features: int | None = None
    compression: float = 0.5
    axis_name: str | None = None
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    impl: str = "custom"
    precision: Any = None
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        features = self.features or int(self.compression * x.shape[-1])
        x = _conv(self, _bn_relu(self, x, train, "norm"), features, 1, "conv")
        return AvgPool((2, 2), stride=2, impl=self.impl, dtype=self.dtype, name="pool")(x)


class DenseNet(nn.Module):
    """A DenseNet-BC: stem, dense blocks separated by transitions, BN-ReLU, pool, classifier.

    Input ``(N, H, W, C)``; returns logits ``(N, num_classes)``.

    Attributes:
      block_sizes: layers per dense block, e.g. ``(6, 12, 24, 16)`` for DenseNet-121.
      growth_rate: ``k``. init_features: stem filters (``2k`` in the paper: 64 for ``k=32``).
      bn_size: bottleneck multiplier (4). compression: ``θ`` of the transitions (0.5).
      stem: ``"imagenet"`` (7×7/2 conv, BN-ReLU, 3×3/2 max pool) or ``"cifar"`` (3×3/1 conv).
      axis_name: passed to every BatchNorm.

    Submodule names follow torchvision's ``features.*`` without the ``features.`` prefix
    (``conv0``, ``norm0``, ``denseblock1/denselayer1_conv1``, ``transition1/conv``, ``norm5``)
    and ``classifier``.
    """

    block_sizes: Sequence[int] = (6, 12, 24, 16)
    growth_rate: int = 32
    init_features: int = 64
    bn_size: int = 4
    compression: float = 0.5
    stem: str = "imagenet"
    num_classes: int = 1000
    axis_name: str | None = None
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    impl: str = "custom"
    precision: Any = None
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        check_input_size(x, model="DenseNet", min_size=_min_input_size(self.block_sizes, self.stem))
        common = {
            "axis_name": self.axis_name,
            "bn_momentum": self.bn_momentum,
            "bn_epsilon": self.bn_epsilon,
            "impl": self.impl,
            "precision": self.precision,
            "dtype": self.dtype,
        }
        norm = functools.partial(
            BatchNorm,
            use_running_average=not train,
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            axis_name=self.axis_name,
            dtype=self.dtype,
        )
        conv = functools.partial(
            Conv, use_bias=False, impl=self.impl, dtype=self.dtype, precision=self.precision
        )
        if self.stem == "imagenet":
            x = conv(self.init_features, (7, 7), stride=2, padding=3, name="conv0")(x)
            x = nn.relu(norm(name="norm0")(x))
            x = MaxPool(
                (3, 3), stride=2, padding=1, impl=self.impl, dtype=self.dtype, name="pool0"
            )(x)
        elif self.stem == "cifar":
            x = conv(self.init_features, (3, 3), padding=1, name="conv0")(x)
        else:
            raise ValueError(f'DenseNet: stem must be "imagenet" or "cifar", got {self.stem!r}')
        for i, layers in enumerate(self.block_sizes):
            x = DenseBlock(
                num_layers=layers,
                growth_rate=self.growth_rate,
                bn_size=self.bn_size,
                name=f"denseblock{i + 1}",
                **common,
            )(x, train)
            if i < len(self.block_sizes) - 1:
                x = Transition(compression=self.compression, name=f"transition{i + 1}", **common)(
                    x, train
                )
        x = nn.relu(norm(name=f"norm{len(self.block_sizes) + 1}")(x))
        x = ops.global_avg_pool(x, impl=self.impl)
        return nn.Dense(
            self.num_classes, dtype=self.dtype, name="classifier", precision=self.precision
        )(x)


def _min_input_size(block_sizes: Sequence[int], stem: str) -> int:
    """Smallest square input for which every transition's 2×2 pool still has a 2×2 input."""
    needed = 2 ** (len(block_sizes) - 1)  # side entering the first dense block
    if stem != "imagenet":
        return needed
    # invert max pool 3/2 pad 1 and conv 7/2 pad 3: both give floor((n - 1) / 2) + 1
    for _ in range(2):
        needed = 2 * (needed - 1) + 1
    return needed


def _imagenet(name: str, block_sizes: tuple[int, ...]) -> Any:
    return register_model(
        name,
        paper=_PAPER,
        input_shape=(224, 224, 3),
        min_input_size=_min_input_size(block_sizes, "imagenet"),
        test_input_shape=(32, 32, 3),
    )(functools.partial(DenseNet, block_sizes=block_sizes))


densenet121 = _imagenet("densenet121", (6, 12, 24, 16))
densenet169 = _imagenet("densenet169", (6, 12, 32, 32))
densenet201 = _imagenet("densenet201", (6, 12, 48, 32))
densenet264 = _imagenet("densenet264", (6, 12, 64, 48))

densenet_bc_100_12 = register_model(
    "densenet_bc_100_12",
    paper=_PAPER + " (DenseNet-BC, L=100, k=12, CIFAR)",
    input_shape=(32, 32, 3),
    min_input_size=_min_input_size((16, 16, 16), "cifar"),
    test_input_shape=(16, 16, 3),
    default_num_classes=10,
)(
    functools.partial(
        DenseNet, block_sizes=(16, 16, 16), growth_rate=12, init_features=24, stem="cifar"
    )
)
