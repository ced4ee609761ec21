"""Classic CNN architectures as Flax Linen modules, one family per file, and the registry.

Importing this package imports every family module, which registers its models.
"""

from cnnjax.models.registry import (
    ModelInfo,
    create_model,
    get_model_info,
    list_models,
    register_model,
)

__all__ = ["ModelInfo", "create_model", "get_model_info", "list_models", "register_model"]
