"""The pure training and evaluation steps, identical under jit, pmap and shard_map.

``train_step(state, batch, *, model, tx, axis_name=None, ...)`` and
``eval_step(state, batch, *, model, axis_name=None, ...)`` take everything static (the Flax
module, the optax transformation, loss options) as keyword arguments, bound with
``functools.partial`` by the driver. ``axis_name=None`` means no cross-device reduction; with an
axis name, gradients and BatchNorm statistics are averaged (``lax.pmean``) and metric sums added
(``lax.psum``) over it, and a model with an ``axis_name`` field is cloned with it so BatchNorm
normalises with the statistics of the *global* batch: the parallel run then computes the same
update as a single device on the whole batch.

The loss and the metric sums come from the task (:mod:`cnnjax.train.tasks`):
``task.objective(logits, aux_logits, labels) -> (mean loss, metric sums)`` in training,
``task.eval_metrics(logits, labels, mask) -> metric sums`` in evaluation. ``task=None`` is
classification with ``label_smoothing`` and ``aux_loss_weight``
(:func:`cnnjax.train.losses.classification_objective`). Weight decay lives in the optimiser
(``cnnjax.train.optim``).

Non-finite guard: a step whose loss or gradient global norm is not finite changes nothing but
the step counter (parameters, optimiser and BatchNorm state and the EMA keep their values; a
``jnp.where`` on device, no host sync) and is counted in the metrics: ``skipped`` (update not
applied) and ``nonfinite`` (a divergence: the loss itself is not finite, or the gradients are
and no loss scale is left to lower). With float16 compute (``opt_state`` a
:class:`~cnnjax.train.optim.LossScaleState`) the loss is multiplied by the dynamic loss scale
before differentiation and the gradients divided by it; an overflow halves the scale and skips
the step without counting as a divergence while the scale is above 1.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from cnnjax.train.losses import classification_metrics, classification_objective, cross_entropy
from cnnjax.train.optim import LossScaleState, adjust_loss_scale
from cnnjax.train.state import TrainState

__all__ = ["TRAIN_METRICS", "cross_entropy", "eval_step", "train_step"]

Metrics = dict[str, jax.Array]

# The metric sums every train step returns (float32 scalars).
TRAIN_METRICS = ("loss", "correct", "count", "skipped", "nonfinite")


def _bind_axis(model: nn.Module, axis_name: str | None) -> nn.Module:
    """Clone a model that has an ``axis_name`` field (BatchNorm) with ours: cross-device stats."""
    fields = getattr(model, "__dataclass_fields__", {})
    # cnnjax's own models spell it ``axis_name``; ``bn_axis_name`` (the spelling VGG and SegNet
    # had before) is still bound on a user's own ``module:Class`` model, which would otherwise
    # silently lose its cross-device statistics.
    for field in ("axis_name", "bn_axis_name"):
        if axis_name is not None and field in fields:
            return model.clone(**{field: axis_name})
    return model


def _global_norm(tree) -> jax.Array:
    """``sqrt(Σ x²)`` over every leaf, in float32 (non-finite as soon as one entry is)."""
    squares = [jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)]
    return jnp.sqrt(sum(squares))


def _variables(params, batch_stats) -> dict:
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    task: Any = None,
    axis_name: str | None = None,
    label_smoothing: float = 0.0,
    aux_loss_weight: float = 0.3,
    ema_decay: float | None = None,
    augment: Callable[[jax.Array, dict], dict] | None = None,
) -> tuple[TrainState, Metrics]:
    """One optimiser step on ``batch`` ``{"image": (N, H, W, C), "label": labels}``.

    Returns the new state and the task's metric *sums* over the (global) batch (``loss`` of the
    main head, ``correct``, ``count``; all 0 for a skipped step), plus ``skipped`` and
    ``nonfinite`` (0 or 1; see the module docstring). ``task`` (a
    :class:`cnnjax.train.tasks.Task`; ``None``: classification with ``label_smoothing`` and
    ``aux_loss_weight``) gives the loss. ``augment(key, batch) -> batch`` runs device-side
    augmentation (e.g. :func:`cnnjax.data.device_preprocess`).
    """
    objective = (
        task.objective
        if task is not None
        else functools.partial(
            classification_objective,
            label_smoothing=label_smoothing,
            aux_loss_weight=aux_loss_weight,
        )
    )
    model = _bind_axis(model, axis_name)
    rng = jax.random.fold_in(state.rng, state.step)
    if axis_name is not None:  # distinct dropout masks and augmentations per device
        rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
    dropout_key, augment_key = jax.random.split(rng)
    if augment is not None:
        batch = augment(augment_key, batch)
    loss_scale = state.opt_state if isinstance(state.opt_state, LossScaleState) else None

    def loss_fn(params):
        out, batch_stats = _apply_train(model, params, state.batch_stats, batch, dropout_key)
        logits, aux = out if isinstance(out, tuple) else (out, ())
        total, sums = objective(logits, aux, batch["label"])
        if loss_scale is not None:
            total = total * loss_scale.scale
        return total, (sums, batch_stats)

    grads, (metrics, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    if loss_scale is not None:
        grads = jax.tree.map(lambda g: g / loss_scale.scale, grads)
    if axis_name is not None:
        grads = jax.lax.pmean(grads, axis_name)
        batch_stats = jax.lax.pmean(batch_stats, axis_name)
        metrics = jax.lax.psum(metrics, axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = state.ema_params
    if ema_decay is not None and ema_params is not None:
        ema_params = jax.tree.map(
            lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema_params, params
        )
    updated = state.replace(
        params=params, batch_stats=batch_stats, opt_state=opt_state, ema_params=ema_params
    )
    return _guard(state, updated, metrics, grads, loss_scale)


def _apply_train(model, params, batch_stats, batch, dropout_key):
    """The model in training mode: ``(output, new batch_stats)`` (``{}`` without BatchNorm)."""
    has_stats = bool(batch_stats)
    out = model.apply(
        _variables(params, batch_stats),
        batch["image"],
        train=True,
        rngs={"dropout": dropout_key},
        mutable=["batch_stats"] if has_stats else False,
    )
    out, updates = out if has_stats else (out, {})
    return out, updates.get("batch_stats", {})


def _guard(state, updated, metrics, grads, loss_scale) -> tuple[TrainState, Metrics]:
    """Apply ``updated`` only where loss and gradients are finite; count skips and divergences.

    Called after the pmean / psum, so every device takes the same decision.
    """
    loss_finite = jnp.isfinite(metrics["loss"])
    grads_finite = jnp.isfinite(_global_norm(grads))
    finite = loss_finite & grads_finite
    rescalable = loss_scale.scale > 1.0 if loss_scale is not None else False
    diverged = ~loss_finite | (~grads_finite & ~jnp.asarray(rescalable))
    # A skipped step's loss (maybe NaN) and accuracy stay out of the sums: averages cover the
    # applied updates, and metrics.jsonl never holds a NaN.
    metrics = {k: jnp.where(finite, v, 0.0) for k, v in metrics.items()}
    metrics["skipped"] = (~finite).astype(jnp.float32)
    metrics["nonfinite"] = diverged.astype(jnp.float32)
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
    if loss_scale is not None:
        new_state = new_state.replace(opt_state=adjust_loss_scale(new_state.opt_state, finite))
    return new_state.replace(step=state.step + 1), metrics


def eval_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: nn.Module,
    task: Any = None,
    axis_name: str | None = None,
    use_ema: bool = False,
    preprocess: Callable[[jax.Array], jax.Array] | None = None,
) -> Metrics:
    """The task's metric sums over the batch (``loss``, ``correct``, ``count``, ...), weighted
    by ``batch["mask"]``; ``task=None`` is classification.

    Padding rows (``mask == 0``) contribute nothing, so summing over an epoch of padded batches
    gives exact totals over the split.
    """
    metrics_fn = task.eval_metrics if task is not None else classification_metrics
    images, labels = batch["image"], batch["label"]
    if preprocess is not None:
        images = preprocess(images)
    mask = batch.get("mask")
    mask = jnp.ones(labels.shape[:1], jnp.float32) if mask is None else mask.astype(jnp.float32)
    params = state.ema_params if use_ema and state.ema_params is not None else state.params
    logits = model.apply(_variables(params, state.batch_stats), images, train=False)
    metrics = metrics_fn(logits, labels, mask)
    if axis_name is not None:
        metrics = jax.lax.psum(metrics, axis_name)
    return metrics
