"""Train a segmentation model on ``digits_seg`` and report pixel accuracy and mean IoU.

    python experiments/segmentation_digits.py unet   --epochs 6   # widths (16, 32, 64), padding 1
    python experiments/segmentation_digits.py segnet --epochs 6   # stages (16,2) (32,2) (64,2)

Uses the pure steps of :mod:`cnnjax.train.tasks` (the ``segmentation`` task) with Adam, jitted on
one device; writes ``WORKDIR/metrics.jsonl`` (per epoch: loss, pixel_accuracy, mean_iou; per-class
IoU at the end) and ``WORKDIR/masks.png`` (test images, ground truth, prediction). Results are
recorded in experiments/README.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import time

import jax
import numpy as np
import optax

from cnnjax.data import batches, load_dataset
from cnnjax.models import create_model
from cnnjax.ops import compiler_options
from cnnjax.train.state import create_train_state
from cnnjax.train.tasks import iou_from_confusion, segmentation_eval_step, segmentation_train_step
from cnnjax.viz import plot_segmentation

SMALL = {
    "unet": {"widths": (16, 32, 64), "padding": 1},
    "segnet": {"stages": ((16, 2), (32, 2), (64, 2))},
}


def evaluate(state, eval_step, dataset, batch_size):
    sums = None
    for batch in batches(dataset, batch_size=batch_size, train=False):
        m = jax.device_get(eval_step(state, batch))
        sums = m if sums is None else {k: sums[k] + m[k] for k in m}
    scores = iou_from_confusion(sums["confusion"])
    return {"loss": float(sums["loss"] / sums["count"]), **scores}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", choices=sorted(SMALL))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)
    workdir = pathlib.Path(args.workdir or f"runs/{args.model}_digits_seg")
    workdir.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset("digits_seg")
    model = create_model(args.model, num_classes=dataset.num_classes, **SMALL[args.model])
    steps = len(dataset.train) // args.batch_size
    tx = optax.adam(optax.cosine_decay_schedule(args.lr, steps * args.epochs))
    state = create_train_state(model, tx, seed=0, input_shape=dataset.image_shape)
    jit = functools.partial(jax.jit, compiler_options=compiler_options())  # CPU conv library
    train_step = jit(functools.partial(segmentation_train_step, model=model, tx=tx))
    eval_step = jit(functools.partial(segmentation_eval_step, model=model))
    log = (workdir / "metrics.jsonl").open("w")
    start = time.time()
    for epoch in range(1, args.epochs + 1):
        for batch in batches(dataset, batch_size=args.batch_size, train=True, epoch=epoch):
            state, _ = train_step(state, batch)
        test = evaluate(state, eval_step, dataset, 100)
        record = {"epoch": epoch, "split": "test", "seconds": round(time.time() - start, 1)}
        record.update({k: v for k, v in test.items() if k != "iou"})
        if epoch == args.epochs:
            record["iou"] = [round(float(v), 4) for v in test["iou"]]
        log.write(json.dumps(record) + "\n")
        log.flush()
        print(json.dumps(record))
    batch = next(batches(dataset, batch_size=6, train=False))
    logits = model.apply(
        {
            "params": state.params,
            **({"batch_stats": state.batch_stats} if state.batch_stats else {}),
        },
        batch["image"],
        train=False,
    )
    plot_segmentation(
        batch["image"],
        batch["label"],
        np.asarray(logits.argmax(-1)),
        workdir / "masks.png",
        num_classes=dataset.num_classes,
        title=f"{args.model} on digits_seg: mean IoU {test['mean_iou']:.3f}",
    )


if __name__ == "__main__":
    main()
