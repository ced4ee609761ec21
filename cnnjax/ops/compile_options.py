"""XLA compile options for programs built from cnnjax ops: which library runs CPU convolutions.

XLA:CPU (jax 0.10.2) hands every convolution it can to YNNPACK (``__ynn_fusion``); the rest
run in XLA's own emitters (Eigen's spatial convolution for float32 NHWC/HWIO, its loop emitter
otherwise). For the convolutions of CNN training, XLA's emitters are faster here: ResNet-20's
whole training step (batch 128, float32, 2-core EPYC) took 0.91x as long with YNNPACK kept for
dots and reductions only, and LeNet-5's 0.97x (interleaved medians; experiments/BENCHMARKS.md,
"CPU convolution library"). cnnjax's own compiled steps (``cnnjax train``, ``cnnjax bench``)
therefore pass :func:`compiler_options` to ``jax.jit``; pass it to yours the same way::

    step = jax.jit(train_step, compiler_options=cnnjax.compiler_options())

It changes only which kernels run, not what is computed: values agree to float32 rounding.
"""

from __future__ import annotations

import functools
import os

import jax

__all__ = ["CPU_CONVOLUTIONS", "compiler_options"]

#: Values of ``cpu_convolutions``: ``"xla"`` = XLA:CPU's own emitters (Eigen), YNNPACK kept for
#: dots and reductions; ``"ynnpack"`` = XLA's default (YNNPACK also runs convolutions).
CPU_CONVOLUTIONS = ("xla", "ynnpack")

_YNN_FUSION_TYPE = "xla_cpu_experimental_ynn_fusion_type"
# XLA's default list in jax 0.10.2 is INDIVIDUAL_DOT, REDUCE and INDIVIDUAL_CONVOLUTION (checked:
# XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution compiles ResNet-20's
# step to the same HLO as this list). Per-compile options take exact names only (no "-x").
_YNN_WITHOUT_CONVOLUTIONS = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"


def compiler_options(cpu_convolutions: str = "xla", backend: str | None = None) -> dict[str, str]:
    """``compiler_options`` for ``jax.jit`` so that CPU convolutions run where they are fastest.

    Args:
      cpu_convolutions: ``"xla"`` (default) or ``"ynnpack"`` (see :data:`CPU_CONVOLUTIONS`).
      backend: the platform the program compiles for; ``None`` = ``jax.default_backend()``.

    Returns:
      ``{"xla_cpu_experimental_ynn_fusion_type": ...}`` on CPU for ``"xla"``; ``{}`` on other
      backends, for ``"ynnpack"``, when ``XLA_FLAGS`` already sets that option (the user's choice
      wins), or when the running jaxlib does not know the option.

    Raises:
      ValueError: ``cpu_convolutions`` is not one of :data:`CPU_CONVOLUTIONS`.
    """
    if cpu_convolutions not in CPU_CONVOLUTIONS:
        raise ValueError(
            f"cpu_convolutions must be one of {', '.join(map(repr, CPU_CONVOLUTIONS))}, "
            f"got {cpu_convolutions!r}"
        )
    if cpu_convolutions == "ynnpack" or (backend or jax.default_backend()).lower() != "cpu":
        return {}
    if _YNN_FUSION_TYPE in os.environ.get("XLA_FLAGS", ""):
        return {}
    options = {_YNN_FUSION_TYPE: _YNN_WITHOUT_CONVOLUTIONS}
    return dict(options) if _accepted(tuple(options.items())) else {}


@functools.cache
def _accepted(options: tuple[tuple[str, str], ...]) -> bool:
    """Whether this jaxlib's CPU compiler takes ``options`` (compiles a one-op program once)."""
    try:
        one = jax.device_put(1.0, jax.local_devices(backend="cpu")[0])
        jax.jit(lambda x: x + 1).lower(one).compile(compiler_options=dict(options))
    except Exception:  # any refusal (an unknown option or value) means: do not use it
        return False
    return True
