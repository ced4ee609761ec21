"""GoogLeNet (Inception v1): Szegedy et al. 2014, "Going deeper with convolutions"
(arXiv:1409.4842, CVPR 2015), Table 1 and Fig. 3. Input ``(N, 224, 224, 3)``.

Stem (Fig. 3): conv 64@7×7/2 pad 3 → max 3×3/2 → LRN → conv 64@1×1 → conv 192@3×3 pad 1 →
LRN → max 3×3/2, then inception blocks 3a, 3b, max 3×3/2, 4a-4e, max 3×3/2, 5a, 5b, global
average pooling (the paper's 7×7/1 average at 224×224), dropout 0.4 and a dense layer. Every
conv (reductions and projections included) is followed by ReLU. Max pools use ceil mode, as the
reference Caffe model (224 → 112 → 56 → 28 → 14 → 7). LRN uses the reference Caffe model's
``size=5, alpha=1e-4, beta=0.75, k=1`` (the paper gives no values; Caffe's ``alpha`` is divided
by ``size``, as in :func:`~cnnjax.ops.local_response_norm`). The 5×5 branches are true 5×5
convs (torchvision replaced them by 3×3). Weights: Glorot uniform (Caffe's ``xavier``), biases
0; the paper does not state its initialisation.

Auxiliary classifiers (§5) on the outputs of 4a and 4d: average pool 5×5/3 (4×4 at 224×224),
conv 128@1×1 + ReLU, dense 1024 + ReLU, dropout 0.7, dense ``num_classes``. They are only
evaluated when ``train=True``; then the model returns ``(logits, (aux1_logits, aux2_logits))``
(the paper weights the auxiliary losses by 0.3). With ``train=False`` it returns ``logits``
only. Their parameters exist in either mode (``init`` with ``train=False`` creates them too).
``aux_logits=False`` removes them, and the model always returns ``logits``.

Parameters with 1000 classes, measured: 6,998,552 without the auxiliary classifiers
(6,990,272 weights + 8,280 biases) and 13,378,280 with them (each auxiliary head: 1×1 conv
65,664 or 67,712, dense 2,098,176, classifier 1,025,000; the auxiliary dense layer's fan-in is
4·4·128 only at 224×224). The paper's "params" column of Table 1 sums to ≈6.8M, but its rows
are approximate and do not all follow from the listed layer sizes (conv1 is listed as 2.7K
while 7·7·3·64 = 9,408 weights; inception (4c) as 463K while its sizes give 509,440 weights);
the exact weight count of the Table 1 architecture is the 6,990,272 above.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.layers import check_input_size
from cnnjax.models.blocks import BuilderModule, classifier
from cnnjax.models.registry import register_model

__all__ = ["GOOGLENET_INCEPTION_CONFIGS", "GoogLeNet", "InceptionBlock"]

_INIT = nn.initializers.glorot_uniform()

#: Table 1: ``(#1×1, #3×3 reduce, #3×3, #5×5 reduce, #5×5, pool proj)`` per inception block.
GOOGLENET_INCEPTION_CONFIGS: dict[str, tuple[int, int, int, int, int, int]] = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}


class InceptionBlock(BuilderModule):
    """The inception module with dimension reductions (Szegedy et al. 2014, Fig. 2b).

    Four parallel branches on ``(N, H, W, C)``, concatenated on channels into
    ``(N, H, W, ch1x1 + ch3x3 + ch5x5 + pool_proj)``:

    * 1×1 conv ``ch1x1``;
    * 1×1 conv ``ch3x3_reduce`` → 3×3 conv ``ch3x3`` (padding 1);
    * 1×1 conv ``ch5x5_reduce`` → 5×5 conv ``ch5x5`` (padding 2);
    * 3×3/1 max pool (padding 1) → 1×1 conv ``pool_proj``.

    Every conv is followed by ``act`` (ReLU).
    """

    ch1x1: int
    ch3x3_reduce: int
    ch3x3: int
    ch5x5_reduce: int
    ch5x5: int
    pool_proj: int
    kernel_init: Any = _INIT
    act: Any = nn.relu

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        def conv(features, kernel, name):
            layer = self.kit.conv(
                features, kernel, padding=kernel // 2, kernel_init=self.kernel_init, name=name
            )
            return lambda y: self.act(layer(y))

        branch1 = conv(self.ch1x1, 1, "branch1x1")(x)
        branch3 = conv(self.ch3x3_reduce, 1, "branch3x3_reduce")(x)
        branch3 = conv(self.ch3x3, 3, "branch3x3")(branch3)
        branch5 = conv(self.ch5x5_reduce, 1, "branch5x5_reduce")(x)
        branch5 = conv(self.ch5x5, 5, "branch5x5")(branch5)
        branch_pool = self.kit.max_pool(3, stride=1, padding=1)(x)
        branch_pool = conv(self.pool_proj, 1, "pool_proj")(branch_pool)
        return jnp.concatenate([branch1, branch3, branch5, branch_pool], axis=-1)


class _AuxClassifier(BuilderModule):
    """Auxiliary head (§5): avg 5×5/3 → 1×1 conv 128 → dense 1024 → dropout 0.7 → classes."""

    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        b = self.kit
        x = b.avg_pool(5, stride=3)(x)
        x = nn.relu(b.conv(128, 1, kernel_init=_INIT, name="conv")(x))
        x = nn.relu(b.dense(1024, kernel_init=_INIT, name="fc1")(x.reshape(x.shape[0], -1)))
        x = nn.Dropout(0.7, deterministic=not train)(x)
        return b.dense(self.num_classes, kernel_init=_INIT, name="fc2")(x)


#: GoogLeNet's body after the stem (Table 1): inception blocks and 3×3/2 max pools.
_BODY = ("3a", "3b", "pool", "4a", "4b", "4c", "4d", "4e", "pool", "5a", "5b")


class GoogLeNet(BuilderModule):
    """GoogLeNet (Szegedy et al. 2014). ``(N, 224, 224, 3) -> (N, num_classes)`` logits.

    In training mode with ``aux_logits=True`` (default) returns
    ``(logits, (aux1_logits, aux2_logits))``; otherwise ``logits``. Smallest input: 79×79 with
    the auxiliary heads (4a's map must be at least 5×5 for their 5×5 pool), 31×31 without.
    """

    num_classes: int = 1000
    aux_logits: bool = True
    dropout_rate: float = 0.4

    @property
    def min_input_size(self) -> int:
        return 79 if self.aux_logits else 31

    @nn.compact
    def __call__(
        self, x: jax.Array, train: bool
    ) -> jax.Array | tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        check_input_size(x, model="GoogLeNet (googlenet)", min_size=self.min_input_size)
        b = self.kit

        def pool(y):
            return b.max_pool(3, stride=2, ceil_mode=True)(y)

        def lrn(y):
            return b.lrn(5, alpha=1e-4, beta=0.75)(y)

        def conv(features, kernel, stride=1, name=None):
            layer = b.conv(
                features, kernel, stride=stride, padding=kernel // 2, kernel_init=_INIT, name=name
            )
            return lambda y: nn.relu(layer(y))

        x = lrn(pool(conv(64, 7, stride=2, name="conv1")(x)))
        x = conv(64, 1, name="conv2_reduce")(x)
        x = pool(lrn(conv(192, 3, name="conv2")(x)))
        aux = []
        run_aux = self.aux_logits and (train or self.is_initializing())
        for block in _BODY:
            if block == "pool":
                x = pool(x)
                continue
            config = GOOGLENET_INCEPTION_CONFIGS[block]
            x = InceptionBlock(*config, name=f"inception{block}", builders=b)(x)
            if run_aux and block in ("4a", "4d"):
                head = _AuxClassifier(self.num_classes, name=f"aux{len(aux) + 1}", builders=b)
                aux.append(head(x, train))
        logits = classifier(
            b, x, self.num_classes, name="fc", train=train, dropout_rate=self.dropout_rate,
            kernel_init=_INIT,
        )  # fmt: skip
        if self.aux_logits and train:
            return logits, (aux[0], aux[1])
        return logits


register_model(
    "googlenet",
    paper="Szegedy et al. 2014, Going deeper with convolutions, arXiv:1409.4842 (CVPR 2015)",
    input_shape=(224, 224, 3),
    min_input_size=79,
    test_input_shape=(79, 79, 3),
)(GoogLeNet)
