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
* **Augmentation** (train only, on the host) draws its randomness for the whole global batch from
  ``default_rng([seed, epoch, batch, 1])`` and slices this process's rows: a multi-process run
  augments exactly as the single-process run does.
* With ``normalize=False`` the images stay ``uint8`` (for device-side normalisation).
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable, Iterator

import numpy as np

from cnnjax.data.augment import center_crop, crop, flip_horizontal, normalize, sample_augment_params
from cnnjax.data.sources import Dataset, Source, check_labels

IGNORE_INDEX = 255  # per-pixel label of unlabelled pixels (segmentation; cnnjax.train.tasks)

__all__ = ["AugmentConfig", "batches", "num_batches", "prefetch_to_device"]

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
    """Batches per epoch: ``N // B`` in training (drop remainder), ``ceil(N / B)`` in evaluation."""
    return num_examples // batch_size if train else -(-num_examples // batch_size)


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
    n = len(source)
    steps = num_batches(n, batch_size, train=train)
    if train and steps == 0:
        raise ValueError(
            f"batch size {batch_size} is larger than the training split ({n} examples)"
        )
    local = batch_size // process_count
    lo, hi = process_index * local, (process_index + 1) * local
    order = np.random.default_rng([seed, epoch]).permutation(n) if train else np.arange(n)
    augment = augment or AugmentConfig()
    for b in range(start_batch, steps):
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
        images = _augment(images, augment, train, [seed, epoch, b, 1], batch_size, lo)
        if normalize_images:
            images = normalize(images, mean, std)
        batch = {"image": images, "label": labels}
        if mask is not None:
            batch["mask"] = mask[lo:hi]
        yield batch


def _augment(images, augment: AugmentConfig, train: bool, seed, global_batch: int, offset: int):
    size = augment.crop_size
    if not train:
        return center_crop(images, (size, size)) if size else images
    if not augment.active:
        return images
    size = (size, size) if size else tuple(images.shape[1:3])
    rng = np.random.default_rng(seed)
    params = sample_augment_params(
        rng,
        global_batch,
        images.shape[1:3],
        size=size,
        padding=augment.padding,
        flip=augment.flip,
    )
    rows = slice(offset, offset + len(images))
    images = crop(images, params["offsets"][rows], size, augment.padding)
    return flip_horizontal(images, params["flips"][rows]) if augment.flip else images


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
    producing are re-raised in the consumer; closing the generator stops the thread and joins it.
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
