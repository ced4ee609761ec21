"""Alias of :mod:`cnnjax.analysis.interpret` (feature maps, deconvnet, effective receptive
fields) and :func:`cnnjax.train.load.load_run` (restoring a trained run to look inside it)."""

from cnnjax.analysis.interpret import (
    deconvnet,
    effective_receptive_field,
    feature_maps,
    layer_output,
    spatial_layers,
)
from cnnjax.train.load import LoadedRun, load_run

__all__ = [
    "LoadedRun",
    "deconvnet",
    "effective_receptive_field",
    "feature_maps",
    "layer_output",
    "load_run",
    "spatial_layers",
]
