"""Pure augmentation and normalisation functions, each in a host (NumPy) and a device (JAX) form.

Every function takes and returns ``(N, H, W, C)`` batches. The host forms take their randomness
as explicit arrays (crop offsets, flip flags) so that the pipeline can draw them once for the
*global* batch and hand each process its slice: a two-process run then augments every example
exactly as a one-process run does. The device forms take a ``jax.random`` key and run inside the
jitted step (see ``cnnjax.train.steps.train_step(augment=...)``); under ``pmap``/``shard_map``
each device folds its axis index into the key, so device augmentation does not reproduce the
single-device run bit-for-bit.

Which to use: host augmentation (the default) costs host time per batch but keeps the step
unchanged and is reproducible across device counts; device augmentation (``augment.on_device``)
sends ``uint8`` images (4x less host-to-device traffic) and does the work in the step.

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
    "crop",
    "device_augment",
    "device_normalize",
    "flip_horizontal",
    "normalize",
    "random_crop",
    "random_flip",
    "sample_augment_params",
]


def normalize(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``uint8`` (or 0-255 float) ``(N, H, W, C)`` → float32 ``(x / 255 - mean) / std``."""
    scale = np.float32(1.0 / 255.0)
    mean = np.asarray(mean, np.float32)
    inv_std = np.float32(1.0) / np.asarray(std, np.float32)
    return ((images.astype(np.float32) * scale - mean) * inv_std).astype(np.float32)


def crop(images: np.ndarray, offsets: np.ndarray, size: tuple[int, int], padding: int = 0):
    """Crop a ``size`` window per image at ``offsets`` ``(N, 2)`` (row, col) of the padded image.

    ``(N, H, W, C)`` → ``(N, size[0], size[1], C)``; ``padding`` zeros are added on every side
    first, so offsets range over ``[0, H + 2 * padding - size[0]]``.
    """
    if padding:
        images = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
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
    """Mirror the images where the boolean ``flips`` ``(N,)`` is true (along W)."""
    return np.where(flips[:, None, None, None], images[:, :, ::-1], images)


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


def random_crop(
    images: np.ndarray,
    rng: np.random.Generator,
    *,
    padding: int = 4,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Random ``size`` crop (default: the input size) of the image padded by ``padding`` zeros."""
    size = size or tuple(images.shape[1:3])
    p = sample_augment_params(
        rng, len(images), images.shape[1:3], size=size, padding=padding, flip=False
    )
    return crop(images, p["offsets"], size, padding)


def random_flip(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mirror each image horizontally with probability 1/2."""
    return flip_horizontal(images, rng.random(len(images)) < 0.5)


# ---------------------------------------------------------------------------------------------
# Device (JAX) forms, used inside the jitted step.


def device_normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """JAX form of :func:`normalize`: any dtype → float32 ``(x / 255 - mean) / std``."""
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    return (images.astype(jnp.float32) / 255.0 - mean) / std


def device_augment(
    key: jax.Array,
    images: jax.Array,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    padding: int = 0,
    flip: bool = False,
    size: tuple[int, int] | None = None,
) -> jax.Array:
    """Random crop (zero padding ``padding``) + optional flip + normalisation, on device.

    ``(N, H, W, C)`` raw 0-255 images → float32 ``(N, size[0], size[1], C)``. Raw images are
    zero-padded before normalisation, exactly as the host pipeline does.
    """
    n, h, w, _ = images.shape
    size = size or (h, w)
    images = images.astype(jnp.float32)
    if padding:
        images = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    k_row, k_col, k_flip = jax.random.split(key, 3)
    rows = jax.random.randint(k_row, (n,), 0, h + 2 * padding - size[0] + 1)
    cols = jax.random.randint(k_col, (n,), 0, w + 2 * padding - size[1] + 1)

    def one(image, r, c):
        return jax.lax.dynamic_slice(image, (r, c, 0), (size[0], size[1], image.shape[-1]))

    images = jax.vmap(one)(images, rows, cols)
    if flip:
        flips = jax.random.bernoulli(k_flip, 0.5, (n,))
        images = jnp.where(flips[:, None, None, None], images[:, :, ::-1], images)
    return device_normalize(images, mean, std)
