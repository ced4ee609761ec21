"""``oxford_iiit_pet_seg``: TFDS Oxford-IIIT Pet trimaps as 2-class masks, under
``tfds.testing.mock_data`` (default ``MockPolicy.AUTO``, which falls back to the builder's code
and mocks ``tfds.data_source``; ``as_data_source_fn`` supplies records with real trimap values).
"""

from __future__ import annotations

import numpy as np
import pytest

from cnnjax.data import batches, load_dataset
from cnnjax.data.pipeline import IGNORE_INDEX
from cnnjax.data.segmentation import PET_CLASSES, resize_mask, trimap_to_labels

tfds = pytest.importorskip("tensorflow_datasets")

COUNTS = {"train": 6, "test": 4}


def _record(seed: int, height: int, width: int) -> dict:
    """A pet-like record: an ellipse of pet (1) with a border band (3) on background (2)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:height, :width]
    radius = np.hypot((y - height / 2) / (height / 3), (x - width / 2) / (width / 3))
    trimap = np.where(radius < 0.8, 1, np.where(radius < 1.0, 3, 2)).astype(np.uint8)
    return {
        "image": rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
        "segmentation_mask": trimap[..., None],
        "file_name": f"pet_{seed}.jpg",
        "label": seed % 37,
        "species": seed % 2,
    }


def _pet_records(shapes):
    """An ``as_data_source_fn`` for ``mock_data``: lists of :func:`_record` per split."""

    def as_data_source(self, split, decoders=None, deserialize_method=None, **kwargs):
        offset = 0 if split == "train" else 100
        return [_record(offset + i, *shapes[i % len(shapes)]) for i in range(COUNTS[split])]

    return as_data_source


def test_trimap_to_labels_maps_pet_background_and_ignores_the_border():
    trimap = np.array([[1, 2], [3, 1]], np.uint8)
    np.testing.assert_array_equal(trimap_to_labels(trimap), [[0, 1], [IGNORE_INDEX, 0]])
    with pytest.raises(ValueError, match=r"x: trimap value 7 at pixel \(1, 0\) is not 1 \(pet\)"):
        trimap_to_labels(np.array([[1, 2], [7, 0]], np.uint8), "x")


def test_nearest_resizing_keeps_label_values():
    blocks = np.array([[0, 1], [IGNORE_INDEX, 0]], np.uint8)
    up = resize_mask(blocks, 16)  # each label becomes an exact 8×8 block
    np.testing.assert_array_equal(up, np.kron(blocks, np.ones((8, 8), np.uint8)))
    labels = np.random.default_rng(0).choice(np.array([0, 1, IGNORE_INDEX], np.uint8), (37, 53))
    for size in (5, 32, 128):
        out = resize_mask(labels, size)
        assert out.shape == (size, size) and out.dtype == np.uint8
        assert set(np.unique(out)) <= {0, 1, IGNORE_INDEX}


def test_loader_shapes_dtypes_masks_and_batches():
    shapes = [(47, 39), (30, 64), (32, 32)]
    with tfds.testing.mock_data(as_data_source_fn=_pet_records(shapes)):
        ds = load_dataset("oxford_iiit_pet_seg", image_size=32)
        images, masks = ds.train.get(np.arange(len(ds.train)))
        batch = next(batches(ds, batch_size=4, train=True, seed=0, epoch=0))
        default = load_dataset("oxford_iiit_pet_seg")  # 128×128 without image_size
        big_images, big_masks = default.test.get(np.arange(2))
    assert (len(ds.train), len(ds.test)) == (6, 4)
    assert ds.num_classes == 2 and ds.class_names == PET_CLASSES == ("pet", "background")
    assert ds.image_shape == (32, 32, 3) and len(ds.mean) == len(ds.std) == 3
    assert images.shape == (6, 32, 32, 3) and images.dtype == np.uint8
    assert masks.shape == (6, 32, 32) and masks.dtype == np.int32
    assert set(np.unique(masks)) == {0, 1, IGNORE_INDEX}
    # per-channel stats on the [0, 1] scale over the (here: all 6) sampled training images
    pixels = images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(ds.mean, pixels.mean(0), rtol=1e-12)
    np.testing.assert_allclose(ds.std, pixels.std(0), rtol=1e-12)
    # a 32×32 record at image_size 32 is passed through: exactly its pixels and mapped trimap
    record = _record(2, 32, 32)
    np.testing.assert_array_equal(images[2], record["image"])
    np.testing.assert_array_equal(masks[2], trimap_to_labels(record["segmentation_mask"][..., 0]))
    assert masks[2, 16, 16] == 0 and masks[2, 0, 0] == 1  # pet in the middle, background corner
    assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (4, 32, 32) and batch["label"].dtype == np.int32
    assert default.image_shape == (128, 128, 3)
    assert big_images.shape == (2, 128, 128, 3) and big_masks.shape == (2, 128, 128)
    assert set(np.unique(big_masks)) == {0, 1, IGNORE_INDEX}


def test_random_mock_trimaps_and_bad_options_are_clear_errors(tmp_path):
    with tfds.testing.mock_data(num_examples=4):  # random mask bytes 0..255, not trimaps
        with pytest.raises(ValueError, match=r"oxford_iiit_pet example .*trimap value \d+ at"):
            load_dataset("oxford_iiit_pet_seg", image_size=16)
    with pytest.raises(ValueError, match="image_size must be positive, got 0"):
        load_dataset("oxford_iiit_pet_seg", image_size=0)
    with pytest.raises(ValueError, match='not "pad"'):
        load_dataset("oxford_iiit_pet_seg", resize_mode="pad")
    with pytest.raises(FileNotFoundError, match="tfds build oxford_iiit_pet --file_format"):
        load_dataset("oxford_iiit_pet_seg", data_dir=tmp_path)


def test_two_unet_steps_on_mock_pets(tmp_path):
    from cnnjax.train import default_config, train

    config = default_config()
    config.model = "unet"
    config.dataset = "oxford_iiit_pet_seg"
    config.image_size = 32
    config.model_overrides.widths = (4, 8)
    config.model_overrides.padding = 1
    config.batch_size = 4
    config.num_steps = 2
    config.parallel = "none"
    with tfds.testing.mock_data(as_data_source_fn=_pet_records([(40, 48), (32, 32)])):
        result = train(config, tmp_path / "run", verbose=False)
    assert result.step == 2 and not result.interrupted
    test = result.test
    assert 0.0 <= test["mean_iou"] <= 1.0 and np.isfinite(test["loss"])
    assert len(test["iou"]) == 2
    # labelled pixels only: the border band (IGNORE_INDEX) is not counted
    assert 0 < test["count"] < COUNTS["test"] * 32 * 32
