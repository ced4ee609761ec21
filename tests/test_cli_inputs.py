"""What a breaker fed the CLI: a model head of the wrong width, nonsense numbers, relative data
paths from another directory, empty class folders, a dropped best metric, eval without a test
evaluation, eval on corrupt images. Each is a one-line error (exit 2) or does the right thing."""

from __future__ import annotations

import json
import os
import pathlib
import signal

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


def _png(path: pathlib.Path, seed: int, size=(8, 8)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _folder(root: pathlib.Path, counts: dict[str, int]) -> pathlib.Path:
    for c, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _png(root / name / f"{i:03d}.png", seed=100 * c + i)
    return root


def test_an_empty_class_folder_is_an_error_naming_it(tmp_path, capsys):
    from cnnjax.data import load_dataset

    root = _folder(tmp_path / "imgs", {"a": 4, "b": 4, "emptyclass": 0})
    (root / "emptyclass" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="emptyclass") as info:
        load_dataset(f"folder:{root}", val_split=0.25)
    assert "cannot be learned" in str(info.value) and "\n" not in str(info.value)
    # every image of a class unreadable and skipped: the class is empty too
    _folder(tmp_path / "two", {"a": 4, "b": 2})
    for png in (tmp_path / "two" / "b").iterdir():
        png.write_text("broken")
    with pytest.raises(ValueError, match=r"no readable images .*two/b"):
        load_dataset(f"folder:{tmp_path / 'two'}", val_split=0.25, skip_bad_files=True)
    capsys.readouterr()
    workdir = tmp_path / "run"
    argv = ["train", "lenet5", "--dataset", f"folder:{root}", "--val-split", "0.25"]
    assert main([*argv, "--workdir", str(workdir)]) == 2
    assert "emptyclass" in _error(capsys)


def test_best_none_after_a_best_clears_it_and_eval_best_explains_a_missing_one(tmp_path, capsys):
    from cnnjax.train import apply_overrides, default_config, train

    workdir = tmp_path / "run"
    short = ["lenet5", "--impl", "xla", "--parallel", "none", "--batch-size", "64"]
    short += ["--set", "eval_batch_size=450"]
    base = [*short, *FAST, "--workdir", str(workdir)]
    assert main(["train", *base, "--best-metric", "test_loss"]) == 0
    assert (workdir / "best.json").exists() and (workdir / "checkpoints_best").is_dir()
    capsys.readouterr()
    longer = ["--set", "num_steps=4", "--extend", "--best-metric", "none"]
    assert main(["train", *base, *longer]) == 0
    assert not (workdir / "best.json").exists()
    assert not (workdir / "checkpoints_best").exists()
    assert main(["eval", str(workdir), "--best"]) == 2
    assert "has no best checkpoint" in _error(capsys)

    # a run interrupted before its first test evaluation: eval --best says why there is none
    fresh = tmp_path / "fresh"
    config = default_config()
    apply_overrides(config, ["impl=xla", "parallel=none", "batch_size=64", "epochs=1"])

    def stop(step):
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # train() stops and saves the latest

    assert train(config, fresh, hooks=[stop], verbose=False).interrupted
    assert main(["eval", str(fresh), "--best"]) == 2
    assert "no test evaluation has run yet" in _error(capsys)


def test_eval_takes_skip_bad_files_for_a_corrupt_folder(tmp_path, capsys):
    root = tmp_path / "data"
    _folder(root / "train", {"a": 6, "b": 6})
    _folder(root / "test", {"a": 2, "b": 2})
    workdir = tmp_path / "run"
    argv = ["train", "lenet5", "--dataset", f"folder:{root}", "--batch-size", "4", *FAST]
    argv += ["--parallel", "none", "--impl", "xla"]
    assert main([*argv, "--workdir", str(workdir)]) == 0
    (root / "test" / "b" / "001.png").write_text("broken")
    capsys.readouterr()
    assert main(["eval", str(workdir)]) == 2
    err = _error(capsys)
    assert "test/b/001.png" in err and "--skip-bad-files" in err and "to train" not in err
    assert main(["eval", str(workdir), "--skip-bad-files"]) == 0
    assert "errors in 3)" in capsys.readouterr().out  # the three readable test images


def test_relative_folder_path_resolves_from_the_run_origin_and_filters_need_no_data(
    tmp_path, capsys, monkeypatch
):
    origin, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    _folder(origin / "mydigits", {"a": 6, "b": 6})
    elsewhere.mkdir()
    workdir = origin / "runs" / "tiny"
    monkeypatch.chdir(origin)
    argv = ["train", "lenet5", "--dataset", "folder:mydigits", "--val-split", "0.34"]
    argv += ["--batch-size", "4", "--parallel", "none", "--impl", "xla", *FAST]
    assert main([*argv, "--workdir", "runs/tiny"]) == 0
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["dataset"] == "folder:mydigits" and saved["origin_dir"] == str(origin)
    # a run recorded before origin_dir existed resumes (origin_dir is not identity)
    del saved["origin_dir"]
    (workdir / "config.json").write_text(json.dumps(saved))
    assert main([*argv, "--workdir", "runs/tiny"]) == 0
    assert "already finished" in capsys.readouterr().out

    monkeypatch.chdir(elsewhere)
    assert main(["eval", str(workdir)]) == 0
    assert "errors in 4)" in capsys.readouterr().out
    (origin / "mydigits").rename(tmp_path / "moved")
    assert main(["eval", str(workdir)]) == 2
    err = _error(capsys)
    assert "folder:mydigits" in err and str(elsewhere) in err and str(origin) in err
    picture = tmp_path / "filters.png"
    assert main(["viz", "filters", str(workdir), "--output", str(picture)]) == 0
    assert picture.stat().st_size > 0
