"""Sphinx configuration for dgmood.

Build: ``python -m sphinx -b html docs docs/_build/html`` (or ``make docs``).

The example gallery (``../examples/plot_*.py``) is rendered by sphinx-gallery
when it is installed. Examples are *not executed* by default (they load the
shipped weights and real data); set ``DGMOOD_DOCS_RUN_GALLERY=1`` to run them
and include their output and figures. Without sphinx-gallery the gallery is
left out; without numpydoc, docstrings are parsed by ``sphinx.ext.napoleon``.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the source checkout, if dgmood is not installed

import dgmood  # noqa: E402

# -- project -----------------------------------------------------------------
project = "dgmood"
author = "dgmood developers"
copyright = "dgmood developers, BSD-3-Clause"
release = dgmood.__version__
version = ".".join(release.split(".")[:2])

# -- extensions (optional ones only when importable) ---------------------------


def _has(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:  # not installed, or broken: fall back
        return False
    return True


HAS_NUMPYDOC = _has("numpydoc")
HAS_GALLERY = _has("sphinx_gallery")

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc" if HAS_NUMPYDOC else "sphinx.ext.napoleon",
]
if HAS_GALLERY:
    extensions.append("sphinx_gallery.gen_gallery")

templates_path: list[str] = []
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "results_table.rst"]  # included by benchmarks.rst
if not HAS_GALLERY:
    exclude_patterns.append("auto_examples")

# -- autodoc / autosummary -----------------------------------------------------
autosummary_generate = False  # api.rst documents every object itself: no stub files
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "none"  # signatures stay short; types are in the docstrings
add_module_names = False

if HAS_NUMPYDOC:
    numpydoc_show_class_members = False  # members are listed explicitly in api.rst
    numpydoc_class_members_toctree = False
    numpydoc_validation_checks: set[str] = set()
else:
    napoleon_numpy_docstring = True
    napoleon_google_docstring = False
    napoleon_use_rtype = False

# -- sphinx-gallery ------------------------------------------------------------
# "True"/"False" strings, as sphinx-gallery's own config value expects; the
# command line still wins: ``-D plot_gallery=1``.
plot_gallery = "True" if os.environ.get("DGMOOD_DOCS_RUN_GALLERY", "0") == "1" else "False"

if HAS_GALLERY:
    sphinx_gallery_conf = {
        "examples_dirs": "../examples",
        "gallery_dirs": "auto_examples",
        "filename_pattern": r"plot_",
        "download_all_examples": False,
        "remove_config_comments": True,
        "matplotlib_animations": False,
        "write_computation_times": False,  # no sg_execution_times.rst beside the sources
    }

# -- HTML ----------------------------------------------------------------------
html_theme = "alabaster"
html_title = f"dgmood {release}"
html_static_path: list[str] = []
html_theme_options = {
    "description": "Out-of-distribution detection with deep generative models, the scikit-learn way",
    "fixed_sidebar": True,
}


def _without_gallery(app, docname, source):
    """Without sphinx-gallery there is no ``auto_examples/``: drop its toctree entry
    and turn links to examples into the examples' file names."""
    text = "\n".join(line for line in source[0].split("\n") if line.strip() != "auto_examples/index")
    source[0] = re.sub(r":ref:`sphx_glr_auto_examples_(\w+)\.py`", r"``examples/\1.py``", text)


def setup(app):
    if not HAS_GALLERY:
        app.connect("source-read", _without_gallery)
