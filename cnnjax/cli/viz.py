"""``cnnjax viz PICTURE``: one PNG per call; the numbers come from :mod:`cnnjax.interpret`,
the drawing from :mod:`cnnjax.viz`.

    cnnjax viz edges                               # a 6×6 image ⊛ a 3×3 vertical-edge filter
    cnnjax viz filters runs/lenet5_digits          # first-layer kernels
    cnnjax viz features runs/lenet5_digits --layers C1 C3
    cnnjax viz deconv runs/lenet5_digits           # Zeiler & Fergus deconvnet projections
    cnnjax viz receptive-field runs/lenet5_digits  # theoretical box over the effective field
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np

from cnnjax import viz

__all__ = ["DESCRIPTION", "HELP", "PICTURES", "add_arguments", "run"]

HELP = "pictures: edges, filters, features, deconv, receptive-field (PNG)"
DESCRIPTION = "Pictures of CNN internals, one PNG per call."

# The pictures of a training run, and what each shows.
PICTURES = {
    "filters": "first-layer kernels, one tile per output channel",
    "features": "feature maps of one input through chosen layers",
    "deconv": "Zeiler & Fergus deconvnet projections of the strongest activations",
    "receptive-field": "theoretical RF box of a unit over its effective RF (Luo et al.)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One sub-command per picture."""
    pictures = parser.add_subparsers(dest="picture", metavar="PICTURE", required=True)
    text = "a 6×6 image ⊛ a 3×3 vertical-edge filter = a 4×4 map, with its numbers"
    p = pictures.add_parser("edges", help=text, description=text)
    p.add_argument("--output", default="edges.png", help="PNG path (default: edges.png)")
    for name, text in PICTURES.items():
        p = pictures.add_parser(name, help=text, description=text)
        _run_arguments(p, name)


# (pictures, option, add_argument keywords): the options beyond the run's, per picture
_OPTIONS = (
    (
        ("features", "receptive-field"),
        "--image",
        {"help": "an image file (default: a test image, see --index)"},
    ),
    (
        ("features", "receptive-field"),
        "--index",
        {"type": int, "default": 0, "help": "test image index (default 0)"},
    ),
    (
        ("features",),
        "--layers",
        {
            "nargs": "+",
            "help": "layer paths (see `cnnjax summary`; default: the first, middle and last conv)",
        },
    ),
    (
        ("deconv", "receptive-field"),
        "--layer",
        {"help": "layer path (default: the deepest spatial conv)"},
    ),
    (
        ("deconv",),
        "--top",
        {"type": int, "default": 4, "help": "activations to project (default: 4)"},
    ),
    (
        ("deconv",),
        "--images",
        {"type": int, "default": 32, "help": "test images searched (default: 32)"},
    ),
    (
        ("receptive-field",),
        "--unit",
        {"type": int, "nargs": "+", "help": "unit position (default: centre)"},
    ),
    (
        ("receptive-field",),
        "--images",
        {"type": int, "default": 8, "help": "test images averaged (default: 8)"},
    ),
)


def _run_arguments(p: argparse.ArgumentParser, name: str) -> None:
    """The arguments of picture ``name`` of a training run."""
    p.add_argument("workdir", metavar="WORKDIR", help="a cnnjax training run directory")
    p.add_argument("--output", help=f"PNG path (default: WORKDIR/{name}.png)")
    p.add_argument("--step", type=int, help="checkpoint step (default: latest)")
    p.add_argument(
        "--best",
        action="store_true",
        help="the best checkpoint (WORKDIR/checkpoints_best) instead of the latest",
    )
    for pictures, option, keywords in _OPTIONS:
        if name in pictures:
            p.add_argument(option, **keywords)


def run(args: argparse.Namespace) -> int:
    """Draw the picture; print its path (and, for some, its numbers)."""
    if args.picture == "edges":
        path, result = viz.plot_edges(args.output)
        print(f"{path}\n" + "\n".join(" ".join(f"{v:3g}" for v in r) for r in result))
        return 0
    from cnnjax import interpret

    which = "best" if args.best else "latest"
    loaded = interpret.load_run(args.workdir, args.step, which, data=args.picture != "filters")
    output = args.output or pathlib.Path(args.workdir) / f"{args.picture}.png"
    rows = interpret.spatial_layers(loaded.model, loaded.input_shape)
    draw = {
        "filters": _filters,
        "features": _features,
        "deconv": _deconv,
        "receptive-field": _receptive_field,
    }
    print(draw[args.picture](args, loaded, rows, output))
    return 0


def _filters(args, loaded, rows, output) -> str:
    return str(viz.plot_filters(_first_kernel(loaded.variables["params"], rows), output))


def _features(args, loaded, rows, output) -> str:
    from cnnjax import interpret

    image = _input_image(args, loaded)
    paths = args.layers or _default_feature_layers(rows)
    maps = interpret.feature_maps(loaded.model, loaded.variables, image, paths)
    return str(viz.plot_feature_maps(maps, image, output, mean=loaded.mean, std=loaded.std))


def _deconv(args, loaded, rows, output) -> str:
    from cnnjax import interpret

    row = _layer_row(rows, args.layer)
    count = max(1, min(args.images, loaded.num_test))
    images = np.stack([loaded.images(i) for i in range(count)])
    results = interpret.deconvnet(loaded.model, loaded.variables, images, row.path, top=args.top)
    return str(viz.plot_deconv(results, images, row, output, mean=loaded.mean, std=loaded.std))


def _receptive_field(args, loaded, rows, output) -> str:
    from cnnjax import interpret

    row = _layer_row(rows, args.layer)
    image = _input_image(args, loaded)
    if args.image:
        images = image[None]
    else:
        count = max(1, min(args.images, loaded.num_test - args.index))
        images = np.stack([loaded.images(args.index + i) for i in range(count)])
    erf, position = interpret.effective_receptive_field(
        loaded.model, loaded.variables, images, row.path, args.unit
    )
    path = viz.plot_receptive_field(
        image, erf, row, position, output, mean=loaded.mean, std=loaded.std
    )
    box = viz.field_box(row, position)
    return f"{path}\n{row.path} unit {position}: RF {row.rf_size} jump {row.rf_jump} box {box}"


def _first_kernel(params, rows) -> np.ndarray:
    """The 2-D conv kernel ``(kh, kw, C_in, C_out)`` of the first layer called (summary order,
    not the tree's) that owns one: the rows name their parameter leaves (``param_paths``), so
    modules, NNX state and a pure function's dict are searched alike."""
    for row in rows:
        for leaf_path in row.param_paths or (f"{row.path}/kernel",):
            node = params
            for name in leaf_path.split("/"):
                node = _child(node, name)
            if node is not None and np.ndim(node) == 4:
                return np.asarray(node)
    raise ValueError("the model has no 2-D conv kernel to show")


def _child(node, name: str):
    """``node[name]`` for a dict, an NNX state or a list (``None`` when absent)."""
    try:
        child = node[int(name)] if isinstance(node, list | tuple) else node[name]
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    if hasattr(child, "get_value"):  # an NNX Variable
        return child.get_value()
    return child


def _conv_rows(rows):
    return [r for r in rows if "conv" in r.type_name.lower()] or list(rows)


def _default_feature_layers(rows) -> list[str]:
    """The first, middle and last conv layers."""
    convs = _conv_rows(rows)
    picks = sorted({0, len(convs) // 2, len(convs) - 1})
    return [convs[i].path for i in picks]


def _layer_row(rows, layer: str | None):
    """The summary row of ``--layer`` (default: the deepest conv whose map is still spatial)."""
    if layer is None:
        convs = [r for r in _conv_rows(rows) if min(r.output_shape[1:-1]) > 1] or _conv_rows(rows)
        return convs[-1]
    for r in rows:
        if r.path == layer:
            return r
    known = ", ".join(r.path for r in rows)
    raise ValueError(f"no spatial layer {layer!r}; choose one of: {known}")


def _input_image(args, loaded) -> np.ndarray:
    """``--image FILE`` fitted to the run's input and normalised like its data, else test image
    ``--index``."""
    if not getattr(args, "image", None):
        return loaded.images(args.index)
    import jax
    import matplotlib.image

    path = pathlib.Path(args.image)
    if not path.is_file():
        raise FileNotFoundError(f"--image {path} does not exist")
    img = np.asarray(matplotlib.image.imread(path), np.float32)
    img = img[..., :3] if img.ndim == 3 else img[..., None]
    if img.max() > 1.0:
        img = img / 255.0
    h, w, c = loaded.input_shape
    if img.shape[-1] != c:
        img = img.mean(-1, keepdims=True) if c == 1 else np.repeat(img[..., :1], c, -1)
    img = np.asarray(jax.image.resize(img, (h, w, c), "linear"))
    return (img - np.asarray(loaded.mean, np.float32)) / np.asarray(loaded.std, np.float32)
