"""Tests for max-pool switches (``return_indices``) and ``cnnjax.ops.max_unpool``.

Loop oracles (reference_unpool), ``impl="xla"``, finite differences and grad-of-grad in float64,
and PyTorch's ``max_pool*d(return_indices=True)`` / ``max_unpool*d`` when installed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference_unpool as ref_unpool
from helpers import assert_close, vjp, vjps
from jax.test_util import check_grads
from test_pooling import MAX_CASES, TORCH_MAX, cotangent, distinct

import cnnjax
from cnnjax.ops import max_pool, max_unpool


@pytest.mark.parametrize("impl", ["custom", "xla"])
@pytest.mark.parametrize("case", MAX_CASES, ids=str)
def test_max_pool_indices_match_oracle(case, impl):
    shape, window, stride, padding, dilation, ceil_mode = case
    x = distinct(shape)
    y, idx = max_pool(
        x, window, stride, padding, dilation, ceil_mode, return_indices=True, impl=impl
    )
    expected = ref_unpool.max_pool_indices(x, window, stride, padding, dilation, ceil_mode)
    assert idx.dtype == jnp.int32
    np.testing.assert_array_equal(idx, expected)
    assert_close(y, max_pool(x, window, stride, padding, dilation, ceil_mode))
    # the switches point at the maxima
    flat = x.reshape(x.shape[0], -1, x.shape[-1])
    picked = np.take_along_axis(flat, np.asarray(idx).reshape(idx.shape[0], -1, idx.shape[-1]), 1)
    assert_close(picked.reshape(y.shape), y)


def test_max_pool_indices_ties_nan_and_all_minus_inf():
    x = np.round(distinct((1, 8, 9, 2)) * 4)  # many ties
    x[0, 0, 0, 0] = np.nan
    x[0, 4:6, 4:6, 1] = -np.inf
    for args in [(3, 2, 1, 1, True), (2, 2, 1, 2, False), (2, None, 0, 1, False)]:
        _, idx = max_pool(x, *args, return_indices=True)
        np.testing.assert_array_equal(idx, ref_unpool.max_pool_indices(x, *args))


def test_max_pool_indices_carry_no_gradient():
    x = distinct((1, 6, 6, 2))
    g = cotangent((1, 3, 3, 2))
    (_, dx) = vjp(lambda x: max_pool(x, 2, return_indices=True)[0], x, g)
    assert_close(dx, jax.vjp(lambda x: max_pool(x, 2), x)[1](g)[0])


@pytest.mark.parametrize("case", TORCH_MAX, ids=str)
def test_max_pool_indices_match_torch(case):
    torch = pytest.importorskip("torch")
    shape, window, stride, padding, dilation, ceil_mode = case
    pool = [
        None,
        torch.nn.functional.max_pool1d,
        torch.nn.functional.max_pool2d,
        torch.nn.functional.max_pool3d,
    ][len(shape) - 2]
    x = distinct(shape)
    yt, it = pool(
        torch.tensor(np.moveaxis(x, -1, 1)),
        window,
        stride,
        padding,
        dilation,
        ceil_mode,
        return_indices=True,
    )
    y, idx = max_pool(x, window, stride, padding, dilation, ceil_mode, return_indices=True)
    np.testing.assert_array_equal(idx, np.moveaxis(it.numpy(), 1, -1))
    assert_close(y, np.moveaxis(yt.numpy(), 1, -1))


UNPOOL_CASES = [
    # pooled input shape, window, stride, padding, dilation, ceil_mode (overlaps included)
    ((2, 8, 3), 2, None, 0, 1, False),
    ((1, 9, 2), 3, 2, 1, 1, True),
    ((2, 7, 8, 2), 3, 2, 1, 1, True),
    ((1, 8, 8, 3), 2, None, 0, 1, False),
    ((1, 9, 7, 2), (3, 2), (1, 3), (1, 0), (2, 1), True),
    ((1, 4, 5, 6, 2), (2, 3, 2), (2, 1, 2), (1, 1, 0), 1, True),
]


@pytest.mark.parametrize("case", UNPOOL_CASES, ids=str)
def test_max_unpool_matches_oracle_xla_and_is_the_max_pool_vjp(case):
    shape, window, stride, padding, dilation, ceil_mode = case
    x = distinct(shape)
    kw = dict(stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode)
    y, idx = max_pool(x, window, **kw, return_indices=True)
    out = shape[1:-1]
    g = cotangent(shape, 3)
    fs = [
        lambda y, i=impl: max_unpool(y, idx, window, output_shape=out, impl=i)
        for impl in ("custom", "xla")
    ]
    (z, dy), (z_xla, dy_xla) = vjps(fs, y, g)
    expected = ref_unpool.max_unpool(y, idx, out)
    assert_close(z, expected)
    assert_close(z_xla, expected)
    assert_close(dy, ref_unpool.max_unpool_grad(g, idx))
    assert_close(dy, dy_xla)
    # unpooling at the switches is exactly max pooling's backward pass (overlaps add in both)
    assert_close(z, jax.vjp(lambda x: max_pool(x, window, **kw), x)[1](y)[0])


def test_max_unpool_default_output_size_and_full_output_shape():
    x = distinct((2, 6, 4, 3))
    y, idx = max_pool(x, 2, return_indices=True)
    z = max_unpool(y, idx, 2)
    assert z.shape == x.shape
    assert_close(z, max_unpool(y, idx, 2, output_shape=x.shape))
    assert_close(cnnjax.max_unpool(y, idx, (2, 2), (2, 2), 0), z)


@pytest.mark.parametrize("impl", ["custom", "xla"])
def test_max_unpool_finite_differences_and_grad_of_grad(impl):
    x = distinct((1, 7, 6, 2))
    y, idx = max_pool(x, 3, 2, 1, return_indices=True)

    def f(y):
        return max_unpool(y, idx, 3, 2, 1, output_shape=(7, 6), impl=impl)

    check_grads(f, (np.asarray(y),), order=2, modes=["rev"])

    def loss(y):
        return jnp.sum(jnp.sin(f(y)) ** 2)

    def xla_loss(y):
        return jnp.sum(jnp.sin(max_unpool(y, idx, 3, 2, 1, output_shape=(7, 6), impl="xla")) ** 2)

    hvp = jax.jit(jax.grad(lambda y: jnp.vdot(jax.grad(loss)(y), jnp.cos(y))))(y)
    hvp_xla = jax.jit(jax.grad(lambda y: jnp.vdot(jax.grad(xla_loss)(y), jnp.cos(y))))(y)
    assert_close(hvp, hvp_xla)


@pytest.mark.parametrize(
    "shape, window, stride, padding, out",
    [
        ((2, 10, 3), 2, 2, 0, None),
        ((1, 9, 8, 2), 3, 3, 1, (9, 8)),
        ((1, 7, 7, 2), 3, 3, 1, None),
        ((1, 9, 7, 2), 2, 2, 0, (9, 7)),  # odd sizes: output_size needed
        ((1, 4, 6, 4, 2), 2, 2, 0, None),
        ((1, 4, 6, 5, 2), (2, 3, 1), (2, 3, 2), 0, (4, 6, 5)),
    ],
    ids=str,
)
def test_max_unpool_matches_torch(shape, window, stride, padding, out):
    torch = pytest.importorskip("torch")
    nd = len(shape) - 2
    f = torch.nn.functional
    pool = [None, f.max_pool1d, f.max_pool2d, f.max_pool3d][nd]
    unpool = [None, f.max_unpool1d, f.max_unpool2d, f.max_unpool3d][nd]
    x = distinct(shape)
    _, it = pool(torch.tensor(np.moveaxis(x, -1, 1)), window, stride, padding, return_indices=True)
    yt = torch.tensor(
        np.moveaxis(cotangent(tuple(np.moveaxis(np.empty(it.shape), 1, -1).shape)), -1, 1),
        requires_grad=True,
    )
    zt = unpool(yt, it, window, stride, padding, output_size=out)
    gt = torch.tensor(cotangent(tuple(zt.shape), 5))
    zt.backward(gt)
    y, idx = np.moveaxis(yt.detach().numpy(), 1, -1), np.moveaxis(it.numpy(), 1, -1)
    g = np.moveaxis(gt.numpy(), 1, -1)
    for impl in ("custom", "xla"):
        z, dy = vjp(
            lambda y, i=impl: max_unpool(y, idx, window, stride, padding, out, impl=i), y, g
        )
        assert_close(z, np.moveaxis(zt.detach().numpy(), 1, -1))
        assert_close(dy, np.moveaxis(yt.grad.numpy(), 1, -1))


def test_max_unpool_overlaps_add_where_torch_writes_once():
    torch = pytest.importorskip("torch")
    x = np.zeros((1, 5, 1))
    x[0, 2, 0] = 1.0  # the max of both overlapping windows [0:3] and [2:5]
    y, idx = max_pool(x, 3, 2, return_indices=True)
    np.testing.assert_array_equal(idx.ravel(), [2, 2])
    z = max_unpool(y, idx, 3, 2)
    zt = torch.nn.functional.max_unpool1d(
        torch.tensor(np.moveaxis(np.asarray(y), -1, 1)),
        torch.tensor(np.moveaxis(np.asarray(idx), -1, 1)).long(),
        3,
        2,
    )
    assert float(z[0, 2, 0]) == 2.0 and float(zt[0, 0, 2]) == 1.0


def test_max_unpool_jit_and_vmap():
    x = distinct((3, 6, 6, 2))
    y, idx = max_pool(x, 2, return_indices=True)
    z = max_unpool(y, idx, 2)
    assert_close(jax.jit(lambda y, i: max_unpool(y, i, 2))(y, idx), z)
    vm = jax.vmap(lambda y, i: max_unpool(y[None], i[None], 2)[0])(y, idx)
    assert_close(vm, z)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (
            lambda: max_unpool(jnp.ones((1, 2, 2, 1)), jnp.zeros((1, 2, 1), jnp.int32), 2),
            ValueError,
            "indices must have the shape of y",
        ),
        (
            lambda: max_unpool(jnp.ones((1, 2, 2, 1)), jnp.zeros((1, 2, 2, 1)), 2),
            TypeError,
            "indices must be an integer array",
        ),
        (
            lambda: max_unpool(jnp.ones((1, 2, 1)), jnp.array([[[0], [9]]]), 2),
            ValueError,
            r"indices must lie in \[0, prod\(out\)\) = \[0, 4\)",
        ),
        (
            lambda: max_unpool(
                jnp.ones((1, 2, 1)), jnp.zeros((1, 2, 1), jnp.int32), 2, output_shape=(7, 1)
            ),
            ValueError,
            "output_shape must give 1 spatial sizes",
        ),
        (
            lambda: max_unpool(jnp.ones((2, 1)), jnp.zeros((2, 1), jnp.int32), 2),
            ValueError,
            "max_unpool: y must have shape",
        ),
        (
            lambda: max_unpool(jnp.ones((1, 2, 1)), jnp.zeros((1, 2, 1), jnp.int32), 0),
            ValueError,
            "max_unpool: window must be >= 1",
        ),
        (
            lambda: max_unpool(jnp.ones((1, 2, 1)), jnp.zeros((1, 2, 1), jnp.int32), 2, impl="c"),
            ValueError,
            "impl must be",
        ),
    ],
)
def test_max_unpool_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_out_of_range_numpy_indices_are_refused_under_jit_too():
    """The breaker's fuzz case: indices from a 3-wide window on a 3x3x3 input point into 27
    positions, but the default output size is 1x1x1; eagerly a ValueError, and under jit (the
    indices a NumPy constant, so still known) the same error, not a silent drop."""
    x = jnp.asarray(np.random.default_rng(0).permutation(54).reshape(2, 3, 3, 3, 1) * 1.0)
    y, idx = max_pool(x, 3, 3, 1, return_indices=True)
    idx = np.asarray(idx)
    with pytest.raises(ValueError, match=r"max_unpool: indices must lie in \[0, prod\(out\)\)"):
        max_unpool(y, idx, 3, 3, 1)
    with pytest.raises(ValueError, match=r"max_unpool: indices must lie in \[0, prod\(out\)\)"):
        jax.jit(lambda y: max_unpool(y, idx, 3, 3, 1))(y)


@pytest.mark.parametrize(
    ("x", "pool"),
    [
        ([-np.inf, -np.inf], dict(window=3, stride=1, padding=1)),
        (
            [-np.inf, -np.inf, 3.0, -np.inf, -np.inf],
            dict(window=3, stride=2, padding=1, dilation=2),
        ),
        ([-np.inf] * 5, dict(window=9, stride=1, padding=4, dilation=1)),
    ],
)
def test_a_window_of_minus_inf_routes_its_gradient_where_its_index_points(x, pool):
    """A window whose real taps are all -inf ties with its padding: the gradient used to go to
    the (discarded) padded tap while the index pointed at the first real tap. Now the custom
    VJP routes it to the first real tap, as PyTorch does: grad == max_unpool(dy, indices)."""
    x = jnp.asarray(x)[None, :, None]
    y, idx = max_pool(x, **pool, return_indices=True)
    dy = jnp.arange(1.0, y.size + 1).reshape(y.shape)
    grad = jax.vjp(lambda x: max_pool(x, **pool), x)[1](dy)[0]
    unpooled = max_unpool(dy, idx, pool["window"], output_shape=x.shape)
    np.testing.assert_array_equal(grad, unpooled)


def test_indices_traced_by_grad_skip_the_eager_check():
    """Indices that are tracers (here: JVP tracers under jax.grad) are not read eagerly; the
    scatter still routes the gradient to the switches."""

    def loss(x):
        y, idx = max_pool(x, 2, return_indices=True)
        return jnp.sum(max_unpool(y, idx, 2) * jnp.arange(16.0).reshape(1, 4, 4, 1))

    x = jnp.asarray(np.random.default_rng(0).permutation(16).reshape(1, 4, 4, 1), jnp.float64)
    grad = jax.grad(loss)(x)
    _, idx = max_pool(x, 2, return_indices=True)
    expected = np.zeros(16)
    expected[np.asarray(idx).ravel()] = np.asarray(idx).ravel()  # d/dx_i of x_i * i
    np.testing.assert_array_equal(np.asarray(grad).ravel(), expected)
