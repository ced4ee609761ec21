"""Numerics at the edges (issue 8): low precision, edge points, empty inputs, sizes XLA cannot
take, types and messages. Every example of the issue is a test here; each failed before the fix.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import layers, ops

IMPLS = ("custom", "xla")
LOW = (jnp.bfloat16, jnp.float16)


def f32(a) -> np.ndarray:
    return np.asarray(jnp.asarray(a, jnp.float32))


def grad_of_sum(fn, *args, argnums=0):
    """Gradient of ``sum(fn(*args))`` with the sum taken in float32 (the cotangent is ones)."""
    return jax.grad(lambda *a: jnp.sum(fn(*a).astype(jnp.float32)), argnums)(*args)


# --------------------------------------------------------------------------------------------
# 1. Low-precision accumulation: sums run in float32 and round once, both impls
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "pool",
    [
        lambda x, impl: ops.avg_pool(x, 32, impl=impl),
        lambda x, impl: ops.lp_pool(x, 1, 32, impl=impl) / 1024,
        lambda x, impl: ops.global_avg_pool(x, impl=impl),
        lambda x, impl: layers.AdaptiveAvgPool((1, 1), impl=impl).apply({}, x),
    ],
    ids=["avg_pool", "lp_pool", "global_avg_pool", "AdaptiveAvgPool"],
)
def test_bf16_mean_of_a_32x32_window_of_ones_is_one(pool, impl):
    # A bfloat16 running sum stops at 256 (8 mantissa bits): the mean used to be 0.25.
    y = pool(jnp.ones((1, 32, 32, 1), jnp.bfloat16), impl)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_array_equal(f32(y), 1.0)


def test_adaptive_avg_pool_bf16_uneven_windows_round_once():
    # 33 -> 2: windows of 17 inputs through the averaging-matrix path (not avg_pool); the
    # matrix was bfloat16 and each axis rounded: 0.49 % error, above bfloat16's 2^-8 = 0.39 %.
    x = jnp.asarray(np.random.default_rng(0).random((4, 33, 33, 8)) + 0.5, jnp.bfloat16)
    pool = layers.AdaptiveAvgPool((2, 2))
    exact = np.asarray(pool.apply({}, jnp.asarray(x, jnp.float64)))
    err = np.max(np.abs(f32(pool.apply({}, x)) - exact) / exact)
    assert err <= 2.0**-8, err


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", LOW)
def test_real_7x7_windows_are_within_half_an_ulp(impl, dtype):
    """Random 7x7 averages in low precision vs float64 of the same (rounded) inputs: one final
    rounding gives at most the unit roundoff u (bfloat16: 2^-8 = 0.39 %); accumulating in
    bfloat16 gave ~2 %. PyTorch's bfloat16 avg_pool2d error is measured alongside when torch is
    installed."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((4, 28, 28, 8)) + 0.5, dtype)
    exact = np.asarray(ops.avg_pool(jnp.asarray(x, jnp.float64), 7, 1))
    y = f32(ops.avg_pool(x, 7, 1, impl=impl))
    err = float(np.max(np.abs(y - exact) / exact))
    unit_roundoff = 2.0**-8 if dtype == jnp.bfloat16 else 2.0**-11
    assert err <= unit_roundoff, err
    if dtype == jnp.bfloat16:
        torch = pytest.importorskip("torch")
        xt = torch.tensor(np.asarray(x, np.float32)).permute(0, 3, 1, 2).to(torch.bfloat16)
        yt = torch.nn.functional.avg_pool2d(xt, 7, 1).float().permute(0, 2, 3, 1).numpy()
        torch_err = float(np.max(np.abs(yt - exact) / exact))
        assert err <= max(torch_err, unit_roundoff), (err, torch_err)


@pytest.mark.parametrize("impl", IMPLS)
def test_float16_64x64_window_of_40s_is_40(impl):
    # The sum 163840 overflows float16 (max 65504): it used to be inf.
    x = jnp.full((1, 64, 64, 1), 40.0, jnp.float16)
    np.testing.assert_array_equal(f32(ops.avg_pool(x, 64, impl=impl)), 40.0)
    np.testing.assert_array_equal(f32(ops.global_avg_pool(x, impl=impl)), 40.0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    ("op", "size", "expected"), [("conv", 42, 1600.0), ("conv_transpose", 78, 6400.0)]
)
def test_bf16_bias_gradient_over_40x40_or_80x80_ones(impl, op, size, expected):
    # impl="xla" used to sum the bias cotangent in bfloat16: 1024 (conv), 2304 (conv_transpose).
    x = jnp.ones((1, size, size, 1), jnp.bfloat16)
    w = jnp.ones((3, 3, 1, 1), jnp.bfloat16)
    b = jnp.zeros((1,), jnp.bfloat16)
    fn = getattr(ops, op)
    db = grad_of_sum(lambda b: fn(x, w, b, impl=impl), b)
    assert db.dtype == jnp.bfloat16
    np.testing.assert_array_equal(f32(db), expected)


@pytest.mark.parametrize("impl", IMPLS)
def test_bf16_avg_pool_backward_sums_in_float32(impl):
    # Each interior input is in 32*32 windows, each giving 1/1024: dx = 1 (bf16 sums gave 0.25).
    dx = grad_of_sum(
        lambda x: ops.avg_pool(x, 32, 1, impl=impl), jnp.ones((1, 63, 63, 1), "bfloat16")
    )
    assert f32(dx)[0, 31, 31, 0] == 1.0


@pytest.mark.parametrize("impl", IMPLS)
def test_float16_global_avg_pool_backward_divides_by_p_in_float32(impl):
    # P = 90000 > 65504 is inf in float16: dx = g / P used to be 0.
    x = jnp.ones((1, 300, 300, 1), jnp.float16)
    dx = grad_of_sum(lambda x: 1000 * ops.global_avg_pool(x, impl=impl), x)
    np.testing.assert_allclose(f32(dx), 1000 / 90000, rtol=1e-3)


@pytest.mark.parametrize("impl", IMPLS)
def test_bf16_lrn_channel_sum_in_float32(impl):
    # Last channel: its window holds 513 ones, so y = 1 / 513 (bf16 sums stopped at 256).
    x = jnp.ones((1, 1, 1, 1024), jnp.bfloat16)
    y = ops.local_response_norm(x, 1024, alpha=1024.0, beta=1.0, k=0.0, impl=impl)
    np.testing.assert_allclose(f32(y)[0, 0, 0, -1], 1 / 513, rtol=2**-8)


@pytest.mark.parametrize("impl", IMPLS)
def test_float16_lcn_is_finite_where_the_eps_floor_is_active(impl):
    # eps = 1e-6 is subnormal in float16 and flushed to 0 on CPU: 0/0 gave NaN, forward and VJP.
    x = jnp.zeros((1, 5, 5, 2), jnp.float16)
    y = ops.local_contrast_norm(x, 3, impl=impl)
    np.testing.assert_array_equal(f32(y), 0.0)
    dx = f32(grad_of_sum(lambda x: ops.local_contrast_norm(x, 3, impl=impl), x))
    assert not np.isnan(dx).any()
    dx_small = f32(grad_of_sum(lambda x: ops.local_contrast_norm(x, 3, eps=0.1, impl=impl), x))
    assert np.isfinite(dx_small).all()


# --------------------------------------------------------------------------------------------
# 2. Edge points of lp_pool: the norm (sum |x|^p)^(1/p) and its subgradient, custom == xla
# --------------------------------------------------------------------------------------------


def _lp_vjp(x, p, impl):
    y, pullback = jax.vjp(lambda x: ops.lp_pool(x, p, 2, impl=impl), x)
    return np.asarray(y), np.asarray(pullback(jnp.ones_like(y))[0])


@pytest.mark.parametrize("p", [1, 2, 3, 1.5, 0.5])
def test_lp_pool_window_of_zeros_has_zero_gradient_in_both_impls(p):
    # impl="xla" gave 1 (p=1) or NaN (p=2, 3); the convention is the subgradient 0.
    x = jnp.concatenate([jnp.zeros((1, 2, 1)), jnp.asarray([[[0.5], [-2.0]]])], axis=1)
    (y, dx), (y_xla, dx_xla) = _lp_vjp(x, p, "custom"), _lp_vjp(x, p, "xla")
    np.testing.assert_array_equal(y[0, 0], 0.0)
    np.testing.assert_array_equal(dx[0, :2], 0.0)
    np.testing.assert_allclose(y, y_xla, rtol=1e-12)
    np.testing.assert_allclose(dx, dx_xla, rtol=1e-12)
    assert np.isfinite(dx).all()


@pytest.mark.parametrize("p", [1, 3, 2.5])
def test_lp_pool_is_the_norm_for_negative_windows(p):
    # Odd p on a window with a negative sum gave NaN in both impls.
    x = jnp.asarray([[[-1.0], [-2.0], [0.0], [3.0]]])
    expected_y = np.array([(1 + 2**p) ** (1 / p), 3.0])
    y_sum = np.array([1 + 2**p, 3.0**p])
    s = np.sign(x[0, :, 0])
    a = np.abs(np.asarray(x[0, :, 0]))
    window_y = np.repeat(expected_y, 2)
    expected_dx = s * a ** (p - 1) * np.where(a > 0, 1.0, 0.0) * window_y ** (1 - p)
    del y_sum
    for impl in IMPLS:
        y, dx = _lp_vjp(x, p, impl)
        np.testing.assert_allclose(y[0, :, 0], expected_y, rtol=1e-12)
        np.testing.assert_allclose(dx[0, :, 0], expected_dx, rtol=1e-12, atol=1e-300)


def test_lp_pool_equals_torch_on_non_negative_input():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).random((2, 6, 6, 3))
    for p in (1.0, 2.0, 3.0):
        expected = torch.nn.functional.lp_pool2d(torch.tensor(x).permute(0, 3, 1, 2), p, 2).permute(
            0, 2, 3, 1
        )
        for impl in IMPLS:
            np.testing.assert_allclose(ops.lp_pool(x, p, 2, impl=impl), expected.numpy(), 1e-12)


# --------------------------------------------------------------------------------------------
# 3. Empty and degenerate inputs: the documented empty result or a ValueError with the formula
# --------------------------------------------------------------------------------------------


EMPTY_BATCH = {
    "conv": lambda x, impl: ops.conv(x, jnp.ones((3, 3, 2, 4)), jnp.ones(4), impl=impl),
    "conv_transpose": lambda x, impl: ops.conv_transpose(x, jnp.ones((3, 3, 2, 4)), impl=impl),
    "depthwise_conv": lambda x, impl: ops.depthwise_conv(x, jnp.ones((3, 3, 1, 4)), impl=impl),
    "separable_conv": lambda x, impl: ops.separable_conv(
        x, jnp.ones((3, 3, 1, 2)), jnp.ones((1, 1, 2, 5)), impl=impl
    ),
    "max_pool": lambda x, impl: ops.max_pool(x, 2, impl=impl),
    "avg_pool": lambda x, impl: ops.avg_pool(x, 2, impl=impl),
    "lp_pool": lambda x, impl: ops.lp_pool(x, 2, 2, impl=impl),
    "global_avg_pool": lambda x, impl: ops.global_avg_pool(x, impl=impl),
    "global_max_pool": lambda x, impl: ops.global_max_pool(x, impl=impl),
    "local_response_norm": lambda x, impl: ops.local_response_norm(x, 3, impl=impl),
    "local_contrast_norm": lambda x, impl: ops.local_contrast_norm(x, 3, impl=impl),
}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", EMPTY_BATCH)
def test_every_op_takes_an_empty_batch(name, impl):
    # global_max_pool with N = 0 raised ZeroDivisionError.
    x = jnp.ones((0, 6, 6, 2))
    y, pullback = jax.vjp(lambda x: EMPTY_BATCH[name](x, impl), x)
    assert y.shape[0] == 0
    assert pullback(jnp.ones_like(y))[0].shape == x.shape


@pytest.mark.parametrize("impl", IMPLS)
def test_depthwise_and_separable_conv_take_zero_channels(impl):
    # C = 0 raised ZeroDivisionError; the result is (N, *out, 0) and (N, *out, C_out).
    x = jnp.ones((2, 5, 5, 0))
    y = ops.depthwise_conv(x, jnp.ones((3, 3, 1, 0)), stride=2, impl=impl)
    assert y.shape == (2, 2, 2, 0)
    b = jnp.arange(3.0)
    y, pullback = jax.vjp(
        lambda x, b: ops.separable_conv(x, jnp.ones((3, 3, 1, 0)), jnp.ones((1, 1, 0, 3)), b),
        x,
        b,
    )
    assert y.shape == (2, 3, 3, 3)
    np.testing.assert_array_equal(y, np.broadcast_to(b, y.shape))  # empty sums + bias
    dx, db = pullback(jnp.ones_like(y))
    assert dx.shape == x.shape
    np.testing.assert_array_equal(db, 18.0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("stride", [1, 2])
def test_conv_transpose_of_an_empty_input_raises_with_the_formula(impl, stride):
    # It returned a (1, 2, 6, 1) array of zeros and its VJP failed inside XLA's verifier.
    x, w = jnp.ones((1, 0, 4, 1)), jnp.ones((3, 3, 1, 1))
    with pytest.raises(ValueError, match=r"conv_transpose: every spatial dim of x must be >= 1"):
        ops.conv_transpose(x, w, stride=stride, impl=impl)
    with pytest.raises(ValueError, match=r"conv_transpose"):
        jax.grad(lambda x: ops.conv_transpose(x, w, impl=impl).sum())(x)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", ["global_avg_pool", "global_max_pool"])
def test_global_pools_over_zero_positions_raise(name, impl):
    # global_avg_pool returned NaN.
    with pytest.raises(ValueError, match=rf"{name}: the pool over P = prod\(spatial\) = 0"):
        getattr(ops, name)(jnp.ones((2, 0, 3, 4)), impl=impl)


@pytest.mark.parametrize("name", ["conv", "max_pool", "avg_pool", "lp_pool"])
def test_windowed_ops_refuse_empty_spatial_dims(name):
    x = jnp.ones((1, 4, 0, 2))
    call = {
        "conv": lambda: ops.conv(x, jnp.ones((1, 1, 2, 2)), padding=1),
        "max_pool": lambda: ops.max_pool(x, 2, padding=1),
        "avg_pool": lambda: ops.avg_pool(x, 2, padding=1),
        "lp_pool": lambda: ops.lp_pool(x, 2, 1),
    }[name]
    with pytest.raises(ValueError, match=rf"{name}: .*spatial dim"):
        call()


@pytest.mark.parametrize("impl", IMPLS)
def test_dilated_max_pool_window_of_padding_only_raises(impl):
    # Found by the fuzz: n = 1, window 2, dilation 2, padding 1: taps -1 and 1, both outside;
    # the max was -inf.
    with pytest.raises(ValueError, match=r"max_pool: window 0 of spatial dim 0 reads only padding"):
        ops.max_pool(jnp.ones((1, 1, 2)), 2, 1, 1, 2, impl=impl)
    assert ops.max_pool(jnp.ones((1, 2, 2)), 2, 1, 1, 2, impl=impl).shape == (1, 2, 2)


# --------------------------------------------------------------------------------------------
# 4. Sizes that made XLA abort the process are refused first
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_huge_dilation_conv_transpose_raises_before_xla(impl):
    x, w = jnp.ones((1, 2, 2, 2, 1)), jnp.ones((2, 2, 2, 1, 1))
    with pytest.raises(ValueError, match=r"conv_transpose: .*XLA accepts"):
        ops.conv_transpose(x, w, stride=(2, 2, 3), dilation=10**6, impl=impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_huge_padding_3d_conv_raises_before_xla(impl):
    x, w = jnp.ones((1, 2, 2, 2, 1)), jnp.ones((1, 1, 1, 1, 1))
    with pytest.raises(ValueError, match=r"conv: .*2\*\*60 elements"):
        ops.conv(x, w, padding=10**6, impl=impl)


def test_huge_extents_raise_for_every_windowed_op():
    x = jnp.ones((1, 4, 1))
    with pytest.raises(ValueError, match=r"conv: .*2\*\*31 - 1"):
        ops.conv(x, jnp.ones((2, 1, 1)), padding=2**31)
    with pytest.raises(ValueError, match=r"max_pool: .*XLA accepts"):
        ops.max_pool(x, 2, stride=2**40)
    with pytest.raises(ValueError, match=r"local_response_norm: .*XLA accepts"):
        ops.local_response_norm(x, 2**31)


@pytest.mark.slow
def test_the_refused_sizes_do_abort_xla():
    """Documents the limits: the raw lax call aborts (SIGABRT) where the op raises ValueError.

    Run in a subprocess, since the abort kills the interpreter."""
    code = textwrap.dedent(
        """
        import jax.numpy as jnp
        from jax import lax
        x = jnp.ones((1, 1, 2, 2, 2)); w = jnp.ones((1, 1, 1, 1, 1))
        lax.conv_general_dilated(x, w, (1, 1, 1), [(10**6, 10**6)] * 3).block_until_ready()
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode < 0 or result.returncode == 134, result.stderr[-500:]
    assert "overflow" in result.stderr


# --------------------------------------------------------------------------------------------
# 5. Types and messages
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda x: ops.conv(x, [[[[1.0]]]]), r"conv: w must be an array, got list"),
        (lambda x: ops.conv_transpose(x, 1.0), r"conv_transpose: w must be an array"),
        (lambda x: ops.depthwise_conv(x, [[[[1.0]]]]), r"depthwise_conv: w must be an array"),
        (
            lambda x: ops.separable_conv(x, jnp.ones((1, 1, 1, 2)), "w"),
            r"separable_conv: w_pointwise must be an array",
        ),
    ],
)
def test_non_array_weights_raise_type_error_naming_the_op(call, match):
    # depthwise_conv raised AttributeError ('list' object has no attribute 'ndim').
    with pytest.raises(TypeError, match=match):
        call(jnp.ones((1, 4, 4, 2)))


@pytest.mark.parametrize("impl", IMPLS)
def test_numpy_integers_are_accepted_everywhere(impl):
    i = np.int64
    x = jnp.ones((1, 8, 8, 2))
    assert ops.max_pool(x, i(2), stride=i(2), padding=i(1), dilation=i(1), impl=impl).shape == (
        1,
        5,
        5,
        2,
    )
    y = ops.avg_pool(x, (i(2), 2), (i(2), i(1)), ((i(0), i(1)), 0), impl=impl)
    assert y.shape == (1, 4, 7, 2)
    assert ops.lp_pool(x, i(2), i(2), i(2), impl=impl).shape == (1, 4, 4, 2)
    w = jnp.ones((3, 3, 1, 4))
    y = ops.conv(x, w, stride=i(2), padding=i(1), dilation=i(1), groups=i(2), impl=impl)
    assert y.shape == (1, 4, 4, 4)
    y = ops.conv_transpose(
        x, jnp.ones((3, 3, 2, 2)), stride=i(2), padding=i(1), output_padding=i(1), impl=impl
    )
    assert y.shape == (1, 16, 16, 2)
    assert ops.local_response_norm(x, i(3), impl=impl).shape == x.shape
    assert ops.local_contrast_norm(x, i(3), impl=impl).shape == x.shape


FLOAT_ONLY = {
    "conv": lambda x, impl: ops.conv(x, jnp.ones((1, 1, 1, 1), x.dtype), impl=impl),
    "conv_transpose": lambda x, impl: ops.conv_transpose(
        x, jnp.ones((1, 1, 1, 1), x.dtype), impl=impl
    ),
    "depthwise_conv": lambda x, impl: ops.depthwise_conv(
        x, jnp.ones((1, 1, 1, 1), x.dtype), impl=impl
    ),
    "avg_pool": lambda x, impl: ops.avg_pool(x, 2, impl=impl),
    "lp_pool": lambda x, impl: ops.lp_pool(x, 2, 2, impl=impl),
    "global_avg_pool": lambda x, impl: ops.global_avg_pool(x, impl=impl),
    "local_response_norm": lambda x, impl: ops.local_response_norm(x, 3, impl=impl),
    "local_contrast_norm": lambda x, impl: ops.local_contrast_norm(x, 3, impl=impl),
}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [jnp.int32, jnp.complex64, jnp.bool_])
@pytest.mark.parametrize("name", FLOAT_ONLY)
def test_non_floating_inputs_raise_type_error_in_both_impls(name, dtype, impl):
    # conv accepted complex input (complex output); the message names the op and the argument.
    x = jnp.ones((1, 4, 4, 1), dtype)
    with pytest.raises(TypeError, match=rf"{name}: x must have a floating dtype"):
        FLOAT_ONLY[name](x, impl)


@pytest.mark.parametrize("name", ["max_pool", "global_max_pool"])
def test_max_pools_keep_real_dtypes_and_refuse_complex(name):
    fn = getattr(ops, name)
    args = (2,) if name == "max_pool" else ()
    x = jnp.arange(16, dtype=jnp.int32).reshape(1, 4, 4, 1)
    y_custom, y_xla = fn(x, *args), fn(x, *args, impl="xla")
    assert y_custom.dtype == y_xla.dtype == jnp.int32
    np.testing.assert_array_equal(y_custom, y_xla)
    for impl in IMPLS:
        # complex raised "gt does not accept dtype complex64" (custom) or returned (xla).
        with pytest.raises(TypeError, match=rf"{name}: x must be real"):
            fn(x.astype(jnp.complex64), *args, impl=impl)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda x: ops.conv(x, jnp.ones((1, 1, 2, 2)), stride="2"), TypeError, r"conv: stride"),
        (lambda x: ops.conv(x, jnp.ones((1, 1, 2, 2)), dilation=0), ValueError, r"conv: dilat"),
        (lambda x: ops.conv(x, jnp.ones((1, 1, 2, 2)), padding=-1), ValueError, r"conv: padd"),
        (lambda x: ops.conv(x, jnp.ones((1, 1, 2, 2)), impl="cuda"), ValueError, r"conv: impl"),
        (
            lambda x: ops.conv_transpose(x, jnp.ones((1, 1, 2, 2)), output_padding=(1,)),
            ValueError,
            r"conv_transpose: output_padding",
        ),
        (lambda x: ops.max_pool(x, 2, impl=None), ValueError, r"max_pool: impl"),
        (lambda x: ops.local_response_norm(x, 2.5), TypeError, r"local_response_norm: size"),
    ],
)
def test_messages_name_the_op_and_argument(call, error, match):
    with pytest.raises(error, match=match):
        call(jnp.ones((1, 4, 4, 2)))


def test_batchnorm_refuses_one_value_per_channel_in_training():
    # flax's BatchNorm silently outputs zeros (variance 0); PyTorch raises.
    bn = layers.BatchNorm(use_running_average=False)
    variables = bn.init(jax.random.key(0), jnp.ones((2, 3, 3, 4)))
    y, _ = bn.apply(variables, jnp.arange(8.0).reshape(2, 1, 1, 4), mutable=["batch_stats"])
    assert y.shape == (2, 1, 1, 4)
    with pytest.raises(ValueError, match=r"BatchNorm: expected more than 1 value per channel"):
        bn.apply(variables, jnp.ones((1, 1, 1, 4)), mutable=["batch_stats"])
    frozen = layers.BatchNorm(use_running_average=True)
    assert frozen.apply(variables, jnp.ones((1, 1, 1, 4))).shape == (1, 1, 1, 4)


@pytest.mark.parametrize("impl", ["custom", "xla"])
def test_max_unpool_of_an_empty_batch_or_channel_axis_is_empty(impl):
    # Found by the fuzz: reshaping with -1 divided by zero for N = 0 or C = 0.
    for shape in ((0, 4, 4, 2), (2, 4, 4, 0)):
        x = jnp.zeros(shape)
        y, idx = ops.max_pool(x, 2, return_indices=True)
        z, vjp = jax.vjp(lambda y, idx=idx: ops.max_unpool(y, idx, 2, impl=impl), y)
        assert z.shape == shape
        assert vjp(jnp.ones(shape))[0].shape == y.shape


# --------------------------------------------------------------------------------------------
# Found in review of the issue-8 fixes
# --------------------------------------------------------------------------------------------

WRONG_BIAS = {
    "conv": lambda x, b, impl: ops.conv(x, jnp.ones((3, 3, 2, 4)), b, impl=impl),
    "conv_transpose": lambda x, b, impl: ops.conv_transpose(
        x, jnp.ones((3, 3, 2, 4)), b, impl=impl
    ),
    "depthwise_conv": lambda x, b, impl: ops.depthwise_conv(
        x, jnp.ones((3, 3, 1, 4)), b, impl=impl
    ),
    "separable_conv": lambda x, b, impl: ops.separable_conv(
        x, jnp.ones((3, 3, 1, 4)), jnp.ones((1, 1, 4, 4)), b, impl=impl
    ),
}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", WRONG_BIAS)
def test_wrong_length_bias_names_the_op(name, impl):
    # The message was "b must have shape (C_out,) = (4,), got (5,)" with no op named.
    with pytest.raises(ValueError, match=rf"^{name}: b must have shape \(C_out,\) = \(4,\)"):
        WRONG_BIAS[name](jnp.ones((1, 6, 6, 2)), jnp.ones(5), impl)


def test_adaptive_avg_pool_output_size_edges():
    x = jnp.ones((1, 6, 6, 2))
    pool = lambda size, x=x: layers.AdaptiveAvgPool(size).apply({}, x)  # noqa: E731
    # (0, 0) raised ZeroDivisionError; PyTorch returns the empty result.
    assert pool((0, 0)).shape == (1, 0, 0, 2)
    assert pool((0, 3)).shape == (1, 0, 3, 2)
    # An int raised "'int' object is not iterable"; PyTorch takes it as the size of every dim.
    np.testing.assert_array_equal(pool(2), pool((2, 2)))
    assert pool(4).shape == (1, 4, 4, 2)
    with pytest.raises(ValueError, match=r"AdaptiveAvgPool: output_size must be >= 0.*-1"):
        pool((-1, 2))
    with pytest.raises(ValueError, match=r"AdaptiveAvgPool: x must have shape"):
        pool(2, jnp.ones((1, 0, 6, 2)))


@pytest.mark.parametrize("size", [(3, 3), (4, 4)])
def test_adaptive_avg_pool_refuses_integer_input_on_both_paths(size):
    # 6 -> 3 (avg_pool) raised TypeError naming avg_pool; 6 -> 4 returned truncated int32.
    x = jnp.arange(72, dtype=jnp.int32).reshape(1, 6, 6, 2)
    with pytest.raises(TypeError, match=r"AdaptiveAvgPool: x must have a floating dtype"):
        layers.AdaptiveAvgPool(size).apply({}, x)


def test_batchnorm_refuses_an_empty_batch_in_training():
    # N = 0 silently wrote NaN running statistics.
    bn = layers.BatchNorm(use_running_average=False)
    variables = bn.init(jax.random.key(0), jnp.ones((2, 3, 3, 4)))
    with pytest.raises(ValueError, match=r"BatchNorm: .*shape \(0, 3, 3, 4\).*= 0\)"):
        bn.apply(variables, jnp.ones((0, 3, 3, 4)), mutable=["batch_stats"])


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda x: ops.conv(x, jnp.ones((1, 1, 1)), stride=2**64), r"conv: stride must be <="),
        (lambda x: ops.conv(x, jnp.ones((1, 1, 1)), dilation=2**63), r"conv: dilation must be"),
        (lambda x: ops.conv(x, jnp.ones((1, 1, 1)), padding=2**64), r"conv: padding must be <="),
        (
            lambda x: ops.conv_transpose(x, jnp.ones((1, 1, 1)), stride=2**64),
            r"conv_transpose: stride must be <=",
        ),
        (lambda x: ops.max_pool(x, 2**64), r"max_pool: window must be <="),
        (lambda x: ops.avg_pool(x, 1, stride=2**62), r"avg_pool: stride must be <="),
        (lambda x: ops.lp_pool(x, 2, 1, stride=2**31), r"lp_pool: stride must be <="),
    ],
)
def test_huge_arguments_raise_value_error_naming_op_and_argument(call, match):
    # stride=2**64 raised OverflowError from inside JAX.
    with pytest.raises(ValueError, match=match + r".*2\*\*31 - 1"):
        call(jnp.ones((1, 3, 1)))


@pytest.mark.parametrize("impl", IMPLS)
def test_the_largest_stride_is_accepted_by_conv_and_pools_alike(impl):
    # max_pool refused stride=2**62 (and 2**31 - 1) while conv accepted it: one rule now.
    x, s = jnp.ones((1, 3, 1)), 2**31 - 1
    for fn, expected_grad in (
        (lambda x: ops.conv(x, jnp.ones((1, 1, 1)), stride=s, impl=impl), [1.0, 0.0, 0.0]),
        (lambda x: ops.max_pool(x, 1, stride=s, impl=impl), [1.0, 0.0, 0.0]),
        (lambda x: ops.avg_pool(x, 2, stride=s, ceil_mode=True, impl=impl), [0.5, 0.5, 0.0]),
    ):
        y, grad = jax.value_and_grad(lambda x, fn=fn: jnp.sum(fn(x)))(x)
        assert float(y) == 1.0
        np.testing.assert_array_equal(f32(grad)[0, :, 0], expected_grad)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_lp_pool_large_p_range_is_exactly_the_documented_one(dtype, impl):
    """The docstring's range at p = 100 for windows of K = 2 equal values v: exact for
    (tiny/K)^(1/p) <= |v| <= (max/K)^(1/p) (tiny = smallest normal, max = largest finite of the
    accumulation dtype); above it y = inf, below it y = 0 with a zero gradient. Checked 1 %
    inside and 1 % outside both ends, for both signs. The one documented exception: the float32
    gradient of impl="xla" (autodiff's intermediates overflow first) is exact only up to
    0.95 (max/K)^(1/p) (2.29 instead of 2.41)."""
    p, k = 100, 2
    info = np.finfo(dtype)
    low, high = (float(info.tiny) / k) ** (1 / p), (float(info.max) / k) ** (1 / p)
    grad_high = 0.95 * high if (impl, dtype) == ("xla", "float32") else high
    rtol = 1e-12 if dtype == "float64" else 2e-5

    def value_and_grad(v):
        x = jnp.full((1, 2 * k, 1), v, dtype)
        y, grad = jax.value_and_grad(lambda x: jnp.sum(ops.lp_pool(x, p, k, impl=impl)))(x)
        return float(y), np.asarray(grad, np.float64)

    with jax.enable_x64(dtype == "float64"):
        for sign in (1, -1):
            for v in (1.01 * low, 0.99 * grad_high, 0.99 * high):  # inside
                y, grad = value_and_grad(sign * v)  # y = 2 k^(1/p) |v|, dy/dx = sign k^(1/p-1)
                np.testing.assert_allclose(y, 2 * k ** (1 / p) * v, rtol=rtol)
                if v <= grad_high:
                    np.testing.assert_allclose(grad, sign * k ** (1 / p - 1), rtol=rtol)
            y, grad = value_and_grad(sign * 1.01 * high)  # sum |x|^p overflows
            assert y == np.inf
            y, grad = value_and_grad(sign * 0.99 * low)  # sum |x|^p underflows (flushed to 0)
            assert y == 0.0
            np.testing.assert_array_equal(grad, 0.0)
