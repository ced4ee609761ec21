"""Input checking of ``cnnjax bench`` (ops, train, data) and of the augmentation geometry and
model input sizes behind ``cnnjax train``: each bad value fails fast with one line naming the
option (exit 2), before any timing or training."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cnnjax.cli import main

TINY_DATA = ["--tiny", "--augment-on", "host"]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no error printed"
    return err[-1]


def _class_folder(root, classes=2, per_class=6, size=8):
    """ROOT/CLASS/i.png: class folders only, no test split."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"c{c}" / f"{i}.png")
    return root


# --- 1. folder:ROOT of class folders ------------------------------------------------------------


@pytest.mark.parametrize("extra", [[], ["--val-split", "0.5", "--skip-bad-files"]])
def test_bench_data_runs_on_class_folders(tmp_path, capsys, extra):
    root = _class_folder(tmp_path / "root", per_class=10)
    if extra:
        (root / "c0" / "bad.png").write_bytes(b"not a png")
    code = main(["bench", "data", f"folder:{root}", *TINY_DATA, "--padding", "1", *extra])
    out = capsys.readouterr().out
    assert code == 0
    assert "host augmentation" in out


def test_bench_data_split_smaller_than_batch(tmp_path, capsys):
    root = _class_folder(tmp_path / "root", per_class=3)
    code = main(["bench", "data", f"folder:{root}", *TINY_DATA, "--val-split", "0.4"])
    assert code == 2
    assert "--batch 8 is larger than the training split" in _error_line(capsys)


# --- 2. output paths checked (and their folders made) before timing -----------------------------


def test_bench_data_append_md_creates_its_folder(tmp_path, capsys):
    md, js = tmp_path / "newdir" / "B.md", tmp_path / "nd2" / "x.json"
    args = ["bench", "data", "digits", *TINY_DATA, "--append-md", str(md), "--json", str(js)]
    assert main(args) == 0
    assert "bench data digits" in md.read_text()
    assert json.loads(js.read_text())["results"]


@pytest.mark.parametrize("flag", ["--append-md", "--json"])
def test_bench_unwritable_output_fails_before_timing(tmp_path, capsys, flag):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(["bench", "data", "digits", *TINY_DATA, flag, str(blocker / "sub" / "out")])
    captured = capsys.readouterr()
    assert code == 2
    assert flag in captured.err.strip().splitlines()[-1]
    assert "img/s" not in captured.out  # nothing was timed


def test_bench_output_that_is_a_folder_fails(tmp_path, capsys):
    code = main(["bench", "data", "digits", *TINY_DATA, "--append-md", str(tmp_path)])
    assert code == 2
    assert "--append-md" in _error_line(capsys)


# --- 3. option values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "suite, args, flag",
    [
        ("data", ["--warmup", "-1"], "--warmup"),
        ("data", ["--workers", "0,,2"], "--workers"),
        ("data", ["--workers", "a"], "--workers"),
        ("data", ["--workers", "-1"], "--workers"),
        ("data", ["--augment-on", "host,host"], "--augment-on"),
        ("data", ["--augment-on", "gpu"], "--augment-on"),
        ("data", ["--tiny", "--batch", "0"], "--batch"),
        ("data", ["--tiny", "--steps", "0"], "--steps"),
        ("data", ["--tiny", "--repeats", "0"], "--repeats"),
        ("data", ["--crop-size", "0"], "--crop-size"),
        ("data", ["--crop-size", "-3"], "--crop-size"),
        ("data", ["--image-size", "0"], "--image-size"),
        ("data", ["--padding", "-1"], "--padding"),
        ("train", ["--tiny", "--batch", "0"], "--batch"),
        ("train", ["--warmup", "-1"], "--warmup"),
        ("train", ["--image-size", "0"], "--image-size"),
        ("train", ["--compile-threads", "0"], "--compile-threads"),
        ("train", ["--impl", "custom,custom"], "--impl"),
        ("train", ["--dtype", "float32,"], "--dtype"),
        ("ops", ["--batch", "0"], "--batch"),
        ("ops", ["--repeats", "x"], "--repeats"),
    ],
)
def test_bench_bad_option_values_exit_2_naming_the_option(capsys, suite, args, flag):
    target = {"data": ["digits"], "train": ["lenet5"], "ops": []}[suite]
    with pytest.raises(SystemExit) as exc:
        main(["bench", suite, *target, *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"error: {flag} must be" in err[0], err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--crop-size", "100"], "--crop-size must be in [1, image size + 2 * --padding]"),
        (["--padding", "0", "--crop-size", "9"], "[1, 8 + 2 * 0] = [1, 8] for 8x8 images, got 9"),
    ],
)
def test_bench_data_crop_larger_than_padded_image(capsys, args, message):
    code = main(["bench", "data", "digits", "--image-size", "8", *TINY_DATA, *args])
    assert code == 2
    assert message in _error_line(capsys)


# --- 4. augment geometry in cnnjax train ------------------------------------------------------


@pytest.mark.parametrize(
    "setting, message",
    [
        ("augment.padding=-1", "augment.padding must be >= 0"),
        ("augment.crop_size=40", "[1, 32 + 2 * 0] = [1, 32] for 32x32 images, got 40"),
        ("augment.crop_size=-3", "augment.crop_size must be >= 1, got -3"),
        ("augment.crop_size=0", "augment.crop_size must be >= 1, got 0"),
    ],
)
def test_train_augment_geometry(tmp_path, capsys, setting, message):
    code = main(["train", "lenet5", "--set", setting, "--workdir", str(tmp_path / "w")])
    assert code == 2
    assert message in _error_line(capsys)


def test_check_augment_geometry_accepts_valid_crops():
    from cnnjax.data.augment import check_augment_geometry

    check_augment_geometry(4, 40, (32, 32))  # 32 + 2 * 4 = 40: the largest crop
    check_augment_geometry(0, None, (8, 8))
    check_augment_geometry(0, 1, (8, 8))
    with pytest.raises(ValueError, match="--crop-size"):
        check_augment_geometry(4, 41, (32, 48), names={"crop_size": "--crop-size"})


# --- 5. minimum input size of every registered model ------------------------------------------


def test_every_registered_model_checks_its_minimum_input_size():
    import jax
    import jax.numpy as jnp

    from cnnjax.models import create_model, get_model_info, list_models

    for name in list_models(task=None):
        info = get_model_info(name)
        size = info.min_input_size
        if size <= 1:
            continue
        model = create_model(name, num_classes=info.default_num_classes)
        x = jax.ShapeDtypeStruct((1, size - 1, size - 1, info.input_shape[2]), jnp.float32)
        with pytest.raises(ValueError, match=f"minimum input size is {size}x{size}"):
            jax.eval_shape(lambda x, m=model: m.init(jax.random.key(0), x, train=False), x)


def test_unet_minimum_input_size_formula():
    import jax
    import jax.numpy as jnp

    from cnnjax.models.unet import UNet, min_input_size

    assert min_input_size(4, 0) == 188  # the paper net's registered minimum
    assert min_input_size(4, 1) == 16 and min_input_size(2, 0) == 44
    for padding, size in ((0, 44), (1, 4)):
        model = UNet(widths=(2, 4, 8), padding=padding)
        init = lambda x, m=model: m.init(jax.random.key(0), x)  # noqa: E731
        jax.eval_shape(init, jax.ShapeDtypeStruct((1, size, size, 1), jnp.float32))
        with pytest.raises(ValueError, match=f"H, W >= {size}"):
            jax.eval_shape(init, jax.ShapeDtypeStruct((1, size - 1, size - 1, 1), jnp.float32))


def test_train_unet_on_small_images_names_minimum_and_fix(tmp_path, capsys):
    code = main(["train", "unet", "--dataset", "digits_seg", "--workdir", str(tmp_path / "w")])
    assert code == 2
    line = _error_line(capsys)
    assert "UNet (unet" in line and "H, W >= 188" in line
    assert "model_overrides.padding=1" in line
