"""Checkpoints with orbax: periodic and final saves, keep-N, verified restore with fallback.

A checkpoint holds the :class:`~cnnjax.train.state.TrainState` as a nested dict of host NumPy
arrays (``flax.serialization.to_state_dict``; one replica, whatever the driver, so a run may
resume under another parallelism) and a small JSON ``meta`` (step, epoch, config). Saves are
asynchronous by default: the arrays are copied and written by a background thread while
training continues.

Atomicity: orbax writes each step into a temporary directory and renames it only after every
file (and, in multi-process runs, every process) is done; ``latest_step()`` only ever sees
finished checkpoints, so a run killed during a save resumes from the previous one.

Integrity: process 0 writes ``STEP/cnnjax_manifest.json`` with the size and SHA-256 of every
file of the step (but orbax's ``_CHECKPOINT_METADATA`` and ``commit_success.txt``, which orbax
rewrites while committing) and whether every floating-point array was finite. Single-process
asynchronous saves write it from orbax's ``post_finalization_callback``, into the temporary
directory before the rename, so the manifest is part of the atomic commit; synchronous and
multi-process saves write it (temporary file, then rename) once orbax has committed.
:meth:`Checkpointer.restore` checks, newest checkpoint first: the manifest (missing, truncated
or altered files), the array tree against the template (paths, shapes, dtypes — a mismatch is a
:class:`CheckpointMismatch`, never a fallback: it means another model), the restore itself, and
that the restored arrays are finite. A damaged checkpoint is reported in one line and the next
older one is tried; none intact is a :class:`CheckpointError`. A checkpoint without a manifest
(a synchronous save killed before writing it, or older than manifests) is *unverified*: it is
restored if orbax can read it and its values are finite.

Rotation (``keep``): a checkpoint is deleted only once ``keep`` checkpoints not known to hold
NaN/inf are newer than it, so the last finite checkpoint is never rotated out by non-finite
ones.

The best checkpoint (``best.metric``, see :class:`cnnjax.train.actions.KeepBest`) is a second
:class:`Checkpointer` with ``keep=1`` under ``WORKDIR/checkpoints_best`` (:data:`BEST_DIR`):
the same verified, atomic saves, never rotated by the latest checkpoints' keep-N.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import sys
from collections.abc import Callable
from typing import Any

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = [
    "BEST_DIR",
    "LATEST_DIR",
    "MANIFEST",
    "CheckpointError",
    "CheckpointMismatch",
    "Checkpointer",
    "checkpoint_directory",
]

MANIFEST = "cnnjax_manifest.json"
LATEST_DIR = "checkpoints"  # WORKDIR/checkpoints/STEP: the newest `keep` saves
BEST_DIR = "checkpoints_best"  # WORKDIR/checkpoints_best/STEP: the best evaluation's state
# Rewritten or added by orbax while it commits a step, after the arrays are final.
_ORBAX_COMMIT_FILES = ("_CHECKPOINT_METADATA", "commit_success.txt")


class CheckpointError(ValueError):
    """No usable checkpoint: every candidate is damaged (or the requested one is)."""


class CheckpointMismatch(CheckpointError):
    """The checkpoint's arrays (paths, shapes, dtypes) do not fit the model being restored."""


def checkpoint_directory(workdir: str | os.PathLike, which: str = "latest") -> pathlib.Path:
    """``WORKDIR/checkpoints`` (``which="latest"``) or ``WORKDIR/checkpoints_best`` (``"best"``)."""
    if which not in ("latest", "best"):
        raise ValueError(f'checkpoint must be "latest" or "best", got {which!r}')
    return pathlib.Path(workdir) / (LATEST_DIR if which == "latest" else BEST_DIR)


class Checkpointer:
    """Save and restore train states under ``directory`` (``WORKDIR/checkpoints``)."""

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        keep: int = 3,
        async_save: bool = True,
        primary: bool | None = None,
    ):
        self.directory = pathlib.Path(directory).absolute()
        self.keep = max(1, keep)
        self.primary = jax.process_index() == 0 if primary is None else primary
        self.restored_step: int | None = None
        self._pending: dict[int, bool] = {}  # step → every float array finite, until manifested
        # Finiteness of the steps saved by this process: every process decides rotation from
        # the same values without waiting for process 0's manifests.
        self._finite: dict[int, bool] = {}
        self._saving: int | None = None  # the step of the save in flight
        self._async = async_save
        in_commit = async_save and jax.process_count() == 1
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=None,
                enable_async_checkpointing=async_save,
                create=True,
                async_options=ocp.AsyncOptions(
                    post_finalization_callback=self._manifest_before_commit
                )
                if in_commit
                else None,
            ),
        )

    def latest_step(self) -> int | None:
        """The step of the newest *finished* checkpoint, or ``None``."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of every finished checkpoint, oldest first."""
        return sorted(self.manager.all_steps())

    def path(self, step: int | None = None) -> pathlib.Path:
        """Directory of the checkpoint at ``step`` (default: latest)."""
        step = self.latest_step() if step is None else step
        return self.directory / str(step)

    def save(self, step: int, state: Any, meta: dict | None = None) -> None:
        """Save a host state (NumPy leaves) at ``step``; a no-op if that step is already saved."""
        if step in self.manager.all_steps():
            return
        self._finish_pending()
        tree = _to_tree(state)
        self._pending[step] = self._finite[step] = _all_finite(tree)
        self._saving = step
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(tree),
                meta=ocp.args.JsonSave(meta or {}),
            ),
            force=True,
        )
        if not self._async:  # written already: manifest it now
            self._finish_pending()

    def verify(self, step: int) -> str | None:
        """What is wrong with the files of checkpoint ``step`` per its manifest, or ``None``.

        ``None`` also for a checkpoint without a manifest (unverified; see the module docstring).
        """
        root = self.path(step)
        manifest = root / MANIFEST
        if not root.is_dir():
            return "its directory is missing"
        if not manifest.exists():
            return None
        try:
            files = json.loads(manifest.read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return f"its manifest {MANIFEST} is unreadable"
        for name, (size, digest) in sorted(files.items()):
            file = root / name
            if not file.is_file():
                return f"file {name} is missing"
            actual = file.stat().st_size
            if actual != size:
                return f"file {name} has {actual} bytes, {size} were written"
            if _sha256(file) != digest:
                return f"file {name} was altered (SHA-256 differs from the manifest)"
        return None

    def is_finite(self, step: int) -> bool | None:
        """Whether ``step``'s manifest says every float array was finite (``None``: unknown)."""
        if step in self._finite:
            return self._finite[step]
        try:
            return bool(json.loads((self.path(step) / MANIFEST).read_text())["finite"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def restore(
        self,
        template: Any,
        step: int | None = None,
        *,
        report: Callable[[str], None] | None = None,
        quarantine: bool = True,
    ) -> tuple[Any, dict]:
        """Restore the newest intact checkpoint (or exactly ``step``) into ``template``'s structure.

        Returns ``(state, meta)`` and sets :attr:`restored_step`. Each damaged checkpoint skipped
        is reported in one line (to ``report``; default: stderr, process 0); with
        ``quarantine=True`` (training) it is moved to ``WORKDIR/checkpoints_damaged/STEP``, so
        that the run can save that step again and ``latest_step()`` is the one restored;
        ``quarantine=False`` (evaluation) leaves the files alone.
        Raises :class:`CheckpointMismatch` when the arrays do not fit ``template``, and
        :class:`CheckpointError` (``FileNotFoundError`` when there is no checkpoint at all) when
        nothing intact is left. An explicit ``step`` that is damaged is not replaced by another:
        the :class:`CheckpointError` names the damage and the intact steps there are.
        """
        self._finish_pending()
        steps = self.all_steps() if step is None else [step]
        if step is not None and step not in self.manager.all_steps():
            raise FileNotFoundError(
                f"no checkpoint at step {step} under {self.directory} (steps: "
                f"{', '.join(map(str, self.all_steps())) or 'none'})"
            )
        if not steps:
            raise FileNotFoundError(f"no checkpoint under {self.directory}")
        tree = _to_tree(template)
        report = report or self._report
        damaged = []
        for candidate in reversed(steps):
            problem = self.verify(candidate) or self._check_tree(candidate, tree)
            if problem is None:
                try:
                    restored = self._restore(candidate, tree)
                except Exception as e:
                    problem = f"orbax cannot read it ({_first_line(e)})"
                else:
                    if not _all_finite(restored["state"]):
                        problem = "it holds NaN or inf values"
            if problem is None:
                if damaged and quarantine:
                    self._quarantine(damaged)
                self.restored_step = candidate
                raw = flax.serialization.to_state_dict(template)
                state = flax.serialization.from_state_dict(
                    template, _from_tree(restored["state"], raw)
                )
                return state, dict(restored["meta"] or {})
            if step is not None:  # exactly this step was asked for: no fallback
                raise CheckpointError(self._damaged_step_message(step, problem, tree))
            damaged.append(candidate)
            older = [s for s in steps if s < candidate]
            then = f"trying step {older[-1]}" if older else "no older checkpoint"
            report(f"checkpoint {self.path(candidate)} skipped: {problem}; {then}")
        raise CheckpointError(
            f"no usable checkpoint under {self.directory}: step(s) "
            f"{', '.join(map(str, sorted(damaged)))} damaged or non-finite (reported above); "
            "start again in a new --workdir"
        )

    def _damaged_step_message(self, step: int, problem: str, tree: Any) -> str:
        """Name the damage of ``step`` and the checkpoints that pass the same checks."""
        intact = []
        for other in self.all_steps():
            if other != step and self.verify(other) is None:
                try:
                    if self._check_tree(other, tree) is None:
                        intact.append(other)
                except CheckpointMismatch:
                    continue
        where = (
            f"intact step(s): {', '.join(map(str, intact))} (pass one with --step, or leave "
            "--step out for the newest intact one)"
            if intact
            else "no other intact checkpoint"
        )
        return f"checkpoint {self.path(step)} is damaged: {problem}; {where}"

    def read_meta(self, step: int | None = None) -> dict:
        """The JSON ``meta`` saved with ``step`` (default: latest), without reading the arrays;
        ``{}`` when there is none or it is unreadable."""
        self._finish_pending()
        step = self.latest_step() if step is None else step
        if step is None:
            return {}
        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
            )
        except Exception:
            return {}
        meta = restored["meta"]
        return dict(meta) if isinstance(meta, dict) else {}

    def delete(self, step: int) -> None:
        """Remove checkpoint ``step`` (e.g. a best checkpoint from a rolled-back session)."""
        self._finish_pending()
        if step in self.manager.all_steps():
            self.manager.delete(step)

    def _report(self, line: str) -> None:
        if self.primary:
            print(f"cnnjax: {line}", file=sys.stderr, flush=True)

    def wait(self) -> None:
        """Block until pending asynchronous saves are on disk (and manifested, rotated)."""
        self._finish_pending()

    def close(self) -> None:
        self._finish_pending()
        self.manager.close()

    # -- internals ---------------------------------------------------------------------------

    def _restore(self, step: int, tree: Any) -> Any:
        return self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(tree), meta=ocp.args.JsonRestore()
            ),
        )

    def _check_tree(self, step: int, tree: Any) -> str | None:
        """``None`` if the stored arrays match ``tree``; damage → a problem string; a readable
        but different tree → :class:`CheckpointMismatch`."""
        try:
            metadata = ocp.StandardCheckpointHandler().metadata(self.path(step) / "state")
            stored = _signature(getattr(metadata, "tree", metadata))
        except Exception as e:
            return f"its array metadata is unreadable ({_first_line(e)})"
        expected = _signature(tree)
        if stored != expected:
            raise CheckpointMismatch(
                f"checkpoint {self.path(step)} does not fit this model: "
                f"{_describe_difference(stored, expected)}. It holds another model's run: "
                "use a new --workdir"
            )
        return None

    def _finish_pending(self) -> None:
        """Wait for the async save, write the manifests of committed steps, then rotate."""
        self.manager.wait_until_finished()
        if not self._pending:
            return
        committed = set(self.manager.all_steps())
        for step, finite in sorted(self._pending.items()):
            done = (self.path(step) / MANIFEST).exists()
            if step in committed and self.primary and not done:
                _write_manifest(self.path(step), finite)
        self._pending.clear()
        self._rotate()

    def _manifest_before_commit(self) -> None:
        """orbax's post-finalisation callback: the arrays are final, the directory not yet
        renamed. Writes the manifest there (else :meth:`_finish_pending` writes it later)."""
        step = self._saving
        if step is None or not self.primary:
            return
        temporary = list(self.directory.glob(f"{step}.orbax-checkpoint-tmp*"))
        if len(temporary) == 1:
            _write_manifest(temporary[0], self._finite[step])

    def _rotate(self) -> None:
        steps = self.all_steps()
        counted = [s for s in steps if self.is_finite(s) is not False]
        if len(counted) < self.keep:
            return
        oldest_kept = counted[-self.keep]
        for step in steps:
            if step < oldest_kept:
                self.manager.delete(step)

    def _quarantine(self, steps: list[int]) -> None:
        target = self.directory.parent / "checkpoints_damaged"
        if self.primary:
            target.mkdir(exist_ok=True)
            for step in steps:
                destination = target / str(step)
                if destination.exists():
                    shutil.rmtree(destination)
                shutil.move(str(self.path(step)), destination)
        self.manager.reload()


def _write_manifest(root: pathlib.Path, finite: bool) -> None:
    files = {
        str(p.relative_to(root)): [p.stat().st_size, _sha256(p)]
        for p in sorted(root.rglob("*"))
        if p.is_file()
        and p.name != MANIFEST
        and not p.name.startswith(f".{MANIFEST}")
        and str(p.relative_to(root)) not in _ORBAX_COMMIT_FILES
    }
    temporary = root / f".{MANIFEST}.tmp"
    with temporary.open("w") as f:
        json.dump({"format": 1, "finite": finite, "files": files}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, root / MANIFEST)


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _all_finite(tree: Any) -> bool:
    """Every floating-point leaf finite (integer leaves — counters, keys — are ignored)."""
    for leaf in jax.tree.leaves(tree):
        array = np.asarray(leaf)
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            return False
    return True


def _signature(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{"params/conv1/kernel": (shape, dtype)}`` for arrays or orbax ``ArrayMetadata``."""
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        key = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        out[key] = (tuple(int(d) for d in leaf.shape), np.dtype(leaf.dtype).name)
    return out


def _describe_difference(stored: dict, expected: dict) -> str:
    """At most three examples: arrays only in the checkpoint, only in the model, and changed."""

    def params_first(keys):  # parameters name the layer that differs
        return sorted(keys, key=lambda k: (not k.startswith("params/"), k))

    missing = params_first(expected.keys() - stored.keys())
    extra = params_first(stored.keys() - expected.keys())
    changed = params_first(k for k in stored.keys() & expected.keys() if stored[k] != expected[k])
    parts = []
    if changed:
        k = changed[0]
        parts.append(
            f"{len(changed)} array(s) differ, e.g. {k}: checkpoint {_fmt(stored[k])}, "
            f"model {_fmt(expected[k])}"
        )
    if missing:
        parts.append(f"{len(missing)} model array(s) not in the checkpoint, e.g. {missing[0]}")
    if extra:
        parts.append(f"{len(extra)} checkpoint array(s) not in the model, e.g. {extra[0]}")
    return "; ".join(parts)


def _fmt(entry: tuple[tuple[int, ...], str]) -> str:
    shape, dtype = entry
    return f"{dtype}[{','.join(map(str, shape))}]"


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return line if len(line) <= 160 else line[:157] + "..."


_EMPTY = "__empty__"


def _to_tree(state: Any) -> Any:
    """State → nested dict of arrays; empty containers and ``None`` become a marker array
    (orbax does not store empty nodes, so a restore would not find them)."""

    def convert(node):
        if isinstance(node, dict):
            if not node:
                return {_EMPTY: np.zeros((), np.int8)}
            return {str(k): convert(v) for k, v in node.items()}
        if node is None:
            return {_EMPTY: np.zeros((), np.int8)}
        return np.asarray(node)

    return convert(flax.serialization.to_state_dict(state))


def _from_tree(tree: Any, like: Any) -> Any:
    """Inverse of :func:`_to_tree`, guided by the template's own state dict ``like``."""
    if like is None or (isinstance(like, dict) and not like):
        return like
    if isinstance(like, dict):
        return {k: _from_tree(tree[str(k)], v) for k, v in like.items()}
    return np.asarray(tree)
