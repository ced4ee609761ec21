"""Network in Network: Lin, Chen & Yan 2014, "Network in network" (ICLR, arXiv:1312.4400), the
CIFAR-10 model (§4.2 and the authors' released Caffe definition). Input ``(N, 32, 32, 3)``.

Three "mlpconv" blocks, each a spatial conv followed by two 1×1 convs (the paper's micro
multilayer perceptron shared across positions), every conv followed by ReLU::

    conv 192@5×5 pad 2 → 160@1×1 → 96@1×1      32×32×96
    max pool 3×3/2 (ceil), dropout 0.5          16×16×96
    conv 192@5×5 pad 2 → 192@1×1 → 192@1×1     16×16×192
    avg pool 3×3/2 (ceil), dropout 0.5           8×8×192
    conv 192@3×3 pad 1 → 192@1×1 → classes@1×1   8×8×classes
    global average pooling                      (N, classes) logits

Pools use ceil mode as in Caffe (32 → 16 → 8); the ceil-mode average divides by the taps inside
the image (Caffe's and PyTorch's rule). As in the released model the class maps pass through a
ReLU before the global average (``final_relu=False`` drops it). Dropout 0.5 between the
mlpconv blocks (§4.1). Weights He normal (the paper does not state its initialisation;
Caffe's file uses Gaussians of std 0.05), biases 0. Parameters with 10 classes: 966,986.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from cnnjax.layers import check_input_size
from cnnjax.models.blocks import BuilderModule
from cnnjax.models.registry import register_model

__all__ = ["MLPConvBlock", "NiN"]


class MLPConvBlock(BuilderModule):
    """An mlpconv block (Lin et al. 2014, Fig. 2): a ``kernel_size`` conv then 1×1 convs.

    ``(N, H, W, C) -> (N, H, W, features[-1])`` (spatial convs use padding ``k // 2``); every
    conv is followed by ReLU except the last when ``final_relu=False``.
    """

    features: tuple[int, ...]
    kernel_size: int
    final_relu: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, features in enumerate(self.features):
            kernel = self.kernel_size if i == 0 else 1
            x = self.kit.conv(features, kernel, padding=kernel // 2)(x)
            if self.final_relu or i < len(self.features) - 1:
                x = nn.relu(x)
        return x


class NiN(BuilderModule):
    """Network in Network for CIFAR-10 (Lin et al. 2014). ``(N, 32, 32, 3) -> (N, classes)``.

    Any ``H, W >= 4`` runs (ceil-mode windows may overhang the input, as in PyTorch).
    """

    num_classes: int = 10
    final_relu: bool = True
    dropout_rate: float = 0.5

    min_input_size = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        check_input_size(x, model="NiN (nin)", min_size=self.min_input_size)
        b = self.kit
        x = MLPConvBlock((192, 160, 96), 5, builders=b)(x)
        x = b.max_pool(3, stride=2, ceil_mode=True)(x)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = MLPConvBlock((192, 192, 192), 5, builders=b)(x)
        x = b.avg_pool(3, stride=2, ceil_mode=True, count_include_pad=False)(x)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = MLPConvBlock((192, 192, self.num_classes), 3, final_relu=self.final_relu, builders=b)(x)
        return b.global_avg_pool(x)


register_model(
    "nin",
    paper="Lin, Chen & Yan 2014, Network in network, ICLR, arXiv:1312.4400 (CIFAR-10 model)",
    input_shape=(32, 32, 3),
    min_input_size=NiN.min_input_size,
    test_input_shape=(16, 16, 3),
    default_num_classes=10,
)(NiN)
