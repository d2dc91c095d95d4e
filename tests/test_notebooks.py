"""The notebooks: jupytext pairs, committed without outputs, run top to bottom.

Each notebook's source is a jupytext percent-format ``notebooks/NAME.py``,
paired with ``notebooks/NAME.ipynb`` (``jupytext --sync notebooks/*.py``).
Each notebook runs in its own Jupyter kernel (nbclient) with ``HGO_SMALL=1``,
the small-size switch that keeps each one to about a minute on CPU; the
notebooks assert their own claims, so a claim that stops holding fails here.
"""

import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb"))

nbformat = pytest.importorskip("nbformat")


def _cells(nb):
  return [(cell.cell_type, cell.source.strip()) for cell in nb.cells]


def test_there_are_notebooks():
  assert "quickstart.ipynb" in NOTEBOOKS
  assert "paper_reproduction.ipynb" in NOTEBOOKS
  assert "beyond.ipynb" in NOTEBOOKS


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_has_no_outputs(name):
  nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
  dirty = [i for i, cell in enumerate(nb.cells)
           if cell.cell_type == "code"
           and (cell.get("outputs") or cell.get("execution_count") is not None)]
  assert not dirty, (
      f"{name}: cells {dirty} carry outputs; regenerate with "
      "`jupytext --sync notebooks/*.py` (or strip the outputs)")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_in_sync_with_its_text_source(name):
  jupytext = pytest.importorskip("jupytext")
  source = NOTEBOOK_DIR / name.replace(".ipynb", ".py")
  assert source.is_file(), f"{name} has no jupytext source {source.name}"
  text = jupytext.read(source)
  committed = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
  assert text.metadata.get("jupytext", {}).get("formats") == "ipynb,py:percent"
  assert _cells(committed) == _cells(text), (
      f"{name} differs from {source.name}: edit the .py and run "
      f"`jupytext --sync notebooks/{source.name}`")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, monkeypatch):
  nbclient = pytest.importorskip("nbclient")
  monkeypatch.setenv("HGO_SMALL", "1")
  # Run the kernel with this interpreter, whatever kernelspecs the machine has.
  monkeypatch.setenv("JUPYTER_PATH", str(pathlib.Path(sys.prefix) / "share"
                                         / "jupyter"))
  nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
  client = nbclient.NotebookClient(
      nb, timeout=600, kernel_name="python3",
      resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
  client.execute()


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_first_code_cell_installs_and_detects(name):
  """Colab-ready: installs the package when missing, reports the backend,
  and reads the HGO_SMALL switch, before anything else runs."""
  nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
  first = next(c for c in nb.cells if c.cell_type == "code").source
  for needle in ('find_spec("hypergrad_optax")', "pip", "HGO_REPO_URL",
                 "jax.default_backend()", "HGO_SMALL"):
    assert needle in first, f"{name}: first code cell lacks {needle!r}"
