"""Checks that run before any training time is spent: npz arrays and image files.

**npz format.** Arrays ``x_train``, ``y_train``, ``x_test``, ``y_test`` and, optionally,
``class_names`` (``K`` strings). Every rule below raises a one-line ``ValueError`` naming the
file, the array and the offending values:

* **Images** ``(N, H, W)`` (grey) or ``(N, H, W, C)`` (channels last: ``(N, 3, H, W)`` with
  ``W > 4`` is refused as channels-first); train and test have the same ``C`` (and
  ``H × W`` unless ``image_size`` fits both). Value range rule (:data:`IMAGE_RULE`):

  - ``uint8``, or any integer dtype with every value in ``[0, 255]``: pixels on the 0-255 scale;
  - floating point with every value in ``[0, 1]``: the ``[0, 1]`` scale (×255, rounded);
  - floating point holding only whole numbers in ``[0, 255]``: the 0-255 scale;
  - anything else (a NaN or inf, a negative value, 1.001 among ``[0, 1]`` floats, 127.5 among
    0-255 floats, booleans, strings) is an error. The scale is never guessed from the maximum,
    so one stray value cannot silently switch the whole set to another scale.

* **Labels** ``(N,)`` (or ``(N, 1)``) of an integer dtype, one per image, all ``>= 0``; one-hot
  ``(N, K)`` rows (exactly one 1, the rest 0) are converted to class indices with a note on
  stderr. **Class count rule:** ``K`` is ``num_classes`` when given, else the length of
  ``class_names``, else the width of one-hot labels, else ``max label + 1`` — and in that last
  case every class ``0 .. K-1`` must have at least one training example, so one stray label 1000
  in a 10-class set is an error instead of a 1001-class model. Labels must lie in ``[0, K)``.

**Image folders.** :func:`find_bad_images` opens every file's header up front (Pillow
``Image.open`` + ``verify``: PNG chunk CRCs, no pixel decoding; for JPEG also the end-of-image
marker, which catches truncation), on a few threads.
"""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import sys
from collections.abc import Sequence

import numpy as np

__all__ = [
    "IMAGE_RULE",
    "NPZ_HOWTO",
    "find_bad_images",
    "images_to_uint8",
    "labels_to_int32",
    "note",
    "num_classes_of",
]

IMAGE_RULE = (
    "pixels must be uint8 or integers in [0, 255] (divided by 255), floats in [0, 1] "
    "(used as is), or floats holding whole numbers in [0, 255] (divided by 255); NaN, inf and "
    "other values are errors"
)
NPZ_HOWTO = (
    "create one with np.savez(PATH, x_train=X, y_train=Y, x_test=X2, y_test=Y2) where X is "
    "(N, H, W) or (N, H, W, C) uint8 0..255 (or float 0..1) and Y is (N,) integer class indices "
    "0..K-1; an optional class_names array holds the K names"
)


_NOTED: set[str] = set()
_CHECKED: dict[tuple, list[tuple[int, str]]] = {}  # file signatures → header problems


def note(text: str) -> None:
    """Print a one-line data notice on stderr (conversions, skipped files), once per process."""
    if text not in _NOTED:
        _NOTED.add(text)
        print(f"cnnjax data: {text}", file=sys.stderr, flush=True)


def images_to_uint8(x: np.ndarray, where: str) -> np.ndarray:
    """Images ``(N, H, W)`` or ``(N, H, W, C)`` → ``uint8`` ``(N, H, W, C)`` by the value rule.

    ``where`` names the array in errors (e.g. ``"data.npz: x_train"``). Raises ``ValueError``
    for a wrong rank, an empty array, a non-numeric dtype, non-finite values or values outside
    the rule (:data:`IMAGE_RULE`), with their count and the first offending index.
    """
    x = np.asarray(x)
    if x.ndim not in (3, 4):
        raise ValueError(f"{where} must be (N, H, W) or (N, H, W, C) images, got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{where} holds no images (shape {x.shape})")
    if x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[3] > 4:
        raise ValueError(
            f"{where} has shape {x.shape}, which looks channels-first (N, C, H, W); cnnjax "
            "images are channels-last (N, H, W, C): store x.transpose(0, 2, 3, 1)"
        )
    if x.dtype == np.uint8:
        pass
    elif x.dtype.kind in "iu":
        _require(x, (x >= 0) & (x <= 255), where, "outside [0, 255]")
        x = x.astype(np.uint8)
    elif x.dtype.kind == "f":
        _require(x, np.isfinite(x), where, "non-finite (NaN or inf)")
        if x.min() >= 0 and x.max() <= 1:
            x = np.rint(x.astype(np.float32) * 255.0).astype(np.uint8)
        else:
            whole = (x >= 0) & (x <= 255) & (x == np.rint(x))
            if not whole.all():
                in_unit = (x >= 0) & (x <= 1)
                raise ValueError(
                    f"{where}: float pixels fit neither scale: {_first_bad(x, in_unit, where)} "
                    f"outside [0, 1] and {_first_bad(x, whole, where)} not whole numbers in "
                    f"[0, 255]; {IMAGE_RULE}"
                )
            x = x.astype(np.uint8)
    else:
        raise ValueError(f"{where} has dtype {x.dtype}; {IMAGE_RULE}")
    return x[..., None] if x.ndim == 3 else x


def labels_to_int32(
    y: np.ndarray, where: str, num_images: int, images: str
) -> tuple[np.ndarray, int | None]:
    """Labels → ``int32`` ``(N,)`` class indices, and the class count one-hot labels imply.

    Accepts ``(N,)`` or ``(N, 1)`` integer labels and one-hot ``(N, K)`` rows (returned
    ``K``; otherwise ``None``). Raises ``ValueError`` when the count differs from
    ``num_images`` (of the array named ``images``), the dtype is not integer (or one-hot
    numeric), or a label is negative.
    """
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim not in (1, 2):
        raise ValueError(f"{where} must be (N,) class indices, got shape {y.shape}")
    if y.shape[0] != num_images:
        raise ValueError(
            f"{where.rsplit(' ', 1)[0]} {images} has {num_images} images but "
            f"{where.rsplit(' ', 1)[-1]} has "
            f"{y.shape[0]} labels; each image needs exactly one label"
        )
    width = None
    if y.ndim == 2:
        y, width = _from_one_hot(y, where), y.shape[1]
    if y.dtype.kind not in "iu":
        raise ValueError(
            f"{where} has dtype {y.dtype}; labels must be integer class indices 0..K-1 "
            "(whole-number floats: store y.astype(np.int64))"
        )
    _require(y, y >= 0, where, "negative")
    _require(y, y <= np.iinfo(np.int32).max, where, "beyond int32")
    return y.astype(np.int32), width


def num_classes_of(
    y_train: np.ndarray, y_test: np.ndarray, where: str, given: int | None, given_by: str
) -> int:
    """The class count ``K`` by the module's rule; raises ``ValueError`` when it is violated.

    ``given`` (from ``given_by``: ``num_classes``, ``class_names``, one-hot width) is checked
    to cover every label; without it ``K = max label + 1`` and every class needs a training
    example.
    """
    splits = ((y_train, "y_train"), (y_test, "y_test"))
    tops = [(int(y.max()), name, int(np.argmax(y))) for y, name in splits if y.size]
    top, name, index = max(tops)
    if given is not None:
        if top >= given:
            raise ValueError(
                f"{where}: label {top} ({name}[{index}]) is out of range for the {given} "
                f"classes given by {given_by}; labels must lie in [0, {given})"
            )
        return given
    k = top + 1
    present = np.unique(y_train)
    missing = k - len(present)
    if missing:
        gaps = np.flatnonzero(present != np.arange(len(present)))
        first = int(gaps[0]) if gaps.size else len(present)
        raise ValueError(
            f"{where}: labels run up to {top} ({name}[{index}]) but {missing} of the classes "
            f"0..{top} have no training example (the first is {first}); labels must be class "
            "indices 0..K-1 with every class in y_train. If the gap is intended, set "
            "num_classes (--set num_classes=K) or store K class_names in the npz"
        )
    return k


def find_bad_images(paths: Sequence[os.PathLike], threads: int = 8) -> list[tuple[int, str]]:
    """``(index, reason)`` for every file whose image header cannot be read, in path order.

    Opens each file with Pillow and calls ``verify()`` (no pixel decoding); JPEG files must also
    end with the end-of-image marker: a fraction of a full decode's cost
    (``experiments/BENCHMARKS.md``, "Image header checks"). The answer is cached
    per process for unchanged files (same paths, sizes and modification times), so loading the
    same folder again (e.g. at another ``image_size``) costs one ``stat`` per file.
    """
    signature = tuple((os.fspath(p), *_stat(p)) for p in paths)
    if signature not in _CHECKED:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            reasons = list(pool.map(_header_problem, paths, chunksize=64))
        _CHECKED.clear()  # keep one folder's answer: a signature can be large
        _CHECKED[signature] = [(i, r) for i, r in enumerate(reasons) if r is not None]
    return list(_CHECKED[signature])


def _stat(path: os.PathLike) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1)
    return (st.st_mtime_ns, st.st_size)


def _header_problem(path: os.PathLike) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as img:
            fmt = img.format
            img.verify()
        if fmt == "JPEG" and not _ends_with(path, b"\xff\xd9"):
            return "truncated JPEG (no end-of-image marker)"
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, …
        text = f"{type(e).__name__}: {e}".replace(str(path), pathlib.Path(path).name)
        return " ".join(text.split())  # one line for the one-line error
    return None


def _ends_with(path: os.PathLike, marker: bytes) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 64))
        return marker in f.read()


def _from_one_hot(y: np.ndarray, where: str) -> np.ndarray:
    if y.dtype.kind not in "biuf":
        raise ValueError(f"{where} has dtype {y.dtype}; labels must be integer class indices")
    is_one_hot = np.all((y == 0) | (y == 1), axis=1) & (np.sum(y == 1, axis=1) == 1)
    if not is_one_hot.all():
        row = int(np.argmin(is_one_hot))
        raise ValueError(
            f"{where} has shape {y.shape} but row {row} is not one-hot ({_short(y[row])}); "
            "store (N,) integer class indices, or one-hot rows with a single 1"
        )
    note(f"{where} is one-hot {y.shape}: converted to class indices (argmax), K = {y.shape[1]}")
    return np.argmax(y, axis=1)


def _require(x: np.ndarray, ok: np.ndarray, where: str, what: str) -> None:
    """Raise naming how many values of ``x`` are not ``ok`` and the first of them."""
    if ok.all():
        return
    name = where.rsplit(" ", 1)[-1]
    rule = IMAGE_RULE if name.startswith("x_") else "labels are class indices 0..K-1"
    raise ValueError(f"{where}: {_first_bad(x, ok, where)} {what}; {rule}")


def _first_bad(x: np.ndarray, ok: np.ndarray, where: str) -> str:
    """``"3 of 100 values (the first is x[2, 0] = 1.001) are"``-style count and position."""
    bad = ~ok
    index = np.unravel_index(int(np.argmax(bad)), x.shape)
    value = x[index].item()
    shown = f"{value:.6g}" if isinstance(value, float) else repr(value)
    position = f"{where.rsplit(' ', 1)[-1]}[{', '.join(str(int(i)) for i in index)}]"
    return (
        f"{int(np.count_nonzero(bad))} of {x.size} values (the first is {position} = {shown}) are"
    )


def _short(row: np.ndarray) -> str:
    text = np.array2string(row, max_line_width=10_000, threshold=8, edgeitems=3)
    return text.replace("\n", " ")
