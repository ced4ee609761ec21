"""Registry-wide model tests, parametrized over ``list_models()``.

Cheap checks (tracing only, :func:`jax.eval_shape`) run on every registered model: output
shapes in eval and train mode, exact parameter counts against the published numbers, clear
errors for unknown names and too-small inputs.

Numerical checks (real parameters, float64) run on every model outside :data:`LARGE`, grouped
per model so that each compiles once per ``impl``: finite outputs of the right shape, every
parameter receives a non-zero gradient, ``impl="custom"`` and ``impl="xla"`` agree on logits
and gradients to 1e-9 (relative to each array's largest entry). The same checks run on the
:data:`LARGE` models only under ``-m slow``. Models without batch statistics are checked in
training mode (dropout active with a fixed key, GoogLeNet's auxiliary heads included); models
with batch norm in eval mode (in training mode the bias of a conv followed by batch norm has an
exactly zero gradient, by construction).

Overrides used to keep CI fast (documented on the families): ``head_width=64`` for AlexNet,
ZFNet and VGG (their dense heads otherwise dominate, e.g. VGG's 102.8M-parameter fc1), and
``num_classes=10`` everywhere. Parameter counts are checked on the unmodified models.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cnnjax.ops
from cnnjax.models import create_model, get_model_info, list_models

BATCH = 2
NUM_CLASSES = 10
KEY = jax.random.key(0)
RTOL = 1e-9

# XLA's CPU backend optimisations cost more compile time than they save on one or two runs.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}

#: Models whose numerical checks are marked slow: large graphs that take long to compile on a
#: 2-core CI machine, and deeper siblings built from the same blocks as a model checked by
#: default (resnet20/18/50, densenet_bc_100_12, vgg11/vgg11_bn, zfnet). Cheap checks still run.
LARGE = frozenset(
    {
        "densenet121",
        "densenet169",
        "densenet201",
        "densenet264",
        "resnet32",
        "resnet34",
        "resnet44",
        "resnet56",
        "resnet101",
        "resnet110",
        "resnet152",
        "vgg13",
        "vgg13_bn",
        "vgg16",
        "vgg16_bn",
        "vgg19",
        "vgg19_bn",
        "zfnet_large",
    }
)

#: Parameter counts (the ``params`` collection, default classes, paper input size).
EXPECTED_PARAMS = {
    # torchvision / the papers
    "alexnet_torchvision": 61_100_840,
    "vgg11": 132_863_336,
    "vgg13": 133_047_848,
    "vgg16": 138_357_544,
    "vgg19": 143_667_240,
    "vgg11_bn": 132_868_840,
    "vgg13_bn": 133_053_736,
    "vgg16_bn": 138_365_992,
    "vgg19_bn": 143_678_248,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "densenet121": 7_978_856,
    "densenet169": 14_149_480,
    "densenet201": 20_013_928,
    "mobilenet_v1": 4_231_976,
    # the two-tower AlexNet's well-known total (Krizhevsky et al. 2012, groups=2)
    "alexnet": 60_965_224,
    # LeNet-5 with a dense softmax output (the paper's RBF version: 60,000, tested below)
    "lenet5": 60_850,
    # measured, matching the papers' rounded figures
    "allconv_c": 1_369_738,  # "1.3 M"
    "nin": 966_986,
    "googlenet": 13_378_280,  # with both auxiliary heads; 6,998,552 without
    "zfnet": 62_357_608,
    "resnet20": 269_722,  # He et al. 2016, Table 6: 0.27M
    "resnet32": 464_154,  # 0.46M
    "resnet44": 658_586,  # 0.66M
    "resnet56": 853_018,  # 0.85M
    "resnet110": 1_727_962,  # 1.7M
    "densenet_bc_100_12": 769_162,  # Huang et al. 2017, Table 2: 0.8M
}


def _overrides(name: str) -> dict:
    return {"head_width": 64} if name.startswith(("alexnet", "zfnet", "vgg")) else {}


def _model(name: str, impl: str = "custom", **kwargs):
    return create_model(name, num_classes=NUM_CLASSES, impl=impl, **_overrides(name), **kwargs)


def _input(name: str, size: int | None = None, dtype=jnp.float64) -> jax.Array:
    h, w, c = get_model_info(name).test_input_shape
    if size is not None:
        h = w = size
    return jax.random.normal(jax.random.key(1), (BATCH, h, w, c), dtype)


def _param_count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _compile(fn, *args):
    return jax.jit(fn).lower(*args).compile(compiler_options=FAST_COMPILE)


def _init(model, x):
    """Real initialisation, compiled (eager init dispatches hundreds of tiny programs)."""
    return _compile(lambda key: model.init(key, x, train=False), KEY)(KEY)


def _abstract_variables(model, x):
    return jax.eval_shape(lambda: model.init(KEY, x, train=False))


def _apply(model, variables, x, train: bool):
    """Forward pass; in train mode with a fixed dropout key and batch statistics discarded."""
    if not train:
        return model.apply(variables, x, train=False)
    mutable = ["batch_stats"] if "batch_stats" in variables else False
    out = model.apply(
        variables, x, train=True, rngs={"dropout": jax.random.key(2)}, mutable=mutable
    )
    return out[0] if mutable else out


# --------------------------------------------------------------------------------------------
# Cheap checks on every model
# --------------------------------------------------------------------------------------------


def test_registry_lists_the_expected_families():
    names = set(list_models())
    assert set(EXPECTED_PARAMS) <= names
    assert LARGE <= names


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_parameter_count(name):
    info = get_model_info(name)
    model = create_model(name)
    variables = _abstract_variables(model, jnp.zeros((1, *info.input_shape), jnp.float32))
    assert _param_count(variables["params"]) == EXPECTED_PARAMS[name]


def _spy(op, calls):
    """``op`` recording ``(name, impl)`` of each call in ``calls``."""

    def spy(*args, **kwargs):
        calls.append((op.__name__, kwargs.get("impl", "custom (default)")))
        return op(*args, **kwargs)

    return spy


@pytest.mark.parametrize("name", list_models())
def test_output_shapes_and_impl_threading(name, monkeypatch):
    """Eval and train outputs have the right shapes, and ``impl`` reaches every op call."""
    calls = []
    for op_name in cnnjax.ops.__all__:
        monkeypatch.setattr(cnnjax.ops, op_name, _spy(getattr(cnnjax.ops, op_name), calls))
    model = _model(name, impl="xla")
    x = _input(name, dtype=jnp.float32)
    variables = _abstract_variables(model, x)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables["params"]))
    for train in (False, True):
        out = jax.eval_shape(lambda v, train=train: _apply(model, v, x, train), variables)
        if name == "googlenet" and train:
            out, aux = out
            assert [a.shape for a in aux] == [(BATCH, NUM_CLASSES)] * 2
        assert out.shape == (BATCH, NUM_CLASSES)
        assert out.dtype == jnp.float32
    assert calls, "no cnnjax.ops call was seen"
    assert all(impl == "xla" for _, impl in calls), [c for c in calls if c[1] != "xla"]


def test_unknown_name_lists_valid_choices():
    with pytest.raises(
        ValueError, match=r"unknown model 'vgg17'.*Did you mean.*vgg1.*Valid names:"
    ):
        create_model("vgg17")
    with pytest.raises(ValueError, match="lenet5"):
        get_model_info("not_a_model")


def _family(name: str) -> str:
    return re.sub(r"\d.*", "", name.split("_")[0])


@pytest.mark.parametrize("name", list_models())
def test_min_input_size_is_exact(name):
    info = get_model_info(name)
    model = _model(name)
    channels = info.input_shape[-1]
    _abstract_variables(model, jnp.zeros((1, info.min_input_size, info.min_input_size, channels)))
    if info.min_input_size > 1:
        size = info.min_input_size - 1
        with pytest.raises(ValueError, match=str(info.min_input_size)) as error:
            _abstract_variables(model, jnp.zeros((1, size, size, channels)))
        assert _family(name) in str(error.value).lower()
        assert "minimum input size" in str(error.value)


def test_lenet5_rbf_output():
    model = create_model("lenet5", output="rbf")
    x = _input("lenet5")
    variables = _init(model, x)
    assert _param_count(variables["params"]) == 60_000  # LeCun et al. 1998: 60,000 parameters
    assert _param_count(variables["params"]["C3"]) == 1_516
    assert _param_count(variables["params"]["S2"]) == 12
    logits = model.apply(variables, x, train=False)
    features = model.apply(
        variables, x, train=False, capture_intermediates=lambda m, _: m.name == "F6"
    )[1]["intermediates"]["F6"]["__call__"][0]
    f6 = 1.7159 * jnp.tanh(features * 2 / 3)
    codes = np.random.default_rng(0).choice([-1.0, 1.0], (10, 84))
    expected = -((np.asarray(f6)[:, None, :] - codes[None]) ** 2).sum(-1)
    np.testing.assert_allclose(logits, expected, rtol=1e-12)


def test_googlenet_aux_logits():
    x = _input("googlenet", dtype=jnp.float32)
    model = _model("googlenet")
    variables = _abstract_variables(model, x)
    assert {"aux1", "aux2"} <= set(variables["params"])  # created by an eval-mode init
    eval_out = jax.eval_shape(lambda v: _apply(model, v, x, False), variables)
    assert eval_out.shape == (BATCH, NUM_CLASSES)
    logits, (aux1, aux2) = jax.eval_shape(lambda v: _apply(model, v, x, True), variables)
    assert logits.shape == aux1.shape == aux2.shape == (BATCH, NUM_CLASSES)
    plain = _model("googlenet", aux_logits=False)
    plain_variables = _abstract_variables(plain, x)
    assert not {"aux1", "aux2"} & set(plain_variables["params"])
    assert jax.eval_shape(lambda v: _apply(plain, v, x, True), plain_variables).shape == (
        BATCH,
        NUM_CLASSES,
    )
    big = jnp.zeros((1, 224, 224, 3))
    assert _param_count(_abstract_variables(create_model("googlenet", aux_logits=False), big)) == (
        6_998_552
    )


def test_compute_dtype_bfloat16():
    model = create_model("lenet5", dtype=jnp.bfloat16)
    x = _input("lenet5", dtype=jnp.float32)
    variables = _init(model, x)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
    logits = model.apply(variables, x, train=False)
    assert logits.dtype == jnp.bfloat16
    assert bool(jnp.all(jnp.isfinite(logits)))


# --------------------------------------------------------------------------------------------
# Numerical checks, one compiled forward+backward per model and impl
# --------------------------------------------------------------------------------------------


class _Run:
    """Float64 variables, outputs and gradients of one model under one impl."""

    def __init__(self, name: str):
        self.name = name
        x = _input(name)
        model = _model(name)
        variables = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), _init(model, x))
        self.variables = variables
        self.train = "batch_stats" not in variables
        shapes = jax.eval_shape(lambda v: _apply(model, v, x, self.train), variables)
        keys = jax.random.split(jax.random.key(3), len(jax.tree.leaves(shapes)))
        self.cotangents = [
            jax.random.normal(k, s.shape, jnp.float64)
            for k, s in zip(keys, jax.tree.leaves(shapes), strict=True)
        ]
        self.x = x

    def gradients(self, impl: str):
        model = _model(self.name, impl)
        rest = {k: v for k, v in self.variables.items() if k != "params"}

        def loss(params, x, cotangents):
            out = _apply(model, {"params": params, **rest}, x, self.train)
            leaves = jax.tree.leaves(out)
            return sum(jnp.vdot(a, c) for a, c in zip(leaves, cotangents, strict=True)), out

        grad_fn = _compile(
            jax.grad(loss, has_aux=True), self.variables["params"], self.x, self.cotangents
        )
        return grad_fn(self.variables["params"], self.x, self.cotangents)


@pytest.fixture(scope="class")
def run(name):
    result = _Run(name)
    result.custom_grads, result.custom_out = jax.device_get(result.gradients("custom"))
    return result


class _Numerics:
    def test_outputs_finite_with_right_shape(self, run):
        logits = run.custom_out[0] if run.name == "googlenet" else run.custom_out
        assert logits.shape == (BATCH, NUM_CLASSES)
        assert logits.dtype == np.float64
        assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(run.custom_out))

    def test_every_parameter_gets_a_gradient(self, run):
        flat = jax.tree_util.tree_flatten_with_path(run.custom_grads)[0]
        assert len(flat) == len(jax.tree.leaves(run.variables["params"]))
        for path, grad in flat:
            assert np.all(np.isfinite(grad)), jax.tree_util.keystr(path)
            assert np.any(grad != 0), f"{jax.tree_util.keystr(path)} gets no gradient"

    def test_custom_matches_xla(self, run):
        xla_grads, xla_out = jax.device_get(run.gradients("xla"))
        for a, b in zip(jax.tree.leaves(run.custom_out), jax.tree.leaves(xla_out), strict=True):
            np.testing.assert_allclose(a, b, rtol=RTOL, atol=RTOL * np.max(np.abs(b)))
        flat_custom = jax.tree_util.tree_flatten_with_path(run.custom_grads)[0]
        for (path, a), b in zip(flat_custom, jax.tree.leaves(xla_grads), strict=True):
            np.testing.assert_allclose(
                a, b, rtol=RTOL, atol=RTOL * np.max(np.abs(b)), err_msg=jax.tree_util.keystr(path)
            )


NUMERIC = sorted(set(list_models()) - LARGE)


@pytest.mark.parametrize("name", NUMERIC, scope="class")
class TestNumerics(_Numerics):
    pass


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LARGE), scope="class")
class TestNumericsLarge(_Numerics):
    pass


# --------------------------------------------------------------------------------------------
# Modes: jit vs eager, dropout, batch norm
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lenet5", "nin"])
def test_jit_matches_eager(name):
    model = _model(name)
    x = _input(name)
    variables = _init(model, x)
    eager = model.apply(variables, x, train=False)
    jitted = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    np.testing.assert_allclose(eager, jitted, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["allconv_c", "nin"])
def test_dropout_only_in_train_mode(name):
    model = _model(name)
    x = _input(name, dtype=jnp.float32)
    variables = _init(model, x)

    @jax.jit
    def forward(variables, x, key):
        train = model.apply(variables, x, train=True, rngs={"dropout": key})
        return train, model.apply(variables, x, train=False)

    train_a, eval_a = forward(variables, x, jax.random.key(10))
    train_b, eval_b = forward(variables, x, jax.random.key(11))
    train_a2, _ = forward(variables, x, jax.random.key(10))
    np.testing.assert_array_equal(eval_a, eval_b)
    np.testing.assert_array_equal(train_a, train_a2)
    assert not np.allclose(train_a, train_b)
    assert not np.allclose(train_a, eval_a)
    with pytest.raises(Exception, match="dropout"):
        model.apply(variables, x, train=True)  # no dropout rng


@pytest.mark.parametrize("name", ["vgg11_bn", "resnet20"])
def test_batch_stats_update_only_in_train_mode(name):
    model = _model(name)
    x = _input(name, dtype=jnp.float32)
    variables = _init(model, x)
    assert "batch_stats" in variables

    @jax.jit
    def forward(variables, x):
        train, train_updates = model.apply(
            variables, x, train=True, rngs={"dropout": KEY}, mutable=["batch_stats"]
        )
        evaluated, eval_updates = model.apply(variables, x, train=False, mutable=["batch_stats"])
        return train, train_updates, evaluated, eval_updates

    train, train_updates, evaluated, eval_updates = forward(variables, x)
    old = jax.tree.leaves(variables["batch_stats"])
    assert all(
        np.array_equal(a, b)
        for a, b in zip(old, jax.tree.leaves(eval_updates["batch_stats"]), strict=True)
    )
    changed = [
        not np.allclose(a, b)
        for a, b in zip(old, jax.tree.leaves(train_updates["batch_stats"]), strict=True)
    ]
    assert all(changed)
    assert not np.allclose(train, evaluated)


# --------------------------------------------------------------------------------------------
# Parameter trees: checkpoints and torchvision imports depend on the exact paths and shapes
# --------------------------------------------------------------------------------------------

#: ``{name: {"leaves", "sha256"}}`` of the sorted ``[path, shape]`` list of every variable
#: collection, recorded before the families took their layers from ``models.blocks``: a
#: checkpoint saved then still loads.
_TREES = json.loads((pathlib.Path(__file__).parent / "param_trees.json").read_text())


def _tree_digest(name: str) -> tuple[int, str]:
    info = get_model_info(name)
    classes = info.default_num_classes if info.default_num_classes <= 10 else 7
    model = create_model(name, num_classes=classes)
    x = jax.ShapeDtypeStruct((2, *info.test_input_shape), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    items = sorted(
        (jax.tree_util.keystr(path), list(leaf.shape))
        for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]
    )
    return len(items), hashlib.sha256(json.dumps(items).encode()).hexdigest()


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in LARGE else n for n in sorted(_TREES)],
)
def test_parameter_tree_is_unchanged(name):
    leaves, digest = _tree_digest(name)
    assert {"leaves": leaves, "sha256": digest} == _TREES[name]


def test_every_registered_model_has_a_recorded_tree():
    assert sorted(_TREES) == list_models(task=None)


# --------------------------------------------------------------------------------------------
# Building blocks: the plumbing is bound once, and a new normalisation needs no family edit
# --------------------------------------------------------------------------------------------


def test_plumbing_fields_and_builders_give_the_same_kit():
    from cnnjax.models import ResNet, ResNetBlock
    from cnnjax.models.blocks import Builders

    kit = Builders(impl="xla", precision=jax.lax.Precision.HIGHEST, axis_name="batch")
    by_fields = ResNet((1,), impl="xla", precision=jax.lax.Precision.HIGHEST, axis_name="batch")
    assert by_fields.kit == ResNet((1,), builders=kit).kit == kit
    # a field set on the module wins over its builders (how the train step binds axis_name)
    assert ResNet((1,), builders=kit).clone(axis_name="shards").kit.axis_name == "shards"
    assert ResNetBlock(8, impl="xla", bn_epsilon=0.0).kit == Builders(impl="xla", bn_epsilon=0.0)


@pytest.mark.parametrize("name", ["resnet20", "densenet_bc_100_12", "mobilenet_v1", "vgg11_bn"])
def test_a_new_normalisation_is_one_builders_subclass(name):
    from flax import linen as nn

    from cnnjax.models.blocks import Builders

    class LayerNormBuilders(Builders):
        def norm(self, train, **kwargs):
            del train
            return nn.LayerNorm(epsilon=self.bn_epsilon, dtype=self.dtype, **kwargs)

    info = get_model_info(name)
    # the smallest member of each family: its blocks are what the kit reaches
    overrides = {"vgg11_bn": {"head_width": 8}, "densenet_bc_100_12": {"block_sizes": (2, 2, 2)}}
    overrides = overrides.get(name, {})
    model = create_model(name, num_classes=3, builders=LayerNormBuilders(impl="xla"), **overrides)
    x = jnp.ones((2, *info.test_input_shape))
    variables = model.init(jax.random.key(0), x, train=False)
    assert "batch_stats" not in variables  # every BatchNorm became a LayerNorm
    logits = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    assert logits.shape == (2, 3)
