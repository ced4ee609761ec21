"""Weights both ways between Linen variables and NNX models, so that checkpoints and PyTorch
weight imports (:mod:`cnnjax.models.torch_weights`) serve both APIs; and states saved from the
NNX models of earlier cnnjax versions.

Linen variables are ``{"params": tree, "batch_stats": tree}``; an NNX model of cnnjax holds the
same arrays as :class:`flax.nnx.Param` and :class:`flax.nnx.BatchStat` variables at the same
paths (:mod:`cnnjax.bridge`), so :func:`to_linen` and :func:`from_linen` map them one to one.

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
import numpy as np
from flax import nnx, traverse_util

from cnnjax.bridge import from_linen, param_count, to_linen

__all__ = ["from_linen", "legacy_to_linen", "load_legacy_state", "param_count", "to_linen"]

#: The attribute under which the earlier ``LinenModel`` (ResNet, DenseNet, GoogLeNet, MobileNet,
#: segmentation models) kept its Linen variables.
LEGACY_PREFIX = "linen"


def legacy_to_linen(model: nnx.Module, state: Mapping[str, Any]) -> dict[str, Any]:
    """Linen variables for ``model`` from a ``state`` saved from cnnjax's earlier NNX models.

    Until the NNX models were derived from the Linen ones, seven families (LeNet-5, VGG,
    All-CNN-C, NiN, both AlexNets, ZFNet) were hand-written NNX modules whose attributes carried
    the Linen names (``conv0``, ``bn0``, ``fc1``, …), and the others were a ``LinenModel``
    holding the Linen tree under ``linen``. ``state`` is ``nnx.state(old_model)`` or its pure
    dict (``nnx.to_pure_dict``, or a restored checkpoint of either); its parameters and batch
    statistics are read at ``model``'s Linen paths (``linen/…`` stripped), everything else
    (dropout RNG state) is ignored. Raises ``ValueError`` naming the paths ``model`` needs that
    ``state`` lacks.
    """
    if isinstance(state, nnx.State):
        state = nnx.to_pure_dict(state)
    flat = {
        tuple(str(k) for k in path): value
        for path, value in traverse_util.flatten_dict(dict(state)).items()
    }
    if flat and all(path[0] == LEGACY_PREFIX for path in flat):
        flat = {path[1:]: value for path, value in flat.items()}
    wanted = traverse_util.flatten_dict(to_linen(model))
    missing = sorted("/".join(path[1:]) for path in wanted if path[1:] not in flat)
    if missing:
        raise ValueError(
            f"legacy_to_linen: the saved state lacks {missing[:5]}"
            f"{' …' if len(missing) > 5 else ''} of {type(model).__name__}"
        )
    return traverse_util.unflatten_dict({path: np.asarray(flat[path[1:]]) for path in wanted})


def load_legacy_state(model: nnx.Module, state: Mapping[str, Any], *, dtype: Any = None) -> None:
    """Load a ``state`` saved from cnnjax's earlier NNX models into ``model`` in place:
    ``from_linen(model, legacy_to_linen(model, state), dtype=dtype)`` (see both)."""
    from_linen(model, jax.tree.map(np.asarray, legacy_to_linen(model, state)), dtype=dtype)
