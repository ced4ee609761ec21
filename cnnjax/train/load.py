"""Loading a trained run for analysis: its model, weights and test images.

The pictures of :mod:`cnnjax.analysis` take ``(model, variables, images)``; this module, on the
training side, restores them from a workdir (its ``config.json`` and checkpoints), so analysis
never imports the training code.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Callable, Sequence

import flax.linen as nn
import numpy as np

from cnnjax.data import Dataset
from cnnjax.data.augment import normalize
from cnnjax.train.checkpoint import Checkpointer, checkpoint_directory
from cnnjax.train.run import build_run
from cnnjax.train.workdir import load_workdir_config

__all__ = ["LoadedRun", "load_run"]


@dataclasses.dataclass
class LoadedRun:
    """A trained run: model, variables, the normalised test images' source and the input shape."""

    name: str
    model: nn.Module
    variables: dict
    input_shape: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    images: Callable[[int], np.ndarray]  # index -> normalised (H, W, C) test image
    num_test: int


def load_run(
    workdir: str | pathlib.Path,
    step: int | None = None,
    checkpoint: str = "latest",
    *,
    data: bool = True,
) -> LoadedRun:
    """Restore ``workdir``'s checkpoint (latest or ``step``; ``checkpoint="best"``: from
    ``WORKDIR/checkpoints_best``) and its data set's test split.

    ``data=False`` loads no data (drawing weights needs none): shapes come from the run record
    in ``config.json``; ``images`` then raises and ``num_test`` is 0."""

    workdir = pathlib.Path(workdir)
    config = load_workdir_config(workdir, data=data)
    config.parallel = "none"
    config.resume = True
    run = build_run(config, dataset=None if data else _recorded_dataset(workdir, config))
    directory = checkpoint_directory(workdir, checkpoint)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} does not exist: train the run first")
    checkpointer = Checkpointer(directory, keep=config.checkpoint.keep)
    try:  # damaged checkpoints are reported and left in place (drawing moves no files)
        state, _ = checkpointer.restore(run.initial_state(), step, quarantine=False)
    finally:
        checkpointer.close()
    params = state.ema_params if config.optimizer.ema_decay is not None else state.params
    variables = {"params": params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    dataset = run.dataset
    shape = tuple(run.input_shape)

    def image(index: int) -> np.ndarray:
        if not data:
            raise ValueError("load_run(data=False) loaded no test images")
        if not 0 <= index < len(dataset.test):
            raise ValueError(f"--index must be in [0, {len(dataset.test)}), got {index}")
        raw, _ = dataset.test.get(np.array([index]))
        return normalize(_center(raw, shape), dataset.mean, dataset.std)[0]

    return LoadedRun(
        name=config.model,
        model=run.model,
        variables=variables,
        input_shape=shape,
        mean=tuple(dataset.mean),
        std=tuple(dataset.std),
        images=image,
        num_test=len(dataset.test),
    )


class _NoImages:
    """A split of ``n`` examples whose images were not loaded (``load_run(data=False)``)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def get(self, indices):
        raise ValueError("this run was loaded without its data (load_run(data=False))")


def _recorded_dataset(workdir: pathlib.Path, config):
    """A data-free stand-in for the run's data set, from ``config.json``'s run record."""
    record = json.loads((workdir / "config.json").read_text()).get("run_record", {})
    derived = record.get("derived") or {}
    if not {"input_shape", "num_classes", "train_examples"} <= derived.keys():
        return None  # an old run without a record: load the data after all
    shape = tuple(derived["input_shape"])
    channels = shape[2]
    return Dataset(
        name=str(config.dataset),
        train=_NoImages(int(derived["train_examples"])),
        test=_NoImages(0),
        num_classes=int(derived["num_classes"]),
        image_shape=shape,
        mean=(0.0,) * channels,
        std=(1.0,) * channels,
    )


def _center(images: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Centre-crop (or zero-pad) ``(N, H, W, C)`` to the model's ``(H, W, C)``."""
    out = images
    for axis, size in ((1, shape[0]), (2, shape[1])):
        n = out.shape[axis]
        if n > size:
            out = np.take(out, np.arange((n - size) // 2, (n - size) // 2 + size), axis=axis)
        elif n < size:
            pad = [(0, 0)] * out.ndim
            pad[axis] = ((size - n) // 2, size - n - (size - n) // 2)
            out = np.pad(out, pad)
    return out
