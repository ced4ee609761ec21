"""Checkpoints with orbax: periodic and final saves, keep-N, resume from the latest.

A checkpoint holds the :class:`~cnnjax.train.state.TrainState` as a nested dict of host NumPy
arrays (``flax.serialization.to_state_dict``; one replica, whatever the driver, so a run may
resume under another parallelism) and a small JSON ``meta`` (step, epoch, config). Saves are
asynchronous by default: the arrays are copied and written by a background thread while
training continues.

Atomicity: orbax writes each step into a temporary directory and renames it only after every
file (and, in multi-process runs, every process) is done; ``latest_step()`` only ever sees
finished checkpoints, so a run killed during a save resumes from the previous one.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import flax.serialization
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["Checkpointer"]


class Checkpointer:
    """Save and restore train states under ``directory`` (``WORKDIR/checkpoints``)."""

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3, async_save: bool = True):
        self.directory = pathlib.Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, enable_async_checkpointing=async_save, create=True
            ),
        )

    def latest_step(self) -> int | None:
        """The step of the newest *finished* checkpoint, or ``None``."""
        return self.manager.latest_step()

    def path(self, step: int | None = None) -> pathlib.Path:
        """Directory of the checkpoint at ``step`` (default: latest)."""
        step = self.latest_step() if step is None else step
        return self.directory / str(step)

    def save(self, step: int, state: Any, meta: dict | None = None) -> None:
        """Save a host state (NumPy leaves) at ``step``; a no-op if that step is already saved."""
        if step in self.manager.all_steps():
            return
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_to_tree(state)),
                meta=ocp.args.JsonSave(meta or {}),
            ),
            force=True,
        )

    def restore(self, template: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restore into the structure of ``template`` (a host state); returns ``(state, meta)``."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint under {self.directory}")
        tree = _to_tree(template)
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(tree), meta=ocp.args.JsonRestore()
            ),
        )
        raw = flax.serialization.to_state_dict(template)
        state = flax.serialization.from_state_dict(template, _from_tree(restored["state"], raw))
        return state, dict(restored["meta"] or {})

    def wait(self) -> None:
        """Block until pending asynchronous saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


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
