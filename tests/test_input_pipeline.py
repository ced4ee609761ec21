"""The host input pipeline an accelerator needs: device-side augmentation (the default for
in-memory data) gives the host's batches bit for bit, grain reader threads (``data.workers``)
give the same stream and resume at any batch, runs with workers exit cleanly, and the training
loop never waits for the device between log points."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cnnjax.train.loop as loop_module
from cnnjax.data import AugmentConfig, batches, device_preprocess, load_dataset
from cnnjax.data.pipeline import IGNORE_INDEX
from cnnjax.data.segmentation import BACKGROUND, INK
from cnnjax.train import apply_overrides, default_config, train
from cnnjax.train.actions import KeepBest, LogProgress, RecordEpoch, SaveCheckpoint
from cnnjax.train.loop import build_run

REPO = pathlib.Path(__file__).resolve().parents[1]
AUGMENTS = [
    AugmentConfig(padding=2, flip=True),
    AugmentConfig(padding=1, flip=False, crop_size=28),
    AugmentConfig(),
]


def _device(dataset, augment):
    return jax.jit(
        lambda batch: device_preprocess(
            None, batch, augment=augment, mean=dataset.mean, std=dataset.std
        )
    )


@pytest.mark.parametrize("augment", AUGMENTS, ids=["pad_flip", "crop", "none"])
@pytest.mark.parametrize("process", [(0, 1), (1, 2)], ids=["one_process", "second_of_two"])
def test_device_augmentation_gives_the_host_batches_bit_for_bit(augment, process):
    dataset = load_dataset("synthetic")
    kwargs = dict(
        batch_size=32,
        train=True,
        seed=5,
        epoch=2,
        augment=augment,
        process_index=process[0],
        process_count=process[1],
    )
    host = list(batches(dataset, **kwargs))[:4]
    deferred = list(batches(dataset, **kwargs, normalize_images=False, defer_augment=True))[:4]
    assert deferred[0]["image"].dtype == np.uint8  # a quarter of float32's transfer
    assert ("crop" in deferred[0]) == augment.active
    finish = _device(dataset, augment)
    for raw, expected in zip(deferred, host, strict=True):
        out = jax.device_get(finish(raw))
        assert set(out) == {"image", "label"}
        np.testing.assert_array_equal(out["image"], expected["image"])
        np.testing.assert_array_equal(out["label"], expected["label"])


def test_segmentation_masks_get_their_images_crop_and_flip():
    """digits_seg: a pixel is a digit class exactly where the scene has ink, so after any crop
    and flip the mask must still match its image; padding is unlabelled (IGNORE_INDEX)."""
    dataset = load_dataset("digits_seg")
    augment = AugmentConfig(padding=3, flip=True, crop_size=30)
    kwargs = dict(batch_size=16, train=True, seed=1, epoch=0, augment=augment)
    host = next(batches(dataset, **kwargs, normalize_images=False))
    raw = next(batches(dataset, **kwargs, normalize_images=False, defer_augment=True))
    assert host["image"].shape == (16, 30, 30, 1) and host["label"].shape == (16, 30, 30)
    ink = host["image"][..., 0] >= INK
    labelled = host["label"] != IGNORE_INDEX
    np.testing.assert_array_equal(ink[labelled], host["label"][labelled] != BACKGROUND)
    assert (~labelled).any() and (host["image"][..., 0][~labelled] == 0).all()
    assert (host["label"] != raw["label"][:, :30, :30]).any()  # the masks did move
    device = jax.device_get(_device(dataset, augment)(raw))
    expected = next(batches(dataset, **kwargs))
    np.testing.assert_array_equal(device["image"], expected["image"])
    np.testing.assert_array_equal(device["label"], host["label"])
    centred = next(batches(dataset, batch_size=16, train=False, augment=augment))
    assert centred["label"].shape == (16, 30, 30)  # evaluation centre-crops masks too


def test_on_device_is_the_default_for_in_memory_data_only(tmp_path):
    config = default_config()
    apply_overrides(config, ["impl=xla", "parallel=none"])
    assert config.augment.on_device is None and config.data.workers is None
    run = build_run(config)
    assert not run.normalize_on_host and run.workers == 0  # digits: in memory
    # Run's batches stay finished on the host for other consumers (experiments/train_nnx.py);
    # the loop asks for them deferred.
    assert next(run.train_batches(0))["image"].dtype == np.float32
    assert next(run.eval_batches())["image"].dtype == np.float32
    assert next(run.train_batches(0, deferred=True))["image"].dtype == np.uint8
    assert next(run.eval_batches(deferred=True))["image"].dtype == np.uint8
    root = tmp_path / "imgs"
    _image_folder(root, count=4)
    apply_overrides(config, [f"dataset=folder:{root}", "val_split=0.5", "batch_size=4"])
    run = build_run(config)
    assert run.normalize_on_host and run.workers == min(os.cpu_count() or 1, 8)
    apply_overrides(config, ["augment.on_device=True", "data.workers=0"])
    run = build_run(config)
    assert not run.normalize_on_host and run.workers == 0
    apply_overrides(config, ["data.workers=-1"])
    with pytest.raises(ValueError, match=r"data\.workers\) must be >= 0"):
        build_run(config)


def _image_folder(root: pathlib.Path, count: int, size: int = 12) -> pathlib.Path:
    from PIL import Image

    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = np.random.default_rng([ord(c), i]).integers(0, 256, (size, size, 3))
            Image.fromarray(pixels.astype(np.uint8)).save(root / c / f"{i:02d}.png")
    return root


def test_workers_read_the_same_stream_and_resume_at_any_batch(tmp_path):
    dataset = load_dataset(f"folder:{_image_folder(tmp_path / 'imgs', 12)}", val_split=0.25)
    kwargs = dict(batch_size=4, train=True, seed=3, epoch=1, augment=AUGMENTS[0])
    alone = list(batches(dataset, **kwargs))
    assert len(alone) == 4
    for start in (0, 1, 3):
        threaded = list(batches(dataset, **kwargs, workers=3, start_batch=start))
        assert len(threaded) == len(alone) - start
        for got, expected in zip(threaded, alone[start:], strict=True):
            np.testing.assert_array_equal(got["image"], expected["image"])
            np.testing.assert_array_equal(got["label"], expected["label"])


def test_a_file_damaged_after_loading_fails_through_the_workers_naming_it(tmp_path):
    root = _image_folder(tmp_path / "imgs", 8)
    dataset = load_dataset(f"folder:{root}", val_split=0.25)
    victim = dataset.train.paths[5]
    victim.write_bytes(b"\x89PNG garbage")
    stream = batches(dataset.train, batch_size=4, train=False, normalize_images=False, workers=2)
    with pytest.raises(ValueError, match=rf"cannot decode image .*{victim.name}"):
        list(stream)


def test_a_run_with_workers_exits_cleanly_leaving_no_process(tmp_path):
    """`cnnjax train --data-workers 2` on folder data: exit 0, no abort at exit, and nothing
    left running that names the run's workdir."""
    root = _image_folder(tmp_path / "imgs", 16)
    workdir = tmp_path / "run_with_workers"
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    code = "import sys; from cnnjax.cli import main; sys.exit(main())"
    args = ["train", "lenet5", "--dataset", f"folder:{root}", "--val-split", "0.25"]
    args += ["--data-workers", "2", "--batch-size", "8", "--epochs", "1", "--impl", "xla"]
    args += ["--set", "augment.padding=2", "--set", "augment.flip=True", "--workdir", str(workdir)]
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "terminate called" not in result.stderr and "test accuracy" in result.stdout
    assert not _processes_naming(str(workdir))
    assert json.loads((workdir / "config.json").read_text())["data"]["workers"] == 2


def _processes_naming(text: str) -> list[int]:
    found = []
    for proc in pathlib.Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text.encode() in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def _config(*overrides):
    config = default_config()
    apply_overrides(
        config,
        [
            "impl=xla",
            "parallel=none",
            "batch_size=128",
            "num_steps=8",
            "log_every_steps=4",
            "eval_batch_size=450",
            "augment.padding=2",
            "augment.flip=True",
            *overrides,
        ],
    )
    return config


def _stop_after(step):
    def hook(current):
        if current == step:
            os.kill(os.getpid(), __import__("signal").SIGTERM)

    return hook


class _SyncWatch:
    """Records device→host reads and waits made on the main thread while :attr:`armed`."""

    def __init__(self):
        self.armed = False
        self.events: list[str] = []

    def note(self, what: str) -> None:
        if self.armed and threading.current_thread() is threading.main_thread():
            self.events.append(what)

    def wrap(self, what: str, fn):
        def wrapped(*args, **kwargs):
            if any(isinstance(a, jax.Array) for a in jax.tree.leaves((args, kwargs))):
                self.note(what)
            return fn(*args, **kwargs)

        return wrapped

    def disarmed(self, fn):
        def wrapped(*args, **kwargs):
            armed, self.armed = self.armed, False
            try:
                return fn(*args, **kwargs)
            finally:
                self.armed = armed

        return wrapped


READ = "Array._value (float/int/item/tolist)"


def _watch_syncs(monkeypatch) -> _SyncWatch:
    """Arm a :class:`_SyncWatch` over the step loop, disarmed inside the periodic actions
    (log points, epoch ends, saves: where the loop may read the device)."""
    watch = _SyncWatch()
    array_type = type(jnp.zeros(()))
    value = array_type._value

    def read_value(self):
        watch.note(READ)
        return value.fget(self)

    monkeypatch.setattr(array_type, "_value", property(read_value))
    for module, name in ((jax, "device_get"), (jax, "block_until_ready"), (np, "asarray")):
        fn = getattr(module, name)
        monkeypatch.setattr(module, name, watch.wrap(f"{module.__name__}.{name}", fn))
    for action in (LogProgress, RecordEpoch, KeepBest, SaveCheckpoint):
        monkeypatch.setattr(action, "__call__", watch.disarmed(action.__call__))
    step_loop = loop_module._step_loop

    def armed_loop(*args, **kwargs):
        watch.armed = True
        try:
            return step_loop(*args, **kwargs)
        finally:
            watch.armed = False

    monkeypatch.setattr(loop_module, "_step_loop", armed_loop)
    return watch


@pytest.fixture(scope="module")
def watched_run(tmp_path_factory):
    """An uninterrupted 8-step run (on-device augmentation, the default for digits) with the
    step loop watched for host syncs: ``(result, events)``."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        watch = _watch_syncs(monkeypatch)
        result = train(_config(), tmp_path_factory.mktemp("whole"), verbose=False)
    return result, watch.events


def test_host_then_device_augmentation_resumes_bit_identically(watched_run, tmp_path):
    """A run recorded with ``augment.on_device=False`` (the old default) and interrupted at
    step 5 resumes under the new default (on device) and ends with exactly the parameters of an
    uninterrupted on-device run; rerun with the old setting it is finished, not "another run"."""
    whole, _ = watched_run
    assert whole.step == 8
    first = train(
        _config("augment.on_device=False"),
        tmp_path / "split",
        hooks=[_stop_after(5)],
        verbose=False,
    )
    assert first.interrupted and first.step == 5
    second = train(_config(), tmp_path / "split", verbose=False)
    assert second.step == 8 and not second.interrupted
    for a, b in zip(jax.tree.leaves(whole.state), jax.tree.leaves(second.state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    again = train(_config("augment.on_device=False"), tmp_path / "split", verbose=False)
    assert again.already_finished


def test_the_loop_never_waits_for_the_device_between_log_points(watched_run):
    """Between log points (every 4 steps), epoch ends and saves the loop only dispatches: the
    one wait is the session's first step (kept out of img/s)."""
    _, events = watched_run
    assert events == ["jax.block_until_ready"], events


def test_the_sync_watch_catches_a_per_step_read(monkeypatch):
    """The watch of the test above sees what a careless loop does: ``float(loss)``,
    ``np.asarray``, ``jax.device_get`` of a device array, while the step loop runs."""
    watch = _watch_syncs(monkeypatch)
    loss = jnp.ones(()) * 2
    float(loss)  # not armed: outside the step loop
    assert watch.events == []
    watch.armed = True
    watch.disarmed(lambda: float(loss))()  # inside an action
    assert watch.events == []
    float(loss)
    assert watch.events == [READ]
    np.asarray(loss + 1)
    assert watch.events[1:] == ["numpy.asarray"]
    jax.device_get(loss + 2)
    assert watch.events[2] == "jax.device_get"
