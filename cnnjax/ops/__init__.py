"""The functional core: channels-last convolution, pooling and normalisation ops.

Every op takes ``impl="custom"`` (default: a ``jax.custom_vjp`` whose backward rule is the
textbook derivation written beside the forward function) or ``impl="xla"`` (plain ``lax``
forward, JAX autodiff). Both give the same forward values. Activations are ``(N, *spatial, C)``
with 1-3 spatial dims, kernels ``(*kernel, C_in // groups, C_out)``.

Modules: ``conv`` (conv, transposed, depthwise, separable), ``max_pooling`` (max pool and its
switches), ``pooling`` (average, Lp and global pools), ``unpool``, ``normalization`` (LRN, LCN);
``xla_cpu`` holds the XLA:CPU workarounds and compile options the ops and steps use.
"""

from cnnjax.ops.conv import conv, conv_transpose, depthwise_conv, separable_conv
from cnnjax.ops.max_pooling import max_pool
from cnnjax.ops.normalization import local_contrast_norm, local_response_norm
from cnnjax.ops.pooling import avg_pool, global_avg_pool, global_max_pool, lp_pool
from cnnjax.ops.unpool import max_unpool
from cnnjax.ops.xla_cpu import CPU_CONVOLUTIONS, compiler_options

__all__ = [
    "CPU_CONVOLUTIONS",
    "avg_pool",
    "compiler_options",
    "conv",
    "conv_transpose",
    "depthwise_conv",
    "global_avg_pool",
    "global_max_pool",
    "local_contrast_norm",
    "local_response_norm",
    "lp_pool",
    "max_pool",
    "max_unpool",
    "separable_conv",
]
