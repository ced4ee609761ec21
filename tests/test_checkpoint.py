"""Checkpoints: round trip, keep-N, atomicity, and kill-and-resume equal to an unbroken run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from cnnjax.train import Checkpointer, TrainState, make_optimizer


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
        raise


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
