"""Sphinx configuration for the cnnjax documentation (MyST Markdown pages, API from docstrings).

Build (warnings are errors, as in CI)::

    pip install -e ".[docs]"
    sphinx-build -W -b html docs docs/_build/html      # the site
    sphinx-build -W -b doctest docs docs/_build/doctest  # runs every {testcode}/{doctest} block
"""

import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Examples run on the CPU with one device; keep XLA quiet and small.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import cnnjax  # noqa: E402

project = "cnnjax"
author = "the cnnjax authors"
copyright = "2026, the cnnjax authors"
release = version = cnnjax.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

myst_enable_extensions = ["colon_fence", "dollarmath", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}
autosummary_generate = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # "Attributes:" as fields: the dataclass fields are documented once

# Every {testcode} block runs in one namespace per page; this setup is shared by all of them.
doctest_global_setup = """
import os, pathlib, tempfile
os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax, jax.numpy as jnp, numpy as np
import cnnjax
"""
doctest_test_doctest_blocks = ""  # only explicit {doctest}/{testcode} blocks run

html_theme = "furo"
html_title = f"cnnjax {release}"
