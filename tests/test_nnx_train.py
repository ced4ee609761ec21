"""NNX training: LeNet-5 as an NNX module, trained with nnx.Optimizer + optax + nnx.jit
(experiments/train_nnx.py), reaches the accuracy of the Linen model trained by ``cnnjax train``'s
loop on the embedded digits, within 1 point. Three epochs keep it short; the 10-epoch numbers are
in docs/nnx.md."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

from cnnjax.train.config import default_config

SCRIPT = pathlib.Path(__file__).parents[1] / "experiments" / "train_nnx.py"


@pytest.fixture(scope="module")
def train_nnx_module():
    spec = importlib.util.spec_from_file_location("train_nnx", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _config():
    config = default_config()
    config.epochs = 3
    config.parallel = "none"
    return config


def test_nnx_lenet5_reaches_the_linen_accuracy(train_nnx_module):
    linen = train_nnx_module.train_linen(_config())
    same_init = train_nnx_module.train_nnx(_config(), init_from_linen=True, verbose=False)
    own_init = train_nnx_module.train_nnx(_config(), verbose=False)
    assert linen["count"] == same_init["count"] == own_init["count"] == 450
    assert linen["accuracy"] > 0.9
    assert abs(same_init["accuracy"] - linen["accuracy"]) <= 0.01, (same_init, linen)
    assert own_init["accuracy"] > 0.9, own_init


def test_train_nnx_script_runs_one_epoch(train_nnx_module, capsys):
    assert train_nnx_module.main(["--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "epoch 1/1: train loss" in out and "NNX (cpu): test accuracy" in out
