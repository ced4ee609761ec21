"""Data: sources (digits, TFDS, npz, folder, synthetic) → batches → devices.

``load_dataset(name)`` opens a :class:`Dataset` of two random-access splits; ``batches(...)``
iterates one epoch with a deterministic order from ``(seed, epoch)`` and this process's share of
every global batch; augmentation is a set of pure functions (host NumPy or device JAX);
``prefetch_to_device`` keeps a couple of batches in flight on a background thread.

>>> ds = load_dataset("digits")                      # 1,347 / 450 real 8×8 digits at 32×32
>>> batch = next(batches(ds, batch_size=64, train=True, seed=0, epoch=0))
>>> batch["image"].shape, batch["image"].dtype, batch["label"].dtype
((64, 32, 32, 1), dtype('float32'), dtype('int32'))
"""

from cnnjax.data.augment import (
    center_crop,
    crop,
    device_crop_flip,
    device_normalize,
    flip_horizontal,
    normalize,
    sample_augment_params,
)
from cnnjax.data.classes import load_class_names, save_class_names
from cnnjax.data.pipeline import (
    AugmentConfig,
    batches,
    device_preprocess,
    in_memory,
    num_batches,
    prefetch_to_device,
)
from cnnjax.data.sources import (
    ArraySource,
    Dataset,
    FolderSource,
    Source,
    TFDSSource,
    check_labels,
    fit_images,
    list_datasets,
    load_dataset,
    stratified_split,
)

__all__ = [
    "ArraySource",
    "AugmentConfig",
    "Dataset",
    "FolderSource",
    "Source",
    "TFDSSource",
    "batches",
    "center_crop",
    "check_labels",
    "crop",
    "device_crop_flip",
    "device_normalize",
    "device_preprocess",
    "fit_images",
    "flip_horizontal",
    "in_memory",
    "list_datasets",
    "load_class_names",
    "load_dataset",
    "normalize",
    "num_batches",
    "prefetch_to_device",
    "sample_augment_params",
    "save_class_names",
    "stratified_split",
]
