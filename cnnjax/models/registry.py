"""The model registry: ``@register_model`` on a family's constructors, ``create_model`` by name.

Each entry records what a user (and the test-suite) needs to run the model without reading its
source: the paper, the input shape the paper used, the smallest input the architecture accepts,
and a small input used by tests to keep CI fast.

A name of the form ``module:attr`` or ``path/to/file.py:attr`` is not looked up in the registry:
it names your own model factory (a Linen module class or a function returning a module, a module
instance, or an object with pure ``init``/``apply`` functions, see
:mod:`cnnjax.models.functional`), which ``train``, ``eval`` (from the run's saved config) and
``summary`` resolve the same way; see :func:`get_model_info`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import importlib.util
import inspect
import pathlib
import sys
from collections.abc import Callable

import flax.linen as nn
import numpy as np

from cnnjax.layers import Impl
from cnnjax.models.functional import FunctionalModel
from cnnjax.ops._common import canonicalize_precision

__all__ = ["ModelInfo", "create_model", "get_model_info", "list_models", "register_model"]


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one model name.

    ``input_shape`` is the paper's ``(H, W, C)`` (``None`` for a ``module:attr`` model that
    declares no ``input_shape`` attribute); ``min_input_size`` the smallest ``H == W`` that
    runs; ``test_input_shape`` a small shape the tests use; ``default_num_classes`` the paper's.
    """

    name: str
    constructor: Callable[..., nn.Module]
    paper: str
    input_shape: tuple[int, int, int] | None
    min_input_size: int
    test_input_shape: tuple[int, int, int]
    default_num_classes: int = 1000
    task: str = "classification"  # or "segmentation": logits (N, H', W', classes)


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str,
    *,
    paper: str,
    input_shape: tuple[int, int, int],
    min_input_size: int,
    test_input_shape: tuple[int, int, int] | None = None,
    default_num_classes: int = 1000,
    task: str = "classification",
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register ``constructor(num_classes=..., impl=..., dtype=..., **overrides) -> nn.Module``.

    Works as a decorator on a function, or called directly on a ``functools.partial``:
    ``register_model("resnet18", ...)(partial(ResNet, stage_sizes=(2, 2, 2, 2), ...))``.
    """

    def decorator(constructor: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelInfo(
            name=name,
            constructor=constructor,
            paper=paper,
            input_shape=input_shape,
            min_input_size=min_input_size,
            test_input_shape=test_input_shape or input_shape,
            default_num_classes=default_num_classes,
            task=task,
        )
        return constructor

    return decorator


def list_models(pattern: str | None = None, *, task: str | None = "classification") -> list[str]:
    """Sorted registered names, optionally filtered by a substring ``pattern``; only models of
    ``task`` (``"classification"`` by default, ``"segmentation"``, or ``None`` for all)."""
    return sorted(
        n
        for n, info in _REGISTRY.items()
        if (pattern is None or pattern in n) and (task is None or info.task == task)
    )


def get_model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of ``name``; an unknown name raises listing the valid ones.

    ``name`` may also be ``module:attr`` (an importable module, the current directory first) or
    ``path/to/file.py:attr``: ``attr`` is a Linen module class or a function returning a module,
    called with ``num_classes=`` and, when it accepts them, ``impl=`` and ``dtype=``; or a module
    instance; or an object with pure ``init(key, input_shape)`` / ``apply(params, x)``
    functions, wrapped in :class:`~cnnjax.models.functional.FunctionalModel`. An optional
    ``input_shape = (H, W, C)`` attribute on it is the default input of ``cnnjax summary``.
    """
    if ":" in name:
        return _external_info(name)
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}.{hint} Valid names: {', '.join(list_models(task=None))}"
        )
    return _REGISTRY[name]


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    impl: Impl = "custom",
    dtype=None,
    precision=None,
    api: str = "linen",
    rngs=None,
    input_shape: tuple[int, int, int] | None = None,
    **overrides,
) -> nn.Module:
    """Build a registered model: ``create_model("resnet18", num_classes=10, impl="xla")``.

    ``impl`` is threaded to every ``cnnjax.ops`` call inside the model; ``dtype`` is the compute
    dtype (parameters stay float32); ``precision`` (``None`` = backend default, ``"default"``,
    ``"high"``, ``"highest"`` or a ``jax.lax.Precision``) goes to every convolution (forward and
    backward) and dense layer; ``overrides`` go to the family's constructor.

    ``api="nnx"`` returns the same module as a Flax NNX module with initialised parameters
    instead (:class:`cnnjax.bridge.LinenModel`, see ``docs/nnx.md``): ``rngs`` (default
    ``nnx.Rngs(0)``) draws them, ``input_shape`` ``(H, W, C)`` (default the paper's) fixes the
    input channels and dense fan-ins.
    """
    info = get_model_info(name)
    if impl not in ("custom", "xla"):
        raise ValueError(f'impl must be "custom" or "xla", got {impl!r}')
    precision = canonicalize_precision(precision, op=f"create_model({name!r})")
    if api not in ("linen", "nnx"):
        raise ValueError(f'api must be "linen" or "nnx", got {api!r}')
    if api == "linen" and (rngs is not None or input_shape is not None):
        raise ValueError('rngs and input_shape are arguments of api="nnx" models only')
    num_classes = info.default_num_classes if num_classes is None else num_classes
    module = info.constructor(
        num_classes=num_classes, impl=impl, dtype=dtype, precision=precision, **overrides
    )
    if api == "linen":
        return module
    # The NNX face is derived from the Linen module (cnnjax.bridge, which imports only Flax);
    # imported here so that Linen users need not load NNX.
    from flax import nnx

    from cnnjax.bridge import LinenModel

    input_shape = info.input_shape if input_shape is None else tuple(input_shape)
    if input_shape is None or len(input_shape) != 3:
        raise ValueError(f"input_shape must be (H, W, C), got {input_shape}")
    rngs = nnx.Rngs(0) if rngs is None else rngs
    return LinenModel(module, input_shape=input_shape, rngs=rngs)


def _external_info(name: str) -> ModelInfo:
    """Resolve ``module:attr`` / ``file.py:attr`` to a :class:`ModelInfo` (not registered)."""
    module_name, _, attr = name.rpartition(":")
    if not module_name or not attr:
        raise ValueError(f"model {name!r}: expected module:attr or path/to/file.py:attr")
    module = _import_user_module(module_name, name)
    target = getattr(module, attr, None)
    factory = _as_factory(target)
    if factory is None:
        raise ValueError(
            f"model {name!r}: module {module_name!r} has no callable {attr!r} (a model class, a "
            "function returning a model, a model, or an object with init and apply functions)"
        )
    shape = getattr(target, "input_shape", None)
    shape = tuple(shape) if isinstance(shape, tuple | list) else None
    return ModelInfo(
        name=name,
        constructor=_adapt_factory(factory, name),
        paper=f"your model ({name})",
        input_shape=shape,
        min_input_size=1,
        test_input_shape=shape or (32, 32, 3),
        default_num_classes=getattr(target, "default_num_classes", 10),
    )


def _as_factory(target) -> Callable[..., nn.Module] | None:
    """A model factory for what ``module:attr`` names (``None`` if it names no model).

    * a Linen module class, or a function returning a module: itself;
    * a module instance (e.g. ``FunctionalModel(init, apply)``): returned as it is;
    * an object with ``init(key, input_shape[, num_classes])`` and ``apply(params, x)``
      functions (e.g. a Python module of them): wrapped in :class:`FunctionalModel`.
    """
    if isinstance(target, nn.Module):
        return lambda num_classes=None: target
    init, apply = getattr(target, "init", None), getattr(target, "apply", None)
    if not isinstance(target, type) and callable(init) and callable(apply):

        def functional(num_classes=None):
            if num_classes is not None and _accepts(init, "num_classes"):
                return FunctionalModel(functools.partial(init, num_classes=num_classes), apply)
            return FunctionalModel(init, apply)

        return functional
    return target if callable(target) else None


def _accepts(fn: Callable, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return False


def _import_user_module(module_name: str, name: str):
    if module_name.endswith(".py"):
        path = pathlib.Path(module_name)
        if not path.is_file():
            raise ValueError(f"model {name!r}: file {str(path)!r} does not exist")
        spec = importlib.util.spec_from_file_location(f"_cnnjax_user_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    # The console script's sys.path starts at its own folder: add the working directory, as
    # `python -m` would, so that `mynet:MyNet` finds ./mynet.py.
    if "" not in sys.path and str(pathlib.Path.cwd()) not in sys.path:
        sys.path.insert(0, str(pathlib.Path.cwd()))
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ValueError(f"model {name!r}: cannot import {module_name!r} ({e})") from e


def _adapt_factory(factory: Callable[..., nn.Module], name: str) -> Callable[..., nn.Module]:
    """Call ``factory`` with ``num_classes`` and, if it takes them, ``impl`` and ``dtype``."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        parameters = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())

    def constructor(*, num_classes, impl="custom", dtype=None, precision=None, **overrides):
        kwargs = dict(num_classes=num_classes, **overrides)
        for key, value, is_default in (
            ("impl", impl, impl == "custom"),
            ("dtype", dtype, dtype is None or np.dtype(dtype) == np.float32),
            ("precision", precision, precision is None),
        ):
            if takes_any or key in parameters:
                kwargs[key] = value
            elif not is_default:
                raise ValueError(f"model {name!r} takes no {key!r} argument, got {key}={value!r}")
        model = factory(**kwargs)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model {name!r} returned {type(model).__name__}, not a Linen Module")
        return model

    return constructor
