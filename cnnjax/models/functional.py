"""Models written as pure functions: ``init(key, input_shape) -> params``, ``apply(params, x)``.

The project's pitch is that a network can be written straight from :mod:`cnnjax.ops`, without a
module system. :class:`FunctionalModel` wraps such a pair as a Linen module, so the rest of
cnnjax (``cnnjax train``, checkpoints, ``cnnjax summary``, ``cnnjax viz``) runs it unchanged:

* ``init(key, input_shape)`` returns the parameter tree (a dict) for inputs ``(N, *input_shape)``;
* ``apply(params, x)`` (or ``apply(params, x, train=False)``: ``train`` is passed when the
  signature has it) returns the logits ``(N, num_classes)``.

The module's ``params`` collection *is* the tree ``init`` returns (its top-level keys become the
collection's), so a checkpoint holds exactly ``params``. The analysis reads the function's
jaxpr, not modules: see :mod:`cnnjax.analysis.functional` for what a layer row is. Random
numbers inside ``apply`` (dropout) are not supported: ``apply`` must be deterministic.

>>> import jax, jax.numpy as jnp
>>> from cnnjax import ops
>>> def init(key, input_shape):
...     return {"conv": {"kernel": jax.random.normal(key, (3, 3, input_shape[-1], 4))}}
>>> def apply(params, x):
...     return ops.global_avg_pool(ops.conv(x, params["conv"]["kernel"]))
>>> model = FunctionalModel(init, apply)
>>> variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
>>> model.apply(variables, jnp.ones((2, 8, 8, 1))).shape
(2, 4)

From the command line, name a factory that returns one, ``module:attr`` (see
``docs/guides/custom_model.md``): ``cnnjax train mynet:lenet5 --dataset digits``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax

__all__ = ["FunctionalModel"]


class FunctionalModel(nn.Module):
    """A pure ``apply(params, x)`` with its ``init(key, input_shape)``, as a Linen module.

    Attributes:
        init_fn: ``(key, input_shape) -> dict`` of parameters (``input_shape`` without batch).
        apply_fn: ``(params, x[, train]) -> logits``.
    """

    init_fn: Callable[[jax.Array, tuple[int, ...]], dict]
    apply_fn: Callable[..., Any]

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> Any:
        if self.is_initializing():
            tree = self.init_fn(self.make_rng("params"), tuple(x.shape[1:]))
            if not isinstance(tree, dict):
                raise TypeError(
                    f"FunctionalModel: init must return a dict of parameters, got "
                    f"{type(tree).__name__}"
                )
            params = {k: self.param(k, lambda _, v=v: v) for k, v in tree.items()}
        else:
            params = dict(self.variables.get("params", {}))
        if _takes_train(self.apply_fn):
            return self.apply_fn(params, x, train=train)
        return self.apply_fn(params, x)


def _takes_train(fn: Callable) -> bool:
    try:
        return "train" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return False
