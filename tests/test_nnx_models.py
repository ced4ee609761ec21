"""NNX models (``create_model(name, api="nnx")``) against the Linen models, for every registered
model: same parameter count and tree; with the same weights (moved by ``to_linen``) the same
logits and gradients in float64 to 1e-10 (relative to each array's largest entry), in eval mode
(running averages, no dropout) and in training mode (batch statistics and the updated running
averages, dropout with the same key on both sides, GoogLeNet's auxiliary heads); and
``precision="highest"`` on every convolution and matrix product of the NNX model's traced
forward and backward pass. Also: states saved from the earlier, hand-written NNX models load.

As in ``tests/test_models.py``, the checks of :data:`LARGE` models (and of the slowest families
to compile) run under ``-m slow``, inputs are the registry's small test shapes, and the dense
heads are shrunk (``head_width=64``). Every model compiles once here: NNX and Linen, eval and
train, forward and backward in one program.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx, traverse_util
from jax import lax
from test_models import FAST_COMPILE, LARGE, NUM_CLASSES, _input, _overrides, _param_count

import cnnjax.nnx
from cnnjax.models import create_model, get_model_info, list_models
from cnnjax.nnx import LinenModel, from_linen, load_legacy_state, param_count, to_linen

ALL_MODELS = list_models(task=None)
RTOL = 1e-10
DROPOUT_KEY = 7


def _nnx_model(name: str, **kwargs) -> nnx.Module:
    shape = get_model_info(name).test_input_shape
    return create_model(
        name,
        num_classes=NUM_CLASSES,
        api="nnx",
        rngs=nnx.Rngs(0),
        input_shape=shape,
        **_overrides(name),
        **kwargs,
    )


def _assert_close(a, b, what: str) -> None:
    flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
    flat_b = jax.tree.leaves(b)
    assert len(flat_a) == len(flat_b), what
    for (path, x), y in zip(flat_a, flat_b, strict=True):
        np.testing.assert_allclose(
            x,
            y,
            rtol=RTOL,
            atol=RTOL * np.max(np.abs(y)),
            err_msg=f"{what} {jax.tree_util.keystr(path)}",
        )


class _Comparison:
    """NNX and Linen outputs, gradients and batch statistics of one model, float64."""

    def __init__(self, name: str):
        self.name = name
        model = _nnx_model(name)
        variables = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), to_linen(model))
        from_linen(model, variables)
        self.variables = variables
        x = _input(name)
        linen = create_model(name, num_classes=NUM_CLASSES, **_overrides(name))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def nnx_run(params, rest, cotangent, train):
            m = nnx.merge(graphdef, params, rest)
            m.train() if train else m.eval()

            def loss(m):
                out = m(x, rngs=nnx.Rngs(dropout=DROPOUT_KEY))  # the key Linen gets
                return _dot(out, cotangent), out

            grads, out = nnx.grad(loss, has_aux=True)(m)
            grads_linen = to_linen(nnx.merge(graphdef, grads, rest))["params"]
            return out, grads_linen, to_linen(m).get("batch_stats", {})

        def linen_run(params, cotangent, train):
            module = linen
            stats = variables.get("batch_stats")

            def loss(params):
                v = {"params": params, **({"batch_stats": stats} if stats else {})}
                rngs = {"dropout": nnx.Rngs(dropout=DROPOUT_KEY).dropout()}
                mutable = ["batch_stats"] if train and stats else False
                out = module.apply(v, x, train=train, rngs=rngs, mutable=mutable)
                out, updates = out if mutable else (out, {"batch_stats": stats or {}})
                return _dot(out, cotangent), (out, updates["batch_stats"])

            grads, (out, new_stats) = jax.grad(loss, has_aux=True)(params)
            return out, grads, new_stats

        self.modes = (False, True)

        def both(params, rest, linen_params, cotangents):
            results = {}
            for train in self.modes:
                results["nnx", train] = nnx_run(params, rest, cotangents[train], train)
                results["linen", train] = linen_run(linen_params, cotangents[train], train)
            return results

        cotangents = {}
        for train in self.modes:
            shapes = jax.eval_shape(
                lambda p, t=train: linen_run(p, None, t)[0], variables["params"]
            )
            keys = jax.random.split(jax.random.key(3), len(jax.tree.leaves(shapes)))
            leaves = [
                jax.random.normal(k, s.shape, jnp.float64)
                for k, s in zip(keys, jax.tree.leaves(shapes), strict=True)
            ]
            cotangents[train] = jax.tree.unflatten(jax.tree.structure(shapes), leaves)
        args = (params, rest, variables["params"], cotangents)
        compiled = jax.jit(both).lower(*args).compile(compiler_options=FAST_COMPILE)
        self.results = jax.device_get(compiled(*args))


def _dot(out, cotangent):
    if cotangent is None:
        return jnp.zeros(())
    pairs = zip(jax.tree.leaves(out), jax.tree.leaves(cotangent), strict=True)
    return sum(jnp.vdot(a, c) for a, c in pairs)


@pytest.fixture(scope="class")
def comparison(name):
    return _Comparison(name)


class _MatchesLinen:
    def test_same_logits(self, comparison):
        for train in comparison.modes:
            out_nnx = comparison.results[("nnx", train)][0]
            out_linen = comparison.results[("linen", train)][0]
            assert all(a.dtype == np.float64 for a in jax.tree.leaves(out_nnx))
            _assert_close(out_nnx, out_linen, f"logits (train={train})")

    def test_same_gradients(self, comparison):
        for train in comparison.modes:
            grads_nnx = comparison.results[("nnx", train)][1]
            grads_linen = comparison.results[("linen", train)][1]
            assert jax.tree.structure(grads_nnx) == jax.tree.structure(grads_linen)
            assert any(np.any(g != 0) for g in jax.tree.leaves(grads_nnx))
            _assert_close(grads_nnx, grads_linen, f"gradient (train={train})")

    def test_same_batch_statistics_update(self, comparison):
        stats_nnx = comparison.results[("nnx", True)][2]
        stats_linen = comparison.results[("linen", True)][2]
        _assert_close(stats_nnx, stats_linen, "batch_stats")
        if stats_linen:  # training mode moved the running averages; eval mode left them
            old = jax.tree.leaves(comparison.variables["batch_stats"])
            assert not all(np.allclose(a, b) for a, b in zip(old, jax.tree.leaves(stats_nnx)))
            _assert_close(comparison.results[("nnx", False)][2], old, "eval batch_stats")


# Families whose comparison costs 25-80 s of compilation each: the derivation is the same code
# for every family and is checked on the others in CI; these run with the LARGE ones under
# `-m slow` (the segmentation models: 188x188 inputs for U-Net).
SLOW = {"densenet_bc_100_12", "resnet50", "googlenet", "mobilenet_v1", "segnet", "unet"}
NUMERIC = sorted(set(ALL_MODELS) - LARGE - SLOW)


@pytest.mark.parametrize("name", NUMERIC, scope="class")
class TestNNXMatchesLinen(_MatchesLinen):
    pass


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LARGE | SLOW), scope="class")
class TestNNXMatchesLinenLarge(_MatchesLinen):
    pass


# --------------------------------------------------------------------------------------------
# Cheap checks on every model (abstract: nnx.eval_shape builds the module without computing)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_MODELS)
def test_same_parameter_count_and_tree(name):
    info = get_model_info(name)
    x = jnp.zeros((1, *info.test_input_shape), jnp.float32)
    linen = create_model(name, num_classes=NUM_CLASSES, **_overrides(name))
    linen_vars = jax.eval_shape(lambda: linen.init(jax.random.key(0), x, train=False))
    model = nnx.eval_shape(lambda: _nnx_model(name))
    assert isinstance(model, LinenModel) and model.module == linen  # derived, never copied
    assert param_count(model) == _param_count(linen_vars["params"])
    converted = to_linen(model)
    assert set(converted) == set(linen_vars) & {"params", "batch_stats"}
    shapes = jax.tree.map(lambda a: (a.shape, a.dtype), converted)
    assert shapes == jax.tree.map(lambda a: (a.shape, a.dtype), dict(linen_vars))


@pytest.mark.parametrize("name", ["lenet5", "vgg11", "alexnet", "resnet20"])
def test_too_small_input_names_the_model(name):
    info = get_model_info(name)
    size = info.min_input_size - 1
    model = nnx.eval_shape(lambda: _nnx_model(name))
    model.eval()
    with pytest.raises(ValueError, match=f"minimum input size is {info.min_input_size}"):
        nnx.eval_shape(lambda m, x: m(x), model, jnp.zeros((1, size, size, info.input_shape[-1])))


def test_bad_api_and_linen_only_arguments():
    with pytest.raises(ValueError, match='api must be "linen" or "nnx"'):
        create_model("lenet5", api="torch")
    with pytest.raises(ValueError, match="rngs and input_shape"):
        create_model("lenet5", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"input_shape must be \(H, W, C\)"):
        create_model("lenet5", api="nnx", input_shape=(32, 32))


# --------------------------------------------------------------------------------------------
# Modes, conversion errors, training with nnx.Optimizer
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["allconv_c", "mobilenet_v1"])
def test_dropout_only_in_train_mode(name):
    model = _nnx_model(name, **({"dropout_rate": 0.5} if name == "mobilenet_v1" else {}))
    x = _input(name, dtype=jnp.float32)
    forward = nnx.jit(lambda m, x: m(x))
    model.train()
    train_a, train_b = forward(model, x), forward(model, x)  # the dropout stream advances
    model.eval()
    eval_a, eval_b = forward(model, x), forward(model, x)
    np.testing.assert_array_equal(eval_a, eval_b)
    assert not np.allclose(train_a, train_b)
    assert not np.allclose(train_a, eval_a)


@pytest.mark.parametrize("name", ["vgg11_bn", "resnet20"])
def test_batch_stats_update_only_in_train_mode(name):
    model = _nnx_model(name)
    x = _input(name, dtype=jnp.float32)
    forward = nnx.jit(lambda m, x: m(x))
    before = to_linen(model)["batch_stats"]
    model.eval()
    forward(model, x)
    after_eval = to_linen(model)["batch_stats"]
    assert all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after_eval))
    )
    model.train()
    forward(model, x)
    after_train = to_linen(model)["batch_stats"]
    assert all(
        not np.allclose(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after_train))
    )


def test_batch_norm_refuses_an_empty_training_batch():
    # flax.nnx.BatchNorm would normalise an empty training batch to NaN statistics silently
    model = nnx.eval_shape(lambda: _nnx_model("vgg11_bn"))
    model.train()
    with pytest.raises(ValueError, match=r"BatchNorm: expected more than 1 value per channel"):
        nnx.eval_shape(lambda m, x: m(x), model, jnp.zeros((0, 32, 32, 3)))


def test_modes_must_agree():
    model = nnx.eval_shape(lambda: _nnx_model("resnet20"))
    model.set_attributes(deterministic=True)
    with pytest.raises(ValueError, match="must agree"):
        nnx.eval_shape(lambda m, x: m(x), model, jnp.zeros((1, 16, 16, 3)))


def test_from_linen_reports_mismatches():
    model = _nnx_model("lenet5")
    variables = to_linen(model)
    roundtrip = jax.tree.map(lambda a: a + 1.0, variables)
    from_linen(model, roundtrip)
    jax.tree.map(np.testing.assert_array_equal, to_linen(model), roundtrip)
    missing = {"params": {k: v for k, v in variables["params"].items() if k != "F6"}}
    with pytest.raises(ValueError, match=r"missing \['params/F6/bias', 'params/F6/kernel'\]"):
        from_linen(model, missing)
    extra = {"params": {**variables["params"], "F7": {"kernel": np.zeros(3)}}}
    with pytest.raises(ValueError, match=r"unexpected \['params/F7/kernel'\]"):
        from_linen(model, extra)
    bad = jax.tree.map(lambda a: a, variables)
    bad["params"]["C5"]["kernel"] = np.zeros((5, 5, 16, 7))
    with pytest.raises(
        ValueError, match=r"params/C5/kernel has shape \(5, 5, 16, 7\).*\(5, 5, 16, 120\)"
    ):
        from_linen(model, bad)


def test_lenet5_rbf_output_matches_linen():
    model = create_model("lenet5", api="nnx", output="rbf")
    assert param_count(model) == 60_000
    linen = create_model("lenet5", output="rbf")
    x = _input("lenet5", dtype=jnp.float32)
    model.eval()
    np.testing.assert_allclose(model(x), linen.apply(to_linen(model), x, train=False), rtol=1e-6)


@pytest.mark.parametrize("name", ["lenet5", "resnet20"])
def test_trains_with_nnx_optimizer_and_jit(name):
    """A few SGD steps on one batch with nnx.Optimizer + nnx.jit lower the loss; the step
    compiles once."""
    model = _nnx_model(name)
    optimizer = nnx.Optimizer(model, optax.sgd(0.05, momentum=0.9), wrt=nnx.Param)
    x = _input(name, dtype=jnp.float32)
    labels = jnp.arange(x.shape[0]) % NUM_CLASSES
    traces = []

    @nnx.jit
    def step(model, optimizer, x, labels):
        traces.append(1)

        def loss_fn(model):
            logits = model(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    model.train()
    losses = [float(step(model, optimizer, x, labels)) for _ in range(5)]
    assert losses[-1] < losses[0]
    assert len(traces) == 1


# --------------------------------------------------------------------------------------------
# precision reaches every convolution and matrix product (issue 17: the hand-written NNX models
# ran their dense layers at the backend default whatever create_model was given)
# --------------------------------------------------------------------------------------------


def _products(jaxpr):
    """``(primitive, precision)`` of every convolution and dot_general in ``jaxpr``, including
    those inside sub-computations (jit, custom VJPs, control flow)."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
            yield eqn.primitive.name, eqn.params["precision"]
        for value in eqn.params.values():
            for item in value if isinstance(value, list | tuple) else (value,):
                inner = getattr(item, "jaxpr", item)  # a ClosedJaxpr or a Jaxpr
                if hasattr(inner, "eqns"):
                    yield from _products(inner)


def _precision_check(name):
    model = nnx.eval_shape(lambda: _nnx_model(name, precision="highest"))
    model.train()  # batch statistics, dropout, GoogLeNet's auxiliary heads: every branch
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    x = jax.ShapeDtypeStruct(_input(name, dtype=jnp.float32).shape, jnp.float32)

    def loss(m, x):
        out = m(x, rngs=nnx.Rngs(dropout=DROPOUT_KEY))
        return sum(jnp.sum(o) for o in jax.tree.leaves(out))

    def gradients(params, rest, x):
        return nnx.grad(loss)(nnx.merge(graphdef, params, rest), x)

    products = list(_products(jax.make_jaxpr(gradients)(params, rest, x).jaxpr))
    assert {p for p, _ in products} >= {"conv_general_dilated"}
    highest = (lax.Precision.HIGHEST, lax.Precision.HIGHEST)
    default = [(p, prec) for p, prec in products if prec not in (highest, lax.Precision.HIGHEST)]
    assert not default, f"{len(default)} of {len(products)} products not at HIGHEST: {default[:3]}"


@pytest.mark.parametrize("name", sorted(set(ALL_MODELS) - LARGE))
def test_precision_reaches_every_conv_and_dot(name):
    _precision_check(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LARGE))
def test_precision_reaches_every_conv_and_dot_large(name):
    _precision_check(name)


# --------------------------------------------------------------------------------------------
# One definition: the NNX face is derived, and cnnjax.models does not import cnnjax.nnx
# --------------------------------------------------------------------------------------------


def test_models_package_does_not_import_the_nnx_package():
    code = (
        "import sys; from cnnjax.models import create_model; "
        "m = create_model('lenet5', api='nnx'); "
        "assert 'cnnjax.nnx' not in sys.modules, 'cnnjax.nnx imported'; print(type(m).__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "LinenModel"


def test_named_classes_of_the_earlier_nnx_models():
    model = cnnjax.nnx.models.VGG(
        config=(8, "M", 16, "M"), num_classes=10, batch_norm=True, head_width=16,
        input_shape=(32, 32, 3), rngs=nnx.Rngs(0),
    )  # fmt: skip
    assert isinstance(model, LinenModel) and type(model).__name__ == "VGG"
    expected = create_model("vgg11_bn", num_classes=10, config=(8, "M", 16, "M"), head_width=16)
    assert model.module == expected
    listed = create_model(  # a list argument (unhashable) is held as a tuple
        "vgg11_bn", num_classes=10, config=[8, "M", 16, "M"], head_width=16, api="nnx",
        input_shape=(32, 32, 3),
    )  # fmt: skip
    assert listed.module == expected
    assert sorted(to_linen(model)["batch_stats"]) == ["bn0", "bn2"]


LEGACY = pathlib.Path(__file__).parent / "data" / "nnx_states_before_issue17.npz"
#: Models saved by the hand-written NNX classes (lenet5, vgg11_bn: dropout RNG state, batch
#: statistics) and by the earlier LinenModel (resnet20: the Linen tree under ``linen``), each
#: after two training steps, with its eval-mode logits on the saved input.
LEGACY_CASES = {
    "lenet5": ({}, (32, 32, 1)),
    "vgg11_bn": ({"config": (8, "M", 16, "M"), "head_width": 16}, (32, 32, 3)),
    "resnet20": ({"stage_widths": (4, 8, 16)}, (16, 16, 3)),
}


@pytest.mark.parametrize("name", sorted(LEGACY_CASES))
def test_states_saved_from_the_earlier_nnx_models_load(name):
    overrides, shape = LEGACY_CASES[name]
    saved = np.load(LEGACY)
    prefix = f"{name}/state/"
    state = traverse_util.unflatten_dict(
        {tuple(k[len(prefix) :].split("/")): saved[k] for k in saved.files if k.startswith(prefix)}
    )
    model = create_model(name, num_classes=10, api="nnx", input_shape=shape, **overrides)
    load_legacy_state(model, state)
    model.eval()
    logits = model(jnp.asarray(saved[f"{name}/input"]))
    np.testing.assert_array_equal(logits, saved[f"{name}/logits"])
    # an unrelated state names what it lacks
    with pytest.raises(ValueError, match="the saved state lacks"):
        load_legacy_state(model, {"conv9": {"kernel": np.zeros(3)}})
