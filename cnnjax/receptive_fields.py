"""Alias of :mod:`cnnjax.analysis.receptive_fields` (the jaxpr field interpreter moved there)."""

from cnnjax.analysis.receptive_fields import (
    AxisField,
    Field,
    JaxprFields,
    fields_of,
    input_field,
    jaxpr_fields,
)

__all__ = ["AxisField", "Field", "JaxprFields", "fields_of", "input_field", "jaxpr_fields"]
