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
7·7·512·4096 ≈ 102.8M parameters; the tests use it to keep CI fast. ``bn_axis_name`` is passed
to ``nn.BatchNorm`` for cross-device batch statistics.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax

from cnnjax.layers import AdaptiveAvgPool, BatchNorm, Conv, MaxPool, check_input_size
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


def conv_bn_relu(
    x: jax.Array,
    features: int,
    *,
    train: bool,
    name: str,
    bn_name: str | None,
    bn_axis_name: str | None = None,
    dtype: Any = None,
    **conv_kwargs: Any,
) -> jax.Array:
    """VGG's layer: 3×3 conv (padding 1) → batch norm → ReLU, ``(N, H, W, C) -> (N, H, W,
    features)``; also SegNet's. Batch norm as torchvision's ``vgg*_bn`` (momentum 0.9, i.e.
    PyTorch's 0.1; epsilon 1e-5; ``bn_axis_name`` for cross-device statistics), left out when
    ``bn_name`` is ``None``. ``conv_kwargs`` go to :class:`~cnnjax.layers.Conv`.

    A function, not a module: called inside a compact module it makes that module's
    submodules ``name`` and ``bn_name`` (siblings), the paths checkpoints, torchvision weights
    (:mod:`cnnjax.models.torch_weights`) and the NNX models use.
    """
    x = Conv(features, (3, 3), padding=1, name=name, dtype=dtype, **conv_kwargs)(x)
    if bn_name is not None:
        x = BatchNorm(
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            dtype=dtype,
            axis_name=bn_axis_name,
            name=bn_name,
        )(x)
    return nn.relu(x)


class VGG(nn.Module):
    """A VGG network from a :data:`VGG_CONFIGS` entry. ``(N, H, W, 3) -> (N, num_classes)``.

    Attributes:
        config: the layer list (channels and ``"M"``).
        batch_norm: batch norm after every conv (``vggXX_bn``).
        head_width: width of the two hidden dense layers (4096).
        dropout_rate: dropout before the second and third dense layers (0.5).
        bn_axis_name: ``axis_name`` for ``nn.BatchNorm`` (cross-device statistics).
    """

    config: Sequence[int | str]
    num_classes: int = 1000
    impl: str = "custom"
    precision: Any = None
    dtype: Any = None
    batch_norm: bool = False
    head_width: int = 4096
    dropout_rate: float = 0.5
    bn_axis_name: str | None = None

    min_input_size = 32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        depth = sum(item != "M" for item in self.config) + 3
        name = f"vgg{depth}{'_bn' if self.batch_norm else ''}"
        check_input_size(x, model=f"VGG ({name})", min_size=self.min_input_size)
        common = {"impl": self.impl, "dtype": self.dtype}
        conv_kw = {**common, "precision": self.precision}
        init = nn.initializers.glorot_uniform()
        for i, item in enumerate(self.config):
            if item == "M":
                x = MaxPool((2, 2), stride=2, **common)(x)
                continue
            x = conv_bn_relu(
                x,
                item,
                train=train,
                name=f"conv{i}",
                bn_name=f"bn{i}" if self.batch_norm else None,
                bn_axis_name=self.bn_axis_name,
                kernel_init=init,
                **conv_kw,
            )
        x = AdaptiveAvgPool((7, 7), **common)(x)
        x = x.reshape(x.shape[0], -1)
        for name in ("fc1", "fc2"):
            x = nn.relu(
                nn.Dense(
                    self.head_width,
                    kernel_init=init,
                    dtype=self.dtype,
                    name=name,
                    precision=self.precision,
                )(x)
            )
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(
            self.num_classes,
            kernel_init=init,
            dtype=self.dtype,
            name="fc3",
            precision=self.precision,
        )(x)


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
