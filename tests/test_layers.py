"""Tests of cnnjax.layers: parameter shapes, custom == xla (forward and gradients), initialiser
statistics, and the hand-checkable layers (TrainableSubsampling, ConnectionTableConv,
AdaptiveAvgPool) against NumPy."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cnnjax import layers
from cnnjax.models.lenet import LENET5_C3_TABLE

RTOL = 1e-9  # float64 custom-vs-xla tolerance


def _rand(shape, seed=0, dtype=jnp.float64):
    return jax.random.normal(jax.random.key(seed), shape, dtype)


# (factory(impl) -> module, input shape, {param name: shape})
CASES = {
    "conv2d": (
        lambda impl: layers.Conv(8, (3, 3), stride=2, padding=1, impl=impl),
        (2, 9, 9, 4),
        {"kernel": (3, 3, 4, 8), "bias": (8,)},
    ),
    "conv1d_dilated": (
        lambda impl: layers.Conv(5, (3,), dilation=2, padding="SAME", impl=impl),
        (2, 11, 3),
        {"kernel": (3, 3, 5), "bias": (5,)},
    ),
    "conv3d_groups": (
        lambda impl: layers.Conv(6, (2, 3, 3), groups=2, use_bias=False, impl=impl),
        (1, 4, 6, 6, 4),
        {"kernel": (2, 3, 3, 2, 6)},
    ),
    "conv_transpose": (
        lambda impl: layers.ConvTranspose(
            6, (3, 3), stride=2, padding=1, output_padding=1, groups=2, impl=impl
        ),
        (2, 5, 5, 4),
        {"kernel": (3, 3, 4, 3), "bias": (6,)},
    ),
    "depthwise": (
        lambda impl: layers.DepthwiseConv((3, 3), depth_multiplier=2, padding=1, impl=impl),
        (2, 7, 7, 3),
        {"kernel": (3, 3, 1, 6), "bias": (6,)},
    ),
    "separable": (
        lambda impl: layers.SeparableConv(5, (3, 3), stride=2, padding=1, impl=impl),
        (2, 8, 8, 3),
        {"depthwise_kernel": (3, 3, 1, 3), "pointwise_kernel": (1, 1, 3, 5), "bias": (5,)},
    ),
    "connection_table": (
        lambda impl: layers.ConnectionTableConv(LENET5_C3_TABLE, (5, 5), impl=impl),
        (2, 14, 14, 6),
        {"kernel": (5, 5, 60), "bias": (16,)},
    ),
    "trainable_subsampling": (
        lambda impl: layers.TrainableSubsampling(2, impl=impl),
        (2, 8, 8, 3),
        {"coefficient": (3,), "bias": (3,)},
    ),
    "max_pool": (
        lambda impl: layers.MaxPool((3, 3), stride=2, ceil_mode=True, impl=impl),
        (2, 8, 8, 3),
        {},
    ),
    "avg_pool": (
        lambda impl: layers.AvgPool(
            (3, 3), stride=2, padding=1, count_include_pad=False, impl=impl
        ),
        (2, 7, 7, 3),
        {},
    ),
    "lp_pool": (lambda impl: layers.LpPool(2.0, (2, 2), impl=impl), (2, 6, 6, 3), {}),
    "adaptive_avg_pool": (
        lambda impl: layers.AdaptiveAvgPool((3, 2), impl=impl),
        (2, 7, 4, 3),
        {},
    ),
    "lrn": (
        lambda impl: layers.LocalResponseNorm(5, alpha=5e-4, k=2.0, impl=impl),
        (2, 4, 4, 7),
        {},
    ),
    "lcn": (lambda impl: layers.LocalContrastNorm(5, impl=impl), (2, 8, 8, 3), {}),
}


def _positive_input(name, shape):
    x = _rand(shape, seed=1)
    # Lp pooling of order 2 is not differentiable at an all-zero window; keep inputs away.
    return jnp.abs(x) + 0.1 if name == "lp_pool" else x


@pytest.mark.parametrize("name", sorted(CASES))
def test_param_shapes_and_dtypes(name):
    factory, shape, expected = CASES[name]
    variables = factory("custom").init(jax.random.key(0), jnp.zeros(shape, jnp.float32))
    params = variables.get("params", {})
    assert {k: v.shape for k, v in params.items()} == expected
    assert all(v.dtype == jnp.float32 for v in params.values())


@pytest.mark.parametrize("name", sorted(CASES))
def test_custom_matches_xla_forward_and_gradients(name):
    factory, shape, _ = CASES[name]
    x = _positive_input(name, shape)
    variables = factory("custom").init(jax.random.key(0), x)
    variables = jax.tree.map(lambda a: a.astype(jnp.float64), variables)
    cotangent = None
    outputs, grads = {}, {}
    for impl in ("custom", "xla"):
        module = factory(impl)

        @jax.jit
        def loss(variables, x, cotangent, module=module):
            y = module.apply(variables, x)
            return jnp.sum(y * cotangent), y

        if cotangent is None:
            cotangent = _rand(jax.eval_shape(module.apply, variables, x).shape, seed=2)
        grad_fn = jax.jit(jax.grad(loss, (0, 1), has_aux=True))
        grads[impl], outputs[impl] = grad_fn(variables, x, cotangent)
    assert outputs["custom"].dtype == jnp.float64
    np.testing.assert_allclose(outputs["custom"], outputs["xla"], rtol=RTOL, atol=1e-12)
    for a, b in zip(jax.tree.leaves(grads["custom"]), jax.tree.leaves(grads["xla"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-12)


def test_compute_dtype_bfloat16_keeps_float32_params():
    layer = layers.Conv(4, (3, 3), padding=1, dtype=jnp.bfloat16)
    x = jnp.ones((1, 5, 5, 2), jnp.float32)
    variables = layer.init(jax.random.key(0), x)
    assert variables["params"]["kernel"].dtype == jnp.float32
    assert layer.apply(variables, x).dtype == jnp.bfloat16


def test_conv_matches_lax_reference():
    layer = layers.Conv(4, (3, 3), stride=(2, 1), padding=((1, 0), (2, 2)), dilation=(1, 2))
    x = _rand((2, 8, 7, 3))
    variables = jax.tree.map(
        lambda a: a.astype(jnp.float64) + 0.1, layer.init(jax.random.key(0), x)
    )
    kernel, bias = variables["params"]["kernel"], variables["params"]["bias"]
    expected = lax.conv_general_dilated(
        x,
        kernel,
        (2, 1),
        ((1, 0), (2, 2)),
        rhs_dilation=(1, 2),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=lax.Precision.HIGHEST,
    )
    np.testing.assert_allclose(layer.apply(variables, x), expected + bias, rtol=1e-12)


@pytest.mark.parametrize(
    ("layer", "shape", "param", "fan_in"),
    [
        (layers.Conv(256, (3, 3)), (1, 5, 5, 64), "kernel", 3 * 3 * 64),
        (layers.Conv(256, (3, 3), groups=4), (1, 5, 5, 64), "kernel", 3 * 3 * 16),
        (layers.Conv(128, (5,)), (1, 9, 32), "kernel", 5 * 32),
        (layers.ConvTranspose(256, (3, 3), groups=2), (1, 5, 5, 64), "kernel", 3 * 3 * 32),
        (layers.DepthwiseConv((5, 5), depth_multiplier=256), (1, 7, 7, 4), "kernel", 25),
        (layers.SeparableConv(256, (3, 3)), (1, 5, 5, 200), "pointwise_kernel", 200),
    ],
)
def test_he_normal_std(layer, shape, param, fan_in):
    kernel = layer.init(jax.random.key(0), jnp.zeros(shape, jnp.float32))["params"][param]
    assert kernel.size > 10_000
    assert abs(float(jnp.mean(kernel))) < 0.05 * math.sqrt(2 / fan_in)
    np.testing.assert_allclose(float(jnp.std(kernel)), math.sqrt(2 / fan_in), rtol=0.05)


def test_overridable_glorot_init_std():
    layer = layers.Conv(256, (3, 3), kernel_init=nn.initializers.glorot_uniform())
    kernel = layer.init(jax.random.key(0), jnp.zeros((1, 5, 5, 128)))["params"]["kernel"]
    fan_in, fan_out = 9 * 128, 9 * 256
    np.testing.assert_allclose(float(jnp.std(kernel)), math.sqrt(2 / (fan_in + fan_out)), rtol=0.05)


def test_lecun1998_uniform_bounds_and_std():
    shape = (5, 5, 16, 120)
    w = layers.lecun1998_uniform()(jax.random.key(0), shape)
    bound = 2.4 / (5 * 5 * 16)
    assert float(jnp.max(jnp.abs(w))) <= bound
    assert float(jnp.max(jnp.abs(w))) > 0.99 * bound
    np.testing.assert_allclose(float(jnp.std(w)), bound / math.sqrt(3), rtol=0.05)


def test_connection_table_conv_equals_masked_dense_conv():
    table = np.asarray(LENET5_C3_TABLE)
    assert table.shape == (6, 16)
    assert table.sum() == 60
    assert sorted(table.sum(axis=0)) == [3] * 6 + [4] * 9 + [6]
    layer = layers.ConnectionTableConv(LENET5_C3_TABLE, (5, 5))
    x = _rand((2, 14, 14, 6))
    params = layer.init(jax.random.key(0), x)["params"]
    assert sum(p.size for p in jax.tree.leaves(params)) == 1516  # C3 in LeCun et al. 1998
    # Per-map fan-in init: U(±2.4 / (25 * inputs of the map)).
    outs = np.nonzero(table.T)[0]
    bound = 2.4 / (25 * table.sum(axis=0)[outs])
    assert np.all(np.abs(np.asarray(params["kernel"])) <= bound)
    # Rebuild the dense kernel by hand; unconnected weights are zero.
    dense = np.zeros((5, 5, 6, 16))
    for n, (j, i) in enumerate(zip(*np.nonzero(table.T), strict=True)):
        dense[:, :, i, j] = params["kernel"][:, :, n]
    expected = lax.conv_general_dilated(
        x, dense, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    np.testing.assert_allclose(
        layer.apply({"params": params}, x), expected + params["bias"], rtol=1e-6, atol=1e-9
    )


def test_trainable_subsampling_by_hand():
    x = np.asarray(_rand((2, 6, 4, 3)))
    coefficient, bias = np.array([0.5, -2.0, 3.0]), np.array([0.1, 0.0, -1.0])
    layer = layers.TrainableSubsampling(2)
    y = layer.apply({"params": {"coefficient": coefficient, "bias": bias}}, x)
    expected = np.empty((2, 3, 2, 3))
    for i in range(3):
        for j in range(2):
            window = x[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2, :]
            expected[:, i, j, :] = window.mean(axis=(1, 2)) * coefficient + bias
    np.testing.assert_allclose(y, expected, rtol=1e-12)
    # Gradients: d/da = sum of window means, d/db = number of outputs per channel.
    grads = jax.grad(lambda p: jnp.sum(layer.apply({"params": p}, x)))(
        {"coefficient": jnp.asarray(coefficient), "bias": jnp.asarray(bias)}
    )
    np.testing.assert_allclose(grads["bias"], np.full(3, 2 * 3 * 2.0))
    np.testing.assert_allclose(
        grads["coefficient"], (expected - bias).sum(axis=(0, 1, 2)) / coefficient, rtol=1e-12
    )


@pytest.mark.parametrize(
    ("shape", "output_size"),
    [
        ((1, 7, 7, 2), (7, 7)),
        ((1, 8, 6, 2), (4, 3)),
        ((2, 5, 7, 3), (3, 2)),
        ((1, 1, 2, 2), (3, 3)),
    ],
)
def test_adaptive_avg_pool_matches_pytorch_rule(shape, output_size):
    x = np.asarray(_rand(shape))
    y = layers.AdaptiveAvgPool(output_size).apply({}, x)
    (h, w), (oh, ow) = shape[1:3], output_size
    expected = np.empty((shape[0], oh, ow, shape[3]))
    for i in range(oh):
        for j in range(ow):
            hs, he = math.floor(i * h / oh), math.ceil((i + 1) * h / oh)
            ws, we = math.floor(j * w / ow), math.ceil((j + 1) * w / ow)
            expected[:, i, j] = x[:, hs:he, ws:we].mean(axis=(1, 2))
    np.testing.assert_allclose(y, expected, rtol=1e-12)


def test_lrn_layer_formula():
    x = np.asarray(_rand((1, 2, 2, 6)))
    y = layers.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0).apply({}, x)
    sq = np.pad(x**2, ((0, 0), (0, 0), (0, 0), (2, 2)))
    window_sum = sum(sq[..., t : t + 6] for t in range(5))
    np.testing.assert_allclose(y, x / (2.0 + 1e-4 * window_sum) ** 0.75, rtol=1e-12)


def test_kernel_size_must_be_a_sequence():
    with pytest.raises(TypeError, match="kernel_size must be a sequence"):
        layers.Conv(4, 3).init(jax.random.key(0), jnp.zeros((1, 5, 5, 1)))


def test_conv_rank_mismatch_is_clear():
    with pytest.raises(ValueError, match="2-D kernel needs inputs"):
        layers.Conv(4, (3, 3)).init(jax.random.key(0), jnp.zeros((1, 5, 1)))


def test_check_input_size_message():
    with pytest.raises(ValueError, match=r"MyNet.*minimum input size is 32x32"):
        layers.check_input_size(jnp.zeros((1, 31, 40, 3)), model="MyNet", min_size=32)
    layers.check_input_size(jnp.zeros((1, 32, 32, 3)), model="MyNet", min_size=32)
