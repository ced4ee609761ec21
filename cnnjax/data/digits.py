"""The embedded ``digits`` data set (scikit-learn's ``load_digits``; no download)."""

from __future__ import annotations

import numpy as np

from cnnjax.data.dataset import Dataset, fit_images, from_arrays

__all__ = ["load_digits"]


def load_digits(image_size: int = 32, resize_mode: str = "auto") -> Dataset:
    """The ``digits`` :class:`~cnnjax.data.dataset.Dataset`: sklearn's 1,797 8×8 digits.

    Grey levels 0-16 are rescaled to 0-255 and every image is fitted to ``image_size`` (bilinear
    resize unless ``resize_mode="pad"``); fixed stratified split of 1,347 train / 450 test
    (``train_test_split(test_size=450, stratify=y, random_state=0)``).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    images = fit_images(images, image_size, "resize" if resize_mode == "auto" else resize_mode)
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=450, stratify=digits.target, random_state=0
    )
    return from_arrays(
        "digits",
        x_train,
        y_train.astype(np.int32),
        x_test,
        y_test.astype(np.int32),
        "sklearn load_digits, 1347 train / 450 test",
        num_classes=10,
        class_names=tuple(str(d) for d in range(10)),
    )
