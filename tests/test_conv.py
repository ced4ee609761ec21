"""conv / conv_transpose / depthwise / separable: forward and hand-derived gradients, three ways.

References: (1) ``impl="xla"`` autodiff, (2) the naive oracles in ``tests/reference.py`` and
their autodiff, (3) finite differences (``check_grads``, reverse mode, order 2). All float64.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_rel_close
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads
from reference import conv_reference, conv_reference_numpy, conv_transpose_reference

import cnnjax
from cnnjax import ops, shapes


def random_arrays(seed, *shapes_):
    keys = jax.random.split(jax.random.PRNGKey(seed), len(shapes_))
    return [jax.random.normal(k, s, jnp.float64) for k, s in zip(keys, shapes_, strict=True)]


# ---------------------------------------------------------------------------------------------
# Hand-picked configurations: (x_shape, kernel, c_out, kwargs)
# ---------------------------------------------------------------------------------------------

CONV_CASES = [
    ((2, 9, 4), (3,), 5, dict(stride=2, padding=1)),
    ((2, 7, 8, 4), (3, 3), 6, dict(stride=1, padding="SAME")),
    ((2, 7, 8, 4), (3, 2), 6, dict(stride=(2, 3), padding=((1, 2), (0, 1)), dilation=(1, 2))),
    ((1, 6, 6, 4), (2, 2), 4, dict(stride=3, padding=0, groups=2)),  # stride > kernel
    ((2, 8, 8, 6), (3, 3), 6, dict(stride=2, padding="SAME", groups=6)),  # depthwise
    ((1, 5, 6, 5, 2), (2, 3, 2), 3, dict(stride=(1, 2, 2), padding=1, dilation=(2, 1, 1))),
    ((1, 11, 3), (4,), 4, dict(stride=2, padding=(3,), dilation=3)),
]

CONV_TRANSPOSE_CASES = [
    ((2, 5, 3), (3,), 4, dict(stride=2, padding=1, output_padding=1)),
    ((2, 4, 5, 4), (3, 3), 3, dict(stride=2, padding=1, output_padding=1)),
    ((1, 4, 3, 4), (2, 3), 4, dict(stride=(3, 2), padding=((0, 1), (2, 1)), dilation=(1, 2))),
    ((1, 3, 4, 6), (3, 3), 4, dict(stride=2, padding=0, groups=2, output_padding=(1, 0))),
    ((1, 3, 3, 2, 2), (2, 2, 3), 3, dict(stride=(2, 1, 2), padding=(1, 0, 1), dilation=(1, 2, 1))),
]


def conv_weight_shape(x_shape, kernel, c_out, groups):
    return (*kernel, x_shape[-1] // groups, c_out)


def transpose_weight_shape(x_shape, kernel, c_out, groups):
    return (*kernel, x_shape[-1], c_out // groups)


@pytest.mark.parametrize("x_shape,kernel,c_out,kwargs", CONV_CASES)
def test_conv_forward_matches_oracles_and_xla(x_shape, kernel, c_out, kwargs):
    groups = kwargs.get("groups", 1)
    x, w, b = random_arrays(0, x_shape, conv_weight_shape(x_shape, kernel, c_out, groups), (c_out,))
    y = ops.conv(x, w, b, **kwargs)
    pads = shapes.canonicalize_padding(
        kwargs.get("padding", 0),
        len(kernel),
        kernel=kernel,
        stride=shapes.canonicalize_tuple(kwargs.get("stride", 1), len(kernel), "stride"),
        dilation=shapes.canonicalize_tuple(kwargs.get("dilation", 1), len(kernel), "dilation"),
        spatial=x_shape[1:-1],
    )
    ref_kwargs = {**kwargs, "padding": pads}
    assert_rel_close(y, conv_reference(x, w, b, **ref_kwargs), what="oracle")
    assert_rel_close(y, ops.conv(x, w, b, impl="xla", **kwargs), what="xla")
    if np.prod(y.shape) <= 600:
        assert_rel_close(y - b, conv_reference_numpy(x, w, **ref_kwargs), what="loop oracle")


@pytest.mark.parametrize("x_shape,kernel,c_out,kwargs", CONV_CASES)
def test_conv_gradients_three_ways(x_shape, kernel, c_out, kwargs):
    groups = kwargs.get("groups", 1)
    x, w, b = random_arrays(1, x_shape, conv_weight_shape(x_shape, kernel, c_out, groups), (c_out,))
    pads = shapes.canonicalize_padding(
        kwargs.get("padding", 0),
        len(kernel),
        kernel=kernel,
        stride=shapes.canonicalize_tuple(kwargs.get("stride", 1), len(kernel), "stride"),
        dilation=shapes.canonicalize_tuple(kwargs.get("dilation", 1), len(kernel), "dilation"),
        spatial=x_shape[1:-1],
    )
    (cotangent,) = random_arrays(2, ops.conv(x, w, b, **kwargs).shape)

    def loss(fn):
        return lambda x, w, b: jnp.sum(fn(x, w, b) * cotangent)

    custom = jax.grad(loss(lambda *a: ops.conv(*a, **kwargs)), argnums=(0, 1, 2))(x, w, b)
    xla = jax.grad(loss(lambda *a: ops.conv(*a, impl="xla", **kwargs)), argnums=(0, 1, 2))(x, w, b)
    oracle_kwargs = {**kwargs, "padding": pads}
    oracle = jax.grad(loss(lambda *a: conv_reference(*a, **oracle_kwargs)), argnums=(0, 1, 2))(
        x, w, b
    )
    for name, c, r, o in zip("xwb", custom, xla, oracle, strict=True):
        assert_rel_close(c, r, what=f"d{name} vs xla")
        assert_rel_close(c, o, what=f"d{name} vs oracle")
    check_grads(
        lambda x, w, b: ops.conv(x, w, b, **kwargs), (x, w, b), order=2, modes=["rev"], eps=1e-4
    )


@pytest.mark.parametrize("x_shape,kernel,c_out,kwargs", CONV_TRANSPOSE_CASES)
def test_conv_transpose_forward_and_gradients(x_shape, kernel, c_out, kwargs):
    groups = kwargs.get("groups", 1)
    x, w, b = random_arrays(
        3, x_shape, transpose_weight_shape(x_shape, kernel, c_out, groups), (c_out,)
    )
    y = ops.conv_transpose(x, w, b, **kwargs)
    expected_spatial = tuple(
        shapes.conv_transpose_output_size(
            n,
            k,
            shapes.canonicalize_tuple(kwargs.get("stride", 1), len(kernel), "s")[i],
            shapes.canonicalize_padding(kwargs.get("padding", 0), len(kernel))[i],
            shapes.canonicalize_tuple(
                kwargs.get("output_padding", 0), len(kernel), "op", minimum=0
            )[i],
            shapes.canonicalize_tuple(kwargs.get("dilation", 1), len(kernel), "d")[i],
        )
        for i, (n, k) in enumerate(zip(x_shape[1:-1], kernel, strict=True))
    )
    assert y.shape == (x_shape[0], *expected_spatial, c_out)
    assert_rel_close(y, conv_transpose_reference(x, w, b, **kwargs), what="oracle")
    assert_rel_close(y, ops.conv_transpose(x, w, b, impl="xla", **kwargs), what="xla")

    (cotangent,) = random_arrays(4, y.shape)

    def loss(fn):
        return lambda x, w, b: jnp.sum(fn(x, w, b) * cotangent)

    argnums = (0, 1, 2)
    custom = jax.grad(loss(lambda *a: ops.conv_transpose(*a, **kwargs)), argnums)(x, w, b)
    xla = jax.grad(loss(lambda *a: ops.conv_transpose(*a, impl="xla", **kwargs)), argnums)(x, w, b)
    oracle = jax.grad(loss(lambda *a: conv_transpose_reference(*a, **kwargs)), argnums)(x, w, b)
    for name, c, r, o in zip("xwb", custom, xla, oracle, strict=True):
        assert_rel_close(c, r, what=f"d{name} vs xla")
        assert_rel_close(c, o, what=f"d{name} vs oracle")
    check_grads(
        lambda x, w, b: ops.conv_transpose(x, w, b, **kwargs),
        (x, w, b),
        order=2,
        modes=["rev"],
        eps=1e-4,
    )


@pytest.mark.parametrize("groups", [1, 2])
def test_conv_transpose_is_the_adjoint_of_conv(groups):
    """<conv(z, w'), x> == <z, conv_transpose(x, w)>, and the Jacobians are transposes."""
    stride, padding, dilation, kernel = (2, 3), ((1, 0), (2, 1)), (1, 2), (3, 2)
    z_shape = (2, 9, 10, 4)  # input of the forward conv (C = 4 channels)
    w_t_shape = (*kernel, 6, 4 // groups)  # transposed conv: C_in = 6 -> C_out = 4
    z, w_t = random_arrays(5, z_shape, w_t_shape)
    w_conv = jnp.swapaxes(w_t, -1, -2)  # conv kernel: 4 -> 6 channels, (*k, 4/G, 6)
    forward = lambda z: ops.conv(  # noqa: E731
        z, w_conv, stride=stride, padding=padding, dilation=dilation, groups=groups
    )
    y_shape = forward(z).shape
    # output_padding that makes the transposed conv produce z's spatial size
    op_ = tuple(
        n - shapes.conv_transpose_output_size(o, k, s, p, 0, d)
        for n, o, k, s, p, d in zip(
            z_shape[1:-1], y_shape[1:-1], kernel, stride, padding, dilation, strict=True
        )
    )
    (x,) = random_arrays(6, y_shape)
    transpose = lambda x: ops.conv_transpose(  # noqa: E731
        x, w_t, stride=stride, padding=padding, dilation=dilation, groups=groups, output_padding=op_
    )
    assert transpose(x).shape == z_shape
    np.testing.assert_allclose(jnp.vdot(forward(z), x), jnp.vdot(z, transpose(x)), rtol=1e-12)
    _, vjp = jax.vjp(forward, z)
    assert_rel_close(transpose(x), vjp(x)[0], what="conv_transpose vs VJP of conv")
    jac_conv = jax.jacrev(forward)(z).reshape(np.prod(y_shape), np.prod(z_shape))
    jac_transpose = jax.jacrev(transpose)(x).reshape(np.prod(z_shape), np.prod(y_shape))
    assert_rel_close(jac_transpose, jac_conv.T, what="Jacobian transpose")


@pytest.mark.parametrize(
    "op,x_shape,kernel,c_out,kwargs",
    [
        ("conv", (70, 5, 4, 3), (3, 3), 4, dict(stride=2, padding=1)),
        ("conv", (33, 6, 4), (3,), 6, dict(padding="SAME", groups=2, dilation=2)),
        ("conv_transpose", (40, 3, 4, 2), (3, 3), 3, dict(stride=2, padding=1)),
    ],
)
def test_batch_chunked_weight_gradient_matches_xla(op, x_shape, kernel, c_out, kwargs):
    """Batches over 8, partial last chunk: the CPU weight gradient sums chunks (issue 9)."""
    groups = kwargs.get("groups", 1)
    shape = conv_weight_shape if op == "conv" else transpose_weight_shape
    x, w = random_arrays(3, x_shape, shape(x_shape, kernel, c_out, groups))
    fn = getattr(ops, op)
    (cotangent,) = random_arrays(4, fn(x, w, **kwargs).shape)

    def grads(impl):
        loss = lambda x, w: jnp.sum(fn(x, w, impl=impl, **kwargs) * cotangent)  # noqa: E731
        return jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)

    for name, c, r in zip("xw", grads("custom"), grads("xla"), strict=True):
        assert_rel_close(c, r, what=f"d{name} vs xla")


def test_weight_gradient_sums_batch_chunks_on_cpu_only():
    """Issue 9: on CPU the weight gradient is one conv per batch chunk of 8; elsewhere one."""

    def loss(x, w):
        return jnp.sum(ops.conv(x, w, padding=1) ** 2)

    w = jnp.ones((3, 3, 3, 5))
    grad_w = jax.jit(jax.grad(loss, argnums=1))

    def convs(batch, platform):
        x = jnp.ones((batch, 4, 4, 3))
        lowered = grad_w.trace(x, w).lower(lowering_platforms=(platform,))
        return lowered.as_text().count("stablehlo.convolution")

    assert convs(8, "cpu") == 2  # forward + weight gradient
    assert convs(38, "cpu") == 6  # forward + chunks of 8, 8, 8, 8, 6
    assert convs(200, "cpu") == 17  # at most 16 chunks (of 13)
    assert convs(70, "cuda") == 2


def test_depthwise_and_separable():
    x, w_dw, w_pw, b = random_arrays(7, (2, 8, 7, 3), (3, 3, 1, 6), (1, 1, 6, 5), (5,))
    y = ops.depthwise_conv(x, w_dw, stride=2, padding=1)
    assert y.shape == (2, 4, 4, 6)
    assert_rel_close(y, conv_reference(x, w_dw, stride=2, padding=1, groups=3))
    # channel c's filters are w[..., 0, c*m:(c+1)*m]
    single = conv_reference(x[..., 1:2], w_dw[..., 2:4], stride=2, padding=1)
    assert_rel_close(y[..., 2:4], single, what="channel 1 filters")
    s = ops.separable_conv(x, w_dw, w_pw, b, stride=2, padding=1)
    assert_rel_close(s, conv_reference(y, w_pw, b), what="separable = depthwise then pointwise")
    f = lambda *a: jnp.sum(jnp.sin(ops.separable_conv(*a, stride=2, padding=1)))  # noqa: E731
    g = lambda *a: jnp.sum(  # noqa: E731
        jnp.sin(ops.separable_conv(*a, stride=2, padding=1, impl="xla"))
    )
    for c, r in zip(
        jax.grad(f, (0, 1, 2, 3))(x, w_dw, w_pw, b),
        jax.grad(g, (0, 1, 2, 3))(x, w_dw, w_pw, b),
        strict=True,
    ):
        assert_rel_close(c, r)


# ---------------------------------------------------------------------------------------------
# Hypothesis: hundreds of random configurations
# ---------------------------------------------------------------------------------------------


@st.composite
def conv_configs(draw, transpose=False):
    ndim = draw(st.integers(1, 3))
    max_n = {1: 9, 2: 7, 3: 4}[ndim]
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    c_in = groups * draw(st.integers(1, 2))
    c_out = groups * draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(ndim))
    padding = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(ndim))
    spatial = tuple(draw(st.integers(1, max_n)) for _ in range(ndim))
    batch = draw(st.integers(1, 2))
    if transpose:
        output_padding = tuple(
            draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation, strict=True)
        )
        outs = [
            shapes.conv_transpose_output_size(n, k, s, p, op, d)
            for n, k, s, p, op, d in zip(
                spatial, kernel, stride, padding, output_padding, dilation, strict=True
            )
        ]
        extra = dict(output_padding=output_padding)
        w_shape = (*kernel, c_in, c_out // groups)
    else:
        outs = [
            shapes.conv_output_size(n, k, s, p, d)
            for n, k, s, p, d in zip(spatial, kernel, stride, padding, dilation, strict=True)
        ]
        extra = {}
        w_shape = (*kernel, c_in // groups, c_out)
    assume(min(outs) >= 1)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, **extra)
    return (batch, *spatial, c_in), w_shape, c_out, kwargs


def _check_against_references(op, reference, x_shape, w_shape, c_out, kwargs, seed):
    x, w, b = random_arrays(seed, x_shape, w_shape, (c_out,))
    y_shape = jax.eval_shape(lambda *a: op(*a, **kwargs), x, w, b).shape
    (cotangent,) = random_arrays(seed + 1, y_shape)

    def forward_and_vjps(x, w, b):
        # One jitted computation per configuration: compiling once keeps hundreds of cases fast.
        results = {}
        for name, fn in [
            ("custom", lambda *a: op(*a, **kwargs)),
            ("xla", lambda *a: op(*a, impl="xla", **kwargs)),
            ("oracle", lambda *a: reference(*a, **kwargs)),
        ]:
            y, vjp = jax.vjp(fn, x, w, b)
            results[name] = (y, *vjp(cotangent))
        return results

    results = jax.jit(forward_and_vjps)(x, w, b)
    for ref in ("xla", "oracle"):
        for name, c, r in zip(
            ("y", "dx", "dw", "db"), results["custom"], results[ref], strict=True
        ):
            assert_rel_close(c, r, what=f"{name} custom vs {ref}")


@settings(max_examples=80)
@given(conv_configs(), st.integers(0, 2**16))
def test_conv_hypothesis(config, seed):
    _check_against_references(ops.conv, conv_reference, *config, seed)


@settings(max_examples=50)
@given(conv_configs(transpose=True), st.integers(0, 2**16))
def test_conv_transpose_hypothesis(config, seed):
    _check_against_references(ops.conv_transpose, conv_transpose_reference, *config, seed)


# ---------------------------------------------------------------------------------------------
# Transformations
# ---------------------------------------------------------------------------------------------


def test_jit_vmap_grad_of_grad_and_no_retracing():
    x, w = random_arrays(8, (2, 6, 6, 2), (3, 3, 2, 3))
    f = lambda x, w: ops.conv(x, w, stride=2, padding=1)  # noqa: E731
    assert_rel_close(jax.jit(f)(x, w), f(x, w))
    batched = jax.vmap(f, in_axes=(0, None))(x[:, None], w)
    assert_rel_close(batched[:, 0], f(x, w), what="vmap")

    hess_custom = jax.grad(lambda x: jnp.sum(jax.grad(lambda x: jnp.sum(f(x, w) ** 3))(x) ** 2))(x)
    g = lambda x, w: ops.conv(x, w, stride=2, padding=1, impl="xla")  # noqa: E731
    hess_xla = jax.grad(lambda x: jnp.sum(jax.grad(lambda x: jnp.sum(g(x, w) ** 3))(x) ** 2))(x)
    assert_rel_close(hess_custom, hess_xla, what="grad of grad")

    traces = 0

    def counted(x, w):
        nonlocal traces
        traces += 1
        return jnp.sum(ops.conv(x, w, stride=2, padding=1) ** 2)

    step = jax.jit(jax.grad(counted, argnums=(0, 1)))
    for i in range(3):
        step(x + i, w)
    assert traces == 1


def test_forward_mode_gives_a_clear_error_and_xla_supports_it():
    x, w = random_arrays(9, (1, 5, 5, 1), (3, 3, 1, 1))
    with pytest.raises(TypeError, match='impl="xla"'):
        jax.jvp(lambda x: ops.conv(x, w), (x,), (x,))
    y, t = jax.jvp(lambda x: ops.conv(x, w, impl="xla"), (x,), (x,))
    assert_rel_close(t, y)  # conv is linear in x


def test_reexported_from_top_level():
    assert cnnjax.conv is ops.conv and cnnjax.conv_transpose is ops.conv_transpose


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "x_shape,w_shape,kwargs,error,match",
    [
        ((5, 5), (3, 3, 3, 4), {}, ValueError, r"x must have shape \(N, \*spatial, C\)"),
        ((1, 5, 5, 3), (3, 3, 4), {}, ValueError, "w must have shape"),
        ((1, 5, 5, 3), (3, 3, 2, 4), {}, ValueError, "channel mismatch"),
        ((1, 5, 5, 4), (3, 3, 2, 3), dict(groups=2), ValueError, "must divide the output"),
        ((1, 5, 5, 3), (3, 3, 1, 4), dict(groups=2), ValueError, "must divide the input"),
        ((1, 5, 5, 3), (3, 3, 3, 4), dict(stride=0), ValueError, "stride must be >= 1"),
        ((1, 5, 5, 3), (3, 3, 3, 4), dict(dilation=(1, 0)), ValueError, "dilation must be >= 1"),
        ((1, 5, 5, 3), (3, 3, 3, 4), dict(padding=-1), ValueError, "padding must be non-neg"),
        ((1, 5, 5, 3), (3, 3, 3, 4), dict(stride=(1, 2, 3)), ValueError, "one entry per spatial"),
        ((1, 2, 5, 3), (3, 3, 3, 4), {}, ValueError, r"output size 0 < 1 .*floor\(\(2 \+ 0"),
        ((1, 5, 5, 3), (3, 3, 3, 4), dict(impl="cuda"), ValueError, "impl must be"),
        ((1, 5, 5, 3), (3, 3, 3, 4), dict(padding="FULL"), ValueError, '"SAME" or "VALID"'),
        ((1, 5, 5, 3), (3, 3, 3, 4), dict(stride=1.5), TypeError, "stride must be an int"),
    ],
)
def test_conv_errors(x_shape, w_shape, kwargs, error, match):
    with pytest.raises(error, match=match):
        ops.conv(jnp.ones(x_shape), jnp.ones(w_shape), **kwargs)


def test_conv_transpose_errors():
    x, w = jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2))
    with pytest.raises(ValueError, match="output_padding must be smaller than stride or dilation"):
        ops.conv_transpose(x, w, stride=2, output_padding=2)
    with pytest.raises(ValueError, match=r"output size -?\d+ < 1.*\(n-1\)\*s"):
        ops.conv_transpose(jnp.ones((1, 1, 1, 2)), w, padding=2)
    with pytest.raises(ValueError, match="channel mismatch"):
        ops.conv_transpose(x, jnp.ones((3, 3, 3, 2)))
    with pytest.raises(ValueError, match='"SAME" has no unique meaning'):
        ops.conv_transpose(x, w, padding="SAME")
    with pytest.raises(TypeError, match="conv: x must have a floating dtype"):
        ops.conv(jnp.ones((1, 4, 4, 2), jnp.int32), jnp.ones((3, 3, 2, 2), jnp.int32))
    with pytest.raises(ValueError, match="depthwise_conv: w must have shape"):
        ops.depthwise_conv(x, jnp.ones((3, 3, 2, 2)))


# ---------------------------------------------------------------------------------------------
# PyTorch (optional peer)
# ---------------------------------------------------------------------------------------------


def _to_torch(a, channels_last_to_first=True):
    torch = pytest.importorskip("torch")
    a = np.asarray(a)
    if channels_last_to_first:
        a = np.moveaxis(a, -1, 1)
    return torch.tensor(a, dtype=torch.float64, requires_grad=True)


def _kernel_to_torch(w):
    """(*k, I, O) -> (O, I, *k) for conv, or (*k, C_in, C_out/G) -> (C_in, C_out/G, *k)."""
    torch = pytest.importorskip("torch")
    w = np.asarray(w)
    nd = w.ndim - 2
    perm = (nd + 1, nd, *range(nd))
    return torch.tensor(np.transpose(w, perm), dtype=torch.float64, requires_grad=True)


def _kernel_to_torch_transpose(w):
    torch = pytest.importorskip("torch")
    w = np.asarray(w)
    nd = w.ndim - 2
    perm = (nd, nd + 1, *range(nd))
    return torch.tensor(np.transpose(w, perm), dtype=torch.float64, requires_grad=True)


@pytest.mark.parametrize(
    "x_shape,kernel,c_out,kwargs",
    [
        ((2, 9, 8, 4), (3, 3), 6, dict(stride=2, padding=1, dilation=1, groups=2)),
        ((1, 7, 9, 3), (2, 3), 3, dict(stride=(1, 2), padding=(2, 1), dilation=(2, 1), groups=3)),
        ((1, 5, 4, 6, 2), (3, 2, 3), 4, dict(stride=(2, 1, 1), padding=1, dilation=1, groups=1)),
    ],
)
def test_conv_matches_torch(x_shape, kernel, c_out, kwargs):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    groups = kwargs["groups"]
    x, w, b = random_arrays(
        10, x_shape, conv_weight_shape(x_shape, kernel, c_out, groups), (c_out,)
    )
    y = ops.conv(x, w, b, **kwargs)
    (g,) = random_arrays(11, y.shape)
    tx, tw = _to_torch(x), _kernel_to_torch(w)
    tb = torch.tensor(np.asarray(b), requires_grad=True)
    fn = F.conv2d if len(kernel) == 2 else F.conv3d
    ty = fn(tx, tw, tb, **kwargs)
    ty.backward(torch.tensor(np.moveaxis(np.asarray(g), -1, 1)))
    assert_rel_close(y, np.moveaxis(ty.detach().numpy(), 1, -1), what="torch forward")
    dx, dw, db = jax.grad(lambda *a: jnp.vdot(ops.conv(*a, **kwargs), g), (0, 1, 2))(x, w, b)
    assert_rel_close(dx, np.moveaxis(tx.grad.numpy(), 1, -1), what="torch dx")
    nd = len(kernel)
    assert_rel_close(dw, np.transpose(tw.grad.numpy(), (*range(2, nd + 2), 1, 0)), what="torch dw")
    assert_rel_close(db, tb.grad.numpy(), what="torch db")


@pytest.mark.parametrize(
    "x_shape,kernel,c_out,kwargs",
    [
        ((2, 4, 5, 4), (3, 3), 6, dict(stride=2, padding=1, output_padding=1, groups=2)),
        ((1, 3, 4, 3), (2, 3), 2, dict(stride=(3, 2), padding=(0, 1), output_padding=(2, 0))),
        ((1, 3, 4, 2), (3, 3), 2, dict(stride=1, padding=1, output_padding=1, dilation=2)),
    ],
)
def test_conv_transpose_matches_torch(x_shape, kernel, c_out, kwargs):
    torch = pytest.importorskip("torch")
    groups = kwargs.get("groups", 1)
    x, w, b = random_arrays(
        12, x_shape, transpose_weight_shape(x_shape, kernel, c_out, groups), (c_out,)
    )
    y = ops.conv_transpose(x, w, b, **kwargs)
    (g,) = random_arrays(13, y.shape)
    tx, tw = _to_torch(x), _kernel_to_torch_transpose(w)
    tb = torch.tensor(np.asarray(b), requires_grad=True)
    ty = torch.nn.functional.conv_transpose2d(tx, tw, tb, **kwargs)
    ty.backward(torch.tensor(np.moveaxis(np.asarray(g), -1, 1)))
    assert_rel_close(y, np.moveaxis(ty.detach().numpy(), 1, -1), what="torch forward")
    dx, dw, db = jax.grad(lambda *a: jnp.vdot(ops.conv_transpose(*a, **kwargs), g), (0, 1, 2))(
        x, w, b
    )
    assert_rel_close(dx, np.moveaxis(tx.grad.numpy(), 1, -1), what="torch dx")
    assert_rel_close(dw, np.transpose(tw.grad.numpy(), (2, 3, 0, 1)), what="torch dw")
    assert_rel_close(db, tb.grad.numpy(), what="torch db")


@pytest.mark.parametrize("seed", range(20))
def test_vjp_padding_is_the_input_gradient_padding(seed):
    """shapes.vjp_padding (shared by the conv input gradient and the pool backward rules):
    padding the stride-dilated output grad by it and correlating with the flipped kernel (stride
    1, the kernel's dilation) gives exactly autodiff's input gradient of a 1-d conv."""
    from jax import lax

    from cnnjax.shapes import conv_output_size, vjp_padding

    rng = np.random.default_rng(seed)
    k, s, d = (int(v) for v in rng.integers(1, [5, 4, 3], endpoint=True))
    n = d * (k - 1) + 1 + int(rng.integers(0, 15))  # at least one output
    lo, hi = (int(v) for v in rng.integers(0, 4, size=2))
    out = conv_output_size(n, k, s, (lo, hi), d)
    x, w = rng.standard_normal((1, 1, n)), rng.standard_normal((1, 1, k))
    forward = lambda x: lax.conv_general_dilated(x, w, (s,), [(lo, hi)], rhs_dilation=(d,))  # noqa: E731
    y, pullback = jax.vjp(forward, x)
    g = rng.standard_normal(y.shape)
    dx = lax.conv_general_dilated(
        g,
        w[..., ::-1],
        (1,),
        [vjp_padding(n, out, k, s, (lo, hi), d)],
        lhs_dilation=(s,),
        rhs_dilation=(d,),
    )
    np.testing.assert_allclose(dx, pullback(g)[0], rtol=1e-12, atol=1e-12)
