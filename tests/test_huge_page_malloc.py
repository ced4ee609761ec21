"""The ``cnnjax`` console script restarts ``train``/``eval``/``bench`` with glibc's huge-page
malloc (issue 9: ~73,500 page faults a ResNet-20 CPU step without it; 0.83x the step time with
it, experiments/cpu_malloc_hugetlb.py). Checked here: the restart keeps pid, argv and output,
happens once, keeps the user's own tunables, and is skipped where it must be."""

from __future__ import annotations

import os
import platform
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

# Prints "pid GLIBC_TUNABLES" each time the interpreter runs it, then runs the console script.
PROBE = (
    "import os, sys\n"
    "print(os.getpid(), os.environ.get('GLIBC_TUNABLES'), flush=True)\n"
    "sys.argv = ['cnnjax', *{argv!r}]\n"
    "from cnnjax.cli import console_main\n"
    "console_main()\n"
)


def _probe(argv, **env):
    environment = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    environment.update(env)
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(argv=argv)],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
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
        (["train", "--help"], {"CNNJAX_HUGE_PAGE_MALLOC": "0"}),  # turned off
    ],
)
def test_no_restart(argv, env):
    out, runs = _probe(argv, **env)
    assert out.returncode == 0, out.stderr
    assert len(runs) == 1


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
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.setattr(sys, "platform", system)
    monkeypatch.setattr(platform, "libc_ver", lambda: libc_version)

    def fail(*args):
        raise AssertionError(f"execv{args}")

    monkeypatch.setattr(os, "execv", fail)
    cli._use_huge_page_malloc()
    assert "GLIBC_TUNABLES" not in os.environ


def test_restart_command_line(monkeypatch):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(sys, "orig_argv", ["python3", "-X", "dev", "-m", "cnnjax.cli", "train"])
    calls = []
    monkeypatch.setattr(os, "execv", lambda *args: calls.append(args))
    cli._use_huge_page_malloc()
    assert calls == [(sys.executable, [sys.executable, "-X", "dev", "-m", "cnnjax.cli", "train"])]
    assert os.environ["GLIBC_TUNABLES"] == cli.HUGE_PAGE_TUNABLE
