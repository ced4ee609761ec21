"""ZFNet: Zeiler & Fergus 2013, "Visualizing and understanding convolutional networks"
(arXiv:1311.2901, ECCV 2014), Fig. 3 and Table 2. Input ``(N, 224, 224, 3)``.

AlexNet with a smaller, denser first layer (7×7 stride 2 instead of 11×11 stride 4, which the
paper's visualisations showed left dead and aliased filters), conv2 at stride 2, and no tower
split::

    conv1  96@7×7/2 pad 1, ReLU    110×110×96
    pool1  max 3×3/2, LRN           55×55×96
    conv2  256@5×5/2, ReLU          26×26×256
    pool2  max 3×3/2, LRN           13×13×256
    conv3  384@3×3 pad 1, ReLU      13×13×384
    conv4  384@3×3 pad 1, ReLU      13×13×384
    conv5  256@3×3 pad 1, ReLU      13×13×256
    pool5  max 3×3/2                 6×6×256
    fc6, fc7  4096, ReLU, dropout 0.5;  fc8 num_classes logits

The paper gives only the map sizes of Fig. 3 (110, 55, 26, 13, 13, 13, 6); we reach them with
padding 1 in conv1 and ceil-mode pooling (``ceil((n - 3) / 2) + 1``). "Contrast normalized
across feature maps" is read as AlexNet's LRN (the paper's ``n=5, k=2, alpha=1e-4, beta=0.75``,
i.e. ``alpha=5e-4`` in :func:`~cnnjax.ops.local_response_norm`'s ``alpha / n`` convention), after
pools 1 and 2 as in the figure's caption order (ReLU, pool, normalise). Weights ``N(0, 0.01)``
(§3: "all weights initialized to 10^-2"), biases 0. Dropout 0.5 on fc6 and fc7 outputs.
Parameters with 1000 classes: 62,357,608.

``zfnet_large`` is Table 2's bigger model ("layers 3, 4, 5: 512, 1024, 512 maps").
``head_width`` (4096) can be lowered for quick tests; fc6's fan-in is the flattened pool5
output, so the count above holds at 224×224. Smallest input: 47×47 (pool5 then gives 1×1).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax

from cnnjax.layers import check_input_size
from cnnjax.models.alexnet import paper_head
from cnnjax.models.blocks import BuilderModule
from cnnjax.models.registry import register_model

__all__ = ["ZFNet"]

_PAPER_INIT = nn.initializers.normal(0.01)


class ZFNet(BuilderModule):
    """ZFNet (Zeiler & Fergus 2013). ``(N, 224, 224, 3) -> (N, num_classes)`` logits.

    Attributes:
        widths: channels of conv3, conv4, conv5 ((384, 384, 256); ``zfnet_large``: 512, 1024,
            512).
        head_width: fc6/fc7 width (4096).
    """

    num_classes: int = 1000
    widths: Sequence[int] = (384, 384, 256)
    head_width: int = 4096
    dropout_rate: float = 0.5

    min_input_size = 47

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        check_input_size(x, model="ZFNet (zfnet)", min_size=self.min_input_size)
        b = self.kit

        def conv(features, kernel, stride=1, padding=0, name=None):
            return b.conv(
                features, kernel, stride=stride, padding=padding, kernel_init=_PAPER_INIT, name=name
            )

        def pool(y):
            return b.max_pool(3, stride=2, ceil_mode=True)(y)

        def lrn(y):
            return b.lrn(5, alpha=5 * 1e-4, beta=0.75, k=2.0)(y)

        x = lrn(pool(nn.relu(conv(96, 7, stride=2, padding=1, name="conv1")(x))))
        x = lrn(pool(nn.relu(conv(256, 5, stride=2, name="conv2")(x))))
        for i, width in enumerate(self.widths, start=3):
            x = nn.relu(conv(width, 3, padding=1, name=f"conv{i}")(x))
        x = pool(x)
        return paper_head(self, x.reshape(x.shape[0], -1), train, nn.initializers.zeros)


_PAPER = (
    "Zeiler & Fergus 2013, Visualizing and understanding convolutional networks, "
    "arXiv:1311.2901 (ECCV 2014)"
)
register_model(
    "zfnet",
    paper=_PAPER,
    input_shape=(224, 224, 3),
    min_input_size=ZFNet.min_input_size,
    test_input_shape=(47, 47, 3),
)(ZFNet)
register_model(
    "zfnet_large",
    paper=_PAPER + ", Table 2 (layers 3, 4, 5 with 512, 1024, 512 maps)",
    input_shape=(224, 224, 3),
    min_input_size=ZFNet.min_input_size,
    test_input_shape=(47, 47, 3),
)(functools.partial(ZFNet, widths=(512, 1024, 512)))
