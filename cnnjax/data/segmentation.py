"""``digits_seg``: an offline semantic-segmentation set of scenes made of the embedded digits.

Construction (deterministic, no download): the real 8×8 handwritten digits of
``sklearn.datasets.load_digits`` (the ``digits`` data set's images and its 1347 / 450
train/test split, so no test digit appears in a training scene) are resized to
``DIGIT_SIZE``×``DIGIT_SIZE`` (bilinear) and placed on a black ``CANVAS``×``CANVAS`` canvas, one
per quadrant slot of ``CANVAS/2`` pixels at a random offset inside the slot (so digits never
overlap); each slot is filled with probability ``FILL`` (at least one digit per scene). The
per-pixel label is the digit's class (0-9) where its ink is (intensity ``>= INK`` of 255) and
the background class ``BACKGROUND = 10`` elsewhere. ``numpy.random.default_rng(seed)`` draws the
digits, slots and offsets (seed 0 for train, 1 for test).

Size: 2000 train and 500 test scenes, images ``(32, 32, 1)`` uint8, masks ``(32, 32)`` int32,
11 classes. Background is about 81 % of the pixels, so mean IoU over the 11 classes (not pixel
accuracy) is the number to watch.

``oxford_iiit_pet_seg``: the Oxford-IIIT Pet trimaps (Parkhi et al. 2012, TFDS
``oxford_iiit_pet``) as two-class masks, read with ``tfds.data_source`` (prepare once:
``tfds build oxford_iiit_pet --file_format=array_record``), see :func:`load_oxford_iiit_pet_seg`.
"""

from __future__ import annotations

import os

import numpy as np

from cnnjax.data.dataset import (
    IGNORE_INDEX,
    ArraySource,
    Dataset,
    TFDSSource,
    open_tfds_split,
    sampled_stats,
)
from cnnjax.data.digits import load_digits

__all__ = [
    "BACKGROUND",
    "CANVAS",
    "PET_CLASSES",
    "PetSegmentationSource",
    "load_digits_seg",
    "load_oxford_iiit_pet_seg",
    "make_scenes",
    "resize_mask",
    "trimap_to_labels",
]

CANVAS = 32
DIGIT_SIZE = 12
FILL = 0.75
INK = 64
BACKGROUND = 10
NUM_TRAIN, NUM_TEST = 2000, 500


def make_scenes(
    digits: np.ndarray, labels: np.ndarray, count: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` scenes ``(count, CANVAS, CANVAS, 1)`` uint8 and masks ``(count, CANVAS, CANVAS)``
    int32 from ``digits`` ``(M, DIGIT_SIZE, DIGIT_SIZE, 1)`` uint8 with classes ``labels``."""
    rng = np.random.default_rng(seed)
    slot = CANVAS // 2
    images = np.zeros((count, CANVAS, CANVAS, 1), np.uint8)
    masks = np.full((count, CANVAS, CANVAS), BACKGROUND, np.int32)
    for n in range(count):
        filled = rng.random(4) < FILL
        if not filled.any():
            filled[rng.integers(4)] = True
        for s in np.flatnonzero(filled):
            pick = rng.integers(len(digits))
            dy, dx = rng.integers(0, slot - DIGIT_SIZE + 1, size=2)
            y0, x0 = (s // 2) * slot + dy, (s % 2) * slot + dx
            window = (n, slice(y0, y0 + DIGIT_SIZE), slice(x0, x0 + DIGIT_SIZE))
            digit = digits[pick, ..., 0]
            images[(*window, 0)] = digit
            masks[window] = np.where(digit >= INK, labels[pick], BACKGROUND)
    return images, masks


def load_digits_seg():
    """The ``digits_seg`` :class:`cnnjax.data.Dataset` (see the module docstring)."""
    digits = load_digits(DIGIT_SIZE, "resize")
    splits = {}
    for seed, (name, count) in enumerate((("train", NUM_TRAIN), ("test", NUM_TEST))):
        source = getattr(digits, name)
        images, masks = make_scenes(source.images, source.labels, count, seed)
        splits[name] = ArraySource(images, masks)
    pixels = splits["train"].images.astype(np.float64) / 255.0
    return Dataset(
        name="digits_seg",
        train=splits["train"],
        test=splits["test"],
        num_classes=11,
        image_shape=(CANVAS, CANVAS, 1),
        mean=(float(pixels.mean()),),
        std=(float(pixels.std()),),
        description=(
            f"scenes of up to 4 sklearn digits on a {CANVAS}x{CANVAS} canvas, per-pixel digit "
            f"class or background ({BACKGROUND}); {NUM_TRAIN} train / {NUM_TEST} test"
        ),
    )


PET_CLASSES = ("pet", "background")
PET_IMAGE_SIZE = 128  # default side (the Keras segmentation tutorial's 128×128)
PET_STATS_SAMPLE = 256  # training images (evenly spaced) behind the per-channel mean/std
# trimap value → label: 1 pet → 0, 2 background → 1, 3 border → ignored; other values invalid
_TRIMAP_LUT = np.full(256, -1, np.int16)
_TRIMAP_LUT[[1, 2, 3]] = (0, 1, IGNORE_INDEX)


def trimap_to_labels(trimap: np.ndarray, where: str = "trimap") -> np.ndarray:
    """Oxford-IIIT Pet trimap ``(H, W)`` (1 pet, 2 background, 3 border) → uint8 labels
    ``(H, W)``: 0 pet, 1 background, 255 border (``IGNORE_INDEX``: no loss, no metric).

    Raises ``ValueError`` naming ``where``, the first bad value and its pixel when a value is
    not 1, 2 or 3."""
    trimap = np.asarray(trimap, np.uint8)
    labels = _TRIMAP_LUT[trimap]
    if (labels < 0).any():
        y, x = np.argwhere(labels < 0)[0]
        raise ValueError(
            f"{where}: trimap value {int(trimap[y, x])} at pixel ({y}, {x}) is not 1 (pet), "
            "2 (background) or 3 (border); the segmentation_mask feature is corrupt"
        )
    return labels.astype(np.uint8)


def resize_mask(labels: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of uint8 labels ``(H, W)`` to ``(size, size)``: every output
    pixel copies one input pixel (PIL ``NEAREST``), so no new label values appear."""
    from PIL import Image

    if labels.shape == (size, size):
        return labels
    return np.asarray(Image.fromarray(labels).resize((size, size), Image.Resampling.NEAREST))


def _resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a uint8 ``(H, W, 3)`` image to ``(size, size, 3)`` (aspect not kept,
    as the masks, so pixels and labels stay aligned)."""
    from PIL import Image

    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


class PetSegmentationSource(TFDSSource):
    """A split of TFDS ``oxford_iiit_pet``: ``get`` gives uint8 images ``(n, size, size, 3)``
    and int32 per-pixel labels ``(n, size, size)`` (see :func:`trimap_to_labels`)."""

    def __init__(self, data_source, size: int, threads: int = 8):
        self._size = size
        super().__init__(data_source, fit=lambda image: image, threads=threads)

    def decode(self, record) -> tuple[np.ndarray, np.ndarray]:
        image = np.asarray(record["image"], np.uint8)
        if image.ndim == 2 or image.shape[-1] == 1:
            image = np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=-1)
        mask = np.asarray(record["segmentation_mask"], np.uint8)  # (H, W, 1)
        trimap = mask.reshape(mask.shape[:2])
        where = f"oxford_iiit_pet example {record.get('file_name', '?')!r}"
        labels = trimap_to_labels(trimap, where)
        return _resize_image(image, self._size), resize_mask(labels, self._size)


def load_oxford_iiit_pet_seg(
    data_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
    resize_mode: str = "auto",
):
    """The ``oxford_iiit_pet_seg`` :class:`cnnjax.data.Dataset`: Oxford-IIIT Pet (Parkhi,
    Vedaldi, Zisserman & Jawahar 2012, CVPR; TFDS ``oxford_iiit_pet`` 3.x/4.x, 3,680 train /
    3,669 test photos of 37 cat and dog breeds) for foreground/background segmentation.

    * Features: ``image`` (uint8 RGB of varying size) and ``segmentation_mask`` (the trimap:
      1 pet, 2 background, 3 border). Labels: **2 classes**, ``0 = pet``, ``1 = background``;
      the border band (the uncertain outline) becomes ``IGNORE_INDEX = 255``, left out of the
      loss and the metrics, as VOC's void boundary. (The Keras tutorial instead trains 3
      classes ``trimap - 1``.) Any other trimap value is a ``ValueError`` when read.
    * Both are resized to ``image_size × image_size`` (default ``PET_IMAGE_SIZE = 128``),
      the image bilinearly and the mask by nearest neighbour (labels stay 0/1/255), without
      keeping the aspect ratio (``resize_mode`` ``"auto"`` or ``"resize"``; ``"pad"`` is refused).
    * Splits ``train`` and ``test``; per-channel mean/std (``[0, 1]`` scale) over
      ``PET_STATS_SAMPLE`` evenly spaced training images.

    Needs TFDS and the prepared ArrayRecord files (``tfds build oxford_iiit_pet
    --file_format=array_record``, about 800 MB download): otherwise ``FileNotFoundError``
    saying so.
    """
    if resize_mode == "pad":
        raise ValueError(
            "oxford_iiit_pet_seg images vary in size and are always resized (bilinear image, "
            'nearest-neighbour mask); use resize_mode="resize" or "auto", not "pad"'
        )
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    size = int(image_size or PET_IMAGE_SIZE)
    data_dir = None if data_dir is None else os.fspath(data_dir)
    train = PetSegmentationSource(open_tfds_split("oxford_iiit_pet", data_dir, "train"), size)
    test = PetSegmentationSource(open_tfds_split("oxford_iiit_pet", data_dir, "test"), size)
    mean, std = sampled_stats(train, PET_STATS_SAMPLE)
    return Dataset(
        name="oxford_iiit_pet_seg",
        train=train,
        test=test,
        num_classes=len(PET_CLASSES),
        image_shape=(size, size, 3),
        mean=mean,
        std=std,
        description=(
            f"TFDS oxford_iiit_pet trimaps: pet (0) / background (1), border ignored (255), "
            f"{size}x{size}; {len(train)} train / {len(test)} test"
        ),
        class_names=PET_CLASSES,
    )
