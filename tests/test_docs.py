"""The documentation site builds with warnings as errors, and its examples run.

* ``sphinx-build -W -b html``: every page, every cross-reference, the API pages from docstrings.
* ``sphinx-build -W -b doctest``: every ``{testcode}``/``{doctest}`` block, outputs compared.
* Shell blocks preceded by the MyST comment ``% ci: run`` run in order, per page, in a fresh
  directory with the ``cnnjax`` command of this checkout.
* A plain ```` ```python ```` block must say why it is not executed (``% not run: REASON``).

Skips cleanly when the ``docs`` extra (sphinx, myst-parser, furo) is not installed.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
USER_FACING = [ROOT / "README.md", *PAGES, *sorted((ROOT / "experiments").rglob("*.py"))]
FENCE = re.compile(r"^(%[^\n]*\n)?```(\w+)\n(.*?)^```", re.S | re.M)


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)  # one CPU device, as on a user's machine
    env["PATH"] = f"{pathlib.Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _sphinx(builder: str, tmp_path: pathlib.Path) -> subprocess.CompletedProcess:
    for module in ("sphinx", "myst_parser", "furo"):
        pytest.importorskip(module, reason="the docs extra is not installed")
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", builder]
    command += ["-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / builder)]
    return subprocess.run(
        command, env=_env(), capture_output=True, text=True, timeout=600, cwd=tmp_path
    )


def test_html_builds_with_warnings_as_errors(tmp_path):
    result = _sphinx("html", tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    html = tmp_path / "html"
    for page in ("index", "getting_started", "data", "concepts", "api/ops"):
        assert (html / f"{page}.html").is_file(), page
    # The API pages carry the docstrings (autodoc ran, not just the page titles).
    assert 'id="cnnjax.ops.conv"' in (html / "api" / "ops.html").read_text()
    assert (
        'id="cnnjax.models.registry.create_model"' in (html / "api" / "models.html").read_text()
        or 'id="cnnjax.models.create_model"' in (html / "api" / "models.html").read_text()
    )


def test_every_python_example_runs_and_prints_what_the_page_says(tmp_path):
    result = _sphinx("doctest", tmp_path)
    report = (tmp_path / "doctest" / "output.txt").read_text() if result.returncode else ""
    assert result.returncode == 0, report[-6000:] + result.stderr[-4000:]
    summary = (tmp_path / "doctest" / "output.txt").read_text()
    tests = sum(int(n) for n in re.findall(r"^\s+(\d+) tests", summary, flags=re.M))
    assert tests >= 10, summary[-2000:]
    assert "0 failures in tests" in summary


def _fences(page: pathlib.Path):
    for match in FENCE.finditer(page.read_text()):
        marker, language, body = match.groups()
        yield (marker or "").strip(), language, body


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_plain_python_blocks_say_why_they_do_not_run(page):
    for marker, language, body in _fences(page):
        if language == "python":
            assert marker.startswith("% not run:"), (
                f"{page.name}: a ```python block that is not executed; use ```{{testcode}} or "
                f"precede it with '% not run: REASON':\n{body[:300]}"
            )


RUN_PAGES = [p for p in PAGES if any(m == "% ci: run" for m, _, _ in _fences(p))]


@pytest.mark.parametrize("page", RUN_PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_shell_blocks_marked_ci_run_work_in_a_fresh_directory(page, tmp_path):
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    script = "\n".join(body for marker, language, body in _fences(page) if marker == "% ci: run")
    assert script.strip()
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, (
        f"{script}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
    )


@pytest.mark.parametrize("path", USER_FACING, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_user_facing_text_points_at_the_development_shared_folder(path):
    assert "../shared" not in path.read_text(), f"{path}: ../shared exists only for developers"
