"""LeNet-5 written from ``cnnjax.ops`` alone: a parameter dict and ``apply(params, x)``.

The same network as :class:`cnnjax.models.LeNet5` (LeCun et al. 1998, Fig. 2; softmax output),
with the same parameter tree, so the two give the same logits for the same parameters and the
same summary numbers. ``lenet5`` is the ``module:attr`` factory the CLI resolves::

    cnnjax train tests/ops_lenet5.py:lenet5 --dataset digits
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import ops
from cnnjax.models import LENET5_C3_TABLE, FunctionalModel

_TABLE = np.asarray(LENET5_C3_TABLE, bool)  # (6 input maps, 16 output maps)
_OUTS, _INS = np.nonzero(_TABLE.T)  # connections ordered by output map, then input map


def squash(x: jax.Array) -> jax.Array:
    """LeCun's ``1.7159 tanh(2x/3)``."""
    return 1.7159 * jnp.tanh(x * (2.0 / 3.0))


def init(key: jax.Array, input_shape: tuple[int, ...], num_classes: int = 10) -> dict:
    """Parameters for inputs ``(N, *input_shape)``: U(-2.4/F_in, 2.4/F_in) kernels (Appendix A)."""
    keys = iter(jax.random.split(key, 5))
    spatial = (input_shape[0] - 12) // 4 - 4  # C5's output size (1 for 32x32)

    def uniform(shape, fan_in):
        return jax.random.uniform(next(keys), shape, jnp.float32, -2.4 / fan_in, 2.4 / fan_in)

    def subsampling(channels):
        return {"coefficient": jnp.ones(channels), "bias": jnp.zeros(channels)}

    flat = spatial * spatial * 120
    return {
        "C1": {"kernel": uniform((5, 5, input_shape[-1], 6), 25), "bias": jnp.zeros(6)},
        "S2": subsampling(6),
        "C3": {"kernel": uniform((5, 5, len(_OUTS)), 25 * 4), "bias": jnp.zeros(16)},
        "S4": subsampling(16),
        "C5": {"kernel": uniform((5, 5, 16, 120), 400), "bias": jnp.zeros(120)},
        "F6": {"kernel": uniform((flat, 84), flat), "bias": jnp.zeros(84)},
        "output": {"kernel": uniform((84, num_classes), 84), "bias": jnp.zeros(num_classes)},
    }


def apply(params: dict, x: jax.Array) -> jax.Array:
    """Logits ``(N, classes)`` of images ``(N, 32, 32, 1)``."""

    def subsample(x, p):
        return ops.avg_pool(x, 2, 2) * p["coefficient"] + p["bias"]

    c3 = params["C3"]["kernel"]
    dense = jnp.zeros((5, 5, 6 * 16), c3.dtype).at[..., _INS * 16 + _OUTS].set(c3)
    x = squash(ops.conv(x, params["C1"]["kernel"], params["C1"]["bias"]))
    x = squash(subsample(x, params["S2"]))
    x = squash(ops.conv(x, dense.reshape(5, 5, 6, 16), params["C3"]["bias"]))
    x = squash(subsample(x, params["S4"]))
    x = squash(ops.conv(x, params["C5"]["kernel"], params["C5"]["bias"]))
    x = x.reshape(x.shape[0], -1)
    x = squash(x @ params["F6"]["kernel"] + params["F6"]["bias"])
    return x @ params["output"]["kernel"] + params["output"]["bias"]


def lenet5(num_classes: int = 10) -> FunctionalModel:
    """The ``module:attr`` factory: ``cnnjax train tests/ops_lenet5.py:lenet5``."""
    return FunctionalModel(lambda key, shape: init(key, shape, num_classes), apply)


lenet5.input_shape = (32, 32, 1)
