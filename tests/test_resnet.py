"""ResNet family: exact parameter counts, option-A shortcuts, v1.5 strides, the block API."""

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
from cnnjax.models import BottleneckBlock, ResNetBlock, create_model, get_model_info
from cnnjax.models.resnet import option_a_shortcut


def _variable_shapes(name: str, shape=(32, 32, 3), **kwargs):
    model = create_model(name, **kwargs)
    x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
    return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)


def _init(module: nn.Module, x, seed: int = 0):
    """Random variables of ``module`` from NumPy, shapes by ``eval_shape``: compiling the real
    initialisers (threefry) costs tens of seconds on a loaded 2-core CI box."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(functools.partial(module.init, train=False), jax.random.key(0), x)

    def fill(path, leaf):
        if str(getattr(path[-1], "key", "")) == "var":
            return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), leaf.dtype)
        return jnp.asarray(0.3 * rng.standard_normal(leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _normal(*shape, seed: int = 0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _count(tree) -> int:
    return sum(math.prod(a.shape) for a in jax.tree.leaves(tree))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("resnet18", 11_689_512),
        ("resnet34", 21_797_672),
        ("resnet50", 25_557_032),
        ("resnet101", 44_549_160),
        ("resnet152", 60_192_808),
    ],
)
def test_imagenet_param_counts_match_torchvision(name, expected):
    assert _count(_variable_shapes(name)["params"]) == expected


# Paper §4.2 / Table 6 gives 0.27M, 0.46M, 0.66M, 0.85M, 1.7M; we also pin our exact counts
# (3×3 convs without bias, BN scale/offset, 64→10 dense with bias, option-A shortcuts: 0 params).
@pytest.mark.parametrize(
    ("name", "paper_millions", "exact"),
    [
        ("resnet20", 0.27, 269_722),
        ("resnet32", 0.46, 464_154),
        ("resnet44", 0.66, 658_586),
        ("resnet56", 0.85, 853_018),
        ("resnet110", 1.7, 1_727_962),
    ],
)
def test_cifar_param_counts_match_the_paper(name, paper_millions, exact):
    variables = _variable_shapes(name)
    count = _count(variables["params"])
    assert count == exact
    digits = 1 if paper_millions >= 1 else 2
    assert round(count / 1e6, digits) == paper_millions
    assert get_model_info(name).default_num_classes == 10
    assert "downsample_conv" not in str(jax.tree_util.tree_structure(variables))


def test_option_a_shortcut_subsamples_and_zero_pads():
    x = _normal(2, 7, 7, 16, seed=0)
    y = option_a_shortcut(x, 32, 2)
    assert y.shape == (2, 4, 4, 32)  # ceil(7/2): the same grid as a stride-2, pad-1 3×3 conv
    np.testing.assert_array_equal(y[..., :16], x[:, ::2, ::2, :])
    np.testing.assert_array_equal(y[..., 16:], 0.0)
    assert option_a_shortcut(x, 16, 1) is x
    with pytest.raises(ValueError, match="cannot reduce"):
        option_a_shortcut(x, 8, 1)


def test_option_a_block_is_the_shortcut_when_the_residual_is_zero():
    """With bn2's scale and offset at 0, F(x) = 0 and the block is relu(shortcut(x))."""
    block = ResNetBlock(32, stride=2, shortcut="pad", impl="xla")
    x = _normal(2, 8, 8, 16, seed=1)
    variables = _init(block, x)
    assert "downsample_conv" not in variables["params"]
    bn2 = variables["params"]["bn2"]
    variables["params"]["bn2"] = jax.tree.map(jnp.zeros_like, bn2)
    y = jax.jit(functools.partial(block.apply, train=False))(variables, x)
    np.testing.assert_allclose(y, jax.nn.relu(option_a_shortcut(x, 32, 2)), atol=1e-6)


def test_projection_shortcut_where_the_shape_changes():
    params = _variable_shapes("resnet18")["params"]
    assert params["layer2_0"]["downsample_conv"]["kernel"].shape == (1, 1, 64, 128)
    assert "downsample_conv" not in params["layer1_0"]  # identity: same shape
    bottleneck = _variable_shapes("resnet50")["params"]
    # ResNet-50's first block changes channels 64 -> 256 at stride 1: projection too.
    assert bottleneck["layer1_0"]["downsample_conv"]["kernel"].shape == (1, 1, 64, 256)


def test_bottleneck_puts_the_stride_on_the_3x3_conv():
    """torchvision's "v1.5": conv1 (1×1) keeps the size, conv2 (3×3) halves it."""
    rows = {r.path: r for r in summary(create_model("resnet50"), (64, 64, 3), print_fn=None).layers}
    assert rows["layer2_0/conv1"].output_shape[1:3] == (16, 16)
    assert rows["layer2_0/conv2"].output_shape[1:3] == (8, 8)
    assert rows["layer2_0/conv2"].input_shape[1:3] == (16, 16)
    assert rows["layer2_0/conv3"].output_shape == (1, 8, 8, 512)
    # shortcut and 1×1 convs do not widen the field: resnet50 v1.5 sees 427 px (v1: 483)
    assert summary(create_model("resnet50"), (64, 64, 3), print_fn=None).receptive_field == (
        427,
        427,
    )


def test_cifar_resnet_runs_and_trains_batch_stats():
    model = create_model("resnet20", impl="xla")
    x = _normal(4, 16, 16, 3, seed=0)
    variables = _init(model, x)
    logits, updates = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))(
        variables, x
    )
    assert logits.shape == (4, 10) and bool(jnp.all(jnp.isfinite(logits)))
    before = variables["batch_stats"]["bn1"]["mean"]
    assert not np.allclose(updates["batch_stats"]["bn1"]["mean"], before)


def test_batchnorm_axis_name_is_passed_through():
    """Under vmap with the same axis_name, per-shard BN equals whole-batch BN."""
    block = ResNetBlock(8, stride=2, axis_name="shards", impl="xla")
    x = _normal(4, 6, 6, 4, seed=0)
    variables = _init(block, x)

    def run(module, xs):
        return module.apply(variables, xs, train=True, mutable=["batch_stats"])[0]

    whole = jax.jit(functools.partial(run, ResNetBlock(8, stride=2, impl="xla")))(x)
    sharded = jax.jit(jax.vmap(functools.partial(run, block), axis_name="shards"))(
        x.reshape(2, 2, 6, 6, 4)
    )
    np.testing.assert_allclose(sharded.reshape(whole.shape), whole, atol=1e-5)


def test_blocks_compose_a_custom_model():
    class TinyResNet(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool):
            x = ResNetBlock(8, impl="xla")(x, train)
            x = ResNetBlock(16, stride=2, shortcut="pad", impl="xla")(x, train)
            x = BottleneckBlock(8, stride=2, impl="xla")(x, train)  # outputs 4 * 8 channels
            return nn.Dense(3)(ops.global_avg_pool(x, impl="xla"))

    model = TinyResNet()
    x = _normal(2, 8, 8, 8, seed=0)
    variables = _init(model, x)

    def loss(params):
        out, _ = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        return jnp.sum(out**2)

    grads = jax.jit(jax.grad(loss))(variables["params"])
    assert variables["params"]["BottleneckBlock_0"]["conv3"]["kernel"].shape == (1, 1, 8, 32)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert jax.jit(functools.partial(model.apply, train=False))(variables, x).shape == (2, 3)


def test_imagenet_resnet_minimum_input_and_bad_arguments():
    assert get_model_info("resnet18").min_input_size == 1
    shapes = _variable_shapes("resnet18", shape=(1, 1, 3))  # every stride-2 layer pads
    assert _count(shapes["params"]) == 11_689_512
    with pytest.raises(ValueError, match="stem"):
        _variable_shapes("resnet18", stem="mnist")
    with pytest.raises(ValueError, match="same length"):
        _variable_shapes("resnet18", stage_widths=(64, 128))
