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
"""

from __future__ import annotations

import numpy as np

__all__ = ["BACKGROUND", "CANVAS", "load_digits_seg", "make_scenes"]

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
    from cnnjax.data.sources import ArraySource, Dataset, _load_digits

    digits = _load_digits(DIGIT_SIZE, "resize")
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
