"""Load PyTorch (torchvision-layout) ``state_dict`` s into cnnjax's Flax models.

:func:`from_torch_state_dict` maps every tensor of a torchvision ``state_dict`` to the matching
Flax variable of the same-named cnnjax model (``alexnet_torchvision``, ``vgg11``…``vgg19_bn``,
``resnet18``…``resnet152``, ``densenet121``…``densenet201``); with it a pretrained checkpoint
gives the same logits in JAX (to float32 rounding) on the same images, NHWC instead of NCHW.

The layout changes, per kind of tensor::

    conv weight    (O, I/groups, kH, kW)  ->  kernel (kH, kW, I/groups, O)   transpose(2, 3, 1, 0)
    linear weight  (out, in)              ->  kernel (in, out)                transpose
    BN weight/bias                        ->  params scale/bias
    BN running_mean/running_var           ->  batch_stats mean/var
    num_batches_tracked                   ->  dropped

and one subtle one: the first dense layer after a flatten. PyTorch flattens ``(C, H, W)``
(channels slowest), cnnjax flattens ``(H, W, C)`` (channels fastest), so that layer's input
dimension is permuted: ``w.reshape(out, C, H, W).transpose(2, 3, 1, 0).reshape(H*W*C, out)``.
(ResNet and DenseNet pool globally first, so only AlexNet and VGG need it.)

Tensors may be ``torch.Tensor`` s or NumPy arrays; torch is never imported here.

>>> import torchvision                                              # doctest: +SKIP
>>> state = torchvision.models.resnet50(weights="DEFAULT").state_dict()  # doctest: +SKIP
>>> variables = from_torch_state_dict("resnet50", state)            # doctest: +SKIP
>>> logits = create_model("resnet50").apply(variables, images_nhwc, train=False)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["SUPPORTED_MODELS", "from_torch_state_dict"]

_VGG_CONFIG_OF_DEPTH = {"11": "A", "13": "B", "16": "D", "19": "E"}


@dataclasses.dataclass(frozen=True)
class _Family:
    """How one model's torch module names map to cnnjax's.

    ``rename``: torch module path (``"layer1.0.conv1"``) -> Flax module path, or ``None`` for a
    module cnnjax does not have. ``classifier``: the torch module of the last linear layer (its
    ``out_features`` is ``num_classes``). ``flatten``: the torch module of the first linear layer
    after a flatten, and the ``(H, W)`` of the map it flattens.
    """

    rename: Callable[[str], tuple[str, ...] | None]
    classifier: str
    flatten: tuple[str, tuple[int, int]] | None = None


def from_torch_state_dict(
    name: str, state_dict: Mapping[str, Any], *, check: bool = True, **model_kwargs: Any
) -> dict[str, dict]:
    """Flax variables ``{"params": ..., "batch_stats": ...}`` for model ``name`` from a torchvision
    ``state_dict``.

    Args:
      name: one of :data:`SUPPORTED_MODELS` (the cnnjax registry name, which is also the
        torchvision constructor's name; ``alexnet_torchvision`` is torchvision's ``alexnet``).
      state_dict: ``{key: tensor}`` with torchvision's keys; values ``torch.Tensor`` (any
        device) or array-likes. Old DenseNet keys (``denselayer1.norm.1.weight``) are accepted.
      check: build ``create_model(name, num_classes=<from the classifier>, **model_kwargs)``
        (shapes only, no allocation) and require the converted tree to match it exactly:
        a missing, unexpected or misshapen tensor raises a ``ValueError`` naming it.
      model_kwargs: overrides the torch module was built with (e.g. ``head_width=64`` for a
        slimmed VGG/AlexNet head), used by ``check``.

    Returns:
      ``{"params": ..., "batch_stats": ...}`` of ``jax.Array`` s (``batch_stats`` only when the
      model has BatchNorm), ready for ``model.apply(variables, x_nhwc, train=False)``.
    """
    family = _family(name)
    params: dict = {}
    stats: dict = {}
    unexpected = []
    num_classes = None
    for key, value in state_dict.items():
        module, _, leaf = _fix_old_densenet_key(key).rpartition(".")
        if leaf == "num_batches_tracked":
            continue
        path = family.rename(module)
        if path is None or leaf not in ("weight", "bias", "running_mean", "running_var"):
            unexpected.append(key)
            continue
        array = _to_numpy(value)
        if leaf == "weight" and array.ndim == 4:
            target, array = (params, "kernel"), array.transpose(2, 3, 1, 0)
        elif leaf == "weight" and array.ndim == 2:
            if family.flatten is not None and module == family.flatten[0]:
                array = _unflatten_chw(array, family.flatten[1], key)
            target, array = (params, "kernel"), array.T
            if module == family.classifier:
                num_classes = array.shape[1]
        elif leaf == "weight" and array.ndim == 1:
            target = (params, "scale")
        elif leaf == "bias":
            target = (params, "bias")
        elif leaf in ("running_mean", "running_var"):
            target = (stats, "mean" if leaf == "running_mean" else "var")
        else:
            unexpected.append(key)
            continue
        collection, leaf_name = target
        node = collection
        for part in path:
            node = node.setdefault(part, {})
        node[leaf_name] = jnp.asarray(np.ascontiguousarray(array))
    if unexpected:
        raise ValueError(
            f"from_torch_state_dict({name!r}): keys with no cnnjax counterpart: "
            f"{', '.join(unexpected[:10])}{' …' if len(unexpected) > 10 else ''}"
        )
    variables = {"params": params}
    if stats:
        variables["batch_stats"] = stats
    if check:
        _check_against_model(name, variables, num_classes, model_kwargs)
    return variables


def _family(name: str) -> _Family:
    if name == "alexnet_torchvision":
        return _Family(_alexnet_rename, classifier="classifier.6", flatten=("classifier.1", (6, 6)))
    match = re.fullmatch(r"vgg(11|13|16|19)(_bn)?", name)
    if match:
        return _Family(
            _vgg_rename(_VGG_CONFIG_OF_DEPTH[match.group(1)], bool(match.group(2))),
            classifier="classifier.6",
            flatten=("classifier.0", (7, 7)),
        )
    if re.fullmatch(r"resnet(18|34|50|101|152)", name):
        return _Family(_resnet_rename, classifier="fc")
    if re.fullmatch(r"densenet(121|169|201|264)", name):
        return _Family(_densenet_rename, classifier="classifier")
    raise ValueError(
        f"from_torch_state_dict: no torchvision mapping for {name!r}; "
        f"supported: {', '.join(SUPPORTED_MODELS)}"
    )


#: The registry names :func:`from_torch_state_dict` knows how to fill.
SUPPORTED_MODELS: tuple[str, ...] = (
    "alexnet_torchvision",
    *(f"vgg{d}{bn}" for d in ("11", "13", "16", "19") for bn in ("", "_bn")),
    *(f"resnet{d}" for d in (18, 34, 50, 101, 152)),
    *(f"densenet{d}" for d in (121, 169, 201, 264)),
)


# --------------------------------------------------------------------------------------------
# Per-family module names
# --------------------------------------------------------------------------------------------

_ALEXNET = {
    "features.0": "conv1",
    "features.3": "conv2",
    "features.6": "conv3",
    "features.8": "conv4",
    "features.10": "conv5",
    "classifier.1": "fc6",
    "classifier.4": "fc7",
    "classifier.6": "fc8",
}


def _alexnet_rename(module: str) -> tuple[str, ...] | None:
    flax_name = _ALEXNET.get(module)
    return (flax_name,) if flax_name else None


def _vgg_rename(config: str, batch_norm: bool) -> Callable[[str], tuple[str, ...] | None]:
    """torchvision's ``features`` is one Sequential: conv[, bn], relu per conv, one index per
    pool; cnnjax names ``conv{i}``/``bn{i}`` by the position ``i`` in the config."""
    from cnnjax.models.vgg import VGG_CONFIGS

    table = {"classifier.0": "fc1", "classifier.3": "fc2", "classifier.6": "fc3"}
    index = 0
    for i, item in enumerate(VGG_CONFIGS[config]):
        if item == "M":
            index += 1
            continue
        table[f"features.{index}"] = f"conv{i}"
        if batch_norm:
            table[f"features.{index + 1}"] = f"bn{i}"
        index += 3 if batch_norm else 2

    def rename(module: str) -> tuple[str, ...] | None:
        flax_name = table.get(module)
        return (flax_name,) if flax_name else None

    return rename


def _resnet_rename(module: str) -> tuple[str, ...] | None:
    if module in ("conv1", "bn1", "fc"):
        return (module,)
    match = re.fullmatch(r"layer(\d)\.(\d+)\.(conv\d|bn\d|downsample\.0|downsample\.1)", module)
    if not match:
        return None
    stage, block, inner = match.groups()
    inner = {"downsample.0": "downsample_conv", "downsample.1": "downsample_bn"}.get(inner, inner)
    return (f"layer{stage}_{block}", inner)


def _densenet_rename(module: str) -> tuple[str, ...] | None:
    if module == "classifier":
        return (module,)
    match = re.fullmatch(r"features\.(conv0|norm0|norm5)", module)
    if match:
        return (match.group(1),)
    match = re.fullmatch(
        r"features\.(denseblock\d)\.(denselayer\d+)\.(norm1|conv1|norm2|conv2)", module
    )
    if match:
        block, layer, inner = match.groups()
        return (block, f"{layer}_{inner}")
    match = re.fullmatch(r"features\.(transition\d)\.(norm|conv)", module)
    if match:
        return match.groups()
    return None


def _fix_old_densenet_key(key: str) -> str:
    """Pre-0.4 torchvision DenseNet checkpoints name ``norm.1`` what is now ``norm1``."""
    return re.sub(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.", r"\1\2.", key)


# --------------------------------------------------------------------------------------------
# Arrays
# --------------------------------------------------------------------------------------------


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch.Tensor, without importing torch
        value = value.detach().cpu()
    return np.asarray(value)


def _unflatten_chw(weight: np.ndarray, spatial: tuple[int, int], key: str) -> np.ndarray:
    """Permute a ``(out, C*H*W)`` torch weight to ``(out, H*W*C)`` (cnnjax's flatten order)."""
    out_features, in_features = weight.shape
    h, w = spatial
    if in_features % (h * w):
        raise ValueError(
            f"{key}: in_features {in_features} is not a multiple of the flattened {h}×{w} map"
        )
    channels = in_features // (h * w)
    return (
        weight.reshape(out_features, channels, h, w)
        .transpose(0, 2, 3, 1)
        .reshape(out_features, in_features)
    )


def _check_against_model(
    name: str, variables: dict, num_classes: int | None, model_kwargs: dict
) -> None:
    from cnnjax.models import create_model, get_model_info

    kwargs = dict(model_kwargs)
    if num_classes is not None:
        kwargs.setdefault("num_classes", num_classes)
    model = create_model(name, **kwargs)
    shape = (1, *get_model_info(name).input_shape)
    expected = jax.eval_shape(
        lambda x: model.init(jax.random.key(0), x, train=False),
        jax.ShapeDtypeStruct(shape, jnp.float32),
    )
    want = _flat_shapes(expected)
    got = _flat_shapes(variables)
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    if missing or extra or wrong:
        lines = [f"from_torch_state_dict({name!r}): the state_dict does not fit the model"]
        lines += [f"  missing {k} {want[k]}" for k in missing[:10]]
        lines += [f"  unexpected {k} {got[k]}" for k in extra[:10]]
        lines += [f"  shape of {k}: model {want[k]}, state_dict {got[k]}" for k in wrong[:10]]
        if wrong or missing:
            lines.append("  (was the torch module built with other overrides, e.g. head_width?)")
        raise ValueError("\n".join(lines))


def _flat_shapes(tree: dict) -> dict[str, tuple[int, ...]]:
    return {
        "/".join(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }
