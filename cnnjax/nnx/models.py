"""Every registered model as a Flax NNX module, derived from its Linen definition.

Use :func:`cnnjax.models.create_model` with ``api="nnx"``::

    >>> from flax import nnx
    >>> from cnnjax.models import create_model
    >>> model = create_model("lenet5", api="nnx", rngs=nnx.Rngs(0))
    >>> model.eval()  # BatchNorm running averages, no dropout; model.train() for the opposite
    >>> model(jnp.zeros((2, 32, 32, 1))).shape
    (2, 10)

Every model is a :class:`LinenModel` (:class:`cnnjax.bridge.LinenModel`): the Linen model and its
variables at their Linen paths (``model.conv1["kernel"]``), called through the Linen model's
``apply``, so it computes exactly what the Linen model does (``impl``, ``precision``, ``dtype``
included). An ordinary NNX module: ``nnx.Optimizer(model, tx, wrt=nnx.Param)``, ``nnx.jit``,
``nnx.grad``, ``nnx.state``; :mod:`cnnjax.nnx.convert` moves weights to and from Linen variables
and loads states saved by earlier cnnjax versions.

The class names of the earlier hand-written NNX models (:class:`LeNet5`, :class:`VGG`,
:class:`AllConvNet`, :class:`NiN`, :class:`AlexNet`, :class:`AlexNetTorchvision`,
:class:`ZFNet`) remain: each is :class:`LinenModel` of the Linen class of that name, taking the
Linen model's fields as keyword arguments plus ``input_shape`` (default the paper's) and
``rngs``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
from flax import nnx

from cnnjax import models as linen_models
from cnnjax.bridge import LinenModel

__all__ = [
    "VGG",
    "AlexNet",
    "AlexNetTorchvision",
    "AllConvNet",
    "LeNet5",
    "LinenModel",
    "NiN",
    "ZFNet",
    "from_linen_module",
]

Shape = tuple[int, int, int]


def from_linen_module(
    module: nn.Module, info: Any, *, rngs: nnx.Rngs, input_shape: Shape | None = None
) -> LinenModel:
    """The NNX model of the Linen ``module`` built by the registry entry ``info`` (a
    :class:`cnnjax.models.ModelInfo`; its ``input_shape`` is the default). Parameters are
    initialised afresh from ``rngs`` (load Linen weights with :func:`cnnjax.nnx.from_linen`)."""
    input_shape = info.input_shape if input_shape is None else tuple(input_shape)
    if input_shape is None or len(input_shape) != 3:
        raise ValueError(f"input_shape must be (H, W, C), got {input_shape}")
    return LinenModel(module, input_shape=input_shape, rngs=rngs)


def _named(linen_cls: type[nn.Module], paper_input_shape: Shape) -> type[LinenModel]:
    """``LinenModel`` of ``linen_cls(**fields)`` under ``linen_cls``'s name."""

    def __init__(self, *, input_shape: Shape = paper_input_shape, rngs: nnx.Rngs, **fields):
        LinenModel.__init__(self, linen_cls(**fields), input_shape=input_shape, rngs=rngs)

    doc = f"NNX face of :class:`cnnjax.models.{linen_cls.__name__}` (a :class:`LinenModel`)."
    namespace = {"__init__": __init__, "__doc__": doc, "__module__": __name__}
    return type(
        linen_cls.__name__, (LinenModel,), {**namespace, "__qualname__": linen_cls.__name__}
    )


LeNet5 = _named(linen_models.LeNet5, (32, 32, 1))
VGG = _named(linen_models.VGG, (224, 224, 3))
AllConvNet = _named(linen_models.AllConvNet, (32, 32, 3))
NiN = _named(linen_models.NiN, (32, 32, 3))
AlexNet = _named(linen_models.AlexNet, (227, 227, 3))
AlexNetTorchvision = _named(linen_models.AlexNetTorchvision, (224, 224, 3))
ZFNet = _named(linen_models.ZFNet, (224, 224, 3))
