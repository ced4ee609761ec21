"""U-Net (Ronneberger, Fischer & Brox 2015): a contracting path and an expanding path joined by
skip connections, for per-pixel classification.

Contracting path: at each of ``len(widths) - 1`` levels two 3×3 convs (ReLU) then a 2×2/2 max
pool; the bottom level two 3×3 convs. Expanding path: a 2×2/2 *transposed* conv halving the
channels ("up-convolution"), concatenation with the centre crop of the encoder map of that level
(the crop is needed with the paper's unpadded convs), two 3×3 convs (ReLU); a final 1×1 conv
gives ``num_classes`` logits per pixel.

Paper configuration (``widths=(64, 128, 256, 512, 1024)``, ``padding=0``, 1 input channel,
2 classes): a 572×572 tile gives a 388×388 map and 31,030,658 parameters (18 3×3 convs,
4 up-convs and the 1×1 classifier, all with biases; no batch norm: 18,842,048 in the
contracting path, 12,188,610 in the expanding path). ``padding=1`` keeps the spatial size
(the common re-implementation; inputs must then be divisible by ``2 ** (len(widths) - 1)``).

Returns logits ``(N, H', W', num_classes)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.layers import check_input_size
from cnnjax.models.blocks import BuilderModule
from cnnjax.models.registry import register_model

__all__ = ["UNet", "center_crop", "min_input_size"]


def _fits(size: int, levels: int, padding: int) -> bool:
    """Whether a ``size`` × ``size`` input leaves every map of the net at least 1 pixel."""
    skips = []
    for _ in range(levels):
        size = size + 4 * padding - 4  # two 3×3 convs
        skips.append(size)
        size //= 2
        if min(skips) < 1 or size < 1:
            return False
    size = size + 4 * padding - 4
    for skip in reversed(skips):
        if size < 1 or 2 * size > skip:
            return False
        size = 2 * size + 4 * padding - 4
    return size >= 1


def min_input_size(levels: int, padding: int) -> int:
    """Smallest ``H == W`` a U-Net with ``levels`` max pools and conv ``padding`` accepts.

    Every map must keep at least one pixel (each 3×3 conv changes the side by ``2·padding - 2``,
    each pool floor-halves it); found by search, since sizes are monotone in the input side.
    Paper net (4 pools, ``padding=0``): 188; ``padding=1``: ``2 ** levels``.
    """
    return next(s for s in range(1, 2 ** (levels + 1) * 16 + 64) if _fits(s, levels, padding))


def center_crop(x: jax.Array, spatial: Sequence[int]) -> jax.Array:
    """The central ``spatial`` window of ``(N, *S, C)`` (U-Net's "cropping" of the skip)."""
    starts = [(n - m) // 2 for n, m in zip(x.shape[1:-1], spatial, strict=True)]
    index = tuple(slice(s, s + m) for s, m in zip(starts, spatial, strict=True))
    return x[(slice(None), *index, slice(None))]


class UNet(BuilderModule):
    """U-Net; ``widths`` are the channels per level, top to bottom.

    Attributes:
      num_classes: output channels (logits per pixel).
      widths: e.g. ``(64, 128, 256, 512, 1024)`` (paper) or ``(8, 16, 32)`` (tiny).
      padding: 0 (paper, valid convs, output smaller than input) or 1 (same-size output).
    """

    num_classes: int = 2
    widths: Sequence[int] = (64, 128, 256, 512, 1024)
    padding: int = 0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        levels = len(self.widths) - 1
        check_input_size(
            x,
            model=f"UNet (unet, widths={tuple(self.widths)}, padding={self.padding})",
            min_size=min_input_size(levels, self.padding),
            hint="pass larger images, or use same-size convs and fewer levels: "
            "--set model_overrides.padding=1 --set 'model_overrides.widths=(16,32,64)'",
        )
        b = self.kit

        def double_conv(x, width, name):
            for i in (1, 2):
                x = nn.relu(b.conv(width, 3, padding=self.padding, name=f"{name}_conv{i}")(x))
            return x

        skips = []
        for level, width in enumerate(self.widths[:-1]):
            x = double_conv(x, width, f"down{level}")
            skips.append(x)
            x = b.max_pool(2)(x)
        x = double_conv(x, self.widths[-1], "bottom")
        for level in reversed(range(len(self.widths) - 1)):
            width = self.widths[level]
            x = b.conv_transpose(width, 2, stride=2, name=f"up{level}_upconv")(x)
            skip = center_crop(skips[level], x.shape[1:-1])
            x = double_conv(jnp.concatenate([skip, x], axis=-1), width, f"up{level}")
        return b.conv(self.num_classes, 1, name="classifier")(x)


register_model(
    "unet",
    paper="Ronneberger, Fischer & Brox 2015, U-Net: convolutional networks for biomedical "
    "image segmentation, MICCAI",
    input_shape=(572, 572, 1),
    min_input_size=min_input_size(4, 0),  # 188
    test_input_shape=(188, 188, 1),
    default_num_classes=2,
    task="segmentation",
)(UNet)
