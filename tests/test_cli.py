"""The ``cnnjax`` command: help for every subcommand, train → eval → plot, clear errors."""

from __future__ import annotations

import json
import re
import sys
import types

import pytest

from cnnjax.cli import main

SUBCOMMANDS = ("train", "eval", "models", "summary", "plot", "gradcheck", "bench")


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in out


@pytest.mark.parametrize("command", ["train", "eval", "models", "summary", "plot"])
def test_each_subcommand_has_help(capsys, command):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: cnnjax {command}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["gradcheck", "--help"], ["usage: cnnjax gradcheck", "--ops OP", "--tol"]),
        (["viz", "--help"], ["usage: cnnjax viz", "receptive-field"]),
        (["bench", "--help"], ["usage: cnnjax bench", "ops", "data"]),
    ],
)
def test_every_command_is_parsed_by_the_one_parser_tree(capsys, argv, expected):
    # gradcheck and viz were forwarded to parsers of their own; now one tree parses every line.
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(text in out for text in expected), out


def test_train_lenet5_on_digits_then_eval_and_plot(tmp_path, capsys):
    workdir = tmp_path / "run"
    status = main(
        ["train", "lenet5", "--epochs", "3", "--workdir", str(workdir), "--parallel", "none"]
    )
    assert status == 0
    lines = capsys.readouterr().out.strip().splitlines()
    final = lines[-1]
    match = re.fullmatch(
        r"test accuracy ([\d.]+)% \(450 images, loss [\d.]+\); checkpoint (.+)", final
    )
    assert match, final
    assert float(match.group(1)) >= 90.0, final  # 3 epochs; the 10-epoch default reaches ≥ 95 %
    assert match.group(2) == str(workdir / "checkpoints" / "126")

    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["split"]) for r in records] == [
        (e, s) for e in (1, 2, 3) for s in ("train", "test")
    ]
    for record in records:
        assert {"step", "epoch", "split", "loss", "accuracy", "images_per_sec"} <= record.keys()

    assert main(["eval", str(workdir)]) == 0
    out = capsys.readouterr().out
    assert f"test accuracy {match.group(1)}%" in out
    assert (workdir / "confusion_test_step126.png").stat().st_size > 1000

    assert main(["plot", str(workdir)]) == 0
    assert capsys.readouterr().out.strip() == str(workdir / "curves.png")
    assert (workdir / "curves.png").stat().st_size > 1000

    # Running the same command again trains nothing and says so.
    assert main(["train", "lenet5", "--epochs", "3", "--workdir", str(workdir), "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == (
        f"already finished at step 126; checkpoint {workdir / 'checkpoints' / '126'}"
    )
    assert main(["train", "lenet5", "--workdir", str(workdir), "--no-resume"]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err


def test_models_lists_names_inputs_and_parameter_counts(capsys):
    assert main(["models", "lenet", "--params"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"lenet5\s+classification\s+32×32×1\s+60,850", out), out


def test_summary_calls_the_summary_module(monkeypatch, capsys):
    calls = []
    fake = types.ModuleType("cnnjax.model_summary")
    fake.print_summary = calls.append
    monkeypatch.setitem(sys.modules, "cnnjax.model_summary", fake)
    assert main(["summary", "lenet5"]) == 0
    assert calls == ["lenet5"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "lenet5", "--set", "optimizer.lrr=1"], "unknown config key 'optimizer.lrr'"),
        (["train", "lenet5", "--dataset", "mnsit"], "unknown dataset 'mnsit'"),
        (["train", "lenet_5"], "unknown model 'lenet_5'. Did you mean lenet5"),
        (
            ["train", "lenet5", "--batch-size", "12", "--parallel", "sharded"],
            "batch size 12 is not divisible by the 8 devices",
        ),
        (["train", "lenet5", "--dataset", "npz:/nonexistent/x.npz"], "does not exist"),
        (["eval", "/nonexistent/run"], "is /nonexistent/run a cnnjax training workdir?"),
        (["plot", "/nonexistent/run"], "no metrics.jsonl records under /nonexistent/run"),
        (["summary", "lenet_5"], "unknown model 'lenet_5'"),
        (["train", "lenet5", "--config", "/nonexistent.py"], "does not exist"),
        (["train", "lenet5", "--set", "model_overrides.foo=1"], "unexpected keyword argument"),
        (["train", "lenet5", "--config", "BROKEN"], "config file"),
    ],
)
def test_errors_are_clear_and_exit_2(tmp_path, capsys, argv, message):
    if argv[0] == "train":
        argv = [*argv, "--workdir", str(tmp_path / "run")]
    if "BROKEN" in argv:  # a config file with a mistake in its Python
        broken = tmp_path / "broken.py"
        broken.write_text("def get_config():\n    return undefined_name\n")
        argv[argv.index("BROKEN")] = str(broken)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_viz_filters_and_confusion(tmp_path):
    import numpy as np

    from cnnjax.viz import plot_confusion, plot_filters

    kernel = np.random.default_rng(0).normal(size=(5, 5, 3, 6)).astype(np.float32)
    assert plot_filters(kernel, tmp_path / "filters.png").stat().st_size > 500
    confusion = np.eye(3, dtype=np.int64) * 5 + 1
    assert plot_confusion(confusion, tmp_path / "cm.png").stat().st_size > 500
