"""DenseNet family: exact parameter counts, dense connectivity, transitions, the block API."""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import ops
from cnnjax.models import DenseBlock, Transition, create_model, get_model_info


def _shapes(module: nn.Module, x):
    return jax.eval_shape(functools.partial(module.init, train=False), jax.random.key(0), x)


def _init(module: nn.Module, x, seed: int = 0):
    """Random variables from NumPy (compiling the threefry initialisers is slow on CI)."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        if str(getattr(path[-1], "key", "")) == "var":
            return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), leaf.dtype)
        return jnp.asarray(0.3 * rng.standard_normal(leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, _shapes(module, x))


def _normal(*shape, seed: int = 0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _param_count(name: str, size: int = 32) -> int:
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    params = _shapes(create_model(name), x)["params"]
    return sum(math.prod(a.shape) for a in jax.tree.leaves(params))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("densenet121", 7_978_856),
        ("densenet169", 14_149_480),
        ("densenet201", 20_013_928),
        ("densenet264", 33_337_704),  # not in torchvision; same construction, our count
    ],
)
def test_imagenet_param_counts_match_torchvision(name, expected):
    assert _param_count(name) == expected


def test_densenet_bc_100_12_is_the_papers_0_8m():
    count = _param_count("densenet_bc_100_12")
    assert count == 769_162
    assert round(count / 1e6, 1) == 0.8  # paper Table 2: DenseNet-BC (L=100, k=12), 0.8M
    assert get_model_info("densenet_bc_100_12").default_num_classes == 10


def test_dense_block_concatenates_its_input_and_every_layer():
    block = DenseBlock(num_layers=3, growth_rate=4, impl="xla")
    x = _normal(2, 5, 5, 6)
    variables = _init(block, x)
    y = jax.jit(functools.partial(block.apply, train=False))(variables, x)
    assert y.shape == (2, 5, 5, 6 + 3 * 4)
    np.testing.assert_array_equal(y[..., :6], x)  # the block input passes through untouched
    params = variables["params"]
    # layer l sees 6 + 4l channels, bottleneck to 4k = 16, then k = 4 new maps
    assert params["denselayer3_conv1"]["kernel"].shape == (1, 1, 14, 16)
    assert params["denselayer3_conv2"]["kernel"].shape == (3, 3, 16, 4)
    assert "bias" not in params["denselayer1_conv1"]


def test_transition_compresses_and_halves():
    x = jax.ShapeDtypeStruct((2, 9, 9, 30), jnp.float32)
    out = jax.eval_shape(
        lambda v, x: Transition().apply(v, x, train=False), _shapes(Transition(), x), x
    )
    assert out.shape == (2, 4, 4, 15)  # floor(0.5 * 30) channels, floor(9 / 2) pixels
    explicit = Transition(features=7)
    out = jax.eval_shape(lambda v, x: explicit.apply(v, x, train=False), _shapes(explicit, x), x)
    assert out.shape == (2, 4, 4, 7)


def test_channel_arithmetic_of_densenet121():
    """64 + 6·32 = 256 → 128, + 12·32 = 512 → 256, + 24·32 = 1024 → 512, + 16·32 = 1024."""
    shapes = _shapes(create_model("densenet121"), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
    params = shapes["params"]
    assert params["transition1"]["conv"]["kernel"].shape == (1, 1, 256, 128)
    assert params["transition2"]["conv"]["kernel"].shape == (1, 1, 512, 256)
    assert params["transition3"]["conv"]["kernel"].shape == (1, 1, 1024, 512)
    assert params["norm5"]["scale"].shape == (1024,)
    assert params["classifier"]["kernel"].shape == (1024, 1000)


def test_minimum_input_size():
    info = get_model_info("densenet121")
    assert info.min_input_size == 29  # 29 → 15 → 8 → 4 → 2 → 1 through stem and transitions
    model = create_model("densenet121")
    ok = jax.ShapeDtypeStruct((1, 29, 29, 3), jnp.float32)
    assert _shapes(model, ok)["params"]["classifier"]["kernel"].shape == (1024, 1000)
    with pytest.raises(ValueError, match="29"):
        _shapes(model, jax.ShapeDtypeStruct((1, 28, 28, 3), jnp.float32))


def test_cifar_densenet_trains_batch_stats():
    model = create_model("densenet_bc_100_12", impl="xla", block_sizes=(2, 2, 2))
    x = _normal(2, 8, 8, 3)
    variables = _init(model, x)
    logits, updates = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))(
        variables, x
    )
    assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))
    assert set(updates["batch_stats"]) == set(variables["batch_stats"])


def test_blocks_compose_a_custom_model():
    class TinyDenseNet(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool):
            x = nn.Conv(8, (3, 3))(x)
            x = DenseBlock(num_layers=2, growth_rate=4, impl="xla")(x, train)  # 8 + 8 = 16
            x = Transition(compression=0.5, impl="xla")(x, train)  # 8 channels, half size
            x = DenseBlock(num_layers=2, growth_rate=4, bn_size=2, impl="xla")(x, train)
            return nn.Dense(5)(ops.global_avg_pool(x, impl="xla"))

    model = TinyDenseNet()
    x = _normal(2, 8, 8, 3)
    variables = _init(model, x)
    assert variables["params"]["DenseBlock_1"]["denselayer2_conv1"]["kernel"].shape == (
        1,
        1,
        12,
        8,
    )
    out = jax.jit(functools.partial(model.apply, train=False))(variables, x)
    assert out.shape == (2, 5) and bool(jnp.all(jnp.isfinite(out)))
