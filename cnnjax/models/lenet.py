"""LeNet-5 (LeCun, Bottou, Bengio & Haffner 1998, "Gradient-based learning applied to document
recognition", Proc. IEEE 86(11), §II-B and Fig. 2), as faithfully as a modern toolkit allows.

Input ``(N, 32, 32, 1)`` (the paper pads 28×28 MNIST digits to 32×32 and scales pixels so the
background is -0.1 and the ink 1.175; that is the data pipeline's job). Layers::

    C1  conv 6@5×5            (N, 28, 28, 6)      156 params
    S2  trainable subsampling (N, 14, 14, 6)       12
    C3  conv 16@5×5, Table I  (N, 10, 10, 16)   1,516   (60 of the 96 map pairs connected)
    S4  trainable subsampling (N, 5, 5, 16)        32
    C5  conv 120@5×5          (N, 1, 1, 120)   48,120
    F6  dense 84                  (N, 84)      10,164
    output                        (N, classes)  RBF: 0 trainable (fixed codes); softmax: 850

Every layer up to F6 is followed by the paper's squashing function ``f(a) = A tanh(S a)`` with
``A = 1.7159`` and ``S = 2/3`` (Appendix A). Weights are initialised ``U(-2.4/F_in, 2.4/F_in)``
(Appendix A, :func:`~cnnjax.layers.lecun1998_uniform`; C3 uses each map's own fan-in); biases
and the subsampling coefficients start at 0 and 1. With the RBF output the trainable parameter
count is exactly the paper's 60,000.

Output layers (``output=``):

* ``"softmax"`` (default): a dense layer giving ``num_classes`` logits (use with softmax
  cross-entropy).
* ``"rbf"``: the paper's Euclidean RBF units, ``logit_c = -sum_i (f6_i - w_{c,i})^2`` (the
  paper's ``y_c`` with the sign flipped, so the largest logit is the closest prototype; softmax
  cross-entropy on these logits is the paper's MAP criterion, eq. 9, with ``exp(-j)`` replaced
  by the sum over all classes). The paper's prototypes were stylised 7×12 bitmaps of the ASCII
  characters, entries ±1, kept fixed. We approximate them by a fixed pseudo-random ±1 code of
  length 84 per class, ``numpy.random.default_rng(rbf_seed).choice([-1, 1], (num_classes, 84))``
  (``rbf_seed=0`` by default): a compile-time constant, not a parameter. Random ±1 codes of
  length 84 are at Hamming distance ≈ 42 from each other, so they are as well separated as the
  paper's bitmaps (which it chose to be distinct, not orthogonal).

The C3 connection table is Table I of the paper: maps 0-5 see 3 contiguous S2 maps
(``{j, j+1, j+2} mod 6``), maps 6-11 see 4 contiguous ones (``{j, ..., j+3} mod 6``), maps 12-14
see the non-contiguous ``{0,1,3,4}``, ``{1,2,4,5}``, ``{0,2,3,5}`` and map 15 sees all six.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.layers import check_input_size, lecun1998_uniform
from cnnjax.models.blocks import BuilderModule
from cnnjax.models.registry import register_model

__all__ = ["LENET5_C3_TABLE", "LeNet5", "scaled_tanh"]


def _c3_table() -> tuple[tuple[bool, ...], ...]:
    inputs = [{(j + t) % 6 for t in range(3)} for j in range(6)]
    inputs += [{(j + t) % 6 for t in range(4)} for j in range(6)]
    inputs += [{0, 1, 3, 4}, {1, 2, 4, 5}, {0, 2, 3, 5}, set(range(6))]
    return tuple(tuple(i in inputs[j] for j in range(16)) for i in range(6))


#: Table I of LeCun et al. 1998: ``LENET5_C3_TABLE[i][j]`` is True when C3 map ``j`` reads S2
#: map ``i`` (6 rows, 16 columns, 60 connections).
LENET5_C3_TABLE = _c3_table()


def scaled_tanh(x: jax.Array) -> jax.Array:
    """LeCun's squashing function ``1.7159 * tanh(2x / 3)`` (so that ``f(±1) = ±1``)."""
    return 1.7159 * jnp.tanh(x * (2.0 / 3.0))


class LeNet5(BuilderModule):
    """LeNet-5 (LeCun et al. 1998). Input ``(N, 32, 32, 1)``; returns logits ``(N, num_classes)``.

    Larger inputs run too (C5's maps are then larger than 1×1 and F6's fan-in grows). ``train``
    is accepted for a uniform model API; LeNet-5 has no dropout or batch norm.

    Attributes:
        num_classes: 10 in the paper.
        output: ``"softmax"`` (dense logits, default) or ``"rbf"`` (fixed-prototype Euclidean RBF
            units; see the module docstring for what the prototypes are).
        rbf_seed: seed of the fixed ±1 prototype codes (``output="rbf"`` only).
    """

    num_classes: int = 10
    output: str = "softmax"
    rbf_seed: int = 0

    min_input_size = 32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        del train  # no train-time behaviour
        check_input_size(x, model="LeNet5 (lenet5)", min_size=self.min_input_size)
        if self.output not in ("softmax", "rbf"):
            raise ValueError(f'LeNet5: output must be "softmax" or "rbf", got {self.output!r}')
        b, init = self.kit, lecun1998_uniform()
        x = scaled_tanh(b.conv(6, 5, kernel_init=init, name="C1")(x))
        x = scaled_tanh(b.subsampling(2, name="S2")(x))
        x = scaled_tanh(b.connection_table_conv(LENET5_C3_TABLE, 5, name="C3")(x))
        x = scaled_tanh(b.subsampling(2, name="S4")(x))
        x = scaled_tanh(b.conv(120, 5, kernel_init=init, name="C5")(x))
        x = scaled_tanh(b.dense(84, kernel_init=init, name="F6")(x.reshape(x.shape[0], -1)))
        if self.output == "softmax":
            return b.dense(self.num_classes, kernel_init=init, name="output")(x)
        codes = np.random.default_rng(self.rbf_seed).choice([-1.0, 1.0], (self.num_classes, 84))
        codes = jnp.asarray(codes, x.dtype)
        return -jnp.sum((x[:, None, :] - codes[None, :, :]) ** 2, axis=-1)


register_model(
    "lenet5",
    paper="LeCun, Bottou, Bengio & Haffner 1998, Gradient-based learning applied to document "
    "recognition, Proc. IEEE 86(11)",
    input_shape=(32, 32, 1),
    min_input_size=LeNet5.min_input_size,
    test_input_shape=(32, 32, 1),
    default_num_classes=10,
)(LeNet5)
