"""Run configuration: an ``ml_collections.ConfigDict`` with every knob and its default.

Experiment files (``experiments/configs/*.py``) define ``get_config()`` starting from
:func:`default_config`; the CLI loads one with :func:`load_config` and applies
``--set key=value`` overrides with :func:`apply_overrides` (dotted keys, values parsed as Python
literals where the field is not a string: ``--set optimizer.lr=0.05``,
``--set schedule.milestones=(32000,48000)``, ``--set model_overrides.aux_logits=False``).

The defaults train ``lenet5`` on the embedded ``digits`` set to ≥ 95 % test accuracy in about a
minute on two CPU cores.
"""

from __future__ import annotations

import ast
import importlib.util
import math
import numbers
import os
import pathlib

import ml_collections
from ml_collections import config_dict

__all__ = ["apply_overrides", "default_config", "load_config", "validate_config"]


def default_config() -> ml_collections.ConfigDict:
    """Every field a run reads, with the defaults of ``cnnjax train lenet5``."""
    c = ml_collections.ConfigDict()
    c.model = "lenet5"
    # Extra keyword arguments for the model's constructor (e.g. aux_logits=False for GoogLeNet).
    c.model_overrides = ml_collections.ConfigDict()
    # classification | segmentation; None: the model's registry task (get_model_info(m).task)
    c.task = config_dict.placeholder(str)
    c.impl = "custom"  # custom | xla, threaded to every cnnjax.ops call
    # compute dtype: float32 | bfloat16 | float16 (params stay float32; float16 adds dynamic
    # loss scaling)
    c.dtype = "float32"
    # conv/dense precision: None = the backend default (TF32 for float32 on Ampere+ GPUs, one
    # bfloat16 pass on TPU) | "default" | "high" | "highest" (full float32); docs/accelerators.md
    c.precision = config_dict.placeholder(str)
    # which library runs convolutions on CPU: "xla" (XLA's Eigen/loop emitters; YNNPACK keeps
    # dots and reductions: faster for CNN training, measured) | "ynnpack" (XLA's own default);
    # no effect on GPU/TPU. cnnjax.ops.compiler_options, docs/accelerators.md
    c.cpu_convolutions = "xla"

    c.dataset = "digits"
    c.data_dir = config_dict.placeholder(str)  # TFDS data_dir (and ImageNet's manual dir)
    c.image_size = config_dict.placeholder(int)  # None: native size, or the model's if larger
    c.resize_mode = "auto"  # auto | pad | resize
    c.num_classes = config_dict.placeholder(int)  # None: the data set's
    c.val_split = config_dict.placeholder(float)  # folder:ROOT/CLASS: seeded stratified test share
    c.skip_bad_files = False  # folder: skip unreadable images (with a count), not fail
    # on_device: crop/flip/normalise inside the step (the host draws the randomness and ships
    # uint8 images: the same batches bit for bit); None = auto: on for in-memory data (digits,
    # npz, synthetic, digits_seg), on the host for streaming sources (folder:, TFDS)
    c.augment = ml_collections.ConfigDict(
        {
            "padding": 0,
            "flip": False,
            "crop_size": config_dict.placeholder(int),
            "on_device": config_dict.placeholder(bool),
        }
    )
    # workers: grain threads reading/decoding/augmenting batches ahead (0: in the prefetch
    # thread); None = min(cpu_count, 8) for streaming sources, 0 for in-memory data
    c.data = ml_collections.ConfigDict({"workers": config_dict.placeholder(int)})

    c.batch_size = 32  # global, over all devices and processes
    c.eval_batch_size = config_dict.placeholder(int)  # None: batch_size
    c.epochs = 10
    c.num_steps = config_dict.placeholder(int)  # overrides epochs when set

    c.optimizer = ml_collections.ConfigDict(
        {
            # The default (AdamW 5e-3, cosine) leaves the plateau that LeNet-5's paper
            # initialisation starts on within one epoch; SGD 0.1 needs three (measured).
            "name": "adamw",  # sgd | adamw | adam
            "lr": 0.005,
            "momentum": 0.9,
            "nesterov": False,
            "weight_decay": 1e-4,
            "b1": 0.9,
            "b2": 0.999,
            "eps": 1e-8,
            "grad_clip_norm": config_dict.placeholder(float),
            "accumulate_steps": 1,
            "ema_decay": config_dict.placeholder(float),
        }
    )
    c.schedule = ml_collections.ConfigDict(
        {
            "name": "cosine",  # constant | step | cosine
            "warmup_steps": 0,
            "milestones": (),  # optimiser updates at which "step" multiplies by decay_factor
            "decay_factor": 0.1,
            "end_lr": 0.0,
            # Set by --extend (see cnnjax.train.workdir): (start, end) batch steps of each
            # cosine cycle; () is one cycle over the whole run.
            "cycles": (),
        }
    )
    # A non-finite loss or gradient norm: "stop" the run (naming the step and the last good
    # checkpoint; exit 1 at the CLI) or "skip" the update and count it (metrics "skipped").
    c.on_nonfinite = "stop"
    c.label_smoothing = 0.0
    c.aux_loss_weight = 0.3

    c.seed = 0
    # The directory `train` ran in (set by train(); operational, not identity): eval and viz
    # resolve a recorded relative folder:/npz:/file.py path against it when run elsewhere.
    c.origin_dir = config_dict.placeholder(str)
    c.parallel = "auto"  # auto | none | pmap | sharded
    c.prefetch = 2
    c.resume = True
    c.extend = False  # allow growing a recorded run's length (a new cosine cycle; see workdir.py)
    c.checkpoint = ml_collections.ConfigDict(
        {"every_steps": config_dict.placeholder(int), "keep": 3, "async_save": True}
    )
    c.eval_every_epochs = 1
    # The best checkpoint: at each test evaluation, a state that beats the best so far on
    # `metric` (test_accuracy | test_loss | test_mean_iou | test_pixel_accuracy, or "none") is
    # saved to WORKDIR/checkpoints_best (one kept) and recorded in WORKDIR/best.json.
    c.best = ml_collections.ConfigDict({"metric": "test_accuracy"})
    c.log_every_steps = 50
    c.distributed = ml_collections.ConfigDict(
        {
            "coordinator": config_dict.placeholder(str),
            "num_processes": config_dict.placeholder(int),
            "process_id": config_dict.placeholder(int),
            "timeout_s": 120,  # a peer not joined by then is a one-line error
        }
    )
    return c


def load_config(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """Import ``path`` (a Python file) and return its ``get_config()``.

    ``FILE.py:ARG`` calls ``get_config("ARG")``, for files that hold several variants
    (``vgg_depth_ablation.py:vgg13``).
    """
    text = os.fspath(path)
    arg = None
    if ".py:" in text:
        text, arg = text.rsplit(":", 1)
    file = pathlib.Path(text)
    if not file.is_file():
        raise FileNotFoundError(f"config file {str(file)!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"_cnnjax_config_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    try:  # a mistake in the user's Python is a one-line error naming the file
        spec.loader.exec_module(module)
        if not hasattr(module, "get_config"):
            raise ValueError(f"{file} defines no get_config()")
        return module.get_config() if arg is None else module.get_config(arg)
    except ValueError:
        raise
    except Exception as e:
        raise ValueError(f"config file {file} failed: {type(e).__name__}: {e}") from e


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: list[str] | tuple[str, ...]
) -> ml_collections.ConfigDict:
    """Apply ``["key.sub=value", ...]`` in place and return ``config``.

    Values are parsed with ``ast.literal_eval`` (``None``, numbers, booleans, tuples); a string
    field takes the raw text (``None`` unsets it). Unknown keys are an error, except under
    ``model_overrides``.
    """
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {item!r}")
        *parents, leaf = key.strip().split(".")
        node = config
        for name in parents:
            if name not in node:
                raise ValueError(f"unknown config key {key!r} ({name!r} is not a section)")
            node = node[name]
        free = parents == ["model_overrides"]
        if leaf not in node and not free:
            raise ValueError(f"unknown config key {key!r}; valid: {', '.join(_keys(config))}")
        value = _parse(text.strip(), node.get_type(leaf) if leaf in node else None)
        try:
            node[leaf] = value
        except TypeError as e:
            raise ValueError(f"cannot set {key}={text!r}: {e}") from None
    return config


def _parse(text: str, kind):
    if kind is str:  # "none" is a valid string value (parallel=none); only "None" unsets
        return None if text == "None" else text
    if text.lower() in ("none", "null"):
        return None
    if kind is bool and text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if kind is tuple:
            return tuple(_parse(t.strip(), None) for t in text.split(",") if t.strip())
        return text
    if kind is tuple and not isinstance(value, tuple):
        value = tuple(value) if isinstance(value, list) else (value,)
    return value


def _keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    out = []
    for k, v in config.items():
        if isinstance(v, ml_collections.ConfigDict) and k != "model_overrides":
            out.extend(_keys(v, f"{prefix}{k}."))
        else:
            out.append(f"{prefix}{k}")
    return out


# (config key, CLI flag or None, lowest, lowest allowed?, highest, highest allowed?, may be None)
_INF = math.inf
_NUMBERS = (
    ("batch_size", "--batch-size", 1, True, _INF, False, False),
    ("eval_batch_size", None, 1, True, _INF, False, True),
    ("epochs", "--epochs", 1, True, _INF, False, False),
    ("num_steps", None, 1, True, _INF, False, True),
    ("image_size", None, 1, True, _INF, False, True),
    ("val_split", "--val-split", 0, False, 1, False, True),
    ("optimizer.lr", "--lr", 0, False, _INF, False, False),
    ("optimizer.momentum", None, 0, True, 1, False, False),
    ("optimizer.weight_decay", None, 0, True, _INF, False, False),
    ("optimizer.b1", None, 0, True, 1, False, False),
    ("optimizer.b2", None, 0, True, 1, False, False),
    ("optimizer.eps", None, 0, False, _INF, False, False),
    ("optimizer.grad_clip_norm", None, 0, False, _INF, False, True),
    ("optimizer.accumulate_steps", None, 1, True, _INF, False, False),
    ("optimizer.ema_decay", None, 0, True, 1, False, True),
    ("schedule.warmup_steps", None, 0, True, _INF, False, False),
    ("schedule.decay_factor", None, 0, False, _INF, False, False),
    ("schedule.end_lr", None, 0, True, _INF, False, False),
    ("label_smoothing", None, 0, True, 1, False, False),
    ("aux_loss_weight", None, 0, True, _INF, False, False),
    ("prefetch", None, 0, True, _INF, False, False),
    ("augment.padding", None, 0, True, _INF, False, False),
    ("augment.crop_size", None, 1, True, _INF, False, True),
    ("data.workers", "--data-workers", 0, True, _INF, False, True),
    ("checkpoint.every_steps", None, 1, True, _INF, False, True),
    ("checkpoint.keep", None, 1, True, _INF, False, False),
    ("eval_every_epochs", None, 1, True, _INF, False, False),
    ("log_every_steps", None, 1, True, _INF, False, False),
    ("distributed.timeout_s", None, 0, False, _INF, False, False),
)
_INTEGERS = {
    "batch_size", "eval_batch_size", "epochs", "num_steps", "image_size",
    "optimizer.accumulate_steps", "schedule.warmup_steps", "prefetch", "augment.padding",
    "augment.crop_size", "data.workers", "checkpoint.every_steps", "checkpoint.keep",
    "eval_every_epochs", "log_every_steps",
}  # fmt: skip


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Check every numeric field of a run's config (ranges as in :func:`default_config`).

    ``epochs`` is checked only when ``num_steps`` is unset (``num_steps`` overrides it).
    Raises ``ValueError`` naming the option (``--batch-size (batch_size)``), the value and the
    allowed range: one line, exit 2 at the CLI.
    """
    for key, flag, low, low_ok, high, high_ok, optional in _NUMBERS:
        value = _get(config, key)
        if key == "epochs" and _get(config, "num_steps") is not None:
            continue
        name = f"{flag} ({key})" if flag else key
        if value is None:
            if optional:
                continue
            raise ValueError(f"{name} must be set, got None")
        integer = key in _INTEGERS
        kind = numbers.Integral if integer else numbers.Real
        if isinstance(value, bool) or not isinstance(value, kind):
            what = "an integer" if integer else "a number"
            raise ValueError(f"{name} must be {what}, got {value!r}")
        ok = math.isfinite(value) and (value >= low if low_ok else value > low)
        ok = ok and (value <= high if high_ok else value < high)
        if not ok:
            raise ValueError(f"{name} must be {_range(low, low_ok, high, high_ok)}, got {value!r}")


def _get(config, key: str):
    node = config
    for part in key.split("."):
        if node is None or part not in node:
            return None
        node = node[part]
    return node


def _range(low, low_ok, high, high_ok) -> str:
    lower = f"{'>=' if low_ok else '>'} {low}"
    if high == _INF:
        return f"finite and {lower}" if not low_ok else lower
    return f"in {'[' if low_ok else '('}{low}, {high}{']' if high_ok else ')'}"
