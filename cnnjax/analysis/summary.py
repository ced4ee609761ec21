"""Per-layer model summary: output shapes, parameters, MACs and receptive fields.

Like Keras' ``model.summary()``, with two columns more: the multiply-accumulates of each layer
and the receptive field of its output. Every number comes from the traced computation
(``jax.make_jaxpr``) and the parameter shapes, never from module attribute names, so any model
is summarised the same way: a Linen module, an NNX module, or a pure ``apply(params, x)``
written from :mod:`cnnjax.ops` (or a :class:`cnnjax.models.FunctionalModel` wrapping one).
Nothing is computed on real data (shapes only), so even VGG-19 is summarised without allocating
its 143M parameters.

Layer rows: for a Linen module, one row per module call (found with
:func:`flax.linen.intercept_methods`); for a pure function or an NNX module, one row per op call
as :mod:`cnnjax.analysis.functional` defines it.

Counting rules (per example):

* params: the ``params`` collection only (BatchNorm ``scale``/``bias`` included); running
  statistics (``batch_stats``) are reported separately as non-trainable variables.
* MACs: one rule per primitive (:mod:`cnnjax.analysis.macs`), summed over the equations a
  layer runs: a conv ``prod(out_spatial) * prod(kernel) * C_in/groups * C_out`` (read from the
  ``conv_general_dilated`` equation's shapes; transposed convs use the *input* spatial size),
  ``dot_general`` ``in * out``, 0 for elementwise work and pooling.
* ``macs_valid``: the same count but skipping kernel taps that fall on zero padding: what
  XLA's ``cost_analysis()`` counts for a convolution.
* receptive field: the looking-forward recurrence of Araujo et al. (2019)
  (:func:`cnnjax.shapes.receptive_field`)
  ``r_{l+1} = r_l + (k_eff - 1) * jump_l``, ``jump_{l+1} = jump_l * s_l``, propagated along the
  data flow: a layer's input field is that of the array it receives, and a block that merges
  branches (residual add, inception/dense concat) takes the largest field among them. The
  *main path* is the chain of layers that the final feature map's field comes from (marked ``*``
  in the table).

>>> from cnnjax.models import create_model
>>> result = summary(create_model("lenet5"), (32, 32, 1), print_fn=None)
>>> result.total_params
60850
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.analysis.functional import PureModel, as_pure, linen_view, op_rows, top_level
from cnnjax.analysis.macs import equation_macs
from cnnjax.analysis.receptive_fields import Field, input_field, jaxpr_fields

__all__ = ["LayerSummary", "SummaryResult", "print_summary", "summary"]


@dataclasses.dataclass(frozen=True)
class LayerSummary:
    """One module call.

    ``path`` is the module's scope path (``"layer1/0/conv1"``), ``params`` the parameters the
    module owns directly (its children's are in their own rows; a module called twice counts its
    parameters on the first call only), ``macs`` and ``macs_valid`` per example (see the module
    docstring). ``rf_size``/``rf_jump``/``rf_start`` are per spatial dim, ``None`` when the output
    has no spatial dims or the field cannot be followed. For a pure function ``path`` is the
    row's name (``"conv_0"``, :mod:`cnnjax.analysis.functional`) and ``type_name`` its kind.
    """

    path: str
    type_name: str
    depth: int
    is_leaf: bool
    input_shape: tuple[int, ...] | None
    output_shape: Any
    params: int
    macs: int
    macs_valid: int
    rf_size: tuple[int, ...] | None
    rf_jump: tuple[int, ...] | None
    rf_start: tuple[float, ...] | None
    on_main_path: bool
    param_paths: tuple[str, ...] = ()  # "/"-joined paths of the parameter leaves counted here


@dataclasses.dataclass(frozen=True)
class SummaryResult:
    """The rows of :func:`summary` and their totals; ``str(result)`` is the table.

    ``total_params`` counts the ``params`` collection, ``non_trainable`` every other collection
    (BatchNorm running statistics). ``total_macs``/``total_macs_valid`` are per example.
    ``receptive_field``/``jump`` belong to the last spatial feature map.
    """

    model_name: str
    input_shape: tuple[int, ...]
    output_shape: Any
    layers: tuple[LayerSummary, ...]
    total_params: int
    non_trainable: int
    total_macs: int
    total_macs_valid: int
    receptive_field: tuple[int, ...] | None
    jump: tuple[int, ...] | None
    table: str

    def __str__(self) -> str:
        return self.table


def summary(
    model: Any,
    input_shape: Sequence[int],
    *,
    params: Any = None,
    batch_size: int = 1,
    dtype: Any = jnp.float32,
    depth: int | None = None,
    print_fn: Callable[[str], Any] | None = print,
) -> SummaryResult:
    """Summarise ``model`` on inputs of shape ``(batch_size, *input_shape)``.

    Args:
      model: an unbound Linen module whose ``__call__`` takes the image batch (and ``train``
        if it has that argument; the summary runs in inference mode, ``train=False``), a
        :class:`cnnjax.models.FunctionalModel`, an NNX module, or a pure ``apply(params, x)``
        (then pass ``params``; arrays or ``jax.ShapeDtypeStruct`` leaves).
      input_shape: ``(H, W, C)`` (any number of spatial dims), without the batch.
      params: the parameter tree of a pure ``apply`` (unused otherwise).
      batch_size: batch used for tracing; shapes in the table include it, MACs are per example.
      depth: ``None`` lists the leaf layers (modules that call no other module, plus modules
        owning parameters directly); an int lists every module at nesting depth ``<= depth``
        with the parameters and MACs of its subtree.
      print_fn: called with the table; ``None`` prints nothing.

    Returns:
      A :class:`SummaryResult`. Totals: ``total_params`` equals
      ``sum(x.size for x in jax.tree.leaves(variables["params"]))`` exactly.

    Raises:
      TypeError: ``model`` is none of the above.
    """
    x_spec = jax.ShapeDtypeStruct((batch_size, *tuple(input_shape)), dtype)
    model, _ = linen_view(model)
    if isinstance(model, nn.Module):
        call_kwargs = {"train": False} if _accepts_train(model) else {}
        variables = jax.eval_shape(
            lambda rng, x: model.init(rng, x, **call_kwargs), jax.random.key(0), x_spec
        )
        pure = as_pure(model, variables)
        if pure is None:
            rows, final, out_shape, non_trainable = _linen_rows(model, variables, x_spec)
    else:
        pure = as_pure(model, params)
    if pure is not None:
        rows, final, out_shape, non_trainable = _pure_rows(pure, x_spec)
        name = pure.name
        total_params = _size(pure.params)
    else:
        name = type(model).__name__
        total_params = _size(variables.get("params", {}))
    attributed = sum(r.params for r in rows)
    if attributed != total_params:  # pragma: no cover - every param belongs to a row
        raise AssertionError(
            f"summary attributed {attributed} parameters to layers, the tree holds {total_params}"
        )
    totals = {
        "total_params": total_params,
        "non_trainable": non_trainable,
        "total_macs": sum(r.macs for r in rows),
        "total_macs_valid": sum(r.macs_valid for r in rows),
    }
    full_shape = (batch_size, *tuple(input_shape))
    table = _format_table(name, full_shape, rows, depth, final=final, **totals)
    result = SummaryResult(
        model_name=name,
        input_shape=full_shape,
        output_shape=out_shape,
        layers=tuple(rows),
        receptive_field=final[0] if final else None,
        jump=final[1] if final else None,
        table=table,
        **totals,
    )
    if print_fn is not None:
        print_fn(table)
    return result


def _size(tree) -> int:
    return sum(int(math.prod(p.shape)) for p in jax.tree.leaves(tree))


def _linen_rows(model: nn.Module, variables: dict, x_spec):
    """Rows of a Linen module: one per module call, marked in the jaxpr by barriers."""
    call_kwargs = {"train": False} if _accepts_train(model) else {}
    recorder = _Recorder(variables, x_spec.shape[0])

    def apply(variables, x):
        with nn.intercept_methods(recorder.intercept):
            return model.apply(variables, x, **call_kwargs)

    closed, out = jax.make_jaxpr(apply, return_shape=True)(variables, x_spec)
    n_variables = len(jax.tree.leaves(variables))
    jaxpr_fields(
        closed,
        [*([None] * n_variables), input_field(len(x_spec.shape) - 2)],
        marker_hook=recorder.on_marker,
        on_equation=recorder.on_equation,
    )
    rows = recorder.finish() + _uncalled_rows(
        leaf_paths(variables.get("params", {})), recorder.seen_paths
    )
    non_trainable = sum(_size(col) for name, col in variables.items() if name != "params")
    final = (recorder.final.size, recorder.final.jump) if recorder.final is not None else None
    return rows, final, jax.tree.map(lambda a: tuple(a.shape), out), non_trainable


def _pure_rows(pure: PureModel, x_spec):
    """Rows of a pure function: its op calls (:func:`cnnjax.analysis.functional.op_rows`)."""
    closed, out = jax.make_jaxpr(pure.apply, return_shape=True)(pure.params, x_spec)
    closed = top_level(closed)
    named = leaf_paths(pure.params)
    rows = op_rows(closed.jaxpr, len(named))
    row_of = {i: r for r, row in enumerate(rows) for i in row.eqns}
    macs = [[0, 0] for _ in rows]
    fields: dict[Any, Field | None] = {}
    pending = [0, 0]
    top = iter(range(len(closed.jaxpr.eqns)))

    def on_equation(eqn, ins, outs, support, depth):
        m, v = equation_macs(eqn, support, x_spec.shape[0])
        pending[0] += m
        pending[1] += v
        if depth:
            return
        index = next(top)
        fields.update(zip(eqn.outvars, outs, strict=True))
        if index in row_of:
            macs[row_of[index]][0] += pending[0]
            macs[row_of[index]][1] += pending[1]
        pending[:] = [0, 0]

    jaxpr_fields(
        closed,
        [*([None] * len(named)), input_field(len(x_spec.shape) - 2)],
        on_equation=on_equation,
    )
    row_fields = [fields.get(r.output_var) for r in rows]
    final = next((i for i in reversed(range(len(rows))) if row_fields[i] is not None), None)
    main = set()
    while final is not None and final not in main:
        main.add(final)
        final = rows[final].input_row
    layers = []
    for i, row in enumerate(rows):
        f = row_fields[i]
        layers.append(
            LayerSummary(
                path=row.name,
                type_name=row.kind,
                depth=1,
                is_leaf=True,
                input_shape=tuple(row.input_var.aval.shape),
                output_shape=tuple(row.output_var.aval.shape),
                params=sum(int(math.prod(named[j][1].shape)) for j in row.params),
                macs=macs[i][0],
                macs_valid=macs[i][1],
                rf_size=f.size if f else None,
                rf_jump=f.jump if f else None,
                rf_start=f.start if f else None,
                on_main_path=i in main,
                param_paths=tuple("/".join(named[j][0]) for j in row.params),
            )
        )
    used = {j for row in rows for j in row.params}
    layers += _uncalled_rows([nl for j, nl in enumerate(named) if j not in used], set())
    last = next((f for f in reversed(row_fields) if f is not None), None)
    final_field = (last.size, last.jump) if last is not None else None
    return layers, final_field, jax.tree.map(lambda a: tuple(a.shape), out), pure.non_trainable


def print_summary(
    name: str,
    input_shape: Sequence[int] | None = None,
    *,
    batch_size: int = 1,
    depth: int | None = None,
    print_fn: Callable[[str], Any] | None = print,
    **model_kwargs: Any,
) -> SummaryResult:
    """Build ``create_model(name, **model_kwargs)`` and print its :func:`summary`.

    ``input_shape`` defaults to the paper's input size from the registry. Parameters are never
    allocated (shapes only), so the biggest models are summarised in seconds.

    >>> print_summary("resnet18", (224, 224, 3))  # doctest: +SKIP
    """
    from cnnjax.models import create_model, get_model_info

    info = get_model_info(name)
    if input_shape is None and info.input_shape is None:
        raise ValueError(f"model {name!r} declares no input_shape: pass input_shape=(H, W, C)")
    model = create_model(name, **model_kwargs)
    shape = tuple(info.input_shape if input_shape is None else input_shape)
    result = summary(model, shape, batch_size=batch_size, depth=depth, print_fn=None)
    result = dataclasses.replace(
        result,
        model_name=name,
        table=result.table.replace(
            f"Model: {result.model_name}", f"Model: {name} ({result.model_name})", 1
        ),
    )
    if print_fn is not None:
        print_fn(result.table)
    return result


# --------------------------------------------------------------------------------------------
# Tracing: one record per module call; receptive fields from the jaxpr
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Call:
    path: tuple[str, ...]
    type_name: str
    input_shape: tuple[int, ...] | None
    output_shape: Any = None
    own_params: int = 0
    macs: int = 0
    macs_valid: int = 0
    field: Field | None = None
    input_row: int | None = None  # leaf row that produced this call's input field
    children: int = 0
    parent: int | None = None
    param_paths: tuple[str, ...] = ()


class _Recorder:
    """Collects module calls during one ``jax.make_jaxpr`` trace and marks each call's input and
    output with a ``lax.optimization_barrier`` (an identity), so that the jaxpr interpreter
    (:mod:`cnnjax.receptive_fields`) can tell which variables enter and leave which call."""

    def __init__(self, variables: dict, batch_size: int):
        self.params = variables.get("params", {})
        self.batch_size = batch_size
        self.open: list[int] = []  # calls whose input barrier the walk has passed
        self.calls: list[_Call] = []
        self.stack: list[tuple[nn.Module, int]] = []
        self.seen_paths: set[tuple[str, ...]] = set()
        self.events: list[tuple[str, int]] = []  # ("enter" | "exit", call index), barrier order
        self.final: Field | None = None

    def intercept(self, next_fun, args, kwargs, context):
        module = context.module
        if context.method_name == "setup" or any(m is module for m, _ in self.stack):
            return next_fun(*args, **kwargs)
        x = args[0] if args else next(iter(kwargs.values()), None)
        path = tuple(str(p) for p in module.path)
        call = _Call(
            path=path,
            type_name=type(module).__name__,
            input_shape=tuple(x.shape) if _is_array(x) else None,
            parent=self.stack[-1][1] if self.stack else None,
        )
        index = len(self.calls)
        self.calls.append(call)
        if call.parent is not None:
            self.calls[call.parent].children += 1
        if args and _is_array(x):
            self.events.append(("enter", index))
            args = (jax.lax.optimization_barrier(x), *args[1:])
        self.stack.append((module, index))
        try:
            out = next_fun(*args, **kwargs)
        finally:
            self.stack.pop()
        call.output_shape = jax.tree.map(lambda a: tuple(a.shape), out)
        own = self._own_params(path)
        if path not in self.seen_paths:
            call.own_params = sum(int(math.prod(p.shape)) for p in own.values())
            call.param_paths = tuple("/".join((*path, k)) for k in own)
            self.seen_paths.add(path)
        leaves, tree = jax.tree.flatten(out)
        if any(_is_array(a) for a in leaves):
            self.events.append(("exit", index))
            leaves = jax.lax.optimization_barrier(leaves)
            out = jax.tree.unflatten(tree, leaves)
        return out

    def _own_params(self, path: tuple[str, ...]) -> dict[str, Any]:
        node = self.params
        for name in path:
            if not isinstance(node, dict) or name not in node:
                return {}
            node = node[name]
        if not isinstance(node, dict):
            return {}
        return {k: v for k, v in node.items() if not isinstance(v, dict)}

    def on_marker(self, marker: int, fields: list[Field | None]) -> list[Field | None]:
        """At a call's input: remember the field and the leaf row it came from. At a leaf
        call's output: stamp the output fields with the call's row (the main-path link)."""
        kind, index = self.events[marker]
        call = self.calls[index]
        first = fields[0] if fields else None
        if kind == "enter":
            self.open.append(index)
        elif index in self.open:
            del self.open[self.open.index(index) :]
        if kind == "enter":
            call.input_row = first.row if first is not None else None
            return fields
        if call.children == 0:
            fields = [Field(f.axes, index) if f is not None else None for f in fields]
            first = fields[0] if fields else None
        call.field = first
        if first is not None and first.row is not None:
            self.final = first
        return fields

    def on_equation(self, eqn, ins, outs, support, depth) -> None:
        """MACs of every equation go to the innermost module call running it."""
        del ins, outs, depth
        macs, valid = equation_macs(eqn, support, self.batch_size)
        if macs and self.open:
            self.calls[self.open[-1]].macs += macs
            self.calls[self.open[-1]].macs_valid += valid

    def finish(self) -> list[LayerSummary]:
        main = set()
        last = self.final.row if self.final is not None else None
        while last is not None and last not in main:
            main.add(last)
            last = self.calls[last].input_row
        rows = []
        for i, c in enumerate(self.calls):
            f = c.field
            rows.append(
                LayerSummary(
                    path="/".join(c.path) or "(model)",
                    type_name=c.type_name,
                    depth=len(c.path),
                    is_leaf=c.children == 0,
                    input_shape=c.input_shape,
                    output_shape=c.output_shape,
                    params=c.own_params,
                    macs=c.macs,
                    macs_valid=c.macs_valid,
                    rf_size=f.size if f else None,
                    rf_jump=f.jump if f else None,
                    rf_start=f.start if f else None,
                    on_main_path=(i in main) if c.children == 0 else bool(f and f.row in main),
                    param_paths=c.param_paths,
                )
            )
        return rows


def _uncalled_rows(named: list, seen: set[tuple[str, ...]]) -> list[LayerSummary]:
    """Rows for parameters of modules the traced call never ran (e.g. GoogLeNet's auxiliary
    classifiers, which only run when training), so that the totals are the whole tree."""
    owned: dict[tuple[str, ...], int] = {}
    leaves: dict[tuple[str, ...], list[str]] = {}
    for names, leaf in named:
        owner = names[:-1]
        if owner not in seen:
            owned[owner] = owned.get(owner, 0) + int(math.prod(leaf.shape))
            leaves.setdefault(owner, []).append("/".join(names))
    return [
        LayerSummary(
            path="/".join(path),
            type_name="not called",
            depth=len(path),
            is_leaf=True,
            input_shape=None,
            output_shape=None,
            params=count,
            macs=0,
            macs_valid=0,
            rf_size=None,
            rf_jump=None,
            rf_start=None,
            on_main_path=False,
            param_paths=tuple(leaves[path]),
        )
        for path, count in owned.items()
    ]


def leaf_paths(tree: Any) -> list[tuple[tuple[str, ...], Any]]:
    """``[(names, leaf)]`` of a parameter tree, in ``jax.tree.leaves`` order (dict keys, list
    indices and NNX state keys as strings; an NNX Variable's attribute step is not a name)."""
    return [
        (
            tuple(
                str(getattr(k, "key", getattr(k, "idx", k)))
                for k in key_path
                if not isinstance(k, jax.tree_util.GetAttrKey)
            ),
            leaf,
        )
        for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]


# --------------------------------------------------------------------------------------------
# Table
# --------------------------------------------------------------------------------------------


def _format_table(
    name,
    input_shape,
    rows,
    depth,
    *,
    total_params,
    non_trainable,
    total_macs,
    total_macs_valid,
    final,
) -> str:
    if depth is None:
        shown = [(r, r.params, r.macs) for r in rows if r.is_leaf or r.params]
    else:
        shown = []
        for i, r in enumerate(rows):
            if r.depth > depth or (r.depth == 0 and depth > 0):
                continue
            params, macs = _subtree_totals(rows, i) if r.depth == depth else (r.params, r.macs)
            shown.append((r, params, macs))
    header = ("Layer (type)", "Output shape", "Params", "MACs", "RF size/jump")
    lines = [
        (
            "  " * max(r.depth - 1, 0) + f"{r.path} ({r.type_name})",
            _shape_str(r.output_shape),
            f"{params:,}",
            f"{macs:,}",
            _field_str(r),
        )
        for r, params, macs in shown
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]

    def fmt(cells):
        left = f"{cells[0]:<{widths[0]}}  {cells[1]:<{widths[1]}}"
        right = "  ".join(f"{c:>{w}}" for c, w in zip(cells[2:], widths[2:], strict=True))
        return f"{left}  {right}"

    rule = "=" * len(fmt(header))
    out = [f"Model: {name}    input {input_shape}", rule, fmt(header), rule]
    out += [fmt(line) for line in lines]
    out.append(rule)
    out.append(f"Total params: {total_params:,} ({_human(total_params * 4)}B as float32)")
    out.append(f"Non-trainable variables (batch_stats etc.): {non_trainable:,}")
    out.append(
        f"MACs per example: {total_macs:,} ({_human(total_macs)}); "
        f"{total_macs_valid:,} skipping zero-padding taps (what XLA's cost_analysis counts)"
    )
    if final is not None:
        out.append(
            f"Receptive field of the last feature map: {_dims(final[0])} px, "
            f"jump {_dims(final[1])} px  (* = main path; fields in () are off it)"
        )
    return "\n".join(out)


def _subtree_totals(rows, index):
    prefix = rows[index].path
    params = macs = 0
    for r in rows:
        inside = prefix == "(model)" or r.path == prefix or r.path.startswith(prefix + "/")
        if inside:
            params += r.params
            macs += r.macs
    return params, macs


def _field_str(r: LayerSummary) -> str:
    if r.rf_size is None:
        return ""
    text = f"{_dims(r.rf_size)}/{_dims(r.rf_jump)}"
    return f"{text} *" if r.on_main_path else f"({text})  "


def _dims(values) -> str:
    return str(values[0]) if len(set(values)) == 1 else "x".join(map(str, values))


def _shape_str(shape) -> str:
    if isinstance(shape, tuple) and all(isinstance(s, int) for s in shape):
        return str(shape)
    return str(jax.tree.leaves(shape, is_leaf=lambda s: isinstance(s, tuple)))


def _human(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.3g}{unit}" if unit else f"{n:g}"
        n /= 1000
    return f"{n:.3g}P"


def _is_array(a) -> bool:
    return hasattr(a, "shape") and hasattr(a, "ndim")


def _accepts_train(model: nn.Module) -> bool:
    try:
        return "train" in inspect.signature(type(model).__call__).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
        return False
