"""The ``cnnjax`` command: one parser tree, one error policy; every command calls the library.

::

    cnnjax train lenet5                      # embedded digits, ~30 s on 2 CPU cores, ≈97 % test
    cnnjax train resnet20 --config experiments/configs/resnet20_cifar10.py
    cnnjax eval runs/lenet5_digits           # accuracy + confusion matrix PNG
    cnnjax models | summary MODEL | plot WORKDIR | viz ... | gradcheck ... | bench ...

One module per command (:mod:`cnnjax.cli.train`, ``eval``, ``models``, ``summary``, ``plot``,
``viz``, ``gradcheck``, ``bench``), each with ``HELP``, ``DESCRIPTION``, ``add_arguments(parser)``
and ``run(args) -> exit status``; the parser class, the error policy and the argument types they
share are in :mod:`cnnjax.cli.common`.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Callable, Sequence

from cnnjax.cli import bench, common, gradcheck, models, plot, summary, train, viz
from cnnjax.cli import eval as eval_command

__all__ = [
    "COMMANDS",
    "HUGE_PAGE_TUNABLE",
    "build_parser",
    "command_parser",
    "console_main",
    "entry_point",
    "main",
]

# The commands in the order of `cnnjax --help`.
COMMANDS = {
    "train": train,
    "eval": eval_command,
    "models": models,
    "summary": summary,
    "plot": plot,
    "bench": bench,
    "gradcheck": gradcheck,
    "viz": viz,
}

# glibc's huge-page malloc: see _use_huge_page_malloc. CNNJAX_HUGE_PAGE_MALLOC=0 turns it off.
HUGE_PAGE_TUNABLE = "glibc.malloc.hugetlb=1"
_HUGE_PAGE_COMMANDS = ("train", "eval", "bench")  # the ones that run long computations
_OFF = ("0", "false", "no", "off")
_RESTARTED = "CNNJAX_HUGE_PAGE_MALLOC_RESTARTED"

_DESCRIPTION = "cnnjax: a JAX functional CNN toolkit (ops → layers → models → data → train)."


def build_parser(command: str | None = None) -> common.CommandParser:
    """The ``cnnjax`` parser: one sub-parser per command, each with its own sub-commands.

    ``command=None`` adds every command's arguments; a command's name adds only its own, and
    ``""`` none (the commands stay listed in ``--help``): ``cnnjax train``'s help quotes the
    training configuration's defaults, and ``cnnjax models`` need not import the training code
    to build its parser.
    """
    parser = common.CommandParser(prog="cnnjax", description=_DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"cnnjax {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in COMMANDS.items():
        sub = commands.add_parser(name, help=module.HELP, description=module.DESCRIPTION)
        if command in (None, name):
            module.add_arguments(sub)
        sub.set_defaults(handler=module.run)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cnnjax")
    except PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
        from cnnjax import __version__

        return __version__


def main(argv: list[str] | None = None) -> int:
    """Run ``cnnjax ARGV``; returns the exit status (see :mod:`cnnjax.cli.common` for errors).

    ``--debug`` is taken from anywhere before ``--``. A bad command line exits (status 2) from
    the parser, as argparse does; ``--help`` and ``--version`` exit with status 0.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug, rest = _pop_debug(argv)
    args, extra = build_parser(_command(rest) or "").parse_known_args(rest)
    if extra:  # named by the command that got them, not by `cnnjax`
        args.command_parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.debug = debug
    args.argv = argv  # recorded by the benchmarks
    prog = args.command_parser.prog
    try:
        status = args.handler(args)
    except common.USER_ERRORS as e:
        if debug:
            raise
        print(f"{prog}: error: {common.one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


def _pop_debug(argv: list[str]) -> tuple[bool, list[str]]:
    """``--debug`` anywhere before ``--`` (any command): (found, argv without it)."""
    end = argv.index("--") if "--" in argv else len(argv)
    kept = [a for a in argv[:end] if a != "--debug"]
    return len(kept) < end, kept + argv[end:]


def _command(argv: list[str]) -> str | None:
    """The command word: the first argument that is not an option (``cnnjax``'s own options
    take no value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def entry_point(command: str) -> Callable[[Sequence[str] | None], int]:
    """``main(argv=None)`` running ``cnnjax COMMAND ARGV`` (``sys.argv[1:]`` by default): the
    entry points ``cnnjax.viz.main``, ``cnnjax.gradcheck.main`` and ``cnnjax.bench.main``."""

    def command_main(argv: Sequence[str] | None = None) -> int:
        return main([command, *(sys.argv[1:] if argv is None else argv)])

    command_main.__doc__ = f"``cnnjax {command} ARGV``: returns the exit status."
    return command_main


def command_parser(command: str) -> common.CommandParser:
    """The parser of ``cnnjax COMMAND`` alone (its sub-commands included)."""
    module = COMMANDS[command]
    parser = common.CommandParser(prog=f"cnnjax {command}", description=module.DESCRIPTION)
    module.add_arguments(parser)
    return parser


def console_main() -> None:
    """The ``cnnjax`` console script: :func:`main`, for ``train``/``eval``/``bench`` in a process
    restarted with huge-page malloc (:func:`_use_huge_page_malloc`)."""
    argv = sys.argv[1:]
    # Restart only a process that *is* this command (console script, python -m cnnjax.cli):
    # never a REPL, notebook or script that called console_main itself.
    own_process = bool(argv) and sys.orig_argv[-len(argv) :] == argv
    if _command(argv) in _HUGE_PAGE_COMMANDS and own_process:
        _use_huge_page_malloc()
    sys.exit(main())


def _use_huge_page_malloc() -> None:
    """Restart this process (same pid, argv, streams) once with ``glibc.malloc.hugetlb=1``.

    Every XLA:CPU execution allocates its scratch buffer (~290 MiB for ResNet-20 at batch 128)
    and every Eigen convolution its packed input panel (up to 72 MiB) from glibc arenas whose
    heaps hold at most 64 MiB, so each is a fresh ``mmap`` released after use: ~73,500 page
    faults a ResNet-20 step. With the tunable (glibc >= 2.35; read only at process start, hence
    the restart) glibc backs those mappings with 2 MiB pages: ResNet-20's CPU step took 0.83x as
    long, LeNet-5's the same (experiments/cpu_malloc_hugetlb.py); the restart costs ~0.4 s of
    start-up (importing cnnjax twice), hence only for long commands. Nothing happens off Linux, on
    other C libraries or older glibc, when ``GLIBC_TUNABLES`` already names the tunable (your
    setting wins), after the restart (``CNNJAX_HUGE_PAGE_MALLOC_RESTARTED``), or with
    ``CNNJAX_HUGE_PAGE_MALLOC`` = ``0``/``false``/``no``/``off``.
    """
    off = os.environ.get("CNNJAX_HUGE_PAGE_MALLOC", "1").strip().lower() in _OFF
    if sys.platform != "linux" or off or os.environ.get(_RESTARTED):
        return  # (_RESTARTED: glibc blanks GLIBC_TUNABLES in privileged processes: no loop)
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in tunables or not sys.executable or not sys.orig_argv:
        return
    libc, version = platform.libc_ver()
    try:
        major_minor = tuple(int(v) for v in version.split(".")[:2])
    except ValueError:
        return
    if libc != "glibc" or major_minor < (2, 35):
        return
    os.environ["GLIBC_TUNABLES"] = ":".join(filter(None, [tunables, HUGE_PAGE_TUNABLE]))
    os.environ[_RESTARTED] = "1"
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:  # (None: the stream was closed, e.g. `cnnjax train >&-`)
            stream.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
