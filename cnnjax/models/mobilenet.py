"""MobileNet v1 (Howard et al. 2017, "MobileNets: Efficient convolutional neural networks for
mobile vision applications", arXiv:1704.04861).

A depthwise-separable convolution factorises a ``k×k`` conv on ``C_in -> C_out`` channels into a
``k×k`` depthwise conv (one filter per channel) and a 1×1 pointwise conv, cutting the cost from
``k² C_in C_out`` to ``k² C_in + C_in C_out`` multiply-adds per output pixel (about 8-9× less for
3×3). MobileNet v1 (paper Table 1) is a 3×3/2 conv with 32 filters followed by 13 separable
blocks (:class:`SeparableBlock`, BN + ReLU after both the depthwise and the pointwise conv),
global average pooling and a 1000-way classifier, with strides 2 at blocks 2, 4, 6 and 12.

Two hyper-parameters (paper §3.3, §3.4):

* width multiplier ``alpha`` (1.0, 0.75, 0.5, 0.25): every layer has ``int(alpha * C)``
  channels, cutting cost and parameters by about ``alpha²``;
* resolution multiplier ``ρ``, i.e. the input size (224, 192, 160, 128): ``resolution=``
  records it and checks the input; the network itself accepts any size.

MobileNet-1.0-224 has exactly 4,231,976 trainable parameters (the ``params`` collection: conv
kernels without biases, BN scales and offsets, and the classifier with its bias; the 21,888 BN
running statistics are non-trainable), Keras' count.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from cnnjax.layers import check_input_size
from cnnjax.models.blocks import BuilderModule, classifier, conv_bn_act
from cnnjax.models.registry import register_model

__all__ = ["MOBILENET_V1_BLOCKS", "MobileNetV1", "SeparableBlock", "mobilenet_v1"]

#: ``(pointwise filters, stride)`` of the 13 separable blocks of MobileNet v1 (paper Table 1).
MOBILENET_V1_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    *((512, 1),) * 5,
    (1024, 2),
    (1024, 1),
)


class SeparableBlock(BuilderModule):
    """Depthwise 3×3 conv + BN + ReLU, then pointwise 1×1 conv + BN + ReLU (paper Fig. 3).

    ``(N, H, W, C) -> (N, ceil(H/s), ceil(W/s), features)``; convs have no biases (BN follows),
    the depthwise conv has padding 1 and carries the ``stride``. Parameters:
    ``9*C + C*features`` conv weights and ``2*(C + features)`` BN scales/offsets.

    Attributes:
      features: pointwise output channels. stride: of the depthwise conv.
      axis_name: BatchNorm's cross-device axis; with ``impl``, ``precision``, ``dtype``,
        ``bn_momentum``, ``bn_epsilon`` or one ``builders``, the keyword-only plumbing of
        :class:`~cnnjax.models.blocks.BuilderModule`.
    """

    features: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        b = self.kit
        x = b.depthwise_conv(3, stride=self.stride, padding=1, use_bias=False, name="depthwise")(x)
        x = nn.relu(b.norm(train, name="depthwise_bn")(x))
        return conv_bn_act(
            b, x, self.features, 1, train=train, name="pointwise", norm_name="pointwise_bn",
            use_bias=False,
        )  # fmt: skip


class MobileNetV1(BuilderModule):
    """MobileNet v1: 3×3/2 conv, 13 :class:`SeparableBlock` s, global average pool, classifier.

    Input ``(N, H, W, C)``; returns logits ``(N, num_classes)``.

    Attributes:
      alpha: width multiplier; layer widths are ``int(alpha * C)``.
      resolution: the paper's input size (resolution multiplier); when set, inputs must be
        ``resolution × resolution``. ``None`` accepts any size ``>= 1``.
      blocks: ``(filters, stride)`` of the separable blocks (default the paper's).
      dropout_rate: before the classifier (Keras uses 1e-3; the paper does not say); needs a
        ``dropout`` rng when ``train=True`` and the rate is positive.
      axis_name: BatchNorm's cross-device axis; with ``impl``, ``precision``, ``dtype``,
        ``bn_momentum``, ``bn_epsilon`` or one ``builders``, the keyword-only plumbing of
        :class:`~cnnjax.models.blocks.BuilderModule`.
    """

    alpha: float = 1.0
    resolution: int | None = None
    blocks: tuple[tuple[int, int], ...] = MOBILENET_V1_BLOCKS
    num_classes: int = 1000
    dropout_rate: float = 0.0

    min_input_size = 1  # every stride-2 conv pads, so even a 1×1 image runs

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        check_input_size(x, model="MobileNetV1", min_size=self.min_input_size)
        if self.resolution is not None and tuple(x.shape[1:3]) != (self.resolution,) * 2:
            raise ValueError(
                f"MobileNetV1 was built for {self.resolution}×{self.resolution} inputs "
                f"(resolution={self.resolution}), got {tuple(x.shape)}"
            )
        if self.alpha <= 0:
            raise ValueError(f"MobileNetV1: alpha must be positive, got {self.alpha}")
        b = self.kit
        x = conv_bn_act(
            b, x, int(32 * self.alpha), 3, train=train, name="conv1", norm_name="conv1_bn",
            stride=2, padding=1, use_bias=False,
        )  # fmt: skip
        for i, (features, stride) in enumerate(self.blocks):
            block = SeparableBlock(
                int(features * self.alpha), stride, builders=b, name=f"block{i + 1}"
            )
            x = block(x, train)
        return classifier(
            b, x, self.num_classes, name="classifier", train=train, dropout_rate=self.dropout_rate
        )


mobilenet_v1 = register_model(
    "mobilenet_v1",
    paper="Howard et al. 2017, MobileNets: Efficient convolutional neural networks for mobile "
    "vision applications, arXiv:1704.04861",
    input_shape=(224, 224, 3),
    min_input_size=MobileNetV1.min_input_size,
    test_input_shape=(32, 32, 3),
)(MobileNetV1)
