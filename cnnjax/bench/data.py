"""``cnnjax bench data DATASET``: the training input pipeline alone, in images per second.

Variants, timed in alternating rounds (medians over ``--repeats``; ``vs first`` is each
variant's img/s over the first's, from the same rounds), for every ``--workers`` count:

* ``host``: :func:`cnnjax.data.batches` with the augmentation on the host (NumPy crop after
  zero padding, flip, normalisation to float32), each batch copied to the device — what the
  training loop does for streaming sources (``augment.on_device`` off).
* ``device``: the same batches deferred (raw ``uint8`` images plus the host-drawn crop offsets
  and flips) copied to the device, then :func:`cnnjax.data.device_preprocess` jitted there —
  the default for in-memory data. Its output equals the host variant's bit for bit.

``workers`` is ``data.workers``: grain threads assembling batches ahead (0: in the timed
thread). Each round opens fresh streams, so nothing read ahead during another variant's round
is counted. Compare with ``cnnjax bench train``'s img/s: when the pipeline is slower than the
step, data limits the run.
"""

from __future__ import annotations

import argparse
import functools
import statistics

import jax

from cnnjax.bench import report
from cnnjax.progress import progress_bar

__all__ = ["run", "run_from_args"]


def _take(open_epoch, n: int, first_epoch: int):
    """The first ``n`` batches from consecutive epochs ``open_epoch(e)``, each stream closed."""
    taken, epoch = 0, first_epoch
    while taken < n:
        stream = open_epoch(epoch)
        try:
            for batch in stream:
                yield batch
                taken += 1
                if taken == n:
                    break
        finally:
            getattr(stream, "close", lambda: None)()
        epoch += 1


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
    workers: tuple[int, ...] = (0,),
    places: tuple[str, ...] = ("host", "device"),
    val_split: float | None = None,
    skip_bad_files: bool = False,
) -> dict:
    """Time ``steps`` batches of each variant per round; returns ``{"meta", "results"}``.

    Only the train split is read: a ``folder:ROOT`` of class folders (no ``train``/``test``)
    loads with ``val_split`` (default 0.1) held out. Raises ValueError on bad sizes or augment
    geometry (see :func:`cnnjax.data.augment.check_augment_geometry`).
    """
    from cnnjax.data import AugmentConfig, device_preprocess
    from cnnjax.data.augment import check_augment_geometry

    _check_counts(batch, steps, repeats, warmup, image_size, workers, places)
    dataset = _load_train(dataset_name, image_size, val_split, skip_bad_files)
    if len(dataset.train) < batch:
        raise ValueError(
            f"bench data: --batch {batch} is larger than the training split "
            f"({len(dataset.train)} examples)"
        )
    names = {"padding": "--padding", "crop_size": "--crop-size"}
    check_augment_geometry(padding, crop_size, dataset.image_shape[:2], names=names)
    augment = AugmentConfig(padding, flip, crop_size)
    finish = jax.jit(
        functools.partial(device_preprocess, augment=augment, mean=dataset.mean, std=dataset.std)
    )
    variant = functools.partial(_variant, dataset, batch, augment, finish)
    variants = {(p, w): variant(p, w) for p in places for w in workers}
    bar = progress_bar(len(variants) * (repeats + 1), f"bench data {dataset_name}", "round")
    for fn in variants.values():
        fn(max(warmup, 1), repeats)  # compiles the device variant (epochs of no round)
        bar.update(1)
    blocks = {key: functools.partial(fn, steps) for key, fn in variants.items()}
    times = report.time_rotating_rounds(blocks, repeats, done=lambda: bar.update(1))
    bar.close()
    meta = report.machine_meta()
    meta.update(
        dataset=dataset_name,
        image_shape=list(dataset.image_shape),
        batch=batch,
        steps=steps,
        repeats=repeats,
        augment={"padding": padding, "flip": flip, "crop_size": crop_size},
    )
    return {"meta": meta, "results": _rows(times, batch, steps)}


def _check_counts(batch, steps, repeats, warmup, image_size, workers, places) -> None:
    """ValueError naming the flag of the first count out of range."""
    for name, value in (("batch", batch), ("steps", steps), ("repeats", repeats)):
        if value < 1:
            raise ValueError(f"bench data: --{name} must be >= 1, got {value}")
    if warmup < 0 or (image_size is not None and image_size < 1):
        raise ValueError(
            f"bench data: --warmup must be >= 0 and --image-size >= 1; got {warmup}, {image_size}"
        )
    if not workers or min(workers) < 0:
        raise ValueError(f"bench data: --workers must be counts >= 0, got {workers}")
    unknown = set(places) - {"host", "device"}
    if unknown or not places:
        raise ValueError(f"bench data: --augment-on must be host and/or device, got {places}")


def _load_train(dataset_name: str, image_size, val_split, skip_bad_files: bool):
    """The data set; a folder of class folders only holds out the default fraction 0.1 (only
    the train split is timed)."""
    from cnnjax.data import load_dataset

    load = functools.partial(
        load_dataset, dataset_name, image_size=image_size, skip_bad_files=skip_bad_files
    )
    try:
        return load(val_split=val_split)
    except ValueError as e:
        if val_split is not None or "has no test split" not in str(e):
            raise
        return load(val_split=0.1)


def _variant(dataset, batch: int, augment, finish, place: str, count: int):
    """``timed(n, round_index)``: ``n`` batches of the ``place`` variant with ``count`` workers,
    on the device (``finish``: the jitted device preprocessing), from epochs of that round."""
    from cnnjax.data import batches

    on_device = place == "device"
    open_epoch = functools.partial(
        batches,
        dataset,
        batch_size=batch,
        train=True,
        augment=augment,
        normalize_images=not on_device,
        defer_augment=on_device,
        workers=count,
    )

    def timed(n: int, round_index: int) -> None:
        out = None
        for b in _take(lambda e: open_epoch(epoch=e), n, 1000 * round_index):
            out = jax.device_put(b)
            out = finish(None, out)["image"] if on_device else out["image"]
        jax.block_until_ready(out)

    return timed


def _rows(times: dict, batch: int, steps: int) -> list[dict]:
    """Table rows: medians per variant, and each variant's speed over the first's."""
    first = next(iter(times))
    rows = []
    for (place, count), t in times.items():
        batch_s = statistics.median(t) / steps
        ratio = statistics.median(a / b for a, b in zip(times[first], t, strict=True))
        rows.append(
            {
                "variant": f"{place} augmentation",
                "workers": count,
                "img_per_s": batch / batch_s,
                "batch_ms": 1e3 * batch_s,
                "vs_first": ratio,
            }
        )
    return rows


COLUMNS = (
    ("variant", "variant", "<22", "s"),
    ("workers", "workers", ">8", "d"),
    ("img_per_s", "img/s", ">12", ",.0f"),
    ("batch_ms", "ms/batch", ">10", ".2f"),
    ("vs_first", "vs first", ">9", ".2f"),
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
        workers=tuple(args.workers),
        places=tuple(args.augment_on),
        val_split=args.val_split,
        skip_bad_files=args.skip_bad_files,
    )
    report.emit(result, COLUMNS, args, title=f"bench data {args.dataset}")
    return 0
