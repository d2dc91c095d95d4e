"""Strict settings for every test, in the spirit of equinox's tests/conftest.py.

Strict dtype promotion turns any silent promotion (a bf16 parameter meeting a
float32 rate, a float64 literal meeting float32 state) into an error, so the
library must cast explicitly wherever dtypes meet.

One exception, marked per test with ``@pytest.mark.standard_promotion``: Optax's
own Adam is not strict-clean (optax 0.2.8's ``tree_bias_correction`` computes
``float ** int32``), so tests that run ``optax.scale_by_adam`` (``adam_hd``,
``adamw_hd``, ``hypergradient(optax.adam(...))``) use standard promotion for
the whole test. Our own code paths are exercised strictly by the SGD-based
tests.
"""

import jax
import pytest


def pytest_configure(config):
  config.addinivalue_line(
      "markers",
      "standard_promotion: run with standard (not strict) dtype promotion, "
      "for tests that run optax's Adam (not strict-clean in optax 0.2.8)")


@pytest.fixture(autouse=True)
def _dtype_promotion(request):
  mode = ("standard" if request.node.get_closest_marker("standard_promotion")
          else "strict")
  with jax.numpy_dtype_promotion(mode):
    yield


@pytest.fixture
def x64():
  """Enables float64 for one test."""
  jax.config.update("jax_enable_x64", True)
  try:
    yield
  finally:
    jax.config.update("jax_enable_x64", False)
