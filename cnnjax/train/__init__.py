"""Training: state, the pure steps, three drivers (jit, pmap, shard_map), checkpoints, metrics.

>>> from cnnjax.train import default_config, train
>>> result = train(default_config(), "runs/lenet5_digits")   # LeNet-5 on the embedded digits
>>> result.test["accuracy"]                                   # ≈ 0.97 after 15 epochs

``train_step`` / ``eval_step`` are pure, identical under every driver and parameterised by the
task (:class:`Classification`, :class:`Segmentation`); ``axis_name=None`` means no cross-device
reduction. The modules, in import order: ``losses`` → ``steps`` → ``tasks`` → ``run`` (a run
built from a config) → ``evaluation`` → ``loop`` (the session and step loop; see it for the run
layout and resume semantics); :mod:`cnnjax.train.parallel` holds the drivers.
"""

from cnnjax.train.checkpoint import Checkpointer
from cnnjax.train.config import apply_overrides, default_config, load_config
from cnnjax.train.evaluation import EvalResult, evaluate
from cnnjax.train.loop import NonFiniteError, TrainResult, train
from cnnjax.train.metrics import MetricsWriter, Progress, read_metrics
from cnnjax.train.optim import make_optimizer, make_schedule, weight_mask
from cnnjax.train.parallel import (
    AXIS,
    Driver,
    initialize_distributed,
    make_driver,
    resolve_parallel,
)
from cnnjax.train.run import Run, build_run
from cnnjax.train.state import TrainState, create_train_state
from cnnjax.train.steps import cross_entropy, eval_step, train_step
from cnnjax.train.tasks import Classification, Segmentation
from cnnjax.train.workdir import load_workdir_config

__all__ = [
    "AXIS",
    "Checkpointer",
    "Classification",
    "Driver",
    "EvalResult",
    "MetricsWriter",
    "NonFiniteError",
    "Progress",
    "Run",
    "Segmentation",
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
    "read_metrics",
    "resolve_parallel",
    "train",
    "train_step",
    "weight_mask",
]
