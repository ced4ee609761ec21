"""Multiply-accumulates of one jaxpr equation, one rule per primitive.

Counted per example (the equation's work divided by the batch size), from the equation's own
shapes and parameters, so any model is counted the same way whatever wrote it:

* ``conv_general_dilated``: ``prod(out_spatial) * nnz(kernel)`` where ``nnz(kernel)`` is the
  kernel's size ``prod(k) * C_in/groups * C_out`` less the entries known to be zero (a kernel
  scattered from fewer parameters, e.g. LeNet-5's C3 connection table, counts only its 60
  connected map pairs). With input dilation (a transposed conv) every *input* pixel meets every
  tap once: ``prod(in_spatial) * nnz(kernel)``.
* ``dot_general``: ``prod(out) * prod(contracted dims)`` (a dense layer: ``in * out``).
* everything else (bias, normalisation, activations, pooling): 0.

``valid`` MACs skip the taps that fall on zero padding (or between the pixels of a dilated
input): what XLA's ``cost_analysis()`` counts for a convolution (``flops = 2 * valid``), which
explains the gap between ``2 * macs`` and XLA on small inputs (a 3x3 conv on a 1x1 map has 1
valid tap of 9).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["equation_macs"]


def equation_macs(eqn, support: Sequence[int], batch_size: int) -> tuple[int, int]:
    """``(macs, valid_macs)`` per example of one equation (``(0, 0)`` without a rule).

    ``support[i]``: entries of operand ``i`` that may be non-zero (see
    :func:`cnnjax.analysis.receptive_fields.jaxpr_fields`'s ``on_equation``).
    """
    rule = _RULES.get(eqn.primitive.name)
    if rule is None:
        return 0, 0
    macs, valid = rule(eqn, support)
    return macs // batch_size, valid // batch_size


def _shape(v) -> tuple[int, ...]:
    return tuple(v.aval.shape)


def _valid_taps(n: int, o: int, k: int, s: int, lo: int, d: int, base: int) -> int:
    """(output position, tap) pairs of one dim that read a real pixel of an input of ``n``
    pixels dilated by ``base`` (``base - 1`` zeros between neighbours)."""
    last = (n - 1) * base
    return sum(
        1
        for i in range(o)
        for t in range(k)
        if 0 <= i * s - lo + t * d <= last and (i * s - lo + t * d) % base == 0
    )


def _conv(eqn, support):
    p = eqn.params
    dn = p["dimension_numbers"]
    lhs, kernel, out = _shape(eqn.invars[0]), _shape(eqn.invars[1]), _shape(eqn.outvars[0])
    in_spatial = [lhs[a] for a in dn.lhs_spec[2:]]
    out_spatial = [out[a] for a in dn.out_spec[2:]]
    taps = [kernel[a] for a in dn.rhs_spec[2:]]
    batch = out[dn.out_spec[0]]
    nnz = min(support[1], math.prod(kernel)) // max(p.get("batch_group_count", 1), 1)
    per_tap = nnz / math.prod(taps)  # C_in/groups * C_out, less the known zeros
    base = p["lhs_dilation"]
    valid = math.prod(
        _valid_taps(n, o, k, s, lo, d, b)
        for n, o, k, s, (lo, _), d, b in zip(
            in_spatial,
            out_spatial,
            taps,
            p["window_strides"],
            p["padding"],
            p["rhs_dilation"],
            base,
            strict=True,
        )
    )
    if any(b > 1 for b in base):
        macs = math.prod(in_spatial) * nnz
    else:
        macs = math.prod(out_spatial) * nnz
    return batch * macs, batch * round(valid * per_tap)


def _dot_general(eqn, support):
    del support
    (lc, _), _ = eqn.params["dimension_numbers"]
    lhs = _shape(eqn.invars[0])
    macs = math.prod(_shape(eqn.outvars[0])) * math.prod(lhs[a] for a in lc)
    return macs, macs


_RULES = {"conv_general_dilated": _conv, "dot_general": _dot_general}
