"""The one ``cnnjax`` parser tree: train flags generated from one table (they cannot drift from
the config), one error policy for every command, and the entry points of old."""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys

import pytest

from cnnjax.cli import build_parser, main
from cnnjax.cli import train as train_command

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOT_CONFIG = {"--help", "--debug", "--workdir", "--config", "--set", "--quiet"}


def _subcommands(parser: argparse.ArgumentParser, path=()):
    """(command path, parser) of every command and sub-command, the deepest ones included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _subcommands(sub, (*path, name))


def _leaves(parser):
    """(command path, parser) of every command that runs (has no sub-commands of its own)."""
    for path, sub in _subcommands(parser):
        if not any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
            yield path, sub


def _config_value(config, key: str):
    *parents, leaf = key.split(".")
    for name in parents:
        config = config[name]
    assert leaf in config, f"config has no field {key!r}"
    return config[leaf]


def test_every_train_flag_maps_to_a_config_key_and_its_help_is_the_tables():
    from cnnjax.train import default_config

    config = default_config()
    table = {flag.flag: flag for flag in train_command.FLAGS}
    train_parser = dict(_subcommands(build_parser()))[("train",)]
    seen = set()
    for action in train_parser._actions:
        name = action.option_strings[-1] if action.option_strings else action.dest
        if name in NOT_CONFIG:
            continue
        assert name in table, f"train {name} is not in cnnjax.cli.train.FLAGS"
        flag = table[name]
        default = _config_value(config, flag.key)
        assert action.dest == flag.dest
        assert action.help == flag.help_text(config)
        assert action.default in (None, False), f"{name}: the config, not the flag, has defaults"
        if action.choices is not None and default is not None:
            assert default in action.choices, (name, default, action.choices)
        if flag.const is None:
            shown = flag.unset if default is None else default
            assert f"(default: {shown}; config {flag.key})" in action.help
        seen.add(name)
    assert seen == set(table)


@pytest.mark.parametrize("flag", train_command.FLAGS, ids=lambda f: f.flag)
def test_each_train_flag_sets_its_config_key(flag):
    from cnnjax.train import default_config

    default = _config_value(default_config(), flag.key)
    if flag.const is not None:
        argv, expected = [flag.flag], flag.const
    elif "choices" in flag.options:
        expected = next(c for c in reversed(flag.options["choices"]) if c != default)
        argv = [flag.flag, expected]
    elif flag.options.get("type") is float:
        argv, expected = [flag.flag, "0.25"], 0.25
    elif "type" in flag.options:
        argv, expected = [flag.flag, "3"], 3
    else:
        argv, expected = [flag.flag, "other:value"], "other:value"
    if not flag.flag.startswith("-"):
        argv = argv[1:]  # a positional
    args = build_parser("train").parse_args(["train", *argv])
    config = train_command.build_config(args)
    assert _config_value(config, flag.key) == expected != default
    for key in flag.clears:
        assert _config_value(config, key) is None


def test_set_wins_over_flags_and_epochs_clears_num_steps():
    args = build_parser("train").parse_args(
        ["train", "--epochs", "2", "--lr", "0.1", "--set", "optimizer.lr=0.2"]
    )
    config = train_command.build_config(args)
    assert config.epochs == 2 and config.num_steps is None and config.optimizer.lr == 0.2


def _one_line_error(capsys, argv, prog: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"{prog}: error: "), err
    assert err.endswith(" (see --help)\n"), err
    return err


def test_every_command_refuses_an_unknown_option_in_one_line(capsys):
    leaves = list(_leaves(build_parser()))
    assert len(leaves) == 14  # train, eval, models, summary, plot, gradcheck; 3 suites, 5 pictures
    for path, _ in leaves:
        err = _one_line_error(capsys, [*path, "--no-such-option"], f"cnnjax {' '.join(path)}")
        # a missing positional is reported first where there is one
        assert "--no-such-option" in err or "are required" in err, err


def test_every_typed_option_refuses_a_bad_value_in_one_line_naming_it(capsys):
    checked = 0
    for path, leaf in _leaves(build_parser()):
        for action in leaf._actions:
            if not action.option_strings or (action.type is None and action.choices is None):
                continue
            option = action.option_strings[-1]
            err = _one_line_error(capsys, [*path, option, "bad"], f"cnnjax {' '.join(path)}")
            assert option in err, err
            checked += 1
    assert checked > 40


def test_errors_while_running_are_one_line_and_debug_shows_them(monkeypatch, capsys):
    from cnnjax.cli import plot

    def fail(error):
        def run(args):
            raise error

        monkeypatch.setattr(plot, "run", run)

    fail(ValueError("first line\nsecond line"))
    assert main(["plot", "w"]) == 2
    assert capsys.readouterr().err == "cnnjax plot: error: first line (--debug for the rest)\n"
    with pytest.raises(ValueError, match="second line"):
        main(["plot", "w", "--debug"])
    fail(KeyError("no layer 'x'"))
    assert main(["plot", "w"]) == 2
    assert capsys.readouterr().err == "cnnjax plot: error: no layer 'x'\n"
    fail(KeyboardInterrupt())
    assert main(["plot", "w"]) == 130
    assert capsys.readouterr().err == "cnnjax plot: interrupted\n"
    fail(RuntimeError("a bug"))  # not a user error: the traceback stays
    with pytest.raises(RuntimeError):
        main(["plot", "w"])


def test_the_entry_points_of_old_still_work(capsys):
    from cnnjax import bench, gradcheck, viz

    for module, command in ((viz, "viz"), (gradcheck, "gradcheck")):
        assert module.build_parser().prog == f"cnnjax {command}"
    parser = argparse.ArgumentParser(prog="cnnjax bench")
    bench.add_parsers(parser)
    assert parser.parse_args(["ops", "--batch", "2"]).batch == 2
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["ops", "--repeats", "0"])
    assert exit_info.value.code == 2
    assert "cnnjax bench ops: error: --repeats must be >= 1" in capsys.readouterr().err
    with pytest.raises(AttributeError):
        viz.no_such_name  # noqa: B018


def _python(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT
    )


def test_python_m_gradcheck_and_short_commands_do_not_import_the_training_code():
    result = _python("-m", "cnnjax.gradcheck", "--cases", "0")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == "cnnjax gradcheck: error: --cases must be >= 1, got 0 (see --help)\n"
    code = (
        "import sys\n"
        "from cnnjax.cli import main\n"
        "for argv in (['--help'], ['models', '--help'], ['gradcheck', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('loaded' if 'cnnjax.train' in sys.modules else 'not loaded', file=sys.stderr)\n"
    )
    result = _python("-c", code)
    assert result.returncode == 0 and result.stderr == "not loaded\n", result.stderr
