"""The training state: one pytree holding everything a resumed run needs."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

__all__ = ["TrainState", "create_train_state"]


@flax.struct.dataclass
class TrainState:
    """Parameters, BatchNorm statistics, optimiser state, step counter and base RNG key.

    ``step`` counts optimiser micro-steps (one per batch); ``rng`` is the run's base key (a raw
    ``uint32[2]`` key, so checkpoints hold plain arrays): step ``t`` uses
    ``fold_in(rng, t)``, which makes a resumed run draw the same randomness as an uninterrupted
    one. ``batch_stats`` is ``{}`` for models without BatchNorm; ``ema_params`` is ``None``
    unless an exponential moving average of the parameters is kept.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array
    ema_params: Any = None


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    *,
    seed: int,
    input_shape: tuple[int, int, int],
    ema: bool = False,
) -> TrainState:
    """Initialise ``model`` on a float32 ``(1, *input_shape)`` input and ``tx`` on its params.

    Parameters are float32 whatever the model's compute dtype (mixed precision keeps the master
    weights and optimiser state in float32).
    """
    init_key, run_key = jax.random.split(jax.random.PRNGKey(seed))
    variables = jax.jit(
        lambda k: model.init(k, jnp.zeros((1, *input_shape), jnp.float32), train=False)
    )(init_key)
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        rng=run_key,
        ema_params=jax.tree.map(jnp.copy, params) if ema else None,
    )
