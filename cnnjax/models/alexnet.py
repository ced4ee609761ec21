"""AlexNet: the paper's two-tower network and torchvision's single-tower variant.

* :class:`AlexNet` — Krizhevsky, Sutskever & Hinton 2012, "ImageNet classification with deep
  convolutional neural networks" (NIPS), Fig. 2 and §3. Input ``(N, 227, 227, 3)`` (the paper
  says 224; 227 is the size the layer arithmetic needs: ``(227 - 11) / 4 + 1 = 55``).

  ==========  ===========================  ====================
  layer       paper                        output at 227×227
  ==========  ===========================  ====================
  conv1       96@11×11/4, ReLU, LRN         55×55×96
  pool1       max 3×3/2 (overlapping)       27×27×96
  conv2       256@5×5 pad 2, groups 2       27×27×256  (ReLU, LRN)
  pool2       max 3×3/2                     13×13×256
  conv3       384@3×3 pad 1 (both towers)   13×13×384
  conv4       384@3×3 pad 1, groups 2       13×13×384
  conv5       256@3×3 pad 1, groups 2       13×13×256
  pool5       max 3×3/2                     6×6×256
  fc6, fc7    4096, ReLU, dropout 0.5       4096
  fc8         num_classes                   logits
  ==========  ===========================  ====================

  ``groups=2`` reproduces the two-GPU split (conv2, conv4 and conv5 only see the kernel maps
  on their own GPU; conv3 and the dense layers communicate). LRN uses the paper's
  ``k=2, n=5, alpha=1e-4, beta=0.75`` (§3.3) and follows the ReLU. The paper's formula has
  ``k + alpha * sum a^2``; :func:`~cnnjax.ops.local_response_norm` (like PyTorch and Caffe)
  divides ``alpha`` by ``n``, so we pass ``alpha = 5e-4`` (Caffe's reference ``bvlc_alexnet``
  passes ``1e-4``, a 5× weaker normalisation than the paper's). Dropout 0.5 is applied to the
  outputs of fc6 and fc7 (§4.2, "the first two fully-connected layers"). Init as §5:
  weights ``N(0, 0.01)``, biases 1 in conv2, conv4, conv5, fc6, fc7 and 0 elsewhere.
  Parameters with 1000 classes: 60,965,224.

* :class:`AlexNetTorchvision` — torchvision's ``alexnet`` (the single-tower "One weird trick"
  variant, Krizhevsky 2014): convs 64@11×11/4 pad 2, 192@5×5 pad 2, 384, 256, 256 @3×3 pad 1,
  no LRN, no groups, 3×3/2 max pools, then an adaptive average pool to 6×6
  (:class:`~cnnjax.layers.AdaptiveAvgPool`: the identity at 224×224, the op's average pool when
  the size divides, PyTorch's ``floor(i*n/o) .. ceil((i+1)*n/o)`` windows otherwise), dropout
  0.5 *before* fc6 and fc7 as torchvision does. Input ``(N, 224, 224, 3)``; exactly 61,100,840
  parameters with 1000 classes. Init: He normal convs, ``N(0, 0.01)`` dense, zero biases. The
  flattening is ``(H, W, C)`` order, not torchvision's ``(C, H, W)``: weight conversion must
  permute fc6's input axis.

Both accept ``head_width`` (4096) to shrink fc6/fc7 for quick tests; the published counts are
for the default. A dense head is created from the flattened size it sees, so the paper model's
count is 60,965,224 only at 227×227 (smaller inputs give a smaller fc6).
"""

from __future__ import annotations

import flax.linen as nn
import jax

from cnnjax.layers import check_input_size
from cnnjax.models.blocks import BuilderModule, mlp_head
from cnnjax.models.registry import register_model

__all__ = ["AlexNet", "AlexNetTorchvision"]

_PAPER_INIT = nn.initializers.normal(0.01)


def paper_head(
    module: BuilderModule, x: jax.Array, train: bool, fc_bias_init: nn.initializers.Initializer
) -> jax.Array:
    """The classifier of AlexNet and ZFNet: fc6, fc7 (``module.head_width`` units, ReLU, dropout
    ``module.dropout_rate``) and fc8 (``module.num_classes`` logits), ``(N, F) -> (N,
    num_classes)``. Weights ``N(0, 0.01)``; fc6/fc7 biases ``fc_bias_init`` (AlexNet: 1, ZFNet:
    0), fc8's 0. Called inside ``module``'s compact ``__call__``, the layers are its submodules
    ``fc6``, ``fc7``, ``fc8`` (the paths of checkpoints and of the NNX models), built by
    ``module.kit``."""
    return mlp_head(
        module.kit,
        x,
        (module.head_width, module.head_width, module.num_classes),
        ("fc6", "fc7", "fc8"),
        train=train,
        dropout_rate=module.dropout_rate,
        hidden_bias_init=fc_bias_init,
        kernel_init=_PAPER_INIT,
    )


class AlexNet(BuilderModule):
    """AlexNet as in Krizhevsky et al. 2012 (two-tower ``groups=2`` convs, LRN), 227×227 input.

    ``(N, 227, 227, 3) -> (N, num_classes)`` logits; see the module docstring for the layers.
    Smallest input 67×67 (pool5 then gives 1×1).
    """

    num_classes: int = 1000
    head_width: int = 4096
    dropout_rate: float = 0.5

    min_input_size = 67

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        check_input_size(x, model="AlexNet (alexnet)", min_size=self.min_input_size)
        b = self.kit

        def conv(features, kernel, stride=1, padding=0, groups=1, bias=0.0, name=None):
            return b.conv(
                features,
                kernel,
                stride=stride,
                padding=padding,
                groups=groups,
                kernel_init=_PAPER_INIT,
                bias_init=nn.initializers.constant(bias),
                name=name,
            )

        def pool(y):
            return b.max_pool(3, stride=2)(y)

        def lrn(y):
            return b.lrn(5, alpha=5 * 1e-4, beta=0.75, k=2.0)(y)

        x = pool(lrn(nn.relu(conv(96, 11, stride=4, name="conv1")(x))))
        x = pool(lrn(nn.relu(conv(256, 5, padding=2, groups=2, bias=1.0, name="conv2")(x))))
        x = nn.relu(conv(384, 3, padding=1, name="conv3")(x))
        x = nn.relu(conv(384, 3, padding=1, groups=2, bias=1.0, name="conv4")(x))
        x = pool(nn.relu(conv(256, 3, padding=1, groups=2, bias=1.0, name="conv5")(x)))
        return paper_head(self, x.reshape(x.shape[0], -1), train, nn.initializers.ones)


class AlexNetTorchvision(BuilderModule):
    """torchvision's single-tower AlexNet (64/192/384/256/256, adaptive pool to 6×6), 224×224.

    ``(N, H, W, 3) -> (N, num_classes)`` logits, ``H, W >= 63``; 61,100,840 parameters with
    1000 classes at any input size (the adaptive pool fixes fc6's fan-in at 6·6·256).
    """

    num_classes: int = 1000
    head_width: int = 4096
    dropout_rate: float = 0.5

    min_input_size = 63

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        check_input_size(
            x, model="AlexNetTorchvision (alexnet_torchvision)", min_size=self.min_input_size
        )
        b = self.kit

        def pool(y):
            return b.max_pool(3, stride=2)(y)

        x = pool(nn.relu(b.conv(64, 11, stride=4, padding=2, name="conv1")(x)))
        x = pool(nn.relu(b.conv(192, 5, padding=2, name="conv2")(x)))
        x = nn.relu(b.conv(384, 3, padding=1, name="conv3")(x))
        x = nn.relu(b.conv(256, 3, padding=1, name="conv4")(x))
        x = pool(nn.relu(b.conv(256, 3, padding=1, name="conv5")(x)))
        x = b.adaptive_avg_pool(6)(x)
        return mlp_head(
            b,
            x.reshape(x.shape[0], -1),
            (self.head_width, self.head_width, self.num_classes),
            ("fc6", "fc7", "fc8"),
            train=train,
            dropout_rate=self.dropout_rate,
            dropout_first=True,
            kernel_init=_PAPER_INIT,
        )


register_model(
    "alexnet",
    paper="Krizhevsky, Sutskever & Hinton 2012, ImageNet classification with deep convolutional "
    "neural networks, NIPS",
    input_shape=(227, 227, 3),
    min_input_size=AlexNet.min_input_size,
    test_input_shape=(67, 67, 3),
)(AlexNet)

register_model(
    "alexnet_torchvision",
    paper="Krizhevsky 2014, One weird trick for parallelizing convolutional neural networks, "
    "arXiv:1404.5997 (torchvision's alexnet)",
    input_shape=(224, 224, 3),
    min_input_size=AlexNetTorchvision.min_input_size,
    test_input_shape=(63, 63, 3),
)(AlexNetTorchvision)
