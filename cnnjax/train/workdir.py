"""A workdir is a contract: the run's identity, checked on every start, and a preflight.

``WORKDIR/config.json`` holds the full configuration of the run plus a ``run_record`` section
(input shape, class count, training examples, total steps, cnnjax and JAX versions). It is
written atomically (temporary file, ``fsync``, ``os.replace``) and only once the run is known
good: after the configuration was validated, the preflight passed and any checkpoint restored.

On a start in a workdir that already holds checkpoints, :func:`check_run` compares the new
configuration with the recorded one, on every field that changes what is trained (model and
its overrides, data, image size, augmentation, batch size, optimiser, schedule, loss, seed,
dtype, impl, total steps); fields that only change *how* it runs (``parallel``, ``prefetch``,
``checkpoint.*``, ``log_every_steps``, ``eval_every_epochs``, ``eval_batch_size``,
``distributed.*``, ``data_dir``, ``resume``, ``on_nonfinite``, ``best.*``, ``augment.on_device``,
``data.workers``) may change between starts.

* Same identity → resume (a finished run reports its result and trains nothing).
* Only the length grew (``--epochs``/``num_steps``) → refused unless ``extend=True``
  (``--extend``). Extension semantics: the steps already planned keep their learning rates;
  for the ``cosine`` schedule the added steps ``T_old … T_new`` are a new cosine cycle from
  the peak ``lr`` to ``end_lr`` (a warm restart, as in SGDR, Loshchilov & Hutter 2017; no new
  warm-up), recorded in ``schedule.cycles``; ``constant`` and ``step`` schedules (absolute
  milestones) do not depend on the length and simply go on.
* Anything else → :class:`RunMismatch`, a one-line diff naming the way forward (a new
  ``--workdir``), and ``config.json`` untouched.

:func:`load_workdir_config` reads a run's configuration back (for ``cnnjax eval`` and the analysis
of a trained run), resolving recorded relative paths against where the run trained.

:func:`preflight` checks, before any training time is spent: the workdir can be created and
written, the metrics file can be appended to, and the disk has room for two checkpoints (three
with a best checkpoint).
"""

from __future__ import annotations

import copy
import dataclasses
import fcntl
import json
import os
import pathlib
import shutil
import tempfile
from typing import Any

import jax
import ml_collections
import numpy as np

from cnnjax.train.config import default_config

__all__ = [
    "RunContract",
    "RunMismatch",
    "WorkdirInUse",
    "check_run",
    "finished_test_metrics",
    "load_workdir_config",
    "lock_workdir",
    "preflight",
    "state_bytes",
    "write_json_atomic",
]

# Fields that change how a run executes, not what it computes: free to change on resume.
OPERATIONAL = (
    "parallel",
    "cpu_convolutions",  # which kernels run, not what they compute
    "prefetch",
    "resume",
    "checkpoint",
    "eval_every_epochs",
    "log_every_steps",
    "distributed",
    "data_dir",
    "eval_batch_size",
    "extend",
    "on_nonfinite",
    "schedule.cycles",
    "best",
    "augment.on_device",  # host and device augmentation give the same batches, bit for bit
    "data",
    "origin_dir",  # where train ran: resolves recorded relative paths, not part of the run
)
_LENGTH = ("epochs", "num_steps", "total_steps")


class RunMismatch(ValueError):
    """The workdir holds a run with another identity than the configuration asks for."""


@dataclasses.dataclass
class RunContract:
    """The outcome of :func:`check_run`: the configuration to run, and how to record it."""

    workdir: pathlib.Path
    config: ml_collections.ConfigDict
    record: dict[str, Any]
    extended_from: int | None = None  # old total steps when the run was extended

    def commit(self, primary: bool = True) -> None:
        """Write ``WORKDIR/config.json`` (full config + run record) atomically."""
        if primary:
            data = json.loads(self.config.to_json())
            data.pop("extend", None)
            data["run_record"] = self.record
            write_json_atomic(self.workdir / "config.json", data)


def check_run(
    workdir: str | os.PathLike, config: ml_collections.ConfigDict, run: Any
) -> RunContract:
    """Compare ``config`` (built into ``run``) with the run recorded in ``workdir``.

    Returns the contract to :meth:`~RunContract.commit` once the run is known good; its
    ``config`` is a copy with ``schedule.cycles`` planned when the run was extended.
    Raises :class:`RunMismatch` (one line) when the identities differ; see the module docstring.
    """
    workdir = pathlib.Path(workdir).absolute()
    record = _record(config, run)
    saved = _read_saved(workdir)
    if saved is None or not _has_checkpoints(workdir):
        return RunContract(workdir, config, record)
    old_config, old_record = saved
    old = {**_identity(old_config), **_derived(old_record)}
    new = {**_identity(json.loads(config.to_json())), **record["derived"]}
    changed = [k for k in sorted(old.keys() & new.keys()) if old[k] != new[k]]
    other = [k for k in changed if k not in _LENGTH]
    if other:
        raise RunMismatch(
            f"{workdir} holds another run; changed: {_diff(other, old, new)}. Train it in a "
            "new --workdir (or rerun with the recorded settings in config.json to resume)"
        )
    cycles = tuple(tuple(c) for c in (old_config.get("schedule", {}).get("cycles") or ()))
    if tuple(map(tuple, config.schedule.cycles)) != cycles:  # an extended run keeps its plan
        config = copy.deepcopy(config)
        config.schedule.cycles = cycles
    old_total, new_total = old.get("total_steps"), new["total_steps"]
    if old_total is None and changed:  # a record without totals: any length change refuses
        raise RunMismatch(
            f"{workdir} holds another run; changed: {_diff(changed, old, new)}. Train it in a "
            "new --workdir"
        )
    if old_total is None or old_total == new_total:
        return RunContract(workdir, config, {**record, "created": old_record.get("created")})
    lengths = _diff([k for k in changed if k != "total_steps"], old, new)
    if new_total < old_total:
        raise RunMismatch(
            f"{workdir} holds a run of {old_total} steps; this asks for {new_total} ({lengths}). "
            "A run cannot be shortened: use a new --workdir, or `cnnjax eval --step` on an "
            "earlier checkpoint"
        )
    if not config.get("extend", False):
        raise RunMismatch(
            f"{workdir} holds a run of {old_total} steps; this asks for {new_total} ({lengths}). "
            f"Pass --extend to train on (the {config.schedule.name} schedule "
            f"{_extension_rule(config)}), or use a new --workdir"
        )
    if config.schedule.name == "cosine":
        config = copy.deepcopy(config)
        config.schedule.cycles = (*(cycles or ((0, old_total),)), (old_total, new_total))
    return RunContract(workdir, config, {**record, "created": old_record.get("created")}, old_total)


def _extension_rule(config) -> str:
    if config.schedule.name == "cosine":
        return (
            f"restarts: the added steps run a new cosine from lr {config.optimizer.lr:g} to "
            f"end_lr {config.schedule.end_lr:g}"
        )
    return "goes on unchanged"


def load_workdir_config(
    workdir: str | pathlib.Path, *, data: bool = True
) -> ml_collections.ConfigDict:
    """The configuration a run saved in ``WORKDIR/config.json``; relative recorded paths that
    are missing here are resolved against where it trained (``data=False``: the data set's
    path may be missing, for callers that load no data)."""
    path = pathlib.Path(workdir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {workdir} a cnnjax training workdir?")
    config = default_config()
    saved = json.loads(path.read_text())
    _merge(config, saved)
    _resolve_recorded_paths(config, path, data=data)
    return config


def _resolve_recorded_paths(
    config: ml_collections.ConfigDict, source: pathlib.Path, *, data: bool = True
) -> None:
    """Recorded relative ``folder:``/``npz:`` data and ``file.py:Class`` model paths that do not
    exist from here are taken relative to ``origin_dir`` (where ``train`` ran), in place.

    Raises ``FileNotFoundError`` (one line) when the path exists from neither directory.
    """
    origin = config.get("origin_dir")
    if not origin:
        return
    for key, prefix in (("dataset", ("folder:", "npz:")), ("model", None)):
        value = str(config[key])
        if prefix is not None:
            kind = next((p for p in prefix if value.startswith(p)), None)
            if kind is None:
                continue
            head, text = kind, value[len(kind) :]
        elif ".py:" in value:
            text, attr = value.rsplit(":", 1)
            head = None
        else:
            continue
        path = pathlib.Path(text).expanduser()
        if path.is_absolute() or path.exists():
            continue
        there = pathlib.Path(origin) / path
        if not there.exists():
            if key == "dataset" and not data:
                continue
            raise FileNotFoundError(
                f"{key} {value!r} recorded in {source} exists neither under the current "
                f"directory {os.getcwd()} nor under {origin}, where the run was trained"
            )
        config[key] = f"{head}{there}" if head else f"{there}:{attr}"


def _merge(config: ml_collections.ConfigDict, values: dict) -> None:
    for key, value in values.items():
        if (
            isinstance(value, dict)
            and key in config
            and isinstance(config[key], ml_collections.ConfigDict)
        ):
            if key == "model_overrides":
                for k, v in value.items():
                    config[key][k] = v
            else:
                _merge(config[key], value)
        elif key in config:
            if isinstance(value, list):
                value = tuple(value)
            config[key] = value


def preflight(
    workdir: str | os.PathLike, state: Any, *, primary: bool = True, checkpoints: int = 2
) -> None:
    """Fail fast, before training: workdir creatable and writable, metrics file appendable,
    free disk for ``checkpoints`` checkpoints of ``state`` (a host train state; its array bytes):
    two for the latest (one being written while the previous stays), one more for a best.

    Raises ``OSError`` subclasses with a one-line message naming the path.
    """
    if not primary:
        return
    workdir = pathlib.Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise NotADirectoryError(f"workdir {workdir} exists and is not a directory")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise type(e)(f"cannot create workdir {workdir}: {e.strerror or e}") from None
    for directory in (workdir, workdir / "checkpoints"):
        if directory.is_dir():
            _check_writable(directory)
    metrics = workdir / "metrics.jsonl"
    try:
        with metrics.open("a"):
            pass
    except OSError as e:
        raise type(e)(f"metrics file {metrics} is not writable: {e.strerror or e}") from None
    need = checkpoints * state_bytes(state)
    free = shutil.disk_usage(workdir).free
    if free < need:
        raise OSError(
            f"not enough disk for {workdir}: {_mb(free)} free, {checkpoints} checkpoints need "
            f"about {_mb(need)}; free some space or use another --workdir"
        )


def state_bytes(state: Any) -> int:
    """Bytes of every array leaf of ``state`` (what one checkpoint writes, before metadata)."""
    return sum(np.asarray(leaf).nbytes for leaf in jax.tree.leaves(state))


def finished_test_metrics(workdir: str | os.PathLike, step: int) -> dict | None:
    """The last ``test`` record of ``metrics.jsonl`` at ``step``, or ``None``."""
    path = pathlib.Path(workdir) / "metrics.jsonl"
    found = None
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("split") == "test" and record.get("step") == step:
            found = record
    return found


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` so that readers see the old or the new file, never
    a partial one: a temporary file in the same directory, ``fsync``, then ``os.replace``."""
    path = pathlib.Path(path)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        pathlib.Path(temporary).unlink(missing_ok=True)
        raise


# -- internals ---------------------------------------------------------------------------------


def _record(config, run) -> dict[str, Any]:
    import time

    import cnnjax

    return {
        "derived": {
            "input_shape": list(run.input_shape),
            "num_classes": int(run.dataset.num_classes),
            "train_examples": len(run.dataset.train),
            "total_steps": int(run.total_steps),
        },
        "cnnjax_version": cnnjax.__version__,
        "jax_version": jax.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _read_saved(workdir: pathlib.Path) -> tuple[dict, dict] | None:
    path = workdir / "config.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise RunMismatch(f"{path} is not valid JSON ({e}); is {workdir} a cnnjax run?") from None
    return data, data.pop("run_record", None) or {}


def _has_checkpoints(workdir: pathlib.Path) -> bool:
    directory = workdir / "checkpoints"
    return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def _identity(config: dict) -> dict[str, Any]:
    """Flat ``{"optimizer.lr": 0.005, ...}`` without the operational fields."""
    flat = {}

    def walk(node, prefix):
        for key, value in node.items():
            name = f"{prefix}{key}"
            if name in OPERATIONAL:
                continue
            if isinstance(value, dict) and key != "model_overrides":
                walk(value, f"{name}.")
            else:
                flat[name] = _normalize(value)

    walk(config, "")
    return flat


def _derived(record: dict) -> dict[str, Any]:
    return {k: _normalize(v) for k, v in (record.get("derived") or {}).items()}


def _normalize(value):
    return json.loads(json.dumps(value, default=str))


def _diff(keys: list[str], old: dict, new: dict, limit: int = 5) -> str:
    parts = [f"{k} {_show(old[k])} → {_show(new[k])}" for k in keys[:limit]]
    if len(keys) > limit:
        parts.append(f"and {len(keys) - limit} more")
    return ", ".join(parts)


def _show(value) -> str:
    return json.dumps(value) if isinstance(value, (dict, list, str)) else repr(value)


def _check_writable(directory: pathlib.Path) -> None:
    """Create and remove a file: ``os.access`` is not reliable (root, network file systems)."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        raise type(e)(f"{directory} is not writable: {e.strerror or e}") from None


def _mb(count: int) -> str:
    return f"{count / 2**20:.1f} MiB"


LOCK_FILE = ".cnnjax.lock"


class WorkdirInUse(OSError):
    """Another process is training in this workdir (it holds ``WORKDIR/.cnnjax.lock``)."""


def lock_workdir(workdir: str | os.PathLike, *, primary: bool = True):
    """Hold an exclusive lock on ``workdir`` for this run; returns the open lock file (close it
    to release; the OS releases it when the process ends, however it ends).

    Two runs in one workdir would train from the same checkpoint, save into the same
    ``checkpoints/`` and write every metrics record twice; the second is refused instead
    (:class:`WorkdirInUse`, one line naming the other process). ``fcntl.flock`` locks are
    advisory and per open file: they hold on local disks and NFSv4; on a filesystem without
    locks this check is silently weaker. Only the primary process locks (the others write
    nothing there).
    """
    if not primary:
        return None
    path = pathlib.Path(workdir) / LOCK_FILE
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise WorkdirInUse(
            f"workdir {workdir} is in use by {holder}; wait for that run to finish, or "
            "use another --workdir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"cnnjax process {os.getpid()} on {os.uname().nodename}\n")
    handle.flush()
    return handle
