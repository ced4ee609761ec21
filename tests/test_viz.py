"""``cnnjax viz``: every picture written for LeNet-5 and a ResNet, PNG sizes, the numbers
they print, and the deconvnet against an explicit max_unpool / ReLU / conv_transpose chain."""

from __future__ import annotations

import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax.cli import main as cli_main
from cnnjax.interpret import deconvnet, effective_receptive_field
from cnnjax.layers import Conv, MaxPool
from cnnjax.model_summary import print_summary
from cnnjax.models import create_model, get_model_info, list_models
from cnnjax.ops import conv_transpose, max_pool, max_unpool
from cnnjax.viz import main as viz_main


def png_size(path) -> tuple[int, int]:
    """(width, height) from the PNG header."""
    with open(path, "rb") as f:
        data = f.read(24)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_edges_subprocess_prints_the_seeds_numbers(tmp_path):
    out = tmp_path / "edges.png"
    done = subprocess.run(
        [sys.executable, "-m", "cnnjax.cli", "viz", "edges", "--output", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = done.stdout.strip().splitlines()
    assert lines[0] == str(out)
    assert [line.split() for line in lines[1:]] == [["0", "30", "30", "0"]] * 4
    assert png_size(out) == (1100, 400)


@pytest.mark.parametrize("what", ["edges", "filters", "features", "deconv", "receptive-field"])
def test_each_viz_subcommand_has_help(capsys, what):
    with pytest.raises(SystemExit) as exit_info:
        viz_main([what, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: cnnjax viz {what}" in out and "--output" in out


def test_bad_workdir_is_one_line_exit_2(tmp_path, capsys):
    assert cli_main(["viz", "filters", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config.json does not exist" in err[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One-epoch LeNet-5 on the embedded digits and ResNet-20 on 16×16 synthetic images."""
    root = tmp_path_factory.mktemp("viz_runs")
    common = ["--epochs", "1", "--batch-size", "256", "--parallel", "none", "--quiet"]
    lenet, resnet = root / "lenet5", root / "resnet20"
    assert cli_main(["train", "lenet5", "--workdir", str(lenet), *common]) == 0
    argv = ["train", "resnet20", "--dataset", "synthetic", "--set", "image_size=16"]
    assert cli_main([*argv, "--workdir", str(resnet), *common]) == 0
    return {"lenet5": lenet, "resnet20": resnet}


EXPECTED_PNG = {  # (width, height) in pixels (100 dpi; the older plot_filters 110)
    ("lenet5", "filters"): (330, 220),  # 6 kernels: 3 x 2 tiles at 110 dpi
    ("lenet5", "features"): (1870, 390),  # C1, C3, C5: 3 rows of input + 16 channels
    ("lenet5", "deconv"): (750, 1000),  # 4 projections
    ("lenet5", "receptive-field"): (900, 450),
    ("resnet20", "filters"): (440, 440),  # 16 kernels: 4 x 4
    ("resnet20", "features"): (1870, 390),
    ("resnet20", "deconv"): (750, 1000),
    ("resnet20", "receptive-field"): (900, 450),
}


@pytest.mark.parametrize("model, what", sorted(EXPECTED_PNG))
def test_viz_writes_each_png(runs, tmp_path, capsys, model, what):
    out = tmp_path / f"{what}.png"
    assert cli_main(["viz", what, str(runs[model]), "--output", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[0] == str(out)
    assert png_size(out) == EXPECTED_PNG[(model, what)]
    if what == "receptive-field":
        # the numbers are the summary table's for that layer
        layer, size, jump = re.match(
            r"(\S+) unit \(\d+, \d+\): RF \((\d+), \d+\) jump \((\d+), \d+\)", printed[1]
        ).groups()
        shape = (32, 32, 1) if model == "lenet5" else (16, 16, 3)
        row = {r.path: r for r in print_summary(model, shape, print_fn=None).layers}[layer]
        assert row.rf_size[0] == int(size) and row.rf_jump[0] == int(jump)


def test_features_chosen_layers_and_bad_layer(runs, tmp_path, capsys):
    out = tmp_path / "f.png"
    argv = ["viz", "features", str(runs["lenet5"]), "--index", "3", "--output", str(out)]
    assert cli_main([*argv, "--layers", "C1", "S2"]) == 0
    assert png_size(out) == (1870, 260)
    capsys.readouterr()
    assert cli_main(["viz", "deconv", str(runs["lenet5"]), "--layer", "nope"]) == 2
    assert "no spatial layer 'nope'" in capsys.readouterr().err


class _Small(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(Conv(3, (3, 3), padding=1, name="conv1")(x))
        x = MaxPool((2, 2), name="pool1")(x)
        return nn.relu(Conv(4, (3, 3), name="conv2")(x))


def test_deconvnet_is_unpool_relu_transposed_filters():
    """Zeiler & Fergus by hand: rectify, transposed conv2 filters, unpool with the switches,
    rectify, transposed conv1 filters, equals the generic jaxpr deconvnet."""
    model = _Small()
    x = jax.random.normal(jax.random.key(0), (2, 10, 10, 1), jnp.float32)
    variables = model.init(jax.random.key(1), x)
    (result,) = deconvnet(model, variables, np.asarray(x), "conv2", top=1)

    p = variables["params"]
    h1 = nn.relu(
        jax.lax.conv_general_dilated(
            x,
            p["conv1"]["kernel"],
            (1, 1),
            [(1, 1), (1, 1)],
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        + p["conv1"]["bias"]
    )
    _, switches = max_pool(h1, 2, return_indices=True)
    y = np.asarray(model.apply(variables, x))
    signal = np.zeros_like(y)
    n, (i, j), c = result["image"], result["position"], result["channel"]
    signal[n, i, j, c] = y[n, i, j, c]
    r = nn.relu(jnp.asarray(signal))  # the layer's own ReLU, reversed
    r = conv_transpose(r, p["conv2"]["kernel"].swapaxes(-1, -2))  # transposed filters
    r = max_unpool(r, switches, 2, output_shape=(10, 10))  # switches
    r = nn.relu(r)
    r = conv_transpose(r, p["conv1"]["kernel"].swapaxes(-1, -2), padding=1)
    np.testing.assert_allclose(result["projection"], np.asarray(r[n]), rtol=1e-5, atol=1e-6)
    assert np.abs(result["projection"]).sum() > 0


def test_effective_field_lies_inside_the_theoretical_box():
    model = _Small()
    x = jax.random.normal(jax.random.key(0), (3, 16, 16, 1), jnp.float32)
    variables = model.init(jax.random.key(1), x)
    erf, position = effective_receptive_field(model, variables, np.asarray(x), "conv2")
    assert position == (3, 3)  # the centre of the 6x6 map
    # conv3/pad1 -> pool2 -> conv3: size 8, jump 2, unit 0 sees [-1, 7), so unit 3 sees [5, 13)
    inside = np.zeros_like(erf, bool)
    inside[5:13, 5:13] = True
    assert erf[~inside].max() == 0 and erf[inside].sum() > 0


FAST_VIZ = {"lenet5", "allconv_c", "nin"}


@pytest.mark.parametrize(
    "name",
    [n if n in FAST_VIZ else pytest.param(n, marks=pytest.mark.slow) for n in list_models()],
)
def test_every_classification_model_features_deconv_and_erf(name):
    """Random weights at the registry's test shape: the default layers work, the deconvnet
    projections are non-zero and the effective field lies inside the theoretical box."""
    from cnnjax import interpret
    from cnnjax.cli.viz import _default_feature_layers, _layer_row
    from cnnjax.viz import field_box

    shape = get_model_info(name).test_input_shape
    model = create_model(name, num_classes=10)
    x = np.asarray(jax.random.normal(jax.random.key(0), (2, *shape)), np.float32)
    variables = model.init(jax.random.key(1), jnp.asarray(x[:1]), train=False)
    rows = interpret.spatial_layers(model, shape)
    row = _layer_row(rows, None)
    maps = interpret.feature_maps(model, variables, x[0], _default_feature_layers(rows))
    assert all(m.ndim == 3 for m in maps.values())
    results = interpret.deconvnet(model, variables, x, row.path, top=2)
    assert all(np.abs(r["projection"]).sum() > 0 for r in results)
    erf, position = interpret.effective_receptive_field(model, variables, x, row.path)
    (y0, y1), (x0, x1) = field_box(row, position)
    nonzero = np.argwhere(erf > 0)
    assert nonzero[:, 0].min() >= np.floor(y0) and nonzero[:, 0].max() < np.ceil(y1)
    assert nonzero[:, 1].min() >= np.floor(x0) and nonzero[:, 1].max() < np.ceil(x1)
