"""SegNet (Badrinarayanan, Kendall & Cipolla 2017): a VGG-16 encoder with batch norm whose
max-pool *switches* drive the decoder's upsampling.

Encoder: VGG-16's 13 3×3 convs (each conv + BN + ReLU) in 5 stages, each ending in a 2×2/2 max
pool that also returns its indices (:func:`cnnjax.ops.max_pool` with ``return_indices``).
Decoder: per stage, in reverse, :func:`cnnjax.ops.max_unpool` with that stage's switches (sparse
upsampling, no learned weights) then the mirrored convs (conv + BN + ReLU); the last decoder
conv gives ``num_classes`` logits and has no BN/ReLU (the reference Caffe ``segnet_train``
prototxt: ``conv1_1_D``). Conv layers have biases, as in the reference implementation.

The reference configuration (3 input channels, CamVid's 11 classes) has 29,449,355 trainable
parameters (plus 15,872 BN running statistics): 14,723,136 in the encoder (VGG-16's 14,714,688
conv weights and biases plus 8,448 BN scale/shift) and 14,726,219 in the decoder, which mirrors
the encoder (the paper's Table 6: 29.5M). Inputs must be divisible by 32.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from cnnjax import ops
from cnnjax.layers import check_input_size
from cnnjax.models.blocks import BuilderModule, conv_bn_act
from cnnjax.models.registry import register_model

__all__ = ["SEGNET_ENCODER", "SegNet"]

# VGG-16 configuration D as (width, convs) per stage.
SEGNET_ENCODER: tuple[tuple[int, int], ...] = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


class SegNet(BuilderModule):
    """SegNet; ``stages`` is ``((width, convs), ...)`` (default VGG-16), ``width_scale`` shrinks
    every width for small experiments. Returns logits ``(N, H, W, num_classes)``."""

    num_classes: int = 11
    stages: Sequence[tuple[int, int]] = SEGNET_ENCODER
    width_scale: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_input_size(
            x,
            model=f"SegNet (segnet, {len(self.stages)} pooling stages)",
            min_size=2 ** len(self.stages),  # every 2×2/2 pool keeps at least 1 pixel
            hint="pass larger images or fewer stages (model_overrides.stages)",
        )
        b = self.kit
        widths = [max(1, round(w * self.width_scale)) for w, _ in self.stages]

        def block(x, width, name):
            return conv_bn_act(
                b, x, width, 3, train=train, name=name, norm_name=f"{name}_bn", padding=1
            )

        switches = []
        for s, (width, (_, convs)) in enumerate(zip(widths, self.stages, strict=True)):
            for c in range(convs):
                x = block(x, width, f"conv{s + 1}_{c + 1}")
            shape = x.shape[1:-1]
            x, indices = ops.max_pool(x, 2, return_indices=True, impl=b.impl)
            switches.append((indices, shape))
        for s in reversed(range(len(self.stages))):
            indices, shape = switches[s]
            x = ops.max_unpool(x, indices, 2, output_shape=shape, impl=b.impl)
            convs = self.stages[s][1]
            for c in reversed(range(convs)):
                name = f"conv{s + 1}_{c + 1}_D"
                if s == 0 and c == 0:
                    return b.conv(self.num_classes, 3, padding=1, name=name)(x)
                # the first conv of a stage maps to the next (shallower) stage's width
                width = widths[s - 1] if c == 0 else widths[s]
                x = block(x, width, name)
        raise AssertionError("unreachable")  # pragma: no cover


register_model(
    "segnet",
    paper="Badrinarayanan, Kendall & Cipolla 2017, SegNet: a deep convolutional encoder-decoder "
    "architecture for image segmentation, TPAMI",
    input_shape=(360, 480, 3),
    min_input_size=32,
    test_input_shape=(32, 32, 3),
    default_num_classes=11,
    task="segmentation",
)(SegNet)
