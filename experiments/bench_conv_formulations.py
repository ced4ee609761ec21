"""Per-op CPU timings of alternative conv formulations (issue 9, item 4), interleaved, medians.

    python experiments/bench_conv_formulations.py [ROUNDS]     # ONLY="fwd xla,dw xla" filters
    BN=1 python experiments/bench_conv_formulations.py         # dw behind a BatchNorm+ReLU
    XLA_FLAGS=--xla_cpu_use_xnnpack=true python experiments/bench_conv_formulations.py

B=128 float32 shapes of ResNet-20's three stages, its stride-2 conv and LeNet-5's C1. For each:
XLA's forward conv (``_conv_forward``), once as XLA chooses (YNNPACK where eligible: 2-D, float32,
NHWC/HWIO, max(C_in, C_out) > 16) and once with YNNPACK off (Eigen; a per-compile option), and
forward as im2col + one GEMM; the weight gradient as XLA's conv in one piece (``dw whole``),
summed over unrolled batch chunks of 16/32 (``dw chunkN``; what the custom VJP uses on CPU), with
YNNPACK off, as per-tap GEMMs over shifted views, as im2col + one GEMM, via
``lax.conv_general_dilated_patches``, and with the batch stacked into the rows (feature 1, or the
width as the contracted feature with the width taps on x) (each checked against ``dw whole``);
with torch, ``aten.convolution_backward`` (channels_last) for dx and dw. ``BN=1`` feeds the
weight gradient ``relu(x * scale + bias)`` and ``g * 1.5 + 0.1`` as in a network, so XLA fuses
those producers into the operand transposes the weight-gradient conv needs, as it does in a
training step. Times in ms; ``MIN=1`` reports minima instead of medians (for a loaded machine).
"""

from __future__ import annotations

import functools
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import cnnjax.ops  # noqa: F401  (registers the module below)

C = sys.modules["cnnjax.ops.conv"]
SHAPES = [  # name, batch, H = W, C_in, C_out, kernel, padding, stride
    ("32x32x16->16 3x3", 128, 32, 16, 16, 3, 1, 1),
    ("16x16x32->32 3x3", 128, 16, 32, 32, 3, 1, 1),
    ("8x8x64->64 3x3", 128, 8, 64, 64, 3, 1, 1),
    ("32x32x16->32 3x3 stride 2", 128, 32, 16, 32, 3, 1, 2),
    ("LeNet C1 32x32x1->6 5x5", 128, 32, 1, 6, 5, 0, 1),
]
NO_YNN = {"xla_cpu_experimental_ynn_fusion_type": ""}  # per-compile: XLA's Eigen convolutions


def _shifted(x, k, pad, oh, ow, s=1):
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    span_h, span_w = (oh - 1) * s + 1, (ow - 1) * s + 1
    return [xp[:, i : i + span_h : s, j : j + span_w : s, :] for i in range(k) for j in range(k)]


_DW_DIMS = lax.ConvDimensionNumbers((3, 0, 1, 2), (3, 0, 1, 2), (2, 3, 0, 1))


def dw_whole(x, g, k, pad, s):
    """XLA's weight-gradient conv in one piece (batch as the contracted feature)."""
    pads = _weight_pads(x, g, k, pad, s)
    return lax.conv_general_dilated(
        x, g, (1, 1), pads, rhs_dilation=(s, s), dimension_numbers=_DW_DIMS
    )


def _weight_pads(x, g, k, pad, s):
    return tuple(
        (pad, k - 1 + (o - 1) * s + 1 - n - pad) for n, o in zip(x.shape[1:3], g.shape[1:3])
    )


def dw_chunks(size):
    def dw(x, g, k, pad, s):
        parts = [
            dw_whole(x[i : i + size], g[i : i + size], k, pad, s) for i in range(0, len(x), size)
        ]
        return functools.reduce(jnp.add, parts)

    return dw


def dw_custom_vjp(x, g, k, pad, s):  # what ops.conv's backward runs (chunked on CPU)
    pads = ((pad, pad), (pad, pad))
    return C._conv_weight_grad(x, g, (k, k), (s, s), pads, (1, 1), 1, None)


def dw_taps(x, g, k, pad, s):
    views = _shifted(x, k, pad, g.shape[1], g.shape[2], s)
    taps = [jnp.einsum("nhwc,nhwd->cd", v, g) for v in views]
    return jnp.stack(taps).reshape(k, k, x.shape[-1], g.shape[-1])


def dw_im2col(x, g, k, pad, s):
    cols = jnp.concatenate(_shifted(x, k, pad, g.shape[1], g.shape[2], s), axis=-1)
    dw = cols.reshape(-1, k * k * x.shape[-1]).T @ g.reshape(-1, g.shape[-1])
    return dw.reshape(k, k, x.shape[-1], g.shape[-1])


def dw_patches(x, g, k, pad, s):
    ci, co = x.shape[-1], g.shape[-1]
    dims = ("NHWC", "HWIO", "NHWC")
    p = lax.conv_general_dilated_patches(x, (k, k), (s, s), [(pad, pad)] * 2, None, None, dims)
    dw = p.reshape(-1, ci * k * k).T @ g.reshape(-1, co)  # patch features are (ci, kh, kw)
    return dw.reshape(ci, k, k, co).transpose(1, 2, 0, 3)


def _stack_rows(x, g, k, pad, s):
    """Batch stacked into the rows, each image padded to hp rows (a multiple of s) and g to hp/s."""
    n, h, ho = x.shape[0], x.shape[1], g.shape[1]
    hp = -(-((ho - 1) * s + k) // s) * s
    zero = jnp.zeros((), x.dtype)
    x = lax.pad(x, zero, [(0, 0, 0), (pad, hp - h - pad, 0), (0, 0, 0), (0, 0, 0)])
    g = lax.pad(g, zero, [(0, 0, 0), (0, hp // s - ho, 0), (0, 0, 0), (0, 0, 0)])
    return x.reshape(n * hp, *x.shape[2:]), g.reshape(n * hp // s, *g.shape[2:]), k - s


def dw_stacked(x, g, k, pad, s):
    """Batch in the rows, feature 1, C_in as the batch: x moves to (C, N*H, W) only."""
    xs, gs, hi = _stack_rows(x, g, k, pad, s)
    wpad = _weight_pads(x, g, k, pad, s)[1]
    dims = lax.ConvDimensionNumbers((2, 3, 0, 1), (3, 2, 0, 1), (2, 3, 0, 1))
    return lax.conv_general_dilated(
        xs[..., None],
        gs[:, :, None],
        (1, 1),
        ((0, hi), wpad),
        rhs_dilation=(s, s),
        dimension_numbers=dims,
    )


def dw_width_feature(x, g, k, pad, s):
    """Batch in the rows, the width as the contracted feature, the k width taps of x as batch."""
    wo, ci = g.shape[2], x.shape[-1]
    wp = (wo - 1) * s + k
    x = lax.pad(
        x, jnp.zeros((), x.dtype), [(0, 0, 0)] * 2 + [(pad, wp - x.shape[2] - pad, 0), (0, 0, 0)]
    )
    xs, gs, hi = _stack_rows(x, g, k, pad, s)
    taps = jnp.stack([xs[:, j : j + (wo - 1) * s + 1 : s] for j in range(k)], axis=-2)
    dims = lax.ConvDimensionNumbers((3, 2, 0, 1), (3, 2, 0, 1), (2, 3, 0, 1))
    y = lax.conv_general_dilated(
        taps.reshape(xs.shape[0], 1, wo, k * ci),
        gs[:, None],
        (1, 1),
        ((0, hi), (0, 0)),
        rhs_dilation=(s, 1),
        dimension_numbers=dims,
    )
    return y.reshape(k, k, ci, -1)


def fwd_xla(x, w, pad, s):
    return C._conv_forward(x, w, (s, s), ((pad, pad), (pad, pad)), (1, 1), 1, None)


def fwd_im2col(x, w, pad, s):
    k, n = w.shape[0], x.shape[0]
    oh = (x.shape[1] + 2 * pad - k) // s + 1
    cols = jnp.concatenate(_shifted(x, k, pad, oh, oh, s), axis=-1)
    return (cols.reshape(-1, k * k * x.shape[-1]) @ w.reshape(-1, w.shape[-1])).reshape(
        n, oh, oh, -1
    )


def _with_producers(dw):
    """``BN=1``: the weight gradient of ``relu(x * scale + bias)`` and ``g * 1.5 + 0.1``."""
    if not os.environ.get("BN"):
        return dw

    def wrapped(x, g, **kwargs):
        c = x.shape[-1]
        x = jnp.maximum(x * (1 + jnp.arange(c) / c) + 0.1, 0)
        return dw(x, g * 1.5 + 0.1, **kwargs)

    return wrapped


def _torch_fns(x, w, g, pad, s):
    try:
        import torch
    except ImportError:
        return {}
    torch.set_num_threads(os.cpu_count() or 1)
    cl = torch.channels_last
    xt = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous(memory_format=cl)
    wt = torch.from_numpy(np.array(w)).permute(3, 2, 0, 1).contiguous()
    gt = torch.from_numpy(np.array(g)).permute(0, 3, 1, 2).contiguous(memory_format=cl)
    args = (gt, xt, wt, None, (s, s), (pad, pad), (1, 1), False, (0, 0), 1)
    backward = torch.ops.aten.convolution_backward

    def fwd():
        with torch.no_grad():
            torch.nn.functional.conv2d(xt, wt, stride=s, padding=pad)

    return {
        "fwd torch": fwd,
        "dw torch": lambda: backward(*args, (False, False, True)),
        "dx torch": lambda: backward(*args, (True, False, False)),
    }


def _variants(x, w, g, k, pad, s):
    fwd = functools.partial(fwd_xla, pad=pad, s=s)
    dws = {
        "dw whole": (dw_whole, None),
        "dw chunk16": (dw_chunks(16), None),
        "dw chunk32": (dw_chunks(32), None),
        "dw custom_vjp": (dw_custom_vjp, None),
        "dw eigen": (dw_whole, NO_YNN),
        "dw taps": (dw_taps, None),
        "dw im2col": (dw_im2col, None),
        "dw patches": (dw_patches, None),
        "dw stacked": (dw_stacked, None),
        "dw width_feature": (dw_width_feature, None),
    }
    out = {
        "fwd xla": (fwd, (x, w), None),
        "fwd eigen": (fwd, (x, w), NO_YNN),
        "fwd im2col": (functools.partial(fwd_im2col, pad=pad, s=s), (x, w), None),
    }
    for key, (dw, opts) in dws.items():
        out[key] = (functools.partial(_with_producers(dw), k=k, pad=pad, s=s), (x, g), opts)
    return out


def main(rounds: int) -> None:
    rng = np.random.default_rng(0)
    only = os.environ.get("ONLY")
    pick = min if os.environ.get("MIN") else statistics.median
    for name, n, hw, ci, co, k, pad, s in SHAPES:
        x = jnp.asarray(rng.standard_normal((n, hw, hw, ci), np.float32))
        w = jnp.asarray(rng.standard_normal((k, k, ci, co), np.float32))
        oh = (hw + 2 * pad - k) // s + 1
        g = jnp.asarray(rng.standard_normal((n, oh, oh, co), np.float32))
        variants = _variants(x, w, g, k, pad, s)
        ref_fn, ref_args, _ = variants["dw whole"]
        ref = np.asarray(jax.jit(ref_fn)(*ref_args))
        calls = {}
        for key, (fn, args, opts) in variants.items():
            if only and key not in only:
                continue
            compiled = jax.jit(fn).lower(*args).compile(compiler_options=opts or {})
            if key.startswith("dw"):
                out = np.asarray(compiled(*args))
                np.testing.assert_allclose(out, ref, rtol=1e-3, atol=5e-2, err_msg=key)
            calls[key] = functools.partial(compiled, *args)
        calls.update(_torch_fns(x, w, g, pad, s) if not only else {})
        times = {key: [] for key in calls}
        for _ in range(rounds):
            for key, call in calls.items():
                start = time.perf_counter()
                jax.block_until_ready(call())
                times[key].append(time.perf_counter() - start)
        cells = [f"{key}={1e3 * pick(t):.2f}" for key, t in times.items()]
        load = open("/proc/loadavg").read().split()[0]
        print(name, " ".join(cells), f"load={load}", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 7)
