"""``cnnjax bench ops|train|data`` (issue 9, item 2): help, smoke runs in tiny mode, errors.

No timing is asserted (CI machines are noisy); the tests check what is reported and that the
PyTorch twins are the same networks (parameter counts).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from cnnjax.cli import main
from cnnjax.models import create_model


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cnnjax.cli", *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    ("suite", "expected"),
    [
        ("ops", ["usage: cnnjax bench ops", "--repeats", "ms", "default 8"]),
        ("train", ["usage: cnnjax bench train", "MODEL", "img/s", "--precision", "default 128"]),
        ("data", ["usage: cnnjax bench data", "DATASET", "img/s", "--padding", "default 20"]),
    ],
)
def test_bench_suite_help_is_its_own(capsys, suite, expected):
    # Used to print the parent `cnnjax bench` help (the suite was forwarded with add_help=False).
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", suite, "--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for text in expected:
        assert text in out, text


def test_bench_train_tiny_reports_every_variant_and_appends_markdown(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CNNJAX_PROGRESS_DELAY", "0")  # the bar shows however short the run
    path, md = tmp_path / "train.json", tmp_path / "BENCH.md"
    md.write_text("# Benchmarks\n")
    argv = ["bench", "train", "lenet5", "--tiny", "--dtype", "float32", "--json", str(path)]
    assert main([*argv, "--append-md", str(md)]) == 0
    result = json.loads(path.read_text())
    rows = {r["variant"]: r for r in result["results"]}
    assert {"jax custom float32", "jax xla float32"} <= rows.keys()
    for row in rows.values():
        assert row["img_per_s"] > 0 and row["step_ms"] > 0 and row["compile_s"] > 0
    custom = rows["jax custom float32"]
    assert custom["custom_over_xla"] == pytest.approx(
        custom["step_ms"] / rows["jax xla float32"]["step_ms"]
    )
    assert custom["memory_mb"] is None or custom["memory_mb"] > 0
    torch_rows = [r for r in rows.values() if r["framework"] == "torch"]
    if torch_rows:  # torch installed: the LeNet-5 twin ran, and the ratio is filled in
        assert custom["jax_over_torch"] == pytest.approx(
            custom["step_ms"] / torch_rows[0]["step_ms"]
        )
    meta = result["meta"]
    assert meta["model"] == "lenet5" and meta["batch"] == 4 and meta["image_shape"] == [32, 32, 1]
    assert meta["backend"] == jax.default_backend() and "load_avg" in meta
    captured = capsys.readouterr()
    out = captured.out
    assert "img/s" in out and "ms/step" in out and "jax custom float32" in out
    assert "compiling" not in out and "timing" not in out  # status lines: stderr, not stdout
    assert "compiling 2 JAX variant(s)" in captured.err and "compiled in" in captured.err
    assert re.search(r"bench train lenet5: +\d+%.*\| \d+/\d+ \[\d\d:\d\d<\d\d:\d\d", captured.err)
    text = md.read_text()
    assert text.startswith("# Benchmarks\n")
    assert "## bench train lenet5" in text and "| variant | img/s |" in text
    assert "--tiny" in text  # the command is recorded


def test_bench_data_tiny_host_and_device(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CNNJAX_PROGRESS_DELAY", "0")
    path = tmp_path / "data.json"
    argv = ["bench", "data", "digits", "--tiny", "--workers", "0,2", "--json", str(path)]
    assert main(argv) == 0
    result = json.loads(path.read_text())
    assert [(r["variant"], r["workers"]) for r in result["results"]] == [
        ("host augmentation", 0),
        ("host augmentation", 2),
        ("device augmentation", 0),
        ("device augmentation", 2),
    ]
    assert result["results"][0]["vs_first"] == 1.0
    assert all(r["img_per_s"] > 0 for r in result["results"])
    assert result["meta"]["augment"] == {"padding": 4, "flip": True, "crop_size": None}
    captured = capsys.readouterr()
    assert "img/s" in captured.out
    assert re.search(r"bench data digits: +\d+%.*\| \d+/12 \[\d\d:\d\d<\d\d:\d\d", captured.err)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "nosuchnet", "--tiny"], "unknown model 'nosuchnet'"),
        (["train", "lenet5", "--impl", "fast"], "--impl must be a comma list of custom, xla"),
        (["train", "lenet5", "--steps", "0"], "--steps must be >= 1, got 0"),
        (["data", "digits", "--batch", "0"], "--batch must be >= 1, got 0"),
    ],
)
def test_bench_bad_arguments_exit_2_with_one_line(args, message):
    proc = _cli("bench", *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def _param_count(tree) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize(("name", "shape"), [("resnet20", (32, 32, 3)), ("lenet5", (32, 32, 1))])
def test_torch_twins_have_the_same_parameter_count(name, shape):
    pytest.importorskip("torch")
    from cnnjax.bench import torch_models

    model = create_model(name, num_classes=10)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, *shape)), train=False)
    )
    net = torch_models.build(name, 10)
    torch_count = sum(p.numel() for p in net.parameters())
    if name == "lenet5":
        # The twin's C3 is a dense 6→16 5×5 conv masked by Table I: count the connected weights.
        torch_count -= int((1 - net.c3_mask).sum().item()) * 25
    assert _param_count(shapes["params"]) == torch_count


def test_python_m_bench_ops_reads_its_command_line():
    """``python -m cnnjax.bench.ops --help`` prints the ``cnnjax bench ops`` usage and exits 0
    (it used to ignore its arguments and start the whole benchmark)."""
    done = subprocess.run(
        [sys.executable, "-m", "cnnjax.bench.ops", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "usage: cnnjax bench ops" in done.stdout
