"""The best checkpoint: ``best.metric``, ``WORKDIR/checkpoints_best``, ``best.json``, eval --best.

The main case is the issue-7 breaker's finite divergence: AdamW at a learning rate 1000× too
high after the first epoch drives the loss to hundreds without overflowing (exit 0), and keep-N
(here ``checkpoint.keep=1``) rotates every good checkpoint out; the best checkpoint keeps the
pre-divergence weights, through an interruption, a resume and ``--extend``.
"""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

from cnnjax.cli import main
from cnnjax.train import apply_overrides, default_config, train
from cnnjax.train.actions import Every, KeepBest, LoopState, describe_best, is_better
from cnnjax.train.checkpoint import Checkpointer

# LeNet-5 on the embedded digits: 1347 training images, 64 a batch → 21 steps an epoch; the
# step schedule multiplies the lr by 1000 after the first epoch (AdamW at lr 5: a finite blow-up).
DIVERGING = [
    "lenet5",
    "--parallel",
    "none",
    "--impl",
    "xla",
    "--batch-size",
    "64",
    "--set",
    "eval_batch_size=450",
    "--set",
    "log_every_steps=1000",
    "--set",
    "schedule.name=step",
    "--set",
    "schedule.milestones=(21,)",
    "--set",
    "schedule.decay_factor=1000",
    "--set",
    "checkpoint.keep=1",
]


def _stop_at(step):
    """A hook that sends this process SIGTERM after ``step`` (train() stops and saves)."""

    def hook(current):
        if current == step:
            os.kill(os.getpid(), signal.SIGTERM)

    return hook


def _eval_accuracy(capsys, *argv) -> float:
    assert main(["eval", *argv]) == 0
    out = capsys.readouterr().out
    return float(out.split("test accuracy ")[1].split("%")[0]) / 100


def test_a_finite_divergence_keeps_the_pre_divergence_weights_through_resume_and_extend(
    tmp_path, capsys
):
    workdir = tmp_path / "run"
    config = default_config()
    apply_overrides(
        config,
        [
            "impl=xla",
            "parallel=none",
            "batch_size=64",
            "eval_batch_size=450",
            "log_every_steps=1000",
            "schedule.name=step",
            "schedule.milestones=(21,)",
            "schedule.decay_factor=1000",
            "checkpoint.keep=1",
            "epochs=2",
        ],
    )
    first = train(config, workdir, hooks=[_stop_at(25)])  # interrupted in the diverging epoch
    assert first.interrupted and first.best["step"] == 21
    good = first.best["value"]
    out = capsys.readouterr().out
    assert "new best: epoch 1, test_accuracy" in out

    # Resumed and extended to a third epoch at once: the recorded best is restored, so the
    # diverged epochs 2 and 3 do not replace it (a reset best would make epoch 2 "best").
    assert main(["train", *DIVERGING, "--epochs", "3", "--extend", "--workdir", str(workdir)]) == 0
    out = capsys.readouterr().out
    assert "new best" not in out
    assert f"best: epoch 1, test_accuracy {good:.2%} (step 21)" in out
    diverged = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1])
    assert diverged["split"] == "test" and diverged["loss"] > 10 and np.isfinite(diverged["loss"])
    # keep=1 leaves only the newest latest checkpoint; the best one is beside it.
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["63"]
    assert [p.name for p in (workdir / "checkpoints_best").iterdir()] == ["21"]
    record = json.loads((workdir / "best.json").read_text())
    assert record["epoch"] == 1 and record["step"] == 21 and record["value"] == good
    assert record["checkpoint"] == str(workdir.absolute() / "checkpoints_best" / "21")

    latest = _eval_accuracy(capsys, str(workdir))
    best = _eval_accuracy(capsys, str(workdir), "--best")
    assert best == pytest.approx(good, abs=1e-4) and best > 0.4
    assert latest < 0.3 < best


def test_best_metric_none_test_loss_a_wrong_metric_and_a_fresh_start(tmp_path, capsys):
    short = [*DIVERGING[:9], "--set", "num_steps=3"]
    none = tmp_path / "none"
    assert main(["train", *short, "--best-metric", "none", "--workdir", str(none)]) == 0
    assert not (none / "checkpoints_best").exists() and not (none / "best.json").exists()
    assert main(["eval", str(none), "--best"]) == 2
    assert "has no best checkpoint" in capsys.readouterr().err

    loss = tmp_path / "loss"
    assert main(["train", *short, "--best-metric", "test_loss", "--workdir", str(loss)]) == 0
    record = json.loads((loss / "best.json").read_text())
    assert record["metric"] == "test_loss" and record["mode"] == "min" and record["step"] == 3
    assert "best: epoch 1, test_loss " in capsys.readouterr().out
    picture = tmp_path / "filters.png"
    assert main(["viz", "filters", str(loss), "--best", "--output", str(picture)]) == 0
    assert picture.stat().st_size > 0
    assert main(["viz", "filters", str(none), "--best"]) == 2
    assert "checkpoints_best does not exist: train the run first" in capsys.readouterr().err
    # The run's checkpoints deleted by hand: the next start is a new run, its best is new too.
    for path in sorted((loss / "checkpoints").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    assert main(["train", *short, "--set", "seed=1", "--workdir", str(loss)]) == 0
    out = capsys.readouterr().out
    assert "clearing best checkpoint(s) [3]" in out and "the run starts afresh" in out
    assert "new best: epoch 1, test_accuracy" in out.split("clearing")[1]
    assert json.loads((loss / "best.json").read_text())["metric"] == "test_accuracy"

    wrong = tmp_path / "wrong"
    assert main(["train", *short, "--set", "best.metric=test_mean_iou", "--workdir", str(wrong)])
    err = capsys.readouterr().err
    assert err.startswith("cnnjax train: error: best.metric must be one of test_accuracy, ")
    assert "for a classification run, got 'test_mean_iou'" in err


def test_is_better_never_takes_a_non_finite_value_or_a_tie():
    assert is_better("max", 0.5, None) and is_better("min", 3.0, 4.0)
    assert not is_better("max", 0.5, 0.5) and not is_better("min", 5.0, 4.0)
    for bad in (float("nan"), float("inf"), float("-inf")):
        assert not is_better("max", bad, None) and not is_better("min", bad, 1.0)
    assert describe_best(None) is None
    assert describe_best({"metric": "test_loss", "mode": "min", "value": 0.25, "epoch": 2}) == (
        "best: epoch 2, test_loss 0.2500"
    )


class _HostDriver:
    """The parts of a driver KeepBest and LoopState use, on host values."""

    def host_metrics(self, tree):
        return {k: float(np.asarray(v)) for k, v in tree.items()}

    def host_state(self, state):
        return state


class _Messages:
    def __init__(self):
        self.lines = []

    def message(self, text):
        self.lines.append(text)


def test_a_non_finite_state_or_a_divergence_is_never_best(tmp_path):
    checkpointer = Checkpointer(tmp_path / "checkpoints_best", keep=1, async_save=False)
    messages = _Messages()
    keep = KeepBest(
        Every(2, 10, epochs=1),
        metric="test_accuracy",
        checkpointer=checkpointer,
        path=tmp_path / "best.json",
        progress=messages,
        meta={},
    )
    good = {"w": np.ones(3, np.float32)}
    loop = LoopState(step=2, state=good, driver=_HostDriver(), steps_per_epoch=2, batch_size=1)
    loop.test, loop.test_step = {"accuracy": 0.5}, 2
    keep(loop)
    assert loop.best["step"] == 2 and checkpointer.all_steps() == [2]

    loop.step, loop.state = 4, {"w": np.array([1.0, np.nan, 1.0], np.float32)}
    loop.test, loop.test_step = {"accuracy": 0.9}, 4  # better, but the state holds NaN
    keep(loop)
    assert loop.best["step"] == 2 and checkpointer.all_steps() == [2]

    loop.step, loop.state, loop.test_step = 6, good, 6
    loop.test = {"accuracy": float("nan")}
    keep(loop)
    assert loop.best["step"] == 2

    loop.step, loop.test, loop.test_step = 8, {"accuracy": 0.95}, 8
    loop.first_nonfinite = 7  # an update skipped under on_nonfinite="stop": nothing after it
    keep(loop)
    assert loop.best["step"] == 2 and loop.stop_reason == "nonfinite"
    assert json.loads((tmp_path / "best.json").read_text())["step"] == 2
    assert len(messages.lines) == 1
    checkpointer.close()
