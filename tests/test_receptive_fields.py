"""Receptive fields read from the jaxpr (cnnjax.receptive_fields) against the seeds' recurrence
(cnnjax.shapes.receptive_field), hand-worked cases, and the summary of every model family."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnjax import shapes
from cnnjax.model_summary import print_summary
from cnnjax.ops import avg_pool, conv, conv_transpose, max_pool
from cnnjax.receptive_fields import fields_of, input_field, jaxpr_fields


def spec(*shape):
    return jax.ShapeDtypeStruct(shape, jnp.float32)


@st.composite
def chains(draw):
    layers = []
    for _ in range(draw(st.integers(1, 5))):
        k = draw(st.integers(1, 4))
        layers.append(
            (
                draw(st.sampled_from(["conv", "max", "avg"])),
                k,
                draw(st.integers(1, 3)),
                draw(st.integers(0, k // 2)),
                draw(st.integers(1, 2)),
            )
        )
    return layers


@settings(max_examples=15, deadline=None)
@given(chains())
def test_chains_match_the_seed_recurrence(layers):
    def f(x):
        outs = []
        for kind, k, s, p, d in layers:
            if kind == "conv":
                x = conv(x, jnp.ones((k, k, 1, 1)), stride=s, padding=p, dilation=d)
            elif kind == "max":
                x = max_pool(x, k, s, p, dilation=d)
            else:
                x = avg_pool(x, k, s, p)
            outs.append(jax.nn.relu(x))
        return outs

    result = fields_of(f, spec(1, 64, 64, 1))
    expected = shapes.receptive_field(
        [(k, s, p, 1 if kind == "avg" else d) for kind, k, s, p, d in layers]
    )
    assert not result.unknown
    for got, want in zip(result.outputs, expected, strict=True):
        assert got.size == (want.size,) * 2 and got.jump == (want.jump,) * 2
        assert got.start == (want.start,) * 2


def test_residual_union_pad_slice_and_concat():
    def f(x):
        a = conv(x, jnp.ones((3, 3, 1, 1)))  # VALID: unit 0 centred at 1.5
        b = x[:, 1:-1:1, 1:-1, :]  # the same centres, size 1
        c = a + b
        shifted = jnp.pad(c, ((0, 0), (2, 0), (2, 0), (0, 0)))[:, ::2, ::2]
        cat = jnp.concatenate([c, jax.nn.relu(a)], axis=-1)
        return c, shifted, cat, jnp.mean(c, axis=(1, 2))

    c, shifted, cat, pooled = fields_of(f, spec(1, 10, 10, 1)).outputs
    assert c.size == (3, 3) and c.start == (1.5, 1.5)
    assert shifted.jump == (2, 2) and shifted.start == (-0.5, -0.5)
    assert cat.size == (3, 3)
    assert pooled is None  # global pooling ends the spatial tracking


def test_union_of_offset_branches_is_the_covering_window():
    def f(x):
        left = x[:, :-2, :, :]  # unit j sees pixel j
        right = x[:, 2:, :, :]  # unit j sees pixel j + 2
        return left + right

    (out,) = fields_of(f, spec(1, 8, 8, 1)).outputs
    assert out.size == (3, 1) and out.start == (1.5, 0.5)


def test_transposed_conv_halves_the_jump():
    def f(x):
        return conv_transpose(x, jnp.ones((2, 2, 1, 1)), stride=2)

    (out,) = fields_of(f, spec(1, 4, 4, 1)).outputs
    assert out.size == (1, 1) and out.jump == (0.5, 0.5)


def test_dense_on_channels_keeps_space_and_flatten_ends_it():
    def f(x, w):
        h = x @ w  # a per-pixel dense layer (NIN's 1x1 conv as a matmul)
        return h, h.reshape(1, -1) @ jnp.ones((4 * 4 * 3, 2))

    h, logits = fields_of(f, spec(1, 4, 4, 2), jnp.ones((2, 3))).outputs
    assert h.size == (1, 1)
    assert logits is None


# Final-feature-map fields (size, jump) of every registered model, as the previous
# tracer-based summary computed them (an independent method, identical on all 32 models).
FINAL_FIELDS = [
    ("alexnet", 195, 32),
    ("alexnet_torchvision", 195, 32),
    ("allconv_c", 27, 4),
    ("densenet121", 2071, 32),
    ("densenet169", 3351, 32),
    ("densenet201", 3863, 32),
    ("densenet264", 5399, 32),
    ("densenet_bc_100_12", 230, 4),
    ("googlenet", 715, 32),
    ("lenet5", 32, 4),
    ("mobilenet_v1", 315, 32),
    ("nin", 27, 4),
    ("resnet101", 971, 32),
    ("resnet110", 501, 4),
    ("resnet152", 1451, 32),
    ("resnet18", 435, 32),
    ("resnet20", 81, 4),
    ("resnet32", 137, 4),
    ("resnet34", 899, 32),
    ("resnet44", 193, 4),
    ("resnet50", 427, 32),
    ("resnet56", 249, 4),
    ("vgg11", 150, 32),
    ("vgg11_bn", 150, 32),
    ("vgg13", 156, 32),
    ("vgg13_bn", 156, 32),
    ("vgg16", 212, 32),
    ("vgg16_bn", 212, 32),
    ("vgg19", 268, 32),
    ("vgg19_bn", 268, 32),
    ("zfnet", 171, 32),
    ("zfnet_large", 171, 32),
]
FAST = {"allconv_c", "lenet5", "nin", "resnet20", "zfnet", "mobilenet_v1", "googlenet"}


@pytest.mark.parametrize(
    "name, size, jump",
    [
        case if case[0] in FAST else pytest.param(*case, marks=pytest.mark.slow)
        for case in FINAL_FIELDS
    ],
)
def test_every_model_final_field(name, size, jump):
    result = print_summary(name, print_fn=None)
    assert result.receptive_field == (size, size) and result.jump == (jump, jump)
    main = [r for r in result.layers if r.on_main_path and r.is_leaf and r.rf_size]
    assert main[-1].rf_size == (size, size)
    sizes = [r.rf_size[0] for r in main]
    assert sizes == sorted(sizes)  # fields only grow along the main path


def test_layers_between_windows_stay_on_the_main_path():
    """NIN's dropouts sit between conv stages: the final field flows through them (the old
    tracer-based summary dropped them from the main path)."""
    rows = {r.path: r for r in print_summary("nin", print_fn=None).layers}
    assert rows["Dropout_0"].on_main_path and rows["Dropout_1"].on_main_path


@pytest.mark.parametrize("channels", [1, 2])
def test_one_channel_convs_through_the_platform_dependent_workaround(channels):
    """A conv with one input and one output feature runs inside ``lax.platform_dependent`` (a
    ``cond``; conv.py's XLA:CPU workaround): its field must be the conv's, as for two channels
    (the walker used to treat the ``cond`` as elementwise, then fail in the max pool's rule)."""

    def two_convs(x, w):  # 3×3 conv, 2×2/2 max pool, 3×3 conv
        return conv(max_pool(conv(x, w, padding=1), 2), w, padding=1)

    x = jnp.zeros((1, 16, 16, channels))
    traced = jax.make_jaxpr(two_convs)(x, jnp.zeros((3, 3, channels, channels)))
    field = jaxpr_fields(traced, [input_field(4), None]).outputs[0]
    assert [(f.size, f.jump, f.start) for f in field.by_dim()] == [(8, 2, 1), (8, 2, 1)]
