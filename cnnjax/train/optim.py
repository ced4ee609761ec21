"""Optimisers and learning-rate schedules built from a config (optax).

``make_optimizer`` chains, in order: gradient clipping by global norm (optional), L2 weight decay
on the *weights* (kernels, ``ndim > 1``; biases and BatchNorm scales are not decayed) added to
the gradient as in the papers (``g + λ w``, equivalent to a ``λ/2 ‖w‖²`` loss term), then SGD with
(Nesterov) momentum or AdamW (decoupled decay), and wraps everything in ``optax.MultiSteps``
when gradients are accumulated over several batches.

Schedules count *optimiser updates* (= batches ÷ ``accumulate_steps``): ``constant``, ``step``
(multiply by ``decay_factor`` at each of ``milestones``), ``cosine`` (to ``end_lr`` at
``total_steps``), each optionally preceded by ``warmup_steps`` of linear warm-up from 0.
``cycles`` (``(start, end)`` update counts, set when a run is extended) makes ``cosine`` a
sequence of cycles: the first as above over ``[0, end_0)``, each later one a cosine from ``lr``
to ``end_lr`` over ``[start_i, end_i)`` without warm-up (a warm restart).

Dynamic loss scaling for float16 compute (the rule of ``jmp.DynamicLossScale``; Micikevicius et
al., *Mixed Precision Training*, 2018): :func:`with_loss_scale` keeps ``(scale, good_steps)`` in
the optimiser state next to the wrapped optimiser's; the train step multiplies the loss by
``scale`` before differentiating and divides the gradients by it, and :func:`adjust_loss_scale`
halves the scale after a step with non-finite gradients (that step's update is skipped) and
doubles it after ``period`` finite steps in a row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "LossScaleState",
    "adjust_loss_scale",
    "make_optimizer",
    "make_schedule",
    "weight_mask",
    "with_loss_scale",
]


def make_schedule(
    name: str,
    lr: float,
    *,
    total_steps: int,
    warmup_steps: int = 0,
    milestones: Sequence[int] = (),
    decay_factor: float = 0.1,
    end_lr: float = 0.0,
    cycles: Sequence[Sequence[int]] = (),
) -> optax.Schedule:
    """Learning rate as a function of the optimiser update count (see the module docstring)."""
    if name == "cosine" and len(cycles) > 1:
        alpha = end_lr / lr if lr else 0.0
        first = make_schedule(
            name, lr, total_steps=int(cycles[0][1]), warmup_steps=warmup_steps, end_lr=end_lr
        )
        rest = [
            optax.cosine_decay_schedule(lr, max(1, int(end) - int(start)), alpha=alpha)
            for start, end in cycles[1:]
        ]
        return optax.join_schedules([first, *rest], [int(start) for start, _ in cycles[1:]])
    if name == "constant":
        main = optax.constant_schedule(lr)
    elif name == "step":
        # join_schedules hands the second schedule ``step - warmup``: shift the milestones.
        main = optax.piecewise_constant_schedule(
            lr, {int(m) - warmup_steps: decay_factor for m in milestones}
        )
    elif name == "cosine":
        alpha = end_lr / lr if lr else 0.0
        main = optax.cosine_decay_schedule(lr, max(1, total_steps - warmup_steps), alpha=alpha)
    else:
        raise ValueError(f'schedule must be "constant", "step" or "cosine", got {name!r}')
    if warmup_steps <= 0:
        return main
    warmup = optax.linear_schedule(0.0, lr, warmup_steps)
    return optax.join_schedules([warmup, main], [warmup_steps])


def weight_mask(params):
    """``True`` for weights that get weight decay: kernels (``ndim > 1``), not biases or scales."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(
    name: str,
    schedule: optax.Schedule | float,
    *,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    grad_clip_norm: float | None = None,
    accumulate_steps: int = 1,
    loss_scale: float | None = None,
) -> optax.GradientTransformation:
    """``"sgd"`` (momentum, optional Nesterov, coupled L2) or ``"adamw"`` (decoupled decay).

    ``loss_scale`` (float16 compute): the initial dynamic loss scale, see :func:`with_loss_scale`.
    """
    parts = []
    if grad_clip_norm:
        parts.append(optax.clip_by_global_norm(grad_clip_norm))
    if name == "sgd":
        if weight_decay:
            parts.append(optax.add_decayed_weights(weight_decay, mask=weight_mask))
        parts.append(optax.sgd(schedule, momentum=momentum or None, nesterov=nesterov))
    elif name == "adamw":
        parts.append(
            optax.adamw(
                schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=weight_mask
            )
        )
    elif name == "adam":
        parts.append(optax.adam(schedule, b1=b1, b2=b2, eps=eps))
    else:
        raise ValueError(f'optimizer must be "sgd", "adamw" or "adam", got {name!r}')
    tx = optax.chain(*parts) if len(parts) > 1 else parts[0]
    if accumulate_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=accumulate_steps)
    if loss_scale is not None:
        tx = with_loss_scale(tx, loss_scale)
    return tx


class LossScaleState(NamedTuple):
    """Optimiser state of :func:`with_loss_scale`: the wrapped state and the dynamic loss scale.

    ``scale`` is a float32 scalar, ``good_steps`` (int32) the finite steps since it last changed.
    """

    inner: Any
    scale: jax.Array
    good_steps: jax.Array


def with_loss_scale(
    tx: optax.GradientTransformation, initial_scale: float = 2.0**15
) -> optax.GradientTransformation:
    """Wrap ``tx`` so its state carries a dynamic loss scale (see the module docstring).

    The update itself is ``tx``'s on *unscaled* gradients; the train step reads
    ``opt_state.scale`` and calls :func:`adjust_loss_scale` once it knows whether the step was
    finite.
    """

    def init(params):
        return LossScaleState(
            tx.init(params), jnp.asarray(initial_scale, jnp.float32), jnp.zeros((), jnp.int32)
        )

    def update(updates, state, params=None):
        updates, inner = tx.update(updates, state.inner, params)
        return updates, state._replace(inner=inner)

    return optax.GradientTransformation(init, update)


def adjust_loss_scale(
    state: LossScaleState,
    grads_finite: jax.Array,
    *,
    period: int = 2000,
    factor: float = 2.0,
    min_scale: float = 1.0,
) -> LossScaleState:
    """The next loss scale: ``scale / factor`` (not below ``min_scale``) after a non-finite
    step; ``scale × factor`` after ``period`` finite steps in a row (if that stays finite)."""
    grown = state.good_steps + 1 >= period
    up = state.scale * factor
    up = jnp.where(grown & jnp.isfinite(up), up, state.scale)
    scale = jnp.where(grads_finite, up, jnp.maximum(min_scale, state.scale / factor))
    good = jnp.where(grads_finite & ~grown, state.good_steps + 1, 0)
    return state._replace(scale=scale.astype(jnp.float32), good_steps=good.astype(jnp.int32))
