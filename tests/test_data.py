"""cnnjax.data: sources, the batch iterator contract, augmentation, prefetch, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from cnnjax.data import (
    AugmentConfig,
    batches,
    crop,
    device_crop_flip,
    device_normalize,
    fit_images,
    flip_horizontal,
    load_dataset,
    normalize,
    num_batches,
    prefetch_to_device,
    sample_augment_params,
)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _tiny_npz(path, n_train=40, n_test=13, size=28, max_label=9):
    rng = np.random.default_rng(0)
    np.savez(
        path,
        x_train=rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        y_train=(np.arange(n_train) % (max_label + 1)).astype(np.uint8),
        x_test=rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        y_test=(np.arange(n_test) % (max_label + 1)).astype(np.uint8),
    )
    return path


def _union_over_processes(source, process_count, **kwargs):
    """Concatenate every process's share of each global batch."""
    per_process = [
        list(batches(source, process_index=p, process_count=process_count, **kwargs))
        for p in range(process_count)
    ]
    return [
        {k: np.concatenate([proc[b][k] for proc in per_process]) for k in per_process[0][b]}
        for b in range(len(per_process[0]))
    ]


def test_digits_is_the_embedded_default(digits):
    assert (len(digits.train), len(digits.test)) == (1347, 450)
    assert digits.image_shape == (32, 32, 1) and digits.num_classes == 10
    batch = next(batches(digits, batch_size=64, train=True))
    assert batch["image"].shape == (64, 32, 32, 1) and batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32
    # Normalised with the training split's statistics: roughly zero mean, unit variance.
    assert abs(batch["image"].mean()) < 0.3 and 0.7 < batch["image"].std() < 1.3
    # Every class is present in both splits (stratified split).
    assert set(np.unique(digits.test.labels)) == set(range(10))


def test_order_is_a_function_of_seed_and_epoch(digits):
    def first(seed, epoch):
        return next(batches(digits, batch_size=32, train=True, seed=seed, epoch=epoch))["label"]

    np.testing.assert_array_equal(first(0, 0), first(0, 0))
    assert not np.array_equal(first(0, 0), first(0, 1))
    assert not np.array_equal(first(0, 0), first(1, 0))


def test_train_drops_remainder_and_resume_skips_consumed_batches(digits):
    epoch = list(batches(digits, batch_size=100, train=True, seed=3, epoch=2))
    assert len(epoch) == num_batches(1347, 100, train=True) == 13
    resumed = list(batches(digits, batch_size=100, train=True, seed=3, epoch=2, start_batch=5))
    assert len(resumed) == 8
    for a, b in zip(epoch[5:], resumed, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])


def test_eval_covers_every_example_once_with_a_mask(digits):
    evals = list(batches(digits, batch_size=128, train=False))
    assert len(evals) == 4 and all(b["image"].shape[0] == 128 for b in evals)
    mask = np.concatenate([b["mask"] for b in evals])
    labels = np.concatenate([b["label"] for b in evals])
    assert mask.sum() == 450
    np.testing.assert_array_equal(labels[mask > 0], digits.test.labels)


@pytest.mark.parametrize("train", [True, False])
def test_process_shards_union_to_the_single_process_batches(digits, train):
    kwargs = dict(batch_size=64, train=train, seed=1, epoch=1)
    kwargs["augment"] = AugmentConfig(padding=2, flip=True)
    single = list(batches(digits, **kwargs))
    union = _union_over_processes(digits, 4, **kwargs)
    assert len(single) == len(union)
    for a, b in zip(single, union, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_npz_source_pads_28_to_32_and_shards(tmp_path):
    ds = load_dataset(f"npz:{_tiny_npz(tmp_path / 'tiny.npz')}", image_size=32)
    assert ds.image_shape == (32, 32, 1) and ds.num_classes == 10
    raw = np.load(tmp_path / "tiny.npz")
    # "auto" pads 28 → 32 (LeNet-5's 32×32 field) rather than resampling.
    np.testing.assert_array_equal(ds.train.images[:, 2:30, 2:30, 0], raw["x_train"])
    assert ds.train.images[:, :2].max() == 0
    union = _union_over_processes(ds, 2, batch_size=8, train=True, seed=0, epoch=0)
    single = list(batches(ds, batch_size=8, train=True, seed=0, epoch=0))
    np.testing.assert_array_equal(union[0]["label"], single[0]["label"])
    assert len(single) == 5


def test_shared_mnist_npz_loads_a_batch(shared_data):
    ds = load_dataset(f"npz:{shared_data / 'mnist.npz'}", image_size=32)
    assert (len(ds.train), len(ds.test)) == (60000, 10000)
    batch = next(batches(ds, batch_size=16, train=False))
    assert batch["image"].shape == (16, 32, 32, 1)
    np.testing.assert_array_equal(batch["label"][:10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9])


def test_folder_source(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 3)):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / cls / f"{i}.png")
    ds = load_dataset(f"folder:{tmp_path}")
    assert ds.num_classes == 2 and ds.image_shape == (12, 10, 3)
    assert (len(ds.train), len(ds.test)) == (12, 6)
    np.testing.assert_array_equal(ds.train.labels, [0] * 6 + [1] * 6)
    first = Image.open(tmp_path / "train" / "cat" / "0.png")
    np.testing.assert_array_equal(ds.train.get(np.array([0]))[0][0], np.asarray(first))
    union = _union_over_processes(ds, 2, batch_size=4, train=True, seed=0, epoch=0)
    single = list(batches(ds, batch_size=4, train=True, seed=0, epoch=0))
    np.testing.assert_array_equal(union[-1]["image"], single[-1]["image"])
    resized = load_dataset(f"folder:{tmp_path}", image_size=8)
    assert resized.train.get(np.arange(3))[0].shape == (3, 8, 8, 3)


def test_tfds_source_under_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=24):
        ds = load_dataset("mnist", image_size=32)
        assert ds.num_classes == 10 and ds.image_shape == (32, 32, 1)
        assert ds.mean == (0.1307,)
        batch = next(batches(ds, batch_size=8, train=True, seed=0, epoch=0))
        evals = list(batches(ds, batch_size=16, train=False))
    assert batch["image"].shape == (8, 32, 32, 1) and batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32 and batch["label"].max() < 10
    assert sum(b["mask"].sum() for b in evals) == len(ds.test)


def test_synthetic_source():
    ds = load_dataset("synthetic:16x16x3", num_classes=7)
    assert ds.image_shape == (16, 16, 3) and ds.num_classes == 7
    assert next(batches(ds, batch_size=4, train=True))["image"].shape == (4, 16, 16, 3)


def test_bad_names_and_paths_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown dataset 'mnsit'.*mnist.*Valid names: digits"):
        load_dataset("mnsit")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(f"npz:{tmp_path / 'missing.npz'}")
    with pytest.raises(ValueError, match="no class sub-folders; lay images out as ROOT/CLASS"):
        load_dataset(f"folder:{tmp_path}")
    with pytest.raises(FileNotFoundError, match="does not exist; lay it out as ROOT/CLASS"):
        load_dataset(f"folder:{tmp_path / 'nowhere'}")
    with pytest.raises(ValueError, match="synthetic:32x32x3"):
        load_dataset("synthetic:big")


def test_labels_out_of_range_are_rejected(tmp_path):
    path = _tiny_npz(tmp_path / "tiny.npz", max_label=9)
    with pytest.raises(ValueError, match=r"label 9 \(y_train\[9\]\) is out of range for the 5 "):
        load_dataset(f"npz:{path}", num_classes=5)
    ds = load_dataset(f"npz:{path}")
    with pytest.raises(ValueError, match="out of range for num_classes=3"):
        next(batches(ds, batch_size=8, train=True, num_classes=3))


def test_batch_size_must_split_over_processes(digits):
    with pytest.raises(ValueError, match="not divisible by the process count 3"):
        next(batches(digits, batch_size=64, train=True, process_count=3))
    with pytest.raises(ValueError, match="larger than the training split"):
        next(batches(digits, batch_size=5000, train=True))


def test_augmentation_functions():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 6, 6, 2), dtype=np.uint8)
    params = sample_augment_params(rng, 5, (6, 6), size=(6, 6), padding=2, flip=False)
    out = crop(images, params["offsets"], (6, 6), padding=2)
    assert out.shape == images.shape and out.dtype == np.uint8
    # Offset (padding, padding) of the padded image is the identity crop.
    np.testing.assert_array_equal(crop(images, np.full((5, 2), 2), (6, 6), padding=2), images)
    flips = np.array([True, False, True, False, False])
    twice = flip_horizontal(flip_horizontal(images, flips), flips)
    np.testing.assert_array_equal(twice, images)
    np.testing.assert_array_equal(flip_horizontal(images, flips)[0], images[0, :, ::-1])
    assert fit_images(images, 10, "pad").shape == (5, 10, 10, 2)
    assert fit_images(images, 12, "resize").shape == (5, 12, 12, 2)


def test_device_identity_crop_then_normalize_matches_host_normalize():
    images = np.random.default_rng(0).integers(0, 256, (3, 4, 4, 2), dtype=np.uint8)
    mean, std = (0.5, 0.25), (0.2, 0.3)
    same = device_crop_flip(images, np.ones((3, 2), np.int32), None, size=(4, 4), padding=1)
    np.testing.assert_array_equal(np.asarray(same), images)
    out = device_normalize(same, mean, std)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.asarray(out), normalize(images, mean, std), rtol=1e-6)


def test_prefetch_preserves_order_and_reraises():
    items = [{"x": np.full(2, i)} for i in range(5)]
    out = list(prefetch_to_device(iter(items), lambda b: b["x"] + 1, size=2))
    np.testing.assert_array_equal(np.stack(out)[:, 0], np.arange(1, 6))

    def failing():
        yield {"x": np.zeros(1)}
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError, match="source broke"):
        list(prefetch_to_device(failing(), lambda b: b))


def test_prefetch_thread_is_joined_when_the_consumer_stops():
    # A run that stops mid-epoch closes the feed while the producer is inside ``put`` (a device
    # transfer in C++). A daemon thread still there at interpreter exit aborted the process
    # (exit 134, "FATAL: exception not rethrown") after a successful `cnnjax train`.
    import threading
    import time

    from cnnjax.data import prefetch_to_device

    def slow_put(batch):
        time.sleep(0.3)
        return batch

    feed = prefetch_to_device(iter(range(10)), slow_put, 2)
    assert next(feed) == 0
    feed.close()
    alive = [t for t in threading.enumerate() if t.name == "cnnjax-prefetch" and t.is_alive()]
    assert not alive


def test_sources_keep_their_names_after_the_split():
    """Dataset, Source and the helpers moved to cnnjax.data.dataset (no loader imports it back);
    cnnjax.data.sources and cnnjax.data.pipeline still export what they did."""
    from cnnjax.data import dataset, pipeline, sources

    for name in ("ArraySource", "Dataset", "Source", "TFDSSource", "check_labels", "fit_images"):
        assert getattr(sources, name) is getattr(dataset, name)
    assert pipeline.IGNORE_INDEX == sources.IGNORE_INDEX == dataset.IGNORE_INDEX == 255
    digits = load_dataset("digits")
    assert digits.mean == dataset.channel_stats(digits.train.images)[0]
