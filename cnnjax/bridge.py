"""Any Linen module as a Flax NNX module: the one mechanism behind :mod:`cnnjax.nnx` and
``create_model(name, api="nnx")``.

cnnjax defines each layer and model once, in Linen (:mod:`cnnjax.layers`, :mod:`cnnjax.models`).
Its NNX face is derived, not written again: :class:`LinenModule` holds the Linen module (an
immutable description of the computation) and its variables as NNX variables, and a call is the
Linen module's ``apply``. So an NNX model computes literally what its Linen definition computes,
with the same ``impl``, ``precision`` and ``dtype``; the two cannot drift apart.

The variables sit at their Linen paths, as :class:`flax.nnx.bridge.ToNNX` puts them: Linen
``{"params": {"conv0": {"kernel": k}}}`` is the :class:`flax.nnx.Param` at ``model.conv0["kernel"]``
(``model.kernel`` for a layer); the collection of a variable is its type's Linen name
(:func:`flax.nnx.variable_name_from_type`: ``Param`` → ``params``, ``BatchStat`` →
``batch_stats``). :func:`to_linen` and :func:`from_linen` therefore move weights between the
APIs by path, with no table. (``ToNNX`` itself is not subclassed: every attribute of a ``ToNNX``
must be a variable, and :class:`LinenModel` keeps the ``model.train()`` / ``model.eval()`` flags
as attributes, where :meth:`flax.nnx.Module.train` sets them.)

This module imports only Flax and JAX, so :mod:`cnnjax.models` (``api="nnx"``) and
:mod:`cnnjax.nnx` both build on it without importing each other.

Example::

    >>> import flax.linen as nn
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> dense = LinenModule(nn.Dense(3), jnp.ones((1, 4)), rngs=nnx.Rngs(0))
    >>> dense.kernel.shape, dense(jnp.ones((2, 4))).shape
    ((4, 3), (2, 3))
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx, traverse_util
from flax.core import unfreeze

__all__ = ["LinenModel", "LinenModule", "from_linen", "param_count", "to_linen"]

#: Collection updated by a Linen module in training mode (batch norm running averages).
BATCH_STATS = "batch_stats"


def _hashable(value: Any) -> Any:
    """Lists to tuples, recursively (``value`` itself where it holds no list)."""
    if not isinstance(value, list | tuple):
        return value
    items = tuple(_hashable(v) for v in value)
    unchanged = isinstance(value, tuple) and all(a is b for a, b in zip(items, value, strict=True))
    return value if unchanged else items


def _hashable_module(module: nn.Module) -> nn.Module:
    """``module`` with its list fields as tuples (``config=[64, "M"]``): NNX hashes the static
    part of a module's graph, and a Linen module is hashed through its fields."""
    names = [
        f.name for f in dataclasses.fields(module) if f.init and f.name not in ("parent", "name")
    ]
    values = {n: getattr(module, n) for n in names}
    changed = {n: h for n, v in values.items() if (h := _hashable(v)) is not v}
    return module.clone(**changed) if changed else module


class LinenModule(nnx.Module):
    """A Linen ``module`` as an NNX module: its variables as NNX variables at their Linen paths.

    ``sample`` (arrays) is passed to ``module.init`` with ``init_kwargs`` to
    create the variables, drawn from ``rngs.params()``; ``compile_init`` compiles the
    initialisation first (worth it for a deep model, whose eager initialisation dispatches
    hundreds of small programs; not for one layer). Without ``sample`` the module has no variables
    (a pooling layer). :meth:`apply` calls ``module.apply`` on the current variables; subclasses
    decide the mode (:class:`LinenModel`: ``model.train()`` / ``model.eval()``).
    """

    def __init__(
        self,
        module: nn.Module,
        *sample: Any,
        rngs: nnx.Rngs | None = None,
        compile_init: bool = False,
        **init_kwargs: Any,
    ):
        self.module = module = _hashable_module(module)
        if not sample:
            return
        if rngs is None:
            raise ValueError(f"{type(self).__name__}: rngs is needed to initialise parameters")
        key = rngs.params()
        init = functools.partial(module.init, **init_kwargs)
        variables = (jax.jit(init) if compile_init else init)(key, *sample)
        for name, tree in _as_nnx_variables(variables).items():
            if name in vars(self):
                raise ValueError(f"{type(self).__name__}: a Linen variable is named {name!r}")
            setattr(self, name, tree if isinstance(tree, nnx.Variable) else nnx.data(tree))

    def apply(
        self, *args: Any, training: bool = False, rngs: Mapping[str, jax.Array] | None = None, **kw
    ) -> Any:
        """``module.apply(variables, *args, **kw)``; with ``training`` the ``batch_stats``
        updates (batch norm running averages) are written back into this module."""
        variables = to_linen(self)
        mutable = [BATCH_STATS] if training and BATCH_STATS in variables else False
        out = self.module.apply(variables, *args, rngs=rngs, mutable=mutable, **kw)
        if not mutable:
            return out
        out, updates = out
        from_linen(self, {BATCH_STATS: updates[BATCH_STATS]}, partial=True)
        return out

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply(*args, **kwargs)


class LinenModel(LinenModule):
    """A Linen model taking ``train`` (a registered cnnjax model, or yours) as an NNX module.

    ``input_shape`` ``(H, W, C)`` fixes what NNX needs before seeing data (the input channels,
    dense fan-ins): the variables are those of ``module.init(key, zeros((1, *input_shape)),
    train=False)``. ``model(x)`` is ``module.apply(variables, x, train=not model.deterministic)``;
    ``model.train()`` / ``model.eval()`` set ``deterministic`` and ``use_running_average``
    together (the Linen model has one ``train`` flag, so they must agree; a ``ValueError``
    otherwise). In training mode the batch statistics are written back and dropout draws its key
    from ``rngs`` (the call argument, else the ``dropout`` stream of the constructor's ``rngs``).
    Modules start in training mode, as NNX layers do.
    """

    def __init__(self, module: nn.Module, *, input_shape: tuple[int, ...], rngs: nnx.Rngs):
        sample = jnp.zeros((1, *input_shape), jnp.float32)
        super().__init__(module, sample, rngs=rngs, compile_init=True, train=False)
        self.rngs = nnx.Rngs(dropout=rngs.dropout())
        self.deterministic = False
        self.use_running_average = False

    def __call__(self, x: Any, *, rngs: nnx.Rngs | None = None, **kwargs: Any) -> Any:
        if self.deterministic != self.use_running_average:
            raise ValueError(
                f"{type(self).__name__}: deterministic and use_running_average must agree (the "
                f"Linen model has one train flag); got {self.deterministic} and "
                f"{self.use_running_average}. Use model.train() or model.eval()."
            )
        train = not self.deterministic
        keys = {"dropout": (rngs or self.rngs).dropout()} if train else None
        return self.apply(x, training=train, rngs=keys, train=train, **kwargs)


def _as_nnx_variables(variables: Mapping[str, Any]) -> dict[str, Any]:
    """Linen ``{collection: tree}`` as one tree of NNX variables (the type named by the
    collection), as :class:`flax.nnx.bridge.ToNNX` holds them: batch norm's ``scale`` (params)
    and ``mean`` (batch_stats) sit side by side under the layer's name."""
    flat = {}
    for (collection, *path), value in traverse_util.flatten_dict(unfreeze(variables)).items():
        variable_type = nnx.variable_type_from_name(collection, allow_register=True)
        flat[tuple(path)] = variable_type(value)
    return traverse_util.unflatten_dict(flat)


def _flat_variables(model: nnx.Module) -> dict[tuple[str, ...], nnx.Variable]:
    """``{(collection, *linen_path): variable}`` for every variable of ``model`` but the RNG
    state (dropout streams), which Linen passes as ``rngs``, not as variables."""
    flat = {}
    for path, variable in nnx.iter_graph(model):
        if isinstance(variable, nnx.Variable) and not isinstance(variable, nnx.RngState):
            collection = nnx.variable_name_from_type(type(variable))
            flat[(collection, *(str(p) for p in path))] = variable
    return flat


def to_linen(model: nnx.Module) -> dict[str, Any]:
    """Linen variables ``{"params": …, "batch_stats": …}`` (plain nested dicts of arrays, the
    collections the model has) holding the model's current values; the arrays are shared, not
    copied. ``linen_model.apply(to_linen(model), x, train=False)`` equals ``model.eval()(x)``."""
    flat = {path: variable.get_value() for path, variable in _flat_variables(model).items()}
    return traverse_util.unflatten_dict(flat)


def from_linen(
    model: nnx.Module, variables: Mapping[str, Any], *, dtype: Any = None, partial: bool = False
) -> None:
    """Load Linen ``variables`` into ``model`` in place (collections ``params`` and, where the
    model has batch norm, ``batch_stats``; others, e.g. ``intermediates``, are ignored).

    Arrays keep their dtype unless ``dtype`` is given (e.g. ``jnp.float32``), so float64 weights
    give a float64 model. Raises ``ValueError`` naming the paths when the trees differ (a name
    missing on either side; ``partial=True`` allows missing ones) and the path and both shapes
    when a shape differs.
    """
    targets = _flat_variables(model)
    collections = {path[0] for path in targets}
    wanted = {c: tree for c, tree in variables.items() if c in collections}
    sources = traverse_util.flatten_dict(unfreeze(wanted))
    missing = [] if partial else sorted("/".join(p) for p in set(targets) - set(sources))
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
