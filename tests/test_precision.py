"""The ``precision`` parameter of the convolution ops, layers and models (issue 9, item 1).

The ops used to pin ``lax.Precision.HIGHEST`` (no TF32 / bf16 passes on GPU/TPU). Now
``precision=None`` leaves the backend default, and whatever is chosen reaches the custom VJP's
backward convolutions too. Checked on the lowered StableHLO text (``precision_config``), which
shows what XLA will be asked for on any backend.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from test_models import LARGE

from cnnjax import layers, ops
from cnnjax.models import create_model, get_model_info, list_models
from cnnjax.ops._common import canonicalize_precision

_CONV_CALLS = {
    "conv": lambda x, w, **kw: ops.conv(x, w, padding=1, **kw),
    "conv_stride2": lambda x, w, **kw: ops.conv(x, w, stride=2, padding=1, **kw),
    "conv_transpose": lambda x, w, **kw: ops.conv_transpose(x, w, stride=2, padding=1, **kw),
    "depthwise_conv": lambda x, w, **kw: ops.depthwise_conv(x, w[:, :, :1], padding=1, **kw),
    "separable_conv": lambda x, w, **kw: ops.separable_conv(
        x, w[:, :, :1], jnp.ones((1, 1, 4, 3)), padding=1, **kw
    ),
}


def _grad_hlo(call, precision, impl="custom") -> str:
    x = jnp.ones((2, 6, 6, 4))
    w = jnp.ones((3, 3, 4, 4))

    def loss(x, w):
        return jnp.sum(call(x, w, impl=impl, precision=precision) ** 2)

    # Under "default" config, precision=None resolves to DEFAULT: a pinned op would show HIGHEST.
    with jax.default_matmul_precision("default"):
        return jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, w).as_text()


def _conv_precisions(hlo: str) -> list[str]:
    """The precision_config of every convolution in ``hlo`` (one string per operand)."""
    lines = [line for line in hlo.splitlines() if "stablehlo.convolution" in line]
    assert lines, "no convolution in the lowered text"
    return [p for line in lines for p in re.findall(r"precision (\w+)>", line)]


@pytest.mark.parametrize("name", sorted(_CONV_CALLS))
@pytest.mark.parametrize("impl", ["custom", "xla"])
def test_default_precision_is_not_pinned_forward_and_backward(name, impl):
    precisions = _conv_precisions(_grad_hlo(_CONV_CALLS[name], None, impl))
    assert set(precisions) == {"DEFAULT"}, precisions
    # forward + input grad + weight grad: at least 3 convolutions, each with 2 operands
    assert len(precisions) >= 6


@pytest.mark.parametrize("name", sorted(_CONV_CALLS))
@pytest.mark.parametrize("precision", ["highest", lax.Precision.HIGHEST, "HIGH"])
def test_explicit_precision_reaches_the_custom_backward(name, precision):
    expected = canonicalize_precision(precision).name
    precisions = _conv_precisions(_grad_hlo(_CONV_CALLS[name], precision))
    assert set(precisions) == {expected}, precisions


def test_canonicalize_precision_rejects_unknown_values():
    assert canonicalize_precision(None) is None
    assert canonicalize_precision("Default") is lax.Precision.DEFAULT
    with pytest.raises(ValueError, match=r"conv: precision must be None, one of 'default'"):
        ops.conv(jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 1)), precision="tf32")
    with pytest.raises(ValueError, match=r"create_model\('resnet20'\): precision"):
        create_model("resnet20", precision=3)


def test_precision_does_not_change_float64_values():
    # float64 is computed in float64 whatever the precision: exact agreement.
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 5, 5, 3)))
    w = jnp.asarray(rng.standard_normal((3, 3, 3, 4)))
    with jax.enable_x64(True):
        x, w = jnp.asarray(x, jnp.float64), jnp.asarray(w, jnp.float64)
        grads = [
            jax.grad(lambda x, w, p=p: jnp.sum(ops.conv(x, w, precision=p) ** 2), (0, 1))(x, w)
            for p in (None, "highest")
        ]
    for a, b in zip(grads[0], grads[1]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_layer_and_model_thread_precision_to_every_conv_and_dense():
    layer = layers.Conv(4, (3, 3), padding=1, precision="highest")
    x = jnp.ones((1, 6, 6, 2))
    v = layer.init(jax.random.key(0), x)
    hlo = jax.jit(jax.grad(lambda p: jnp.sum(layer.apply(p, x)))).lower(v).as_text()
    assert set(_conv_precisions(hlo)) == {"HIGHEST"}

    for precision, expected in ((None, {"DEFAULT"}), ("highest", {"HIGHEST"})):
        model = create_model("lenet5", num_classes=10, precision=precision)
        images = jnp.ones((2, 32, 32, 1))
        variables = model.init(jax.random.key(0), images, train=False)

        def loss(params, model=model, images=images):
            return jnp.sum(model.apply({"params": params}, images, train=True))

        with jax.default_matmul_precision("default"):
            hlo = jax.jit(jax.grad(loss)).lower(variables["params"]).as_text()
        ops_lines = [
            line
            for line in hlo.splitlines()
            if "stablehlo.convolution" in line or "stablehlo.dot_general" in line
        ]
        found = {p for line in ops_lines for p in re.findall(r"precision (\w+)>", line)}
        assert found == expected, (precision, found)


def test_config_and_cli_precision_reach_the_model():
    from cnnjax.cli import build_parser
    from cnnjax.train import default_config
    from cnnjax.train.loop import build_run

    args = build_parser().parse_args(["train", "lenet5", "--precision", "highest"])
    assert args.precision == "highest"
    config = default_config()
    assert config.precision is None  # the backend default
    config.precision = "highest"
    assert build_run(config).model.precision is lax.Precision.HIGHEST


def _precisions(jaxpr, found: list) -> list:
    """``(primitive, precision)`` of every conv / dot equation in ``jaxpr`` and its sub-jaxprs
    (custom_vjp / custom_jvp calls, pjit, cond branches, scans)."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
            found.append((eqn.primitive.name, eqn.params.get("precision")))
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                sub = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr holds its Jaxpr
                if hasattr(sub, "eqns"):
                    _precisions(sub, found)
    return found


def _is_highest(precision) -> bool:
    parts = precision if isinstance(precision, tuple) else (precision,)
    return all(p == lax.Precision.HIGHEST for p in parts)


# Deeper siblings of a family (test_models.LARGE) run under -m slow; every family's blocks are
# traced in the default run through its smallest member.
@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in LARGE else n for n in list_models(task=None)],
)
def test_precision_reaches_every_conv_and_dense_of_every_model(name):
    """precision="highest" reaches every convolution and dense layer of every registered model,
    forward (train=False) and forward + backward (train=True, the custom VJPs' backward convs
    included), traced without running."""
    info = get_model_info(name)
    model = create_model(name, precision="highest")
    x = jax.ShapeDtypeStruct((2, *info.test_input_shape), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    rngs = {"dropout": jax.random.key(1)}

    def loss(params, rest, x):
        out, _ = model.apply(
            {"params": params, **rest}, x, train=True, rngs=rngs, mutable=["batch_stats"]
        )
        return sum(jnp.sum(leaf) for leaf in jax.tree.leaves(out))

    params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    traced = (
        jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, x),
        jax.make_jaxpr(jax.grad(loss))(params, rest, x),
    )
    for closed in traced:
        found = _precisions(closed.jaxpr, [])
        assert any(p == "conv_general_dilated" for p, _ in found), name
        wrong = [(p, precision) for p, precision in found if not _is_highest(precision)]
        assert not wrong, (name, wrong[:5])
