"""Every public name is documented, optax-style, and its Example runs.

The examples are executed as doctests here (not with ``--doctest-modules``)
so that they run in the default ``python -m pytest -q`` and under the same
conftest as the other tests.
"""

import doctest
import inspect

import pytest

import hypergrad_optax as hgo

PUBLIC = sorted(hgo.__all__)
FUNCTIONS = [n for n in PUBLIC if inspect.isfunction(getattr(hgo, n))]
WITH_EXAMPLES = [n for n in PUBLIC
                 if n in FUNCTIONS or ">>>" in (getattr(hgo, n).__doc__ or "")]
SECTIONS = ("Args:", "Returns:", "Example", "References:")


def _docstring_examples(name):
  """The doctests of one public object (not of the whole module)."""
  obj = getattr(hgo, name)
  finder = doctest.DocTestFinder(recurse=False)
  return [t for t in finder.find(obj, name=f"hypergrad_optax.{name}",
                                 globs={})
          if t.examples]


def test_every_public_name_has_a_docstring():
  missing = [n for n in PUBLIC if not inspect.getdoc(getattr(hgo, n))]
  assert not missing, f"public names without a docstring: {missing}"


@pytest.mark.parametrize("name", FUNCTIONS)
def test_function_docstring_is_optax_style(name):
  doc = inspect.getdoc(getattr(hgo, name))
  assert doc, name
  summary = doc.splitlines()[0]
  assert summary.strip() and summary.rstrip().endswith("."), summary
  missing = [s for s in SECTIONS if s not in doc]
  assert not missing, f"{name}: docstring lacks {missing}"
  assert ":math:" in doc or ".. math::" in doc, f"{name}: no math"
  assert ">>>" in doc, f"{name}: the Example has no doctest"


@pytest.mark.standard_promotion  # examples run optax's Adam
@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_docstring_examples_run(name):
  tests = _docstring_examples(name)
  assert tests, f"{name} has no doctest example"
  runner = doctest.DocTestRunner(
      optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  for test in tests:
    runner.run(test)
  result = runner.summarize(verbose=False)
  assert result.failed == 0, f"{name}: {result.failed} doctest(s) failed"
