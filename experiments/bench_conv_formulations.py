"""Per-op CPU timings of alternative conv formulations (issue 9, item 4), interleaved, medians.

    python experiments/bench_conv_formulations.py [ROUNDS]     # ONLY="fwd xla,dw xla" filters
    XLA_FLAGS=--xla_cpu_use_xnnpack=true python experiments/bench_conv_formulations.py

B=128 float32 shapes of ResNet-20's three stages and LeNet-5's C1. For each: XLA's forward conv
(``_conv_forward``) and forward as im2col + one GEMM; the weight gradient as XLA's conv
(``_conv_weight_grad``, what the custom VJP uses), as per-tap GEMMs over shifted views, as
im2col + one GEMM and via ``lax.conv_general_dilated_patches`` (each checked against XLA's);
with torch, ``aten.convolution_backward`` (channels_last) for dx and dw. Times in ms.
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
SHAPES = [  # name, batch, H = W, C_in, C_out, kernel, padding
    ("32x32x16->16 3x3", 128, 32, 16, 16, 3, 1),
    ("16x16x32->32 3x3", 128, 16, 32, 32, 3, 1),
    ("8x8x64->64 3x3", 128, 8, 64, 64, 3, 1),
    ("LeNet C1 32x32x1->6 5x5", 128, 32, 1, 6, 5, 0),
]


def _shifted(x, k, pad, oh, ow):
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    return [xp[:, i : i + oh, j : j + ow, :] for i in range(k) for j in range(k)]


def dw_xla(x, g, k, pad):
    pads = ((pad, pad), (pad, pad))
    return C._conv_weight_grad(x, g, (k, k), (1, 1), pads, (1, 1), 1, None)


def dw_taps(x, g, k, pad):
    views = _shifted(x, k, pad, g.shape[1], g.shape[2])
    taps = [jnp.einsum("nhwc,nhwd->cd", v, g) for v in views]
    return jnp.stack(taps).reshape(k, k, x.shape[-1], g.shape[-1])


def dw_im2col(x, g, k, pad):
    cols = jnp.concatenate(_shifted(x, k, pad, g.shape[1], g.shape[2]), axis=-1)
    dw = cols.reshape(-1, k * k * x.shape[-1]).T @ g.reshape(-1, g.shape[-1])
    return dw.reshape(k, k, x.shape[-1], g.shape[-1])


def dw_patches(x, g, k, pad):
    ci, co = x.shape[-1], g.shape[-1]
    dims = ("NHWC", "HWIO", "NHWC")
    p = lax.conv_general_dilated_patches(x, (k, k), (1, 1), [(pad, pad)] * 2, None, None, dims)
    dw = p.reshape(-1, ci * k * k).T @ g.reshape(-1, co)  # patch features are (ci, kh, kw)
    return dw.reshape(ci, k, k, co).transpose(1, 2, 0, 3)


def fwd_xla(x, w, pad):
    return C._conv_forward(x, w, (1, 1), ((pad, pad), (pad, pad)), (1, 1), 1, None)


def fwd_im2col(x, w, pad):
    k, n = w.shape[0], x.shape[0]
    oh = x.shape[1] + 2 * pad - k + 1
    cols = jnp.concatenate(_shifted(x, k, pad, oh, oh), axis=-1)
    return (cols.reshape(-1, w.shape[0] * k * x.shape[-1]) @ w.reshape(-1, w.shape[-1])).reshape(
        n, oh, oh, -1
    )


def _torch_fns(x, w, g, pad):
    try:
        import torch
    except ImportError:
        return {}
    torch.set_num_threads(os.cpu_count() or 1)
    cl = torch.channels_last
    xt = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous(memory_format=cl)
    wt = torch.from_numpy(np.array(w)).permute(3, 2, 0, 1).contiguous()
    gt = torch.from_numpy(np.array(g)).permute(0, 3, 1, 2).contiguous(memory_format=cl)
    args = (gt, xt, wt, None, (1, 1), (pad, pad), (1, 1), False, (0, 0), 1)
    backward = torch.ops.aten.convolution_backward

    def fwd():
        with torch.no_grad():
            torch.nn.functional.conv2d(xt, wt, padding=pad)

    return {
        "fwd torch": fwd,
        "dw torch": lambda: backward(*args, (False, False, True)),
        "dx torch": lambda: backward(*args, (True, False, False)),
    }


def main(rounds: int) -> None:
    rng = np.random.default_rng(0)
    only = os.environ.get("ONLY")
    for name, n, hw, ci, co, k, pad in SHAPES:
        x = jnp.asarray(rng.standard_normal((n, hw, hw, ci), np.float32))
        w = jnp.asarray(rng.standard_normal((k, k, ci, co), np.float32))
        oh = hw + 2 * pad - k + 1
        g = jnp.asarray(rng.standard_normal((n, oh, oh, co), np.float32))
        fns = {
            "fwd xla": (functools.partial(fwd_xla, pad=pad), (x, w)),
            "fwd im2col": (functools.partial(fwd_im2col, pad=pad), (x, w)),
            "dw xla": (functools.partial(dw_xla, k=k, pad=pad), (x, g)),
            "dw taps": (functools.partial(dw_taps, k=k, pad=pad), (x, g)),
            "dw im2col": (functools.partial(dw_im2col, k=k, pad=pad), (x, g)),
            "dw patches": (functools.partial(dw_patches, k=k, pad=pad), (x, g)),
        }
        fns = {key: (jax.jit(f), a) for key, (f, a) in fns.items() if not only or key in only}
        ref = np.asarray(jax.jit(functools.partial(dw_xla, k=k, pad=pad))(x, g))
        for key, (f, a) in fns.items():
            out = np.asarray(f(*a))
            if key.startswith("dw"):
                np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-2, err_msg=key)
        calls = {key: functools.partial(f, *a) for key, (f, a) in fns.items()}
        calls.update(_torch_fns(x, w, g, pad))
        times = {key: [] for key in calls}
        for _ in range(rounds):
            for key, call in calls.items():
                start = time.perf_counter()
                jax.block_until_ready(call())
                times[key].append(time.perf_counter() - start)
        cells = [f"{key}={1e3 * statistics.median(t):.2f}" for key, t in times.items()]
        print(name, " ".join(cells), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 7)
