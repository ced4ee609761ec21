"""XLA:CPU workarounds: everything cnnjax does because of the CPU backend, not the maths.

The ops in this package state their maths; where XLA:CPU needs a different but equivalent
program, they call the helpers here, and every helper changes only *how* a value is computed,
never the value:

* :func:`conv_general_dilated` — ``lax.conv_general_dilated`` that computes a convolution with
  one input and one output feature with a zero second output feature on CPU, where the one-feature
  loop kernel can read unmapped memory and kill the process (SIGSEGV).
* :func:`sum_over_batch_chunks` — the weight gradient of a convolution summed over batch chunks
  on CPU, where XLA's transpose of the whole batch misses the cache.
* :func:`compiler_options` — ``jax.jit`` compile options that run CPU convolutions in XLA's own
  emitters instead of YNNPACK.

Measurements behind each choice are in ``experiments/BENCHMARKS.md`` (sections named below).

Compile options: XLA:CPU hands every convolution it can to YNNPACK (``__ynn_fusion``); the rest
run in XLA's own emitters (Eigen's spatial convolution for float32 NHWC/HWIO, its loop emitter
otherwise). For the convolutions of CNN training, XLA's emitters are faster (BENCHMARKS.md, "CPU
convolution library"). cnnjax's own compiled steps (``cnnjax train``, ``cnnjax bench``)
therefore pass :func:`compiler_options` to ``jax.jit``; pass it to yours the same way::

    step = jax.jit(train_step, compiler_options=cnnjax.compiler_options())

It changes only which kernels run, not what is computed: values agree to float32 rounding.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
from jax import lax

from cnnjax.ops._common import accumulation_dtype

__all__ = [
    "CPU_CONVOLUTIONS",
    "compiler_options",
    "conv_general_dilated",
    "sum_over_batch_chunks",
]

#: Values of ``cpu_convolutions``: ``"xla"`` = XLA:CPU's own emitters (Eigen), YNNPACK kept for
#: dots and reductions; ``"ynnpack"`` = XLA's default (YNNPACK also runs convolutions).
CPU_CONVOLUTIONS = ("xla", "ynnpack")

_YNN_FUSION_TYPE = "xla_cpu_experimental_ynn_fusion_type"
# XLA's default list is INDIVIDUAL_DOT, REDUCE and INDIVIDUAL_CONVOLUTION: this is the default
# without the convolutions (XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution
# compiles the same HLO). Per-compile options take exact names only (no "-x").
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


# --------------------------------------------------------------------------------------------
# Convolutions with one input and one output feature
# --------------------------------------------------------------------------------------------


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, **kwargs) -> jax.Array:
    """``lax.conv_general_dilated(lhs, rhs, **kwargs)``, run with two output features on CPU
    when it has exactly one input and one output feature.

    Why: a convolution that XLA:CPU emits as its loop kernel rather than Eigen (every float64
    one; float32 ones with an operand of at most 8 bytes or non-NHWC dimension numbers) and
    that has one input and one output feature is vectorised by LLVM across output positions
    with *plain* vector loads of the input at padded (out-of-range) positions; the padded lanes
    are masked only afterwards. With enough padding those loads leave the mapped memory and the
    process dies with SIGSEGV, e.g. ``x (1, 10**6, 1)``, ``w (1, 1, 1)``, padding 1000. With
    two output features XLA emits masked (fault-free) loads instead, and every convolution that
    autodiff derives from this one has a feature count of 2 as well. The extra output is zeros
    and is sliced off, so values and gradients are unchanged. docs/gradients.md ("XLA limits")
    and tests/test_xla_limits.py have the probes.
    """
    conv = functools.partial(lax.conv_general_dilated, **kwargs)
    dn = kwargs["dimension_numbers"]
    if lhs.shape[dn.lhs_spec[1]] == 1 and rhs.shape[dn.rhs_spec[0]] == 1:
        two = functools.partial(_conv_two_output_features, conv, dn)
        return lax.platform_dependent(lhs, rhs, cpu=two, default=conv)
    return conv(lhs, rhs)


def _conv_two_output_features(conv, dn: lax.ConvDimensionNumbers, lhs, rhs) -> jax.Array:
    """``conv(lhs, rhs)`` for one output feature, computed with a zero second one."""
    out_axis, zero = dn.rhs_spec[0], jnp.zeros_like(rhs)
    y = conv(lhs, jnp.concatenate([rhs, zero], axis=out_axis))
    return lax.slice_in_dim(y, 0, 1, axis=dn.out_spec[1])


# --------------------------------------------------------------------------------------------
# Weight gradients summed over batch chunks
# --------------------------------------------------------------------------------------------

# Why: on CPU, XLA lays the weight-gradient operands out as (C_in, *spatial, N) and fuses their
# producers (BatchNorm, ReLU) into that transpose, whose N-strided reads then miss the cache;
# summing the gradient over batch chunks keeps each transpose in cache. Chunks of 8 were the
# fastest size measured; at most 16 chunks keep the compile time bounded at large batches
# (BENCHMARKS.md, "Faster CPU path").
WEIGHT_GRAD_BATCH_CHUNK = 8
WEIGHT_GRAD_MAX_CHUNKS = 16


def sum_over_batch_chunks(conv, x: jax.Array, g: jax.Array) -> jax.Array:
    """``conv(x, g)`` for a convolution that contracts the batch axis 0 of ``x`` and ``g`` (a
    weight gradient), computed on CPU as the sum of ``conv`` over batch chunks.

    Inputs whose accumulation dtype is wider than their own (float16, bfloat16) are not
    chunked: their float32 sum is rounded once, not once a chunk. Other backends run
    ``conv(x, g)`` unchanged.
    """
    chunk = max(WEIGHT_GRAD_BATCH_CHUNK, -(-x.shape[0] // WEIGHT_GRAD_MAX_CHUNKS))
    if x.shape[0] <= chunk or accumulation_dtype(x.dtype) != x.dtype:
        return conv(x, g)

    def batch_chunked(x, g):
        parts = [conv(x[i : i + chunk], g[i : i + chunk]) for i in range(0, x.shape[0], chunk)]
        return functools.reduce(jnp.add, parts)

    return lax.platform_dependent(x, g, cpu=batch_chunked, default=conv)
