# ruff: noqa: E501 - the command lines below are kept whole so they can be copied
"""The same LeNet-5 / MNIST run with the hand-derived custom VJPs and with XLA's autodiff.

Commands (CPU-friendly: a few minutes each), then one plot with both curves:
    cnnjax train lenet5 --config experiments/configs/custom_vs_xla.py:custom --workdir runs/lenet5_custom
    cnnjax train lenet5 --config experiments/configs/custom_vs_xla.py:xla --workdir runs/lenet5_xla
    cnnjax plot runs/lenet5_custom runs/lenet5_xla --output runs/custom_vs_xla.png

Expected: the two curves coincide (same seed, same data order; the custom and XLA gradients
agree to float32 round-off, so the runs drift apart only at that level) and both end near
LeNet-5's 0.95 % error (LeCun et al. 1998) after enough epochs; speed differences show in
images_per_sec of metrics.jsonl.
"""

import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location(
    "_lenet5_mnist", pathlib.Path(__file__).with_name("lenet5_mnist.py")
)
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)


def get_config(impl: str = "custom"):
    if impl not in ("custom", "xla"):
        raise ValueError(f'impl must be "custom" or "xla", got {impl!r}')
    c = _base.get_config()
    c.impl = impl
    c.epochs = 5
    return c
