"""Sphinx configuration: ``sphinx-build -W -b html docs docs/_build/html``."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

import hypergrad_optax  # pylint: disable=wrong-import-position

project = "hypergrad_optax"
author = "hypergrad_optax developers"
copyright = "2026, hypergrad_optax developers"  # pylint: disable=redefined-builtin
release = hypergrad_optax.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "experiments", "Thumbs.db", ".DS_Store"]

# Google-style docstrings (optax's), attributes as fields (no duplicate
# object descriptions for the NamedTuple states).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
napoleon_use_rtype = False

autodoc_member_order = "bysource"
# Signatures show names and defaults; the Args sections give the types
# (the expanded ``jax.typing.ArrayLike`` unions are unreadable).
autodoc_typehints = "none"
autodoc_default_options = {"show-inheritance": False}

myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

html_theme = "alabaster"
html_title = f"hypergrad_optax {release}"
html_static_path = []

# docs/results.md and docs/beyond.md are written by the benchmark and
# beyond-the-paper work and may not exist yet: index.md's hidden toctree lists
# the ones that do (a toctree entry or glob that matches nothing is a
# warning), plus any pages under docs/results/ (run summaries that
# results.md links to), so that those links resolve.
import glob  # pylint: disable=wrong-import-position,wrong-import-order

OPTIONAL_PAGES = ("results", "beyond")


def _optional_pages(srcdir):
  return [name for name in OPTIONAL_PAGES
          if os.path.exists(os.path.join(srcdir, name + ".md"))]


def _result_summaries(srcdir):
  paths = glob.glob(os.path.join(srcdir, "results", "**", "*.md"),
                    recursive=True)
  return [os.path.relpath(p, srcdir)[:-len(".md")].replace(os.sep, "/")
          for p in sorted(paths)]


def _list_optional_pages(app, docname, source):
  if docname == "index":
    source[0] = source[0].replace(
        "<!-- optional pages -->",
        "\n".join(_optional_pages(app.srcdir))).replace(
            "<!-- result summaries -->",
            "\n".join(_result_summaries(app.srcdir)))
  elif docname.startswith("results/") and not source[0].lstrip().startswith("# "):
    # The benchmark's summary.md files start at "##": give them a title.
    source[0] = f"# {docname[len('results/'):]}\n\n" + source[0]


def setup(app):
  app.connect("source-read", _list_optional_pages)
