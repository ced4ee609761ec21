"""The pure training and evaluation steps, identical under jit, pmap and shard_map.

``train_step(state, batch, *, model, tx, axis_name=None, ...)`` and
``eval_step(state, batch, *, model, axis_name=None, ...)`` take everything static (the Flax
module, the optax transformation, loss options) as keyword arguments, bound with
``functools.partial`` by the driver. ``axis_name=None`` means no cross-device reduction; with an
axis name, gradients and BatchNorm statistics are averaged (``lax.pmean``) and metric sums added
(``lax.psum``) over it, and a model with an ``axis_name`` field is cloned with it so BatchNorm
normalises with the statistics of the *global* batch: the parallel run then computes the same
update as a single device on the whole batch.

Loss: softmax cross-entropy with optional label smoothing ``ε``
(targets ``(1 - ε) onehot + ε / K``), plus ``aux_loss_weight × Σ`` the auxiliary heads' losses
when the model returns ``(logits, aux_logits)`` in training (GoogLeNet: 0.3).
Weight decay lives in the optimiser (``cnnjax.train.optim``).

Non-finite guard: a step whose loss or gradient global norm is not finite changes nothing but
the step counter (parameters, optimiser and BatchNorm state and the EMA keep their values; a
``jnp.where`` on device, no host sync) and is counted in the metrics: ``skipped`` (update not
applied) and ``nonfinite`` (a divergence: the loss itself is not finite, or the gradients are
and no loss scale is left to lower). With float16 compute (``opt_state`` a
:class:`~cnnjax.train.optim.LossScaleState`) the loss is multiplied by the dynamic loss scale
before differentiation and the gradients divided by it; an overflow halves the scale and skips
the step without counting as a divergence while the scale is above 1.

Other tasks: ``objective(logits, labels) -> (mean loss, metric sums)`` replaces the
classification loss and sums in :func:`train_step` (guard, loss scaling, EMA and device
augmentation unchanged; auxiliary heads are classification-only), and
``metrics_fn(logits, labels, mask) -> metric sums`` those of :func:`eval_step`
(:mod:`cnnjax.train.tasks`: segmentation).
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from cnnjax.train.optim import LossScaleState, adjust_loss_scale
from cnnjax.train.state import TrainState

__all__ = ["TRAIN_METRICS", "cross_entropy", "eval_step", "train_step"]

Metrics = dict[str, jax.Array]

# The metric sums every train step returns (float32 scalars).
TRAIN_METRICS = ("loss", "correct", "count", "skipped", "nonfinite")


def cross_entropy(
    logits: jax.Array, labels: jax.Array, *, label_smoothing: float = 0.0
) -> jax.Array:
    """Per-example softmax cross-entropy ``(N, K), (N,) → (N,)`` in float32."""
    logits = logits.astype(jnp.float32)
    num_classes = logits.shape[-1]
    targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
    return optax.softmax_cross_entropy(logits, targets)


def _bind_axis(model: nn.Module, axis_name: str | None) -> nn.Module:
    """Clone a model that has an ``axis_name`` field (BatchNorm) with ours: cross-device stats."""
    fields = getattr(model, "__dataclass_fields__", {})
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
    axis_name: str | None = None,
    label_smoothing: float = 0.0,
    aux_loss_weight: float = 0.3,
    ema_decay: float | None = None,
    augment: Callable[[jax.Array, dict], dict] | None = None,
    objective: Callable[[jax.Array, jax.Array], tuple[jax.Array, Metrics]] | None = None,
) -> tuple[TrainState, Metrics]:
    """One optimiser step on ``batch`` ``{"image": (N, H, W, C), "label": (N,)}``.

    Returns the new state and metric *sums* over the (global) batch: ``loss`` (of the main head,
    summed), ``correct`` and ``count`` (all 0 for a skipped step), ``skipped`` and ``nonfinite``
    (0 or 1; see the module docstring). ``augment(key, batch) -> batch`` runs device-side
    augmentation (e.g. :func:`cnnjax.data.device_preprocess`).
    """
    model = _bind_axis(model, axis_name)
    rng = jax.random.fold_in(state.rng, state.step)
    if axis_name is not None:  # distinct dropout masks and augmentations per device
        rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
    dropout_key, augment_key = jax.random.split(rng)
    if augment is not None:
        batch = augment(augment_key, batch)
    images, labels = batch["image"], batch["label"]
    has_stats = bool(state.batch_stats)
    loss_scale = state.opt_state if isinstance(state.opt_state, LossScaleState) else None

    def loss_fn(params):
        out = model.apply(
            _variables(params, state.batch_stats),
            images,
            train=True,
            rngs={"dropout": dropout_key},
            mutable=["batch_stats"] if has_stats else False,
        )
        out, updates = out if has_stats else (out, {})
        logits, aux = out if isinstance(out, tuple) else (out, ())
        if objective is not None:
            total, sums = objective(logits, labels)
            total = total * loss_scale.scale if loss_scale is not None else total
            return total, (logits, sums, updates.get("batch_stats", {}))
        losses = cross_entropy(logits, labels, label_smoothing=label_smoothing)
        total = jnp.mean(losses)
        for head in jax.tree.leaves(aux):
            total += aux_loss_weight * jnp.mean(
                cross_entropy(head, labels, label_smoothing=label_smoothing)
            )
        if loss_scale is not None:
            total = total * loss_scale.scale
        return total, (logits, losses, updates.get("batch_stats", {}))

    grads, (logits, losses, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    if loss_scale is not None:
        grads = jax.tree.map(lambda g: g / loss_scale.scale, grads)
    if axis_name is not None:
        grads = jax.lax.pmean(grads, axis_name)
        batch_stats = jax.lax.pmean(batch_stats, axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = state.ema_params
    if ema_decay is not None and ema_params is not None:
        ema_params = jax.tree.map(
            lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema_params, params
        )
    if objective is not None:
        metrics = losses  # the objective's metric sums
    else:
        metrics = {
            "loss": jnp.sum(losses),
            "correct": jnp.sum(jnp.argmax(logits, -1) == labels).astype(jnp.float32),
            "count": jnp.asarray(labels.shape[0], jnp.float32),
        }
    if axis_name is not None:
        metrics = jax.lax.psum(metrics, axis_name)
    # After the pmean / psum: every device takes the same decision.
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
    updated = state.replace(
        params=params, batch_stats=batch_stats, opt_state=opt_state, ema_params=ema_params
    )
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
    if loss_scale is not None:
        new_state = new_state.replace(opt_state=adjust_loss_scale(new_state.opt_state, finite))
    return new_state.replace(step=state.step + 1), metrics


def eval_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: nn.Module,
    axis_name: str | None = None,
    use_ema: bool = False,
    preprocess: Callable[[jax.Array], jax.Array] | None = None,
    metrics_fn: Callable[[jax.Array, jax.Array, jax.Array], Metrics] | None = None,
) -> Metrics:
    """Metric sums ``loss``, ``correct``, ``count`` over the batch, weighted by ``batch["mask"]``.

    Padding rows (``mask == 0``) contribute nothing, so summing over an epoch of padded batches
    gives exact totals over the split.
    """
    images, labels = batch["image"], batch["label"]
    if preprocess is not None:
        images = preprocess(images)
    mask = batch.get("mask")
    mask = jnp.ones(labels.shape[:1], jnp.float32) if mask is None else mask.astype(jnp.float32)
    params = state.ema_params if use_ema and state.ema_params is not None else state.params
    logits = model.apply(_variables(params, state.batch_stats), images, train=False)
    if metrics_fn is not None:
        metrics = metrics_fn(logits, labels, mask)
    else:
        losses = cross_entropy(logits, labels)
        metrics = {
            "loss": jnp.sum(losses * mask),
            "correct": jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
            "count": jnp.sum(mask),
        }
    if axis_name is not None:
        metrics = jax.lax.psum(metrics, axis_name)
    return metrics
