"""Flax NNX layers: the :mod:`cnnjax.layers` modules for users of ``flax.nnx``, derived from them.

Each class here is made by :func:`derive` from its Linen namesake: it holds that Linen layer and
its variables (:class:`cnnjax.bridge.LinenModule`), and a call is the Linen layer's ``apply``.
So the arguments, defaults, parameter names, shapes, initialisers and the computation (the same
:mod:`cnnjax.ops` call, ``impl``, ``precision``, ``dtype``) are the Linen layer's by
construction. NNX creates parameters eagerly, so a layer with parameters takes what Linen infers
from the first input as a leading argument, as :class:`flax.nnx.Conv` does: ``in_features`` (the
input channels; :class:`BatchNorm`: ``num_features``; :class:`ConnectionTableConv`: none, its
table fixes them), and ``rngs`` (a :class:`flax.nnx.Rngs`; parameters are drawn from its
``params`` stream). Layers without parameters take exactly the Linen arguments. The Linen
arguments read back as attributes (``layer.stride``).

Example::

    >>>     >>> import jax.numpy as jnp
    >>> layer = Conv(1, 8, (3, 3), padding=1, rngs=nnx.Rngs(0))
    >>> layer.kernel.shape
    (3, 3, 1, 8)
    >>> layer(jnp.zeros((2, 28, 28, 1))).shape
    (2, 28, 28, 8)
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax import layers as linen_layers
from cnnjax.bridge import LinenModule
from cnnjax.layers import check_input_size, he_normal, lecun1998_uniform

__all__ = [
    "AdaptiveAvgPool",
    "AvgPool",
    "BatchNorm",
    "ConnectionTableConv",
    "Conv",
    "ConvTranspose",
    "DepthwiseConv",
    "LocalContrastNorm",
    "LocalResponseNorm",
    "LpPool",
    "MaxPool",
    "SeparableConv",
    "TrainableSubsampling",
    "check_input_size",
    "derive",
    "he_normal",
    "lecun1998_uniform",
]

#: ``sample(module, **leading) -> array``: an input from which ``module.init`` creates the
#: parameters (only its channels matter; its spatial size only has to be valid for the op).
Sample = Callable[..., jax.Array]


def _linen_fields(linen_cls: type[nn.Module]) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(linen_cls) if f.init and f.name not in ("parent", "name")]


def _signature(linen_cls, leading, parameters: bool, defaults: dict) -> inspect.Signature:
    """``(self, *leading, *linen_fields, *, rngs)``: the NNX constructor's signature."""
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter("self", kind)]
    params += [inspect.Parameter(name, kind) for name in leading]
    fields = _linen_fields(linen_cls)
    # Keyword-only Linen fields (the plumbing every layer declares once: impl, precision, dtype)
    # stay keyword-only here, after the positional ones, as Python requires.
    for f in sorted(fields, key=lambda f: bool(f.kw_only)):
        default = f.default if f.default is not dataclasses.MISSING else inspect.Parameter.empty
        f_kind = inspect.Parameter.KEYWORD_ONLY if f.kw_only else kind
        params.append(inspect.Parameter(f.name, f_kind, default=defaults.get(f.name, default)))
    if parameters:
        params.append(inspect.Parameter("rngs", inspect.Parameter.KEYWORD_ONLY))
    return inspect.Signature(params)


class _Derived(LinenModule):
    """Base of the derived layers: binds the NNX constructor's arguments, builds the Linen layer
    (list arguments as tuples: NNX hashes it), and initialises it on ``_sample``."""

    _LINEN: type[nn.Module]
    _LEADING: tuple[str, ...] = ()
    _SAMPLE: Sample | None = None
    _INIT_KWARGS: ClassVar[dict[str, Any]] = {}
    _SIGNATURE: inspect.Signature

    def __init__(self, *args: Any, **kwargs: Any):
        bound = self._SIGNATURE.bind(self, *args, **kwargs).arguments
        bound.pop("self")
        rngs = bound.pop("rngs", None)
        leading = {name: bound.pop(name) for name in self._LEADING}
        module = self._LINEN(**self._linen_kwargs(bound))
        sample = () if self._SAMPLE is None else (type(self)._SAMPLE(module, **leading),)
        super().__init__(module, *sample, rngs=rngs, **self._INIT_KWARGS)
        for name, value in leading.items():
            setattr(self, name, value)

    def _linen_kwargs(self, bound: dict[str, Any]) -> dict[str, Any]:
        return bound

    def __getattr__(self, name: str) -> Any:
        # The Linen layer's arguments (stride, window, impl, …) read as this layer's attributes.
        module = vars(self).get("module")
        if module is not None and name in {f.name for f in _linen_fields(type(module))}:
            return getattr(module, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.apply(x)


def derive(
    linen_cls: type[nn.Module],
    *,
    leading: tuple[str, ...] = (),
    sample: Sample | None = None,
    init_kwargs: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
    base: type[_Derived] = _Derived,
) -> type[LinenModule]:
    """The NNX class of the Linen layer ``linen_cls``, named and documented after it.

    Its constructor is ``(*leading, *linen_fields, rngs=)``: ``leading`` are what NNX must know
    before seeing data, ``sample(module, **leading)`` makes the input on which ``module.init``
    (with ``init_kwargs``) creates the parameters; ``rngs`` only where ``sample`` is given (the
    layer has parameters). ``defaults`` replace Linen defaults in the signature (where ``base``
    handles a field itself); ``base`` may add a mode (:class:`BatchNorm`).
    """
    signature = _signature(linen_cls, leading, sample is not None, defaults or {})
    doc = (
        f"NNX face of :class:`cnnjax.layers.{linen_cls.__name__}` (derived from it: same "
        f"arguments, variables and computation).\n\n{inspect.getdoc(linen_cls) or ''}"
    )
    namespace = {
        "_LINEN": linen_cls,
        "_LEADING": leading,
        "_SAMPLE": sample,
        "_INIT_KWARGS": init_kwargs or {},
        "_SIGNATURE": signature,
        "__doc__": doc,
        "__module__": __name__,
        "__qualname__": linen_cls.__name__,
    }
    cls = type(linen_cls.__name__, (base,), namespace)
    cls.__signature__ = signature.replace(parameters=list(signature.parameters.values())[1:])
    return cls


def _as_tuple(value: Any, ndim: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, Sequence) else (value,) * ndim


def _conv_sample(module: nn.Module, in_features: int) -> jax.Array:
    """``(1, *spatial, in_features)`` with every spatial side ``3 * (d * k + largest padding)``:
    valid for a convolution and a transposed one whatever the stride (a wrong ``kernel_size``
    is left for the Linen layer to report)."""
    kernel = module.kernel_size if isinstance(module.kernel_size, Sequence) else (1, 1)
    dilation = _as_tuple(getattr(module, "dilation", 1), len(kernel))
    padding = jax.tree.leaves(module.padding)
    pad = max([p for p in padding if isinstance(p, int)], default=0)
    spatial = [3 * (d * k + pad) for k, d in zip(kernel, dilation, strict=False)]
    return jnp.zeros((1, *spatial, in_features), jnp.float32)


def _table_sample(module: nn.Module) -> jax.Array:
    return _conv_sample(module, len(module.table))


def _subsampling_sample(module: nn.Module, in_features: int) -> jax.Array:
    return jnp.zeros((1, *_as_tuple(module.window, 2), in_features), jnp.float32)


def _batch_norm_sample(module: nn.Module, num_features: int) -> jax.Array:
    axis = module.axis if isinstance(module.axis, int) else -1
    shape = [2] * max(2, axis + 1 if axis >= 0 else -axis)
    shape[axis] = num_features
    return jnp.ones(shape, jnp.float32)


Conv = derive(linen_layers.Conv, leading=("in_features",), sample=_conv_sample)
ConvTranspose = derive(linen_layers.ConvTranspose, leading=("in_features",), sample=_conv_sample)
DepthwiseConv = derive(linen_layers.DepthwiseConv, leading=("in_features",), sample=_conv_sample)
SeparableConv = derive(linen_layers.SeparableConv, leading=("in_features",), sample=_conv_sample)
ConnectionTableConv = derive(linen_layers.ConnectionTableConv, sample=_table_sample)
TrainableSubsampling = derive(
    linen_layers.TrainableSubsampling, leading=("in_features",), sample=_subsampling_sample
)
MaxPool = derive(linen_layers.MaxPool)
AvgPool = derive(linen_layers.AvgPool)
LpPool = derive(linen_layers.LpPool)
AdaptiveAvgPool = derive(linen_layers.AdaptiveAvgPool)
LocalResponseNorm = derive(linen_layers.LocalResponseNorm)
LocalContrastNorm = derive(linen_layers.LocalContrastNorm)


class _BatchNormMode(_Derived):
    """Batch norm's mode as NNX keeps it: the attribute ``use_running_average`` (set by
    ``model.train()`` / ``model.eval()``; default ``False``, training, as
    :class:`flax.nnx.BatchNorm`), overridden by the call argument. In training the batch
    statistics are written back (the running averages replace the stored arrays, as Linen's)."""

    def _linen_kwargs(self, bound: dict[str, Any]) -> dict[str, Any]:
        self.use_running_average = bound.pop("use_running_average", False)
        return bound

    def __call__(self, x: jax.Array, use_running_average: bool | None = None, **kwargs: Any):
        running = self.use_running_average if use_running_average is None else use_running_average
        if running is None:
            raise ValueError("BatchNorm: pass use_running_average, or call model.train() / eval()")
        return self.apply(x, use_running_average=running, training=not running, **kwargs)


BatchNorm = derive(
    linen_layers.BatchNorm,
    leading=("num_features",),
    sample=_batch_norm_sample,
    init_kwargs={"use_running_average": True},
    defaults={"use_running_average": False},
    base=_BatchNormMode,
)
