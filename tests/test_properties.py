"""Property tests over random pytrees (shapes incl. empty leaves, dtypes)."""

import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax

import hypergrad_optax as hgo

_SHAPES = [(), (0,), (3,), (2, 0), (2, 3), (1, 4, 2)]
_DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]
_SETTINGS = hypothesis.settings(max_examples=15, deadline=None,
                                derandomize=True)


@st.composite
def trees(draw, dtypes=_DTYPES):
  """A dict of 1-4 leaves with random shapes and one dtype, and two grads."""
  n = draw(st.integers(1, 4))
  shapes = [draw(st.sampled_from(_SHAPES)) for _ in range(n)]
  dtype = draw(st.sampled_from(dtypes))
  seed = draw(st.integers(0, 2 ** 16))
  rng = np.random.default_rng(seed)
  make = lambda: {f"leaf{i}": jnp.asarray(rng.normal(size=s), dtype)  # pylint: disable=unnecessary-lambda-assignment
                  for i, s in enumerate(shapes)}
  return make(), [make() for _ in range(3)]


_RULES = st.sampled_from(["additive", "multiplicative"])
_GRANULARITIES = st.sampled_from(["global", "per-tensor", "per-element"])


def _run(tx, params, grads):
  state = tx.init(params)
  outputs = []
  for g in grads:
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
    outputs.append(updates)
  return outputs, state


@_SETTINGS
@hypothesis.given(trees(), _RULES, _GRANULARITIES)
def test_hyper_lr_zero_equals_inner(tree, rule, granularity):
  params, grads = tree
  inner = lambda: optax.sgd(0.1, momentum=0.9)  # pylint: disable=unnecessary-lambda-assignment
  ours, _ = _run(hgo.hypergradient(inner(), 0.0, rule=rule,
                                   granularity=granularity), params, grads)
  theirs, _ = _run(inner(), params, grads)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(np.asarray(a, np.float32),
                                  np.asarray(b, np.float32))


@_SETTINGS
@hypothesis.given(trees(), _RULES, _GRANULARITIES, st.booleans())
def test_state_stable_and_rates_finite(tree, rule, granularity, wrapper):
  params, grads = tree
  if wrapper:
    tx = hgo.hypergradient(optax.sgd(0.1), rule=rule, granularity=granularity)
  else:
    tx = hgo.sgd_hd(0.1, 0.01, momentum=0.9, nesterov=True, rule=rule,
                    granularity=granularity)
  state = tx.init(params)
  outputs, new_state = _run(tx, params, grads)
  abstract = lambda t: jax.tree.map(lambda x: (x.shape, x.dtype), t)  # pylint: disable=unnecessary-lambda-assignment
  assert abstract(new_state) == abstract(state)
  for updates in outputs:
    assert abstract(updates) == abstract(params)
  for r in jax.tree.leaves(new_state[1]):
    assert r.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(r)))
    assert bool(jnp.all(r >= 0))  # default min_rate=0


@_SETTINGS
@hypothesis.given(trees(dtypes=[jnp.float32]), st.sampled_from([
    "global", "per-tensor"]))
def test_hypergradient_is_the_numpy_dot(tree, granularity):
  params, grads = tree
  beta, alpha0 = 0.01, 0.1
  tx = hgo.sgd_hd(alpha0, beta, min_rate=None, granularity=granularity)
  state = tx.init(params)
  _, state = tx.update(grads[0], state, params)
  _, state = tx.update(grads[1], state, params)
  # α1 = α0 + β g1·g0: over the whole pytree, or within each leaf.
  dots = {k: float(np.sum(np.asarray(grads[1][k], np.float64)
                          * np.asarray(grads[0][k], np.float64)))
          for k in params}
  if granularity == "global":
    np.testing.assert_allclose(float(state.learning_rate),
                               alpha0 + beta * sum(dots.values()),
                               rtol=1e-5, atol=1e-7)
  else:
    for k, dot in dots.items():
      np.testing.assert_allclose(float(state.learning_rate[k]),
                                 alpha0 + beta * dot, rtol=1e-5, atol=1e-7)
