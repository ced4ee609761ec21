"""Three drivers over the same pure steps: single-device ``jit``, ``pmap``, and ``jit`` over a mesh.

=============  ================================================================================
``none``       ``jit(train_step)`` on one device (the first local one).
``pmap``       ``pmap(train_step, axis_name="batch")``: the state is replicated with a leading
               device axis, each batch is reshaped to ``(devices, b / devices, ...)``.
``sharded``    ``jit(shard_map(train_step, mesh, in_specs=(P(), P("batch"))))`` over a 1-D
               ``Mesh`` of every device of every process: the state is replicated
               (``NamedSharding(mesh, P())``), the batch is split along its first axis, and the
               per-device body is the same step with ``axis_name="batch"``.
=============  ================================================================================

``parallel="auto"`` picks ``sharded`` when more than one device is visible, ``none`` otherwise.
In a multi-process run (see :func:`initialize_distributed`) each process feeds its own share
of the global batch; ``sharded`` assembles the global array with
``jax.make_array_from_process_local_data`` and ``pmap`` reduces over the devices of all
processes.

Every driver offers the same methods: ``place_state`` (host → devices), ``put_batch`` (host
batch → devices; runs in the prefetch thread), ``train_step``, ``eval_step`` and
``host_state`` (one NumPy copy of a device state, for checkpoints and inspection). The steps are
compiled once: batch shapes are static (``drop_remainder`` in training, padded eval batches).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = ["AXIS", "Driver", "initialize_distributed", "make_driver", "resolve_parallel"]

AXIS = "batch"
PARALLEL_KINDS = ("auto", "none", "pmap", "sharded")


def initialize_distributed(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    timeout_s: float = 120,
) -> bool:
    """Call ``jax.distributed.initialize`` when a multi-process run is asked for.

    Arguments fall back to ``CNNJAX_COORDINATOR``, ``CNNJAX_NUM_PROCESSES`` and
    ``CNNJAX_PROCESS_ID``; ``coordinator="auto"`` lets JAX detect the cluster (SLURM, Cloud TPU,
    MPI) by itself. Returns whether initialisation happened (``False`` for one process). CPU
    processes exchange collectives over gloo.

    If the processes have not all joined within ``timeout_s`` seconds, the process prints one
    line naming the coordinator and process ids to stderr and exits with status 2: JAX's own
    timeout aborts the interpreter from C++ (``SIGABRT``, a stack trace, no exception to catch),
    so a watchdog thread ends the process first (``os._exit``; the connect call releases the
    GIL) and JAX's timeout is set later than it.
    """
    coordinator = coordinator or os.environ.get("CNNJAX_COORDINATOR")
    if coordinator == "auto":
        with _join_watchdog("auto-detected", "?", "?", timeout_s):
            jax.distributed.initialize(initialization_timeout=int(timeout_s) + 30)
        return True
    if num_processes is None and os.environ.get("CNNJAX_NUM_PROCESSES"):
        num_processes = int(os.environ["CNNJAX_NUM_PROCESSES"])
    if process_id is None and os.environ.get("CNNJAX_PROCESS_ID"):
        process_id = int(os.environ["CNNJAX_PROCESS_ID"])
    if not coordinator or not num_processes or num_processes <= 1:
        return False
    if process_id is None:
        raise ValueError("a multi-process run needs --process-id (or CNNJAX_PROCESS_ID)")
    if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    with _join_watchdog(coordinator, process_id, num_processes, timeout_s):
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=int(timeout_s) + 30,
        )
    return True


@contextlib.contextmanager
def _join_watchdog(coordinator, process_id, num_processes, timeout_s: float):
    """Exit with one cnnjax line if the block has not finished after ``timeout_s`` seconds."""

    def give_up():
        others = "the other processes" if num_processes == "?" else f"ids 0–{num_processes - 1}"
        sys.stderr.write(
            f"cnnjax: error: process {process_id} of {num_processes} could not form the run "
            f"with coordinator {coordinator} within {timeout_s:g} s ({others} must all start "
            "with the same --coordinator and --num-processes; raise distributed.timeout_s if "
            "they start slowly)\n"
        )
        sys.stderr.flush()
        os._exit(2)

    watchdog = threading.Timer(timeout_s, give_up)
    watchdog.daemon = True
    watchdog.start()
    try:
        yield
    finally:
        watchdog.cancel()


def resolve_parallel(parallel: str) -> str:
    """``auto`` → ``sharded`` with more than one device, else ``none``; validates the name."""
    if parallel not in PARALLEL_KINDS:
        raise ValueError(f"parallel must be one of {', '.join(PARALLEL_KINDS)}, got {parallel!r}")
    if parallel == "auto":
        return "sharded" if jax.device_count() > 1 else "none"
    return parallel


class Driver:
    """Placement and compiled steps for one parallelism kind (see the module docstring).

    ``train_fn(state, batch, *, axis_name)`` and ``eval_fn(state, batch, *, axis_name)`` are the
    pure steps with every other argument already bound. ``compiler_options`` go to ``jax.jit``
    (:func:`cnnjax.ops.compiler_options`; ``jax.pmap`` takes none, so the pmap driver ignores
    them).
    """

    def __init__(
        self,
        kind: str,
        train_fn: Callable,
        eval_fn: Callable,
        compiler_options: dict[str, str] | None = None,
    ):
        self.kind = resolve_parallel(kind)
        self.compiler_options = dict(compiler_options or {})
        jit = functools.partial(jax.jit, compiler_options=self.compiler_options or None)
        if self.kind == "none":
            self.devices = [jax.local_devices()[0]]
        elif self.kind == "pmap":
            self.devices = jax.local_devices()
        else:
            self.devices = jax.devices()
        self.num_devices = len(self.devices)  # devices that share one global batch
        self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]
        self.global_devices = self.num_devices if self.kind != "pmap" else jax.device_count()

        if self.kind == "none":
            self._state_sharding = jax.sharding.SingleDeviceSharding(self.devices[0])
            self._batch_sharding = self._state_sharding
            self.train_step = jit(functools.partial(train_fn, axis_name=None), donate_argnums=0)
            self.eval_step = jit(functools.partial(eval_fn, axis_name=None))
        elif self.kind == "pmap":
            local_mesh = Mesh(np.array(self.local_devices), (AXIS,))
            self._batch_sharding = NamedSharding(local_mesh, P(AXIS))
            self._state_sharding = self._batch_sharding
            self.train_step = jax.pmap(
                functools.partial(train_fn, axis_name=AXIS),
                axis_name=AXIS,
                devices=self.local_devices,
                donate_argnums=0,
            )
            self.eval_step = jax.pmap(
                functools.partial(eval_fn, axis_name=AXIS),
                axis_name=AXIS,
                devices=self.local_devices,
            )
        else:
            self.mesh = Mesh(np.array(self.devices), (AXIS,))
            self._state_sharding = NamedSharding(self.mesh, P())
            self._batch_sharding = NamedSharding(self.mesh, P(AXIS))
            # check_vma=False: with it, JAX psums the gradient of the replicated params itself
            # (the transpose of the implicit "pvary"), and the step's own pmean would then see a
            # *sum* over devices; without it the body is the plain per-device step, as in pmap.
            shard = functools.partial(
                jax.shard_map,
                mesh=self.mesh,
                in_specs=(P(), P(AXIS)),
                out_specs=P(),
                check_vma=False,
            )
            self.train_step = jit(
                shard(functools.partial(train_fn, axis_name=AXIS)), donate_argnums=0
            )
            self.eval_step = jit(shard(functools.partial(eval_fn, axis_name=AXIS)))

    def check_batch_size(self, batch_size: int) -> None:
        """Raise unless the global ``batch_size`` splits evenly over the devices."""
        total = jax.device_count() if self.kind == "pmap" else self.num_devices
        if batch_size % total:
            raise ValueError(
                f"batch size {batch_size} is not divisible by the {total} devices of the "
                f"{self.kind!r} driver; use a multiple of {total} (or --parallel none)"
            )

    def place_state(self, state):
        """Host (or device) state → this driver's placement (replicated for pmap / sharded).

        Always a fresh copy: the compiled steps donate their state argument.
        """
        if self.kind == "none":
            return jax.tree.map(lambda x: jax.device_put(np.array(x), self._state_sharding), state)
        if self.kind == "pmap":
            n = len(self.local_devices)
            return jax.tree.map(
                lambda x: jax.device_put(
                    np.broadcast_to(np.asarray(x), (n, *np.shape(x))), self._state_sharding
                ),
                state,
            )
        return jax.tree.map(self._replicate_global, state)

    def _replicate_global(self, x):
        x = np.asarray(x)
        # make_array_from_callback works in multi-process runs, where device_put of host data to
        # a non-addressable sharding would not.
        return jax.make_array_from_callback(x.shape, self._state_sharding, lambda index: x[index])

    def put_batch(self, batch: dict[str, np.ndarray]):
        """This process's host batch → devices, split along the batch axis."""
        if self.kind == "none":
            return jax.device_put(batch, self._batch_sharding)
        if self.kind == "pmap":
            n = len(self.local_devices)
            return jax.tree.map(
                lambda x: jax.device_put(
                    x.reshape(n, x.shape[0] // n, *x.shape[1:]), self._batch_sharding
                ),
                batch,
            )
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(self._batch_sharding, x), batch
        )

    def host_state(self, state):
        """One NumPy copy of a placed state (first replica; works on non-addressable arrays)."""

        def one(x):
            if not isinstance(x, jax.Array):
                return np.asarray(x)
            shard = np.asarray(x.addressable_data(0))
            return shard[0] if self.kind == "pmap" else shard

        return jax.tree.map(one, state)

    def host_metrics(self, metrics) -> dict[str, float]:
        """Device metric sums → Python floats (pmap returns one identical copy per device)."""
        return {k: float(np.asarray(self.host_state(v))) for k, v in metrics.items()}


def make_driver(
    parallel: str,
    train_fn: Callable,
    eval_fn: Callable,
    compiler_options: dict[str, str] | None = None,
) -> Driver:
    """A :class:`Driver` for ``parallel`` in ``auto | none | pmap | sharded``."""
    return Driver(parallel, train_fn, eval_fn, compiler_options)
