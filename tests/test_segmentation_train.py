"""The segmentation task in the one training loop: ``cnnjax train unet --dataset digits_seg``
(metrics.jsonl records with pixel accuracy and mean IoU), ``cnnjax eval`` (IoU lines and the
masks PNG), resume, and the task / label checks of ``build_run``."""

from __future__ import annotations

import functools
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnjax.data.sources import check_labels
from cnnjax.models import create_model
from cnnjax.train import default_config
from cnnjax.train.loop import build_run
from cnnjax.train.state import create_train_state
from cnnjax.train.tasks import Segmentation, segmentation_train_step

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = [
    "--set",
    "model_overrides.widths=(4,8)",
    "--set",
    "model_overrides.padding=1",
    "--batch-size",
    "16",
    "--epochs",
    "1",
    "--set",
    "num_steps=4",
    "--set",
    "checkpoint.every_steps=2",
]


def _cnnjax(*args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    """Run the ``cnnjax`` console script (as a user does) on this checkout's code."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    script = pathlib.Path(sys.executable).with_name("cnnjax")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "cnnjax.cli"]
    return subprocess.run(
        [*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def _records(workdir: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def unet_run(tmp_path_factory) -> pathlib.Path:
    """``cnnjax train unet --dataset digits_seg`` for 4 steps (checkpoints at 2 and 4)."""
    workdir = tmp_path_factory.mktemp("seg") / "unet"
    result = _cnnjax(
        "train", "unet", "--dataset", "digits_seg", "--workdir", str(workdir), *TINY, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert "mean IoU" in result.stdout and "pixels" in result.stdout, result.stdout
    return workdir


def test_cli_train_writes_pixel_accuracy_and_mean_iou(unet_run):
    records = _records(unet_run)
    assert [(r["step"], r["split"]) for r in records] == [(4, "train"), (4, "test")]
    test = records[-1]
    assert test["count"] == 500 * 32 * 32  # labelled pixels of the test scenes
    assert test["accuracy"] == test["pixel_accuracy"]
    assert 0.0 <= test["mean_iou"] <= test["pixel_accuracy"] <= 1.0
    assert len(test["iou"]) == 11  # per-class IoU at the final evaluation
    present = [x for x in test["iou"] if x is not None]
    assert test["mean_iou"] == pytest.approx(np.mean(present))
    assert 0.0 <= records[0]["accuracy"] <= 1.0  # train: pixel accuracy
    config = json.loads((unet_run / "config.json").read_text())
    assert config["task"] is None  # the model's registry task
    assert sorted(p.name for p in (unet_run / "checkpoints").iterdir()) == ["2", "4"]


def test_cli_eval_prints_iou_and_writes_the_masks_png(unet_run):
    result = _cnnjax("eval", str(unet_run), cwd=ROOT)
    assert result.returncode == 0, result.stderr
    test = _records(unet_run)[-1]
    assert f"mean IoU {test['mean_iou']:.4f}" in result.stdout, result.stdout
    assert f"pixel accuracy {test['pixel_accuracy']:.2%}" in result.stdout
    assert result.stdout.count("per-class IoU:") == 1 and " 10 " in result.stdout
    png = unet_run / "masks_test_step4.png"
    header = png.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    # 8 rows (image, ground truth, predicted) of 2 in × 3 panels of 2 in at 100 dpi
    assert int.from_bytes(header[16:20], "big") == 600
    assert int.from_bytes(header[20:24], "big") == 1600


def test_cli_resume_after_losing_the_last_checkpoint_ends_identically(unet_run, tmp_path):
    workdir = tmp_path / "resumed"
    shutil.copytree(unet_run, workdir)
    shutil.rmtree(workdir / "checkpoints" / "4")  # as if stopped after the save at step 2
    result = _cnnjax(
        "train", "unet", "--dataset", "digits_seg", "--workdir", str(workdir), *TINY, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert "resuming from" in result.stdout and "(step 2)" in result.stdout, result.stdout
    old, new = _records(unet_run), _records(workdir)
    assert [(r["step"], r["split"]) for r in new] == [(4, "train"), (4, "test")]
    for key in ("loss", "pixel_accuracy", "mean_iou", "iou"):
        assert new[-1][key] == old[-1][key], key


def _config(**changes):
    config = default_config()
    config.model = "unet"
    config.dataset = "digits_seg"
    config.model_overrides.widths = (4, 8)
    config.model_overrides.padding = 1
    for key, value in changes.items():
        config[key] = value
    return config


def test_build_run_takes_the_task_from_the_model_and_picks_its_steps():
    run = build_run(_config())
    assert isinstance(run.task, Segmentation) and run.task.name == "segmentation"
    assert run.input_shape == (32, 32, 1)  # not refitted to U-Net's paper input
    assert run.host_augment is None or not (run.host_augment.flip or run.host_augment.padding)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"task": "classification"}, "is a segmentation model"),
        ({"task": "detection"}, "task must be one of"),
        ({"label_smoothing": 0.1}, "label_smoothing is classification-only"),
    ],
)
def test_build_run_rejects_a_wrong_task_or_option(changes, message):
    with pytest.raises(ValueError, match=message):
        build_run(_config(**changes))


def test_build_run_accepts_augmentation_for_segmentation():
    """Crop and flip move the masks with their images (tests/test_input_pipeline.py)."""
    config = _config()
    config.augment.flip, config.augment.padding = True, 2
    run = build_run(config)
    assert run.host_augment.flip and run.host_augment.padding == 2


def test_classification_model_refuses_the_segmentation_task():
    config = default_config()
    config.model, config.task = "lenet5", "segmentation"
    with pytest.raises(ValueError, match="is a classification model"):
        build_run(config)


def test_per_pixel_labels_accept_ignore_index_and_name_the_bad_pixel():
    labels = np.full((2, 3, 3), 10, np.int32)
    labels[0, 0, 0] = 255
    check_labels(labels, 11, "batch 0", ignore_index=255)
    labels[1, 2, 1] = 11
    with pytest.raises(ValueError, match=r"label 11 \(example 1 pixel \(2, 1\)"):
        check_labels(labels, 11, "batch 0", ignore_index=255)
    with pytest.raises(ValueError, match="label 255"):
        check_labels(labels[:1], 11, "batch 0")


def test_segmentation_step_skips_a_non_finite_batch():
    model = create_model("unet", num_classes=3, widths=(2, 4), padding=1)
    tx = optax.adam(1e-2)
    state = create_train_state(model, tx, seed=0, input_shape=(8, 8, 1))
    step = jax.jit(functools.partial(segmentation_train_step, model=model, tx=tx))
    batch = {"image": jnp.full((2, 8, 8, 1), jnp.nan), "label": jnp.zeros((2, 8, 8), jnp.int32)}
    new, metrics = step(state, batch)
    assert float(metrics["skipped"]) == 1 and float(metrics["nonfinite"]) == 1
    assert float(metrics["loss"]) == 0 and float(metrics["confusion"].sum()) == 0
    same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), new.params, state.params)
    assert all(jax.tree.leaves(same)) and int(new.step) == 1
    batch["image"] = jnp.ones((2, 8, 8, 1))
    new, metrics = step(state, batch)
    assert float(metrics["skipped"]) == 0 and float(metrics["count"]) == 2 * 8 * 8


def test_sharded_segnet_steps_match_one_device():
    """The segmentation steps under the loop's drivers: SegNet's BatchNorm (``axis_name``)
    uses global-batch statistics, so a sharded step equals the single-device one."""
    from cnnjax.train.parallel import make_driver
    from cnnjax.train.tasks import segmentation_eval_step

    model = create_model("segnet", num_classes=3, stages=((4, 1), (8, 1)))
    # SGD: Adam would turn the ~1e-9 gradient of the conv biases under BatchNorm (noise) into
    # full-size steps, so biases would differ by lr-sized amounts between reduction orders
    tx = optax.sgd(0.1)
    init = jax.device_get(create_train_state(model, tx, seed=0, input_shape=(8, 8, 1)))
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.normal(size=(8, 8, 8, 1)).astype(np.float32),
        "label": rng.integers(0, 3, size=(8, 8, 8)).astype(np.int32),
        "mask": np.ones(8, np.float32),
    }
    out = {}
    for kind in ("none", "sharded"):
        driver = make_driver(
            kind,
            functools.partial(segmentation_train_step, model=model, tx=tx),
            functools.partial(segmentation_eval_step, model=model),
        )
        state = driver.place_state(init)
        for _ in range(2):
            state, metrics = driver.train_step(state, driver.put_batch(batch))
            assert driver.host_state(metrics)["skipped"] == 0
        confusion = driver.host_state(driver.eval_step(state, driver.put_batch(batch)))
        out[kind] = driver.host_state(state), confusion["confusion"]
    (one, c1), (sharded, c8) = out["none"], out["sharded"]
    diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), one.params, sharded.params)
    assert max(jax.tree.leaves(diffs)) <= 1e-5
    assert _max_stats_diff(one.batch_stats, sharded.batch_stats) <= 1e-5
    np.testing.assert_array_equal(c1, c8)
    assert c1.sum() == 8 * 8 * 8


def _max_stats_diff(a, b) -> float:
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b)))
