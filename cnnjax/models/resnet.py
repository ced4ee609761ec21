"""ResNet (He, Zhang, Ren & Sun 2016, "Deep residual learning for image recognition", CVPR).

Two families share one :class:`ResNet` module:

* ImageNet ResNet-18/34/50/101/152 (paper Table 1), with torchvision's layout so that its
  weights load one-to-one (:mod:`cnnjax.models.torch_weights`): a 7×7/2 conv and a 3×3/2 max
  pool, four stages of widths 64/128/256/512, BatchNorm after every conv, projection shortcuts
  (1×1 conv + BN) where the shape changes, global average pooling and a dense layer. The
  bottleneck block (ResNet-50 and deeper) puts the stride on its 3×3 conv ("ResNet v1.5", as
  torchvision does; the paper put it on the first 1×1). Parameters (1000 classes, ``params``
  collection, BN scale/bias included): 11,689,512 / 21,797,672 / 25,557,032 / 44,549,160 /
  60,192,808.
* CIFAR ResNet-20/32/44/56/110 (paper §4.2): a 3×3 conv with 16 filters, three stages of ``n``
  basic blocks at widths 16/32/64 (``6n + 2`` layers), option-A shortcuts (identity; where the
  shape changes, subsample by 2 and zero-pad the new channels, so shortcuts have no
  parameters), global average pooling and a 10-way dense layer: 0.27M / 0.46M / 0.66M / 0.85M /
  1.7M parameters.

A residual block computes ``y = relu(F(x) + shortcut(x))`` with ``F`` two 3×3 convs
(:class:`ResNetBlock`) or 1×1 → 3×3 → 1×1 with 4× expansion (:class:`BottleneckBlock`). BatchNorm
uses PyTorch's constants (momentum 0.1, i.e. flax ``momentum=0.9``, and ``epsilon=1e-5``) and
``axis_name`` for cross-device statistics; ``train=True`` normalises with batch statistics and
updates ``batch_stats`` (apply with ``mutable=["batch_stats"]``).

>>> import jax, jax.numpy as jnp
>>> from cnnjax.models import create_model
>>> model = create_model("resnet20", num_classes=10)
>>> variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
>>> model.apply(variables, jnp.zeros((2, 32, 32, 3)), train=False).shape
(2, 10)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax import ops
from cnnjax.layers import BatchNorm, Conv, MaxPool, check_input_size
from cnnjax.models.registry import register_model

__all__ = [
    "BottleneckBlock",
    "ResNet",
    "ResNetBlock",
    "option_a_shortcut",
    "resnet18",
    "resnet20",
    "resnet32",
    "resnet34",
    "resnet44",
    "resnet50",
    "resnet56",
    "resnet101",
    "resnet110",
    "resnet152",
]

_PAPER = "He, Zhang, Ren & Sun 2016, Deep residual learning for image recognition, CVPR"


def option_a_shortcut(x: jax.Array, features: int, stride: int) -> jax.Array:
    """The paper's option-A shortcut: identity, subsampled by ``stride``, new channels zero.

    ``(N, H, W, C) -> (N, ceil(H/s), ceil(W/s), features)`` with ``features >= C``: takes every
    ``stride``-th pixel (the same grid as a stride-``s`` conv with padding 1) and appends
    ``features - C`` channels of zeros, so it has no parameters (He et al. 2016, §3.3 and §4.2).
    """
    if features < x.shape[-1]:
        raise ValueError(f"option-A shortcut cannot reduce channels: {x.shape[-1]} -> {features}")
    if stride > 1:
        x = x[:, ::stride, ::stride, :]
    pad = features - x.shape[-1]
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, pad))) if pad else x


class _BlockFields(nn.Module):
    """Fields shared by the residual blocks (not a module on its own)."""

    features: int
    stride: int = 1
    shortcut: str = "projection"
    zero_init_residual: bool = False
    axis_name: str | None = None
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    impl: str = "custom"
    precision: Any = None
    dtype: Any = None

    def _conv(self, features: int, kernel: int, stride: int, name: str) -> Conv:
        return Conv(
            features,
            (kernel, kernel),
            stride=stride,
            padding=kernel // 2,
            use_bias=False,
            impl=self.impl,
            dtype=self.dtype,
            name=name,
            precision=self.precision,
        )

    def _norm(self, train: bool, name: str, zero: bool = False) -> BatchNorm:
        return BatchNorm(
            use_running_average=not train,
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            axis_name=self.axis_name,
            dtype=self.dtype,
            scale_init=nn.initializers.zeros if zero else nn.initializers.ones,
            name=name,
        )

    def _shortcut(self, x: jax.Array, out_features: int, train: bool) -> jax.Array:
        if self.stride == 1 and x.shape[-1] == out_features:
            return x
        if self.shortcut == "pad":
            return option_a_shortcut(x, out_features, self.stride)
        if self.shortcut != "projection":
            raise ValueError(f'shortcut must be "projection" or "pad", got {self.shortcut!r}')
        x = self._conv(out_features, 1, self.stride, "downsample_conv")(x)
        return self._norm(train, "downsample_bn")(x)


class ResNetBlock(_BlockFields):
    """Basic residual block: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    ``(N, H, W, C) -> (N, ceil(H/s), ceil(W/s), features)``; both convs 3×3, the first with
    ``stride``. The shortcut is the identity when the shape is kept, otherwise a 1×1/``s`` conv
    + BN (``shortcut="projection"``, option B) or the parameter-free subsample-and-zero-pad
    (``shortcut="pad"``, option A, :func:`option_a_shortcut`). ``zero_init_residual`` starts
    ``bn2``'s scale at 0 so the block begins as the identity (Goyal et al. 2017).

    Attributes:
      features: output channels. stride: of the first conv and the shortcut.
      axis_name: BatchNorm's cross-device axis (``None``: per-device statistics).
    """

    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = self._conv(self.features, 3, self.stride, "conv1")(x)
        y = nn.relu(self._norm(train, "bn1")(y))
        y = self._conv(self.features, 3, 1, "conv2")(y)
        y = self._norm(train, "bn2", self.zero_init_residual)(y)
        return nn.relu(y + self._shortcut(x, self.features, train))


class BottleneckBlock(_BlockFields):
    """Bottleneck residual block (1×1 → 3×3 → 1×1, expansion 4), stride on the 3×3 ("v1.5").

    ``(N, H, W, C) -> (N, ceil(H/s), ceil(W/s), 4 * features)``::

        y = relu(bn1(conv1x1(x, features)))
        y = relu(bn2(conv3x3(y, features, stride)))
        y = bn3(conv1x1(y, 4 * features))
        out = relu(y + shortcut(x))

    The shortcut as in :class:`ResNetBlock`.
    """

    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        out_features = self.features * self.expansion
        y = self._conv(self.features, 1, 1, "conv1")(x)
        y = nn.relu(self._norm(train, "bn1")(y))
        y = self._conv(self.features, 3, self.stride, "conv2")(y)
        y = nn.relu(self._norm(train, "bn2")(y))
        y = self._conv(out_features, 1, 1, "conv3")(y)
        y = self._norm(train, "bn3", self.zero_init_residual)(y)
        return nn.relu(y + self._shortcut(x, out_features, train))


class ResNet(nn.Module):
    """A ResNet: stem, stages of residual blocks, global average pool, dense classifier.

    Input ``(N, H, W, C)``; returns logits ``(N, num_classes)``. Stage ``i`` has
    ``stage_sizes[i]`` blocks of width ``stage_widths[i]`` (bottleneck blocks output 4× that);
    every stage after the first halves the spatial size in its first block.

    Attributes:
      stage_sizes: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
      block_cls: :class:`ResNetBlock` or :class:`BottleneckBlock` (or any module with the same
        fields and ``__call__(x, train)``).
      stage_widths: ``(64, 128, 256, 512)`` (ImageNet) or ``(16, 32, 64)`` (CIFAR).
      stem: ``"imagenet"`` (7×7/2 conv, BN, ReLU, 3×3/2 max pool) or ``"cifar"`` (3×3/1 conv,
        BN, ReLU); the stem has ``stage_widths[0]`` filters.
      shortcut: ``"projection"`` (option B) or ``"pad"`` (option A).
      zero_init_residual: start every block's last BN scale at 0.
      axis_name: passed to every BatchNorm.

    Submodule names follow torchvision (``conv1``, ``bn1``, ``layer2_0/downsample_conv``, ``fc``).
    """

    stage_sizes: Sequence[int]
    block_cls: Any = ResNetBlock
    stage_widths: Sequence[int] = (64, 128, 256, 512)
    stem: str = "imagenet"
    shortcut: str = "projection"
    num_classes: int = 1000
    zero_init_residual: bool = False
    axis_name: str | None = None
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    impl: str = "custom"
    precision: Any = None
    dtype: Any = None

    min_input_size = 1  # every stride-2 layer pads, so even a 1×1 image runs

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        check_input_size(x, model="ResNet", min_size=self.min_input_size)
        if len(self.stage_widths) != len(self.stage_sizes):
            raise ValueError(
                f"ResNet: stage_sizes {tuple(self.stage_sizes)} and stage_widths "
                f"{tuple(self.stage_widths)} must have the same length"
            )
        norm = functools.partial(
            BatchNorm,
            use_running_average=not train,
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            axis_name=self.axis_name,
            dtype=self.dtype,
        )
        width = self.stage_widths[0]
        if self.stem == "imagenet":
            x = Conv(
                width,
                (7, 7),
                stride=2,
                padding=3,
                use_bias=False,
                impl=self.impl,
                dtype=self.dtype,
                name="conv1",
                precision=self.precision,
            )(x)
            x = nn.relu(norm(name="bn1")(x))
            x = MaxPool(
                (3, 3), stride=2, padding=1, impl=self.impl, dtype=self.dtype, name="maxpool"
            )(x)
        elif self.stem == "cifar":
            x = Conv(
                width,
                (3, 3),
                padding=1,
                use_bias=False,
                impl=self.impl,
                dtype=self.dtype,
                name="conv1",
                precision=self.precision,
            )(x)
            x = nn.relu(norm(name="bn1")(x))
        else:
            raise ValueError(f'ResNet: stem must be "imagenet" or "cifar", got {self.stem!r}')
        for i, (blocks, features) in enumerate(
            zip(self.stage_sizes, self.stage_widths, strict=True)
        ):
            for j in range(blocks):
                x = self.block_cls(
                    features,
                    stride=2 if i > 0 and j == 0 else 1,
                    shortcut=self.shortcut,
                    zero_init_residual=self.zero_init_residual,
                    axis_name=self.axis_name,
                    bn_momentum=self.bn_momentum,
                    bn_epsilon=self.bn_epsilon,
                    impl=self.impl,
                    dtype=self.dtype,
                    name=f"layer{i + 1}_{j}",
                    precision=self.precision,
                )(x, train)
        x = ops.global_avg_pool(x, impl=self.impl)
        return nn.Dense(self.num_classes, dtype=self.dtype, name="fc", precision=self.precision)(x)


def _imagenet(name: str, stage_sizes: tuple[int, ...], block_cls: Any) -> Any:
    constructor = functools.partial(ResNet, stage_sizes=stage_sizes, block_cls=block_cls)
    return register_model(
        name,
        paper=_PAPER,
        input_shape=(224, 224, 3),
        min_input_size=ResNet.min_input_size,
        test_input_shape=(32, 32, 3),
    )(constructor)


def _cifar(name: str, n: int) -> Any:
    constructor = functools.partial(
        ResNet,
        stage_sizes=(n, n, n),
        block_cls=ResNetBlock,
        stage_widths=(16, 32, 64),
        stem="cifar",
        shortcut="pad",
    )
    return register_model(
        name,
        paper=_PAPER + " (§4.2, CIFAR-10)",
        input_shape=(32, 32, 3),
        min_input_size=ResNet.min_input_size,
        test_input_shape=(16, 16, 3),
        default_num_classes=10,
    )(constructor)


resnet18 = _imagenet("resnet18", (2, 2, 2, 2), ResNetBlock)
resnet34 = _imagenet("resnet34", (3, 4, 6, 3), ResNetBlock)
resnet50 = _imagenet("resnet50", (3, 4, 6, 3), BottleneckBlock)
resnet101 = _imagenet("resnet101", (3, 4, 23, 3), BottleneckBlock)
resnet152 = _imagenet("resnet152", (3, 8, 36, 3), BottleneckBlock)

resnet20 = _cifar("resnet20", 3)
resnet32 = _cifar("resnet32", 5)
resnet44 = _cifar("resnet44", 7)
resnet56 = _cifar("resnet56", 9)
resnet110 = _cifar("resnet110", 18)
