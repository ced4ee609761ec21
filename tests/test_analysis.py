"""cnnjax.analysis on any model: a pure function over cnnjax.ops, a Linen module, an NNX module.

The ops-only LeNet-5 (tests/ops_lenet5.py) and the layer-built one (cnnjax.models.LeNet5) are
the same network: the summary must give the same numbers for both, and every picture of
``cnnjax viz`` must work on each, from Python and from the command line.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import ops, viz
from cnnjax.analysis import (
    deconvnet,
    effective_receptive_field,
    feature_maps,
    spatial_layers,
    summary,
)
from cnnjax.cli import viz as viz_command
from cnnjax.models import FunctionalModel, create_model, get_model_info

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import ops_lenet5

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = f"{ROOT / 'tests' / 'ops_lenet5.py'}:lenet5"
SHAPE = (32, 32, 1)
NUMBERS = ("macs", "macs_valid", "params", "rf_size", "rf_jump", "rf_start", "output_shape")


def _numbers(result):
    rows = [tuple(getattr(r, k) for k in NUMBERS) for r in result.layers if r.is_leaf]
    totals = (result.total_params, result.total_macs, result.total_macs_valid)
    return rows, totals, result.receptive_field, result.jump


def _pure_params():
    return ops_lenet5.init(jax.random.key(0), SHAPE)


def test_ops_only_lenet5_has_the_layer_built_summary_numbers():
    """Same MACs, parameters and receptive fields, row by row (the issue: MACs and fields of an
    ops-only model were missing)."""
    layers = summary(create_model("lenet5"), SHAPE, print_fn=None)
    pure = summary(ops_lenet5.apply, SHAPE, params=_pure_params(), print_fn=None)
    wrapped = summary(ops_lenet5.lenet5(), SHAPE, print_fn=None)
    assert _numbers(pure) == _numbers(layers) == _numbers(wrapped)
    assert (
        layers.total_macs == 28 * 28 * 25 * 6 + 10 * 10 * 25 * 60 + 25 * 16 * 120 + 120 * 84 + 840
    )
    assert layers.receptive_field == (32, 32) and layers.jump == (4, 4)
    assert [r.path for r in pure.layers] == [
        "conv_0", "pool_0", "conv_1", "pool_1", "conv_2", "dense_0", "dense_1"
    ]  # fmt: skip
    assert pure.layers[2].param_paths == ("C3/kernel", "C3/bias")


def test_ops_only_lenet5_is_the_same_function():
    model = create_model("lenet5")
    variables = model.init(jax.random.key(1), jnp.zeros((1, *SHAPE)), train=False)
    x = jax.random.normal(jax.random.key(2), (3, *SHAPE))
    np.testing.assert_allclose(
        ops_lenet5.apply(variables["params"], x), model.apply(variables, x, train=False), 1e-12
    )


def test_nnx_model_summary_matches_linen():
    linen = summary(create_model("lenet5"), SHAPE, print_fn=None)
    nnx = summary(create_model("lenet5", api="nnx"), SHAPE, print_fn=None)
    assert (nnx.total_params, nnx.total_macs, nnx.receptive_field, nnx.jump) == (
        linen.total_params,
        linen.total_macs,
        linen.receptive_field,
        linen.jump,
    )


def test_nnx_model_has_the_linen_rows_names_and_feature_maps():
    """A derived NNX model is analysed as its Linen definition: same row names, same maps."""
    from cnnjax.nnx import to_linen

    model = create_model("lenet5", api="nnx")
    linen = create_model("lenet5")
    linen_rows = [r.path for r in summary(linen, SHAPE, print_fn=None).layers]
    assert [r.path for r in summary(model, SHAPE, print_fn=None).layers] == linen_rows
    x = np.asarray(jax.random.normal(jax.random.key(4), SHAPE))  # one image
    got = feature_maps(model, None, x, ["C1", "C3"])
    want = feature_maps(linen, to_linen(model), x, ["C1", "C3"])
    for path in ("C1", "C3"):
        np.testing.assert_array_equal(got[path], want[path])


def test_batch_norm_model_through_nnx_counts_statistics_apart():
    linen = summary(create_model("resnet20"), (16, 16, 3), print_fn=None)
    nnx = summary(create_model("resnet20", api="nnx", input_shape=(16, 16, 3)), (16, 16, 3))
    assert (nnx.total_params, nnx.non_trainable, nnx.total_macs) == (
        linen.total_params,
        linen.non_trainable,
        linen.total_macs,
    )
    assert nnx.receptive_field == linen.receptive_field


@pytest.mark.parametrize(
    ("stride", "padding", "dilation", "groups"),
    [(1, 0, 1, 1), (2, 1, 1, 1), (1, 2, 2, 1), (1, 1, 1, 4), (2, "SAME", 1, 2)],
)
def test_conv_macs_rule_from_the_equation(stride, padding, dilation, groups):
    """``prod(out_spatial) * prod(kernel) * C_in/groups * C_out`` for any conv geometry."""
    kernel = jnp.zeros((3, 3, 8 // groups, 4))

    def apply(params, x):
        return ops.conv(
            x, params["k"], stride=stride, padding=padding, dilation=dilation, groups=groups
        )

    result = summary(apply, (9, 9, 8), params={"k": kernel}, print_fn=None)
    out = result.output_shape
    assert result.total_macs == out[1] * out[2] * 9 * (8 // groups) * 4
    assert result.total_macs_valid <= result.total_macs
    assert result.layers[0].type_name == "conv"


def test_pools_cost_nothing_and_dense_costs_in_times_out():
    def apply(params, x):
        x = ops.max_pool(x, 2)
        return x.reshape(x.shape[0], -1) @ params["w"]

    result = summary(apply, (4, 4, 3), params={"w": jnp.zeros((12, 5))}, print_fn=None)
    assert [(r.path, r.macs) for r in result.layers] == [("max_pool_0", 0), ("dense_0", 60)]
    assert result.receptive_field == (2, 2)


def test_unused_parameters_are_listed_and_counted():
    params = {"used": jnp.zeros((3, 3, 1, 2)), "spare": {"w": jnp.zeros((7,))}}
    result = summary(lambda p, x: ops.conv(x, p["used"]), (5, 5, 1), params=params, print_fn=None)
    assert result.total_params == 25
    assert [(r.path, r.type_name, r.params) for r in result.layers][-1] == (
        "spare",
        "not called",
        7,
    )


def test_jitted_apply_is_unwrapped():
    params = _pure_params()
    plain = summary(ops_lenet5.apply, SHAPE, params=params, print_fn=None)
    jitted = summary(jax.jit(ops_lenet5.apply), SHAPE, params=params, print_fn=None)
    assert _numbers(plain) == _numbers(jitted)


def _models():
    """(name, model, variables) for the three kinds of model, all LeNet-5."""
    linen = create_model("lenet5")
    variables = linen.init(jax.random.key(0), jnp.zeros((1, *SHAPE)), train=False)
    functional = ops_lenet5.lenet5()
    fvariables = functional.init(jax.random.key(0), jnp.zeros((1, *SHAPE)))
    return [
        ("linen", linen, variables, variables["params"]),
        ("functional", functional, fvariables, fvariables["params"]),
        ("pure", ops_lenet5.apply, _pure_params(), _pure_params()),
        ("nnx", create_model("lenet5", api="nnx"), None, None),
    ]


@pytest.mark.parametrize("kind", ["linen", "functional", "pure", "nnx"])
def test_every_viz_picture_on_every_kind_of_model(kind, tmp_path):
    """filters, features, deconv and receptive-field: the computations and the PNGs."""
    _, model, variables, params = next(m for m in _models() if m[0] == kind)
    if kind == "nnx":
        from flax import nnx

        params = nnx.split(model, nnx.Param, ...)[1]
    rows = spatial_layers(model, SHAPE, params=variables)
    assert len(rows) == 5  # C1, S2, C3, S4, C5 (or their op rows)
    kernel = viz_command._first_kernel(params, rows)
    assert kernel.shape == (5, 5, 1, 6)
    assert viz.plot_filters(kernel, tmp_path / "filters.png").is_file()
    x = np.asarray(jax.random.normal(jax.random.key(3), (4, *SHAPE)), np.float32)
    paths = viz_command._default_feature_layers(rows)
    maps = feature_maps(model, variables, x[0], paths)
    assert [m.shape for m in maps.values()] == [(28, 28, 6), (10, 10, 16), (1, 1, 120)]
    assert viz.plot_feature_maps(maps, x[0], tmp_path / "features.png").is_file()
    row = viz_command._layer_row(rows, None)
    assert row.rf_size == (14, 14)  # C3: the deepest conv with a map larger than 1x1
    results = deconvnet(model, variables, x, row.path, top=2)
    assert all(np.abs(r["projection"]).sum() > 0 for r in results)
    assert viz.plot_deconv(results, x, row, tmp_path / "deconv.png").is_file()
    erf, position = effective_receptive_field(model, variables, x, row.path)
    (y0, y1), (x0, x1) = viz.field_box(row, position)
    nonzero = np.argwhere(erf > 0)
    assert nonzero[:, 0].min() >= np.floor(y0) and nonzero[:, 0].max() < np.ceil(y1)
    assert nonzero[:, 1].min() >= np.floor(x0) and nonzero[:, 1].max() < np.ceil(x1)
    out = tmp_path / "rf.png"
    assert viz.plot_receptive_field(x[0], erf, row, position, out).is_file()


def test_pure_and_layer_built_feature_maps_agree():
    """Same parameters, same pictures: a pure row's output is its module's after the squashing
    function (the row holds the elementwise work that follows the op)."""
    _, linen, variables, _ = _models()[0]
    x = np.asarray(jax.random.normal(jax.random.key(4), (2, *SHAPE)), np.float32)
    pure = feature_maps(ops_lenet5.apply, variables["params"], x[0], ["conv_1"])["conv_1"]
    layer = feature_maps(linen, variables, x[0], ["C3"])["C3"]
    np.testing.assert_allclose(pure, ops_lenet5.squash(layer), rtol=1e-6, atol=1e-12)


def test_unknown_pure_layer_lists_the_rows():
    with pytest.raises(ValueError, match="choose one of: conv_0, pool_0"):
        feature_maps(ops_lenet5.apply, _pure_params(), np.zeros(SHAPE), ["conv_9"])


def test_analysis_imports_no_training_or_data_code():
    code = (
        "import sys, cnnjax.analysis, cnnjax.model_summary, cnnjax.receptive_fields\n"
        "bad = [m for m in sys.modules if m.startswith(('cnnjax.train', 'cnnjax.data'))]\n"
        "assert not bad, bad"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_functional_model_needs_a_dict():
    bad = FunctionalModel(lambda key, shape: [jnp.zeros(3)], lambda p, x: x)
    with pytest.raises(TypeError, match="dict of parameters"):
        bad.init(jax.random.key(0), jnp.zeros((1, 4, 4, 1)))


def test_registry_resolves_every_form_of_pure_model(tmp_path):
    """``file.py:attr`` naming a factory, a FunctionalModel instance or an init/apply pair."""
    source = tmp_path / "pure_nets.py"
    source.write_text(
        "import sys, types\n"
        f"sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
        "import ops_lenet5\n"
        "from cnnjax.models import FunctionalModel\n"
        "factory = ops_lenet5.lenet5\n"
        "instance = FunctionalModel(ops_lenet5.init, ops_lenet5.apply)\n"
        "pair = types.SimpleNamespace(init=ops_lenet5.init, apply=ops_lenet5.apply)\n"
        "pair.input_shape = (32, 32, 1)\n"
    )
    for attr in ("factory", "instance", "pair"):
        model = create_model(f"{source}:{attr}", num_classes=10)
        assert isinstance(model, FunctionalModel)
        result = summary(model, SHAPE, print_fn=None)
        assert (result.total_params, result.total_macs) == (60850, 326520)
    assert get_model_info(f"{source}:pair").input_shape == SHAPE
    with pytest.raises(ValueError, match="has no callable 'nothing'"):
        create_model(f"{source}:nothing")


def _cli(*argv, cwd):
    exe = shutil.which("cnnjax")
    command = [exe] if exe else [sys.executable, "-m", "cnnjax.cli"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [*command, *argv], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_cli_summary_train_and_viz_of_a_pure_model(tmp_path):
    """``module:attr`` naming a FunctionalModel factory: summary, a 2-step run, every picture."""
    table = _cli("summary", EXAMPLE, cwd=tmp_path)
    assert "conv_1 (conv)" in table and "Total params: 60,850" in table
    assert "MACs per example: 326,520" in table
    workdir = tmp_path / "run"
    _cli(
        "train", EXAMPLE, "--dataset", "digits", "--workdir", str(workdir), "--batch-size",
        "32", "--set", "num_steps=2", "--parallel", "none", "--quiet", cwd=tmp_path,
    )  # fmt: skip
    for what in ("filters", "features", "deconv", "receptive-field"):
        out = tmp_path / f"{what}.png"
        printed = _cli("viz", what, str(workdir), "--output", str(out), cwd=tmp_path)
        assert printed.splitlines()[0] == str(out) and out.stat().st_size > 0
    assert "conv_1 unit" in printed  # the receptive-field picture names the pure row


def test_summary_result_rows_are_frozen():
    result = summary(ops_lenet5.apply, SHAPE, params=_pure_params(), print_fn=None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.layers[0].macs = 0
