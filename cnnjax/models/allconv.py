"""All-CNN-C: Springenberg, Dosovitskiy, Brox & Riedmiller 2015, "Striving for simplicity: the
all convolutional net" (ICLR workshop, arXiv:1412.6806), Tables 1 and 2 (model C with every
max pool replaced by a stride-2 conv). Input ``(N, 32, 32, 3)`` (CIFAR-10/100).

::

    dropout 0.2 on the input
    conv 96@3×3 pad 1, ReLU            32×32×96
    conv 96@3×3 pad 1, ReLU            32×32×96
    conv 96@3×3/2 pad 1, ReLU          16×16×96     (replaces 3×3/2 max pool)
    dropout 0.5
    conv 192@3×3 pad 1, ReLU           16×16×192
    conv 192@3×3 pad 1, ReLU           16×16×192
    conv 192@3×3/2 pad 1, ReLU          8×8×192
    dropout 0.5
    conv 192@3×3 (valid), ReLU          6×6×192
    conv 192@1×1, ReLU                  6×6×192
    conv num_classes@1×1, ReLU          6×6×classes
    global average pooling             (N, classes) logits

Table 1 lists a ReLU after the last 1×1 conv too, so by default the class maps are rectified
before averaging (logits are then >= 0); ``final_relu=False`` drops that ReLU. Dropout follows
§3.2.1 (20% on the input, 50% after each pooling-replacing layer). Weights He normal (the paper
does not state its initialisation), biases 0. Parameters with 10 classes: 1,369,738 (the paper:
"1.3 M").
"""

from __future__ import annotations

import flax.linen as nn
import jax

from cnnjax.layers import check_input_size
from cnnjax.models.blocks import BuilderModule
from cnnjax.models.registry import register_model

__all__ = ["AllConvNet"]


class AllConvNet(BuilderModule):
    """All-CNN-C (Springenberg et al. 2015). ``(N, 32, 32, 3) -> (N, num_classes)`` logits.

    Any ``H, W >= 9`` runs (the valid 3×3 conv then sees 3×3 maps).

    Attributes:
        widths: channels of the two stages (96, 192).
        final_relu: rectify the class maps before global averaging, as Table 1 (True).
        input_dropout, dropout_rate: 0.2 and 0.5.
    """

    num_classes: int = 10
    widths: tuple[int, int] = (96, 192)
    final_relu: bool = True
    input_dropout: float = 0.2
    dropout_rate: float = 0.5

    min_input_size = 9

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        check_input_size(x, model="AllConvNet (allconv_c)", min_size=self.min_input_size)
        b = self.kit

        def conv_relu(y, features, kernel, stride=1, padding=0):
            return nn.relu(b.conv(features, kernel, stride=stride, padding=padding)(y))

        x = nn.Dropout(self.input_dropout, deterministic=not train)(x)
        for width in self.widths:
            x = conv_relu(x, width, 3, padding=1)
            x = conv_relu(x, width, 3, padding=1)
            x = conv_relu(x, width, 3, stride=2, padding=1)
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = conv_relu(x, self.widths[-1], 3)
        x = conv_relu(x, self.widths[-1], 1)
        x = b.conv(self.num_classes, 1)(x)
        if self.final_relu:
            x = nn.relu(x)
        return b.global_avg_pool(x)


register_model(
    "allconv_c",
    paper="Springenberg, Dosovitskiy, Brox & Riedmiller 2015, Striving for simplicity: the all "
    "convolutional net, arXiv:1412.6806 (All-CNN-C)",
    input_shape=(32, 32, 3),
    min_input_size=AllConvNet.min_input_size,
    test_input_shape=(16, 16, 3),
    default_num_classes=10,
)(AllConvNet)
