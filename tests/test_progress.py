"""Progress with an estimate on stderr (``cnnjax.progress``) for eval and bench, and the training
header on its own line before the tqdm bar (issue 12)."""

from __future__ import annotations

import io
import os
import pathlib
import re
import subprocess
import sys

import pytest

from cnnjax.cli import main

# tqdm's estimate: "done/total [elapsed<left, rate]"
ESTIMATE = r"\| *(\d+)/(\d+) \[\d\d:\d\d<\d\d:\d\d"
TINY = ["--parallel", "none", "--impl", "xla", "--batch-size", "64", "--set", "num_steps=2"]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    env["PYTHONPATH"] = os.pathsep.join([str(pathlib.Path(__file__).parents[1]), *sys.path])
    env.update(extra)
    return env


class _Terminal(io.StringIO):
    """stdout and stderr of a terminal: one stream, a TTY."""

    def isatty(self):
        return True


def test_the_training_header_has_its_own_line_and_eval_shows_an_estimate(tmp_path, monkeypatch):
    """The header used to follow the bar's first frame on the same line:
    ``\\r  0%|...| 0/2 [00:00<?, ?step/s]training lenet5 on digits ...``. Then ``cnnjax eval``
    (a subprocess) prints its progress and estimate on stderr, and only the result on stdout."""
    workdir = tmp_path / "run"
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setattr(sys, "stderr", terminal)
    argv = ["train", "lenet5", *TINY, "--set", "eval_batch_size=150", "--workdir", str(workdir)]
    assert main(argv) == 0
    text = terminal.getvalue()
    assert text.startswith("training lenet5 on digits ("), text[:200]
    header, rest = text.split("\n", 1)
    assert "%|" not in header and "step/s" in rest

    result = subprocess.run(
        [sys.executable, "-m", "cnnjax.cli", "eval", str(workdir)],
        env=_env(CNNJAX_PROGRESS_DELAY="0"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("step 2: test accuracy ")  # stdout is only the result
    assert "eval step 2: " in result.stderr
    counts = re.findall(ESTIMATE, result.stderr)  # 450 test images in 3 batches of 150
    assert counts and all(total == "3" for _, total in counts), result.stderr


def test_bench_ops_prints_progress_and_keeps_its_table_on_stdout(capsys, monkeypatch):
    monkeypatch.setenv("CNNJAX_PROGRESS_DELAY", "0")
    argv = ["bench", "ops", "--only", "global_avg_pool", "--repeats", "1", "--batch", "2"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert re.search(r"^global_avg_pool 7x7x512 +\d", captured.out, re.MULTILINE)
    assert "%|" not in captured.out
    assert re.search(r"global_avg_pool 7x7x512: +\d+%.*" + ESTIMATE, captured.err)


def test_no_bar_for_a_quick_run_or_when_turned_off(capsys, monkeypatch):
    from cnnjax.progress import progress_bar, track

    assert list(track(range(3), 3, "quick")) == [0, 1, 2]  # under the 2 s delay: silent
    monkeypatch.setenv("CNNJAX_PROGRESS_DELAY", "0")
    monkeypatch.setenv("CNNJAX_PROGRESS", "0")
    with progress_bar(3, "off") as bar:
        bar.update(3)
        bar.write("a result line", file=sys.stdout)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == "a result line\n"
    monkeypatch.setenv("CNNJAX_PROGRESS_DELAY", "soon")
    with pytest.raises(ValueError, match="CNNJAX_PROGRESS_DELAY must be a number of seconds"):
        progress_bar(1, "bad")
