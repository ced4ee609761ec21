"""Weights both ways between Linen variables and NNX models, so that checkpoints and PyTorch
weight imports (:mod:`cnnjax.models.torch_weights`) serve both APIs.

Linen variables are ``{"params": tree, "batch_stats": tree}``; an NNX model holds the same
arrays as :class:`flax.nnx.Param` and :class:`flax.nnx.BatchStat` variables. cnnjax's NNX models
are built so that the paths agree: native models name their attributes after the Linen
submodules; :class:`~cnnjax.nnx.models.LinenModel` keeps the Linen tree under ``linen``. The
collection of an NNX variable is its type's Linen name (``Param`` → ``params``, ``BatchStat`` →
``batch_stats``, as :mod:`flax.nnx.bridge` maps them).

Example::

    >>> linen = create_model("resnet20", num_classes=10)
    >>> variables = linen.init(jax.random.key(0), x, train=False)
    >>> model = create_model("resnet20", num_classes=10, api="nnx", input_shape=x.shape[1:])
    >>> from_linen(model, variables)      # model now computes what linen.apply(variables, ...) does
    >>> to_linen(model)["params"]          # and back, for a Linen checkpoint
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, traverse_util
from flax.core import unfreeze
from flax.nnx import variablelib

from cnnjax.nnx.models import LinenModel

__all__ = ["from_linen", "param_count", "to_linen"]


def _prefix(model: nnx.Module) -> tuple[str, ...]:
    return ("linen",) if isinstance(model, LinenModel) else ()


def _flat_variables(model: nnx.Module) -> dict[tuple[str, ...], nnx.Variable]:
    """``{(collection, *linen_path): variable}`` for the model's Param and BatchStat variables."""
    prefix = _prefix(model)
    flat = {}
    for path, variable in nnx.iter_graph(model):
        if not isinstance(variable, nnx.Param | nnx.BatchStat):
            continue
        path = tuple(str(p) for p in path)
        if path[: len(prefix)] != prefix:
            raise ValueError(f"variable {'/'.join(path)} lies outside {'/'.join(prefix)}")
        collection = variablelib.variable_name_from_type(type(variable))
        flat[(collection, *path[len(prefix) :])] = variable
    return flat


def to_linen(model: nnx.Module) -> dict[str, Any]:
    """Linen variables ``{"params": …, "batch_stats": …}`` (plain nested dicts of arrays, the
    collections the model has) holding the model's current values; the arrays are shared, not
    copied. ``linen_model.apply(to_linen(model), x, train=False)`` equals ``model.eval()(x)``."""
    flat = {path: variable.get_value() for path, variable in _flat_variables(model).items()}
    return traverse_util.unflatten_dict(flat)


def from_linen(model: nnx.Module, variables: Mapping[str, Any], *, dtype: Any = None) -> None:
    """Load Linen ``variables`` into ``model`` in place (collections ``params`` and, where the
    model has batch norm, ``batch_stats``; others, e.g. ``intermediates``, are ignored).

    Arrays keep their dtype unless ``dtype`` is given (e.g. ``jnp.float32``), so float64 weights
    give a float64 model. Raises ``ValueError`` naming the paths when the trees differ (a name
    missing on either side) and the path and both shapes when a shape differs.
    """
    targets = _flat_variables(model)
    wanted = {c: variables[c] for c in ("params", "batch_stats") if c in variables}
    sources = traverse_util.flatten_dict(unfreeze(wanted))
    missing = sorted("/".join(p) for p in set(targets) - set(sources))
    extra = sorted("/".join(p) for p in set(sources) - set(targets))
    if missing or extra:
        raise ValueError(
            f"from_linen: the Linen variables do not match {type(model).__name__}: "
            f"missing {missing[:5]}{' …' if len(missing) > 5 else ''}, "
            f"unexpected {extra[:5]}{' …' if len(extra) > 5 else ''}"
        )
    for path, value in sources.items():
        variable = targets[path]
        value = jnp.asarray(value, dtype)
        if value.shape != variable.shape:
            raise ValueError(
                f"from_linen: {'/'.join(path)} has shape {value.shape} in the Linen variables "
                f"and {variable.shape} in {type(model).__name__}"
            )
        variable.set_value(value)


def param_count(model: nnx.Module) -> int:
    """Number of trainable parameters (:class:`flax.nnx.Param` entries) of ``model``."""
    return sum(v.size for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
