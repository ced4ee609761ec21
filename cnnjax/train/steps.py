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
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from cnnjax.train.state import TrainState

__all__ = ["cross_entropy", "eval_step", "train_step"]

Metrics = dict[str, jax.Array]


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
    if axis_name is not None and "axis_name" in getattr(model, "__dataclass_fields__", {}):
        return model.clone(axis_name=axis_name)
    return model


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
    augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
) -> tuple[TrainState, Metrics]:
    """One optimiser step on ``batch`` ``{"image": (N, H, W, C), "label": (N,)}``.

    Returns the new state and metric *sums* over the (global) batch: ``loss`` (of the main head,
    summed), ``correct`` and ``count``. ``augment(key, images)`` runs device-side augmentation.
    """
    model = _bind_axis(model, axis_name)
    rng = jax.random.fold_in(state.rng, state.step)
    if axis_name is not None:  # distinct dropout masks and augmentations per device
        rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
    dropout_key, augment_key = jax.random.split(rng)
    images, labels = batch["image"], batch["label"]
    if augment is not None:
        images = augment(augment_key, images)
    has_stats = bool(state.batch_stats)

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
        losses = cross_entropy(logits, labels, label_smoothing=label_smoothing)
        total = jnp.mean(losses)
        for head in jax.tree.leaves(aux):
            total += aux_loss_weight * jnp.mean(
                cross_entropy(head, labels, label_smoothing=label_smoothing)
            )
        return total, (logits, losses, updates.get("batch_stats", {}))

    grads, (logits, losses, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
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
    metrics = {
        "loss": jnp.sum(losses),
        "correct": jnp.sum(jnp.argmax(logits, -1) == labels).astype(jnp.float32),
        "count": jnp.asarray(labels.shape[0], jnp.float32),
    }
    if axis_name is not None:
        metrics = jax.lax.psum(metrics, axis_name)
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        batch_stats=batch_stats,
        opt_state=opt_state,
        ema_params=ema_params,
    )
    return new_state, metrics


def eval_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: nn.Module,
    axis_name: str | None = None,
    use_ema: bool = False,
    preprocess: Callable[[jax.Array], jax.Array] | None = None,
) -> Metrics:
    """Metric sums ``loss``, ``correct``, ``count`` over the batch, weighted by ``batch["mask"]``.

    Padding rows (``mask == 0``) contribute nothing, so summing over an epoch of padded batches
    gives exact totals over the split.
    """
    images, labels = batch["image"], batch["label"]
    if preprocess is not None:
        images = preprocess(images)
    mask = batch.get("mask")
    mask = jnp.ones(labels.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
    params = state.ema_params if use_ema and state.ema_params is not None else state.params
    logits = model.apply(_variables(params, state.batch_stats), images, train=False)
    losses = cross_entropy(logits, labels)
    metrics = {
        "loss": jnp.sum(losses * mask),
        "correct": jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
        "count": jnp.sum(mask),
    }
    if axis_name is not None:
        metrics = jax.lax.psum(metrics, axis_name)
    return metrics
