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

import functools
from typing import Any

import flax.linen as nn
import jax

from cnnjax import ops
from cnnjax.layers import BatchNorm, Conv, DepthwiseConv, check_input_size
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


class SeparableBlock(nn.Module):
    """Depthwise 3×3 conv + BN + ReLU, then pointwise 1×1 conv + BN + ReLU (paper Fig. 3).

    ``(N, H, W, C) -> (N, ceil(H/s), ceil(W/s), features)``; convs have no biases (BN follows),
    the depthwise conv has padding 1 and carries the ``stride``. Parameters:
    ``9*C + C*features`` conv weights and ``2*(C + features)`` BN scales/offsets.

    Attributes:
      features: pointwise output channels. stride: of the depthwise conv.
      axis_name: BatchNorm's cross-device axis.
    """

    features: int
    stride: int = 1
    axis_name: str | None = None
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    impl: str = "custom"
    precision: Any = None
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        norm = functools.partial(
            BatchNorm,
            use_running_average=not train,
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            axis_name=self.axis_name,
            dtype=self.dtype,
        )
        x = DepthwiseConv(
            (3, 3),
            stride=self.stride,
            padding=1,
            use_bias=False,
            impl=self.impl,
            dtype=self.dtype,
            name="depthwise",
            precision=self.precision,
        )(x)
        x = nn.relu(norm(name="depthwise_bn")(x))
        x = Conv(
            self.features,
            (1, 1),
            use_bias=False,
            impl=self.impl,
            dtype=self.dtype,
            name="pointwise",
            precision=self.precision,
        )(x)
        return nn.relu(norm(name="pointwise_bn")(x))


class MobileNetV1(nn.Module):
    """MobileNet v1: 3×3/2 conv, 13 :class:`SeparableBlock` s, global average pool, classifier.

    Input ``(N, H, W, C)``; returns logits ``(N, num_classes)``.

    Attributes:
      alpha: width multiplier; layer widths are ``int(alpha * C)``.
      resolution: the paper's input size (resolution multiplier); when set, inputs must be
        ``resolution × resolution``. ``None`` accepts any size ``>= 1``.
      blocks: ``(filters, stride)`` of the separable blocks (default the paper's).
      dropout_rate: before the classifier (Keras uses 1e-3; the paper does not say); needs a
        ``dropout`` rng when ``train=True`` and the rate is positive.
      axis_name: passed to every BatchNorm.
    """

    alpha: float = 1.0
    resolution: int | None = None
    blocks: tuple[tuple[int, int], ...] = MOBILENET_V1_BLOCKS
    num_classes: int = 1000
    dropout_rate: float = 0.0
    axis_name: str | None = None
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    impl: str = "custom"
    precision: Any = None
    dtype: Any = None

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
        common = {
            "axis_name": self.axis_name,
            "bn_momentum": self.bn_momentum,
            "bn_epsilon": self.bn_epsilon,
            "impl": self.impl,
            "precision": self.precision,
            "dtype": self.dtype,
        }
        x = Conv(
            int(32 * self.alpha),
            (3, 3),
            stride=2,
            padding=1,
            use_bias=False,
            impl=self.impl,
            dtype=self.dtype,
            name="conv1",
            precision=self.precision,
        )(x)
        x = BatchNorm(
            use_running_average=not train,
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            axis_name=self.axis_name,
            dtype=self.dtype,
            name="conv1_bn",
        )(x)
        x = nn.relu(x)
        for i, (features, stride) in enumerate(self.blocks):
            x = SeparableBlock(int(features * self.alpha), stride, name=f"block{i + 1}", **common)(
                x, train
            )
        x = ops.global_avg_pool(x, impl=self.impl)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(
            self.num_classes, dtype=self.dtype, name="classifier", precision=self.precision
        )(x)


mobilenet_v1 = register_model(
    "mobilenet_v1",
    paper="Howard et al. 2017, MobileNets: Efficient convolutional neural networks for mobile "
    "vision applications, arXiv:1704.04861",
    input_shape=(224, 224, 3),
    min_input_size=MobileNetV1.min_input_size,
    test_input_shape=(32, 32, 3),
)(MobileNetV1)
