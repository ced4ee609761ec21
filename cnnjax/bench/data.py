"""``cnnjax bench data DATASET``: the input pipeline alone, in images per second.

Two variants, timed in alternating rounds (medians over ``--repeats``):

* ``host``: :func:`cnnjax.data.batches` with the augmentation on the host (NumPy crop after
  zero padding, flip, normalisation), each batch copied to the device — what the training loop
  does with ``augment.on_device=False``.
* ``device``: raw batches from the same pipeline copied to the device, then
  :func:`cnnjax.data.device_augment` jitted there — ``augment.on_device=True``.

Compare with ``cnnjax bench train``'s img/s: when the pipeline is slower than the step, data
limits the run.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import statistics
import time

import jax

from cnnjax.bench import report
from cnnjax.progress import progress_bar

__all__ = ["run", "run_from_args"]


def _batches(dataset, batch: int, augment, *, normalize: bool):
    from cnnjax.data import batches

    for epoch in itertools.count():
        yield from batches(
            dataset,
            batch_size=batch,
            train=True,
            epoch=epoch,
            augment=augment,
            normalize_images=normalize,
        )


def run(
    dataset_name: str,
    *,
    batch: int = 128,
    steps: int = 20,
    warmup: int = 2,
    repeats: int = 5,
    padding: int = 4,
    flip: bool = True,
    crop_size: int | None = None,
    image_size: int | None = None,
) -> dict:
    """Time ``steps`` batches of each variant per round; returns ``{"meta", "results"}``."""
    from cnnjax.data import AugmentConfig, device_augment, load_dataset

    for name, value in (("batch", batch), ("steps", steps), ("repeats", repeats)):
        if value < 1:
            raise ValueError(f"bench data: --{name} must be >= 1, got {value}")
    dataset = load_dataset(dataset_name, image_size=image_size)
    host_aug = AugmentConfig(padding, flip, crop_size)
    size = (crop_size, crop_size) if crop_size else None
    augment_fn = jax.jit(
        functools.partial(
            device_augment,
            mean=dataset.mean,
            std=dataset.std,
            padding=padding,
            flip=flip,
            size=size,
        )
    )
    host_iter = _batches(dataset, batch, host_aug, normalize=True)
    raw_iter = _batches(dataset, batch, None, normalize=False)
    key = jax.random.key(0)

    def host(n: int) -> None:
        out = None
        for _ in range(n):
            b = next(host_iter)
            out = jax.device_put(b["image"])
        jax.block_until_ready(out)

    def device(n: int) -> None:
        out = None
        for i in range(n):
            b = next(raw_iter)
            out = augment_fn(jax.random.fold_in(key, i), jax.device_put(b["image"]))
        jax.block_until_ready(out)

    variants = {"host augmentation": host, "device augmentation": device}
    times = {name: [] for name in variants}
    bar = progress_bar(len(variants) * (repeats + 1), f"bench data {dataset_name}", "round")
    for fn in variants.values():
        fn(max(warmup, 1))  # compiles the device variant
        bar.update(1)
    for r in range(repeats):
        names = list(variants)[r % 2 :] + list(variants)[: r % 2]
        for name in names:
            start = time.perf_counter()
            variants[name](steps)
            times[name].append(time.perf_counter() - start)
            bar.update(1)
    bar.close()
    rows = []
    for name, t in times.items():
        batch_s = statistics.median(t) / steps
        rows.append({"variant": name, "img_per_s": batch / batch_s, "batch_ms": 1e3 * batch_s})
    meta = report.machine_meta()
    meta.update(
        dataset=dataset_name,
        image_shape=list(dataset.image_shape),
        batch=batch,
        steps=steps,
        repeats=repeats,
        augment={"padding": padding, "flip": flip, "crop_size": crop_size},
    )
    return {"meta": meta, "results": rows}


COLUMNS = (
    ("variant", "variant", "<24", "s"),
    ("img_per_s", "img/s", ">12", ",.0f"),
    ("batch_ms", "ms/batch", ">10", ".2f"),
)


def run_from_args(args: argparse.Namespace) -> int:
    """The ``cnnjax bench data`` handler (arguments defined in :mod:`cnnjax.bench`)."""
    if args.tiny:
        args.batch, args.steps, args.warmup, args.repeats = 8, 2, 1, 2
    result = run(
        args.dataset,
        batch=args.batch,
        steps=args.steps,
        warmup=args.warmup,
        repeats=args.repeats,
        padding=args.padding,
        flip=not args.no_flip,
        crop_size=args.crop_size,
        image_size=args.image_size,
    )
    report.emit(result, COLUMNS, args, title=f"bench data {args.dataset}")
    return 0
