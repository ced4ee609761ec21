"""The model registry: ``@register_model`` on a family's constructors, ``create_model`` by name.

Each entry records what a user (and the test-suite) needs to run the model without reading its
source: the paper, the input shape the paper used, the smallest input the architecture accepts,
and a small input used by tests to keep CI fast.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable

import flax.linen as nn

__all__ = ["ModelInfo", "create_model", "get_model_info", "list_models", "register_model"]


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one model name.

    ``input_shape`` is the paper's ``(H, W, C)``; ``min_input_size`` the smallest ``H == W`` that
    runs; ``test_input_shape`` a small shape the tests use; ``default_num_classes`` the paper's.
    """

    name: str
    constructor: Callable[..., nn.Module]
    paper: str
    input_shape: tuple[int, int, int]
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
    """The :class:`ModelInfo` of ``name``; an unknown name raises listing the valid ones."""
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
    impl: str = "custom",
    dtype=None,
    **overrides,
) -> nn.Module:
    """Build a registered model: ``create_model("resnet18", num_classes=10, impl="xla")``.

    ``impl`` is threaded to every ``cnnjax.ops`` call inside the model; ``dtype`` is the compute
    dtype (parameters stay float32); ``overrides`` go to the family's constructor.
    """
    info = get_model_info(name)
    if impl not in ("custom", "xla"):
        raise ValueError(f'impl must be "custom" or "xla", got {impl!r}')
    num_classes = info.default_num_classes if num_classes is None else num_classes
    return info.constructor(num_classes=num_classes, impl=impl, dtype=dtype, **overrides)
