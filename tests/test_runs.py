"""A workdir is a contract: rerun, changed config, another model, --extend, damaged checkpoints,
environment faults before training, a multi-host peer that never joins.

Every case runs the ``cnnjax`` command (in process through ``main``, or as a subprocess where
the process itself is what is tested) on a 6-step LeNet-5 run of the embedded digits set,
trained once per module and copied for each test.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import types

import pytest

from cnnjax.cli import main
from cnnjax.train.optim import make_schedule

RUN = [
    "lenet5",
    "--parallel",
    "none",
    "--impl",
    "xla",
    "--batch-size",
    "64",
    "--set",
    "eval_batch_size=150",
    "--set",
    "num_steps=6",
    "--set",
    "checkpoint.every_steps=2",
]


def _train(workdir, *extra):
    return main(["train", *RUN, "--workdir", str(workdir), *extra])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 6-step run with checkpoints at steps 2, 4 and 6."""
    workdir = tmp_path_factory.mktemp("finished") / "run"
    assert _train(workdir, "--quiet") == 0
    return workdir


@pytest.fixture
def run(tmp_path, finished):
    """A private copy of the finished run."""
    return pathlib.Path(shutil.copytree(finished, tmp_path / "run"))


def _env():
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    env["PYTHONPATH"] = os.pathsep.join([str(pathlib.Path(__file__).parents[1]), *sys.path])
    return env


def _cli(*argv, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "cnnjax.cli", *argv],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _snapshot(workdir):
    return {
        str(p.relative_to(workdir)): p.read_bytes()
        for p in sorted(workdir.rglob("*"))
        # the lock file names the process that last held the workdir: it changes by design
        if p.is_file() and "tensorboard" not in p.parts and p.name != ".cnnjax.lock"
    }


def test_rerunning_a_finished_run_says_so_and_trains_nothing(run):
    before = _snapshot(run)
    result = _cli("train", *RUN, "--workdir", str(run))
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("already finished at step 6 (test accuracy "), result.stdout
    assert "training lenet5" not in result.stdout
    after = _snapshot(run)
    assert after.keys() == before.keys()
    for name in before:  # config.json is rewritten atomically with the same content
        if name != "config.json":
            assert after[name] == before[name], name
    assert json.loads(after["config.json"]) == json.loads(before["config.json"])


def test_eval_scores_with_the_loss_the_run_recorded(finished):
    """``evaluate`` uses the task's own loss and metric sums: on the final checkpoint it gives
    the final test record's loss, accuracy and count, and a confusion matrix that agrees."""
    import numpy as np

    from cnnjax.train import evaluate, read_metrics

    result = evaluate(finished)
    test = [r for r in read_metrics(finished) if r["split"] == "test"][-1]
    assert result.step == test["step"] == 6 and result.task == "classification"
    assert result.count == test["count"] == len(result.labels) == result.confusion.sum()
    assert result.accuracy == test["accuracy"]
    assert result.loss == pytest.approx(test["loss"], rel=1e-6)
    assert result.accuracy == np.trace(result.confusion) / result.count
    assert result.accuracy == np.mean(result.predictions == result.labels)
    assert result.mean_iou is None and result.iou is None


def test_a_changed_config_is_refused_with_a_diff(run, capsys):
    config = (run / "config.json").read_bytes()
    assert _train(run, "--lr", "0.5", "--batch-size", "32") == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert "batch_size 64 → 32" in err and "optimizer.lr 0.005 → 0.5" in err
    assert "new --workdir" in err
    assert "training lenet5" not in captured.out
    assert (run / "config.json").read_bytes() == config


def test_another_model_is_refused_and_the_run_stays_evaluable(run, capsys):
    config = (run / "config.json").read_bytes()
    assert main(["train", "nin", *RUN[1:], "--workdir", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) <= 5 and 'model "lenet5" → "nin"' in err, err
    assert (run / "config.json").read_bytes() == config
    assert main(["eval", str(run)]) == 0
    assert capsys.readouterr().out.startswith("step 6: test accuracy ")


def test_another_models_checkpoints_without_a_record_are_a_short_error(run, capsys):
    (run / "config.json").unlink()  # e.g. a workdir written before the record existed
    assert main(["train", "nin", *RUN[1:], "--workdir", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) <= 5, err
    assert "does not fit this model" in err and "new --workdir" in err
    assert not (run / "config.json").exists()  # written only once the run is known good


def test_growing_a_run_needs_extend_and_restarts_the_cosine(run, capsys):
    assert _train(run, "--set", "num_steps=12") == 2
    err = capsys.readouterr().err
    assert "run of 6 steps; this asks for 12 (num_steps 6 → 12)" in err
    assert "--extend" in err and "new cosine from lr 0.005" in err

    assert _train(run, "--set", "num_steps=12", "--extend") == 0
    out = capsys.readouterr().out
    assert "(step 6)" in out and out.strip().splitlines()[-1].endswith(
        str(run / "checkpoints" / "12")
    )
    record = json.loads((run / "config.json").read_text())
    assert record["schedule"]["cycles"] == [[0, 6], [6, 12]]
    assert record["run_record"]["derived"]["total_steps"] == 12 and "extend" not in record

    # The plan is part of the run now: the same command without --extend just resumes.
    assert _train(run, "--set", "num_steps=12") == 0
    assert "already finished at step 12" in capsys.readouterr().out
    assert _train(run, "--set", "num_steps=8") == 2
    assert "cannot be shortened" in capsys.readouterr().err


def test_extended_cosine_schedule_keeps_the_old_steps_and_restarts():
    plain = make_schedule("cosine", 0.1, total_steps=6, warmup_steps=2)
    extended = make_schedule(
        "cosine", 0.1, total_steps=12, warmup_steps=2, cycles=[(0, 6), (6, 12)]
    )
    fresh = make_schedule("cosine", 0.1, total_steps=6)
    for t in range(6):  # the steps already trained keep their learning rates
        assert float(extended(t)) == pytest.approx(float(plain(t)))
    for t in range(6, 13):  # the added steps: a cosine from lr to end_lr, no warm-up
        assert float(extended(t)) == pytest.approx(float(fresh(t - 6)))
    assert float(extended(6)) == pytest.approx(0.1) and float(extended(12)) == pytest.approx(0.0)


def _flip(path):
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    path.write_bytes(bytes(data))


def _largest_array_file(root):
    return max(
        (p for p in (root / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )


def test_a_damaged_latest_checkpoint_falls_back_in_eval_and_train(run, capsys):
    _flip(_largest_array_file(run / "checkpoints" / "6"))
    assert main(["eval", str(run)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("step 4: test accuracy ")
    assert captured.err.count("\n") == 1 and "checkpoints/6 skipped: file state/" in captured.err

    assert _train(run) == 0
    captured = capsys.readouterr()
    assert "altered" in captured.err and captured.err.count("\n") == 1
    assert f"resuming from {run / 'checkpoints' / '4'} (step 4)" in captured.out
    assert captured.out.strip().endswith(str(run / "checkpoints" / "6"))
    assert (run / "checkpoints_damaged" / "6").is_dir()
    assert main(["eval", str(run)]) == 0  # the retrained step 6 is intact
    captured = capsys.readouterr()
    assert captured.out.startswith("step 6: ") and captured.err == ""


def test_eval_step_of_a_damaged_checkpoint_names_the_damage_and_the_intact_steps(run, capsys):
    """`eval --step N` on a damaged N used to say "no older checkpoint" although 2 and 6 were
    intact (plain eval falls back; an explicit step is not replaced by another)."""
    _flip(_largest_array_file(run / "checkpoints" / "4"))
    assert main(["eval", str(run), "--step", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no older checkpoint" not in err
    assert err.startswith(f"cnnjax eval: error: checkpoint {run / 'checkpoints' / '4'} is damaged")
    assert "was altered (SHA-256 differs from the manifest); intact step(s): 2, 6 " in err
    assert main(["eval", str(run), "--step", "2"]) == 0


def test_every_checkpoint_damaged_is_one_line_and_exit_2(run, capsys):
    for step in (2, 4, 6):
        (run / "checkpoints" / str(step) / "meta" / "metadata").unlink()
    assert _train(run) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4  # three reports and the error
    assert err[-1].startswith("cnnjax train: error: no usable checkpoint under ")


@pytest.mark.parametrize("fault", ["workdir is a file", "parent is a file", "metrics is a dir"])
def test_an_unusable_workdir_is_an_error_before_training(tmp_path, capsys, fault):
    workdir = tmp_path / "run"
    if fault == "workdir is a file":
        workdir.write_text("")
    elif fault == "parent is a file":
        (tmp_path / "file").write_text("")
        workdir = tmp_path / "file" / "run"
    else:
        (workdir / "metrics.jsonl").mkdir(parents=True)
    assert _train(workdir) == 2
    captured = capsys.readouterr()
    assert "training lenet5" not in captured.out
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and str(workdir if fault != "metrics is a dir" else "") in err
    assert "Traceback" not in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_a_read_only_workdir_is_an_error_before_training(tmp_path, capsys):
    workdir = tmp_path / "run"
    workdir.mkdir()
    workdir.chmod(0o500)
    try:
        assert _train(workdir) == 2
    finally:
        workdir.chmod(0o700)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not writable" in err


@pytest.mark.parametrize(("extra", "count"), [((), 3), (("--best-metric", "none"), 2)])
def test_too_little_disk_is_an_error_before_training(tmp_path, capsys, monkeypatch, extra, count):
    # Room for the latest checkpoint being written, the previous one, and the best (if kept).
    free = types.SimpleNamespace(total=10**9, used=10**9 - 100_000, free=100_000)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: free)
    assert _train(tmp_path / "run", *extra) == 2
    captured = capsys.readouterr()
    assert "training lenet5" not in captured.out
    assert "not enough disk" in captured.err
    assert f"0.1 MiB free, {count} checkpoints need" in captured.err
    assert not (tmp_path / "run" / "checkpoints").exists()


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("process_id", [0, 1])
def test_a_peer_that_never_joins_is_one_line_after_the_timeout(tmp_path, process_id):
    address = f"localhost:{_free_port()}"
    result = _cli(
        "train",
        "lenet5",
        "--coordinator",
        address,
        "--num-processes",
        "2",
        "--process-id",
        str(process_id),
        "--set",
        "distributed.timeout_s=5",
        "--workdir",
        str(tmp_path / "run"),
        timeout=120,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    err = result.stderr.strip().splitlines()
    assert err[-1].startswith(f"cnnjax: error: process {process_id} of 2 could not form the run"), (
        err
    )
    assert f"coordinator {address} within 5 s" in err[-1]
    assert "Check failure" not in result.stderr and "Traceback" not in result.stderr


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError):
        main(["--debug", "eval", str(tmp_path / "nothing")])
    with pytest.raises(FileNotFoundError):
        main(["eval", "--debug", str(tmp_path / "nothing")])


def test_a_second_process_in_a_busy_workdir_is_refused(tmp_path, capsys):
    # Found by a reviewer: two `cnnjax train` in one workdir both trained from step 0, saved into
    # the same checkpoints/ and wrote every metrics record twice.
    from cnnjax.train.workdir import lock_workdir

    workdir = tmp_path / "run"
    workdir.mkdir()
    holder = lock_workdir(workdir)  # stands for a run in another process (flock is per open file)
    try:
        assert _train(workdir) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert "is in use by cnnjax process" in err and "another --workdir" in err
        assert not (workdir / "checkpoints").exists()
        assert not (workdir / "config.json").exists()
    finally:
        holder.close()
    assert _train(workdir, "--quiet") == 0  # released: the run goes ahead
    assert (workdir / "config.json").exists()
