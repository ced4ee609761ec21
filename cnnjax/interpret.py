"""Looking inside a trained CNN: feature maps, deconvnet projections, effective receptive fields.

The computations behind ``cnnjax viz`` (drawing is in :mod:`cnnjax.viz`):

* :func:`layer_output` / :func:`feature_maps`: the output of any module (by its summary path,
  e.g. ``"conv1"`` or ``"layer2_0"``), via Flax's ``capture_intermediates``.
* :func:`deconvnet`: Zeiler & Fergus (2014)'s projection of one activation back to pixel space.
  Their deconvnet reverses each layer: a max pool is undone by *unpooling with the switches*
  recorded on the way up (:func:`cnnjax.ops.max_unpool`), a ReLU by a ReLU on the
  reconstruction, a convolution by the *transposed filters* (:func:`cnnjax.ops.conv_transpose`).
  These are exactly the backward rules of cnnjax's ops (max pooling routes the gradient through
  its switches; a conv's input gradient is the transposed conv with the same filters), except
  ReLU's, which in backprop masks by the forward input (``g * [x > 0]``) and in the deconvnet
  rectifies the signal (``max(g, 0)``). So the deconvnet is the vector-Jacobian product of the
  model's jaxpr re-evaluated with every ReLU swapped for one with the deconvnet backward rule
  (Springenberg et al. 2015 make the same observation). Everything else (BatchNorm in inference
  mode, residual adds, average pooling, tanh) keeps its ordinary transpose; for models without
  max pooling (the CIFAR ResNets, LeNet-5's subsampling) the "unpooling" is the adjoint of the
  strided conv or of the average pool.
* :func:`effective_receptive_field`: ``|d y_unit / d x|`` (Luo et al. 2016), averaged over
  inputs, with the theoretical field from the jaxpr rules (:mod:`cnnjax.receptive_fields`).
"""

from __future__ import annotations

import dataclasses
import inspect
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "LoadedRun",
    "deconvnet",
    "effective_receptive_field",
    "feature_maps",
    "layer_output",
    "load_run",
    "spatial_layers",
]


@dataclasses.dataclass
class LoadedRun:
    """A trained run: model, variables, the normalised test images' source and the input shape."""

    name: str
    model: nn.Module
    variables: dict
    input_shape: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    images: Callable[[int], np.ndarray]  # index -> normalised (H, W, C) test image
    num_test: int


def load_run(
    workdir: str | pathlib.Path,
    step: int | None = None,
    checkpoint: str = "latest",
    *,
    data: bool = True,
) -> LoadedRun:
    """Restore ``workdir``'s checkpoint (latest or ``step``; ``checkpoint="best"``: from
    ``WORKDIR/checkpoints_best``) and its data set's test split.

    ``data=False`` loads no data (drawing weights needs none): shapes come from the run record
    in ``config.json``; ``images`` then raises and ``num_test`` is 0."""
    from cnnjax.data.augment import normalize
    from cnnjax.train.checkpoint import Checkpointer, checkpoint_directory
    from cnnjax.train.loop import build_run, load_workdir_config

    workdir = pathlib.Path(workdir)
    config = load_workdir_config(workdir, data=data)
    config.parallel = "none"
    config.resume = True
    run = build_run(config, dataset=None if data else _recorded_dataset(workdir, config))
    directory = checkpoint_directory(workdir, checkpoint)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} does not exist: train the run first")
    checkpointer = Checkpointer(directory, keep=config.checkpoint.keep)
    try:  # damaged checkpoints are reported and left in place (drawing moves no files)
        state, _ = checkpointer.restore(run.initial_state(), step, quarantine=False)
    finally:
        checkpointer.close()
    params = state.ema_params if config.optimizer.ema_decay is not None else state.params
    variables = {"params": params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    dataset = run.dataset
    shape = tuple(run.input_shape)

    def image(index: int) -> np.ndarray:
        if not data:
            raise ValueError("load_run(data=False) loaded no test images")
        if not 0 <= index < len(dataset.test):
            raise ValueError(f"--index must be in [0, {len(dataset.test)}), got {index}")
        raw, _ = dataset.test.get(np.array([index]))
        return normalize(_center(raw, shape), dataset.mean, dataset.std)[0]

    return LoadedRun(
        name=config.model,
        model=run.model,
        variables=variables,
        input_shape=shape,
        mean=tuple(dataset.mean),
        std=tuple(dataset.std),
        images=image,
        num_test=len(dataset.test),
    )


class _NoImages:
    """A split of ``n`` examples whose images were not loaded (``load_run(data=False)``)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def get(self, indices):
        raise ValueError("this run was loaded without its data (load_run(data=False))")


def _recorded_dataset(workdir: pathlib.Path, config):
    """A data-free stand-in for the run's data set, from ``config.json``'s run record."""
    import json

    from cnnjax.data import Dataset

    record = json.loads((workdir / "config.json").read_text()).get("run_record", {})
    derived = record.get("derived") or {}
    if not {"input_shape", "num_classes", "train_examples"} <= derived.keys():
        return None  # an old run without a record: load the data after all
    shape = tuple(derived["input_shape"])
    channels = shape[2]
    return Dataset(
        name=str(config.dataset),
        train=_NoImages(int(derived["train_examples"])),
        test=_NoImages(0),
        num_classes=int(derived["num_classes"]),
        image_shape=shape,
        mean=(0.0,) * channels,
        std=(1.0,) * channels,
    )


def _center(images: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Centre-crop (or zero-pad) ``(N, H, W, C)`` to the model's ``(H, W, C)``."""
    out = images
    for axis, size in ((1, shape[0]), (2, shape[1])):
        n = out.shape[axis]
        if n > size:
            out = np.take(out, np.arange((n - size) // 2, (n - size) // 2 + size), axis=axis)
        elif n < size:
            pad = [(0, 0)] * out.ndim
            pad[axis] = ((size - n) // 2, size - n - (size - n) // 2)
            out = np.pad(out, pad)
    return out


def _call_kwargs(model: nn.Module) -> dict:
    try:
        params = inspect.signature(type(model).__call__).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return {}
    return {"train": False} if "train" in params else {}


def spatial_layers(model: nn.Module, input_shape: Sequence[int]) -> list[Any]:
    """Summary rows (leaf layers, in call order) whose outputs have spatial dims and a field."""
    from cnnjax.model_summary import summary

    rows = summary(model, tuple(input_shape), print_fn=None).layers
    return [r for r in rows if r.is_leaf and r.rf_size is not None]


def layer_output(
    model: nn.Module, variables: dict, x: jax.Array, path: str
) -> tuple[jax.Array, Any]:
    """``(output of the module at path, model output)`` for inputs ``x`` ``(N, H, W, C)``.

    ``path`` is the summary's (``"/"``-joined module names). Raises ``ValueError`` listing the
    known paths when it is not found.
    """
    target = tuple(path.split("/")) if path else ()

    def only_target(module: nn.Module, method_name: str) -> bool:
        return method_name == "__call__" and tuple(module.path) == target

    out, state = model.apply(
        variables,
        x,
        **_call_kwargs(model),
        capture_intermediates=only_target,
        mutable=["intermediates"],
    )
    node = state.get("intermediates", {})
    for name in target:
        node = node.get(name, {}) if isinstance(node, dict) else {}
    found = node.get("__call__") if isinstance(node, dict) else None
    if not found:
        raise ValueError(f"no layer {path!r} in {type(model).__name__}; see `cnnjax summary`")
    y = found[0]
    return (y if not isinstance(y, tuple | list) else y[0]), out


def feature_maps(
    model: nn.Module, variables: dict, image: np.ndarray, paths: Sequence[str]
) -> dict[str, np.ndarray]:
    """``{path: (H', W', C') activation}`` of one normalised image ``(H, W, C)``."""
    x = jnp.asarray(image)[None]
    return {p: np.asarray(layer_output(model, variables, x, p)[0][0]) for p in paths}


# --------------------------------------------------------------------------------------------
# Deconvnet
# --------------------------------------------------------------------------------------------


@jax.custom_vjp
def _deconv_relu(x: jax.Array) -> jax.Array:
    return jnp.maximum(x, 0)


def _deconv_relu_fwd(x):
    return jnp.maximum(x, 0), None


def _deconv_relu_bwd(_, g):
    # Zeiler & Fergus: the reconstruction passes a ReLU; the forward sign is not used.
    return (jnp.maximum(g, 0),)


_deconv_relu.defvjp(_deconv_relu_fwd, _deconv_relu_bwd)


def _is_relu(eqn) -> bool:
    """``jax.nn.relu`` in a jaxpr: a ``custom_jvp_call`` whose body is ``max(x, 0)``."""
    if eqn.primitive.name != "custom_jvp_call" or len(eqn.invars) != 1:
        return False
    body = eqn.params["call_jaxpr"].jaxpr
    while len(body.eqns) == 1 and body.eqns[0].primitive.name in ("jit", "pjit"):
        body = body.eqns[0].params["jaxpr"].jaxpr
    if len(body.eqns) != 1 or body.eqns[0].primitive.name != "max":
        return False
    return any(hasattr(v, "val") and np.all(np.asarray(v.val) == 0) for v in body.eqns[0].invars)


def _eval_with_deconv_relu(jaxpr, consts, *args):
    """Evaluate a jaxpr (recursing into ``jit`` calls) with every ReLU replaced."""
    env = {}

    def read(v):
        return v.val if hasattr(v, "val") else env[v]

    for v, c in zip(jaxpr.constvars, consts, strict=True):
        env[v] = c
    for v, a in zip(jaxpr.invars, args, strict=True):
        env[v] = a
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        if _is_relu(eqn):
            outvals = [_deconv_relu(invals[0])]
        elif eqn.primitive.name in ("jit", "pjit"):
            sub = eqn.params["jaxpr"]
            outvals = _eval_with_deconv_relu(sub.jaxpr, sub.consts, *invals)
        else:
            params = eqn.primitive.get_bind_params(eqn.params)
            outvals = eqn.primitive.bind(*invals, **params)
            if not eqn.primitive.multiple_results:
                outvals = [outvals]
        for v, val in zip(eqn.outvars, outvals, strict=True):
            env[v] = val
    return [read(v) for v in jaxpr.outvars]


def deconvnet(
    model: nn.Module,
    variables: dict,
    images: np.ndarray,
    path: str,
    *,
    top: int = 4,
) -> list[dict[str, Any]]:
    """Project the ``top`` strongest activations of layer ``path`` back to pixel space.

    For each image and each of the ``top`` channels with the largest single activation
    (the strongest over the images), every other activation of the layer is set to zero and the
    map is passed down the deconvnet (see the module docstring).

    Args:
      images: normalised ``(N, H, W, C)`` inputs.
      path: the layer (a summary path with a spatial output).

    Returns:
      ``top`` dicts with ``channel``, ``image`` (index), ``position`` (spatial index in the
      layer), ``value`` and ``projection`` (``(H, W, C)`` in pixel space).
    """
    x = jnp.asarray(images)

    def features(x):
        return layer_output(model, variables, x, path)[0]

    closed = jax.make_jaxpr(features)(x)
    y = np.asarray(features(x))
    if y.ndim < 3:
        raise ValueError(f"layer {path!r} has no spatial output (shape {y.shape})")

    def deconv_features(x):
        return _eval_with_deconv_relu(closed.jaxpr, closed.consts, x)[0]

    _, pullback = jax.vjp(deconv_features, x)
    flat = y.reshape(y.shape[0], -1, y.shape[-1])
    strongest = flat.max(axis=(0, 1))
    results = []
    for channel in np.argsort(-strongest)[:top]:
        example = int(np.argmax(flat[:, :, channel].max(axis=1)))
        where = int(np.argmax(flat[example, :, channel]))
        signal = np.zeros_like(flat)
        signal[example, where, channel] = flat[example, where, channel]
        (projection,) = pullback(jnp.asarray(signal.reshape(y.shape)))
        results.append(
            {
                "channel": int(channel),
                "image": example,
                "position": tuple(int(i) for i in np.unravel_index(where, y.shape[1:-1])),
                "value": float(flat[example, where, channel]),
                "projection": np.asarray(projection[example]),
            }
        )
    return results


# --------------------------------------------------------------------------------------------
# Effective receptive field
# --------------------------------------------------------------------------------------------


def effective_receptive_field(
    model: nn.Module,
    variables: dict,
    images: np.ndarray,
    path: str,
    position: Sequence[int] | None = None,
) -> tuple[np.ndarray, tuple[int, ...]]:
    """``mean_n |d sum_c y[n, position, c] / d x_n|`` summed over input channels (Luo et al.).

    Returns the ``(H, W)`` map and the unit's position (default: the centre of the layer).
    """
    x = jnp.asarray(images)

    def features(x):
        return layer_output(model, variables, x, path)[0]

    y = jax.eval_shape(features, x)
    if len(y.shape) < 3:
        raise ValueError(f"layer {path!r} has no spatial output (shape {y.shape})")
    spatial = tuple(y.shape[1:-1])
    if position is None:
        position = tuple(n // 2 for n in spatial)
    position = tuple(int(p) for p in position)
    if len(position) != len(spatial) or not all(0 <= p < n for p, n in zip(position, spatial)):
        raise ValueError(f"unit position {position} is outside layer {path!r}'s map {spatial}")

    def unit(x):
        return jnp.sum(features(x)[(slice(None), *position, slice(None))])

    grad = jax.grad(unit)(x)
    return np.asarray(jnp.abs(grad).sum(-1).mean(0)), position
