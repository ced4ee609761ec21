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
``axis_name`` for cross-device statistics (the plumbing of
:class:`~cnnjax.models.blocks.BuilderModule`); ``train=True`` normalises with batch statistics and
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

from cnnjax.layers import check_input_size
from cnnjax.models.blocks import BuilderModule, classifier, conv_bn_act, option_a_shortcut
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


class _Residual(BuilderModule):
    """Fields and layers shared by the residual blocks (not a module on its own)."""

    features: int
    stride: int = 1
    shortcut: str = "projection"
    zero_init_residual: bool = False

    def _conv_bn(
        self, x: jax.Array, features: int, kernel: int, stride: int, i: int, train: bool
    ) -> jax.Array:
        """``bn{i}(conv{i}(x))``: a bias-free "same" conv and its BatchNorm."""
        return conv_bn_act(
            self.kit, x, features, kernel, train=train, name=f"conv{i}", norm_name=f"bn{i}",
            act=None, stride=stride, padding=kernel // 2, use_bias=False,
        )  # fmt: skip

    def _last_bn(self, x: jax.Array, i: int, train: bool) -> jax.Array:
        """The block's last BN, starting at scale 0 with ``zero_init_residual``."""
        zero = self.zero_init_residual
        init = nn.initializers.zeros if zero else nn.initializers.ones
        return self.kit.norm(train, scale_init=init, name=f"bn{i}")(x)

    def _shortcut(self, x: jax.Array, out_features: int, train: bool) -> jax.Array:
        if self.stride == 1 and x.shape[-1] == out_features:
            return x
        if self.shortcut == "pad":
            return option_a_shortcut(x, out_features, self.stride)
        if self.shortcut != "projection":
            raise ValueError(f'shortcut must be "projection" or "pad", got {self.shortcut!r}')
        return conv_bn_act(
            self.kit, x, out_features, 1, train=train, name="downsample_conv",
            norm_name="downsample_bn", act=None, stride=self.stride, padding=0, use_bias=False,
        )  # fmt: skip


class ResNetBlock(_Residual):
    """Basic residual block: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    ``(N, H, W, C) -> (N, ceil(H/s), ceil(W/s), features)``; both convs 3×3, the first with
    ``stride``. The shortcut is the identity when the shape is kept, otherwise a 1×1/``s`` conv
    + BN (``shortcut="projection"``, option B) or the parameter-free subsample-and-zero-pad
    (``shortcut="pad"``, option A, :func:`option_a_shortcut`). ``zero_init_residual`` starts
    ``bn2``'s scale at 0 so the block begins as the identity (Goyal et al. 2017).

    Attributes:
      features: output channels. stride: of the first conv and the shortcut.
      axis_name: BatchNorm's cross-device axis; with ``impl``, ``precision``, ``dtype``,
        ``bn_momentum``, ``bn_epsilon`` or one ``builders``, the keyword-only plumbing of
        :class:`~cnnjax.models.blocks.BuilderModule`.
    """

    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = nn.relu(self._conv_bn(x, self.features, 3, self.stride, 1, train))
        y = self.kit.conv(self.features, 3, padding=1, use_bias=False, name="conv2")(y)
        y = self._last_bn(y, 2, train)
        return nn.relu(y + self._shortcut(x, self.features, train))


class BottleneckBlock(_Residual):
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
        y = nn.relu(self._conv_bn(x, self.features, 1, 1, 1, train))
        y = nn.relu(self._conv_bn(y, self.features, 3, self.stride, 2, train))
        y = self.kit.conv(out_features, 1, padding=0, use_bias=False, name="conv3")(y)
        y = self._last_bn(y, 3, train)
        return nn.relu(y + self._shortcut(x, out_features, train))


#: The stems: ``(kernel, stride, max pool)`` of the first conv (He et al. 2016, Table 1, §4.2).
_STEMS = {"imagenet": (7, 2, True), "cifar": (3, 1, False)}


class ResNet(BuilderModule):
    """A ResNet: stem, stages of residual blocks, global average pool, dense classifier.

    Input ``(N, H, W, C)``; returns logits ``(N, num_classes)``. Stage ``i`` has
    ``stage_sizes[i]`` blocks of width ``stage_widths[i]`` (bottleneck blocks output 4× that);
    every stage after the first halves the spatial size in its first block.

    Attributes:
      stage_sizes: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
      block_cls: :class:`ResNetBlock` or :class:`BottleneckBlock` (or any module with the same
        fields and ``__call__(x, train)``; it receives ``builders=``, the ResNet's kit).
      stage_widths: ``(64, 128, 256, 512)`` (ImageNet) or ``(16, 32, 64)`` (CIFAR).
      stem: ``"imagenet"`` (7×7/2 conv, BN, ReLU, 3×3/2 max pool) or ``"cifar"`` (3×3/1 conv,
        BN, ReLU); the stem has ``stage_widths[0]`` filters.
      shortcut: ``"projection"`` (option B) or ``"pad"`` (option A).
      zero_init_residual: start every block's last BN scale at 0.
      axis_name: BatchNorm's cross-device axis; with ``impl``, ``precision``, ``dtype``,
        ``bn_momentum``, ``bn_epsilon`` or one ``builders``, the keyword-only plumbing of
        :class:`~cnnjax.models.blocks.BuilderModule`.

    Submodule names follow torchvision (``conv1``, ``bn1``, ``layer2_0/downsample_conv``, ``fc``).
    """

    stage_sizes: Sequence[int]
    block_cls: Any = ResNetBlock
    stage_widths: Sequence[int] = (64, 128, 256, 512)
    stem: str = "imagenet"
    shortcut: str = "projection"
    num_classes: int = 1000
    zero_init_residual: bool = False

    min_input_size = 1  # every stride-2 layer pads, so even a 1×1 image runs

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        check_input_size(x, model="ResNet", min_size=self.min_input_size)
        if len(self.stage_widths) != len(self.stage_sizes):
            raise ValueError(
                f"ResNet: stage_sizes {tuple(self.stage_sizes)} and stage_widths "
                f"{tuple(self.stage_widths)} must have the same length"
            )
        if self.stem not in _STEMS:
            raise ValueError(f'ResNet: stem must be "imagenet" or "cifar", got {self.stem!r}')
        b = self.kit
        kernel, stride, pool = _STEMS[self.stem]
        x = conv_bn_act(
            b, x, self.stage_widths[0], kernel, train=train, name="conv1", norm_name="bn1",
            stride=stride, padding=kernel // 2, use_bias=False,
        )  # fmt: skip
        if pool:
            x = b.max_pool(3, stride=2, padding=1, name="maxpool")(x)
        for i, (blocks, features) in enumerate(
            zip(self.stage_sizes, self.stage_widths, strict=True)
        ):
            for j in range(blocks):
                x = self.block_cls(
                    features,
                    stride=2 if i > 0 and j == 0 else 1,
                    shortcut=self.shortcut,
                    zero_init_residual=self.zero_init_residual,
                    builders=b,
                    name=f"layer{i + 1}_{j}",
                )(x, train)
        return classifier(b, x, self.num_classes, name="fc")


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
