"""What a new user meets first: --version, fast `models`, `summary --input-size`, complete help,
eval outputs named after split and step, consistent plot colours, and `--model module:Class`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from cnnjax.cli import build_parser, main

ROOT = pathlib.Path(__file__).resolve().parents[1]

TINY_NET = '''
import flax.linen as nn
import cnnjax


class TinyNet(nn.Module):
    """Conv → ReLU → global average pool → Dense, built from cnnjax layers."""

    num_classes: int = 10
    impl: str = "custom"
    input_shape = (16, 16, 1)  # a plain class attribute: the default input of `cnnjax summary`

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(cnnjax.layers.Conv(4, (3, 3), padding=1, impl=self.impl)(x))
        x = cnnjax.global_avg_pool(x)
        return nn.Dense(self.num_classes)(x)


def tiny_without_impl(num_classes):
    return nn.Dense(num_classes)
'''


def _cnnjax(*args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    """Run the ``cnnjax`` console script (as a user does) on this checkout's code."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)  # one CPU device, as a user has
    script = pathlib.Path(sys.executable).with_name("cnnjax")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "cnnjax.cli"]
    return subprocess.run(
        [*command, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_version_flag_prints_the_version_and_exits_0(tmp_path):
    result = _cnnjax("--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"cnnjax \d+\.\d+\.\d+\S*\n", result.stdout), result.stdout


def test_models_builds_no_model_and_prints_full_paper_references(monkeypatch, capsys):
    from cnnjax.models import registry

    def refuse(**kwargs):
        raise AssertionError("`cnnjax models` must not build models")

    for name, info in list(registry._REGISTRY.items()):
        monkeypatch.setitem(registry._REGISTRY, name, dataclasses.replace(info, constructor=refuse))
    assert main(["models", "densenet"]) == 0
    out = capsys.readouterr().out
    assert "params" not in out.splitlines()[0]
    # The whole reference, not cut at its first comma.
    assert "Densely connected convolutional networks, CVPR" in out, out


def test_models_params_counts_with_eval_shape(capsys):
    assert main(["models", "lenet", "--params"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"lenet5\s+classification\s+32×32×1\s+60,850\s+LeCun", out), out


def test_summary_input_size_one_two_or_three_numbers(capsys):
    assert main(["summary", "lenet5", "--input-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "input (1, 64, 64, 1)" in out and "(1, 60, 60, 6)" in out, out
    assert main(["summary", "lenet5", "--input-size", "40", "48"]) == 0
    assert "input (1, 40, 48, 1)" in capsys.readouterr().out
    assert main(["summary", "lenet5", "--input-size", "32", "32", "3", "--num-classes", "7"]) == 0
    out = capsys.readouterr().out
    assert "input (1, 32, 32, 3)" in out and "(1, 7)" in out, out
    assert main(["summary", "lenet5", "--input-size", "28"]) == 2
    assert "minimum input size is 32x32" in capsys.readouterr().err


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def test_every_train_flag_has_help_and_its_default_is_the_config_default():
    from cnnjax.train import default_config

    config = default_config()
    keys = {
        "--epochs": config.epochs,
        "--batch-size": config.batch_size,
        "--lr": config.optimizer.lr,
        "--seed": config.seed,
        "--parallel": config.parallel,
        "--impl": config.impl,
        "--dtype": config.dtype,
        "--dataset": config.dataset,
        "--best-metric": config.best.metric,
    }
    for action in _subparser("train")._actions:
        assert action.help, f"train {action.option_strings or action.dest} has no help text"
        flag = action.option_strings[-1] if action.option_strings else None
        if flag in keys:
            match = re.search(r"\(default: ([^;)]+)", action.help)
            assert match, f"{flag}: help states no default: {action.help!r}"
            text = match.group(1).split(",")[0].strip()
            assert text == str(keys[flag]), (flag, text, keys[flag])


@pytest.mark.parametrize("command", ["eval", "models", "summary", "plot"])
def test_every_option_of_the_other_subcommands_has_help(command):
    for action in _subparser(command)._actions:
        if action.option_strings and action.help != argparse.SUPPRESS:
            assert action.help, f"{command} {action.option_strings} has no help text"


def test_eval_names_its_png_after_split_and_step_and_titles_it(tmp_path, monkeypatch, capsys):
    import cnnjax.viz

    titles = []
    original = cnnjax.viz.plot_confusion

    def spy(confusion, output, **kwargs):
        titles.append(kwargs["title"])
        return original(confusion, output, **kwargs)

    monkeypatch.setattr(cnnjax.viz, "plot_confusion", spy)
    workdir = tmp_path / "run"
    args = ["--workdir", str(workdir), "--parallel", "none", "--batch-size", "128", "--quiet"]
    assert main(["train", "lenet5", "--epochs", "1", *args]) == 0
    capsys.readouterr()
    assert main(["eval", str(workdir)]) == 0
    assert (workdir / "confusion_test_step10.png").stat().st_size > 1000
    assert "confusion_test_step10.png" in capsys.readouterr().out
    assert main(["eval", str(workdir), "--dataset", "digits"]) == 0  # another data set: no clash
    assert (workdir / "confusion_digits_test_step10.png").is_file()
    assert titles == ["digits, test split, step 10"] * 2
    assert not (workdir / "confusion.png").exists()


def _write_run(workdir: pathlib.Path, accuracy: float) -> None:
    workdir.mkdir()
    rows = []
    for epoch in (1, 2):
        for split in ("train", "test"):
            rows.append(
                {"step": 5 * epoch, "epoch": epoch, "split": split, "loss": 1 / epoch}
                | {"accuracy": accuracy * epoch / 2, "images_per_sec": 1.0}
            )
    rows.insert(0, {"step": 2, "epoch": 1, "split": "train", "loss": 2.0, "accuracy": 0.1})
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize("x_axis", ["step", "epoch"])
def test_plot_gives_each_run_one_colour_train_dashed_test_solid(tmp_path, monkeypatch, x_axis):
    import matplotlib.figure

    from cnnjax.viz import plot_curves

    figures = []
    monkeypatch.setattr(
        matplotlib.figure.Figure, "savefig", lambda self, *a, **k: figures.append(self)
    )
    _write_run(tmp_path / "custom", 0.9)
    _write_run(tmp_path / "xla", 0.8)
    plot_curves([tmp_path / "custom", tmp_path / "xla"], tmp_path / "c.png", x_axis=x_axis)
    (figure,) = figures
    for ax in figure.axes:
        assert ax.get_xlabel() == x_axis
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert set(lines) == {"custom train", "custom test", "xla train", "xla test"}
        for run in ("custom", "xla"):
            assert lines[f"{run} train"].get_color() == lines[f"{run} test"].get_color()
            assert lines[f"{run} train"].get_linestyle() == "--"
            assert lines[f"{run} test"].get_linestyle() == "-"
        assert lines["custom test"].get_color() != lines["xla test"].get_color()
        expected = [0.4, 1.0, 2.0] if x_axis == "epoch" else [2, 5, 10]
        assert list(lines["custom train"].get_xdata()) == expected
    with pytest.raises(ValueError, match='x_axis must be "step" or "epoch"'):
        plot_curves(tmp_path / "custom", x_axis="time")


def test_own_model_module_class_trains_evals_and_summarises_from_the_cli(tmp_path):
    (tmp_path / "tinynet.py").write_text(TINY_NET)
    run = tmp_path / "runs" / "tiny"
    common = ["--dataset", "synthetic", "--set", "num_steps=2", "--batch-size", "16"]
    result = _cnnjax("train", "tinynet:TinyNet", *common, "--workdir", str(run), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads((run / "config.json").read_text())["model"] == "tinynet:TinyNet"
    # eval resolves the model again from the saved config (was: "unknown model").
    result = _cnnjax("eval", str(run), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert re.search(r"step 2: test accuracy [\d.]+%", result.stdout), result.stdout
    result = _cnnjax("summary", "tinynet:TinyNet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "input (1, 16, 16, 1)" in result.stdout


def test_own_model_from_a_file_path_and_clear_errors(tmp_path, capsys):
    from cnnjax.models import create_model

    path = tmp_path / "nets.py"
    path.write_text(TINY_NET)
    model = create_model(f"{path}:TinyNet", num_classes=3, impl="xla")
    assert model.num_classes == 3 and model.impl == "xla"
    # A factory without impl/dtype parameters still builds with the defaults ...
    assert create_model(f"{path}:tiny_without_impl", num_classes=4).features == 4
    # ... and says so when asked for something it cannot do.
    with pytest.raises(ValueError, match="takes no 'impl' argument"):
        create_model(f"{path}:tiny_without_impl", num_classes=4, impl="xla")
    assert main(["summary", f"{path}:Missing"]) == 2
    assert "has no callable 'Missing'" in capsys.readouterr().err
    assert main(["summary", "no_such_module_xyz:Net"]) == 2
    assert "cannot import 'no_such_module_xyz'" in capsys.readouterr().err
    assert main(["summary", f"{path}:tiny_without_impl"]) == 2
    err = capsys.readouterr().err
    assert "declares no input_shape: pass --input-size H W C" in err, err


def test_stdout_is_only_results_status_lines_go_to_stderr(capsys, monkeypatch):
    """The gradcheck table carried "(about 8 s left)" even with CNNJAX_PROGRESS=0."""
    monkeypatch.setenv("CNNJAX_PROGRESS", "0")
    argv = ["gradcheck", "--ops", "global_avg_pool", "global_max_pool", "--cases", "1"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    rows = [line for line in captured.out.splitlines() if line.startswith("global_")]
    assert len(rows) == 2 and not any("left" in row for row in rows), captured.out
    assert captured.err == ""


@pytest.mark.parametrize(
    "argv",
    [
        ["viz", "filters", "W", "--debug"],
        ["--debug", "viz", "filters", "W"],
        ["bench", "train", "nosuch", "--tiny", "--debug"],
        ["bench", "--debug", "data", "npz:W", "--tiny"],
        ["summary", "--debug", "nosuch"],
    ],
)
def test_debug_is_accepted_by_every_subcommand_and_shows_the_traceback(tmp_path, argv):
    with pytest.raises((OSError, ValueError)):
        main([str(tmp_path / a) if a == "W" else a.replace("W", str(tmp_path / "W")) for a in argv])


def test_viz_error_without_debug_is_one_line_naming_the_picture(tmp_path, capsys):
    assert main(["viz", "filters", str(tmp_path / "W")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnnjax viz filters: error: ") and err.count("\n") == 1, err


def test_models_lists_every_task_and_says_when_nothing_matches(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["model", "task", "input"]
    assert re.search(r"^unet +segmentation +572×572×1 ", out, re.MULTILINE), out
    assert re.search(r"^segnet +segmentation ", out, re.MULTILINE)
    assert re.search(r"^lenet5 +classification +32×32×1 ", out, re.MULTILINE)
    assert main(["models", "zzzz"]) == 0
    assert (
        capsys.readouterr().out == "cnnjax models: no model matches 'zzzz' (see `cnnjax models`)\n"
    )


def _options(parser: argparse.ArgumentParser, name: str):
    """(command, action) for every option with a value, through nested sub-commands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _options(sub, f"{name} {sub_name}")
        elif action.option_strings and action.nargs != 0 and action.help != argparse.SUPPRESS:
            yield name, action


def test_every_option_of_every_subcommand_states_its_default():
    parsers = {"cnnjax": build_parser()}  # every command, gradcheck and viz included
    seen = 0
    for name, parser in parsers.items():
        for command, action in _options(parser, name):
            seen += 1
            assert re.search(r"[(;] ?default\b", action.help or ""), (
                f"{command} {action.option_strings[0]}: help states no default: {action.help!r}"
            )
    assert seen > 60
    assert "batchs" not in " ".join(a.help for _, a in _options(parsers["cnnjax"], "cnnjax"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["summary", "lenet5", "--input-size", "64", "64", "3", "3"], "--input-size takes 1-3"),
        (["train", "lenet5", "--seed", "-1"], "--seed must be >= 0, got -1"),
        (["bench", "ops", "--batch", "0"], "--batch must be >= 1, got 0"),
    ],
)
def test_small_mistakes_exit_2_with_one_line_naming_the_option(capsys, argv, message):
    try:
        status = main(argv)
    except SystemExit as e:  # argparse's own errors
        status = e.code
    err = capsys.readouterr().err
    assert status == 2 and message in err.splitlines()[-1], err
    assert err.startswith("usage:") or err.count("\n") == 1, err


@pytest.mark.parametrize(
    ("name", "value"), [("CNNJAX_PROGRESS", "maybe"), ("CNNJAX_PROGRESS_DELAY", "abc")]
)
def test_both_progress_settings_are_validated_alike(capsys, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    argv = ["bench", "ops", "--only", "global_avg_pool", "--repeats", "1", "--batch", "1"]
    assert main(argv) == 2
    assert f"{name} must be" in capsys.readouterr().err


def test_the_training_bar_on_a_terminal_leaves_no_line_behind(capsys):
    """On a tty the closed bar left a line (blank where the width is unknown) before `best:`."""
    import io

    from cnnjax.train.metrics import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    progress = Progress(4, 0, log_every=1, stream=Terminal())
    progress.update(4, 1, {"loss": 0.5})
    progress.close()
    err = capsys.readouterr().err
    assert "4/4" in err and "\n" not in err, repr(err)
