"""Training: state, the pure steps, three drivers (jit, pmap, shard_map), checkpoints, metrics.

>>> from cnnjax.train import default_config, train
>>> result = train(default_config(), "runs/lenet5_digits")   # LeNet-5 on the embedded digits
>>> result.test["accuracy"]                                   # ≈ 0.97 after 15 epochs

``train_step`` / ``eval_step`` are pure and identical under every driver; ``axis_name=None``
means no cross-device reduction. See :mod:`cnnjax.train.loop` for the run layout and resume
semantics, :mod:`cnnjax.train.parallel` for the drivers.
"""

from cnnjax.train.checkpoint import Checkpointer
from cnnjax.train.config import apply_overrides, default_config, load_config
from cnnjax.train.loop import (
    EvalResult,
    NonFiniteError,
    Run,
    TrainResult,
    build_run,
    evaluate,
    load_workdir_config,
    train,
)
from cnnjax.train.metrics import MetricsWriter, Progress, read_metrics
from cnnjax.train.optim import make_optimizer, make_schedule, weight_mask
from cnnjax.train.parallel import (
    AXIS,
    Driver,
    initialize_distributed,
    make_driver,
    resolve_parallel,
)
from cnnjax.train.state import TrainState, create_train_state
from cnnjax.train.steps import cross_entropy, eval_step, train_step


def plot(workdir, output=None):
    """Loss and accuracy curves of ``workdir`` as a PNG (see :func:`cnnjax.viz.plot_curves`)."""
    from cnnjax.viz import plot_curves

    return plot_curves(workdir, output)


__all__ = [
    "AXIS",
    "Checkpointer",
    "Driver",
    "EvalResult",
    "MetricsWriter",
    "NonFiniteError",
    "Progress",
    "Run",
    "TrainResult",
    "TrainState",
    "apply_overrides",
    "build_run",
    "create_train_state",
    "cross_entropy",
    "default_config",
    "eval_step",
    "evaluate",
    "initialize_distributed",
    "load_config",
    "load_workdir_config",
    "make_driver",
    "make_optimizer",
    "make_schedule",
    "plot",
    "read_metrics",
    "resolve_parallel",
    "train",
    "train_step",
    "weight_mask",
]
