"""``cnnjax bench train MODEL``: training-step throughput on synthetic data, side by side.

Every variant (``impl`` × compute ``dtype``, and the PyTorch twin of the CIFAR ResNets and
LeNet-5 when torch is installed) is built, compiled (timed separately), warmed up, then timed in
rounds: each round runs ``--steps`` steps of every variant, in an order that rotates from round
to round, so machine load falls on all alike. The table reports medians over ``--repeats``
rounds: images per second, ms per step, compile seconds, compiled memory (XLA's
``memory_analysis``: arguments + outputs + temporaries), and ratios (custom / xla step time,
and JAX / torch step time). The optimiser is the paper recipe's: SGD, momentum 0.9, weight
decay 5e-4 on kernels (ndim > 1), in both frameworks. The process-wide device peak
(``device.memory_stats()["peak_bytes_in_use"]``, GPU/TPU only) is in the JSON ``meta``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import functools
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.bench import report
from cnnjax.progress import progress_bar

__all__ = ["Variant", "jax_variant", "run", "run_from_args", "torch_variant"]

LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4
# Pause before each timed block so the previous variant's worker threads go idle first: the
# PyTorch twin's OpenMP workers keep spinning after its block and slow whichever variant is
# timed next (experiments/BENCHMARKS.md, "CPU convolution library and huge-page malloc").
SETTLE_S = 0.2


@dataclasses.dataclass
class Variant:
    """One timed configuration: ``step(n)`` runs ``n`` training steps and waits for them."""

    name: str
    framework: str
    impl: str
    dtype: str
    step: Callable[[int], None]
    compile_s: float
    memory_mb: float | None
    times: list[float] = dataclasses.field(default_factory=list)
    cpu_convolutions: str | None = None  # JAX variants: cnnjax.ops.compiler_options' argument


def _synthetic_batch(batch: int, shape: tuple[int, ...], num_classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, *shape), dtype=np.float32)
    labels = rng.integers(0, num_classes, batch).astype(np.int32)
    return images, labels


def jax_variant(
    model_name: str,
    *,
    impl: str,
    dtype: str,
    precision: str | None,
    batch: int,
    shape: tuple[int, int, int],
    num_classes: int,
    cpu_convolutions: str = "xla",
) -> Variant:
    """Compile ``cnnjax.train.steps.train_step`` for ``model_name``; returns the timed closure.

    Compiled with :func:`cnnjax.ops.compiler_options` for ``cpu_convolutions``, as ``cnnjax
    train`` compiles its step.
    """
    from cnnjax.models import create_model
    from cnnjax.ops import compiler_options
    from cnnjax.train.optim import make_optimizer
    from cnnjax.train.state import create_train_state
    from cnnjax.train.steps import train_step

    model = create_model(
        model_name,
        num_classes=num_classes,
        impl=impl,
        dtype=jnp.dtype(dtype),
        precision=precision,
    )
    tx = make_optimizer("sgd", LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    state = create_train_state(model, tx, seed=0, input_shape=shape)
    images, labels = _synthetic_batch(batch, shape, num_classes)
    data = {"image": jax.device_put(images), "label": jax.device_put(labels)}
    # Donating the state lets XLA update parameters in place (CPU ignores donation with a warning).
    donate = () if jax.default_backend() == "cpu" else (0,)
    step_fn = jax.jit(functools.partial(train_step, model=model, tx=tx), donate_argnums=donate)
    start = time.perf_counter()
    options = compiler_options(cpu_convolutions)
    compiled = step_fn.lower(state, data).compile(compiler_options=options or None)
    compile_s = time.perf_counter() - start
    holder = {"state": state}

    def step(n: int) -> None:
        s = holder["state"]
        for _ in range(n):
            s, metrics = compiled(s, data)
        jax.block_until_ready(metrics)
        holder["state"] = s

    name = f"jax {impl} {dtype}" + ("" if cpu_convolutions == "xla" else f" {cpu_convolutions}")
    memory = _memory_mb(compiled)
    return Variant(
        name, "jax", impl, dtype, step, compile_s, memory, cpu_convolutions=cpu_convolutions
    )


def _memory_mb(compiled) -> float | None:
    try:
        m = compiled.memory_analysis()
    except Exception:  # not every backend implements it
        return None
    if m is None:
        return None
    total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
    return total / 2**20


def torch_variant(
    model_name: str,
    *,
    dtype: str,
    batch: int,
    shape: tuple[int, int, int],
    num_classes: int,
    threads: int,
) -> Variant | None:
    """The PyTorch twin's training step (``None`` without torch or without a twin)."""
    try:
        import torch

        from cnnjax.bench import torch_models
    except ImportError:
        return None
    net = torch_models.build(model_name, num_classes)
    if net is None:
        return None
    torch.set_num_threads(threads)
    device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    if dtype == "bfloat16" and device == "cpu":
        return None  # CPU bf16 autocast is not what a user would time against
    if device == "cuda":
        torch.backends.cudnn.benchmark = True  # cuDNN autotuning, as XLA autotunes its convs
    images, labels = _synthetic_batch(batch, shape, num_classes)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)
    y = torch.from_numpy(labels).long().to(device)
    net = net.to(device)
    one_step = _torch_step(net, y, device, autocast=dtype == "bfloat16")

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    start = time.perf_counter()
    one_step(x)
    sync()
    first_s = time.perf_counter() - start
    xl, layout_name = _fastest_torch_layout(net, x, one_step, sync)

    def step(n: int) -> None:
        for _ in range(n):
            one_step(xl)
        sync()

    return Variant(f"torch {dtype} {layout_name}", "torch", layout_name, dtype, step, first_s, None)


def _torch_step(net, labels, device: str, *, autocast: bool) -> Callable:
    """One SGD step of ``net`` on an input batch: the paper recipe, as :func:`jax_variant`'s."""
    import torch

    decay = [p for p in net.parameters() if p.ndim > 1]
    no_decay = [p for p in net.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay}],
        lr=LR,
        momentum=MOMENTUM,
    )

    def one_step(inputs):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            loss = torch.nn.functional.cross_entropy(net(inputs), labels)
        loss.backward()
        opt.step()

    return one_step


def _fastest_torch_layout(net, x, one_step: Callable, sync: Callable):
    """Move ``net`` to NCHW or channels_last, whichever runs two steps faster; returns the input
    in that layout and the layout's name (channels_last usually wins for convs on CPU and with
    cuDNN)."""
    import torch

    timings = {}
    for layout in (torch.contiguous_format, torch.channels_last):
        net.to(memory_format=layout)
        xl = x.contiguous(memory_format=layout)
        one_step(xl)
        sync()
        start = time.perf_counter()
        for _ in range(2):
            one_step(xl)
        sync()
        timings[layout] = (time.perf_counter() - start, xl)
    layout = min(timings, key=lambda k: timings[k][0])
    net.to(memory_format=layout)
    return timings[layout][1], "channels_last" if layout == torch.channels_last else "NCHW"


def run(
    model_name: str,
    *,
    impls: Sequence[str] = ("custom", "xla"),
    dtypes: Sequence[str] = ("float32", "bfloat16"),
    precision: str | None = None,
    cpu_convolutions: Sequence[str] = ("xla",),
    batch: int = 128,
    steps: int = 10,
    warmup: int = 2,
    repeats: int = 5,
    image_size: int | None = None,
    num_classes: int | None = None,
    use_torch: bool = True,
    compile_threads: int = 1,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Build, compile and time every variant; returns ``{"meta": ..., "results": [rows]}``.

    ``cpu_convolutions`` lists :func:`cnnjax.ops.compiler_options` settings to compare (each JAX
    variant once per setting; off CPU only the first is used, as they compile alike there).

    ``log`` receives status lines (default: printed on stderr with a progress bar; stdout is
    left to the results); pass ``lambda s: None`` for silence (and no bar).
    """
    show_bar = log is None
    log = log or functools.partial(print, file=sys.stderr, flush=True)
    for name, value in (("batch", batch), ("steps", steps), ("repeats", repeats)):
        if value < 1:
            raise ValueError(f"bench train: --{name} must be >= 1, got {value}")
    if warmup < 0:
        raise ValueError(f"bench train: --warmup must be >= 0, got {warmup}")
    shape, num_classes = _input_shape(model_name, image_size, num_classes)
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if isinstance(cpu_convolutions, str):
        cpu_convolutions = (cpu_convolutions,)
    if jax.default_backend() != "cpu":
        cpu_convolutions = tuple(cpu_convolutions)[:1]
    common = dict(batch=batch, shape=shape, num_classes=num_classes)
    build = functools.partial(jax_variant, model_name, precision=precision, **common)
    built = _compile_all(build, dtypes, impls, cpu_convolutions, compile_threads, log)
    twin = None
    if use_torch:
        twin = functools.partial(torch_variant, model_name, threads=threads, **common)
    variants = _in_table_order(built, dtypes, impls, cpu_convolutions, twin, log)
    for v in variants:
        if warmup:
            v.step(warmup)
    log(f"timing {repeats} round(s) of {steps} step(s) per variant ...")
    bar = progress_bar(
        repeats * len(variants), f"bench train {model_name}", "round", enabled=show_bar
    )
    _time_variants(variants, steps, repeats, done=lambda: bar.update(1))
    bar.close()
    rows = [_row(v, batch, steps) for v in variants]
    _add_ratios(rows)
    meta = report.machine_meta()
    meta.update(
        model=model_name,
        batch=batch,
        image_shape=list(shape),
        steps=steps,
        warmup=warmup,
        repeats=repeats,
        precision=precision,
        cpu_convolutions=list(cpu_convolutions),
        threads=threads,
        peak_device_memory_mb=report.peak_device_memory_mb(),
    )
    return {"meta": meta, "results": rows}


def _input_shape(model_name: str, image_size: int | None, num_classes: int | None):
    """``((size, size, C), num_classes)`` for ``model_name`` (its defaults where ``None``)."""
    from cnnjax.models import get_model_info

    info = get_model_info(model_name)
    h, _, c = info.input_shape
    size = image_size or h
    if size < info.min_input_size:
        raise ValueError(
            f"bench train: {model_name} needs --image-size >= {info.min_input_size}, got {size}"
        )
    return (size, size, c), num_classes or info.default_num_classes


def _compile_all(build, dtypes, impls, cpu_convolutions, compile_threads: int, log) -> dict:
    """``{(dtype, impl, cpu_convolutions): Variant}``, compiled on ``compile_threads`` threads."""
    jobs = [(dtype, impl, cc) for dtype in dtypes for impl in impls for cc in cpu_convolutions]
    log(f"compiling {len(jobs)} JAX variant(s) with {compile_threads} thread(s) ...")
    # XLA compiles release the GIL: on a many-core host, threads cut the wall time of compiling
    # several variants (each one's compile_s then includes waiting for a core).
    with concurrent.futures.ThreadPoolExecutor(max(1, compile_threads)) as pool:
        futures = {
            job: pool.submit(build, impl=job[1], dtype=job[0], cpu_convolutions=job[2])
            for job in jobs
        }
        return {job: f.result() for job, f in futures.items()}


def _in_table_order(built: dict, dtypes, impls, cpu_convolutions, twin, log) -> list[Variant]:
    """The compiled JAX variants per dtype, each dtype's PyTorch twin (``twin(dtype=...)``,
    built here, after its JAX variants) last; logs each JAX variant's compile time."""
    variants: list[Variant] = []
    for dtype in dtypes:
        for impl in impls:
            for cc in cpu_convolutions:
                v = built[(dtype, impl, cc)]
                log(f"  {v.name}: compiled in {v.compile_s:.1f} s, {v.memory_mb or 0:.0f} MiB")
                variants.append(v)
        v = None if twin is None else twin(dtype=dtype)
        if v is not None:
            variants.append(v)
    return variants


def _time_variants(variants: list[Variant], steps: int, repeats: int, done) -> None:
    """Append ``repeats`` timings of ``steps`` steps to every variant's ``times`` (rotating
    rounds, :func:`cnnjax.bench.report.time_rotating_rounds`)."""
    blocks = {i: (lambda r, v=v: v.step(steps)) for i, v in enumerate(variants)}
    times = report.time_rotating_rounds(blocks, repeats, settle_s=SETTLE_S, done=done)
    for i, v in enumerate(variants):
        v.times.extend(times[i])


def _row(v: Variant, batch: int, steps: int) -> dict:
    step_s = statistics.median(v.times) / steps
    return {
        "variant": v.name,
        "framework": v.framework,
        "impl": v.impl,
        "dtype": v.dtype,
        "cpu_convolutions": v.cpu_convolutions,
        "img_per_s": batch / step_s,
        "step_ms": 1e3 * step_s,
        "compile_s": v.compile_s,
        "memory_mb": v.memory_mb,
        "custom_over_xla": None,
        "jax_over_torch": None,
    }


def _add_ratios(rows: list[dict]) -> None:
    """custom/xla step-time ratio per dtype (and CPU conv library); JAX/torch per dtype."""
    by = {(r["framework"], r["impl"], r["dtype"], r["cpu_convolutions"]): r for r in rows}
    torch_rows = {r["dtype"]: r for r in rows if r["framework"] == "torch"}
    for r in rows:
        if r["framework"] != "jax":
            continue
        xla = by.get(("jax", "xla", r["dtype"], r["cpu_convolutions"]))
        if r["impl"] == "custom" and xla is not None:
            r["custom_over_xla"] = r["step_ms"] / xla["step_ms"]
        if r["dtype"] in torch_rows:
            r["jax_over_torch"] = r["step_ms"] / torch_rows[r["dtype"]]["step_ms"]


COLUMNS = (
    ("variant", "variant", "<30", "s"),
    ("img_per_s", "img/s", ">10", ",.0f"),
    ("step_ms", "ms/step", ">9", ".2f"),
    ("compile_s", "compile s", ">10", ".1f"),
    ("memory_mb", "mem MiB", ">9", ".0f"),
    ("custom_over_xla", "cust/xla", ">9", ".3f"),
    ("jax_over_torch", "jax/torch", ">10", ".2f"),
)


def run_from_args(args: argparse.Namespace) -> int:
    """The ``cnnjax bench train`` handler (arguments defined in :mod:`cnnjax.bench`)."""
    if args.tiny:
        args.batch, args.steps, args.warmup, args.repeats = 4, 1, 1, 2
        args.image_size = args.image_size or _tiny_size(args.model)
    result = run(
        args.model,
        impls=report.split_list(args.impl, ("custom", "xla"), "--impl"),
        dtypes=report.split_list(args.dtype, ("float32", "bfloat16"), "--dtype"),
        precision=args.precision,
        cpu_convolutions=report.split_list(
            args.cpu_convolutions, ("xla", "ynnpack"), "--cpu-convolutions"
        ),
        batch=args.batch,
        steps=args.steps,
        warmup=args.warmup,
        repeats=args.repeats,
        image_size=args.image_size,
        num_classes=args.num_classes,
        use_torch=not args.no_torch,
        compile_threads=args.compile_threads,
        log=(lambda s: None) if args.quiet else None,
    )
    report.emit(result, COLUMNS, args, title=f"bench train {args.model}")
    return 0


def _tiny_size(model_name: str) -> int:
    from cnnjax.models import get_model_info

    info = get_model_info(model_name)
    return max(info.test_input_shape[0], info.min_input_size)
