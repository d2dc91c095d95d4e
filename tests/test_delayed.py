"""``delayed=True``: the rate step applied one step late."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hypergrad_optax as hgo

_ADAM = pytest.mark.standard_promotion  # optax's Adam is not strict-clean

_CURV = np.array([[2.0, 0.25, 1.5], [8.0, 1.0, 0.75]], np.float32)
_START = np.array([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]], np.float32)


def _grad(theta):
  return _CURV * (theta - 1.0)


def _run(tx, steps):
  params = jnp.asarray(_START)
  state = tx.init(params)
  update = jax.jit(tx.update)
  trajectory = []
  for _ in range(steps):
    updates, state = update(_grad(params), state, params)
    params = optax.apply_updates(params, updates)
    trajectory.append((np.asarray(params), state))
  return trajectory


@pytest.mark.parametrize("delayed", [False, True])
def test_sgd_hd_follows_the_hand_computed_rule(delayed):
  # Exact: α_t = α_{t-1} - β h_t, then θ_t = θ_{t-1} - α_t g_t.
  # Delayed: θ_t = θ_{t-1} - ρ_t g_t with the rate chosen at the last step,
  # then ρ_{t+1} = ρ_t - β h_t; h_t = -g_t·g_{t-1} in both.
  alpha, beta, steps = 0.05, 0.002, 6
  theta = _START.astype(np.float64)
  rate, previous = alpha, np.zeros_like(theta)
  expected = []
  for _ in range(steps):
    g = _grad(theta)
    h = -np.sum(g * previous)
    if delayed:
      theta = theta - rate * g
      rate = max(rate - beta * h, 0.0)
    else:
      rate = max(rate - beta * h, 0.0)
      theta = theta - rate * g
    previous = g
    expected.append((theta, rate))
  got = _run(hgo.sgd_hd(alpha, beta, delayed=delayed), steps)
  for (theta_want, rate_want), (theta_got, state) in zip(expected, got):
    np.testing.assert_allclose(theta_got, theta_want, rtol=1e-5, atol=1e-6)
    # The state's rate: the last one used (exact) or the next (delayed).
    np.testing.assert_allclose(state.learning_rate, rate_want, rtol=1e-5)


def test_delayed_lags_the_exact_rate_by_one_step_at_first():
  # Both see the same h_2 (steps 1 and 2 use α_0 in the delayed rule, only
  # step 1 in the exact one), so the delayed rate of step 3 is the exact rate
  # of step 2.
  exact = _run(hgo.sgd_hd(0.05, 0.002), 3)
  late = _run(hgo.sgd_hd(0.05, 0.002, delayed=True), 3)
  np.testing.assert_allclose(late[0][1].learning_rate, 0.05)
  np.testing.assert_allclose(late[1][1].learning_rate,
                             exact[1][1].learning_rate, rtol=1e-6)


@pytest.mark.parametrize("make", [
    pytest.param((lambda b: hgo.sgd_hd(0.1, b, delayed=True),
                  lambda: optax.sgd(0.1)), id="sgd"),
    pytest.param((lambda b: hgo.sgd_hd(0.1, b, momentum=0.9, delayed=True),
                  lambda: optax.sgd(0.1, momentum=0.9)), id="momentum"),
    pytest.param((lambda b: hgo.adam_hd(0.1, b, delayed=True),
                  lambda: optax.adam(0.1)), id="adam", marks=_ADAM),
    pytest.param((lambda b: hgo.hypergradient(optax.adam(0.1), b,
                                              delayed=True),
                  lambda: optax.adam(0.1)), id="wrap-adam", marks=_ADAM),
    pytest.param((lambda b: hgo.hypergradient(
        optax.sgd(0.1), b, horizon=10, delayed=True),
                  lambda: optax.sgd(0.1)), id="wrap-sgd-horizon"),
])
def test_hyper_lr_zero_is_bit_exact(make):
  make_hd, make_base = make
  for (a, _), (b, _) in zip(_run(make_hd(0.0), 8), _run(make_base(), 8)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("make_tx", [
    pytest.param(lambda: hgo.adam_hd(1e-3, 1e-7, delayed=True), id="adam_hd",
                 marks=_ADAM),
    pytest.param(lambda: hgo.sgd_hd(1e-3, 1e-3, delayed=True), id="sgd_hd"),
    pytest.param(lambda: hgo.hypergradient(optax.adam(1e-3), delayed=True),
                 id="wrap-adam", marks=_ADAM),
    pytest.param(lambda: hgo.hypergradient(optax.sgd(1e-3), rule="additive",
                                           delayed=True),
                 id="wrap-sgd-additive"),
])
def test_donated_state_is_updated_in_place(make_tx):
  # The update no longer waits for the rate, so the reads of the old state
  # are ordered leaf by leaf; no array-sized copies.
  tx = make_tx()
  params = {"w": jnp.ones((64, 32)), "b": jnp.ones(32)}

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(
      params, tx.init(params), params).compile().as_text()
  entry = compiled[compiled.index("ENTRY"):]
  array_copies = [line for line in entry.splitlines()
                  if " copy(" in line and "[]" not in line.split("=")[1][:12]]
  assert not array_copies, "\n".join(array_copies)
