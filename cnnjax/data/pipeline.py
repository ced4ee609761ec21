"""The one batch iterator every source goes through, and a background prefetch to device.

Contract of :func:`batches`: it yields ``{"image": float32 (b, H, W, C), "label": int32 (b,)}``
NumPy dicts (segmentation sets: ``(b, H, W)`` per-pixel labels, ``IGNORE_INDEX`` allowed),
where ``b = batch_size // process_count`` is this process's share of the global batch.

* **Order.** Training order is ``np.random.default_rng([seed, epoch]).permutation(N)``, cut into
  ``N // batch_size`` global batches (``drop_remainder``: the last partial batch is dropped, so
  every step has the same shape and compiles once). Process ``p`` takes rows ``[p*b, (p+1)*b)``
  of every global batch, so the union over processes is exactly the one-process batch, in the
  same order, whatever ``process_count`` is. ``start_batch`` skips the batches a resumed run has
  already consumed.
* **Evaluation** visits every example once in index order, in ``ceil(N / batch_size)`` batches
  of full size: the last one is padded (with copies of example 0) and every eval batch carries
  ``"mask"`` (float32, 1 for real examples, 0 for padding), so shapes stay static and divisible
  by the device count; ``eval_step`` weights by the mask.
* **Augmentation** (train only) draws its randomness for the whole global batch from
  ``default_rng([seed, epoch, batch, 1])`` on the host and slices this process's rows: a
  multi-process run augments exactly as the single-process run does. Segmentation masks get the
  image's crop (padding ``IGNORE_INDEX``) and flip; evaluation centre-crops both.
* **Deferred augmentation** (``defer_augment=True``, with ``normalize_images=False``): the batch
  carries the raw ``uint8`` images plus the drawn ``"crop"`` offsets ``int32 (b, 2)`` and
  ``"flip"`` flags ``bool (b,)``; :func:`device_preprocess` inside the jitted step crops, flips
  and normalises. ``device_preprocess(batches(..., defer_augment=True))`` equals
  ``batches(...)`` bit for bit: same randomness, same pixels, same normalisation table.
* **Workers** (``workers > 0``): batches are assembled (read/decode, augment) by a
  ``grain.MapDataset`` over the batch numbers, read ahead by ``workers`` threads in order
  (``grain.ReadOptions``); the stream is the same batch for batch, and ``start_batch`` resumes it
  at any step. Threads, not processes: Pillow decoding, ArrayRecord reads and NumPy gathers
  release the GIL, and threads start instantly and leave no child process behind.
* With ``normalize_images=False`` the images stay ``uint8`` (for device-side normalisation).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import queue
import threading
from collections.abc import Callable, Iterator

import numpy as np

from cnnjax.data.augment import (
    center_crop,
    crop,
    device_crop_flip,
    device_normalize,
    flip_horizontal,
    normalize,
    sample_augment_params,
)
from cnnjax.data.dataset import IGNORE_INDEX, ArraySource, Dataset, Source, check_labels

__all__ = [
    "IGNORE_INDEX",
    "AugmentConfig",
    "batches",
    "default_workers",
    "device_preprocess",
    "in_memory",
    "num_batches",
    "prefetch_to_device",
]

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Host augmentation: random crop of ``crop_size`` after ``padding`` zeros, horizontal flip.

    ``crop_size=None`` keeps the image size (CIFAR: ``padding=4``); a smaller ``crop_size`` crops
    ImageNet-style (random in training, central in evaluation).
    """

    padding: int = 0
    flip: bool = False
    crop_size: int | None = None

    @property
    def active(self) -> bool:
        return bool(self.padding or self.flip or self.crop_size)


def num_batches(num_examples: int, batch_size: int, *, train: bool) -> int:
    """Batches per epoch: ``N // B`` in training (drop remainder), ``ceil(N / B)`` in evaluation.

    Raises ``ValueError`` when ``batch_size < 1``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return num_examples // batch_size if train else -(-num_examples // batch_size)


def in_memory(source: Source | Dataset) -> bool:
    """Whether a split (a :class:`Dataset`'s train split) is held in memory as arrays, where
    batches are a cheap gather and device-side augmentation is the default."""
    if isinstance(source, Dataset):
        source = source.train
    return isinstance(source, ArraySource)


def default_workers() -> int:
    """``data.workers`` default: ``min(cpu_count, 8)`` reader threads."""
    return min(os.cpu_count() or 1, 8)


def batches(
    source: Source | Dataset,
    *,
    batch_size: int,
    train: bool,
    seed: int = 0,
    epoch: int = 0,
    start_batch: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    augment: AugmentConfig | None = None,
    normalize_images: bool = True,
    num_classes: int | None = None,
    defer_augment: bool = False,
    workers: int = 0,
) -> Iterator[Batch]:
    """Iterate one epoch of ``source`` (a :class:`Source`; for a :class:`Dataset` its train or
    test split, with its statistics and class count). See the module docstring for the contract.
    """
    if isinstance(source, Dataset):
        dataset = source
        source = dataset.train if train else dataset.test
        mean = dataset.mean if mean is None else mean
        std = dataset.std if std is None else std
        num_classes = dataset.num_classes if num_classes is None else num_classes
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if batch_size % process_count:
        raise ValueError(
            f"global batch size {batch_size} is not divisible by the process count "
            f"{process_count}; choose a multiple of {process_count}"
        )
    if normalize_images and (mean is None or std is None):
        raise ValueError("normalize_images needs mean and std (pass a Dataset or both)")
    if defer_augment and normalize_images:
        raise ValueError("defer_augment=True needs normalize_images=False (both on device)")
    if workers < 0:
        raise ValueError(f"workers must be >= 0 (0: read in the calling thread), got {workers}")
    n = len(source)
    steps = num_batches(n, batch_size, train=train)
    if train and steps == 0:
        raise ValueError(
            f"batch size {batch_size} is larger than the training split ({n} examples)"
        )
    make = functools.partial(
        _make_batch,
        source=source,
        order=np.random.default_rng([seed, epoch]).permutation(n) if train else np.arange(n),
        batch_size=batch_size,
        train=train,
        seed=seed,
        epoch=epoch,
        local=(process_index * (batch_size // process_count), batch_size // process_count),
        mean=mean,
        std=std,
        augment=augment or AugmentConfig(),
        normalize_images=normalize_images,
        num_classes=num_classes,
        defer_augment=defer_augment and train,
    )
    if workers == 0 or steps - start_batch <= 1:
        return map(make, range(start_batch, steps))
    return _read_ahead(make, range(start_batch, steps), workers)


def _make_batch(
    b: int,
    *,
    source,
    order,
    batch_size,
    train,
    seed,
    epoch,
    local,
    mean,
    std,
    augment,
    normalize_images,
    num_classes,
    defer_augment,
) -> Batch:
    """Global batch ``b`` of the epoch, this process's rows: a pure function of ``b``."""
    lo, hi = local[0], local[0] + local[1]
    global_idx = order[b * batch_size : (b + 1) * batch_size]
    mask = None
    if not train:
        mask = np.zeros(batch_size, np.float32)
        mask[: len(global_idx)] = 1.0
        global_idx = np.pad(global_idx, (0, batch_size - len(global_idx)))
    idx = global_idx[lo:hi]
    images, labels = source.get(idx)
    labels = np.asarray(labels, np.int32)
    if num_classes is not None:
        check_labels(
            labels,
            num_classes,
            f"batch {b} (examples {idx[:4].tolist()}…)",
            ignore_index=IGNORE_INDEX if labels.ndim > 1 else None,
        )
    batch = {"image": images, "label": labels}
    params = _augment_params(augment, train, [seed, epoch, b, 1], batch_size, images.shape[1:3])
    if params is not None:
        rows = slice(lo, hi)
        params = {"crop": params["offsets"][rows].astype(np.int32), "flip": params["flips"][rows]}
        if not augment.flip:
            del params["flip"]
    if defer_augment:
        batch.update(params or {})
    else:
        batch = _apply_host(batch, augment, train, params)
    if normalize_images:
        batch["image"] = normalize(batch["image"], mean, std)
    if mask is not None:
        batch["mask"] = mask[lo:hi]
    return batch


def _augment_params(augment: AugmentConfig, train: bool, seed, global_batch: int, image_hw):
    """The global batch's crop offsets and flips (``None`` when training does not augment)."""
    if not train or not augment.active:
        return None
    size = (augment.crop_size,) * 2 if augment.crop_size else tuple(image_hw)
    return sample_augment_params(
        np.random.default_rng(seed),
        global_batch,
        tuple(image_hw),
        size=size,
        padding=augment.padding,
        flip=augment.flip,
    )


def _apply_host(batch: Batch, augment: AugmentConfig, train: bool, params) -> Batch:
    """Crop / flip (train) or centre-crop (eval) the images and any per-pixel masks."""
    size = augment.crop_size
    keys = ["image", *(["label"] if batch["label"].ndim > 1 else [])]
    out = dict(batch)
    for key in keys:
        x = batch[key]
        if not train:
            out[key] = center_crop(x, (size, size)) if size else x
        elif params is not None:
            window = (size, size) if size else tuple(x.shape[1:3])
            fill = IGNORE_INDEX if key == "label" else 0
            x = crop(x, params["crop"], window, augment.padding, fill)
            out[key] = flip_horizontal(x, params["flip"]) if "flip" in params else x
    return out


def device_preprocess(
    key,
    batch: dict,
    *,
    augment: AugmentConfig,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> dict:
    """The device half of a deferred batch (JAX, inside the jitted train step): crop and flip
    by the batch's ``"crop"`` / ``"flip"`` (images and per-pixel masks alike), then normalise.

    ``key`` is unused (the randomness was drawn on the host, see :func:`batches`); it is taken so
    that this plugs into ``train_step(augment=...)`` as ``augment(key, batch) -> batch``.
    """
    del key
    out = dict(batch)
    offsets = out.pop("crop", None)
    flips = out.pop("flip", None)
    if offsets is not None:
        size = (augment.crop_size,) * 2 if augment.crop_size else tuple(batch["image"].shape[1:3])
        keys = ["image", *(["label"] if batch["label"].ndim > 1 else [])]
        for name in keys:
            fill = IGNORE_INDEX if name == "label" else 0
            out[name] = device_crop_flip(
                out[name], offsets, flips, size=size, padding=augment.padding, fill=fill
            )
    out["image"] = device_normalize(out["image"], mean, std)
    return out


def _read_ahead(make: Callable[[int], Batch], numbers: range, workers: int) -> Iterator[Batch]:
    """``map(make, numbers)`` computed ``workers`` batches ahead by grain threads, in order.

    Closing the generator (or an error) closes grain's iterator, which cancels the pending reads.
    """
    import grain

    options = grain.ReadOptions(num_threads=workers, prefetch_buffer_size=2 * workers)
    iterator = iter(
        grain.MapDataset.range(numbers.start, numbers.stop).map(make).to_iter_dataset(options)
    )
    try:
        yield from iterator
    finally:
        iterator.close()


class _Stop:
    """End-of-stream marker carrying an exception raised by the producer thread, if any."""

    def __init__(self, error: BaseException | None = None):
        self.error = error


def prefetch_to_device(
    iterator: Iterator[Batch], put: Callable[[Batch], object], size: int = 2
) -> Iterator[object]:
    """Run ``put(batch)`` (e.g. ``jax.device_put`` to a sharding) ``size`` batches ahead.

    A daemon thread pulls from ``iterator``, transfers, and queues; the consumer therefore never
    waits for the host as long as producing a batch is faster than a step. Exceptions raised while
    producing are re-raised in the consumer; closing the generator stops the thread, which closes
    ``iterator`` (when it can be closed), and joins it.
    """
    buffer: queue.Queue = queue.Queue(maxsize=max(1, size))
    stop = threading.Event()

    def offer(item) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for batch in iterator:
                if not offer(put(batch)):
                    return
            offer(_Stop())
        except BaseException as e:  # handed to the consumer
            offer(_Stop(e))
        finally:  # stops the reader threads of a batches(..., workers=N) stream
            getattr(iterator, "close", lambda: None)()

    thread = threading.Thread(target=produce, daemon=True, name="cnnjax-prefetch")
    thread.start()
    try:
        while True:
            item = buffer.get()
            if isinstance(item, _Stop):
                if item.error is not None:
                    raise item.error
                return
            yield item
    finally:
        stop.set()
        # Wait for the producer to leave ``put`` (a device transfer in C++): a daemon thread
        # still inside it when the interpreter exits is killed mid-call and aborts the process
        # ("terminate called ... FATAL: exception not rethrown", exit 134) after a good run.
        thread.join(timeout=60)
