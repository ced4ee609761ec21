"""cnnjax.train: the pure steps, losses, optimisers, schedules, config, and compile-once."""

from __future__ import annotations

import functools
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnjax.models import create_model, list_models
from cnnjax.train import (
    apply_overrides,
    create_train_state,
    cross_entropy,
    default_config,
    eval_step,
    load_config,
    make_driver,
    make_optimizer,
    make_schedule,
    train_step,
)

CONFIGS = sorted((pathlib.Path(__file__).parents[1] / "experiments" / "configs").glob("*.py"))


def _batch(n=8, shape=(32, 32, 1), classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": rng.normal(size=(n, *shape)).astype(np.float32),
        "label": rng.integers(0, classes, n).astype(np.int32),
    }


def _max_diff(a, b) -> float:
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b)))


class _WithAux(nn.Module):
    """A GoogLeNet-shaped toy: ``(logits, (aux1, aux2))`` in training, logits otherwise; the aux
    heads' parameters exist in either mode, as in ``cnnjax.models.googlenet``."""

    @nn.compact
    def __call__(self, x, train: bool):
        h = x.reshape(x.shape[0], -1)
        logits = nn.Dense(3, name="main")(h)
        aux = (nn.Dense(3, name="aux1")(h), nn.Dense(3, name="aux2")(h))
        return (logits, aux) if train else logits


class _Toy(nn.Module):
    """A small conv net for step semantics (cheap to compile; lenet5 is tested separately)."""

    dtype: object = None

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.relu(nn.Conv(4, (3, 3), strides=2, dtype=self.dtype)(x))
        return nn.Dense(10, dtype=self.dtype)(x.reshape(x.shape[0], -1))


def test_cross_entropy_with_label_smoothing():
    logits = jnp.array([[2.0, 0.0, -1.0]], jnp.float32)
    labels = jnp.array([0], jnp.int32)
    log_p = jax.nn.log_softmax(logits)[0]
    np.testing.assert_allclose(cross_entropy(logits, labels), -log_p[0], rtol=1e-6)
    eps = 0.3
    expected = -((1 - eps) * log_p[0] + eps / 3 * log_p.sum())
    np.testing.assert_allclose(
        cross_entropy(logits, labels, label_smoothing=eps), expected, rtol=1e-6
    )


def test_lenet5_step_compiles_once_and_learns():
    model = create_model("lenet5", num_classes=10, impl="xla")
    tx = make_optimizer("adamw", 3e-3)
    traces = []

    def counting_step(*args, **kwargs):
        traces.append(1)  # runs once per trace, never per call
        return train_step(*args, **kwargs)

    driver = make_driver(
        "none",
        functools.partial(counting_step, model=model, tx=tx),
        functools.partial(eval_step, model=model),
    )
    state = driver.place_state(create_train_state(model, tx, seed=0, input_shape=(32, 32, 1)))
    batch = _batch(16)
    losses = []
    for _ in range(6):
        state, metrics = driver.train_step(state, driver.put_batch(batch))
        losses.append(driver.host_metrics(metrics)["loss"] / 16)
    assert len(traces) == 1
    assert driver.train_step._cache_size() == 1
    assert int(driver.host_state(state).step) == 6
    assert losses[-1] < losses[0]
    assert driver.host_state(state).params["C1"]["kernel"].dtype == np.float32


def test_aux_heads_are_weighted_into_the_loss():
    model, tx = _WithAux(), optax.sgd(0.1)
    state = create_train_state(model, tx, seed=0, input_shape=(2, 2, 1))
    batch = _batch(4, (2, 2, 1), classes=3)
    step = functools.partial(train_step, model=model, tx=tx)
    new0, _ = jax.jit(functools.partial(step, aux_loss_weight=0.0))(state, batch)
    new3, _ = jax.jit(functools.partial(step, aux_loss_weight=0.3))(state, batch)
    # The main head's update ignores the auxiliary losses; the aux heads learn only when weighted.
    assert _max_diff(new0.params["main"], new3.params["main"]) == 0.0
    assert _max_diff(new0.params["aux1"], state.params["aux1"]) == 0.0
    assert _max_diff(new3.params["aux1"], state.params["aux1"]) > 0.0
    metrics = eval_step(new3, {**batch, "mask": np.array([1, 1, 0, 0], np.float32)}, model=model)
    assert float(metrics["count"]) == 2.0


def test_gradient_accumulation_equals_the_large_batch_step():
    model = _Toy()
    big = _batch(16, (8, 8, 1), seed=1)
    halves = [{k: v[:8] for k, v in big.items()}, {k: v[8:] for k, v in big.items()}]
    plain = make_optimizer("sgd", 0.1, momentum=0.9, weight_decay=1e-3)
    accum = make_optimizer("sgd", 0.1, momentum=0.9, weight_decay=1e-3, accumulate_steps=2)
    s_plain = create_train_state(model, plain, seed=0, input_shape=(8, 8, 1))
    s_accum = create_train_state(model, accum, seed=0, input_shape=(8, 8, 1))
    s_plain, _ = jax.jit(functools.partial(train_step, model=model, tx=plain))(s_plain, big)
    step = jax.jit(functools.partial(train_step, model=model, tx=accum))
    for half in halves:
        s_accum, _ = step(s_accum, half)
    assert _max_diff(s_plain.params, s_accum.params) < 1e-6


def test_weight_decay_touches_kernels_only():
    params = {"dense": {"kernel": jnp.ones((2, 2), jnp.float32), "bias": jnp.ones(2, jnp.float32)}}
    tx = make_optimizer("sgd", 1.0, momentum=0.0, weight_decay=0.5)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    np.testing.assert_allclose(updates["dense"]["kernel"], -0.5)
    np.testing.assert_allclose(updates["dense"]["bias"], 0.0)


def test_ema_tracks_the_params():
    model = _Toy()
    tx = make_optimizer("sgd", 0.1)
    state = create_train_state(model, tx, seed=0, input_shape=(8, 8, 1), ema=True)
    step = jax.jit(functools.partial(train_step, model=model, tx=tx, ema_decay=0.5))
    new, _ = step(state, _batch(4, (8, 8, 1)))
    expected = jax.tree.map(lambda e, p: 0.5 * e + 0.5 * p, state.params, new.params)
    assert _max_diff(new.ema_params, expected) < 1e-7


def test_bfloat16_compute_keeps_float32_params():
    model = _Toy(dtype=jnp.bfloat16)
    tx = make_optimizer("sgd", 0.1, momentum=0.9)
    state = create_train_state(model, tx, seed=0, input_shape=(8, 8, 1))
    step = jax.jit(functools.partial(train_step, model=model, tx=tx))
    new, metrics = step(state, _batch(4, (8, 8, 1)))
    assert {p.dtype for p in jax.tree.leaves(new.params)} == {jnp.dtype(jnp.float32)}
    assert metrics["loss"].dtype == jnp.float32 and np.isfinite(float(metrics["loss"]))


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("constant", {}, {0: 0.1, 50: 0.1}),
        ("step", {"milestones": (30, 60)}, {0: 0.1, 29: 0.1, 30: 0.01, 60: 0.001}),
        ("step", {"milestones": (30,), "warmup_steps": 10}, {0: 0.0, 5: 0.05, 29: 0.1, 31: 0.01}),
        ("cosine", {}, {0: 0.1, 50: 0.05, 100: 0.0}),
        ("cosine", {"warmup_steps": 20}, {10: 0.05, 20: 0.1, 60: 0.05, 100: 0.0}),
    ],
)
def test_schedules(name, kwargs, expected):
    schedule = make_schedule(name, 0.1, total_steps=100, **kwargs)
    for step, value in expected.items():
        np.testing.assert_allclose(float(schedule(step)), value, atol=1e-7)


def test_config_overrides():
    config = default_config()
    apply_overrides(
        config,
        [
            "optimizer.lr=0.25",
            "epochs=3",
            "schedule.milestones=(10,20)",
            "optimizer.nesterov=true",
            "num_steps=7",
            "image_size=None",
            "dataset=npz:/tmp/x.npz",
            "model_overrides.aux_logits=False",
        ],
    )
    assert config.optimizer.lr == 0.25 and config.epochs == 3 and config.num_steps == 7
    assert config.schedule.milestones == (10, 20) and config.optimizer.nesterov is True
    assert config.dataset == "npz:/tmp/x.npz" and config.model_overrides.aux_logits is False
    apply_overrides(config, ["schedule.milestones=5,9"])
    assert config.schedule.milestones == (5, 9)
    with pytest.raises(ValueError, match=r"unknown config key 'optimizer\.lrr'"):
        apply_overrides(config, ["optimizer.lrr=1"])
    with pytest.raises(ValueError, match="cannot set epochs"):
        apply_overrides(config, ["epochs=many"])
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides(config, ["epochs"])


def test_experiment_configs_load_and_name_registered_models():
    expected = {
        "lenet5_digits",
        "lenet5_mnist",
        "resnet20_cifar10",
        "resnet56_cifar10",
        "vgg16_bn_cifar10",
        "densenet_bc_100_12_cifar10",
        "vgg_depth_ablation",
        "googlenet_aux",
        "custom_vs_xla",
    }
    assert expected <= {c.stem for c in CONFIGS}
    for path in CONFIGS:
        config = load_config(path)
        text = path.read_text()
        assert "cnnjax train" in text.split('"""')[1], f"{path.name}: docstring lacks the command"
        assert config.model in list_models(), path.name
        default = default_config()
        assert set(config.keys()) == set(default.keys()), path.name
    assert (
        load_config(f"{CONFIGS[0].parent / 'vgg_depth_ablation.py'}:vgg19_bn").model == "vgg19_bn"
    )
    assert not load_config(
        f"{CONFIGS[0].parent / 'googlenet_aux.py'}:noaux"
    ).model_overrides.aux_logits


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_experiment_configs_build(path):
    """Data, model, optimiser and driver of every config build (CIFAR under TFDS mock data)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    from cnnjax.train import build_run

    config = load_config(path)
    config.parallel = "none"
    if config.dataset.startswith("npz:") and not pathlib.Path(config.dataset[4:]).exists():
        config.dataset = "digits"
    with tfds.testing.mock_data(num_examples=256):
        run = build_run(config)
    assert run.total_steps > 0 and run.steps_per_epoch > 0
    assert run.dataset.num_classes == 10


def test_metrics_writer_writes_jsonl_and_tensorboard_events(tmp_path):
    """metrics.jsonl always; TensorBoard event files when tensorboardX is installed."""
    from cnnjax.train import MetricsWriter, read_metrics

    writer = MetricsWriter(tmp_path)
    for step, accuracy in ((10, 0.5), (20, 0.75)):
        writer.write(
            {
                "step": step,
                "epoch": step // 10,
                "split": "test",
                "loss": 1.0 / step,
                "accuracy": accuracy,
                "images_per_sec": 100.0,
            }
        )
    writer.close()
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [10, 20]
    assert records[1]["accuracy"] == 0.75 and records[1]["split"] == "test"
    pytest.importorskip("tensorboardX")
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    # the scalar tags are in the event file (a TFRecord of Event protos)
    content = events[0].read_bytes()
    assert b"test/accuracy" in content and b"test/loss" in content


def test_a_task_object_is_the_loss_of_the_one_train_step():
    """``task=Classification(ε, w)`` is the default step with ``label_smoothing=ε``,
    ``aux_loss_weight=w``; the task's objective is all the step knows of the loss."""
    from cnnjax.train import Classification

    model, tx = _WithAux(), optax.sgd(0.1)
    state = create_train_state(model, tx, seed=0, input_shape=(2, 2, 1))
    batch = _batch(4, (2, 2, 1), classes=3)
    step = functools.partial(train_step, model=model, tx=tx)
    by_kwargs = jax.jit(functools.partial(step, label_smoothing=0.1, aux_loss_weight=0.5))
    by_task = jax.jit(functools.partial(step, task=Classification(0.1, 0.5)))
    (a, ma), (b, mb) = by_kwargs(state, batch), by_task(state, batch)
    assert _max_diff(a.params, b.params) == 0.0
    assert {k: float(v) for k, v in ma.items()} == {k: float(v) for k, v in mb.items()}

    class Frozen(Classification):
        """Scores like classification, trains nothing: a zero objective."""

        def objective(self, logits, aux, labels):
            loss, sums = super().objective(logits, aux, labels)
            return 0.0 * loss, sums

    frozen, metrics = jax.jit(functools.partial(step, task=Frozen(0.1, 0.5)))(state, batch)
    assert _max_diff(frozen.params, state.params) == 0.0 and int(frozen.step) == 1
    assert float(metrics["loss"]) == float(ma["loss"])  # sums still report the real loss


def test_tasks_summarize_metric_sums_into_the_test_record():
    from cnnjax.train import Classification, Segmentation

    sums = {"loss": 3.0, "correct": 4.0, "count": 6.0}
    assert Classification().summarize(sums) == {"loss": 0.5, "accuracy": 4 / 6, "count": 6}
    confusion = np.array([[2.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    record = Segmentation().summarize({**sums, "confusion": confusion})
    assert record["mean_iou"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert record["iou"] == [pytest.approx(2 / 3), 0.5, None]  # class 2: absent everywhere
    assert record["pixel_accuracy"] == 0.75
    assert "iou" not in Segmentation().summarize({**sums, "confusion": confusion}, per_class=False)
    assert Segmentation().describe(record) == "6 pixels, mean IoU 0.5833"
    assert Classification().describe(record) == "6 images"


def test_segmentation_step_is_the_one_step_with_the_segmentation_task():
    from cnnjax.train import Segmentation
    from cnnjax.train.tasks import segmentation_eval_step, segmentation_train_step

    class PerPixel(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool):
            return nn.Conv(3, (3, 3), padding="VALID")(x)

    model, tx = PerPixel(), optax.sgd(0.1)
    state = create_train_state(model, tx, seed=0, input_shape=(6, 6, 1))
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.normal(size=(2, 6, 6, 1)).astype(np.float32),
        "label": rng.integers(0, 3, (2, 6, 6)).astype(np.int32),
        "mask": np.array([1.0, 0.0], np.float32),
    }
    old = segmentation_train_step(state, batch, model=model, tx=tx)
    new = train_step(state, batch, model=model, tx=tx, task=Segmentation())
    assert _max_diff(old[0].params, new[0].params) == 0.0
    old = segmentation_eval_step(state, batch, model=model)
    new = eval_step(state, batch, model=model, task=Segmentation())
    assert _max_diff(old, new) == 0.0 and float(new["count"]) == 16.0  # one 4×4 crop counted


def test_importing_the_training_code_imports_no_plotting():
    import subprocess
    import sys

    code = "import sys, cnnjax.train, cnnjax.train.loop; print('cnnjax.viz' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    import cnnjax.train

    assert not hasattr(cnnjax.train, "plot")  # curves are cnnjax.viz.plot_curves
