"""Data sources: random-access train/test splits of ``uint8`` NHWC images and ``int32`` labels.

``load_dataset(name)`` understands

=================  ==========================================================================
``digits``         sklearn's ``load_digits``: 1,797 real 8×8 handwritten digits (0-16 grey
                   levels, rescaled to 0-255), shipped with scikit-learn, **no download**; the
                   embedded default. Fixed stratified split: 1,347 train / 450 test
                   (``train_test_split(test_size=450, stratify=y, random_state=0)``). Resized
                   (bilinear) to ``image_size`` (32×32 by default, LeNet-5's input).
``npz:PATH``       an ``.npz`` holding ``x_train, y_train, x_test, y_test`` (and optionally
                   ``class_names``); ``(N, H, W)`` grey or ``(N, H, W, C)`` images, ``uint8``
                   0-255 or float 0-1, integer labels 0..K-1. Checked in full before training
                   (keys, lengths, dtypes, finite values, value range, classes, shapes): the
                   rules are in :mod:`cnnjax.data.validate`.
``folder:PATH``    ``PATH/{train,test}/CLASS/*.png|jpg|…`` read with Pillow (``val`` or
                   ``validation`` stand in for a missing ``test``), or ``PATH/CLASS/*.png``
                   with ``val_split`` (a seeded, stratified share of every class becomes the
                   test split). Classes are the sorted sub-folder names. Every file's header
                   is checked up front; unreadable files are an error listing them, or
                   skipped with a count when ``skip_bad_files``.
``synthetic``      random images and labels for benchmarks; ``synthetic:HxWxC`` sets the shape.
any TFDS name      through ``tfds.data_source`` (ArrayRecord, no TensorFlow needed) and a
                   ``grain.MapDataset`` that decodes and fits each record: ``mnist``,
                   ``fashion_mnist``, ``cifar10``, ``cifar100``, ``imagenet2012`` (prepared
                   beforehand from the manual download in ``data_dir``).
=================  ==========================================================================

Segmentation sets (per-pixel ``(N, H, W)`` labels, :mod:`cnnjax.data.segmentation`):
``digits_seg`` (scenes of the digits, no download) and ``oxford_iiit_pet_seg`` (TFDS
``oxford_iiit_pet`` trimaps as pet (0) / background (1) masks, border ignored (255), 128×128 by
default).

Fitting to a model's input (``image_size``): ``resize_mode="pad"`` centres the image in a zero
field (LeNet-5's 28×28 MNIST digits in a 32×32 field, as in the paper), ``"resize"`` resamples
bilinearly (images of varying size are first resized on the shorter side and centre-cropped),
``"auto"`` pads when the image is at most 8 pixels smaller and resizes otherwise.

Class names (``Dataset.class_names``) are ``"0"``..``"9"`` for digits, the TFDS label names,
the npz ``class_names`` array, or the folder names (``None`` for synthetic data).

Every split is a :class:`Source` (:mod:`cnnjax.data.dataset`, re-exported here): ``len(source)``
and ``source.get(indices) -> (images, labels)``.
Per-channel ``mean``/``std`` (``[0, 1]`` scale) come from the published values for the TFDS sets
and are computed from the training split for the others.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from cnnjax.data.dataset import (
    IGNORE_INDEX,
    ArraySource,
    Dataset,
    Source,
    TFDSSource,
    check_labels,
    fit_images,
    from_arrays,
    open_tfds_split,
    sampled_stats,
)
from cnnjax.data.digits import load_digits
from cnnjax.data.segmentation import load_digits_seg, load_oxford_iiit_pet_seg
from cnnjax.data.validate import (
    NPZ_HOWTO,
    find_bad_images,
    images_to_uint8,
    labels_to_int32,
    note,
    num_classes_of,
)

__all__ = [
    "IGNORE_INDEX",
    "ArraySource",
    "Dataset",
    "FolderSource",
    "Source",
    "TFDSSource",
    "check_labels",
    "fit_images",
    "list_datasets",
    "load_dataset",
    "stratified_split",
]

_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
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
_BUILTIN = ("digits", "digits_seg", "oxford_iiit_pet_seg", "synthetic", "npz:PATH", "folder:PATH")


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

        try:
            with Image.open(self.paths[i]) as img:
                img = img.convert(self.mode)
                if (img.height, img.width) != tuple(self.size):
                    img = img.resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)
                arr = np.asarray(img, np.uint8)
        except Exception as e:  # a file damaged after its header (pixel data) fails only here
            raise ValueError(
                f"cannot decode image {self.paths[i]} ({type(e).__name__}: {e}); fix or remove "
                "the file"
            ) from e
        return arr[..., None] if arr.ndim == 2 else arr

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.stack([self._load(int(i)) for i in indices]), self.labels[indices]


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
    val_split: float | None = None,
    skip_bad_files: bool = False,
) -> Dataset:
    """Open the data set ``name`` (see the module docstring for the forms it takes).

    ``image_size`` fits every image to ``image_size × image_size`` (``None``: keep the native
    size; ``digits`` defaults to 32). ``num_classes`` checks that every label lies in
    ``[0, num_classes)`` (default: the data set's own count). ``val_split`` (``folder:`` without
    a test split only) holds out that fraction of every class, chosen by ``seed``, as the test
    split; ``skip_bad_files`` (``folder:``) skips unreadable images with a note instead of
    raising. Errors are ``ValueError`` or ``FileNotFoundError`` with a message that says what
    to do.
    """
    if resize_mode not in ("auto", "pad", "resize"):
        raise ValueError(f'resize_mode must be "auto", "pad" or "resize", got {resize_mode!r}')
    if name == "digits":
        ds = load_digits(image_size or 32, resize_mode)
    elif name == "digits_seg":  # per-pixel labels: cnnjax/data/segmentation.py
        ds = load_digits_seg()
    elif name == "oxford_iiit_pet_seg":  # trimaps as per-pixel labels: data/segmentation.py
        ds = load_oxford_iiit_pet_seg(data_dir, image_size, resize_mode)
    elif name == "synthetic" or name.startswith("synthetic:"):
        ds = _load_synthetic(name, image_size, num_classes or 10, seed)
    elif name.startswith("npz:"):
        ds = _load_npz(name[4:], image_size, resize_mode, num_classes)
    elif name.startswith("folder:"):
        ds = _load_folder(name[7:], image_size, resize_mode, val_split, seed, skip_bad_files)
    else:
        ds = _load_tfds(name, data_dir, image_size, resize_mode)
    if val_split is not None and not name.startswith("folder:"):
        raise ValueError(
            f"val_split={val_split} applies to folder:ROOT data sets without a test split; "
            f"{name!r} has its own test split"
        )
    if num_classes is not None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        for split in ("train", "test"):
            labels = getattr(getattr(ds, split), "labels", None)
            if labels is not None:
                check_labels(labels, num_classes, f"{name} {split} split")
        if ds.class_names is not None and len(ds.class_names) != num_classes:
            raise ValueError(
                f"num_classes={num_classes} but {name} names {len(ds.class_names)} classes "
                f"({', '.join(ds.class_names[:5])}{', …' if len(ds.class_names) > 5 else ''})"
            )
        ds = dataclasses.replace(ds, num_classes=num_classes)
    return ds


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


def _load_npz(path: str, image_size, resize_mode: str, num_classes: int | None) -> Dataset:
    """Read and validate an npz data set (rules: :mod:`cnnjax.data.validate`)."""
    file = pathlib.Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"npz data set {str(file)!r} does not exist; {NPZ_HOWTO}")
    arrays = _read_npz(file)
    x_train = images_to_uint8(arrays["x_train"], f"{file}: x_train")
    x_test = images_to_uint8(arrays["x_test"], f"{file}: x_test")
    if x_train.shape[-1] != x_test.shape[-1]:
        raise ValueError(
            f"{file}: x_train images {arrays['x_train'].shape} have {x_train.shape[-1]} "
            f"channel(s) but x_test images {arrays['x_test'].shape} have {x_test.shape[-1]}; "
            "both splits need the same channels"
        )
    y_train, train_width = labels_to_int32(
        arrays["y_train"], f"{file}: y_train", len(x_train), "x_train"
    )
    y_test, test_width = labels_to_int32(arrays["y_test"], f"{file}: y_test", len(x_test), "x_test")
    if train_width != test_width and None not in (train_width, test_width):
        raise ValueError(
            f"{file}: one-hot y_train has {train_width} columns but y_test has {test_width}"
        )
    names = _npz_class_names(arrays.get("class_names"), file)
    given, given_by = num_classes, "num_classes"
    if given is None and names is not None:
        given, given_by = len(names), f"the {len(names)} class_names"
    if given is None and (train_width or test_width):
        given, given_by = train_width or test_width, "the one-hot label width"
    k = num_classes_of(y_train, y_test, str(file), given, given_by)
    x_train = fit_images(x_train, image_size, resize_mode)
    x_test = fit_images(x_test, image_size, resize_mode)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(
            f"{file}: x_train images {arrays['x_train'].shape} and x_test images "
            f"{arrays['x_test'].shape} differ in size; set image_size to fit both"
        )
    return from_arrays(
        f"npz:{path}", x_train, y_train, x_test, y_test, f"arrays from {file}", k, names
    )


def _read_npz(file: pathlib.Path) -> dict[str, np.ndarray]:
    try:
        data = np.load(file, allow_pickle=False)
    except Exception as e:  # not a zip / npy: numpy raises ValueError, OSError, BadZipFile
        raise ValueError(f"{file} is not a readable .npz archive ({e}); {NPZ_HOWTO}") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{file} holds a single array, not an .npz archive; {NPZ_HOWTO}")
    with data:
        missing = [k for k in _NPZ_KEYS if k not in data.files]
        if missing:
            raise ValueError(
                f"{file} lacks the arrays {', '.join(missing)} (it has "
                f"{', '.join(data.files) or 'none'}); {NPZ_HOWTO}"
            )
        arrays = {}
        for key in (*_NPZ_KEYS, "class_names"):
            if key in data.files:
                try:
                    arrays[key] = data[key]
                except ValueError as e:  # object arrays need pickle
                    raise ValueError(f"{file}: {key} cannot be read ({e}); {NPZ_HOWTO}") from None
    return arrays


def _npz_class_names(names, file) -> tuple[str, ...] | None:
    if names is None:
        return None
    if names.ndim != 1 or names.dtype.kind not in "US" or len(names) == 0:
        raise ValueError(
            f"{file}: class_names must be a 1-d array of K strings, got {names.dtype} {names.shape}"
        )
    out = tuple(str(n.decode() if isinstance(n, bytes) else n) for n in names)
    if len(set(out)) != len(out):
        raise ValueError(f"{file}: class_names has duplicates: {', '.join(out)}")
    return out


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Split indices ``0..N-1`` into sorted ``(train, test)``, ``fraction`` of every class in test.

    Per class ``c`` with ``n_c`` examples, ``floor(fraction·n_c + 0.5)`` of them (at most
    ``n_c - 1``, so every class keeps a training example) are drawn by
    ``np.random.default_rng([seed, c])``: the split depends only on the labels and the seed.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val_split must be a fraction in (0, 1), got {fraction}")
    test = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n = min(int(np.floor(fraction * len(members) + 0.5)), len(members) - 1)
        test.append(np.random.default_rng([seed, int(c)]).permutation(members)[:n])
    test = np.sort(np.concatenate(test)) if test else np.zeros(0, int)
    if test.size == 0:
        raise ValueError(
            f"val_split={fraction} of {len(labels)} images leaves no test image; use a larger "
            "fraction or more images"
        )
    return np.setdiff1d(np.arange(len(labels)), test), test


def _load_folder(
    path: str, image_size, resize_mode: str, val_split, seed: int, skip_bad_files: bool
) -> Dataset:
    from PIL import Image

    root = pathlib.Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"folder data set {str(root)!r} does not exist; lay it out as ROOT/CLASS/image.png "
            "(with val_split) or ROOT/train/CLASS/image.png and ROOT/test/CLASS/image.png"
        )
    train_dir, test_dir = _folder_splits(root, val_split)
    classes = sorted(p.name for p in _subdirs(train_dir))
    index = {c: i for i, c in enumerate(classes)}
    train_paths, train_labels = _scan(train_dir, index)
    test_paths, test_labels = _scan(test_dir, index) if test_dir else ([], np.zeros(0, np.int32))
    paths, labels = _drop_bad(
        [*train_paths, *test_paths],
        np.concatenate([train_labels, test_labels]),
        root,
        skip_bad_files,
        len(train_paths),
    )
    train_paths, test_paths = paths
    train_labels, test_labels = labels
    _check_no_empty_class(classes, train_labels, train_dir, skipped=skip_bad_files)
    if val_split is not None:
        train_idx, test_idx = stratified_split(train_labels, val_split, seed)
        test_paths, test_labels = [train_paths[i] for i in test_idx], train_labels[test_idx]
        train_paths, train_labels = [train_paths[i] for i in train_idx], train_labels[train_idx]
    with Image.open(train_paths[0]) as first:
        mode = "L" if first.mode in ("1", "L", "I", "I;16", "F") else "RGB"
        native = (first.height, first.width)
    size = (image_size, image_size) if image_size else native
    train = FolderSource(train_paths, train_labels, mode, size)
    test = FolderSource(test_paths, test_labels, mode, size)
    mean, std = sampled_stats(train)
    split = f", val_split {val_split} (seed {seed})" if val_split is not None else ""
    return Dataset(
        name=f"folder:{path}",
        train=train,
        test=test,
        num_classes=len(classes),
        image_shape=(*size, 1 if mode == "L" else 3),
        mean=mean,
        std=std,
        description=f"images under {root} ({len(classes)} classes: "
        f"{', '.join(classes[:10])}{split})",
        class_names=tuple(classes),
    )


def _subdirs(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _folder_splits(root: pathlib.Path, val_split) -> tuple[pathlib.Path, pathlib.Path | None]:
    """``(train_dir, test_dir)``: ``ROOT/train`` + ``ROOT/test|val|validation``, or ``ROOT``."""
    train_dir = root / "train" if (root / "train").is_dir() else root
    tests = ("test", "val", "validation")
    test_dir = next((root / s for s in tests if (root / s).is_dir()), None)
    if train_dir == root:
        test_dir = None  # ROOT/CLASS: every sub-folder is a class
    if not _subdirs(train_dir):
        raise ValueError(
            f"{train_dir} has no class sub-folders; lay images out as ROOT/CLASS/image.png "
            "(with val_split) or ROOT/train/CLASS/image.png and ROOT/test/CLASS/image.png"
        )
    if test_dir is None and val_split is None:
        raise ValueError(
            f"folder data set {str(root)!r} has no test split (ROOT/test/CLASS or "
            "ROOT/val/CLASS); pass --val-split FRACTION (e.g. 0.2, config val_split) to hold "
            "out a seeded, stratified share of every class for testing"
        )
    if test_dir is not None and val_split is not None:
        raise ValueError(
            f"val_split={val_split} holds out test images only when there is no test split, "
            f"but {test_dir} exists; drop val_split or that folder"
        )
    return train_dir, test_dir


def _scan(split_dir: pathlib.Path, index: dict[str, int]) -> tuple[list, np.ndarray]:
    """Image paths under ``split_dir/CLASS/`` (sorted) and their class indices."""
    paths, labels = [], []
    for class_dir in _subdirs(split_dir):
        if class_dir.name not in index:
            raise ValueError(
                f"class {class_dir.name!r} in {split_dir} is not a class of the train split "
                f"({', '.join(index)})"
            )
        for file in sorted(class_dir.iterdir()):
            if file.suffix.lower() in IMAGE_EXTENSIONS:
                paths.append(file)
                labels.append(index[class_dir.name])
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {split_dir}")
    return paths, np.array(labels, np.int32)


def _check_no_empty_class(
    classes: list[str], labels: np.ndarray, split_dir: pathlib.Path, *, skipped: bool
) -> None:
    """Every class folder of the train split holds at least one (readable) image.

    A class without training images cannot be learned, yet would widen the classifier.
    Raises ``ValueError`` naming the empty folder(s).
    """
    counts = np.bincount(labels, minlength=len(classes))
    empty = [str(split_dir / c) for c, n in zip(classes, counts, strict=True) if n == 0]
    if empty:
        readable = " readable" if skipped else ""
        kinds = ", ".join(IMAGE_EXTENSIONS)
        raise ValueError(
            f"{len(empty)} class folder(s) hold no{readable} images ({kinds}): {', '.join(empty)}; "
            "a class with no training images cannot be learned: add "
            "images to it or remove the folder"
        )


def _drop_bad(paths, labels, root, skip: bool, num_train: int):
    """Check every header; raise listing unreadable files, or drop them (``skip``) with a note.

    Returns ``((train_paths, test_paths), (train_labels, test_labels))``.
    """
    bad = find_bad_images(paths)
    if bad:
        shown = "; ".join(f"{paths[i].relative_to(root)} ({why})" for i, why in bad[:5])
        more = f"; … and {len(bad) - 5} more" if len(bad) > 5 else ""
        if not skip:
            raise ValueError(
                f"{len(bad)} of {len(paths)} image files under {root} cannot be read: "
                f"{shown}{more}. Fix or remove them, or pass --skip-bad-files "
                "(config skip_bad_files=True) to go on without them"
            )
        note(
            f"skipping {len(bad)} unreadable image file(s) of {len(paths)} under {root}: "
            f"{shown}{more}"
        )
    keep = np.ones(len(paths), bool)
    keep[[i for i, _ in bad]] = False
    parts = []
    for lo, hi in ((0, num_train), (num_train, len(paths))):
        kept = np.flatnonzero(keep[lo:hi]) + lo
        parts.append(([paths[i] for i in kept], labels[kept]))
    for (split_paths, _), split in zip(parts, ("train", "test"), strict=True):
        if not split_paths and (split == "train" or num_train < len(paths)):
            raise ValueError(f"no readable images left in the {split} split under {root}")
    return (parts[0][0], parts[1][0]), (parts[0][1], parts[1][1])


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
    names = tuple(str(n) for n in (getattr(features["label"], "names", None) or ()))
    native = features["image"].shape  # (H, W, C) with None for varying sizes
    channels = native[-1] or 3

    if image_size is None and None in native[:2]:
        raise ValueError(f"{name} images vary in size: set image_size (e.g. 256 for ImageNet)")
    size = image_size

    def fit(image: np.ndarray) -> np.ndarray:
        return fit_images(image[None], size, resize_mode)[0]

    train = TFDSSource(open_tfds_split(name, data_dir, "train"), fit)
    test = TFDSSource(open_tfds_split(name, data_dir, "test", "validation"), fit)
    image_shape = (size, size, channels) if size else tuple(native)
    if name in _TFDS_STATS:
        mean, std = _TFDS_STATS[name]
    else:
        mean, std = sampled_stats(train)
    return Dataset(
        name=name,
        train=train,
        test=test,
        num_classes=num_classes,
        image_shape=image_shape,
        mean=mean,
        std=std,
        description=f"TFDS {name} via tfds.data_source + grain",
        class_names=names if len(names) == num_classes else None,
    )
