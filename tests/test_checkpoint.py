"""Checkpoints: round trip, keep-N, atomicity, damage detection with fallback, finite-aware
rotation, a short error for another model's checkpoint, and kill-and-resume equal to an
unbroken run."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from cnnjax.train import Checkpointer, TrainState, make_optimizer
from cnnjax.train.checkpoint import MANIFEST, CheckpointError, CheckpointMismatch


@pytest.fixture(scope="module")
def bn_state():
    """A host TrainState shaped like a BatchNorm model's: params, batch_stats, SGD momentum inside
    ``MultiSteps``, a raw key; random values everywhere, so a restore that dropped or mixed up
    leaves would show. (Built by hand: compiling a real model's init costs ~20 s on CI.)"""
    rng = np.random.default_rng(0)

    def normal(*shape):
        return rng.normal(size=shape).astype(np.float32)

    params = {
        "conv1": {"kernel": normal(3, 3, 3, 8)},
        "bn1": {"scale": normal(8), "bias": normal(8)},
        "fc": {"kernel": normal(8, 10), "bias": normal(10)},
    }
    tx = make_optimizer("sgd", 0.1, momentum=0.9, weight_decay=1e-4, accumulate_steps=2)
    opt_state = jax.tree.map(
        lambda x: normal(*np.shape(x)) if np.asarray(x).dtype == np.float32 else np.asarray(x),
        jax.device_get(tx.init(params)),
    )
    return TrainState(
        step=np.int32(7),
        params=params,
        batch_stats={"bn1": {"mean": normal(8), "var": normal(8) ** 2}},
        opt_state=opt_state,
        rng=np.array([1, 2], np.uint32),
    )


def _assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(x, y)


def test_round_trip_and_keep_n(tmp_path, bn_state):
    checkpointer = Checkpointer(tmp_path / "ckpt", keep=2)
    for step in (1, 2, 3, 4):
        state = bn_state.replace(step=np.int32(step))
        checkpointer.save(step, state, {"step": step, "epoch": step / 2})
    checkpointer.wait()
    assert checkpointer.manager.all_steps() == [3, 4]
    restored, meta = checkpointer.restore(bn_state)
    assert meta == {"step": 4, "epoch": 2.0}
    _assert_same(restored, bn_state.replace(step=np.int32(4)))
    assert restored.batch_stats and restored.ema_params is None
    checkpointer.close()


def test_a_half_written_checkpoint_is_never_the_latest(tmp_path, bn_state):
    checkpointer = Checkpointer(tmp_path / "ckpt")
    checkpointer.save(2, bn_state, {"step": 2})
    checkpointer.close()
    # What a process killed mid-save leaves behind: orbax's temporary directory, never renamed.
    partial = tmp_path / "ckpt" / "6.orbax-checkpoint-tmp-1234567"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "half").write_bytes(b"\0" * 10)
    reopened = Checkpointer(tmp_path / "ckpt")
    assert reopened.latest_step() == 2
    restored, meta = reopened.restore(bn_state)
    _assert_same(restored, bn_state)
    assert meta["step"] == 2
    reopened.close()


def test_restore_without_checkpoint_is_a_clear_error(tmp_path, bn_state):
    checkpointer = Checkpointer(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no checkpoint under"):
        checkpointer.restore(bn_state)
    checkpointer.close()


def _saved(directory, bn_state, steps=(2, 4, 6), keep=3):
    checkpointer = Checkpointer(directory, keep=keep)
    for step in steps:
        checkpointer.save(step, bn_state.replace(step=np.int32(step)), {"step": step})
    checkpointer.close()
    return directory


def _largest_array_file(root):
    files = [p for p in (root / "state").rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


# What a disk, a copy or a user does to a file: bytes altered, cut short, gone.
def _flip(path):
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 16):
        if i < len(data):
            data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {"flip": _flip, "truncate": _truncate, "delete": pathlib.Path.unlink}
TARGETS = {
    "array data": _largest_array_file,
    "tree metadata": lambda root: root / "state" / "_METADATA",
    "ocdbt manifest": lambda root: root / "state" / "manifest.ocdbt",
    "meta json": lambda root: root / "meta" / "metadata",
    "orbax step metadata": lambda root: root / "_CHECKPOINT_METADATA",
    "cnnjax manifest": lambda root: root / MANIFEST,
}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("damage", DAMAGE)
def test_damage_in_the_latest_checkpoint_falls_back_to_the_previous(
    tmp_path, bn_state, damage, target
):
    directory = _saved(tmp_path / "checkpoints", bn_state)
    assert all((directory / str(s) / MANIFEST).is_file() for s in (2, 4, 6))
    DAMAGE[damage](TARGETS[target](directory / "6"))
    checkpointer = Checkpointer(directory)
    lines = []
    restored, meta = checkpointer.restore(bn_state, report=lines.append)
    step = checkpointer.restored_step
    # Never wrong values: either step 6 exactly as saved (the damage left the arrays readable
    # and intact: the manifest gone, or orbax's own step metadata, which it does not need to
    # read them) or step 4, exactly as saved.
    _assert_same(restored, bn_state.replace(step=np.int32(step)))
    assert meta == {"step": step}
    if (target, damage) == ("cnnjax manifest", "delete") or target == "orbax step metadata":
        assert step == 6 and lines == []
    else:
        assert step == 4
        assert len(lines) == 1 and f"{directory / '6'} skipped: " in lines[0], lines
        assert lines[0].endswith("trying step 4") and "\n" not in lines[0]
        # Set aside, so that training can write step 6 again.
        assert checkpointer.all_steps() == [2, 4]
        assert (tmp_path / "checkpoints_damaged" / "6").is_dir()
    checkpointer.close()


@pytest.mark.parametrize("async_save", [True, False])
def test_the_manifest_is_written_with_the_checkpoint(tmp_path, bn_state, async_save):
    checkpointer = Checkpointer(tmp_path / "checkpoints", async_save=async_save)
    checkpointer.save(2, bn_state, {"step": 2})
    # Committed, and cnnjax did nothing after it: a kill now leaves a verified checkpoint.
    checkpointer.manager.wait_until_finished()
    assert (tmp_path / "checkpoints" / "2" / MANIFEST).is_file()
    assert checkpointer.verify(2) is None and checkpointer.is_finite(2)
    checkpointer.close()


def test_evaluation_falls_back_without_moving_files(tmp_path, bn_state):
    directory = _saved(tmp_path / "checkpoints", bn_state)
    _flip(_largest_array_file(directory / "6"))
    checkpointer = Checkpointer(directory)
    lines = []
    checkpointer.restore(bn_state, report=lines.append, quarantine=False)
    assert checkpointer.restored_step == 4 and len(lines) == 1
    assert checkpointer.all_steps() == [2, 4, 6]
    checkpointer.close()


def test_altered_bytes_without_a_manifest_never_load_silently(tmp_path, bn_state):
    directory = _saved(tmp_path / "checkpoints", bn_state)
    (directory / "6" / MANIFEST).unlink()  # e.g. killed between orbax's commit and the manifest
    _flip(_largest_array_file(directory / "6"))
    checkpointer = Checkpointer(directory)
    lines = []
    restored, _ = checkpointer.restore(bn_state, report=lines.append)
    step = checkpointer.restored_step
    _assert_same(restored, bn_state.replace(step=np.int32(step)))
    assert step == 4 and len(lines) == 1, lines
    checkpointer.close()


def test_every_checkpoint_damaged_is_one_clear_error(tmp_path, bn_state):
    directory = _saved(tmp_path / "checkpoints", bn_state)
    for step in (2, 4, 6):
        _truncate(_largest_array_file(directory / str(step)))
    checkpointer = Checkpointer(directory)
    lines = []
    with pytest.raises(CheckpointError, match=r"no usable checkpoint .*: step\(s\) 2, 4, 6") as e:
        checkpointer.restore(bn_state, report=lines.append)
    assert len(lines) == 3 and "\n" not in str(e.value)
    assert checkpointer.all_steps() == [2, 4, 6]  # nothing moved when nothing is usable
    checkpointer.close()


def test_another_models_checkpoint_is_a_short_error(tmp_path, bn_state):
    directory = _saved(tmp_path / "checkpoints", bn_state, steps=(2,))
    params = {**bn_state.params, "fc": {"kernel": np.zeros((8, 100), np.float32)}}
    other = bn_state.replace(params=params)
    checkpointer = Checkpointer(directory)
    with pytest.raises(CheckpointMismatch) as e:
        checkpointer.restore(other)
    message = str(e.value)
    assert "\n" not in message and len(message) < 600, message
    assert "params/fc/kernel: checkpoint float32[8,10], model float32[8,100]" in message
    assert "1 checkpoint array(s) not in the model, e.g. params/fc/bias" in message
    assert checkpointer.all_steps() == [2]  # not mistaken for damage
    checkpointer.close()


def test_rotation_never_drops_the_last_finite_checkpoint(tmp_path, bn_state):
    nan = bn_state.replace(params=jax.tree.map(lambda x: np.full_like(x, np.nan), bn_state.params))
    checkpointer = Checkpointer(tmp_path / "checkpoints", keep=2)
    for step in range(1, 8):
        state = (bn_state if step <= 3 else nan).replace(step=np.int32(step))
        checkpointer.save(step, state, {"step": step})
    checkpointer.wait()
    # keep=2 counts finite checkpoints only: 2 and 3 stay, and the non-finite ones after them.
    assert checkpointer.all_steps() == [2, 3, 4, 5, 6, 7]
    assert [checkpointer.is_finite(s) for s in (3, 4)] == [True, False]
    lines = []
    restored, _ = checkpointer.restore(bn_state, report=lines.append)
    assert checkpointer.restored_step == 3 and len(lines) == 4
    assert all("NaN or inf" in line for line in lines)
    _assert_same(restored, bn_state.replace(step=np.int32(3)))
    checkpointer.close()


# ---------------------------------------------------------------------------------------------
# SIGTERM a training subprocess mid-epoch, resume it, compare with an uninterrupted run.

_WORKER = textwrap.dedent(
    """
    import sys, time
    import jax
    import numpy as np
    from cnnjax.train import apply_overrides, default_config, train

    out, workdir, slow_from = sys.argv[1], sys.argv[2], int(sys.argv[3])
    config = default_config()
    apply_overrides(config, [
        "model=lenet5", "impl=xla", "dataset=digits", "batch_size=64", "eval_batch_size=150",
        "num_steps=30", "augment.padding=2", "log_every_steps=1000", "parallel=none",
    ])

    def hook(step):
        print(f"STEP {step}", flush=True)
        if slow_from and step >= slow_from:
            time.sleep(0.5)  # leaves the test time to send SIGTERM mid-epoch

    result = train(config, workdir, hooks=[hook])
    leaves = jax.tree.leaves((result.state.params, result.state.opt_state, result.state.rng))
    np.savez(out, *leaves)
    print("INTERRUPTED" if result.interrupted else "DONE", result.step, flush=True)
    """
)


def _start(script, out, workdir, slow_from):
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    return subprocess.Popen(
        [sys.executable, str(script), str(out), str(workdir), str(slow_from)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(proc, timeout=240) -> str:
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()  # closes the pipes (an open one is a ResourceWarning in a later test)
        raise


@pytest.mark.slow  # the CI fault-injection chain (tests/test_faults.py) covers SIGTERM + resume
def test_sigterm_then_resume_equals_the_uninterrupted_run(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    reference = _start(script, tmp_path / "reference.npz", tmp_path / "reference", 0)
    victim = _start(script, tmp_path / "first.npz", tmp_path / "run", 4)
    try:
        seen = []
        for line in victim.stdout:  # wait until it is well into the first epoch
            seen.append(line)
            if line.startswith("STEP 5"):
                victim.send_signal(signal.SIGTERM)
                break
        else:
            pytest.fail("worker ended before step 5:\n" + "".join(seen)[-3000:])
        output = _finish(victim)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert victim.returncode == 0, output[-3000:]
    last = output.strip().splitlines()[-1].split()
    assert last[0] == "INTERRUPTED", output[-2000:]
    stopped_at = int(last[1])
    assert 5 <= stopped_at < 21, "stopped mid-epoch (21 steps per epoch)"
    assert "run the same command again to resume" in output

    resumed = _start(script, tmp_path / "resumed.npz", tmp_path / "run", 0)
    output = _finish(resumed)
    assert resumed.returncode == 0, output[-3000:]
    assert f"(step {stopped_at})" in output and output.strip().endswith("DONE 30")
    ref_output = _finish(reference)
    assert reference.returncode == 0, ref_output[-3000:]

    a, b = np.load(tmp_path / "reference.npz"), np.load(tmp_path / "resumed.npz")
    assert len(a.files) == len(b.files) > 10
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key])  # bit-for-bit
    steps = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert steps[-1] == 30 and stopped_at in steps
