"""Layers of a model that has no modules: a pure ``apply(params, x)`` read as a list of layer rows.

A Linen model's layers are its module calls. A pure function over :mod:`cnnjax.ops` has none, so
its layers are read from its jaxpr (``jax.make_jaxpr(apply)(params, x)``, after unwrapping a
top-level ``jax.jit``). **A layer row** is:

* one top-level equation that does windowed or contracting work: a call (a ``cnnjax.ops``
  function, i.e. its ``custom_vjp_call``; a ``jit``; ``jax.nn`` functions) or primitive whose
  body contains ``conv_general_dilated`` (kind ``conv``, or ``conv_transpose`` with input
  dilation), ``dot_general`` (``dense``: ``x @ w``), or ``reduce_window*`` (``max_pool``,
  ``pool``). Rows are named ``{kind}_{i}``, numbered per kind in call order (``conv_0``,
  ``max_pool_0``, ``conv_1``, ``dense_0``), as Flax names unnamed submodules;
* plus every other equation on the data path that consumes the row's output, until the next
  row: a bias add, an activation, a flatten. Those that keep the output's shape (elementwise
  work) extend the row's *output*, which is what ``viz features`` shows: ``conv_0`` is
  ``tanh(conv(x, k) + b)`` when the function is written so.

A parameter leaf belongs to the first row that consumes it (directly or through parameter-only
work, e.g. a kernel scattered from a connection table); leaves no row consumes are listed as
``not called``. Work on the image before the first row (a dtype conversion, ``x - mean``)
belongs to the first row, with the parameters it uses.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import jax

from cnnjax.bridge import LinenModule, to_linen

__all__ = ["OpRow", "PureModel", "as_pure", "evaluate_to", "op_rows", "top_level"]

_CALL_KEYS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


@dataclasses.dataclass(frozen=True)
class PureModel:
    """A model seen as ``apply(params, x)``: ``params`` the trainable tree, ``apply`` a pure
    function of them and the ``(N, *spatial, C)`` batch; ``non_trainable`` the other variables'
    leaves (BatchNorm statistics), bound into ``apply``."""

    name: str
    apply: Callable[[Any, jax.Array], Any]
    params: Any
    non_trainable: int = 0


def linen_view(model: Any, variables: Any = None) -> tuple[Any, Any]:
    """``(Linen module, its variables)`` for a model derived from a Linen definition (every
    cnnjax NNX layer and model, :class:`cnnjax.bridge.LinenModule`), so that its analysis has
    the rows, names (``C1``, ``layer1/0/conv1``) and inference-mode computation of the
    definition; any other model is returned as it is, with ``variables``."""
    if isinstance(model, LinenModule):
        return model.module, to_linen(model)
    return model, variables


def as_pure(model: Any, variables: Any = None) -> PureModel | None:
    """``model`` as a :class:`PureModel`, or ``None`` for a Linen module (which has module calls).

    Accepts a :class:`cnnjax.models.FunctionalModel` (with ``variables={"params": tree}``), an
    NNX module (its state is split into ``nnx.Param`` and the rest; ``variables`` unused) or a
    plain function ``apply(params, x)`` (``variables`` is then ``params``).
    """
    import flax.linen as nn

    apply_fn = getattr(model, "apply_fn", None)
    if isinstance(model, nn.Module) and callable(apply_fn):  # FunctionalModel
        params = variables["params"] if isinstance(variables, dict) else variables
        return PureModel(type(model).__name__, _inference(apply_fn), params)
    if isinstance(model, nn.Module):
        return None
    from flax import nnx

    if isinstance(model, nnx.Module):
        graphdef, params, rngs, rest = nnx.split(model, nnx.Param, nnx.RngState, ...)
        call = _inference(type(model).__call__)

        def apply(p, x):
            # fresh Variables inside the trace: the model may update its own (RNG counters)
            fresh = jax.tree.map(lambda a: a, (rngs, rest))
            return call(nnx.merge(graphdef, p, *fresh), x)

        return PureModel(type(model).__name__, apply, params, _count(rest))
    if callable(model):
        name = getattr(model, "__name__", type(model).__name__)
        return PureModel(name, _inference(model), variables)
    raise TypeError(
        f"cannot analyse a {type(model).__name__}: expected a model or apply(params, x)"
    )


def _inference(fn: Callable) -> Callable:
    """``fn(a, x)`` called with ``train=False`` when its signature has ``train``."""
    try:
        takes_train = "train" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins
        takes_train = False
    return (lambda a, x: fn(a, x, train=False)) if takes_train else fn


def _count(tree) -> int:
    return sum(int(getattr(a, "size", 0)) for a in jax.tree.leaves(tree))


def top_level(closed):
    """The jaxpr whose equations are the rows: ``closed``'s, or that of a ``jit`` which is its
    only equation and takes its inputs in order (a jitted ``apply``)."""
    jaxpr = closed.jaxpr
    while len(jaxpr.eqns) == 1 and jaxpr.eqns[0].primitive.name in ("jit", "pjit"):
        eqn = jaxpr.eqns[0]
        if list(eqn.invars) != list(jaxpr.invars) or list(eqn.outvars) != list(jaxpr.outvars):
            break
        closed = eqn.params["jaxpr"]
        jaxpr = closed.jaxpr
    return closed


@dataclasses.dataclass
class OpRow:
    """One layer row of a pure function (see the module docstring)."""

    name: str
    kind: str
    first_eqn: int
    output_var: Any
    input_var: Any
    input_row: int | None
    params: list[int] = dataclasses.field(default_factory=list)  # flat parameter leaf indices
    eqns: list[int] = dataclasses.field(default_factory=list)


def op_rows(jaxpr, n_params: int) -> list[OpRow]:
    """Group the equations of ``jaxpr`` (inputs: ``n_params`` parameter leaves, then the image)
    into layer rows."""
    deps: dict[Any, frozenset[int]] = {v: frozenset([i]) for i, v in enumerate(jaxpr.invars)}
    image = jaxpr.invars[n_params]
    owner: dict[Any, int | None] = {image: None}
    rows: list[OpRow] = []
    counts: dict[str, int] = {}
    taken: set[int] = set()
    prologue: list[int] = []  # parameters used before the first row: given to the first row
    for index, eqn in enumerate(jaxpr.eqns):
        on_path = [v for v in eqn.invars if _is_var(v) and v in owner]
        if not on_path:
            merged = frozenset().union(
                *(deps.get(v, frozenset()) for v in eqn.invars if _is_var(v))
            )
            deps.update({v: merged for v in eqn.outvars})
            continue
        kind = _kind(eqn)
        parents = [owner[v] for v in on_path if owner[v] is not None]
        consumed = [
            leaf
            for v in eqn.invars
            if _is_var(v) and v not in owner
            for leaf in sorted(deps.get(v, ()))
            if leaf < n_params
        ]
        if kind is None and not parents:  # work on the image before the first layer
            prologue += consumed
            owner.update({v: None for v in eqn.outvars})
            continue
        if kind is None:
            row = rows[max(parents)]
        else:
            name = f"{kind}_{counts.get(kind, 0)}"
            counts[kind] = counts.get(kind, 0) + 1
            parent = max(parents) if parents else None
            row = OpRow(name, kind, index, eqn.outvars[0], on_path[0], parent)
            rows.append(row)
            consumed, prologue = prologue + consumed, []
        row.eqns.append(index)
        for leaf in consumed:
            if leaf not in taken:
                taken.add(leaf)
                row.params.append(leaf)
        if _shape(eqn.outvars[0]) == _shape(row.output_var) or index == row.first_eqn:
            row.output_var = eqn.outvars[0]
        owner.update({v: rows.index(row) for v in eqn.outvars})
    return rows


def _kind(eqn) -> str | None:
    """The kind of layer an equation is: its first windowed or contracting primitive."""
    name = eqn.primitive.name
    if name == "conv_general_dilated":
        return "conv_transpose" if any(d > 1 for d in eqn.params["lhs_dilation"]) else "conv"
    if name == "dot_general":
        return "dense"
    if name == "reduce_window_max":
        return "max_pool"
    if name.startswith("reduce_window"):
        return "pool"
    for sub in _sub_jaxprs(eqn):
        for inner in sub.eqns:
            kind = _kind(inner)
            if kind is not None:
                return kind
    return None


def _sub_jaxprs(eqn):
    for key in _CALL_KEYS:
        p = eqn.params.get(key)
        if p is not None:
            yield p.jaxpr if hasattr(p, "jaxpr") else p
    for branch in eqn.params.get("branches", ())[:1]:
        yield branch.jaxpr


def evaluate_to(closed, target, *args, replace: Callable | None = None):
    """Evaluate ``closed`` on ``args`` up to the equation defining ``target`` (a variable of its
    top-level jaxpr) and return that value; ``replace(eqn, invals)`` may return the outputs of an
    equation instead of binding it (the deconvnet swaps ReLUs so). Differentiable: primitives are
    bound on the caller's tracers."""
    jaxpr = closed.jaxpr
    env = dict(zip(jaxpr.constvars, closed.consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    if target in env:
        return env[target]
    for eqn in jaxpr.eqns:
        invals = [v.val if not _is_var(v) else env[v] for v in eqn.invars]
        outvals = replace(eqn, invals) if replace is not None else None
        if outvals is None:
            outvals = bind(eqn, invals)
        env.update(zip(eqn.outvars, outvals, strict=True))
        if target in env:
            return env[target]
    raise KeyError(f"{target} is not computed by the jaxpr")


def bind(eqn, invals) -> list:
    """Apply one equation's primitive to ``invals`` (a list of outputs, whatever the primitive)."""
    out = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
    return list(out) if eqn.primitive.multiple_results else [out]


def _is_var(v) -> bool:
    return not hasattr(v, "val")


def _shape(v) -> tuple[int, ...]:
    return tuple(v.aval.shape)
