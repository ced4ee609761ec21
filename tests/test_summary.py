"""cnnjax.summary: totals against independent counts, receptive fields, the table."""

from __future__ import annotations

import functools
import math
import pathlib
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import shapes
from cnnjax.layers import Conv, MaxPool
from cnnjax.model_summary import print_summary, summary
from cnnjax.models import LENET5_C3_TABLE, create_model, list_models

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs" / "architectures.md"


def _variables(model, shape):
    x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
    return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)


def _xla_flops(model, shape) -> float:
    x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
    compiled = (
        jax.jit(functools.partial(model.apply, train=False))
        .lower(_variables(model, shape), x)
        .compile()
    )
    cost = compiled.cost_analysis()
    return float((cost if isinstance(cost, dict) else cost[0])["flops"])


@pytest.mark.parametrize(
    ("name", "shape", "overrides"),
    [
        ("lenet5", (32, 32, 1), {}),
        ("resnet18", (32, 32, 3), {}),
        ("vgg11", (32, 32, 3), {}),
        ("googlenet", (96, 96, 3), {}),  # auxiliary heads do not run in inference
        ("densenet_bc_100_12", (16, 16, 3), {"block_sizes": (2, 2, 2)}),
        ("mobilenet_v1", (32, 32, 3), {"alpha": 0.25}),
    ],
)
def test_param_total_is_the_tree_sum_exactly(name, shape, overrides):
    model = create_model(name, **overrides)
    result = summary(model, shape, print_fn=None)
    variables = _variables(model, shape)
    assert result.total_params == sum(
        math.prod(a.shape) for a in jax.tree.leaves(variables["params"])
    )
    others = [a for k, col in variables.items() if k != "params" for a in jax.tree.leaves(col)]
    assert result.non_trainable == sum(math.prod(a.shape) for a in others)
    assert sum(r.params for r in result.layers) == result.total_params


# XLA's flops = 2 * (MACs over real pixels) + elementwise work the summary does not count, so
# 1 <= flops / (2 * macs_valid) <= 1 + tol. Measured: 1.0009 (VGG-11), 1.0070 (ResNet-18),
# 1.037 (LeNet-5, whose 5x5 convs over 1-6 maps are cheap next to its tanh/subsampling).
XLA_TOLERANCE = {"vgg11": 0.005, "resnet18": 0.015, "lenet5": 0.05}


@pytest.mark.parametrize(
    ("name", "shape", "overrides"),
    [
        ("lenet5", (32, 32, 1), {}),
        ("resnet18", (32, 32, 3), {}),
        ("vgg11", (32, 32, 3), {"head_width": 256}),
    ],
)
def test_macs_agree_with_xla_cost_analysis(name, shape, overrides):
    model = create_model(name, impl="xla", **overrides)
    result = summary(model, shape, print_fn=None)
    flops = _xla_flops(model, shape)
    counted = result.total_macs_valid
    if name == "lenet5":
        # C3 runs as a dense conv with zero weights for the unconnected map pairs: XLA counts
        # them, the summary (rightly) does not. 10x10 outputs, 5x5 kernels.
        unconnected = sum(not c for row in LENET5_C3_TABLE for c in row)
        assert unconnected == 36
        counted += 10 * 10 * 5 * 5 * unconnected
        assert result.total_macs == result.total_macs_valid  # LeNet-5 pads nothing
    else:
        assert result.total_macs > result.total_macs_valid  # 3x3 convs with padding 1
    ratio = flops / (2 * counted)
    assert 1.0 <= ratio <= 1.0 + XLA_TOLERANCE[name], f"{name}: XLA / (2 * MACs) = {ratio:.4f}"


def test_conv_and_dense_macs_follow_the_formula():
    rows = {r.path: r for r in summary(create_model("lenet5"), (32, 32, 1), print_fn=None).layers}
    assert rows["C1"].macs == 28 * 28 * 5 * 5 * 1 * 6  # prod(out) * prod(kernel) * C_in * C_out
    assert rows["C1"].params == shapes.conv_param_count(5, 1, 6)
    assert rows["C3"].macs == 10 * 10 * 5 * 5 * 60  # only the 60 connected map pairs
    assert rows["F6"].macs == 120 * 84
    assert rows["S2"].macs == 0


def test_valid_macs_skip_padding_taps():
    """A 3x3/1 pad-1 conv on a 2x2 map: each output sees 2x2 of its 3x3 taps."""

    class One(nn.Module):
        @nn.compact
        def __call__(self, x):
            return Conv(4, (3, 3), padding=1)(x)

    row = next(r for r in summary(One(), (2, 2, 3), print_fn=None).layers if r.is_leaf)
    assert row.macs == 4 * 9 * 3 * 4
    assert row.macs_valid == 4 * 4 * 3 * 4


def test_stacked_3x3_convs_see_3_5_7():
    """The seeds: two 3x3 convs see 5x5, three see 7x7; a 2x2/2 pool then adds 1 and doubles
    the jump."""

    class Stack(nn.Module):
        @nn.compact
        def __call__(self, x):
            for _ in range(3):
                x = jax.nn.relu(Conv(4, (3, 3), padding=1)(x))
            return MaxPool((2, 2), stride=2)(x)

    result = summary(Stack(), (16, 16, 1), print_fn=None)
    assert [r.rf_size for r in result.layers if r.is_leaf] == [(3, 3), (5, 5), (7, 7), (8, 8)]
    assert [r.rf_jump[0] for r in result.layers if r.is_leaf] == [1, 1, 1, 2]
    assert result.receptive_field == (8, 8) and result.jump == (2, 2)
    assert all(r.on_main_path for r in result.layers if r.is_leaf)


def test_vgg16_fields_match_the_seed_recurrence():
    result = print_summary("vgg16", print_fn=None)
    main = [r for r in result.layers if r.on_main_path and r.type_name in ("Conv", "MaxPool")]
    layers = [(3, 1, 1) if r.type_name == "Conv" else (2, 2, 0) for r in main]
    expected = shapes.receptive_field(layers)
    assert [r.rf_size[0] for r in main] == [f.size for f in expected]
    assert [r.rf_size[0] for r in main][:6] == [3, 5, 6, 10, 14, 16]
    assert result.receptive_field == (212, 212) and result.jump == (32, 32)


def test_residual_shortcuts_are_off_the_main_path():
    result = print_summary("resnet18", print_fn=None)
    rows = {r.path: r for r in result.layers}
    assert result.receptive_field == (435, 435)
    shortcut = rows["layer2_0/downsample_conv"]
    assert not shortcut.on_main_path
    assert shortcut.rf_size == (43, 43) and shortcut.rf_jump == (8, 8)  # block input, 1x1/2
    assert rows["layer2_0/conv2"].on_main_path and rows["layer2_0/conv2"].rf_size == (67, 67)
    # the block's output takes the larger (residual) field
    block = summary(create_model("resnet18"), (224, 224, 3), depth=1, print_fn=None)
    assert {r.path: r for r in block.layers}["layer2_0"].rf_size == (67, 67)


def test_concatenations_take_the_largest_field():
    """DenseNet-BC-100: a 3x3 stem then 16 layers per block, each adding one 3x3 conv."""
    result = print_summary("densenet_bc_100_12", print_fn=None, depth=1)
    rows = {r.path: r for r in result.layers}
    assert rows["denseblock1"].rf_size == (3 + 16 * 2,) * 2
    assert rows["transition1"].rf_size == (36, 36)  # 1x1 conv, then 2x2/2 average pool
    assert result.receptive_field == (36 + 16 * 2 * 2 + 2 + 16 * 2 * 4,) * 2


def test_table_contents_and_print_summary():
    printed = []
    result = print_summary("lenet5", print_fn=printed.append)
    assert printed == [result.table] and str(result) == result.table
    table = result.table
    assert table.startswith("Model: lenet5 (LeNet5)")
    for text in (
        "Layer (type)",
        "Output shape",
        "C1 (Conv)",
        "(1, 28, 28, 6)",
        "117,600",
        "C3 (ConnectionTableConv)",
        "Total params: 60,850",
        "MACs per example: 326,520",
        "Receptive field of the last feature map: 32 px, jump 4 px",
    ):
        assert text in table, text
    assert re.search(r"C5 \(Conv\)\s+\(1, 1, 1, 120\)\s+48,120\s+48,000\s+32/4 \*", table)


def test_batch_size_and_depth():
    model = create_model("resnet20")
    one = summary(model, (32, 32, 3), print_fn=None)
    four = summary(model, (32, 32, 3), batch_size=4, print_fn=None)
    assert four.total_macs == one.total_macs  # per example
    assert four.layers[0].output_shape[0] == 4
    blocks = summary(model, (32, 32, 3), depth=1, print_fn=None).table
    assert "layer1_0 (ResNetBlock)" in blocks and "layer1_0/conv1" not in blocks


def test_summary_of_big_models_allocates_nothing():
    result = print_summary("vgg19", print_fn=None)  # 143.7M parameters, shapes only
    assert result.total_params == 143_667_240


def test_docs_table_lists_every_model():
    text = DOCS.read_text()
    names = set(re.findall(r"^\| `([a-z0-9_]+)` \|", text, flags=re.M))
    assert names == set(list_models())
    for name, count in (("lenet5", 60_850), ("resnet20", 269_722), ("mobilenet_v1", 4_231_976)):
        assert re.search(rf"^\| `{name}` \|[^\n]*\| {count:,} \|", text, flags=re.M), name


def test_docs_compose_your_own_example_runs(capsys):
    text = DOCS.read_text()
    section = text.split("## Compose your own", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    namespace: dict = {}
    exec(compile(code, str(DOCS), "exec"), namespace)
    out = capsys.readouterr().out
    assert "(8, 10)" in out and "Receptive field of the last feature map" in out
    assert namespace["logits"].shape == (8, 10)
    assert np.all(np.isfinite(np.asarray(namespace["logits"])))
    assert namespace["result"].total_params == sum(
        math.prod(a.shape) for a in jax.tree.leaves(namespace["variables"]["params"])
    )


def test_top_level_summary_api():
    """``cnnjax.summary(model, input_shape)`` and friends are reachable from the top level."""
    import cnnjax

    model = cnnjax.create_model("lenet5", num_classes=10)
    result = cnnjax.summary(model, (32, 32, 1), print_fn=lambda *_: None)
    assert result.total_params == 60_850  # LeNet-5 with a 10-way softmax output
    assert "lenet5" in cnnjax.list_models()
    assert cnnjax.print_summary is print_summary
