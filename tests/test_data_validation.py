"""Bad data is refused before training (issue 7, item 6): npz arrays, image folders, class names.

Every case of the issue is here: a NaN/inf pixel, one value 1.001, one label 1000, 150 labels for
200 images, one-hot labels, a test set with other channels, missing keys, wrong dtypes, a corrupt
image outside the 256 sampled for statistics, the ``ROOT/CLASS`` layout, class names in eval.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from cnnjax.data import (
    batches,
    load_class_names,
    load_dataset,
    save_class_names,
    stratified_split,
)

REPO = pathlib.Path(__file__).resolve().parents[1]


def _arrays(n_train=200, n_test=50, size=8, seed=0):
    """A valid float [0, 1] set: 10 classes, every class in train."""
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.random((n_train, size, size)).astype(np.float32),
        "y_train": np.arange(n_train) % 10,
        "x_test": rng.random((n_test, size, size)).astype(np.float32),
        "y_test": np.arange(n_test) % 10,
    }


def _save(path, **arrays):
    np.savez(path, **arrays)
    return f"npz:{path}"


def _with(**changes):
    arrays = _arrays()
    for key, change in changes.items():
        arrays[key] = change(arrays[key].copy()) if callable(change) else change
    return arrays


def _set(index, value):
    def change(a):
        a = a.astype(np.asarray(value).dtype) if isinstance(value, str) else a
        a[index] = value
        return a

    return change


# (case, arrays, regex the ValueError must match)
BAD_NPZ = [
    (
        "nan_pixel",
        _with(x_train=_set((17, 3, 5), np.nan)),
        r"x_train: 1 of 12800 values \(the first is x_train\[17, 3, 5\] = nan\) are non-finite "
        r"\(NaN or inf\); pixels must be uint8 .* floats in \[0, 1\]",
    ),
    (
        "inf_pixel",
        _with(x_test=_set((4, 0, 1), -np.inf)),
        r"x_test: 1 of 3200 values \(the first is x_test\[4, 0, 1\] = -inf\) are non-finite",
    ),
    (
        "one_value_1.001",
        _with(x_train=_set((3, 2, 1), 1.001)),
        r"x_train: float pixels fit neither scale: 1 of 12800 values \(the first is "
        r"x_train\[3, 2, 1\] = 1\.001\) are outside \[0, 1\] and 12800 of 12800 values .* are "
        r"not whole numbers in \[0, 255\]",
    ),
    (
        "standardised_pixels",
        _with(x_train=lambda x: x - 0.5),
        r"x_train: float pixels fit neither scale: \d+ of 12800 values .* outside \[0, 1\]",
    ),
    (
        "fractional_0_255_floats",
        _with(x_train=lambda x: x * 255),
        r"fit neither scale: .* not whole numbers in \[0, 255\]",
    ),
    (
        "int16_pixel_256",
        _with(x_train=lambda x: _set((1, 1, 1), 256)(np.rint(x * 255).astype(np.int16))),
        r"x_train: 1 of 12800 values \(the first is x_train\[1, 1, 1\] = 256\) are outside "
        r"\[0, 255\]",
    ),
    (
        "label_1000",
        _with(y_train=_set(5, 1000)),
        r"labels run up to 1000 \(y_train\[5\]\) but 990 of the classes 0\.\.1000 have no "
        r"training example \(the first is 10\).*num_classes",
    ),
    (
        "150_labels_for_200_images",
        _with(y_train=lambda y: y[:150]),
        r"x_train has 200 images but y_train has 150 labels",
    ),
    (
        "test_set_with_3_channels",
        _with(x_test=lambda x: np.repeat(x[..., None], 3, -1)),
        r"x_train images \(200, 8, 8\) have 1 channel\(s\) but x_test images \(50, 8, 8, 3\) "
        r"have 3",
    ),
    (
        "test_images_of_another_size",
        _with(x_test=lambda x: x[:, :6, :6]),
        r"x_train images \(200, 8, 8\) and x_test images \(50, 6, 6\) differ in size",
    ),
    (
        "soft_labels",
        _with(y_train=lambda y: np.full((200, 10), 0.1)),
        r"y_train has shape \(200, 10\) but row 0 is not one-hot",
    ),
    ("float_labels", _with(y_train=lambda y: y.astype(np.float32)), r"y_train has dtype float32"),
    (
        "negative_label",
        _with(y_test=_set(7, -1)),
        r"y_test: 1 of 50 values \(the first is y_test\[7\] = -1\) are negative",
    ),
    ("string_images", _with(x_train=lambda x: x.astype(str)), r"x_train has dtype <U"),
    ("bool_images", _with(x_train=lambda x: x > 0.5), r"x_train has dtype bool"),
    ("labels_as_images", _with(x_train=lambda x: x[:, 0, 0]), r"x_train must be \(N, H, W\)"),
    (
        "channels_first",
        _with(x_train=lambda x: np.repeat(x[:, None], 3, 1)),
        r"x_train has shape \(200, 3, 8, 8\), which looks channels-first",
    ),
    ("empty_test_set", _with(x_test=lambda x: x[:0], y_test=lambda y: y[:0]), r"x_test holds no"),
]


@pytest.mark.parametrize("arrays, message", [c[1:] for c in BAD_NPZ], ids=[c[0] for c in BAD_NPZ])
def test_bad_npz_is_refused_with_the_values(tmp_path, arrays, message):
    name = _save(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=message) as info:
        load_dataset(name)
    text = str(info.value)
    assert str(tmp_path / "bad.npz") in text and "\n" not in text


def test_npz_missing_keys_say_how_to_make_one(tmp_path):
    arrays = _arrays()
    del arrays["y_test"]
    with pytest.raises(ValueError, match=r"lacks the arrays y_test \(it has x_train, y_train, "):
        load_dataset(_save(tmp_path / "three.npz", **arrays))
    with pytest.raises(ValueError, match=r"np.savez.*uint8 0..255.*class indices"):
        load_dataset(_save(tmp_path / "other.npz", images=np.zeros((2, 4, 4))))


def test_npz_that_is_not_an_archive_or_holds_objects(tmp_path):
    (tmp_path / "text.npz").write_text("x_train,y_train\n1,2\n")
    with pytest.raises(ValueError, match=r"is not a readable .npz archive"):
        load_dataset(f"npz:{tmp_path / 'text.npz'}")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(ValueError, match=r"holds a single array, not an .npz archive"):
        load_dataset(f"npz:{tmp_path / 'single.npy'}")
    arrays = _arrays()
    arrays["y_train"] = np.array([str(i) for i in range(200)], dtype=object)
    np.savez(tmp_path / "objects.npz", **arrays)
    with pytest.raises(ValueError, match="y_train cannot be read"):
        load_dataset(f"npz:{tmp_path / 'objects.npz'}")


def test_npz_missing_file_message_is_generic(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_dataset(f"npz:{tmp_path / 'missing.npz'}")
    assert "shared" not in str(info.value) and "np.savez" in str(info.value)


@pytest.mark.parametrize(
    "scale, dtype",
    [(1.0, np.float32), (1.0, np.float64), (255.0, np.float32), (255.0, np.int64)],
    ids=["float01", "float64_01", "float_whole_0_255", "int64_0_255"],
)
def test_value_range_rule_gives_the_same_uint8_pixels(tmp_path, scale, dtype):
    pixels = np.random.default_rng(1).integers(0, 256, (20, 5, 5), dtype=np.uint8)
    x = pixels.astype(np.float64) / 255.0 * scale
    x = np.rint(x).astype(dtype) if scale == 255.0 else x.astype(dtype)
    arrays = {
        "x_train": x,
        "y_train": np.arange(20) % 2,
        "x_test": x[:4],
        "y_test": np.arange(4) % 2,
    }
    ds = load_dataset(_save(tmp_path / "ok.npz", **arrays))
    np.testing.assert_array_equal(ds.train.images[..., 0], pixels)


def test_column_labels_and_any_integer_dtype_are_accepted(tmp_path):
    arrays = _arrays()
    arrays["y_train"] = arrays["y_train"].astype(np.uint16)[:, None]
    arrays["y_test"] = arrays["y_test"].astype(np.int8)
    ds = load_dataset(_save(tmp_path / "column.npz", **arrays))
    assert ds.train.labels.shape == (200,) and ds.train.labels.dtype == np.int32


def test_binary_float_images_are_on_the_0_1_scale(tmp_path):
    x = (np.random.default_rng(2).random((20, 4, 4)) > 0.5).astype(np.float32)
    arrays = {"x_train": x, "y_train": np.arange(20) % 2, "x_test": x, "y_test": np.arange(20) % 2}
    ds = load_dataset(_save(tmp_path / "binary.npz", **arrays))
    assert set(np.unique(ds.train.images)) == {0, 255}


def test_one_hot_labels_are_converted_with_a_note(tmp_path, capsys):
    arrays = _arrays()
    eye = np.eye(12, dtype=np.float32)  # 12 columns: classes 10 and 11 have no example
    arrays["y_train"], arrays["y_test"] = eye[arrays["y_train"]], eye[arrays["y_test"]]
    ds = load_dataset(_save(tmp_path / "onehot.npz", **arrays))
    np.testing.assert_array_equal(ds.train.labels, np.arange(200) % 10)
    assert ds.num_classes == 12 and ds.train.labels.dtype == np.int32
    assert "y_train is one-hot (200, 12): converted to class indices" in capsys.readouterr().err


def test_class_gap_is_accepted_when_the_class_count_is_explicit(tmp_path):
    arrays = _with(y_train=_set(5, 12))  # class 10, 11 absent
    name = _save(tmp_path / "gap.npz", **arrays)
    assert load_dataset(name, num_classes=13).num_classes == 13
    names = np.array([f"class {i}" for i in range(13)])
    named = load_dataset(_save(tmp_path / "named.npz", **arrays, class_names=names))
    assert named.num_classes == 13 and named.class_names[12] == "class 12"
    with pytest.raises(ValueError, match=r"label 12 \(y_train\[5\]\) is out of range for the 12 "):
        load_dataset(_save(tmp_path / "few.npz", **arrays, class_names=names[:12]))
    with pytest.raises(ValueError, match=r"num_classes=14 but npz:.* names 13 classes"):
        load_dataset(f"npz:{tmp_path / 'named.npz'}", num_classes=14)


def test_class_names_of_each_source(tmp_path):
    assert load_dataset("digits").class_names == tuple("0123456789")
    assert load_dataset("synthetic:8x8x1").class_names is None
    assert load_dataset(_save(tmp_path / "plain.npz", **_arrays())).class_names is None


# ---------------------------------------------------------------------------- folders


def _png(path: pathlib.Path, seed: int, size=(6, 6)):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)
    from PIL import Image

    Image.fromarray(pixels).save(path)


def _class_folder(root: pathlib.Path, counts: dict[str, int], size=(6, 6)) -> pathlib.Path:
    for c, (name, n) in enumerate(counts.items()):
        for i in range(n):
            _png(root / name / f"{i:03d}.png", seed=100 * c + i, size=size)
    return root


def _corrupt(path: pathlib.Path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated: no IEND, short IDAT


def test_corrupt_image_outside_the_statistics_sample_fails_before_training(tmp_path, capsys):
    root = _class_folder(tmp_path / "data" / "train", {"a": 150, "b": 150}).parent
    _class_folder(root / "test", {"a": 3, "b": 3})
    sampled = set(np.linspace(0, 299, 256).astype(int).tolist())
    victim = next(i for i in range(299, 0, -1) if i not in sampled)  # never decoded for stats
    bad = root / "train" / "b" / f"{victim - 150:03d}.png"
    _corrupt(bad)
    (root / "test" / "a" / "001.png").write_text("not an image")
    with pytest.raises(ValueError) as info:
        load_dataset(f"folder:{root}")
    text = str(info.value)
    assert text.startswith(f"2 of 306 image files under {root} cannot be read: train/b/")
    assert str(bad.relative_to(root)) in text and "test/a/001.png" in text
    assert "--skip-bad-files" in text and "\n" not in text

    ds = load_dataset(f"folder:{root}", skip_bad_files=True)
    assert (len(ds.train), len(ds.test)) == (299, 5)
    assert bad not in ds.train.paths
    assert "skipping 2 unreadable image file(s) of 306" in capsys.readouterr().err
    every = list(batches(ds.train, batch_size=64, train=False, mean=(0.5,), std=(0.2,)))
    assert sum(b["mask"].sum() for b in every) == 299  # every kept file decodes


def test_truncated_jpeg_is_found_by_the_header_check(tmp_path):
    from PIL import Image

    root = tmp_path / "jpg"
    for split in ("train", "test"):
        for c in ("x", "y"):
            (root / split / c).mkdir(parents=True)
            for i in range(2):
                pixels = np.random.default_rng(i).integers(0, 256, (32, 32, 3), np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.jpg")
    jpeg = root / "train" / "y" / "1.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[:-4])  # the header opens and verifies; the end is gone
    with pytest.raises(ValueError, match=r"train/y/1.jpg \(truncated JPEG"):
        load_dataset(f"folder:{root}")


def test_image_damaged_after_loading_names_the_file(tmp_path):
    root = _class_folder(tmp_path / "r" / "train", {"a": 4, "b": 4}).parent
    _class_folder(root / "test", {"a": 1, "b": 1})
    ds = load_dataset(f"folder:{root}")
    (root / "train" / "a" / "002.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match=r"cannot decode image .*train/a/002.png"):
        ds.train.get(np.arange(4))


def test_skipping_every_test_image_is_an_error(tmp_path):
    root = _class_folder(tmp_path / "s" / "train", {"a": 2, "b": 2}).parent
    for name in ("a", "b"):
        (root / "test" / name).mkdir(parents=True)
        (root / "test" / name / "0.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="no readable images left in the test split"):
        load_dataset(f"folder:{root}", skip_bad_files=True)


def test_header_check_runs_once_per_unchanged_folder(tmp_path, monkeypatch):
    from cnnjax.data import validate

    root = _class_folder(tmp_path / "c", {"a": 3, "b": 3})
    calls = []
    original = validate._header_problem
    monkeypatch.setattr(validate, "_header_problem", lambda p: calls.append(p) or original(p))
    load_dataset(f"folder:{root}", val_split=0.5)
    load_dataset(f"folder:{root}", val_split=0.5, image_size=8)  # the loop's reload at 32×32
    assert len(calls) == 6
    _corrupt(root / "b" / "001.png")  # new size and mtime: checked again, and found
    with pytest.raises(ValueError, match=r"1 of 6 image files .* b/001.png"):
        load_dataset(f"folder:{root}", val_split=0.5)
    assert len(calls) == 12


def test_class_folder_layout_with_a_seeded_stratified_val_split(tmp_path):
    root = _class_folder(tmp_path / "pets", {"cat": 10, "dog": 20, "emu": 5})
    with pytest.raises(ValueError, match=r"has no test split .*--val-split FRACTION"):
        load_dataset(f"folder:{root}")
    ds = load_dataset(f"folder:{root}", val_split=0.2, seed=3)
    assert ds.class_names == ("cat", "dog", "emu") and ds.num_classes == 3
    assert np.bincount(ds.test.labels).tolist() == [2, 4, 1]  # 20 % of every class
    assert np.bincount(ds.train.labels).tolist() == [8, 16, 4]
    train, test = set(ds.train.paths), set(ds.test.paths)
    assert not train & test and len(train | test) == 35
    for path, label in zip(ds.test.paths, ds.test.labels, strict=True):
        assert path.parent.name == ds.class_names[label]
    again = load_dataset(f"folder:{root}", val_split=0.2, seed=3)
    assert again.test.paths == ds.test.paths
    other = load_dataset(f"folder:{root}", val_split=0.2, seed=4)
    assert other.test.paths != ds.test.paths


def test_val_split_only_where_there_is_no_test_split(tmp_path):
    root = _class_folder(tmp_path / "d" / "train", {"a": 4, "b": 4}).parent
    ds = load_dataset(f"folder:{root}", val_split=0.25)  # ROOT/train only
    assert (len(ds.train), len(ds.test)) == (6, 2)
    _class_folder(root / "test", {"a": 1, "b": 1})
    with pytest.raises(ValueError, match=r"val_split=0.25 .* but .*test exists"):
        load_dataset(f"folder:{root}", val_split=0.25)
    with pytest.raises(ValueError, match=r"val_split=0.1 applies to folder:ROOT"):
        load_dataset("digits", val_split=0.1)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5, 1.5])
def test_stratified_split_refuses_fractions_outside_0_1(fraction):
    with pytest.raises(ValueError, match=r"val_split must be a fraction in \(0, 1\)"):
        stratified_split(np.zeros(10, int), fraction, 0)


def test_stratified_split_keeps_a_training_example_per_class():
    labels = np.array([0] * 7 + [1] * 1 + [2] * 3)
    train, test = stratified_split(labels, 0.5, seed=0)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(11))
    assert np.bincount(labels[test], minlength=3).tolist() == [4, 0, 2]
    with pytest.raises(ValueError, match="leaves no test image"):
        stratified_split(np.arange(5), 0.3, 0)


# ---------------------------------------------------------------------------- class names


def test_class_names_round_trip(tmp_path):
    ds = load_dataset("digits")
    path = save_class_names(tmp_path, ds)
    assert json.loads(path.read_text()) == list("0123456789")
    assert load_class_names(tmp_path) == tuple("0123456789")
    assert load_class_names(tmp_path / "none") is None
    assert save_class_names(tmp_path / "syn", load_dataset("synthetic:4x4x1")) is None
    path.write_text("{broken")
    with pytest.raises(ValueError, match=r"class_names.json is not valid JSON"):
        load_class_names(tmp_path)


def test_folder_run_saves_class_names_and_eval_shows_them(tmp_path, monkeypatch, capsys):
    import matplotlib.figure

    from cnnjax.cli import main

    counts = {"circle": 12, "square": 12, "star": 12}
    root = _class_folder(tmp_path / "shapes", counts, size=(32, 32))  # LeNet-5's input
    _corrupt(root / "star" / "011.png")
    workdir = tmp_path / "run"
    argv = ["train", "lenet5", "--dataset", f"folder:{root}", "--val-split", "0.25"]
    argv += ["--skip-bad-files", "--epochs", "1", "--batch-size", "9", "--parallel", "none"]
    argv += ["--impl", "xla"]  # compiles faster; the ops are not under test here
    assert main([*argv, "--workdir", str(workdir), "--quiet"]) == 0
    assert "skipping 1 unreadable image file(s) of 36" in capsys.readouterr().err
    assert load_class_names(workdir) == ("circle", "square", "star")

    ticks = []

    def record(fig, *args, **kwargs):
        ax = fig.axes[0]
        ticks.append(
            (
                [t.get_text() for t in ax.get_xticklabels()],
                [t.get_text() for t in ax.get_yticklabels()],
            )
        )

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)
    assert main(["eval", str(workdir)]) == 0
    assert ticks == [(["circle", "square", "star"], ["circle", "square", "star"])]
    assert " in 9), loss " in capsys.readouterr().out  # 12, 12, 11 images: 3 + 3 + 3 held out


# ---------------------------------------------------------------------------- the CLI


def _cli(*args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    code = "import sys; from cnnjax.cli import main; sys.exit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_refuses_a_nan_npz_before_training(tmp_path):
    name = _save(tmp_path / "nan.npz", **_with(x_train=_set((17, 3, 5), np.nan)))
    result = _cli("train", "lenet5", "--dataset", name, "--workdir", "run", cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and str(tmp_path / "nan.npz") in lines[0] and "non-finite" in lines[0]
    assert not (tmp_path / "run").exists()  # nothing written: refused before training


def test_cli_lists_a_corrupt_folder_image_before_training(tmp_path):
    root = _class_folder(tmp_path / "imgs", {"a": 5, "b": 5})
    _corrupt(root / "b" / "004.png")
    args = ("train", "lenet5", "--dataset", f"folder:{root}", "--val-split", "0.2")
    result = _cli(*args, "--workdir", "run", cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "b/004.png" in lines[0] and "--skip-bad-files" in lines[0]
    assert not (tmp_path / "run").exists()


def test_tfds_class_names_come_from_the_label_feature():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=8):
        ds = load_dataset("mnist")
    assert ds.class_names == tuple(str(d) for d in range(10))


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(
    counts=st.lists(st.integers(1, 30), min_size=1, max_size=6),
    fraction=st.floats(0.05, 0.95),
    seed=st.integers(0, 2**16),
)
def test_stratified_split_properties(counts, fraction, seed):
    labels = np.repeat(np.arange(len(counts)), counts)
    np.random.default_rng(seed).shuffle(labels)
    expected = [min(int(np.floor(fraction * n + 0.5)), n - 1) for n in counts]
    if sum(expected) == 0:
        with pytest.raises(ValueError, match="leaves no test image"):
            stratified_split(labels, fraction, seed)
        return
    train, test = stratified_split(labels, fraction, seed)
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(len(labels)))
    assert np.bincount(labels[test], minlength=len(counts)).tolist() == expected
    again = stratified_split(labels, fraction, seed)
    assert np.array_equal(again[1], test)
