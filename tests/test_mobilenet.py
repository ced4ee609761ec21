"""MobileNet v1: the exact trainable count, width/resolution multipliers, SeparableBlock."""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import ops
from cnnjax.model_summary import summary
from cnnjax.models import SeparableBlock, create_model


def _shapes(module: nn.Module, x):
    return jax.eval_shape(functools.partial(module.init, train=False), jax.random.key(0), x)


def _count(tree) -> int:
    return sum(math.prod(a.shape) for a in jax.tree.leaves(tree))


def _spec(size: int, channels: int = 3, batch: int = 1) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((batch, size, size, channels), jnp.float32)


def test_mobilenet_1_0_224_has_4_231_976_trainable_parameters():
    variables = _shapes(create_model("mobilenet_v1"), _spec(224))
    assert _count(variables["params"]) == 4_231_976  # conv kernels, BN scale/offset, classifier
    assert _count(variables["batch_stats"]) == 21_888  # running mean/var: not trainable
    assert "bias" not in variables["params"]["block1"]["depthwise"]


@pytest.mark.parametrize(("alpha", "millions"), [(0.75, 2.6), (0.5, 1.3), (0.25, 0.5)])
def test_width_multiplier_scales_parameters(alpha, millions):
    """Paper Table 6 / Keras: 2.6M, 1.3M, 0.5M trainable parameters with the 1000-way head."""
    count = _count(_shapes(create_model("mobilenet_v1", alpha=alpha), _spec(32))["params"])
    assert round(count / 1e6, 1) == millions


def test_mult_adds_match_the_paper():
    """Paper Table 1/6: 569M mult-adds at 1.0-224; the resolution multiplier scales them by ρ²."""
    full = summary(create_model("mobilenet_v1"), (224, 224, 3), print_fn=None)
    assert round(full.total_macs / 1e6) == 569
    small = summary(create_model("mobilenet_v1", resolution=128), (128, 128, 3), print_fn=None)
    assert round(small.total_macs / 1e6) == 186  # paper: 186M at 1.0-128
    assert small.total_params == full.total_params  # resolution does not change parameters


def test_resolution_override_checks_the_input():
    model = create_model("mobilenet_v1", resolution=160)
    assert _shapes(model, _spec(160))["params"]["classifier"]["kernel"].shape == (1024, 1000)
    with pytest.raises(ValueError, match="160"):
        _shapes(model, _spec(224))
    with pytest.raises(ValueError, match="alpha"):
        _shapes(create_model("mobilenet_v1", alpha=0.0), _spec(32))


def test_separable_block_params_and_shape():
    block = SeparableBlock(features=24, stride=2)
    x = _spec(9, channels=16, batch=2)
    variables = _shapes(block, x)
    params = variables["params"]
    assert params["depthwise"]["kernel"].shape == (3, 3, 1, 16)
    assert params["pointwise"]["kernel"].shape == (1, 1, 16, 24)
    assert _count(params) == 9 * 16 + 16 * 24 + 2 * (16 + 24)
    out = jax.eval_shape(lambda v, x: block.apply(v, x, train=False), variables, x)
    assert out.shape == (2, 5, 5, 24)  # ceil(9 / 2)


def test_separable_block_is_depthwise_then_pointwise():
    """Against the plain ops, with identity BatchNorm (scale 1, offset 0, mean 0, var 1-eps)."""
    block = SeparableBlock(features=5, impl="xla", bn_epsilon=0.0)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 6, 6, 3)), jnp.float32)
    shapes = _shapes(block, x)
    ones = {"scale": 1.0, "bias": 0.0, "mean": 0.0, "var": 1.0}

    def fill(path, leaf):
        name = str(getattr(path[-1], "key", ""))
        if name in ones and "bn" in str(getattr(path[-2], "key", "")):
            return jnp.full(leaf.shape, ones[name], leaf.dtype)
        return jnp.asarray(rng.standard_normal(leaf.shape), leaf.dtype)

    variables = jax.tree_util.tree_map_with_path(fill, shapes)
    params = variables["params"]
    y = jax.jit(functools.partial(block.apply, train=False))(variables, x)
    hidden = jax.nn.relu(
        ops.depthwise_conv(x, params["depthwise"]["kernel"], padding=1, impl="xla")
    )
    expected = jax.nn.relu(ops.conv(hidden, params["pointwise"]["kernel"], impl="xla"))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_blocks_compose_a_custom_model():
    class TinyMobileNet(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool):
            x = SeparableBlock(16, impl="xla")(x, train)
            x = SeparableBlock(32, stride=2, impl="xla")(x, train)
            return nn.Dense(4)(ops.global_avg_pool(x, impl="xla"))

    model = TinyMobileNet()
    x = _spec(8, batch=2)
    variables = _shapes(model, x)
    variables = jax.tree.map(lambda s: jnp.full(s.shape, 0.5, s.dtype), variables)
    x = jnp.ones(x.shape, jnp.float32)
    out, updates = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))(
        variables, x
    )
    assert out.shape == (2, 4) and bool(jnp.all(jnp.isfinite(out)))
    assert set(updates["batch_stats"]) == {"SeparableBlock_0", "SeparableBlock_1"}
