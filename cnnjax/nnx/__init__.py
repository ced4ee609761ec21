"""cnnjax for Flax NNX: the :mod:`cnnjax.layers` modules as NNX modules, every registered model
as an NNX module (``cnnjax.models.create_model(name, api="nnx", rngs=nnx.Rngs(0))``), and
weight conversion both ways with Linen variables. See ``docs/nnx.md``.

The layers and models call the same :mod:`cnnjax.ops` functions as their Linen namesakes, so
``impl="custom"`` (hand-derived VJPs) and ``impl="xla"`` behave identically in both APIs.
"""

from cnnjax.nnx import layers, models
from cnnjax.nnx.convert import from_linen, param_count, to_linen
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
    "models",
    "param_count",
    "to_linen",
]
