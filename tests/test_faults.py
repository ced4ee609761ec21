"""Fault injection: stop a small run with SIGTERM / SIGINT / SIGKILL at seeded points (steps,
inside a checkpoint save, inside the final wait, between two metrics records, mid-line), resume
each time, and compare with an uninterrupted run: bit-identical state *and* the exact metrics
history (every field but the timings), one record per ``(epoch, split)``.

One chain of faults is one workdir: every run resumes what the previous one left. The worker
injects its fault by wrapping ``Checkpointer.save`` / ``Checkpointer.wait`` /
``MetricsWriter.write`` or from a step hook, then signals itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cnnjax.train import read_metrics
from cnnjax.train.checkpoint import Checkpointer

_WORKER = textwrap.dedent(
    """
    import json, os, signal, sys
    import jax
    import numpy as np
    from cnnjax.train import apply_overrides, default_config, train
    from cnnjax.train.checkpoint import Checkpointer
    from cnnjax.train.metrics import MetricsWriter

    out, workdir, fault = sys.argv[1], sys.argv[2], sys.argv[3]
    config = default_config()
    apply_overrides(config, [
        "model=lenet5", "impl=xla", "dataset=digits", "batch_size=64", "eval_batch_size=450",
        "num_steps=63", "augment.padding=2", "log_every_steps=5", "parallel=none",
        "checkpoint.every_steps=7", "checkpoint.keep=2", "optimizer.lr=0.01",
    ])
    sig, _, where = fault.partition("@")
    kind, _, at = where.partition(":")
    at = int(at or 0)

    def fire():
        print(f"FAULT {fault}", flush=True)
        os.kill(os.getpid(), getattr(signal, "SIG" + sig))

    save, wait, write = Checkpointer.save, Checkpointer.wait, MetricsWriter.write

    def faulty_save(self, step, state, meta=None):
        save(self, step, state, meta)  # the asynchronous write is now in flight
        if kind == "save" and step == at:
            fire()

    def faulty_wait(self):
        if kind == "wait":
            fire()
        wait(self)

    def faulty_write(self, record):
        if record["split"] == "train" and record["step"] == at and kind in ("record", "torn"):
            if kind == "torn":  # a kill in the middle of a line
                with self.path.open("a") as f:
                    f.write(json.dumps(record)[:40])
            else:
                write(self, record)
            fire()
            return
        write(self, record)

    def hook(step):
        if kind == "step" and step == at:
            fire()

    Checkpointer.save, Checkpointer.wait = faulty_save, faulty_wait
    MetricsWriter.write = faulty_write
    result = train(config, workdir, hooks=[hook])
    state = result.state
    np.savez(out, *jax.tree.leaves((state.params, state.opt_state, state.rng, state.step)))
    print("INTERRUPTED" if result.interrupted else "DONE", result.step, flush=True)
    """
)

_TIMINGS = {"time", "images_per_sec", "epoch_time", "wall_time", "eval_time"}

# (fault, how the run ends). Steps: 21 per epoch, 63 in all; saves every 7 steps; logs every 5.
CI_CHAIN = (
    ("TERM@step:21", "INTERRUPTED 21"),  # stop on an epoch's last step: that epoch is recorded
    ("KILL@save:42", None),  # epoch 2's records written, its checkpoint not committed
    ("INT@step:44", "INTERRUPTED 44"),  # the resumed run's first step (45) is a log point
    ("TERM@wait:0", "DONE 63"),  # during the final save: it completes, exit 0
)
FULL_CHAIN = (
    ("TERM@step:3", "INTERRUPTED 3"),  # before any periodic save
    ("KILL@step:9", None),
    ("INT@save:14", "INTERRUPTED 14"),
    ("KILL@torn:21", None),  # half a metrics line on disk
    ("TERM@step:21", "INTERRUPTED 21"),
    ("KILL@save:28", None),
    ("TERM@save:35", "INTERRUPTED 35"),
    ("KILL@record:42", None),  # between epoch 2's train and test records
    ("KILL@save:42", None),
    ("INT@step:44", "INTERRUPTED 44"),
    ("TERM@step:48", "INTERRUPTED 48"),
    ("KILL@step:55", None),
    ("INT@step:63", "DONE 63"),  # the signal on the very last step: the run is finished
)


def _ends(output: str, ending: str) -> bool:
    """Whether the worker's stdout (before the stderr part) ends with ``ending``."""
    return output.split("\n--- stderr ---\n")[0].strip().endswith(ending)


def _run(script, out, workdir, fault, timeout=300) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, str(script), str(out), str(workdir), fault],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc.returncode, proc.stdout + "\n--- stderr ---\n" + proc.stderr


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: its final state (npz) and metrics history."""
    tmp = tmp_path_factory.mktemp("reference")
    script = tmp / "worker.py"
    script.write_text(_WORKER)
    code, output = _run(script, tmp / "final.npz", tmp / "run", "NONE@none")
    assert code == 0 and _ends(output, "DONE 63"), output[-3000:]
    return np.load(tmp / "final.npz"), read_metrics(tmp / "run")


def _without_timings(records):
    return [{k: v for k, v in r.items() if k not in _TIMINGS} for r in records]


def _run_chain(tmp_path, chain, reference) -> dict:
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    counts = {"injected": 0, "survived": 0}
    for index, (fault, ending) in enumerate(chain):
        code, output = _run(script, tmp_path / "final.npz", tmp_path / "run", fault)
        assert f"FAULT {fault}" in output, f"fault {fault} never fired:\n{output[-3000:]}"
        counts["injected"] += 1
        if ending is None:
            assert code == -9, f"{fault}: exit {code}\n{output[-3000:]}"
        else:
            assert code == 0 and _ends(output, ending), f"{fault}\n{output[-3000:]}"
            if index:  # every rerun resumed rather than restarted
                assert "resuming from" in output, output[-3000:]
    if chain[-1][1] != "DONE 63":  # the chain left work: finish it without faults
        code, output = _run(script, tmp_path / "final.npz", tmp_path / "run", "NONE@none")
        assert code == 0 and _ends(output, "DONE 63"), output[-3000:]
    expected_state, expected_metrics = reference
    got = np.load(tmp_path / "final.npz")
    assert len(got.files) == len(expected_state.files) > 10
    for key in expected_state.files:
        np.testing.assert_array_equal(got[key], expected_state[key])  # bit for bit
    records = read_metrics(tmp_path / "run")
    assert [(r["epoch"], r["split"]) for r in records] == [
        (e, s) for e in (1, 2, 3) for s in ("train", "test")
    ]
    assert _without_timings(records) == _without_timings(expected_metrics)
    counts["survived"] = counts["injected"]
    print(f"faults injected {counts['injected']}, survived {counts['survived']}")
    return counts


def test_faults_then_resume_equal_the_uninterrupted_run(tmp_path, reference):
    """CI form: SIGTERM at an epoch end, SIGKILL during a save after the epoch's records,
    SIGINT before a log point, SIGTERM during the final save."""
    counts = _run_chain(tmp_path, CI_CHAIN, reference)
    assert counts == {"injected": 4, "survived": 4}


@pytest.mark.slow
def test_thirteen_faults_then_resume_equal_the_uninterrupted_run(tmp_path, reference):
    """The full form: 13 seeded faults of every signal, in saves, records and mid-line."""
    counts = _run_chain(tmp_path, FULL_CHAIN, reference)
    assert counts == {"injected": 13, "survived": 13}


_RAISING_WORKER = textwrap.dedent(
    """
    import sys
    from cnnjax.train import apply_overrides, default_config, train
    from cnnjax.train.checkpoint import Checkpointer

    config = default_config()
    apply_overrides(config, [
        "model=lenet5", "impl=xla", "dataset=digits", "batch_size=64", "eval_batch_size=450",
        "num_steps=30", "log_every_steps=5", "parallel=none", "checkpoint.every_steps=7",
    ])

    save = Checkpointer.save

    def save_then_fail(self, step, state, meta=None):
        save(self, step, state, meta)  # asynchronous: still being written when the error hits
        if step == 7:
            raise RuntimeError("cannot decode image a/5.png: it went bad during the run")

    Checkpointer.save = save_then_fail
    train(config, sys.argv[1], verbose=False)
    """
)


def test_an_error_inside_the_loop_commits_the_save_in_flight_and_exits_cleanly(tmp_path):
    """An exception in the step loop (an image that goes bad mid-run) used to skip waiting for
    the asynchronous save: the process exited with orbax's threads mid-commit, printing
    "cannot schedule new futures after interpreter shutdown" and leaving
    ``7.orbax-checkpoint-tmp``. Now the save commits, verified, and only the error is raised."""
    script = tmp_path / "worker.py"
    script.write_text(_RAISING_WORKER)
    workdir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    env.update(JAX_PLATFORMS="cpu", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, str(script), str(workdir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "it went bad during the run" in output, output[-3000:]
    assert "cannot schedule new futures" not in output, output[-3000:]
    entries = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    assert entries == ["7"], entries
    assert Checkpointer(workdir / "checkpoints").verify(7) is None
