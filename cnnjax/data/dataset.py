"""What every data set is made of: :class:`Dataset`, its :class:`Source` splits, and the helpers
each loader shares (label checks, fitting images to a size, per-channel statistics, TFDS splits).

Every split is a :class:`Source`: ``len(source)`` and ``source.get(indices) -> (images,
labels)`` with ``uint8`` images ``(n, H, W, C)`` and ``int32`` labels ``(n,)`` (segmentation:
per-pixel ``(n, H, W)``, :data:`IGNORE_INDEX` for unlabelled pixels). The loaders
(:mod:`cnnjax.data.sources`, :mod:`cnnjax.data.digits`, :mod:`cnnjax.data.segmentation`) build
on this module; nothing here imports them.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from collections.abc import Callable
from typing import Protocol

import numpy as np

__all__ = [
    "IGNORE_INDEX",
    "ArraySource",
    "Dataset",
    "Source",
    "TFDSSource",
    "channel_stats",
    "check_labels",
    "fit_images",
    "from_arrays",
    "open_tfds_split",
    "sampled_stats",
]

IGNORE_INDEX = 255  # per-pixel label of unlabelled pixels (segmentation; cnnjax.train.tasks)


class Source(Protocol):
    """A random-access split: ``len(source)`` examples, ``get(indices)`` → a batch."""

    def __len__(self) -> int: ...

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(n,)`` indices → ``uint8`` images ``(n, H, W, C)`` and ``int32`` labels ``(n,)``."""
        ...


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A named data set: two :class:`Source` splits and what a model needs to know about them.

    ``image_shape`` is ``(H, W, C)`` of what ``get`` returns; ``mean``/``std`` are per channel on
    the ``[0, 1]`` scale; ``class_names`` has ``num_classes`` entries, or is ``None``.
    """

    name: str
    train: Source
    test: Source
    num_classes: int
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    description: str = ""
    class_names: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class ArraySource:
    """In-memory split: ``images`` ``(N, H, W, C)`` uint8 and ``labels`` ``(N,)`` int32."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.images[indices], self.labels[indices]


class TFDSSource:
    """A TFDS split read by ``tfds.data_source`` and decoded by a ``grain.MapDataset``.

    :meth:`decode` turns one record into ``(image, label)``; subclasses override it for other
    features (:class:`cnnjax.data.segmentation.PetSegmentationSource`: per-pixel masks)."""

    def __init__(self, data_source, fit: Callable[[np.ndarray], np.ndarray], threads: int = 8):
        import grain

        self._fit = fit
        self._dataset = grain.MapDataset.source(data_source).map(self.decode)
        self._threads = threads
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def decode(self, record) -> tuple[np.ndarray, np.ndarray]:
        """``record["image"]`` fitted by ``fit`` (uint8 ``(H, W, C)``), ``record["label"]``."""
        image = np.asarray(record["image"], np.uint8)
        image = image[..., None] if image.ndim == 2 else image
        return self._fit(image), np.int32(record["label"])

    def __len__(self) -> int:
        return len(self._dataset)

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # ArrayRecord reads and image decoding release the GIL: a few threads keep up with a step.
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(self._threads)
        items = list(self._pool.map(self._dataset.__getitem__, (int(i) for i in indices)))
        return np.stack([x for x, _ in items]), np.array([y for _, y in items], np.int32)


def check_labels(
    labels: np.ndarray, num_classes: int, where: str, *, ignore_index: int | None = None
) -> None:
    """Raise a ``ValueError`` naming the first label outside ``[0, num_classes)``.

    ``labels`` is ``(N,)`` (one per example) or ``(N, H, W)`` (per pixel, segmentation); there
    ``ignore_index`` (unlabelled pixels) is allowed too."""
    if labels.size == 0:
        return
    bad = (labels < 0) | (labels >= num_classes)
    if ignore_index is not None:
        bad &= labels != ignore_index
    bad = np.flatnonzero(bad)
    if bad.size:
        example, *pixel = np.unravel_index(bad[0], labels.shape)
        at = f" pixel {tuple(int(i) for i in pixel)}" if pixel else ""
        raise ValueError(
            f"label {int(labels.flat[bad[0]])} (example {int(example)}{at} of the {where}) is "
            "out of range "
            f"for num_classes={num_classes}; labels must lie in [0, {num_classes}). "
            "Set num_classes to cover every label."
        )


def fit_images(images: np.ndarray, size: int | None, mode: str = "auto") -> np.ndarray:
    """Fit ``(N, H, W, C)`` ``uint8`` images to ``size × size`` (see the module docstring)."""
    if size is None or images.shape[1:3] == (size, size):
        return images
    h, w = images.shape[1:3]
    if mode == "pad" or (mode == "auto" and h == w and 0 < size - h <= 8):
        if h > size or w > size:
            raise ValueError(f"cannot pad {h}×{w} images to {size}×{size}: use resize_mode=resize")
        top, left = (size - h) // 2, (size - w) // 2
        return np.pad(images, ((0, 0), (top, size - h - top), (left, size - w - left), (0, 0)))
    return np.stack([_resize_one(image, size) for image in images])


def _resize_one(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of one ``(H, W, C)`` uint8 image: shorter side to ``size``, centre crop."""
    from PIL import Image

    h, w, c = image.shape
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    channels = []
    for k in range(c):  # mode "F" resamples one float channel at full precision
        img = Image.fromarray(image[..., k].astype(np.float32), mode="F")
        channels.append(np.asarray(img.resize((new_w, new_h), Image.Resampling.BILINEAR)))
    out = np.stack(channels, axis=-1)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    out = out[top : top + size, left : left + size]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of ``(N, H, W, C)`` uint8 images on the ``[0, 1]`` scale (a
    zero std is reported as 1, so that normalising never divides by 0)."""
    x = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    return tuple(float(m) for m in x.mean(0)), tuple(float(s) or 1.0 for s in x.std(0))


def sampled_stats(source: Source, count: int = 256) -> tuple[tuple[float, ...], ...]:
    """:func:`channel_stats` of ``count`` evenly spaced examples of ``source`` (all if fewer):
    the statistics of a split too large to read in full."""
    sample = np.linspace(0, len(source) - 1, min(len(source), count)).astype(int)
    return channel_stats(source.get(sample)[0])


def from_arrays(
    name, x_train, y_train, x_test, y_test, description, num_classes, class_names=None
) -> Dataset:
    """A :class:`Dataset` of two :class:`ArraySource` splits (arrays already validated)."""
    mean, std = channel_stats(x_train)
    return Dataset(
        name=name,
        train=ArraySource(x_train, y_train),
        test=ArraySource(x_test, y_test),
        num_classes=num_classes,
        image_shape=tuple(x_train.shape[1:]),
        mean=mean,
        std=std,
        description=description,
        class_names=class_names,
    )


def open_tfds_split(name: str, data_dir: str | None, *splits: str):
    """``tfds.data_source`` of the first of ``splits`` that opens (no download), else a
    ``FileNotFoundError`` that says how to prepare ``name`` once."""
    import tensorflow_datasets as tfds

    errors = []
    for split in splits:
        try:
            return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
        except Exception as e:  # tfds raises many types; re-raised below
            errors.append(f"{split}: {type(e).__name__}: {e}")
    raise FileNotFoundError(
        f"TFDS dataset {name!r} is not prepared in ArrayRecord format under "
        f"{data_dir or tfds.core.constants.DATA_DIR!r}. Prepare it once with internet access "
        f"(tfds build {name} --file_format=array_record"
        + (" --manual_dir=DIR" if name.startswith("imagenet") else "")
        + ") and pass --set data_dir=... . Details: "
        + " | ".join(e.splitlines()[0] for e in errors)
    )
