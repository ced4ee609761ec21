"""Pure augmentation and normalisation functions, each in a host (NumPy) and a device (JAX) form.

Every function takes and returns ``(N, H, W, C)`` batches, and takes its randomness as explicit
arrays (crop offsets, flip flags) so that the pipeline can draw them once for the *global* batch
and hand each process its slice: a two-process run then augments every example exactly as a
one-process run does.

Which to use: :func:`device_crop_flip` is the exact twin of :func:`crop` + :func:`flip_horizontal`
for randomness drawn on the host (:func:`sample_augment_params`), so the training pipeline
(``cnnjax.data.pipeline``) can ship raw ``uint8`` images (4x less host-to-device traffic than
float32) with their crop offsets and flip flags and let the jitted step crop, flip and normalise
(``cnnjax.data.device_preprocess``): the batches are those of host augmentation, whatever the
device count. ``augment.on_device`` (default: on for in-memory data) chooses.

Segmentation masks ``(N, H, W)`` go through :func:`crop` / :func:`flip_horizontal` /
:func:`device_crop_flip` with the image's offsets and flags; their padding is ``fill``
(the ignore index) instead of 0.

Normalisation uses the data set's per-channel statistics on the ``[0, 1]`` scale:

.. math:: \\hat x_c = (x_c / 255 - \\mu_c) / \\sigma_c
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "center_crop",
    "check_augment_geometry",
    "crop",
    "device_crop_flip",
    "device_normalize",
    "flip_horizontal",
    "normalize",
    "sample_augment_params",
]


def _normalize_constants(mean, std) -> tuple[np.float32, np.ndarray, np.ndarray]:
    """``(1/255, mean, 1/std)`` in float32: host and device compute with the same constants."""
    inv_std = np.float32(1.0) / np.asarray(std, np.float32)
    return np.float32(1.0 / 255.0), np.asarray(mean, np.float32), inv_std


def normalize(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``uint8`` (or 0-255 float) ``(N, H, W, C)`` → float32 ``(x / 255 - mean) / std``.

    Computed as ``(x * f32(1/255) - mean) * f32(1/std)``, rounding after every operation, as
    :func:`device_normalize` does.
    """
    scale, mean, inv_std = _normalize_constants(mean, std)
    return ((images.astype(np.float32) * scale - mean) * inv_std).astype(np.float32)


TRAIN_NAMES = {"padding": "augment.padding", "crop_size": "augment.crop_size"}


def check_augment_geometry(
    padding: int,
    crop_size: int | None,
    image_hw: Sequence[int],
    *,
    names: dict[str, str] | None = None,
) -> None:
    """Check a random crop's geometry against images of ``image_hw`` = (H, W) pixels.

    ``padding >= 0``; ``crop_size`` (``None``: the image size) ``>= 1`` and
    ``<= min(H, W) + 2 * padding``. ``names`` maps ``"padding"`` / ``"crop_size"`` to the
    option names in the message (default: the config keys ``augment.padding`` /
    ``augment.crop_size``; ``cnnjax bench data`` passes ``--padding`` / ``--crop-size``).

    Raises:
      ValueError: one line naming the option, the value, the formula and the image size.
    """
    names = {**TRAIN_NAMES, **(names or {})}
    if padding < 0:
        raise ValueError(f"{names['padding']} must be >= 0 (pixels), got {padding}")
    if crop_size is None:
        return
    side = min(image_hw)
    limit = side + 2 * padding
    if crop_size < 1 or crop_size > limit:
        raise ValueError(
            f"{names['crop_size']} must be in [1, image size + 2 * {names['padding']}] = "
            f"[1, {side} + 2 * {padding}] = [1, {limit}] for {image_hw[0]}x{image_hw[1]} "
            f"images, got {crop_size}"
        )


def _pad_widths(ndim: int, padding: int) -> tuple[tuple[int, int], ...]:
    return ((0, 0), (padding, padding), (padding, padding)) + ((0, 0),) * (ndim - 3)


def crop(
    images: np.ndarray,
    offsets: np.ndarray,
    size: tuple[int, int],
    padding: int = 0,
    fill: int = 0,
):
    """Crop a ``size`` window per image at ``offsets`` ``(N, 2)`` (row, col) of the padded image.

    ``(N, H, W, C)`` (or masks ``(N, H, W)``) → ``(N, size[0], size[1], C)``; ``padding``
    pixels of value ``fill`` are added on every side first, so offsets range over
    ``[0, H + 2 * padding - size[0]]``.
    """
    if padding:
        images = np.pad(images, _pad_widths(images.ndim, padding), constant_values=fill)
    n = images.shape[0]
    rows = offsets[:, 0, None] + np.arange(size[0])  # (N, size0)
    cols = offsets[:, 1, None] + np.arange(size[1])  # (N, size1)
    # Fancy indexing gathers all windows at once: far faster than a Python loop per image.
    return images[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def center_crop(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Central ``size`` window: ``(N, H, W, C)`` → ``(N, size[0], size[1], C)``."""
    h, w = images.shape[1:3]
    top, left = (h - size[0]) // 2, (w - size[1]) // 2
    return images[:, top : top + size[0], left : left + size[1]]


def flip_horizontal(images: np.ndarray, flips: np.ndarray) -> np.ndarray:
    """Mirror the images (or masks ``(N, H, W)``) where the boolean ``flips`` ``(N,)`` is true
    (along W)."""
    where = flips.reshape(-1, *(1,) * (images.ndim - 1))
    return np.where(where, images[:, :, ::-1], images)


def sample_augment_params(
    rng: np.random.Generator,
    n: int,
    image_hw: tuple[int, int],
    *,
    size: tuple[int, int],
    padding: int,
    flip: bool,
) -> dict[str, np.ndarray]:
    """Draw the randomness of ``n`` augmentations: ``offsets`` ``(n, 2)`` and ``flips`` ``(n,)``."""
    max_row = image_hw[0] + 2 * padding - size[0]
    max_col = image_hw[1] + 2 * padding - size[1]
    offsets = np.stack(
        [rng.integers(0, max_row + 1, size=n), rng.integers(0, max_col + 1, size=n)], axis=1
    )
    flips = rng.random(n) < 0.5 if flip else np.zeros(n, bool)
    return {"offsets": offsets, "flips": flips}


# ---------------------------------------------------------------------------------------------
# Device (JAX) forms, used inside the jitted step.


def device_normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """JAX form of :func:`normalize`: any dtype → float32 ``(x / 255 - mean) / std``.

    ``uint8`` images are looked up in a ``(256, C)`` table that :func:`normalize` computed on
    the host, so the result is bit-identical to the host form on every backend (an arithmetic
    form is not: XLA contracts ``x * s - m`` into one fused multiply-add, an ulp away from
    NumPy's two roundings). Other dtypes use the arithmetic form.
    """
    if images.dtype == jnp.uint8:
        channels = images.shape[-1]
        levels = np.broadcast_to(np.arange(256, dtype=np.uint8)[:, None], (256, channels))
        table = jnp.asarray(normalize(levels, mean, std).ravel())  # (256 * C,)
        index = images.astype(jnp.int32) * channels + jnp.arange(channels, dtype=jnp.int32)
        return jnp.take(table, index, mode="clip")
    scale, mean, inv_std = _normalize_constants(mean, std)
    return (images.astype(jnp.float32) * scale - mean) * inv_std


def device_crop_flip(
    images: jax.Array,
    offsets: jax.Array,
    flips: jax.Array | None,
    *,
    size: tuple[int, int],
    padding: int = 0,
    fill: int = 0,
) -> jax.Array:
    """JAX form of :func:`crop` then :func:`flip_horizontal`, for offsets and flags drawn on the
    host: ``(N, H, W[, C])`` → ``(N, size[0], size[1][, C])``, same dtype, same pixels.

    ``offsets`` ``(N, 2)`` int (row, col) of the image padded by ``padding`` pixels of ``fill``;
    ``flips`` ``(N,)`` bool or ``None`` (no flip).
    """
    if padding:
        images = jnp.pad(images, _pad_widths(images.ndim, padding), constant_values=fill)
    window = (size[0], size[1], *images.shape[3:])

    def one(image, offset):
        start = (offset[0], offset[1], *(jnp.int32(0),) * (image.ndim - 2))
        return jax.lax.dynamic_slice(image, start, window)

    images = jax.vmap(one)(images, offsets.astype(jnp.int32))
    if flips is None:
        return images
    where = flips.reshape(-1, *(1,) * (images.ndim - 1))
    return jnp.where(where, images[:, :, ::-1], images)
