"""``cnnjax train``: every config flag, its type and help text come from :data:`FLAGS`.

A flag only *overrides* a config field (precedence: defaults < ``--config`` file < flags <
``--set``), so each flag's argparse default is ``None`` ("not given") and its help text states
the field's value in :func:`cnnjax.train.default_config`, read from there.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
from typing import Any

from cnnjax.cli.common import int_at_least, slug

__all__ = ["DESCRIPTION", "FLAGS", "HELP", "ConfigFlag", "add_arguments", "build_config", "run"]

HELP = "train a model (default: on the embedded digits data set)"
DESCRIPTION = "Train MODEL. Precedence: defaults < --config file < flags < --set."


@dataclasses.dataclass(frozen=True)
class ConfigFlag:
    """One ``cnnjax train`` argument that sets one config field.

    ``flag``: ``--name`` (or a positional's name); ``key``: the dotted config field;
    ``help``: the text, where ``{optimizer.name}`` stands for a config value;
    ``options``: extra :meth:`argparse.ArgumentParser.add_argument` keywords (``type``,
    ``choices``, ...); ``unset``: what the field's ``None`` default means, shown as the default;
    ``const``: the value a switch (a flag without a value) sets; ``clears``: fields set to
    ``None`` when the flag is given (``--epochs`` clears ``num_steps``, which overrides it).
    """

    flag: str
    key: str
    help: str
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    unset: str | None = None
    const: Any = None
    clears: tuple[str, ...] = ()

    @property
    def dest(self) -> str:
        """The attribute of the parsed arguments (argparse's own spelling)."""
        return self.flag.lstrip("-").replace("-", "_")

    def help_text(self, config) -> str:
        """The help line: ``help (default: VALUE; config KEY)`` or, for a switch, ``help (config
        KEY=VALUE)``; ``VALUE`` is the field's value in ``config``."""
        text = self.help.format_map(config)
        if self.const is not None:
            return f"{text} (config {self.key}={self.const})"
        value = _get(config, self.key)
        shown = self.unset if value is None else value
        if shown is None:
            raise ValueError(f"{self.flag}: config {self.key} defaults to None; say what it means")
        return f"{text} (default: {shown}; config {self.key})"


# Every `cnnjax train` argument that sets a config field, in the order of `--help`.
FLAGS = (
    ConfigFlag(
        "model",
        "model",
        "registered name (see `cnnjax models`), or your own module:Class / file.py:Class",
        {"nargs": "?"},
    ),
    ConfigFlag("--dataset", "dataset", "digits | synthetic | npz:PATH | folder:PATH | a TFDS name"),
    ConfigFlag(
        "--epochs",
        "epochs",
        "passes over the training split; unsets num_steps",
        {"type": int},
        clears=("num_steps",),
    ),
    ConfigFlag(
        "--batch-size", "batch_size", "global batch size, images over all devices", {"type": int}
    ),
    ConfigFlag(
        "--lr",
        "optimizer.lr",
        "peak learning rate of {optimizer.name} with a {schedule.name} schedule",
        {"type": float},
    ),
    ConfigFlag(
        "--parallel",
        "parallel",
        "device driver: none = one device, pmap = replicated, sharded = jit over a mesh; "
        "auto = sharded when several devices divide the batch",
        {"choices": ("auto", "none", "pmap", "sharded")},
    ),
    ConfigFlag(
        "--impl",
        "impl",
        "op implementation: custom VJPs or lax + autodiff",
        {"choices": ("custom", "xla")},
    ),
    ConfigFlag(
        "--dtype",
        "dtype",
        "compute dtype; parameters stay float32; float16 adds dynamic loss scaling",
        {"choices": ("float32", "bfloat16", "float16")},
    ),
    ConfigFlag(
        "--precision",
        "precision",
        "conv/dense precision",
        {"choices": ("default", "high", "highest")},
        unset="the backend's, e.g. TF32 on NVIDIA GPUs",
    ),
    ConfigFlag(
        "--cpu-convolutions",
        "cpu_convolutions",
        "library running convolutions on CPU: XLA's own emitters (faster for CNN training, "
        "measured) or YNNPACK (XLA's default); no effect on GPU/TPU or with --parallel pmap",
        {"choices": ("xla", "ynnpack")},
    ),
    ConfigFlag(
        "--on-nonfinite",
        "on_nonfinite",
        "a non-finite loss or gradient: stop the run (exit 1) or skip the update",
        {"choices": ("stop", "skip")},
    ),
    ConfigFlag(
        "--seed",
        "seed",
        "seed of initialisation, shuffling and augmentation",
        {"type": int_at_least(0)},
    ),
    ConfigFlag(
        "--best-metric",
        "best.metric",
        "keep the state of the best test evaluation by this metric in WORKDIR/checkpoints_best "
        "(loss: lowest, others: highest; none: keep no best)",
        {"choices": ("test_accuracy", "test_loss", "test_mean_iou", "test_pixel_accuracy", "none")},
    ),
    ConfigFlag(
        "--val-split",
        "val_split",
        "folder:ROOT/CLASS data: hold out this fraction of every class (seeded) for testing",
        {"type": float},
        unset="none, the ROOT/train and ROOT/test split",
    ),
    ConfigFlag(
        "--skip-bad-files", "skip_bad_files", "folder data: skip unreadable images", const=True
    ),
    ConfigFlag(
        "--data-workers",
        "data.workers",
        "threads reading and decoding batches ahead (0: none)",
        {"type": int, "metavar": "N"},
        unset="min(cpus, 8) for folder/TFDS data, 0 for in-memory data",
    ),
    ConfigFlag("--no-resume", "resume", "refuse to resume (workdir must be fresh)", const=False),
    ConfigFlag(
        "--extend",
        "extend",
        "train a recorded run longer (more --epochs); a cosine schedule restarts for the added "
        "steps",
        const=True,
    ),
    ConfigFlag(
        "--coordinator",
        "distributed.coordinator",
        "multi-process: coordinator host:port, or auto (SLURM, TPU, MPI)",
        unset="none",
    ),
    ConfigFlag(
        "--num-processes",
        "distributed.num_processes",
        "multi-process: number of processes",
        {"type": int},
        unset="1, detected with --coordinator auto",
    ),
    ConfigFlag(
        "--process-id",
        "distributed.process_id",
        "multi-process: this process's index",
        {"type": int},
        unset="0, detected with --coordinator auto",
    ),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``train`` arguments: :data:`FLAGS`, then the ones that are not config fields."""
    from cnnjax.train import default_config

    config = default_config()
    for flag in FLAGS:
        if flag.const is not None:
            parser.add_argument(flag.flag, action="store_true", help=flag.help_text(config))
        else:
            parser.add_argument(flag.flag, help=flag.help_text(config), **flag.options)
    parser.add_argument("--workdir", help="run directory (default: runs/MODEL_DATASET)")
    parser.add_argument(
        "--config", help="experiments/configs/NAME.py defining get_config() (default: none)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field, e.g. --set optimizer.weight_decay=1e-4 "
        "(repeatable; default: none)",
    )
    parser.add_argument("--quiet", action="store_true", help="print only the final line")


def build_config(args: argparse.Namespace):
    """The run's config: ``--config`` file (or the defaults), then the flags given, then
    ``--set``."""
    from cnnjax.train import apply_overrides, default_config, load_config

    config = load_config(args.config) if args.config else default_config()
    for flag in FLAGS:
        value = getattr(args, flag.dest)
        if flag.const is not None:
            value = flag.const if value else None
        if value is None:
            continue
        _set(config, flag.key, value)
        for key in flag.clears:
            _set(config, key, None)
    apply_overrides(config, args.set)
    return config


def run(args: argparse.Namespace) -> int:
    """Train; a diverged run (non-finite loss) is no usage error: one line and exit status 1."""
    from cnnjax.train import NonFiniteError, train

    config = build_config(args)
    workdir = pathlib.Path(args.workdir or f"runs/{slug(config.model)}_{slug(config.dataset)}")
    try:
        result = train(config, workdir, verbose=not args.quiet)
    except NonFiniteError as e:
        print(f"cnnjax train: error: {e}", file=sys.stderr)
        return 1
    if args.quiet:
        if result.already_finished:
            print(f"already finished at step {result.step}; checkpoint {result.checkpoint}")
        elif result.interrupted:
            print(f"interrupted at step {result.step}; checkpoint {result.checkpoint}")
        else:
            print(f"test accuracy {result.test['accuracy']:.2%}; checkpoint {result.checkpoint}")
    return 0


def _get(config, key: str):
    *parents, leaf = key.split(".")
    for name in parents:
        config = config[name]
    return config[leaf]


def _set(config, key: str, value) -> None:
    *parents, leaf = key.split(".")
    for name in parents:
        config = config[name]
    config[leaf] = value
