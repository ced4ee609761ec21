"""The layer tests for both APIs: every :mod:`cnnjax.layers` module and its :mod:`cnnjax.nnx`
namesake pass the same assertions (parameter shapes and dtypes, ``impl="custom"`` equals
``impl="xla"`` forward and backward in float64, initialiser statistics, compute dtype, errors),
and with the same weights the two APIs give identical outputs and gradients.

:class:`Built` puts a layer of either API in one functional form, ``apply(params, x)``, so each
test is written once and parametrised over ``api``. The float64 custom-vs-xla check runs here
for NNX only: ``tests/test_layers.py`` runs it on the same cases for Linen."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import cnnjax.nnx
import cnnjax.ops
from cnnjax import layers
from cnnjax.models.lenet import LENET5_C3_TABLE

RTOL = 1e-9  # float64 custom-vs-xla tolerance, as tests/test_layers.py
APIS = ("linen", "nnx")
#: NNX layers that create parameters eagerly take the input channels first.
TAKES_IN_FEATURES = {
    "Conv",
    "ConvTranspose",
    "DepthwiseConv",
    "SeparableConv",
    "TrainableSubsampling",
}

# name: (layer class name, constructor keywords, input shape, {param name: shape})
CASES = {
    "conv2d": (
        "Conv",
        {"features": 8, "kernel_size": (3, 3), "stride": 2, "padding": 1},
        (2, 9, 9, 4),
        {"kernel": (3, 3, 4, 8), "bias": (8,)},
    ),
    "conv1d_dilated": (
        "Conv",
        {"features": 5, "kernel_size": (3,), "dilation": 2, "padding": "SAME"},
        (2, 11, 3),
        {"kernel": (3, 3, 5), "bias": (5,)},
    ),
    "conv3d_groups": (
        "Conv",
        {"features": 6, "kernel_size": (2, 3, 3), "groups": 2, "use_bias": False},
        (1, 4, 6, 6, 4),
        {"kernel": (2, 3, 3, 2, 6)},
    ),
    "conv_transpose": (
        "ConvTranspose",
        {
            "features": 6,
            "kernel_size": (3, 3),
            "stride": 2,
            "padding": 1,
            "output_padding": 1,
            "groups": 2,
        },
        (2, 5, 5, 4),
        {"kernel": (3, 3, 4, 3), "bias": (6,)},
    ),
    "depthwise": (
        "DepthwiseConv",
        {"kernel_size": (3, 3), "depth_multiplier": 2, "padding": 1},
        (2, 7, 7, 3),
        {"kernel": (3, 3, 1, 6), "bias": (6,)},
    ),
    "separable": (
        "SeparableConv",
        {"features": 5, "kernel_size": (3, 3), "stride": 2, "padding": 1},
        (2, 8, 8, 3),
        {"depthwise_kernel": (3, 3, 1, 3), "pointwise_kernel": (1, 1, 3, 5), "bias": (5,)},
    ),
    "connection_table": (
        "ConnectionTableConv",
        {"table": LENET5_C3_TABLE, "kernel_size": (5, 5)},
        (2, 14, 14, 6),
        {"kernel": (5, 5, 60), "bias": (16,)},
    ),
    "trainable_subsampling": (
        "TrainableSubsampling",
        {"window": 2},
        (2, 8, 8, 3),
        {"coefficient": (3,), "bias": (3,)},
    ),
    "max_pool": ("MaxPool", {"window": (3, 3), "stride": 2, "ceil_mode": True}, (2, 8, 8, 3), {}),
    "avg_pool": (
        "AvgPool",
        {"window": (3, 3), "stride": 2, "padding": 1, "count_include_pad": False},
        (2, 7, 7, 3),
        {},
    ),
    "lp_pool": ("LpPool", {"p": 2.0, "window": (2, 2)}, (2, 6, 6, 3), {}),
    "adaptive_avg_pool": ("AdaptiveAvgPool", {"output_size": (3, 2)}, (2, 7, 4, 3), {}),
    "lrn": ("LocalResponseNorm", {"size": 5, "alpha": 5e-4, "k": 2.0}, (2, 4, 4, 7), {}),
    "lcn": ("LocalContrastNorm", {"size": 5}, (2, 8, 8, 3), {}),
}


class Built:
    """One layer in a functional form common to both APIs: ``params`` (a pytree) and
    ``apply(params, x)``."""

    def __init__(self, api: str, cls: str, kwargs: dict, x: jax.Array, seed: int = 0):
        if api == "linen":
            module = getattr(layers, cls)(**kwargs)
            self.params = dict(module.init(jax.random.key(seed), x).get("params", {}))
            self.apply = lambda p, x: module.apply({"params": p} if p else {}, x)
            return
        if cls in TAKES_IN_FEATURES:
            kwargs = {"in_features": x.shape[-1], **kwargs}
        layer_cls = getattr(cnnjax.nnx, cls)
        needs_rngs = issubclass(layer_cls, cnnjax.nnx.layers._Layer) or cls in TAKES_IN_FEATURES
        module = layer_cls(**kwargs, **({"rngs": nnx.Rngs(seed)} if needs_rngs else {}))
        self.module = module
        graphdef, params, rest = nnx.split(module, nnx.Param, ...)
        self.params = nnx.to_pure_dict(params)

        def apply(p, x):
            state = nnx.State(jax.tree.map(lambda a: a, params))
            nnx.replace_by_pure_dict(state, p)
            return nnx.merge(graphdef, state, rest)(x)

        self.apply = apply


def _rand(shape, seed=0, dtype=jnp.float64):
    return jax.random.normal(jax.random.key(seed), shape, dtype)


def _positive_input(name, shape):
    x = _rand(shape, seed=1)
    # Lp pooling of order 2 is not differentiable at an all-zero window; keep inputs away.
    return jnp.abs(x) + 0.1 if name == "lp_pool" else x


def _f64(tree):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_param_shapes_and_dtypes(name, api):
    cls, kwargs, shape, expected = CASES[name]
    built = Built(api, cls, kwargs, jnp.zeros(shape, jnp.float32))
    assert {k: v.shape for k, v in built.params.items()} == expected
    assert all(v.dtype == jnp.float32 for v in built.params.values())


# Linen: the same cases and assertions in tests/test_layers.py (not compiled twice in CI).
@pytest.mark.parametrize("api", ["nnx"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_custom_matches_xla_forward_and_gradients(name, api):
    cls, kwargs, shape, _ = CASES[name]
    x = _positive_input(name, shape)
    params = _f64(Built(api, cls, kwargs, x).params)
    outputs, grads = {}, {}
    for impl in ("custom", "xla"):
        built = Built(api, cls, {**kwargs, "impl": impl}, x)
        cotangent = _rand(jax.eval_shape(built.apply, params, x).shape, seed=2)

        def loss(params, x, built=built, cotangent=cotangent):
            y = built.apply(params, x)
            return jnp.sum(y * cotangent), y

        grads[impl], outputs[impl] = jax.jit(jax.grad(loss, (0, 1), has_aux=True))(params, x)
    assert outputs["custom"].dtype == jnp.float64
    np.testing.assert_allclose(outputs["custom"], outputs["xla"], rtol=RTOL, atol=1e-12)
    for a, b in zip(jax.tree.leaves(grads["custom"]), jax.tree.leaves(grads["xla"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-12)


@pytest.mark.parametrize("name", sorted(CASES))
def test_nnx_equals_linen_with_the_same_weights(name):
    cls, kwargs, shape, _ = CASES[name]
    x = _positive_input(name, shape)
    linen, native = Built("linen", cls, kwargs, x), Built("nnx", cls, kwargs, x, seed=1)
    params = _f64(linen.params)

    def outputs_and_grads(built):
        def loss(params, x):
            return jnp.sum(jnp.sin(built.apply(params, x)))

        return built.apply(params, x), jax.grad(loss, (0, 1))(params, x)

    out_linen, grads_linen = jax.jit(lambda: outputs_and_grads(linen))()
    out_nnx, grads_nnx = jax.jit(lambda: outputs_and_grads(native))()
    np.testing.assert_array_equal(out_nnx, out_linen)
    assert jax.tree.structure(grads_nnx) == jax.tree.structure(grads_linen)
    for a, b in zip(jax.tree.leaves(grads_nnx), jax.tree.leaves(grads_linen), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("api", APIS)
def test_compute_dtype_bfloat16_keeps_float32_params(api):
    x = jnp.ones((1, 5, 5, 2), jnp.float32)
    built = Built(
        api, "Conv", {"features": 4, "kernel_size": (3, 3), "padding": 1, "dtype": jnp.bfloat16}, x
    )
    assert built.params["kernel"].dtype == jnp.float32
    assert built.apply(built.params, x).dtype == jnp.bfloat16


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize(
    ("cls", "kwargs", "shape", "param", "fan_in"),
    [
        ("Conv", {"features": 256, "kernel_size": (3, 3)}, (1, 5, 5, 64), "kernel", 3 * 3 * 64),
        (
            "Conv",
            {"features": 256, "kernel_size": (3, 3), "groups": 4},
            (1, 5, 5, 64),
            "kernel",
            3 * 3 * 16,
        ),
        ("Conv", {"features": 128, "kernel_size": (5,)}, (1, 9, 32), "kernel", 5 * 32),
        (
            "ConvTranspose",
            {"features": 256, "kernel_size": (3, 3), "groups": 2},
            (1, 5, 5, 64),
            "kernel",
            3 * 3 * 32,
        ),
        (
            "DepthwiseConv",
            {"kernel_size": (5, 5), "depth_multiplier": 256},
            (1, 7, 7, 4),
            "kernel",
            25,
        ),
        (
            "SeparableConv",
            {"features": 256, "kernel_size": (3, 3)},
            (1, 5, 5, 200),
            "pointwise_kernel",
            200,
        ),
    ],
)
def test_he_normal_std(api, cls, kwargs, shape, param, fan_in):
    kernel = Built(api, cls, kwargs, jnp.zeros(shape, jnp.float32)).params[param]
    assert kernel.size > 10_000
    assert abs(float(jnp.mean(kernel))) < 0.05 * math.sqrt(2 / fan_in)
    np.testing.assert_allclose(float(jnp.std(kernel)), math.sqrt(2 / fan_in), rtol=0.05)


@pytest.mark.parametrize("api", APIS)
def test_overridable_glorot_init_std(api):
    kwargs = {
        "features": 256,
        "kernel_size": (3, 3),
        "kernel_init": nn.initializers.glorot_uniform(),
    }
    kernel = Built(api, "Conv", kwargs, jnp.zeros((1, 5, 5, 128))).params["kernel"]
    fan_in, fan_out = 9 * 128, 9 * 256
    np.testing.assert_allclose(float(jnp.std(kernel)), math.sqrt(2 / (fan_in + fan_out)), rtol=0.05)


@pytest.mark.parametrize("api", APIS)
def test_connection_table_per_map_init_and_count(api):
    table = np.asarray(LENET5_C3_TABLE)
    built = Built(
        api,
        "ConnectionTableConv",
        {"table": LENET5_C3_TABLE, "kernel_size": (5, 5)},
        _rand((2, 14, 14, 6)),
    )
    assert sum(p.size for p in jax.tree.leaves(built.params)) == 1516  # C3 in LeCun et al. 1998
    outs = np.nonzero(table.T)[0]
    bound = 2.4 / (25 * table.sum(axis=0)[outs])
    kernel = np.asarray(built.params["kernel"])
    assert np.all(np.abs(kernel) <= bound)
    assert np.all(np.abs(kernel).max(axis=(0, 1)) > 0.5 * bound)


@pytest.mark.parametrize("api", APIS)
def test_kernel_size_must_be_a_sequence(api):
    with pytest.raises(TypeError, match="kernel_size must be a sequence"):
        Built(api, "Conv", {"features": 4, "kernel_size": 3}, jnp.zeros((1, 5, 5, 1)))


@pytest.mark.parametrize("api", APIS)
def test_groups_must_divide_channels(api):
    with pytest.raises(
        ValueError,
        match=r"input channels \(6\) and features \(4\) must be divisible by groups \(4\)",
    ):
        Built(
            api,
            "Conv",
            {"features": 4, "kernel_size": (3, 3), "groups": 4},
            jnp.zeros((1, 5, 5, 6)),
        )


@pytest.mark.parametrize("api", APIS)
def test_conv_rank_mismatch_is_clear(api):
    built = Built(api, "Conv", {"features": 4, "kernel_size": (3, 3)}, jnp.zeros((1, 5, 5, 1)))
    with pytest.raises(ValueError, match="2-D kernel needs inputs"):
        built.apply(built.params, jnp.zeros((1, 5, 1)))


@pytest.mark.parametrize("name", sorted(CASES))
def test_nnx_layers_thread_impl_to_the_op(name, monkeypatch):
    cls, kwargs, shape, _ = CASES[name]
    calls = []
    for op_name in cnnjax.ops.__all__:
        op = getattr(cnnjax.ops, op_name)

        def spy(*args, op=op, **kw):
            calls.append(kw.get("impl"))
            return op(*args, **kw)

        monkeypatch.setattr(cnnjax.ops, op_name, spy)
    x = _positive_input(name, shape)
    built = Built("nnx", cls, {**kwargs, "impl": "xla"}, x)
    built.apply(built.params, x)
    if name != "adaptive_avg_pool":  # 7→3 and 4→2 windows: a matrix product, no op (documented)
        assert calls and all(impl == "xla" for impl in calls), calls


def test_extra_op_kwargs_reach_the_op(monkeypatch):
    """Op arguments the NNX layer does not name (e.g. a future ``precision``) go to the op."""
    seen = {}

    def conv(x, w, b=None, **kwargs):
        seen.update(kwargs)
        return x

    monkeypatch.setattr(cnnjax.ops, "conv", conv)
    layer = cnnjax.nnx.Conv(
        3, 4, (3, 3), padding=[(1, 1), (1, 1)], rngs=nnx.Rngs(0), precision="highest"
    )
    layer(jnp.zeros((1, 5, 5, 3)))
    assert seen == {
        "stride": 1,
        "padding": ((1, 1), (1, 1)),
        "dilation": 1,
        "groups": 1,
        "impl": "custom",
        "precision": "highest",
    }


def test_nnx_layer_is_jittable_and_trainable():
    layer = cnnjax.nnx.Conv(3, 4, (3, 3), padding=1, rngs=nnx.Rngs(0))
    x = jnp.ones((2, 6, 6, 3), jnp.float32)

    @nnx.jit
    def loss_and_grads(layer, x):
        return nnx.value_and_grad(lambda m: jnp.mean(m(x) ** 2))(layer)

    loss, grads = loss_and_grads(layer, x)
    assert np.isfinite(float(loss))
    assert grads["kernel"].shape == (3, 3, 3, 4) and float(jnp.abs(grads["kernel"][...]).sum()) > 0
