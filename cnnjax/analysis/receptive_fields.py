"""Receptive fields of every array a function computes, read from its jaxpr.

:func:`jaxpr_fields` walks the equations of ``jax.make_jaxpr(f)`` (public, stable JAX API) with
one small rule per primitive and returns, for every variable, its receptive field in the input:
per spatial axis the ``(size, jump, start)`` triple of Araujo, Norris & Sim (2019, "Computing
receptive fields of convolutional neural networks", Distill;
:func:`cnnjax.shapes.receptive_field`):

* ``size``: the extent of input pixels one output unit depends on (a window of ``size`` pixels),
* ``jump``: the input distance between neighbouring units (the product of strides so far),
* ``start``: the centre of unit 0's window in input coordinates (pixel ``i`` spans ``[i, i+1)``,
  so the input itself has ``start = 0.5``). Unit ``j``'s window is
  ``[start + j*jump - size/2, start + j*jump + size/2)``; parts of it may lie in the padding.

Rules (exact for every registered classification model):

* ``conv_general_dilated`` / ``reduce_window*`` (windowed): per spatial axis with
  ``k_eff = d*(k-1) + 1``: ``size += (k_eff - 1)*jump``, ``start += ((k_eff-1)/2 - lo)*jump``,
  ``jump *= s``. Input dilation (a transposed conv) divides the jump by ``lhs_dilation`` and
  adds only the real taps a window can cover, ``ceil(k_eff / lhs_dilation) - 1``. After an
  upsampling the map from output to input positions is no longer affine (``j -> floor(j/2)``),
  so the triple is an *upper bound* there: U-Net's paper configuration gets 200 px where the
  exact footprint of every output pixel, measured by its input gradient, is 188 px.
* ``pad`` shifts ``start`` by ``-lo*jump`` (interior padding divides the jump); ``slice`` shifts
  by ``start_index*jump`` and multiplies the jump by its stride.
* elementwise ops, ``select_n``, and ``concatenate`` along a non-spatial axis: the union of the
  operands' windows (a residual add or an inception concat sees what either branch sees).
* ``broadcast_in_dim``, ``transpose``, ``reshape`` (of non-spatial axes), ``squeeze`` and
  ``dot_general`` (a dense layer on the channel axis) move spatial axes; a reduction, reshape,
  contraction or concatenation *over* a spatial axis ends the tracking for that array (the
  classifier head after global pooling or flattening).
* calls (``jit``/``pjit``, ``custom_vjp_call``, ``custom_jvp_call``, ``closed_call``, remat):
  the rules are applied inside the called jaxpr.

Any other primitive whose outputs all have the shape of a tracked operand is treated as
elementwise; otherwise its outputs are untracked and its name is listed in ``unknown``.

The same walk serves the other per-equation analyses (:mod:`cnnjax.analysis.macs`): an
``on_equation`` hook sees every equation after its rule ran, with the number of possibly non-zero
entries of each operand (``support``: a constant's non-zeros, zeros broadcast or scattered into,
so that a kernel assembled from fewer parameters than its size, e.g. LeNet-5's C3, is known).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

__all__ = ["AxisField", "Field", "JaxprFields", "fields_of", "input_field", "jaxpr_fields"]


@dataclasses.dataclass(frozen=True)
class AxisField:
    """Receptive field along one input spatial axis (``dim``), carried by one array axis."""

    dim: int  # which spatial axis of the input (0 = height)
    size: float
    jump: float
    start: float

    def bounds(self) -> tuple[float, float]:
        """``[lo, hi)`` of unit 0's window, in input pixels."""
        return self.start - self.size / 2, self.start + self.size / 2


@dataclasses.dataclass(frozen=True)
class Field:
    """Receptive field of one array: ``axes[a]`` for every array axis ``a`` that runs over an input
    spatial axis; ``row`` is provenance (the last marked call the largest part came through)."""

    axes: dict[int, AxisField]
    row: int | None = None

    def by_dim(self) -> tuple[AxisField, ...]:
        """The per-input-dim fields, in input order."""
        return tuple(sorted(self.axes.values(), key=lambda f: f.dim))

    @property
    def size(self) -> tuple[int | float, ...]:
        return tuple(_num(f.size) for f in self.by_dim())

    @property
    def jump(self) -> tuple[int | float, ...]:
        return tuple(_num(f.jump) for f in self.by_dim())

    @property
    def start(self) -> tuple[float, ...]:
        return tuple(float(f.start) for f in self.by_dim())


@dataclasses.dataclass
class JaxprFields:
    """What :func:`jaxpr_fields` found: the output fields, the fields at each marker (the
    ``optimization_barrier`` equations, in trace order) and primitives without a rule."""

    outputs: list[Field | None]
    markers: list[list[Field | None]]
    unknown: set[str]


def jaxpr_fields(
    closed_jaxpr,
    input_fields: Sequence[Field | None],
    *,
    marker_hook: Callable | None = None,
    on_equation: Callable | None = None,
) -> JaxprFields:
    """Propagate receptive fields through ``closed_jaxpr`` (from :func:`jax.make_jaxpr`).

    Args:
      closed_jaxpr: the traced function.
      input_fields: one entry per flat input: :func:`input_field` for the image, ``None`` for
        parameters and other inputs.
      marker_hook: called as ``marker_hook(index, fields) -> fields`` at every
        ``lax.optimization_barrier`` (the summary marks module calls with them); may return
        fields with a new ``row``.
      on_equation: called as ``on_equation(eqn, ins, outs, support, depth)`` after every
        equation (``depth`` 0 for the top-level ones; a call's inner equations come first, with
        ``depth + 1``); ``support[i]`` is the number of entries of operand ``i`` that may be
        non-zero. The branches of a ``cond`` after the first are not reported (they compute the
        same function: counting them would count its work twice).

    Returns:
      A :class:`JaxprFields`.
    """
    state = _State(marker_hook, on_equation)
    jaxpr = closed_jaxpr.jaxpr
    state.constants(jaxpr.constvars, closed_jaxpr.consts)
    outs = state.run(jaxpr, [None] * len(jaxpr.constvars), list(input_fields))
    return JaxprFields(outs, state.markers, state.unknown)


def input_field(ndim: int) -> Field:
    """The field of a channels-last ``(N, *spatial, C)`` input: each pixel sees itself."""
    return Field({a + 1: AxisField(a, 1, 1, 0.5) for a in range(ndim)})


# --------------------------------------------------------------------------------------------
# The interpreter
# --------------------------------------------------------------------------------------------


class _State:
    def __init__(self, marker_hook, on_equation=None):
        self.marker_hook = marker_hook
        self.on_equation = on_equation
        self.markers: list[list[Field | None]] = []
        self.unknown: set[str] = set()
        self.support: dict[Any, int] = {}  # var -> entries that may be non-zero (default: all)
        self.depth = 0
        self.silent = 0  # > 0 inside a cond branch that is not reported

    def constants(self, constvars, consts) -> None:
        for v, c in zip(constvars, consts, strict=True):
            try:  # a constant's zeros are known; a traced one (inside jit) may be anything
                self.support[v] = int(np.count_nonzero(np.asarray(c)))
            except (TypeError, jax.errors.ConcretizationTypeError):
                continue

    def support_of(self, v) -> int:
        if not _is_var(v):
            return int(np.count_nonzero(np.asarray(v.val)))
        return self.support.get(v, math.prod(_shape(v)))

    def run(self, jaxpr, consts, args, support=None) -> list[Field | None]:
        env: dict[Any, Field | None] = {}
        for v, f in zip(jaxpr.constvars, consts, strict=True):
            env[v] = f
        for i, (v, f) in enumerate(zip(jaxpr.invars, args, strict=True)):
            env[v] = f
            if support is not None and support[i] is not None:
                self.support[v] = support[i]
        for eqn in jaxpr.eqns:
            ins = [env.get(v) if _is_var(v) else None for v in eqn.invars]
            support_in = [self.support_of(v) for v in eqn.invars]
            self.depth += 1
            try:
                outs = self.equation(eqn, ins)
            finally:
                self.depth -= 1
            for v, f in zip(eqn.outvars, outs, strict=True):
                env[v] = f
            _propagate_support(eqn, support_in, self.support)
            if self.on_equation is not None and not self.silent:
                self.on_equation(eqn, ins, outs, support_in, self.depth)
        return [env.get(v) if _is_var(v) else None for v in jaxpr.outvars]

    def equation(self, eqn, ins: list[Field | None]) -> list[Field | None]:
        name = eqn.primitive.name
        n_out = len(eqn.outvars)
        if name == "optimization_barrier":  # every marker, tracked or not, keeps its index
            outs = list(ins)
            if self.marker_hook is not None:
                outs = list(self.marker_hook(len(self.markers), outs))
            self.markers.append(outs)
            return outs
        if all(f is None for f in ins) and (
            self.on_equation is None or (_sub_jaxpr(eqn) is None and name != "cond")
        ):
            return [None] * n_out
        if name == "cond":  # e.g. lax.platform_dependent (conv.py's XLA:CPU workaround)
            return self._cond(eqn, ins)
        jaxpr = _sub_jaxpr(eqn)
        if jaxpr is not None:
            consts = [None] * len(jaxpr.constvars)
            n = len(jaxpr.invars)
            args = ins[-n:] if n else []
            support = [self.support_of(v) for v in eqn.invars][-n:] if n else []
            outs = self.run(jaxpr, consts, args, support)
            for outer, inner in zip(eqn.outvars, jaxpr.outvars, strict=True):
                if _is_var(inner) and inner in self.support:
                    self.support[outer] = self.support[inner]
            return outs
        rule = _RULES.get(name)
        if rule is not None:
            out = rule(eqn, ins)
            return out if isinstance(out, list) else [out]
        if name in _ELEMENTWISE or _same_shape_as_tracked(eqn, ins):
            if name not in _ELEMENTWISE:
                self.unknown.add(name)
            return [_elementwise(eqn, ins, v) for v in eqn.outvars]
        self.unknown.add(name)
        return [None] * n_out

    def _cond(self, eqn, ins: list[Field | None]) -> list[Field | None]:
        """Every branch sees the operands (``ins[0]`` is the branch index); an output's field is
        the union over the branches (they compute the same function on every platform)."""
        outs = []
        for i, branch in enumerate(eqn.params["branches"]):
            self.silent += i > 0
            try:
                outs.append(self.run(branch.jaxpr, [None] * len(branch.jaxpr.constvars), ins[1:]))
            finally:
                self.silent -= i > 0
        return [_merge([o[i] for o in outs if o[i] is not None]) for i in range(len(eqn.outvars))]


def _is_var(v) -> bool:
    return not hasattr(v, "val")  # Literals carry a value; variables do not


def _shape(v) -> tuple[int, ...]:
    return tuple(v.aval.shape)


def _sub_jaxpr(eqn):
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        p = eqn.params.get(key)
        if p is None:
            continue
        if hasattr(p, "jaxpr") and hasattr(p.jaxpr, "eqns"):
            return p.jaxpr
        if hasattr(p, "eqns"):
            return p
    return None


def _propagate_support(eqn, support_in: list[int], support: dict) -> None:
    """Non-zero entries through the ops that assemble a kernel: zeros (a broadcast zero),
    scatters into them, and the reshapes/conversions between; any other op may fill every entry."""
    name = eqn.primitive.name
    out = eqn.outvars[0] if len(eqn.outvars) == 1 else None
    if out is None or not support_in:
        return
    size = math.prod(_shape(out))
    if name == "broadcast_in_dim" and support_in[0] == 0:
        support[out] = 0
    elif name in ("reshape", "convert_element_type", "transpose", "copy", "copy_p"):
        support[out] = min(size, support_in[0])
    elif name.startswith("scatter") and len(support_in) >= 3:
        support[out] = min(size, support_in[0] + support_in[2])


def _num(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)


# -- merging -----------------------------------------------------------------------------------


def _union(a: AxisField, b: AxisField) -> AxisField:
    """The smallest window holding both (same dim; the jumps agree for same-shaped arrays)."""
    lo = min(a.bounds()[0], b.bounds()[0])
    hi = max(a.bounds()[1], b.bounds()[1])
    return AxisField(a.dim, hi - lo, max(a.jump, b.jump), (lo + hi) / 2)


def _merge(fields: list[Field]) -> Field | None:
    """Union of fields on the same array axes; provenance from the largest (last of equals)."""
    fields = [f for f in fields if f is not None]
    if not fields:
        return None
    axes: dict[int, AxisField] = {}
    for f in fields:
        for a, af in f.axes.items():
            axes[a] = _union(axes[a], af) if a in axes and axes[a].dim == af.dim else af
    best = None
    for f in fields:
        if best is None or tuple(x.size for x in f.by_dim()) >= tuple(
            x.size for x in best.by_dim()
        ):
            best = f
    return Field(axes, best.row)


def _elementwise(eqn, ins, outvar) -> Field | None:
    """Operands of the output's rank line up axis by axis (jaxprs broadcast explicitly)."""
    rank = len(_shape(outvar))
    same = [
        f for v, f in zip(eqn.invars, ins, strict=True) if f is not None and len(_shape(v)) == rank
    ]
    return _merge(same)


def _same_shape_as_tracked(eqn, ins) -> bool:
    shapes = {_shape(v) for v, f in zip(eqn.invars, ins, strict=True) if f is not None}
    return all(_shape(o) in shapes for o in eqn.outvars)


def _with_axes(f: Field, axes: dict[int, AxisField]) -> Field | None:
    return Field(axes, f.row) if axes else None


# -- rules -------------------------------------------------------------------------------------


def _window_step(af: AxisField, k: int, s: int, lo: int, d: int, base: int) -> AxisField:
    """One windowed layer along an axis: Araujo et al.'s recurrence, input dilation ``base``."""
    k_eff = d * (k - 1) + 1
    jump_in = af.jump / base
    taps = math.ceil(k_eff / base)  # real (undilated) input positions one window can cover
    size = af.size + (taps - 1) * af.jump
    start = af.start + ((k_eff - 1) / 2 - lo) * jump_in
    return AxisField(af.dim, size, jump_in * s, start)


def _conv(eqn, ins):
    lhs = ins[0]
    if lhs is None:
        return None
    p = eqn.params
    dn = p["dimension_numbers"]
    lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    kernel = _shape(eqn.invars[1])
    axes = {}
    for i, (a_in, a_k, a_out) in enumerate(
        zip(lhs_spec[2:], rhs_spec[2:], out_spec[2:], strict=True)
    ):
        af = lhs.axes.get(a_in)
        if af is None:
            continue
        lo = p["padding"][i][0]
        axes[a_out] = _window_step(
            af,
            kernel[a_k],
            p["window_strides"][i],
            lo,
            p["rhs_dilation"][i],
            p["lhs_dilation"][i],
        )
    return _with_axes(lhs, axes)


def _reduce_window(eqn, ins):
    p = eqn.params
    n_operands = len(eqn.outvars)
    merged = _merge([f for f in ins[:n_operands] if f is not None])
    if merged is None:
        return [None] * n_operands
    axes = {}
    for a, af in merged.axes.items():
        axes[a] = _window_step(
            af,
            p["window_dimensions"][a],
            p["window_strides"][a],
            p["padding"][a][0],
            p["window_dilation"][a],
            p["base_dilation"][a],
        )
    return [_with_axes(merged, axes)] * n_operands


def _pad(eqn, ins):
    f = ins[0]
    if f is None:
        return None
    axes = {}
    for a, af in f.axes.items():
        lo, _, interior = eqn.params["padding_config"][a]
        jump = af.jump / (interior + 1)
        axes[a] = AxisField(af.dim, af.size, jump, af.start - lo * jump)
    return _with_axes(f, axes)


def _slice(eqn, ins):
    f = ins[0]
    if f is None:
        return None
    p = eqn.params
    strides = p.get("strides") or (1,) * len(p["start_indices"])
    axes = {
        a: AxisField(
            af.dim, af.size, af.jump * strides[a], af.start + p["start_indices"][a] * af.jump
        )
        for a, af in f.axes.items()
    }
    return _with_axes(f, axes)


def _broadcast_in_dim(eqn, ins):
    f = ins[0]
    if f is None:
        return None
    operand, out = _shape(eqn.invars[0]), _shape(eqn.outvars[0])
    dims = eqn.params["broadcast_dimensions"]
    axes = {}
    for a, af in f.axes.items():
        if operand[a] == out[dims[a]]:  # a size-1 axis broadcast over space is not tracked
            axes[dims[a]] = af
    return _with_axes(f, axes)


def _transpose(eqn, ins):
    f = ins[0]
    if f is None:
        return None
    perm = eqn.params["permutation"]
    return _with_axes(f, {perm.index(a): af for a, af in f.axes.items()})


def _squeeze(eqn, ins):
    f = ins[0]
    if f is None:
        return None
    removed = set(eqn.params["dimensions"])
    if removed & set(f.axes):
        return None
    return _with_axes(f, {a - sum(r < a for r in removed): af for a, af in f.axes.items()})


def _reshape(eqn, ins):
    """Keeps the axes of the longest common leading part of the two shapes (e.g. a channel
    split); anything that merges a spatial axis with another ends the tracking."""
    f = ins[0]
    if f is None:
        return None
    a_shape, b_shape = _shape(eqn.invars[0]), _shape(eqn.outvars[0])
    common = 0
    while common < min(len(a_shape), len(b_shape)) and a_shape[common] == b_shape[common]:
        common += 1
    if any(a >= common for a in f.axes):
        return None
    return _with_axes(f, dict(f.axes))


def _reduce(eqn, ins):
    f = ins[0]
    if f is None:
        return None
    reduced = set(eqn.params["axes"])
    if reduced & set(f.axes):
        return None
    return _with_axes(f, {a - sum(r < a for r in reduced): af for a, af in f.axes.items()})


def _concatenate(eqn, ins):
    axis = eqn.params["dimension"]
    fields = [f for f in ins if f is not None]
    if any(axis in f.axes for f in fields):
        return None
    return _merge(fields)


def _dot_general(eqn, ins):
    """Output axes: batch, then lhs free, then rhs free (``lax.dot_general``'s order)."""
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs_rank, rhs_rank = len(_shape(eqn.invars[0])), len(_shape(eqn.invars[1]))
    lhs_free = [a for a in range(lhs_rank) if a not in lc and a not in lb]
    rhs_free = [a for a in range(rhs_rank) if a not in rc and a not in rb]
    fields = []
    for f, contract, batch, free, offset in (
        (ins[0], lc, lb, lhs_free, len(lb)),
        (ins[1], rc, rb, rhs_free, len(lb) + len(lhs_free)),
    ):
        if f is None:
            continue
        if set(contract) & set(f.axes):
            return None
        axes = {}
        for a, af in f.axes.items():
            axes[batch.index(a) if a in batch else offset + free.index(a)] = af
        fields.append(Field(axes, f.row))
    return _merge(fields)


_RULES: dict[str, Callable] = {
    "conv_general_dilated": _conv,
    "reduce_window_max": _reduce_window,
    "reduce_window_min": _reduce_window,
    "reduce_window_sum": _reduce_window,
    "reduce_window": _reduce_window,
    "pad": _pad,
    "slice": _slice,
    "broadcast_in_dim": _broadcast_in_dim,
    "transpose": _transpose,
    "squeeze": _squeeze,
    "reshape": _reshape,
    "reduce_sum": _reduce,
    "reduce_max": _reduce,
    "reduce_min": _reduce,
    "reduce_prod": _reduce,
    "argmax": _reduce,
    "argmin": _reduce,
    "concatenate": _concatenate,
    "dot_general": _dot_general,
}

_ELEMENTWISE = frozenset(
    """abs add and atan2 cbrt ceil clamp convert_element_type copy copy_p cos cosh div eq erf
    erf_inv exp exp2 expm1 floor ge gt integer_pow is_finite le log log1p logistic lt max min
    mul ne neg nextafter not or pow reduce_precision rem round rsqrt select_n sign sin sinh sqrt
    square stop_gradient sub tan tanh xor""".split()
)


def fields_of(fn: Callable, x: jax.ShapeDtypeStruct, *args) -> JaxprFields:
    """Fields of ``fn(x, *args)``'s outputs for a channels-last input ``x`` (``args`` untracked)."""
    closed = jax.make_jaxpr(fn)(x, *args)
    n_args = len(jax.tree.leaves(args))
    return jaxpr_fields(closed, [input_field(len(x.shape) - 2), *([None] * n_args)])
