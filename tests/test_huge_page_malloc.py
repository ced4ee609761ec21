"""The ``cnnjax`` console script restarts ``train``/``eval``/``bench`` with glibc's huge-page
malloc (issue 9: ~73,500 page faults a ResNet-20 CPU step without it; 0.83x the step time with
it, experiments/cpu_malloc_hugetlb.py). Checked here: the restart keeps pid, argv and output,
happens once, keeps the user's own tunables, and is skipped where it must be."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys

import pytest

from cnnjax import cli

libc, version = platform.libc_ver()
glibc_235 = (
    sys.platform == "linux"
    and libc == "glibc"
    and tuple(int(v) for v in version.split(".")[:2]) >= (2, 35)
)
needs_glibc = pytest.mark.skipif(not glibc_235, reason="glibc >= 2.35 on Linux")

# Prints "pid GLIBC_TUNABLES" each time the interpreter runs it, then runs the console script
# with the command-line arguments given after ``-c PROBE`` (as ``cnnjax ARGS`` would).
PROBE = (
    "import os, sys\n"
    "print(os.getpid(), os.environ.get('GLIBC_TUNABLES'), flush=True)\n"
    "from cnnjax.cli import console_main\n"
    "console_main()\n"
)
CLEAN = ("GLIBC_TUNABLES", "CNNJAX_HUGE_PAGE_MALLOC", "CNNJAX_HUGE_PAGE_MALLOC_RESTARTED")


def _environment(**env):
    environment = {k: v for k, v in os.environ.items() if k not in CLEAN}
    environment.update(env)
    return environment


def _probe(argv, **env):
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=_environment(**env),
    )
    lines = [line for line in out.stdout.splitlines() if line.split(" ")[0].isdigit()]
    return out, [line.split(" ", 1) for line in lines]


@needs_glibc
def test_train_restarts_once_with_the_tunable_same_pid_same_arguments():
    out, runs = _probe(["--debug", "train", "--help"])
    assert out.returncode == 0, out.stderr
    assert len(runs) == 2 and runs[0][0] == runs[1][0]  # one restart, same process
    assert runs[0][1] == "None" and runs[1][1] == cli.HUGE_PAGE_TUNABLE
    assert "usage: cnnjax train" in out.stdout  # the restarted process parsed the same argv


@needs_glibc
def test_the_users_tunables_are_kept_and_an_explicit_choice_wins():
    _, runs = _probe(["bench", "--help"], GLIBC_TUNABLES="glibc.malloc.arena_max=2")
    assert [r[1] for r in runs] == [
        "glibc.malloc.arena_max=2",
        f"glibc.malloc.arena_max=2:{cli.HUGE_PAGE_TUNABLE}",
    ]
    _, runs = _probe(["eval", "--help"], GLIBC_TUNABLES="glibc.malloc.hugetlb=0")
    assert [r[1] for r in runs] == ["glibc.malloc.hugetlb=0"]  # no restart


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["models"], {}),  # short commands: not worth a second start-up
        (["--version"], {}),
        *[(["train", "--help"], {"CNNJAX_HUGE_PAGE_MALLOC": v}) for v in ("0", "false", "Off")],
        (["train", "--help"], {"CNNJAX_HUGE_PAGE_MALLOC_RESTARTED": "1"}),  # no second restart
    ],
)
def test_no_restart(argv, env):
    out, runs = _probe(argv, **env)
    assert out.returncode == 0, out.stderr
    assert len(runs) == 1


def test_a_program_calling_console_main_itself_is_not_restarted():
    """Only a process that *is* the command restarts (not a script, REPL or notebook)."""
    code = "import sys\nsys.argv = ['cnnjax', 'train', '--bogus-flag']\n" + PROBE
    out = subprocess.run(
        [sys.executable, "-"], input=code, capture_output=True, text=True, timeout=120,
        env=_environment(),
    )  # fmt: skip
    assert out.returncode == 2 and "unrecognized arguments: --bogus-flag" in out.stderr
    assert len([line for line in out.stdout.splitlines() if line[:1].isdigit()]) == 1


@needs_glibc
def test_closed_output_streams_do_not_break_the_restart(tmp_path):
    marker = tmp_path / "runs.txt"
    code = (
        "import os\n"
        f"open({str(marker)!r}, 'a').write(os.environ.get('GLIBC_TUNABLES', '-') + '\\n')\n"
        "from cnnjax.cli import console_main\n"
        "console_main()\n"
    )
    script = f'exec {shlex.quote(sys.executable)} -c "$0" train --bogus-flag >&- 2>&-'
    out = subprocess.run(["bash", "-c", script, code], env=_environment(), timeout=120)
    assert out.returncode == 2  # argparse's error (stderr closed), not a crash in the restart
    assert marker.read_text().split() == ["-", cli.HUGE_PAGE_TUNABLE]


@needs_glibc
def test_output_buffered_before_the_restart_is_not_lost():
    code = "import sys\nprint('before the restart')\n" + PROBE  # (not flushed: a pipe)
    out = subprocess.run(
        [sys.executable, "-c", code, "train", "--help"],
        capture_output=True, text=True, timeout=120, env=_environment(),
    )  # fmt: skip
    assert out.stdout.count("before the restart") == 2  # once per start, none lost


def test_bench_meta_records_the_tunables_and_xla_flags(monkeypatch):
    from cnnjax.bench import report

    monkeypatch.setenv("GLIBC_TUNABLES", cli.HUGE_PAGE_TUNABLE)
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    meta = report.machine_meta()
    assert meta["glibc_tunables"] == cli.HUGE_PAGE_TUNABLE
    assert meta["xla_flags"] == "--xla_cpu_enable_fast_math=false"


@pytest.mark.parametrize(
    ("system", "libc_version"),
    [
        ("linux", ("glibc", "2.34")),
        ("linux", ("musl", "1.2")),
        ("linux", ("", "")),
        ("darwin", ("", "")),
    ],
)
def test_skipped_on_other_c_libraries_and_systems(monkeypatch, system, libc_version):
    monkeypatch.setattr(os, "environ", _environment())  # a copy: nothing leaks
    monkeypatch.setattr(sys, "platform", system)
    monkeypatch.setattr(platform, "libc_ver", lambda: libc_version)

    def fail(*args):
        raise AssertionError(f"execv{args}")

    monkeypatch.setattr(os, "execv", fail)
    cli._use_huge_page_malloc()
    assert "GLIBC_TUNABLES" not in os.environ


def test_restart_command_line(monkeypatch):
    monkeypatch.setattr(os, "environ", _environment())  # a copy: nothing leaks
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(sys, "orig_argv", ["python3", "-X", "dev", "-m", "cnnjax.cli", "train"])
    calls = []
    monkeypatch.setattr(os, "execv", lambda *args: calls.append(args))
    cli._use_huge_page_malloc()
    assert calls == [(sys.executable, [sys.executable, "-X", "dev", "-m", "cnnjax.cli", "train"])]
    assert os.environ["GLIBC_TUNABLES"] == cli.HUGE_PAGE_TUNABLE
    assert os.environ["CNNJAX_HUGE_PAGE_MALLOC_RESTARTED"] == "1"
