"""hgo.diagnose: the rule's signals, against hand-computed values."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hypergrad_optax as hgo


def _after_one_step(**kwargs):
  tx = hgo.hypergradient(optax.sgd(0.1), **kwargs)
  params = jnp.array([1.0, -2.0])
  state = tx.init(params)
  _, state = tx.update(2 * params, state, params)  # g_0 = (2, -4), ũ_0 = (-.2, .4)
  return tx, params, state


def test_signals_by_hand():
  _, _, state = _after_one_step()
  info = hgo.diagnose(jnp.array([1.0, 1.0]), state)
  # h = g_1·ũ_0 = -0.2 + 0.4; ‖g_1‖ = √2, ‖ũ_0‖ = √0.2; A = ‖g_0‖‖ũ_0‖ = √20 √0.2.
  np.testing.assert_allclose(info["hypergradient"], 0.2, rtol=1e-6)
  np.testing.assert_allclose(info["cosine"], 0.2 / (np.sqrt(2) * np.sqrt(0.2)),
                             rtol=1e-6)
  np.testing.assert_allclose(info["bound"], 2.0, rtol=1e-6)
  assert not bool(info["overshoot"])


def test_overshoot_flag_matches_the_guard():
  # Without the relative step bound, which would hold both steps below the
  # cap (at 0.1 ‖θ‖ / ‖ũ‖: 0.5, then 0.05).
  tx, params, state = _after_one_step(max_relative_step=None)
  grads = jnp.array([-20.0, 40.0])  # h = 4 + 16 = 20 > 3A = 6
  info = hgo.diagnose(grads, state)
  assert bool(info["overshoot"])
  _, state = tx.update(grads, state, params)
  # The guard's soft cap: s ≤ s_prev A / (A + h - 3A) = 2 / 16 (the
  # secant's, overshoot_guard='secant': 2 / 22).
  np.testing.assert_allclose(state.scale, 2.0 / 16.0, rtol=1e-6)


def test_overshoot_needs_the_tangent_to_agree():
  # The last step overshot (g_1 = 100 ũ_0: h = 20 > 3A = 6), but the tangent
  # Z = (2, 1) is orthogonal to g_1: its cosine 0 is below
  # rules.OVERSHOOT_TANGENT_COSINE, so neither diagnose nor the guard calls it
  # an overshoot, and the cap (2/22) does not act. (Without the relative step
  # bound, which would hold this step of norm 2√5 at 0.1 ‖θ‖ = 0.1√5.)
  tx, params, state = _after_one_step(max_relative_step=None)
  np.testing.assert_allclose(state.tangent, [-0.2, 0.4], rtol=1e-6)
  state = state._replace(tangent=jnp.array([2.0, 1.0]))
  grads = jnp.array([-20.0, 40.0])
  info = hgo.diagnose(grads, state)
  np.testing.assert_allclose(info["cosine"], 0.0, atol=1e-7)
  np.testing.assert_allclose(info["step_hypergradient"], 20.0, rtol=1e-6)
  assert not bool(info["overshoot"])
  _, state = tx.update(grads, state, params)
  # The rule follows the last step (cosine 1 > 0.8): s = 1 - 0.1 · 1.
  np.testing.assert_allclose(state.scale, 0.9, rtol=1e-6)


def test_without_guard_the_bound_is_nan():
  tx = hgo.hypergradient(optax.sgd(0.1), overshoot_guard=False)
  params = jnp.array([1.0, -2.0])
  state = tx.init(params)
  _, state = tx.update(2 * params, state, params)
  info = hgo.diagnose(jnp.array([1.0, 1.0]), state)
  assert np.isnan(info["bound"]) and not bool(info["overshoot"])


def test_alias_state_is_refused():
  tx = hgo.sgd_hd(0.1)
  state = tx.init(jnp.zeros(2))
  with pytest.raises(ValueError, match="diagnose reads the state of hypergradient"):
    hgo.diagnose(jnp.zeros(2), state)
