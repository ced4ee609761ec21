"""Analysis of any model from its traced computation and its parameters.

Summary tables (parameters, MACs, receptive fields), feature maps, deconvnet projections and
effective receptive fields, for a Linen module, an NNX module or a pure ``apply(params, x)``
over :mod:`cnnjax.ops`. Imports models and ops only, never the training code: loading a
trained run's weights is :func:`cnnjax.train.load.load_run`'s job.
"""

from cnnjax.analysis.functional import PureModel, as_pure
from cnnjax.analysis.interpret import (
    deconvnet,
    effective_receptive_field,
    feature_maps,
    layer_output,
    spatial_layers,
)
from cnnjax.analysis.macs import equation_macs
from cnnjax.analysis.receptive_fields import (
    AxisField,
    Field,
    JaxprFields,
    fields_of,
    input_field,
    jaxpr_fields,
)
from cnnjax.analysis.summary import LayerSummary, SummaryResult, print_summary, summary

__all__ = [
    "AxisField",
    "Field",
    "JaxprFields",
    "LayerSummary",
    "PureModel",
    "SummaryResult",
    "as_pure",
    "deconvnet",
    "effective_receptive_field",
    "equation_macs",
    "feature_maps",
    "fields_of",
    "input_field",
    "jaxpr_fields",
    "layer_output",
    "print_summary",
    "spatial_layers",
    "summary",
]
