"""cnnjax: a JAX functional research toolkit for convolutional neural networks.

``cnnjax.ops`` (pure functions with hand-derived custom VJPs) → ``cnnjax.layers`` (Flax Linen)
→ ``cnnjax.models`` (classic architectures, registry) → ``cnnjax.data`` / ``cnnjax.train``
→ ``cnnjax.cli``. The ops are re-exported here.
"""

from cnnjax import shapes
from cnnjax.ops import (
    avg_pool,
    conv,
    conv_transpose,
    depthwise_conv,
    global_avg_pool,
    global_max_pool,
    local_contrast_norm,
    local_response_norm,
    lp_pool,
    max_pool,
    separable_conv,
)

__version__ = "0.1.0"

__all__ = [
    "avg_pool",
    "conv",
    "conv_transpose",
    "depthwise_conv",
    "global_avg_pool",
    "global_max_pool",
    "local_contrast_norm",
    "local_response_norm",
    "lp_pool",
    "max_pool",
    "separable_conv",
    "shapes",
]
