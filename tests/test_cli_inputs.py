"""What a breaker fed the CLI: a model head of the wrong width, nonsense numbers, relative data
paths from another directory, empty class folders, a dropped best metric, eval without a test
evaluation, eval on corrupt images. Each is a one-line error (exit 2) or does the right thing."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from cnnjax.cli import main

FIXED_WIDTH_NET = '''
import flax.linen as nn


class Fixed(nn.Module):
    """Ignores num_classes: always WIDTH outputs."""

    num_classes: int = 10
    impl: str = "custom"
    width: int = 5

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(self.width)(x.reshape((x.shape[0], -1)))


class Eleven(Fixed):
    width: int = 11
'''

FAST = ["--set", "num_steps=2", "--set", "log_every_steps=1000", "--quiet"]


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("cls,width", [("Fixed", 5), ("Eleven", 11)])
def test_model_output_width_must_match_the_class_count(tmp_path, capsys, monkeypatch, cls, width):
    (tmp_path / "fixed_net.py").write_text(FIXED_WIDTH_NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    workdir = tmp_path / "run"
    argv = ["train", f"fixed_net:{cls}", "--workdir", str(workdir), *FAST]
    assert main(argv) == 2
    err = _error(capsys)
    assert f"fixed_net:{cls}" in err and f"{width} logits" in err and "10 classes" in err
    assert "'digits'" in err
    assert not (workdir / "checkpoints").exists()


@pytest.mark.parametrize(
    "args,words",
    [
        (["--batch-size", "0"], ["--batch-size", "got 0"]),
        (["--epochs", "0"], ["--epochs", "got 0"]),
        (["--epochs", "-3"], ["--epochs", "got -3"]),
        (["--lr", "-1"], ["--lr", "got -1.0"]),
        (["--lr", "nan"], ["--lr", "nan"]),
        (["--set", "optimizer.momentum=1.0"], ["optimizer.momentum", "[0, 1)"]),
        (["--set", "optimizer.weight_decay=-0.1"], ["optimizer.weight_decay", "-0.1"]),
        (["--set", "eval_batch_size=0"], ["eval_batch_size", "got 0"]),
        (["--set", "log_every_steps=0"], ["log_every_steps", "got 0"]),
        (["--set", "checkpoint.keep=0"], ["checkpoint.keep", "got 0"]),
        (["--set", "num_steps=-1"], ["num_steps", "got -1"]),
    ],
)
def test_bad_numbers_are_one_line_errors_naming_the_option(tmp_path, capsys, args, words):
    workdir = tmp_path / "run"
    assert main(["train", "lenet5", "--workdir", str(workdir), *args]) == 2
    err = _error(capsys)
    assert all(w in err for w in words), err
    assert not workdir.exists()


def test_num_steps_overrides_a_bad_epochs_and_num_batches_rejects_zero():
    from cnnjax.data.pipeline import num_batches
    from cnnjax.train.config import default_config, validate_config

    config = default_config()
    config.epochs, config.num_steps = 0, 5
    validate_config(config)  # epochs is unused when num_steps is set
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        num_batches(10, 0, train=True)
