"""VGG: Simonyan & Zisserman 2015, "Very deep convolutional networks for large-scale image
recognition" (ICLR), Table 1 configurations A (vgg11), B (vgg13), D (vgg16), E (vgg19), with
torchvision's head. Input ``(N, 224, 224, 3)``; any ``H, W >= 32``.

Every conv is 3×3, stride 1, padding 1, followed by ReLU (or batch norm then ReLU for the
``_bn`` variants, Ioffe & Szegedy 2015, as torchvision); every pool is 2×2/2 max. The head is
torchvision's: :class:`~cnnjax.layers.AdaptiveAvgPool` to 7×7 (the identity at 224×224; at
32×32 the 1×1 map is repeated 49 times, PyTorch's rule), flatten, then
``Dense(4096) → ReLU → Dropout(0.5) → Dense(4096) → ReLU → Dropout(0.5) → Dense(classes)``.
Parameters with 1000 classes (the ``params`` collection; batch-norm running statistics are
``batch_stats``): vgg11 132,863,336, vgg13 133,047,848, vgg16 138,357,544, vgg19 143,667,240;
with BN 132,868,840, 133,053,736, 138,365,992, 143,678,248. Convs keep their biases in the BN
variants (as torchvision, so the counts match).

Init: Glorot & Bengio uniform for every weight (the paper's §3.1 note that Glorot
initialisation trains the deep configurations without pre-training), biases 0.

Overrides: ``head_width`` (4096) shrinks the two hidden dense layers, whose first alone holds
7·7·512·4096 ≈ 102.8M parameters; the tests use it to keep CI fast. ``axis_name`` is passed
to every BatchNorm for cross-device batch statistics.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax

from cnnjax.layers import check_input_size
from cnnjax.models.blocks import BuilderModule, conv_bn_act, mlp_head
from cnnjax.models.registry import register_model

__all__ = ["VGG", "VGG_CONFIGS"]

#: Table 1 of the paper: channels of each 3×3 conv, ``"M"`` for a 2×2/2 max pool.
VGG_CONFIGS: dict[str, tuple[int | str, ...]] = {
    "A": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "B": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "D": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "E": (
        *(64, 64, "M", 128, 128, "M"),
        *(256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
    ),
}


class VGG(BuilderModule):
    """A VGG network from a :data:`VGG_CONFIGS` entry. ``(N, H, W, 3) -> (N, num_classes)``.

    Attributes:
        config: the layer list (channels and ``"M"``).
        batch_norm: batch norm after every conv (``vggXX_bn``).
        head_width: width of the two hidden dense layers (4096).
        dropout_rate: dropout before the second and third dense layers (0.5).
        axis_name: BatchNorm's cross-device axis; with ``impl``, ``precision``, ``dtype``,
          ``bn_momentum``, ``bn_epsilon`` or one ``builders``, the keyword-only plumbing of
          :class:`~cnnjax.models.blocks.BuilderModule`.
    """

    config: Sequence[int | str]
    num_classes: int = 1000
    batch_norm: bool = False
    head_width: int = 4096
    dropout_rate: float = 0.5

    min_input_size = 32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        depth = sum(item != "M" for item in self.config) + 3
        name = f"vgg{depth}{'_bn' if self.batch_norm else ''}"
        check_input_size(x, model=f"VGG ({name})", min_size=self.min_input_size)
        b, init = self.kit, nn.initializers.glorot_uniform()
        for i, item in enumerate(self.config):
            if item == "M":
                x = b.max_pool(2, stride=2)(x)
                continue
            x = conv_bn_act(
                b, x, item, 3, train=train, name=f"conv{i}", padding=1, kernel_init=init,
                norm_name=f"bn{i}" if self.batch_norm else None,
            )  # fmt: skip
        x = b.adaptive_avg_pool(7)(x)
        return mlp_head(
            b,
            x.reshape(x.shape[0], -1),
            (self.head_width, self.head_width, self.num_classes),
            ("fc1", "fc2", "fc3"),
            train=train,
            dropout_rate=self.dropout_rate,
            kernel_init=init,
        )


_PAPER = (
    "Simonyan & Zisserman 2015, Very deep convolutional networks for large-scale image "
    "recognition, ICLR (config {config}{bn})"
)
for _depth, _config in (("11", "A"), ("13", "B"), ("16", "D"), ("19", "E")):
    for _bn in (False, True):
        register_model(
            f"vgg{_depth}{'_bn' if _bn else ''}",
            paper=_PAPER.format(
                config=_config, bn=" + batch norm, Ioffe & Szegedy 2015" if _bn else ""
            ),
            input_shape=(224, 224, 3),
            min_input_size=VGG.min_input_size,
            test_input_shape=(32, 32, 3),
        )(functools.partial(VGG, config=VGG_CONFIGS[_config], batch_norm=_bn))
