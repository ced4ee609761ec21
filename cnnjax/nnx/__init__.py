"""cnnjax for Flax NNX: the :mod:`cnnjax.layers` modules as NNX modules, every registered model
as an NNX module (``cnnjax.models.create_model(name, api="nnx", rngs=nnx.Rngs(0))``), and
weight conversion both ways with Linen variables. See ``docs/nnx.md``.

Nothing here is written twice: each NNX layer and model is derived from its Linen definition
(:mod:`cnnjax.bridge`) and computes it through the Linen ``apply``, so ``impl="custom"``
(hand-derived VJPs), ``impl="xla"``, ``precision`` and ``dtype`` behave identically in both APIs.
"""

from cnnjax.nnx import layers, models
from cnnjax.nnx.convert import (
    from_linen,
    legacy_to_linen,
    load_legacy_state,
    param_count,
    to_linen,
)
from cnnjax.nnx.layers import (
    AdaptiveAvgPool,
    AvgPool,
    BatchNorm,
    ConnectionTableConv,
    Conv,
    ConvTranspose,
    DepthwiseConv,
    LocalContrastNorm,
    LocalResponseNorm,
    LpPool,
    MaxPool,
    SeparableConv,
    TrainableSubsampling,
)
from cnnjax.nnx.models import LinenModel

__all__ = [
    "AdaptiveAvgPool",
    "AvgPool",
    "BatchNorm",
    "ConnectionTableConv",
    "Conv",
    "ConvTranspose",
    "DepthwiseConv",
    "LinenModel",
    "LocalContrastNorm",
    "LocalResponseNorm",
    "LpPool",
    "MaxPool",
    "SeparableConv",
    "TrainableSubsampling",
    "from_linen",
    "layers",
    "legacy_to_linen",
    "load_legacy_state",
    "models",
    "param_count",
    "to_linen",
]
