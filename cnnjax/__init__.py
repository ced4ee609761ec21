"""cnnjax: a JAX functional research toolkit for convolutional neural networks.

``cnnjax.ops`` (pure functions with hand-derived custom VJPs) → ``cnnjax.layers`` (Flax Linen)
→ ``cnnjax.models`` (classic architectures, registry) → ``cnnjax.data`` / ``cnnjax.train``
→ ``cnnjax.cli``. The ops are re-exported here.
"""

from cnnjax import shapes
from cnnjax.ops import (
    avg_pool,
    compiler_options,
    conv,
    conv_transpose,
    depthwise_conv,
    global_avg_pool,
    global_max_pool,
    local_contrast_norm,
    local_response_norm,
    lp_pool,
    max_pool,
    max_unpool,
    separable_conv,
)

__version__ = "0.1.0"

# Imported on first use, so that ``import cnnjax`` stays as light as the ops (no Flax, no models).
_LAZY = {
    "summary": ("cnnjax.model_summary", "summary"),
    "print_summary": ("cnnjax.model_summary", "print_summary"),
    "create_model": ("cnnjax.models", "create_model"),
    "list_models": ("cnnjax.models", "list_models"),
}


def __getattr__(name: str):
    """``cnnjax.summary(model, input_shape)``, ``cnnjax.create_model(name)``, … (PEP 562)."""
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'cnnjax' has no attribute {name!r}")


__all__ = [
    "avg_pool",
    "compiler_options",
    "conv",
    "conv_transpose",
    "create_model",
    "depthwise_conv",
    "global_avg_pool",
    "global_max_pool",
    "list_models",
    "local_contrast_norm",
    "local_response_norm",
    "lp_pool",
    "max_pool",
    "max_unpool",
    "print_summary",
    "separable_conv",
    "shapes",
    "summary",
]
