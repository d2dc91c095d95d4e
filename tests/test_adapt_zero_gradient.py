"""adapt_hyperparams keeps adapting b2 when some gradient entries are always 0.

Found while writing notebooks/beyond.ipynb: on sklearn's digits some input
pixels are always 0, so their first-layer weights never get a gradient, Adam's
v̂ stays 0 there, and forward mode's tangent of m̂/(√v̂+ε) w.r.t. b2 is
0 · ∞ = NaN. The NaN made every hypergradient non-finite, so b2 (and every
name adapted together with it) never moved.
"""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hypergrad_optax as hgo


@pytest.mark.standard_promotion  # optax's Adam
@pytest.mark.parametrize("names", [("b2",), ("b1", "b2")])
def test_b2_adapts_with_an_always_zero_gradient_entry(names):
  tx = hgo.adapt_hyperparams(optax.adam, names, hyper_lr=0.1,
                             hyperparams=dict(learning_rate=0.1))
  params = jnp.array([1.0, 2.0, 0.5])
  state = tx.init(params)
  for t in range(6):
    grads = jnp.array([2 * params[0], 0.0, (-1.0) ** t])  # entry 1 always 0
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  for name in names:
    assert np.all(np.isfinite(np.asarray(state.tangents[name])))
  moved = {n: float(state.inner_state.hyperparams[n]) for n in names}
  assert moved["b2"] != pytest.approx(0.999, abs=1e-7), moved
