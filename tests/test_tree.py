"""_tree.leaf_sums / finish_sums: several sums of a tree in one reduction per
leaf, against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hypergrad_optax import _tree

_RNG = np.random.default_rng(0)
_A = {"w": _RNG.normal(size=(3, 4)), "b": _RNG.normal(size=4),
      "s": np.float64(1.5)}
_B = {"w": _RNG.normal(size=(3, 4)), "b": _RNG.normal(size=4),
      "s": np.float64(-2.0)}


def _tree_of(values, dtype):
  return {k: jnp.asarray(v, dtype) for k, v in values.items()}


def _square(x, _):
  return x * x


@pytest.mark.parametrize("granularity", ["global", "per-tensor"])
def test_sums_per_leaf_and_over_the_tree(granularity):
  a, b = _tree_of(_A, jnp.float32), _tree_of(_B, jnp.float32)
  dot, square = _tree.leaf_sums([(jnp.multiply, a, b), (_square, a, a)],
                                granularity, jnp.float32)
  for k in _A:
    np.testing.assert_allclose(dot[k], np.sum(_A[k] * _B[k]), rtol=1e-5)
    np.testing.assert_allclose(square[k], np.sum(_A[k] ** 2), rtol=1e-5)
    assert dot[k].shape == () and dot[k].dtype == jnp.float32
  total = _tree.finish_sums(dot, granularity, jnp.float32)
  if granularity == "global":
    np.testing.assert_allclose(
        total, sum(np.sum(_A[k] * _B[k]) for k in _A), rtol=1e-5)
  else:
    assert jax.tree.structure(total) == jax.tree.structure(a)


def test_per_element_keeps_the_products():
  a, b = _tree_of(_A, jnp.float32), _tree_of(_B, jnp.float32)
  [products] = _tree.leaf_sums([(jnp.multiply, a, b)], "per-element",
                               jnp.float32)
  for k in _A:
    np.testing.assert_allclose(products[k], _A[k] * _B[k], rtol=1e-6)


def test_sums_are_taken_in_the_given_dtype():
  # 301 is not a bfloat16 number (above 256 its spacing is 2): any sum kept
  # in bfloat16 misses it, the float32 sum of 301 ones is exact.
  a = {"x": jnp.ones(301, jnp.bfloat16)}
  [total] = _tree.leaf_sums([(jnp.multiply, a, a)], "global", jnp.float32)
  assert total["x"].dtype == jnp.float32
  assert float(total["x"]) == 301.0


@pytest.mark.skipif(jax.default_backend() != "cpu",
                    reason="counts of XLA's CPU fusions")
def test_one_pass_over_the_buffers():
  # Three sums over (g, z) read each buffer once: XLA's bytes accessed for a
  # jitted call are two buffers' worth (as three separate sums: four).
  n = 1 << 16
  def many(g, z):
    return _tree.leaf_sums([(jnp.multiply, g, z), (_square, g, g),
                            (_square, z, z)], "global", jnp.float32)
  x = {"v": jnp.ones(n, jnp.float32)}
  analysis = jax.jit(many).lower(x, x).compile().cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  assert analysis["bytes accessed"] / (4 * n) == pytest.approx(2, abs=0.01)
