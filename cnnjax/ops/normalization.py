"""Local normalisation across channels and space: LRN (AlexNet) and LCN (Jarrett et al. 2009).

Arrays are channels-last ``(N, *spatial, C)`` with 1-3 spatial dims; outputs have the input's
shape. Each op has ``impl="custom"`` (default: a :func:`jax.custom_vjp` whose backward rule is
derived by hand in the comment beside it; reverse mode, including reverse-over-reverse, only:
forward mode ``jax.jvp``/``jax.jacfwd`` is impossible through a ``custom_vjp``, use
``impl="xla"`` for it) and ``impl="xla"`` (plain ``lax``/``jnp`` forward, JAX autodiff).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cnnjax.ops._common import (
    Impl,
    accumulation_dtype,
    as_floating,
    call_custom_vjp,
    check_extents,
    check_impl,
    conv_dimension_numbers,
    spatial_ndim,
)
from cnnjax.ops.xla_cpu import conv_general_dilated

__all__ = ["local_contrast_norm", "local_response_norm"]


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def local_response_norm(
    x: jax.typing.ArrayLike,
    size: int,
    alpha: float = 1e-4,
    beta: float = 0.75,
    k: float = 1.0,
    *,
    impl: Impl = "custom",
) -> jax.Array:
    """Local response normalisation across channels, as ``torch.nn.functional.local_response_norm``.

    Shapes: ``(N, *spatial, C) -> (N, *spatial, C)``.

    .. math::
        y_c = x_c \\Big/ \\Big(k + \\frac{\\alpha}{n} \\sum_{c' = c - \\lfloor n/2 \\rfloor}
        ^{c + \\lfloor (n-1)/2 \\rfloor} x_{c'}^2\\Big)^{\\beta}

    with ``n = size``; channels outside ``[0, C)`` count as zero (PyTorch pads the channel
    window by ``size // 2`` before and ``(size - 1) // 2`` after, and always divides by ``size``).

    Backward (``impl="custom"``), with ``d_c = k + (alpha/n) S_c`` the bracket:
    ``dx_j = g_j d_j^(-beta) - (2 alpha beta / n) x_j sum_{c: j in window(c)} g_c y_c / d_c``;
    the sum over the windows that contain ``j`` is the adjoint of the channel-window sum, i.e.
    the same window sum with the padding mirrored (``(size - 1) // 2`` before, ``size // 2``
    after). Forward mode needs ``impl="xla"``.

    Args:
      x: ``(N, *spatial, C)`` floating array.
      size: number of channels in the window (``>= 1``).
      alpha, beta, k: the constants of the formula (static Python numbers).
      impl: ``"custom"`` (hand-written VJP; reverse mode only: forward mode is impossible
        through a ``custom_vjp``) or ``"xla"`` (``lax.reduce_window`` + autodiff, forward mode
        included).
    """
    check_impl(impl, "local_response_norm")
    x = as_floating("local_response_norm", x)
    spatial_ndim(x, op="local_response_norm")
    if isinstance(size, bool) or not isinstance(size, int | np.integer):
        raise TypeError(f"local_response_norm: size must be an int >= 1, got {size!r}")
    if size < 1:
        raise ValueError(f"local_response_norm: size must be an int >= 1, got {size!r}")
    check_extents(
        "local_response_norm",
        "zero-padded channel window",
        (*x.shape[:-1], x.shape[-1] + int(size)),
        "C + size",
    )
    cfg = _LrnConfig(
        int(size),
        _number("local_response_norm", "alpha", alpha),
        _number("local_response_norm", "beta", beta),
        _number("local_response_norm", "k", k),
    )
    # Both impls run in float32 (or wider) and round once: the channel sums and the VJP's sums
    # then never accumulate in float16/bfloat16.
    wide = x.astype(accumulation_dtype(x.dtype))
    if impl == "xla":
        return _lrn_forward(wide, cfg).astype(x.dtype)
    return call_custom_vjp("local_response_norm", _lrn_jit, wide, cfg).astype(x.dtype)


def local_contrast_norm(
    x: jax.typing.ArrayLike,
    size: int = 9,
    sigma: float | None = None,
    *,
    eps: float = 1e-6,
    impl: Impl = "custom",
) -> jax.Array:
    """Local contrast normalisation (Jarrett, Kavukcuoglu, Ranzato & LeCun, 2009).

    Shapes: ``(N, *spatial, C) -> (N, *spatial, C)``.

    Subtractive then divisive normalisation with a Gaussian window ``w`` over space (``size``
    taps per spatial dim) normalised so that its weights summed over space *and* channels are 1,
    i.e. ``w_pq = G_pq / (C sum G)``::

        v_{c,j}  = x_{c,j} - sum_{c', p} w_p x_{c', j+p}
        sigma_j  = sqrt(sum_{c', p} w_p v_{c', j+p}^2)
        y_{c,j}  = v_{c,j} / max(mean_j(sigma_j), sigma_j, eps)

    where ``mean_j`` is over all spatial positions of one sample (the paper's ``c``).

    Choices made here (the paper leaves them open):

    * zero padding ("same" size output) at the borders, without renormalising the Gaussian
      there, so ``v`` is not zero-mean near the borders;
    * ``size`` must be odd, so the window is centred and symmetric: the smoothing operator is
      then self-adjoint, which the backward rule uses;
    * ``sigma`` (in pixels) defaults to ``size / 4`` (torch7's ``image.gaussian`` convention);
    * ``eps`` is a floor on the divisor, so an all-constant input gives 0 instead of 0/0;
    * in float16 the gradient where the ``eps`` floor is active is of order ``1/eps`` (1e6 by
      default), beyond float16's range: it rounds to ``inf`` (never NaN); pass a larger ``eps``;
    * at an exact tie ``sigma_j == mean(sigma)`` the custom gradient goes to the mean
      (``impl="xla"`` splits it evenly, as ``jnp.maximum`` does); where the ``eps`` floor is
      active no gradient flows to ``sigma``.

    Backward (``impl="custom"``), with ``S`` the (self-adjoint) Gaussian smoothing,
    ``D_j`` the divisor and ``P`` the number of spatial positions::

        gv = g / D;   gD = -sum_c g_c y_c / D
        gsigma_j = gD_j [sigma_j is the max] + (1/P) sum_i gD_i [the mean is the max at i]
        gq = S(gsigma / (2 sigma)) / C;   gv += 2 v gq           (q = sum_c v_c^2)
        dx = gv - S(sum_c gv_c) / C

    Forward mode needs ``impl="xla"``.

    Args:
      x: ``(N, *spatial, C)`` floating array.
      size: Gaussian window size per spatial dim, odd and ``>= 1`` (the paper uses 9).
      sigma: Gaussian standard deviation in pixels (``> 0``); default ``size / 4``.
      eps: floor on the divisor (``> 0``).
      impl: ``"custom"`` (hand-written VJP with separable smoothing; reverse mode only) or
        ``"xla"`` (a ``lax.conv_general_dilated`` with the full Gaussian kernel + autodiff,
        forward mode included; where ``sigma_j = 0`` both impls pass no gradient through
        ``sqrt``, whose derivative is infinite there). float16/bfloat16 inputs are computed in
        float32 and rounded once.
    """
    check_impl(impl, "local_contrast_norm")
    x = as_floating("local_contrast_norm", x)
    nd = spatial_ndim(x, op="local_contrast_norm")
    if isinstance(size, bool) or not isinstance(size, int | np.integer):
        raise TypeError(f"local_contrast_norm: size must be an odd int >= 1, got {size!r}")
    if size < 1:
        raise ValueError(f"local_contrast_norm: size must be an odd int >= 1, got {size!r}")
    if size % 2 == 0:
        raise ValueError(
            f"local_contrast_norm: size must be odd (a centred, symmetric window of size "
            f"2r + 1), got size={size}"
        )
    sigma = size / 4 if sigma is None else _number("local_contrast_norm", "sigma", sigma)
    if not sigma > 0:
        raise ValueError(f"local_contrast_norm: sigma must be > 0, got sigma={sigma!r}")
    eps = _number("local_contrast_norm", "eps", eps)
    if not eps > 0:
        raise ValueError(f"local_contrast_norm: eps must be > 0, got eps={eps!r}")
    if 0 in x.shape[1:-1] or x.shape[-1] == 0:
        raise ValueError(
            "local_contrast_norm: the mean over spatial positions and channels (w_pq = G_pq / "
            f"(C sum G)) needs every spatial dim and C >= 1, got x.shape = {tuple(x.shape)}"
        )
    check_extents(
        "local_contrast_norm",
        "zero-padded smoothing input",
        (x.shape[0], *(n + int(size) for n in x.shape[1:-1]), x.shape[-1]),
        "per dim n + size",
    )
    cfg = _LcnConfig(nd, int(size), float(sigma), float(eps))
    # Both impls run in float32 (or wider) and round once: the Gaussian sums and the eps floor
    # (1e-6 is subnormal in float16, flushed to 0 on CPU: 0/0) stay well defined.
    wide = x.astype(accumulation_dtype(x.dtype))
    if impl == "xla":
        return _lcn_xla(wide, cfg).astype(x.dtype)
    return call_custom_vjp("local_contrast_norm", _lcn_jit, wide, cfg).astype(x.dtype)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _number(op: str, name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{op}: {name} must be a Python number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{op}: {name} must be finite, got {name}={value!r}")
    return value


# --------------------------------------------------------------------------------------------
# local_response_norm
# --------------------------------------------------------------------------------------------


class _LrnConfig(NamedTuple):
    size: int
    alpha: float
    beta: float
    k: float


def _channel_window_sum(a: jax.Array, before: int, after: int, size: int) -> jax.Array:
    """``sum_{c'=c-before}^{c+after} a_{c'}`` along the last axis, zero outside ``[0, C)``."""
    return lax.reduce_window(
        a,
        np.zeros((), a.dtype),
        lax.add,
        (1,) * (a.ndim - 1) + (size,),
        (1,) * a.ndim,
        [(0, 0)] * (a.ndim - 1) + [(before, after)],
    )


def _lrn_denominator(x: jax.Array, cfg: _LrnConfig) -> jax.Array:
    """``d = k + alpha/size * channel-window-sum(x^2)`` (PyTorch's window placement)."""
    window = _channel_window_sum(x * x, cfg.size // 2, (cfg.size - 1) // 2, cfg.size)
    return cfg.k + (cfg.alpha / cfg.size) * window


def _lrn_forward(x: jax.Array, cfg: _LrnConfig) -> jax.Array:
    return x / _lrn_denominator(x, cfg) ** cfg.beta


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _lrn_custom(x: jax.Array, cfg: _LrnConfig) -> jax.Array:
    return _lrn_forward(x, cfg)


def _lrn_fwd(x: jax.Array, cfg: _LrnConfig):
    d = _lrn_denominator(x, cfg)
    return x / d**cfg.beta, (x, d)


def _lrn_bwd(cfg: _LrnConfig, residuals, g: jax.Array):
    # y_c = x_c d_c^(-b), d_c = k + (a/n) sum_{c' in W(c)} x_{c'}^2, W(c) = [c - n//2, c + (n-1)//2]
    # dy_c/dx_j = [c = j] d_c^(-b) - b x_c d_c^(-b-1) (a/n) 2 x_j [j in W(c)], so
    # dx_j = g_j d_j^(-b) - (2ab/n) x_j sum_{c: j in W(c)} g_c y_c / d_c.
    # j in W(c)  <=>  c in [j - (n-1)//2, j + n//2]: the adjoint window has mirrored padding.
    x, d = residuals
    d_pow = d**cfg.beta
    u = g * x / (d_pow * d)  # g_c y_c / d_c
    back = _channel_window_sum(u, (cfg.size - 1) // 2, cfg.size // 2, cfg.size)
    return (g / d_pow - (2.0 * cfg.alpha * cfg.beta / cfg.size) * x * back,)


_lrn_custom.defvjp(_lrn_fwd, _lrn_bwd)
_lrn_jit = jax.jit(_lrn_custom, static_argnums=1)


# --------------------------------------------------------------------------------------------
# local_contrast_norm
# --------------------------------------------------------------------------------------------


class _LcnConfig(NamedTuple):
    ndim: int
    size: int
    sigma: float
    eps: float


def _gaussian_1d(cfg: _LcnConfig) -> np.ndarray:
    """Normalised 1-D Gaussian taps (float64 NumPy; cast at use)."""
    r = (cfg.size - 1) // 2
    t = np.arange(cfg.size, dtype=np.float64) - r
    taps = np.exp(-(t**2) / (2.0 * cfg.sigma**2))
    return taps / taps.sum()


def _smooth(z: jax.Array, cfg: _LcnConfig) -> jax.Array:
    """Separable Gaussian smoothing ``S`` of ``z`` ``(N, *spatial)`` with zero "same" padding.

    ``S(z)_j = sum_p G_p z_{j+p}`` with ``G`` the normalised ``size^ndim`` Gaussian. ``G`` is
    symmetric and the padding is ``(r, r)``, so ``S`` is self-adjoint.
    """
    taps = _gaussian_1d(cfg)
    r = (cfg.size - 1) // 2
    for axis in range(1, z.ndim):
        n = z.shape[axis]
        config = [(0, 0, 0)] * z.ndim
        config[axis] = (r, r, 0)
        padded = lax.pad(z, np.zeros((), z.dtype), config)
        acc = None
        for t, weight in enumerate(taps):
            term = np.asarray(weight, z.dtype) * lax.slice_in_dim(padded, t, t + n, axis=axis)
            acc = term if acc is None else acc + term
        z = acc
    return z


def _lcn_divisor(sigma: jax.Array, cfg: _LcnConfig):
    """``max(mean sigma, sigma, eps)`` and the masks saying which argument is the max."""
    spatial_axes = tuple(range(1, sigma.ndim))
    mean = jnp.mean(sigma, axis=spatial_axes, keepdims=True)
    sigma_wins = sigma > mean  # ties go to the mean
    inner = jnp.where(sigma_wins, sigma, mean)
    active = inner > cfg.eps  # where the eps floor is the max, nothing flows back
    return jnp.where(active, inner, np.asarray(cfg.eps, sigma.dtype)), sigma_wins, active


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _lcn_custom(x: jax.Array, cfg: _LcnConfig) -> jax.Array:
    return _lcn_fwd(x, cfg)[0]


def _lcn_fwd(x: jax.Array, cfg: _LcnConfig):
    v = x - _smooth(jnp.mean(x, axis=-1), cfg)[..., None]
    sigma = jnp.sqrt(_smooth(jnp.mean(v * v, axis=-1), cfg))
    divisor, _, _ = _lcn_divisor(sigma, cfg)
    return v / divisor[..., None], (v, sigma)


def _lcn_bwd(cfg: _LcnConfig, residuals, g: jax.Array):
    # Forward: m = S(mean_c x), v = x - m, q = mean_c v^2, sigma = sqrt(S q),
    # D = max(mean_j sigma_j, sigma, eps), y = v / D.  Reverse, step by step:
    #   gv = g / D,  gD = -sum_c g_c v_c / D^2
    #   gsigma = gD [sigma wins] (active) + (1/P) sum_j gD_j [mean wins at j] (active)
    #   gq = S^T(gsigma / (2 sigma)) = S(gsigma / (2 sigma))   (S self-adjoint)
    #   gv += 2 v gq / C                                          (q = (1/C) sum_c v_c^2)
    #   dx = gv - S^T(sum_c gv_c) / C                             (m = S((1/C) sum_c x_c))
    v, sigma = residuals
    divisor, sigma_wins, active = _lcn_divisor(sigma, cfg)
    zero = np.zeros((), g.dtype)
    channels = v.shape[-1]
    spatial_axes = tuple(range(1, sigma.ndim))
    positions = math.prod(sigma.shape[1:])
    grad_v = g / divisor[..., None]
    grad_divisor = -jnp.sum(g * v, axis=-1) / (divisor * divisor)
    grad_divisor = jnp.where(active, grad_divisor, zero)
    grad_mean = jnp.sum(jnp.where(sigma_wins, zero, grad_divisor), axis=spatial_axes, keepdims=True)
    grad_sigma = jnp.where(sigma_wins, grad_divisor, zero) + grad_mean / positions
    positive = sigma > 0
    sigma_safe = jnp.where(positive, sigma, np.ones((), sigma.dtype))
    grad_s = jnp.where(positive, grad_sigma / (2.0 * sigma_safe), zero)
    grad_v = grad_v + (2.0 / channels) * v * _smooth(grad_s, cfg)[..., None]
    grad_x = grad_v - _smooth(jnp.sum(grad_v, axis=-1), cfg)[..., None] / channels
    return (grad_x,)


_lcn_custom.defvjp(_lcn_fwd, _lcn_bwd)
_lcn_jit = jax.jit(_lcn_custom, static_argnums=1)


def _lcn_xla(x: jax.Array, cfg: _LcnConfig) -> jax.Array:
    """The paper's formulas as two convolutions with the full ``w_pq = G_pq / C`` kernel."""
    channels = x.shape[-1]
    taps = _gaussian_1d(cfg)
    kernel = functools.reduce(np.multiply.outer, [taps] * cfg.ndim) / channels
    # (*K, C, 1): the sum over input channels is the sum over c' in the formula.
    kernel = jnp.asarray(np.broadcast_to(kernel[..., None, None], (*kernel.shape, channels, 1)))
    kernel = kernel.astype(x.dtype)
    r = (cfg.size - 1) // 2
    dims = conv_dimension_numbers(cfg.ndim)

    def weighted_sum(a: jax.Array) -> jax.Array:
        # With C = 1 this is a one-in/one-out-feature conv, which XLA:CPU can fault on with a
        # wide padding: the guarded lax call. x is already in its accumulation dtype.
        return conv_general_dilated(
            a,
            kernel,
            window_strides=(1,) * cfg.ndim,
            padding=[(r, r)] * cfg.ndim,
            dimension_numbers=dims,
            precision=lax.Precision.HIGHEST,
        )

    v = x - weighted_sum(x)
    # sqrt through a "double where": at q = 0 the gradient is 0 (the custom rule's convention)
    # instead of autodiff's 0 * inf = nan.
    q = weighted_sum(v * v)
    positive = q > 0
    sigma = jnp.where(positive, jnp.sqrt(jnp.where(positive, q, 1.0)), 0.0)
    mean = jnp.mean(sigma, axis=tuple(range(1, cfg.ndim + 1)), keepdims=True)
    return v / jnp.maximum(jnp.maximum(mean, sigma), cfg.eps)
