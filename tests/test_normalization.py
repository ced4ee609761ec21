"""Tests for cnnjax.ops.normalization: LRN and LCN against loop oracles, impl="xla", PyTorch.

Gradient checks run in float64 (x64 is on in conftest).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference_pooling as ref
from helpers import assert_close, vjps
from jax.test_util import check_grads

from cnnjax.ops import local_contrast_norm, local_response_norm


def random(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# --------------------------------------------------------------------------------------------
# local_response_norm
# --------------------------------------------------------------------------------------------

LRN_CASES = [
    # shape, size, alpha, beta, k
    ((2, 5, 7), 3, 0.3, 0.75, 1.0),
    ((2, 4, 5, 6), 5, 1e-2, 0.75, 2.0),
    ((1, 4, 3, 5), 2, 0.5, 0.5, 1.5),  # even size: window placed off centre
    ((1, 3, 4, 3), 7, 0.4, 1.2, 1.0),  # window wider than the channels
    ((1, 2, 3, 4, 6), 4, 0.2, 0.75, 1.0),
    ((1, 3, 2, 4), 1, 0.9, 0.75, 0.5),
]


@pytest.mark.parametrize("case", LRN_CASES, ids=str)
def test_lrn_matches_oracle_and_xla(case):
    shape, size, alpha, beta, k = case
    x = random(shape)
    g = random(shape, 1)
    args = (size, alpha, beta, k)
    (y, dx), (y_xla, dx_xla), (_, dx_oracle) = vjps(
        [
            lambda x: local_response_norm(x, *args),
            lambda x: local_response_norm(x, *args, impl="xla"),
            lambda x: ref.local_response_norm_jnp(x, *args),
        ],
        x,
        g,
    )
    expected = ref.local_response_norm(x, *args)
    assert_close(y, expected)
    assert_close(y_xla, expected)
    assert_close(dx, dx_xla)
    assert_close(dx, dx_oracle)


@pytest.mark.parametrize(("shape", "size"), [((1, 4, 6), 3), ((2, 3, 4, 5), 4)])
def test_lrn_check_grads_second_order(shape, size):
    x = random(shape)
    check_grads(jax.jit(lambda x: local_response_norm(x, size, 0.5, 0.75, 1.0)), (x,), 2, ["rev"])


def test_lrn_grad_of_grad_matches_xla():
    x, w = random((2, 3, 4, 5)), random((2, 3, 4, 5), 1)

    def hessian_vector(impl):
        inner = jax.grad(
            lambda x: jnp.sum(jnp.sin(local_response_norm(x, 3, 0.5, 0.75, impl=impl)))
        )
        return jax.jit(jax.grad(lambda x: jnp.sum(inner(x) * w)))(x)

    assert_close(hessian_vector("custom"), hessian_vector("xla"))


@pytest.mark.parametrize(
    ("shape", "size"), [((2, 9, 5), 3), ((2, 4, 5, 7), 5), ((1, 3, 4, 5, 6), 2), ((1, 4, 4, 3), 6)]
)
def test_lrn_matches_torch(shape, size):
    torch = pytest.importorskip("torch")
    x = random(shape)
    xt = torch.tensor(np.moveaxis(x, -1, 1), requires_grad=True)
    yt = torch.nn.functional.local_response_norm(xt, size, alpha=0.3, beta=0.75, k=1.5)
    g = random(tuple(yt.shape), 1)
    yt.backward(torch.tensor(g))
    results = vjps(
        [
            lambda x, i=impl: local_response_norm(x, size, 0.3, 0.75, 1.5, impl=i)
            for impl in ("custom", "xla")
        ],
        x,
        np.moveaxis(g, 1, -1),
    )
    for y, dx in results:
        assert_close(y, np.moveaxis(yt.detach().numpy(), 1, -1))
        assert_close(dx, np.moveaxis(xt.grad.numpy(), 1, -1))


def test_lrn_defaults_match_oracle():
    x = random((1, 3, 3, 8)) * 10
    assert_close(local_response_norm(x, 5), ref.local_response_norm(x, 5))


# --------------------------------------------------------------------------------------------
# local_contrast_norm
# --------------------------------------------------------------------------------------------

LCN_CASES = [
    # shape, size, sigma, eps
    ((2, 9, 3), 5, 1.5, 1e-6),
    ((2, 6, 7, 3), 5, None, 1e-6),
    ((1, 7, 6, 2), 3, 0.8, 1e-6),
    ((1, 6, 2), 9, 2.0, 1e-6),  # window wider than the image
    ((1, 3, 4, 5, 2), 3, 1.0, 1e-6),
    ((1, 6, 5, 2), 1, 1.0, 1e-6),  # size 1: pure channel-mean removal
]


@pytest.mark.parametrize("case", LCN_CASES, ids=str)
def test_lcn_matches_oracle_and_xla(case):
    shape, size, sigma, eps = case
    x = random(shape)
    g = random(shape, 1)
    oracle_sigma = size / 4 if sigma is None else sigma
    (y, dx), (y_xla, dx_xla), (_, dx_oracle) = vjps(
        [
            lambda x: local_contrast_norm(x, size, sigma, eps=eps),
            lambda x: local_contrast_norm(x, size, sigma, eps=eps, impl="xla"),
            lambda x: ref.local_contrast_norm_jnp(x, size, oracle_sigma, eps),
        ],
        x,
        g,
    )
    expected = ref.local_contrast_norm(x, size, oracle_sigma, eps)
    assert_close(y, expected)
    assert_close(y_xla, expected)
    assert_close(dx, dx_xla)
    assert_close(dx, dx_oracle)


def test_lcn_both_divisor_branches_are_exercised():
    # The comparisons above only cover both branches of max(mean, sigma_j) if sigma_j beats the
    # mean at some positions and not at others.
    for shape, size, sigma, _ in LCN_CASES[:3]:
        _, sigma_map = ref.local_contrast_parts(
            random(shape), size, size / 4 if sigma is None else sigma
        )
        mean = sigma_map.mean(axis=tuple(range(1, sigma_map.ndim)), keepdims=True)
        assert (sigma_map > mean).any() and (sigma_map < mean).any()


@pytest.mark.parametrize(("shape", "size"), [((1, 6, 2), 3), ((1, 4, 3, 2), 3)])
def test_lcn_check_grads_second_order(shape, size):
    x = random(shape)
    check_grads(jax.jit(lambda x: local_contrast_norm(x, size, 1.0)), (x,), 2, ["rev"])


def test_lcn_grad_of_grad_matches_xla():
    x, w = random((2, 5, 6, 2)), random((2, 5, 6, 2), 1)

    def hessian_vector(impl):
        inner = jax.grad(lambda x: jnp.sum(jnp.sin(local_contrast_norm(x, 3, 1.0, impl=impl))))
        return jax.jit(jax.grad(lambda x: jnp.sum(inner(x) * w)))(x)

    assert_close(hessian_vector("custom"), hessian_vector("xla"))


def test_lcn_eps_floor_on_zero_input():
    # Zero input: v = 0 and sigma = mean = 0 < eps, so the divisor is the eps floor, y = 0 and
    # dx = (adjoint of the subtractive stage)(g) / eps, with nothing flowing through the floor.
    # (impl="xla" gives NaN here: the derivative of sqrt at 0.)
    x = np.zeros((1, 5, 5, 2))
    g = random(x.shape)
    (y, dx), (_, dx_subtract) = vjps(
        [
            lambda x: local_contrast_norm(x, 3, 0.75, eps=0.5),
            lambda x: ref.local_contrast_subtract_jnp(x, 3, 0.75),
        ],
        x,
        g,
    )
    np.testing.assert_array_equal(y, np.zeros(x.shape))
    assert_close(dx, dx_subtract / 0.5)


def test_lcn_output_is_normalised():
    # Interior positions of a large smooth-variance input have sigma_map ~ 1 after LCN.
    x = random((1, 40, 40, 3)) * 7.0 + 3.0
    y = np.asarray(local_contrast_norm(x, 9))
    assert abs(y[0, 8:-8, 8:-8].mean()) < 0.1
    assert 0.5 < y[0, 8:-8, 8:-8].std() < 1.5


# --------------------------------------------------------------------------------------------
# Transformations and errors (both ops)
# --------------------------------------------------------------------------------------------


OPS = {
    "local_response_norm": lambda x, impl="custom": local_response_norm(x, 3, 0.5, impl=impl),
    "local_contrast_norm": lambda x, impl="custom": local_contrast_norm(x, 3, impl=impl),
}


@pytest.mark.parametrize("name", OPS)
def test_jit_vmap_and_tracing(name):
    op = OPS[name]
    x = random((3, 2, 5, 4, 3))  # extra leading axis for vmap
    loss = lambda x: jnp.sum(op(x) ** 2)  # noqa: E731
    batched = jax.jit(jax.vmap(jax.grad(loss)))(x)
    single = jax.jit(jax.grad(loss))
    assert_close(batched, np.stack([single(xi) for xi in x]))
    traces = []

    def counted(x):
        traces.append(None)
        return loss(x)

    step = jax.jit(jax.value_and_grad(counted))
    for xi in x:
        step(xi)
    assert len(traces) == 1


@pytest.mark.parametrize("name", OPS)
def test_forward_mode(name):
    op = OPS[name]
    x = random((1, 4, 4, 3))
    with pytest.raises(TypeError, match=f'{name}: .*impl="xla"'):
        jax.jvp(op, (x,), (x,))
    _, tangent = jax.jvp(lambda x: op(x, impl="xla"), (x,), (x,))
    _, tangent_rev = vjps([lambda x: op(x, impl="xla")], x, np.zeros(x.shape))[0]
    assert tangent.shape == x.shape and tangent_rev.shape == x.shape


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda x: local_response_norm(x, 0), ValueError, r"size must be an int >= 1, got 0"),
        (lambda x: local_response_norm(x, 2.5), TypeError, r"size must be an int"),
        (lambda x: local_response_norm(x, 3, alpha="a"), TypeError, r"alpha must be"),
        (lambda x: local_response_norm(x, 3, beta=float("nan")), ValueError, r"beta must be"),
        (lambda x: local_response_norm(x[0, 0], 3), ValueError, r"local_response_norm: x .*rank"),
        (lambda x: local_response_norm(x, 3, impl="fast"), ValueError, r"impl must be"),
        (lambda x: local_response_norm(x.astype(int), 3), TypeError, r"x must have a floating"),
        (lambda x: local_contrast_norm(x, 4), ValueError, r"size must be odd .*got size=4"),
        (lambda x: local_contrast_norm(x, 0), ValueError, r"size must be an odd int >= 1"),
        (lambda x: local_contrast_norm(x, 3, 0.0), ValueError, r"sigma must be > 0, got sigma=0"),
        (lambda x: local_contrast_norm(x, 3, eps=0), ValueError, r"eps must be > 0"),
        (lambda x: local_contrast_norm(x[None, None], 3), ValueError, r"rank 6"),
        (lambda x: local_contrast_norm(x, 3, impl="XLA"), ValueError, r"impl must be"),
    ],
)
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call(jnp.zeros((1, 5, 5, 2)))
