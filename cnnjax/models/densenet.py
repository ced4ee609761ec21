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

from cnnjax.layers import check_input_size
from cnnjax.models.blocks import BuilderModule, Builders, classifier, conv_bn_act
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


def _bn_relu_conv(
    b: Builders, x: jax.Array, train: bool, features: int, kernel: int, names: tuple[str, str]
) -> jax.Array:
    """DenseNet's pre-activation layer: BN-ReLU, then a bias-free "same" conv (``names``)."""
    x = nn.relu(b.norm(train, name=names[0])(x))
    return b.conv(features, kernel, padding=kernel // 2, use_bias=False, name=names[1])(x)


class DenseBlock(BuilderModule):
    """``num_layers`` densely connected bottleneck layers.

    ``(N, H, W, C) -> (N, H, W, C + num_layers * growth_rate)``. Layer ``l`` (named
    ``denselayer{l+1}``) maps the concatenation of the block input and all earlier layer
    outputs through BN-ReLU-Conv1x1(``bn_size * growth_rate``)-BN-ReLU-Conv3x3(``growth_rate``)
    (no conv biases; BN names ``norm1``/``norm2``, conv names ``conv1``/``conv2`` as in
    torchvision).

    Attributes:
      num_layers: layers in the block. growth_rate: ``k``, channels each layer adds.
      bn_size: bottleneck width multiplier (4 in the paper).
      axis_name: BatchNorm's cross-device axis; with ``impl``, ``precision``, ``dtype``,
        ``bn_momentum``, ``bn_epsilon`` or one ``builders``, the keyword-only plumbing of
        :class:`~cnnjax.models.blocks.BuilderModule`.
    """

    num_layers: int = 6
    growth_rate: int = 32
    bn_size: int = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        b, features = self.kit, [x]
        for i in range(self.num_layers):
            name = f"denselayer{i + 1}"
            y = jnp.concatenate(features, axis=-1) if len(features) > 1 else x
            width = self.bn_size * self.growth_rate
            y = _bn_relu_conv(b, y, train, width, 1, (f"{name}_norm1", f"{name}_conv1"))
            y = _bn_relu_conv(b, y, train, self.growth_rate, 3, (f"{name}_norm2", f"{name}_conv2"))
            features.append(y)
        return jnp.concatenate(features, axis=-1)


class Transition(BuilderModule):
    """Transition between dense blocks: BN-ReLU-Conv1x1-AvgPool 2×2/2.

    ``(N, H, W, C) -> (N, H//2, W//2, features)`` with ``features = floor(compression * C)``
    unless given (names ``norm``, ``conv`` as in torchvision).
    """

    features: int | None = None
    compression: float = 0.5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        features = self.features or int(self.compression * x.shape[-1])
        x = _bn_relu_conv(self.kit, x, train, features, 1, ("norm", "conv"))
        return self.kit.avg_pool(2, stride=2, name="pool")(x)


class DenseNet(BuilderModule):
    """A DenseNet-BC: stem, dense blocks separated by transitions, BN-ReLU, pool, classifier.

    Input ``(N, H, W, C)``; returns logits ``(N, num_classes)``.

    Attributes:
      block_sizes: layers per dense block, e.g. ``(6, 12, 24, 16)`` for DenseNet-121.
      growth_rate: ``k``. init_features: stem filters (``2k`` in the paper: 64 for ``k=32``).
      bn_size: bottleneck multiplier (4). compression: ``θ`` of the transitions (0.5).
      stem: ``"imagenet"`` (7×7/2 conv, BN-ReLU, 3×3/2 max pool) or ``"cifar"`` (3×3/1 conv).
      axis_name: BatchNorm's cross-device axis; with ``impl``, ``precision``, ``dtype``,
        ``bn_momentum``, ``bn_epsilon`` or one ``builders``, the keyword-only plumbing of
        :class:`~cnnjax.models.blocks.BuilderModule`.

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

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        check_input_size(x, model="DenseNet", min_size=_min_input_size(self.block_sizes, self.stem))
        b = self.kit
        if self.stem == "imagenet":
            x = conv_bn_act(
                b, x, self.init_features, 7, train=train, name="conv0", norm_name="norm0",
                stride=2, padding=3, use_bias=False,
            )  # fmt: skip
            x = b.max_pool(3, stride=2, padding=1, name="pool0")(x)
        elif self.stem == "cifar":
            x = b.conv(self.init_features, 3, padding=1, use_bias=False, name="conv0")(x)
        else:
            raise ValueError(f'DenseNet: stem must be "imagenet" or "cifar", got {self.stem!r}')
        for i, layers in enumerate(self.block_sizes):
            x = DenseBlock(
                num_layers=layers,
                growth_rate=self.growth_rate,
                bn_size=self.bn_size,
                builders=b,
                name=f"denseblock{i + 1}",
            )(x, train)
            if i < len(self.block_sizes) - 1:
                transition = Transition(
                    compression=self.compression, builders=b, name=f"transition{i + 1}"
                )
                x = transition(x, train)
        x = nn.relu(b.norm(train, name=f"norm{len(self.block_sizes) + 1}")(x))
        return classifier(b, x, self.num_classes, name="classifier")


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
