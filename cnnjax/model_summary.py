"""Per-layer model summary: output shapes, parameters, MACs and receptive fields.

Like Keras' ``model.summary()``, with two columns more: the multiply-accumulates of each layer
and the receptive field of its output. Nothing is computed on real data: the model is traced
with :func:`jax.eval_shape` under :func:`flax.linen.intercept_methods`, which reports every
module call (its path, input and output shapes and the module's fields), so even VGG-19 is
summarised without allocating its 143M parameters.

Counting rules (per example):

* params: the ``params`` collection only (BatchNorm ``scale``/``bias`` included); running
  statistics (``batch_stats``) are reported separately as non-trainable variables.
* MACs: for a conv, ``prod(out_spatial) * prod(kernel) * C_in/groups * C_out``, which for a
  kernel stored as ``(*kernel, C_in // groups, C_out)`` is ``prod(out_spatial) * kernel.size``;
  the same rule covers depthwise and separable convs (each kernel at the output resolution) and
  dense layers (``in * out``). Transposed convs use the *input* spatial size. Elementwise work
  (bias, BatchNorm, activations, pooling) is not counted.
* ``macs_valid``: the same count but skipping kernel taps that fall on zero padding. This is
  what XLA's ``cost_analysis()`` counts for a convolution (``flops = 2 * macs_valid`` for the
  conv itself), so it explains the gap between ``2 * macs`` and XLA on small inputs, where the
  padded border is a large fraction of the image (a 3x3 conv on a 1x1 map has 1 valid tap of 9).
* receptive field: the seeds' looking-forward recurrence (:func:`cnnjax.shapes.receptive_field`)
  ``r_{l+1} = r_l + (k_eff - 1) * jump_l``, ``jump_{l+1} = jump_l * s_l``, propagated along the
  data flow: a layer's input field is that of the array it receives, and a block that merges
  branches (residual add, inception/dense concat) takes the largest field among them. The
  *main path* is the chain of layers that the final feature map's field comes from (marked ``*``
  in the table); its fields are recomputed from the seeds' recurrence in one go as a check.

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

from cnnjax import shapes
from cnnjax.receptive_fields import Field, input_field, jaxpr_fields

__all__ = ["LayerSummary", "SummaryResult", "print_summary", "summary"]


@dataclasses.dataclass(frozen=True)
class LayerSummary:
    """One module call.

    ``path`` is the module's scope path (``"layer1/0/conv1"``), ``params`` the parameters the
    module owns directly (its children's are in their own rows; a module called twice counts its
    parameters on the first call only), ``macs`` and ``macs_valid`` per example (see the module
    docstring). ``rf_size``/``rf_jump``/``rf_start`` are per spatial dim, ``None`` when the output
    has no spatial dims or the field cannot be followed (e.g. through a transposed conv).
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
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    batch_size: int = 1,
    dtype: Any = jnp.float32,
    depth: int | None = None,
    print_fn: Callable[[str], Any] | None = print,
) -> SummaryResult:
    """Summarise ``model`` on inputs of shape ``(batch_size, *input_shape)``.

    Args:
      model: an unbound Linen module whose ``__call__`` takes the image batch (and ``train``
        if it has that argument; the summary runs in inference mode, ``train=False``).
      input_shape: ``(H, W, C)`` (any number of spatial dims), without the batch.
      batch_size: batch used for tracing; shapes in the table include it, MACs are per example.
      depth: ``None`` lists the leaf layers (modules that call no other module, plus modules
        owning parameters directly); an int lists every module at nesting depth ``<= depth``
        with the parameters and MACs of its subtree.
      print_fn: called with the table; ``None`` prints nothing.

    Returns:
      A :class:`SummaryResult`. Totals: ``total_params`` equals
      ``sum(x.size for x in jax.tree.leaves(variables["params"]))`` exactly.
    """
    x_spec = jax.ShapeDtypeStruct((batch_size, *tuple(input_shape)), dtype)
    call_kwargs = {"train": False} if _accepts_train(model) else {}
    variables = jax.eval_shape(
        lambda rng, x: model.init(rng, x, **call_kwargs), jax.random.key(0), x_spec
    )
    recorder = _Recorder(variables)

    def apply(variables, x):
        with nn.intercept_methods(recorder.intercept):
            return model.apply(variables, x, **call_kwargs)

    closed, out = jax.make_jaxpr(apply, return_shape=True)(variables, x_spec)
    n_variables = len(jax.tree.leaves(variables))
    jaxpr_fields(
        closed,
        [*([None] * n_variables), input_field(len(input_shape) - 1)],
        marker_hook=recorder.on_marker,
    )
    rows = recorder.finish() + _uncalled_rows(variables.get("params", {}), recorder.seen_paths)

    total_params = sum(
        int(math.prod(p.shape)) for p in jax.tree.leaves(variables.get("params", {}))
    )
    non_trainable = sum(
        int(math.prod(p.shape))
        for name, col in variables.items()
        if name != "params"
        for p in jax.tree.leaves(col)
    )
    attributed = sum(r.params for r in rows)
    if attributed != total_params:  # pragma: no cover - every param belongs to a called module
        raise AssertionError(
            f"summary attributed {attributed} parameters to layers, the tree holds {total_params}"
        )
    leaves = [r for r in rows if r.is_leaf]
    total_macs = sum(r.macs for r in leaves)
    total_macs_valid = sum(r.macs_valid for r in leaves)
    final = (recorder.final.size, recorder.final.jump) if recorder.final is not None else None
    out_shape = jax.tree.map(lambda a: tuple(a.shape), out)
    name = type(model).__name__
    table = _format_table(
        name,
        (batch_size, *tuple(input_shape)),
        rows,
        depth,
        total_params=total_params,
        non_trainable=non_trainable,
        total_macs=total_macs,
        total_macs_valid=total_macs_valid,
        final=final,
    )
    result = SummaryResult(
        model_name=name,
        input_shape=(batch_size, *tuple(input_shape)),
        output_shape=out_shape,
        layers=tuple(rows),
        total_params=total_params,
        non_trainable=non_trainable,
        total_macs=total_macs,
        total_macs_valid=total_macs_valid,
        receptive_field=final[0] if final else None,
        jump=final[1] if final else None,
        table=table,
    )
    if print_fn is not None:
        print_fn(table)
    return result


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
    geometry: tuple | None = None
    parent: int | None = None


class _Recorder:
    """Collects module calls during one ``jax.make_jaxpr`` trace and marks each call's input and
    output with a ``lax.optimization_barrier`` (an identity), so that the jaxpr interpreter
    (:mod:`cnnjax.receptive_fields`) can tell which variables enter and leave which call."""

    def __init__(self, variables: dict):
        self.params = variables.get("params", {})
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
            self.seen_paths.add(path)
        if call.children == 0:
            y = out if _is_array(out) else next(iter(jax.tree.leaves(out)), None)
            in_spatial = tuple(x.shape[1:-1]) if _is_array(x) else ()
            out_spatial = tuple(y.shape[1:-1]) if _is_array(y) else ()
            transpose = "transpose" in call.type_name.lower()
            geometry = _geometry(module, own, in_spatial, out_spatial, transpose)
            call.geometry = geometry if isinstance(geometry, tuple) else None
            call.macs, call.macs_valid = _macs(own, in_spatial, out_spatial, geometry, transpose)
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
            call.input_row = first.row if first is not None else None
            return fields
        if call.children == 0:
            fields = [Field(f.axes, index) if f is not None else None for f in fields]
            first = fields[0] if fields else None
        call.field = first
        if first is not None and first.row is not None:
            self.final = first
        return fields

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
                )
            )
        return rows


def _uncalled_rows(params: dict, seen: set[tuple[str, ...]]) -> list[LayerSummary]:
    """Rows for parameters of modules the traced call never ran (e.g. GoogLeNet's auxiliary
    classifiers, which only run when training), so that the totals are the whole tree."""
    owned: dict[tuple[str, ...], int] = {}
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = tuple(str(getattr(k, "key", k)) for k in key_path)
        owner = names[:-1]
        if owner not in seen:
            owned[owner] = owned.get(owner, 0) + int(math.prod(leaf.shape))
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
        )
        for path, count in owned.items()
    ]


# --------------------------------------------------------------------------------------------
# Per-layer arithmetic
# --------------------------------------------------------------------------------------------

_STRIDE_FIELDS = ("stride", "strides")
_PADDING_FIELDS = ("padding",)
_DILATION_FIELDS = ("dilation", "kernel_dilation", "rhs_dilation")
_WINDOW_FIELDS = ("window", "window_shape", "window_size", "pool_size")


def _geometry(module, own, in_spatial, out_spatial, transpose):
    """Per spatial dim ``(kernel, stride, (lo, hi), dilation)`` of a conv/pool layer; the string
    ``"identity"`` for a layer that keeps the spatial size without a window (BatchNorm, an
    activation, a dense layer on the channel axis); ``None`` when the field cannot be followed."""
    ndim = len(in_spatial)
    if ndim == 0 or len(out_spatial) != ndim or transpose:
        return None
    kernels = [p.shape[:-2] for p in own.values() if p.ndim == ndim + 2]
    window = next((getattr(module, n) for n in _WINDOW_FIELDS if hasattr(module, n)), None)
    if kernels:
        kernel = max(kernels, key=math.prod)
    elif getattr(module, "kernel_size", None) is not None:  # e.g. a connection-table conv
        kernel = shapes.canonicalize_tuple(tuple(module.kernel_size), ndim, "kernel_size")
    elif window is not None:
        kernel = shapes.canonicalize_tuple(window, ndim, "window")
    elif in_spatial == out_spatial:
        return "identity"
    else:
        return None
    default_stride = kernel if window is not None and not kernels else 1
    stride = next((getattr(module, n) for n in _STRIDE_FIELDS if hasattr(module, n)), None)
    stride = shapes.canonicalize_tuple(default_stride if stride is None else stride, ndim, "s")
    dilation = next((getattr(module, n) for n in _DILATION_FIELDS if hasattr(module, n)), None)
    dilation = shapes.canonicalize_tuple(1 if dilation is None else dilation, ndim, "d")
    padding = next((getattr(module, n) for n in _PADDING_FIELDS if hasattr(module, n)), 0)
    try:
        pads = shapes.canonicalize_padding(
            padding, ndim, kernel=kernel, stride=stride, dilation=dilation, spatial=in_spatial
        )
    except (TypeError, ValueError):
        return None
    geometry = tuple(zip(kernel, stride, pads, dilation, strict=True))
    ceil_mode = bool(getattr(module, "ceil_mode", False))
    for n, o, (k, s, p, d) in zip(in_spatial, out_spatial, geometry, strict=True):
        expect = (
            shapes.pool_output_size(n, k, s, p, d, ceil_mode)
            if ceil_mode
            else shapes.conv_output_size(n, k, s, p, d)
        )
        if expect != o:  # a layer we do not understand: better no field than a wrong one
            return None
    return geometry


def _valid_taps(n: int, o: int, k: int, s: int, lo: int, d: int) -> int:
    """Number of (output position, kernel tap) pairs of one dim that read a real input pixel."""
    return sum(1 for i in range(o) for t in range(k) if 0 <= i * s - lo + t * d < n)


def _macs(own, in_spatial, out_spatial, geometry, transpose) -> tuple[int, int]:
    """``(macs, macs_valid)`` per example: every weight matrix (``ndim >= 2``) is applied once
    per output position (per input position for a transposed conv)."""
    positions = math.prod(in_spatial if transpose else out_spatial)
    macs = valid = 0
    for p in own.values():
        if p.ndim < 2:
            continue
        size = int(math.prod(p.shape))
        macs += positions * size
        spatial_kernel = tuple(p.shape[:-2])
        if (
            isinstance(geometry, tuple)
            and len(spatial_kernel) == len(geometry)
            and spatial_kernel == tuple(g[0] for g in geometry)
            and math.prod(spatial_kernel) > 1
        ):
            taps = math.prod(
                _valid_taps(n, o, k, s, lo, d)
                for n, o, (k, s, (lo, _), d) in zip(in_spatial, out_spatial, geometry, strict=True)
            )
            valid += taps * (size // math.prod(spatial_kernel))
        else:
            valid += positions * size
    return macs, valid


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
            macs += r.macs if r.is_leaf else 0
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
