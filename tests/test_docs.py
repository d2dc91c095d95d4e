"""The documentation: API reference complete, recipes runnable.

The docs themselves are built by .ci/run with
``sphinx-build -W -b html docs docs/_build/html`` (needs the ``docs`` extra).
"""

import importlib.util
import pathlib
import re

import pytest

import hypergrad_optax as hgo

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"


def test_api_reference_lists_every_public_name():
  api = (DOCS / "api.rst").read_text(encoding="utf-8")
  documented = set(re.findall(r"^\.\. auto(?:function|class):: (\w+)", api,
                              re.M))
  missing = sorted(set(hgo.__all__) - documented)
  assert not missing, f"docs/api.rst lacks {missing}"
  unknown = sorted(documented - set(hgo.__all__))
  assert not unknown, f"docs/api.rst documents non-public names {unknown}"


def _python_blocks(page):
  text = (DOCS / page).read_text(encoding="utf-8")
  return re.findall(r"```python\n(.*?)```", text, re.S)


@pytest.mark.standard_promotion  # the recipes run optax's Adam
def test_recipes_run(capsys):
  pytest.importorskip("flax")
  namespace = {}
  blocks = _python_blocks("recipes.md")
  assert len(blocks) >= 5
  for i, block in enumerate(blocks):
    if "orbax" in block and importlib.util.find_spec("orbax") is None:
      continue  # orbax-checkpoint is optional
    exec(compile(block, f"docs/recipes.md block {i}", "exec"), namespace)  # pylint: disable=exec-used
  capsys.readouterr()
