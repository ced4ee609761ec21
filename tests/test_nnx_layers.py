"""The layer tests for both APIs: every :mod:`cnnjax.layers` module and its :mod:`cnnjax.nnx`
namesake pass the same assertions (parameter shapes and dtypes, ``impl="custom"`` equals
``impl="xla"`` forward and backward in float64, initialiser statistics, compute dtype, errors),
and with the same weights the two APIs give identical outputs and gradients.

:class:`Built` puts a layer of either API in one functional form, ``apply(params, x)``, so each
test is written once and parametrised over ``api``. The float64 custom-vs-xla check runs here
for NNX only: ``tests/test_layers.py`` runs it on the same cases for Linen."""

from __future__ import annotations

import dataclasses
import inspect
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
        needs_rngs = "rngs" in inspect.signature(layer_cls).parameters  # layers with parameters
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


def test_op_arguments_reach_the_op(monkeypatch):
    """The op arguments of the NNX layer (``precision`` included) reach the op as given."""
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


# --------------------------------------------------------------------------------------------
# BatchNorm: cnnjax.nnx.BatchNorm against cnnjax.layers.BatchNorm (batch statistics are state,
# so it is checked here step by step rather than through Built)
# --------------------------------------------------------------------------------------------


def _batch_norm_pair(x, **kwargs):
    """A Linen and an NNX batch norm holding the same float64 variables (moved by from_linen)."""
    linen = layers.BatchNorm(**kwargs)
    variables = linen.init(jax.random.key(0), x, use_running_average=True)
    keys = jax.random.split(jax.random.key(5), 4)
    variables = {  # away from the initial 1/0 so that every variable matters
        "params": {"scale": 1 + _rand((x.shape[-1],), 1), "bias": _rand((x.shape[-1],), 2)},
        "batch_stats": {
            "mean": jax.random.normal(keys[0], (x.shape[-1],), jnp.float64),
            "var": jnp.exp(jax.random.normal(keys[1], (x.shape[-1],), jnp.float64)),
        },
    }
    native = cnnjax.nnx.BatchNorm(x.shape[-1], **kwargs, rngs=nnx.Rngs(1))
    cnnjax.nnx.from_linen(native, variables)
    return linen, variables, native


def _linen_bn_step(linen, variables, x, cotangent, train):
    def loss(params, x):
        v = {**variables, "params": params}
        y, updates = linen.apply(
            v, x, use_running_average=not train, mutable=["batch_stats"] if train else []
        )
        return jnp.vdot(y, cotangent), (y, updates.get("batch_stats", variables["batch_stats"]))

    (grads, grad_x), (y, stats) = jax.grad(loss, (0, 1), has_aux=True)(variables["params"], x)
    return y, grads, grad_x, {**variables, "batch_stats": stats}


def _nnx_bn_step(native, x, cotangent, train):
    native.train() if train else native.eval()

    def loss(m, x):
        y = m(x)
        return jnp.vdot(y, cotangent), y

    (grads, grad_x), y = nnx.grad(loss, argnums=(0, 1), has_aux=True)(native, x)
    return y, nnx.to_pure_dict(grads), grad_x


def _assert_trees_close(a, b, what):
    assert jax.tree.structure(a) == jax.tree.structure(b), what
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype, what
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-13, err_msg=what)


@pytest.mark.parametrize("shape", [(4, 5, 5, 3), (6, 7)])  # conv features, dense features
def test_batch_norm_matches_linen_train_steps_then_eval_float64(shape):
    x0 = 3 * _rand(shape, 1) + 2
    linen, variables, native = _batch_norm_pair(x0, momentum=0.9, epsilon=1e-3)
    for step, train in enumerate((True, True, True, False)):
        x = 3 * _rand(shape, 10 + step) + 2 * step  # a different batch (and mean) each step
        cotangent = _rand(shape, 20 + step)
        y, grads, grad_x, variables = _linen_bn_step(linen, variables, x, cotangent, train)
        y_nnx, grads_nnx, grad_x_nnx = _nnx_bn_step(native, x, cotangent, train)
        what = f"step {step} (train={train})"
        assert y_nnx.dtype == jnp.float64
        _assert_trees_close(y_nnx, y, f"output, {what}")
        _assert_trees_close(grads_nnx, grads, f"parameter gradients, {what}")
        _assert_trees_close(grad_x_nnx, grad_x, f"input gradient, {what}")
        _assert_trees_close(cnnjax.nnx.to_linen(native), variables, f"variables after {what}")
    # the running averages moved by momentum 0.9 over three batches, as Linen's did
    assert not np.allclose(variables["batch_stats"]["mean"], 0.0)


@pytest.mark.parametrize("api", APIS)
def test_batch_norm_refuses_one_value_per_channel_in_training(api):
    def run(x, train):
        if api == "linen":
            bn = layers.BatchNorm(use_running_average=not train)
            variables = bn.init(jax.random.key(0), jnp.ones((2, 3, 3, 4)))
            return bn.apply(variables, x, mutable=["batch_stats"])[0]
        bn = cnnjax.nnx.BatchNorm(4, use_running_average=not train, rngs=nnx.Rngs(0))
        return bn(x)

    assert run(jnp.arange(8.0).reshape(2, 1, 1, 4), train=True).shape == (2, 1, 1, 4)
    assert run(jnp.ones((1, 1, 1, 4)), train=False).shape == (1, 1, 1, 4)
    message = r"BatchNorm: expected more than 1 value per channel when training, got input shape"
    with pytest.raises(ValueError, match=message + r" \(1, 1, 1, 4\) \(N \* spatial = 1\)"):
        run(jnp.ones((1, 1, 1, 4)), train=True)
    with pytest.raises(ValueError, match=message + r" \(0, 3, 3, 4\) \(N \* spatial = 0\)"):
        run(jnp.ones((0, 3, 3, 4)), train=True)


def test_nnx_batch_norm_mode_from_call_argument_and_cross_device_axis():
    bn = cnnjax.nnx.BatchNorm(4, rngs=nnx.Rngs(0))  # training mode by default, as nnx.BatchNorm
    x = jnp.ones((1, 1, 1, 4))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(x)
    assert bn(x, use_running_average=True).shape == x.shape  # the call argument wins
    # with axis_name the statistics span devices: the per-device count of 1 is allowed
    many = jnp.arange(16.0).reshape(4, 1, 1, 1, 4)
    graphdef, state = nnx.split(cnnjax.nnx.BatchNorm(4, axis_name="batch", rngs=nnx.Rngs(0)))
    run = jax.vmap(lambda s, x: nnx.merge(graphdef, s)(x), in_axes=(None, 0), axis_name="batch")
    y = run(state, many)
    np.testing.assert_allclose(jnp.mean(y, axis=0), 0.0, atol=1e-6)


@pytest.mark.parametrize("dtype", [None, jnp.bfloat16])
def test_batch_norm_bfloat16_input_float32_statistics(dtype):
    # Mean 100, spread 0.1: bf16 has 8 bits of mantissa (spacing 0.5 at 100), so statistics or
    # running averages rounded to bf16 would be far off. Both APIs reduce in float32, keep the
    # running averages float32 and use them unrounded (flax.nnx.BatchNorm casts them to dtype).
    x = (100 + 0.1 * _rand((8, 4, 4, 3), 3)).astype(jnp.bfloat16)
    linen, variables, native = _batch_norm_pair(x, momentum=0.9, dtype=dtype)
    variables = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), variables)
    cnnjax.nnx.from_linen(native, variables)
    reference = jnp.mean(x.astype(jnp.float32), axis=(0, 1, 2))
    for train in (True, False):
        linen_y, updates = linen.apply(
            variables, x, use_running_average=not train, mutable=["batch_stats"]
        )
        native.train() if train else native.eval()
        y = native(x)
        expected_dtype = jnp.float32 if dtype is None else jnp.bfloat16
        assert y.dtype == linen_y.dtype == expected_dtype
        np.testing.assert_array_equal(y.astype(jnp.float32), linen_y.astype(jnp.float32))
        stats = cnnjax.nnx.to_linen(native)["batch_stats"]
        assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(stats))
        np.testing.assert_array_equal(stats["mean"], updates["batch_stats"]["mean"])
        np.testing.assert_array_equal(stats["var"], updates["batch_stats"]["var"])
        if train:
            expected = 0.9 * variables["batch_stats"]["mean"] + 0.1 * reference
            np.testing.assert_allclose(stats["mean"], expected, rtol=1e-6)
            variables = {**variables, **updates}
    # Training mode normalised with the float32 batch statistics: mean ~0, std ~scale.
    native.train()
    z = (native(x).astype(jnp.float32) - variables["params"]["bias"]) / variables["params"]["scale"]
    np.testing.assert_allclose(jnp.mean(z, axis=(0, 1, 2)), 0.0, atol=0.05)


def test_batch_norm_variables_convert_both_ways():
    x = jnp.zeros((2, 3, 3, 5), jnp.float32)
    linen = layers.BatchNorm(use_running_average=True).init(jax.random.key(0), x)
    native = cnnjax.nnx.BatchNorm(5, rngs=nnx.Rngs(0))
    shapes = jax.tree.map(lambda a: (a.shape, a.dtype), cnnjax.nnx.to_linen(native))
    assert shapes == jax.tree.map(lambda a: (a.shape, a.dtype), dict(linen))
    assert cnnjax.nnx.param_count(native) == 10  # scale and bias; mean and var are batch_stats
    changed = jax.tree.map(lambda a: a + jnp.arange(5.0, dtype=a.dtype), dict(linen))
    cnnjax.nnx.from_linen(native, changed)
    back = cnnjax.nnx.to_linen(native)
    assert jax.tree.structure(back) == jax.tree.structure(changed)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(changed), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(native.mean[...], jnp.arange(5.0))


def test_every_linen_layer_has_a_derived_nnx_namesake():
    linen_classes = {
        name for name in layers.__all__ if isinstance(getattr(layers, name), type)
    }  # fmt: skip
    assert linen_classes <= set(cnnjax.nnx.__all__)
    for name in linen_classes:
        nnx_cls = getattr(cnnjax.nnx, name)
        assert nnx_cls._LINEN is getattr(layers, name)  # derived from it, not a copy
        fields = [f for f in dataclasses.fields(getattr(layers, name)) if f.init]
        fields = [f for f in fields if f.name not in ("parent", "name")]
        params = inspect.signature(nnx_cls).parameters
        # Every Linen field, in order: positional ones first, then the keyword-only plumbing.
        expected = [f.name for f in sorted(fields, key=lambda f: bool(f.kw_only))]
        assert [p for p in params if p in expected] == expected
        for f in fields:
            keyword_only = params[f.name].kind is inspect.Parameter.KEYWORD_ONLY
            assert keyword_only == bool(f.kw_only), (name, f.name)
