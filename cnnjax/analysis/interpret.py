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

Every function takes ``(model, variables, images)``: a Linen module and its variables, a
:class:`cnnjax.models.FunctionalModel` and ``{"params": tree}``, an NNX module (``variables``
unused: pass ``None``) or a pure ``apply(params, x)`` and its ``params``. Layers are named by
their summary path (:func:`cnnjax.analysis.summary.summary`). Loading a trained run is the
training side's job (:func:`cnnjax.train.load.load_run`).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.analysis.functional import (
    PureModel,
    as_pure,
    bind,
    evaluate_to,
    linen_view,
    op_rows,
    top_level,
)
from cnnjax.analysis.summary import summary

__all__ = [
    "deconvnet",
    "effective_receptive_field",
    "feature_maps",
    "layer_output",
    "spatial_layers",
]


def _call_kwargs(model: nn.Module) -> dict:
    try:
        params = inspect.signature(type(model).__call__).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return {}
    return {"train": False} if "train" in params else {}


def spatial_layers(model: Any, input_shape: Sequence[int], params: Any = None) -> list[Any]:
    """Summary rows (leaf layers, in call order) whose outputs have spatial dims and a field.

    ``params``: only for a pure ``apply(params, x)`` (arrays or shapes)."""
    rows = summary(model, tuple(input_shape), params=params, print_fn=None).layers
    return [r for r in rows if r.is_leaf and r.rf_size is not None]


def layer_output(model: Any, variables: Any, x: jax.Array, path: str) -> tuple[jax.Array, Any]:
    """``(output of the layer at path, model output)`` for inputs ``x`` ``(N, H, W, C)``.

    ``path`` is the summary's (``"/"``-joined module names; a pure function's row name, e.g.
    ``"conv_1"``). Raises ``ValueError`` listing the known paths when it is not found.
    """
    model, variables = linen_view(model, variables)
    pure = as_pure(model, variables)
    if pure is not None:
        return _row_output(pure, x, path)
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
    model: Any, variables: Any, image: np.ndarray, paths: Sequence[str]
) -> dict[str, np.ndarray]:
    """``{path: (H', W', C') activation}`` of one normalised image ``(H, W, C)``."""
    x = jnp.asarray(image)[None]
    return {p: np.asarray(layer_output(model, variables, x, p)[0][0]) for p in paths}


def _row_output(pure: PureModel, x: jax.Array, path: str) -> tuple[jax.Array, Any]:
    """A pure function's row output: its jaxpr evaluated up to the row's output variable."""
    closed = top_level(jax.make_jaxpr(pure.apply)(pure.params, x))
    leaves = jax.tree.leaves(pure.params)
    rows = op_rows(closed.jaxpr, len(leaves))
    row = next((r for r in rows if r.name == path), None)
    if row is None:
        known = ", ".join(r.name for r in rows)
        raise ValueError(f"no layer {path!r} in {pure.name}; choose one of: {known}")
    y = evaluate_to(closed, row.output_var, *leaves, x)
    return y, None


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
            outvals = bind(eqn, invals)
        for v, val in zip(eqn.outvars, outvals, strict=True):
            env[v] = val
    return [read(v) for v in jaxpr.outvars]


def deconvnet(
    model: Any,
    variables: Any,
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
    model: Any,
    variables: Any,
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
