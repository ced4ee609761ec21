"""Data sources: random-access train/test splits of ``uint8`` NHWC images and ``int32`` labels.

``load_dataset(name)`` understands

=================  ==========================================================================
``digits``         sklearn's ``load_digits``: 1,797 real 8×8 handwritten digits (0-16 grey
                   levels, rescaled to 0-255), shipped with scikit-learn, **no download**; the
                   embedded default. Fixed stratified split: 1,347 train / 450 test
                   (``train_test_split(test_size=450, stratify=y, random_state=0)``). Resized
                   (bilinear) to ``image_size`` (32×32 by default, LeNet-5's input).
``npz:PATH``       an ``.npz`` holding ``x_train, y_train, x_test, y_test``; ``(N, H, W)`` grey
                   or ``(N, H, W, C)`` images, e.g. ``../shared/data/mnist.npz``.
``folder:PATH``    ``PATH/{train,test}/CLASS/*.png|jpg|…`` read with Pillow (``val`` or
                   ``validation`` stand in for a missing ``test``); classes are the sorted
                   sub-folder names of ``train``.
``synthetic``      random images and labels for benchmarks; ``synthetic:HxWxC`` sets the shape.
any TFDS name      through ``tfds.data_source`` (ArrayRecord, no TensorFlow needed) and a
                   ``grain.MapDataset`` that decodes and fits each record: ``mnist``,
                   ``fashion_mnist``, ``cifar10``, ``cifar100``, ``imagenet2012`` (prepared
                   beforehand from the manual download in ``data_dir``).
=================  ==========================================================================

Fitting to a model's input (``image_size``): ``resize_mode="pad"`` centres the image in a zero
field (LeNet-5's 28×28 MNIST digits in a 32×32 field, as in the paper), ``"resize"`` resamples
bilinearly (images of varying size are first resized on the shorter side and centre-cropped),
``"auto"`` pads when the image is at most 8 pixels smaller and resizes otherwise.

Every split is a :class:`Source`: ``len(source)`` and ``source.get(indices) -> (images, labels)``.
Per-channel ``mean``/``std`` (``[0, 1]`` scale) come from the published values for the TFDS sets
and are computed from the training split for the others.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import difflib
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

__all__ = [
    "ArraySource",
    "Dataset",
    "FolderSource",
    "Source",
    "TFDSSource",
    "fit_images",
    "list_datasets",
    "load_dataset",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff")

# Published per-channel statistics on the [0, 1] scale (train split).
_TFDS_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "kmnist": ((0.1918,), (0.3483,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn_cropped": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "imagenet2012": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
_BUILTIN = ("digits", "digits_seg", "synthetic", "npz:PATH", "folder:PATH")


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
    the ``[0, 1]`` scale.
    """

    name: str
    train: Source
    test: Source
    num_classes: int
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    description: str = ""


@dataclasses.dataclass(frozen=True)
class ArraySource:
    """In-memory split: ``images`` ``(N, H, W, C)`` uint8 and ``labels`` ``(N,)`` int32."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.images[indices], self.labels[indices]


class FolderSource:
    """Image files decoded lazily with Pillow: ``paths[i]`` has class index ``labels[i]``."""

    def __init__(self, paths: Sequence[pathlib.Path], labels: np.ndarray, mode: str, size):
        self.paths = list(paths)
        self.labels = labels
        self.mode = mode  # "L" or "RGB"
        self.size = size  # (H, W)

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, i: int) -> np.ndarray:
        from PIL import Image

        with Image.open(self.paths[i]) as img:
            img = img.convert(self.mode)
            if (img.height, img.width) != tuple(self.size):
                img = img.resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)
            arr = np.asarray(img, np.uint8)
        return arr[..., None] if arr.ndim == 2 else arr

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.stack([self._load(int(i)) for i in indices]), self.labels[indices]


class TFDSSource:
    """A TFDS split read by ``tfds.data_source`` and decoded by a ``grain.MapDataset``."""

    def __init__(self, data_source, fit: Callable[[np.ndarray], np.ndarray], threads: int = 8):
        import grain

        def decode(record):
            image = np.asarray(record["image"], np.uint8)
            image = image[..., None] if image.ndim == 2 else image
            return fit(image), np.int32(record["label"])

        self._dataset = grain.MapDataset.source(data_source).map(decode)
        self._threads = threads
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def __len__(self) -> int:
        return len(self._dataset)

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # ArrayRecord reads and image decoding release the GIL: a few threads keep up with a step.
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(self._threads)
        items = list(self._pool.map(self._dataset.__getitem__, (int(i) for i in indices)))
        return np.stack([x for x, _ in items]), np.array([y for _, y in items], np.int32)


def list_datasets() -> list[str]:
    """Built-in names, the ``npz:``/``folder:`` forms, and TFDS names with known statistics."""
    return [*_BUILTIN, *sorted(_TFDS_STATS)]


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
    resize_mode: str = "auto",
    num_classes: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Open the data set ``name`` (see the module docstring for the forms it takes).

    ``image_size`` fits every image to ``image_size × image_size`` (``None``: keep the native
    size; ``digits`` defaults to 32). ``num_classes`` checks that every label lies in
    ``[0, num_classes)`` (default: the data set's own count). Errors are ``ValueError`` or
    ``FileNotFoundError`` with a message that says what to do.
    """
    if resize_mode not in ("auto", "pad", "resize"):
        raise ValueError(f'resize_mode must be "auto", "pad" or "resize", got {resize_mode!r}')
    if name == "digits":
        ds = _load_digits(image_size or 32, resize_mode)
    elif name == "digits_seg":  # per-pixel labels: cnnjax/data/segmentation.py
        from cnnjax.data.segmentation import load_digits_seg

        ds = load_digits_seg()
    elif name == "synthetic" or name.startswith("synthetic:"):
        ds = _load_synthetic(name, image_size, num_classes or 10, seed)
    elif name.startswith("npz:"):
        ds = _load_npz(name[4:], image_size, resize_mode)
    elif name.startswith("folder:"):
        ds = _load_folder(name[7:], image_size, resize_mode)
    else:
        ds = _load_tfds(name, data_dir, image_size, resize_mode)
    if num_classes is not None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        for split in ("train", "test"):
            labels = getattr(getattr(ds, split), "labels", None)
            if labels is not None:
                check_labels(labels, num_classes, f"{name} {split} split")
        ds = dataclasses.replace(ds, num_classes=num_classes)
    return ds


def check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    """Raise a ``ValueError`` naming the first label outside ``[0, num_classes)``."""
    if labels.size == 0:
        return
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise ValueError(
            f"label {int(labels[bad[0]])} (example {int(bad[0])} of the {where}) is out of range "
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


def _stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    return tuple(float(m) for m in x.mean(0)), tuple(float(s) or 1.0 for s in x.std(0))


def _from_arrays(name, x_train, y_train, x_test, y_test, description) -> Dataset:
    y_train = np.asarray(y_train).astype(np.int32).reshape(-1)
    y_test = np.asarray(y_test).astype(np.int32).reshape(-1)
    num_classes = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    for labels, split in ((y_train, "train"), (y_test, "test")):
        if labels.size and labels.min() < 0:
            check_labels(labels, num_classes, f"{name} {split} split")
    mean, std = _stats(x_train)
    return Dataset(
        name=name,
        train=ArraySource(x_train, y_train),
        test=ArraySource(x_test, y_test),
        num_classes=num_classes,
        image_shape=tuple(x_train.shape[1:]),
        mean=mean,
        std=std,
        description=description,
    )


def _load_digits(image_size: int, resize_mode: str) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    images = fit_images(images, image_size, "resize" if resize_mode == "auto" else resize_mode)
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=450, stratify=digits.target, random_state=0
    )
    return _from_arrays(
        "digits", x_train, y_train, x_test, y_test, "sklearn load_digits, 1347 train / 450 test"
    )


def _load_synthetic(name: str, image_size, num_classes: int, seed: int) -> Dataset:
    shape = (32, 32, 3)
    if ":" in name:
        parts = name.split(":", 1)[1].lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            raise ValueError(f"synthetic shape must look like synthetic:32x32x3, got {name!r}")
        shape = tuple(int(p) for p in parts)
    if image_size:
        shape = (image_size, image_size, shape[2])
    rng = np.random.default_rng(seed)
    n_train, n_test = 2048, 512
    images = rng.integers(0, 256, size=(n_train + n_test, *shape), dtype=np.uint8)
    labels = rng.integers(0, num_classes, size=n_train + n_test).astype(np.int32)
    return Dataset(
        name=name,
        train=ArraySource(images[:n_train], labels[:n_train]),
        test=ArraySource(images[n_train:], labels[n_train:]),
        num_classes=num_classes,
        image_shape=shape,
        mean=(0.5,) * shape[2],
        std=(0.2887,) * shape[2],  # uniform on [0, 1]: 1/sqrt(12)
        description="uniform random images and labels (benchmarks only)",
    )


def _load_npz(path: str, image_size, resize_mode: str) -> Dataset:
    file = pathlib.Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(
            f"npz data set {str(file)!r} does not exist; expected a .npz file with x_train, "
            "y_train, x_test, y_test (e.g. --dataset npz:../shared/data/mnist.npz)"
        )
    with np.load(file) as data:
        missing = {"x_train", "y_train", "x_test", "y_test"} - set(data.files)
        if missing:
            raise ValueError(f"{file} lacks the arrays {sorted(missing)}; it has {data.files}")
        arrays = {k: data[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    for key in ("x_train", "x_test"):
        x = arrays[key]
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4:
            raise ValueError(f"{file}:{key} must be (N, H, W) or (N, H, W, C), got {x.shape}")
        if x.dtype != np.uint8:
            x = np.clip(np.rint(x * (255.0 if x.max(initial=0) <= 1.0 else 1.0)), 0, 255)
            x = x.astype(np.uint8)
        arrays[key] = fit_images(x, image_size, resize_mode)
    return _from_arrays(
        f"npz:{path}",
        arrays["x_train"],
        arrays["y_train"],
        arrays["x_test"],
        arrays["y_test"],
        f"arrays from {file}",
    )


def _load_folder(path: str, image_size, resize_mode: str) -> Dataset:
    from PIL import Image

    root = pathlib.Path(path).expanduser()
    if not (root / "train").is_dir():
        raise FileNotFoundError(
            f"folder data set {str(root)!r} needs a train/ sub-folder laid out as "
            "ROOT/train/CLASS/image.png (and ROOT/test/CLASS/...)"
        )
    test_dir = next((root / s for s in ("test", "val", "validation") if (root / s).is_dir()), None)
    if test_dir is None:
        raise FileNotFoundError(f"folder data set {str(root)!r} has no test/ (or val/) sub-folder")
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{root / 'train'} has no class sub-folders")
    index = {c: i for i, c in enumerate(classes)}

    def scan(split_dir: pathlib.Path):
        paths, labels = [], []
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            if class_dir.name not in index:
                raise ValueError(
                    f"class {class_dir.name!r} in {split_dir} is not a class of the train split "
                    f"({', '.join(classes)})"
                )
            for file in sorted(class_dir.iterdir()):
                if file.suffix.lower() in IMAGE_EXTENSIONS:
                    paths.append(file)
                    labels.append(index[class_dir.name])
        if not paths:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {split_dir}")
        return paths, np.array(labels, np.int32)

    train_paths, train_labels = scan(root / "train")
    test_paths, test_labels = scan(test_dir)
    with Image.open(train_paths[0]) as first:
        mode = "L" if first.mode in ("1", "L", "I", "I;16", "F") else "RGB"
        native = (first.height, first.width)
    size = (image_size, image_size) if image_size else native
    train = FolderSource(train_paths, train_labels, mode, size)
    test = FolderSource(test_paths, test_labels, mode, size)
    sample = np.linspace(0, len(train) - 1, min(len(train), 256)).astype(int)
    mean, std = _stats(train.get(sample)[0])
    return Dataset(
        name=f"folder:{path}",
        train=train,
        test=test,
        num_classes=len(classes),
        image_shape=(*size, 1 if mode == "L" else 3),
        mean=mean,
        std=std,
        description=f"images under {root} ({len(classes)} classes: {', '.join(classes[:10])})",
    )


def _load_tfds(name: str, data_dir, image_size, resize_mode: str) -> Dataset:
    import tensorflow_datasets as tfds

    known = set(tfds.list_builders(with_community_datasets=False))
    if name not in known:
        close = difflib.get_close_matches(name, [*known, "digits", "synthetic"], n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown dataset {name!r}.{hint} Valid names: {', '.join(list_datasets())}, "
            "or any TFDS dataset name (tfds.list_builders())."
        )
    data_dir = None if data_dir is None else os.fspath(data_dir)
    builder = tfds.builder(name, data_dir=data_dir)
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise ValueError(f"TFDS dataset {name!r} has no 'image' and 'label' features")
    num_classes = int(features["label"].num_classes)
    native = features["image"].shape  # (H, W, C) with None for varying sizes
    channels = native[-1] or 3

    def open_split(*splits: str):
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

    if image_size is None and None in native[:2]:
        raise ValueError(f"{name} images vary in size: set image_size (e.g. 256 for ImageNet)")
    size = image_size

    def fit(image: np.ndarray) -> np.ndarray:
        return fit_images(image[None], size, resize_mode)[0]

    train = TFDSSource(open_split("train"), fit)
    test = TFDSSource(open_split("test", "validation"), fit)
    image_shape = (size, size, channels) if size else tuple(native)
    if name in _TFDS_STATS:
        mean, std = _TFDS_STATS[name]
    else:
        sample = np.linspace(0, len(train) - 1, min(len(train), 256)).astype(int)
        mean, std = _stats(train.get(sample)[0])
    return Dataset(
        name=name,
        train=train,
        test=test,
        num_classes=num_classes,
        image_shape=image_shape,
        mean=mean,
        std=std,
        description=f"TFDS {name} via tfds.data_source + grain",
    )
