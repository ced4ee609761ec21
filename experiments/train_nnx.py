"""LeNet-5 on the embedded digits with Flax NNX: ``nnx.Optimizer`` + optax + ``nnx.jit``.

Command:
    python experiments/train_nnx.py                  # NNX, initialised from nnx.Rngs(seed)
    python experiments/train_nnx.py --compare-linen  # + `cnnjax train lenet5` (Linen), and NNX
                                                     #   started from the Linen run's weights
    python experiments/train_nnx.py --epochs 3 --model vgg11_bn --image-size 32   # any model

Expected (10 epochs, the defaults of ``cnnjax train lenet5``: AdamW 5e-3, cosine, batch 32):
≥ 95 % test accuracy on the fixed 450-image split, as the Linen loop; with ``--compare-linen``
the NNX run from the Linen initial weights ends within 1 point of it (docs/nnx.md has the
measured numbers).

This is an example of an NNX training step, not a second training loop: the data pipeline,
optimiser and schedule are the ones ``cnnjax train`` builds (:func:`cnnjax.train.build_run`);
the CLI itself trains the Linen models.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from cnnjax.models import create_model
from cnnjax.nnx import from_linen
from cnnjax.train import build_run
from cnnjax.train.config import default_config
from cnnjax.train.steps import cross_entropy


@nnx.jit
def train_step(model: nnx.Module, optimizer: nnx.Optimizer, images, labels):
    """One optimiser step; returns the summed loss and the number of correct predictions."""

    def loss_fn(model):
        logits = model(images)
        return jnp.mean(cross_entropy(logits, labels)), logits

    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    return loss * labels.shape[0], jnp.sum(jnp.argmax(logits, -1) == labels)


@nnx.jit
def eval_step(model: nnx.Module, images, labels, mask):
    """Summed loss and correct predictions over the rows with ``mask == 1``."""
    logits = model(images)
    loss = jnp.sum(cross_entropy(logits, labels) * mask)
    return loss, jnp.sum((jnp.argmax(logits, -1) == labels) * mask)


def train_nnx(
    config: ml_collections.ConfigDict,
    *,
    init_from_linen: bool = False,
    verbose: bool = True,
) -> dict[str, float]:
    """Train ``config.model`` as an NNX module for ``config.epochs``; return test metrics.

    ``init_from_linen``: start from the initial weights of the Linen run of the same config
    (:meth:`cnnjax.train.Run.initial_state`), so the two runs differ only in the API.
    """
    run = build_run(config)
    model = create_model(
        config.model,
        api="nnx",
        rngs=nnx.Rngs(config.seed),
        num_classes=run.dataset.num_classes,
        impl=config.impl,
        input_shape=run.input_shape,
        **dict(config.model_overrides),
    )
    if init_from_linen:
        state = run.initial_state()
        from_linen(model, {"params": state.params, "batch_stats": state.batch_stats})
    optimizer = nnx.Optimizer(model, run.tx, wrt=nnx.Param)
    test = {}
    for epoch in range(config.epochs):
        start, loss_sum, correct, count = time.perf_counter(), 0.0, 0, 0
        model.train()
        for batch in run.train_batches(epoch):
            loss, right = train_step(model, optimizer, batch["image"], batch["label"])
            loss_sum, correct = loss_sum + float(loss), correct + int(right)
            count += len(batch["label"])
        test = evaluate(model, run)
        if verbose:
            print(
                f"epoch {epoch + 1}/{config.epochs}: train loss {loss_sum / count:.4f} "
                f"accuracy {correct / count:.2%} | test loss {test['loss']:.4f} accuracy "
                f"{test['accuracy']:.2%} ({time.perf_counter() - start:.1f} s)",
                flush=True,
            )
    return test


def evaluate(model: nnx.Module, run) -> dict[str, float]:
    """Test loss and accuracy of ``model`` in eval mode over ``run``'s test split."""
    model.eval()
    loss_sum, correct, count = 0.0, 0.0, 0.0
    for batch in run.eval_batches():
        loss, right = eval_step(model, batch["image"], batch["label"], batch["mask"])
        loss_sum, correct = loss_sum + float(loss), correct + float(right)
        count += float(batch["mask"].sum())
    return {"loss": loss_sum / count, "accuracy": correct / count, "count": int(count)}


def train_linen(config: ml_collections.ConfigDict) -> dict[str, float]:
    """The same config through ``cnnjax train``'s loop (Linen), in a temporary workdir."""
    from cnnjax.train import train

    with tempfile.TemporaryDirectory() as workdir:
        return train(config, workdir, verbose=False).test


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--impl", default="custom", choices=("custom", "xla"))
    parser.add_argument("--compare-linen", action="store_true")
    args = parser.parse_args(argv)
    config = default_config()
    config.model, config.epochs, config.seed = args.model, args.epochs, args.seed
    config.impl, config.image_size = args.impl, args.image_size
    config.parallel = "none"
    nnx_test = train_nnx(config)
    print(f"NNX ({jax.default_backend()}): test accuracy {nnx_test['accuracy']:.2%}")
    if args.compare_linen:
        same_init = train_nnx(config, init_from_linen=True, verbose=False)
        linen_test = train_linen(config)
        print(f"NNX from the Linen initial weights: test accuracy {same_init['accuracy']:.2%}")
        print(f"Linen (cnnjax train): test accuracy {linen_test['accuracy']:.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
