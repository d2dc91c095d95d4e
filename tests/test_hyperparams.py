"""adapt_hyperparams: hypergradients of any hyperparameter by forward mode."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hypergrad_optax as hgo

_ADAM = pytest.mark.standard_promotion  # optax's Adam is not strict-clean


def _loss(params):
  w, b = params["w"], params["b"]
  return (jnp.sum(jnp.log(jnp.cosh(w - 1))) + jnp.sum(jnp.sin(b) + b**2)
          + jnp.sum(w[0] * b))


def _params(dtype=jnp.float64):
  return {"w": jnp.asarray([[0.5, -1.0, 2.0], [0.0, 1.5, -0.5]], dtype),
          "b": jnp.asarray([1.0, -2.0, 0.3], dtype)}


def _recorder():
  """A hyper-optimizer that never moves φ and keeps the last hypergradient."""
  return optax.GradientTransformation(
      lambda phi: jax.tree.map(jnp.zeros_like, phi),
      lambda h, state, params=None: (jax.tree.map(jnp.zeros_like, h), h))


def _dvalue_dphi(name, value):
  kind = hgo.default_reparametrization(name)
  return {"logit": value * (1 - value), "log": value}[kind]


CASES = [
    pytest.param(optax.adam, dict(learning_rate=0.1, b1=0.8, b2=0.95,
                                  eps=1e-2), ("b1", "b2", "eps",
                                              "learning_rate"),
                 id="adam", marks=_ADAM),
    pytest.param(optax.sgd, dict(learning_rate=0.1, momentum=0.6),
                 ("momentum", "learning_rate"), id="sgd-momentum"),
    pytest.param(optax.adamw, dict(learning_rate=0.1, weight_decay=0.3),
                 ("weight_decay",), id="adamw", marks=_ADAM),
    pytest.param(optax.rmsprop, dict(learning_rate=0.01, decay=0.7),
                 ("decay",), id="rmsprop"),
]


@pytest.mark.parametrize("factory,hyperparams,names", CASES)
def test_one_step_hypergradient_is_the_derivative_of_the_loss(
    x64, factory, hyperparams, names):
  """g_{t+1} · ∂u_t/∂λ == d/dλ f(θ_{t-1} + u_t(λ)): jax.grad and finite diff."""
  del x64
  tx = hgo.adapt_hyperparams(factory, names, hyperparams=hyperparams,
                             hyper_optimizer=_recorder())
  params = _params()
  state = tx.init(params)
  step = jax.jit(lambda p, s: tx.update(jax.grad(_loss)(p), s, p))
  for _ in range(3):
    before, state_before = params, state
    updates, state = step(params, state)
    params = optax.apply_updates(params, updates)
  _, state = step(params, state)
  inner = optax.inject_hyperparams(factory)(**hyperparams)

  for name in names:
    def loss_after_step(value, name=name):
      values = dict(state_before.inner_state.hyperparams)
      values[name] = value
      inner_state = state_before.inner_state._replace(hyperparams=values)
      updates, _ = inner.update(jax.grad(_loss)(before), inner_state, before)
      return _loss(optax.apply_updates(before, updates))

    value = state_before.inner_state.hyperparams[name]
    by_grad = jax.grad(loss_after_step)(value)
    delta = 1e-6 * value
    by_difference = (loss_after_step(value + delta)
                     - loss_after_step(value - delta)) / (2 * delta)
    ours = state.hyper_state[name] / _dvalue_dphi(name, value)
    np.testing.assert_allclose(ours, by_grad, rtol=1e-9)
    np.testing.assert_allclose(ours, by_difference, rtol=1e-5)
    assert abs(float(by_grad)) > 1e-6  # not a trivially zero derivative


def test_default_hyper_step_is_sgd_on_the_unconstrained_value(x64):
  del x64
  make = lambda hyper_optimizer: hgo.adapt_hyperparams(  # pylint: disable=g-long-lambda
      optax.sgd, ("momentum",), 0.3, hyper_optimizer=hyper_optimizer,
      hyperparams=dict(learning_rate=0.1, momentum=0.6))
  recorded, stepped = make(_recorder()), make(None)
  params = _params()
  s_rec, s_sgd = recorded.init(params), stepped.init(params)
  # u_1 does not depend on the momentum (zero trace): h_2 = 0, h_3 != 0.
  for _ in range(3):
    grads = jax.grad(_loss)(params)
    _, s_rec = recorded.update(grads, s_rec, params)
    updates, s_sgd = stepped.update(grads, s_sgd, params)
    params = optax.apply_updates(params, updates)
  phi0 = np.log(0.6 / 0.4)
  h = float(s_rec.hyper_state["momentum"])
  assert h != 0
  np.testing.assert_allclose(s_sgd.unconstrained["momentum"], phi0 - 0.3 * h,
                             rtol=1e-12)
  np.testing.assert_allclose(s_sgd.inner_state.hyperparams["momentum"],
                             1 / (1 + np.exp(-(phi0 - 0.3 * h))), rtol=1e-12)


@_ADAM
def test_values_stay_valid_under_huge_steps():
  tx = hgo.adapt_hyperparams(
      optax.adam, ("b1", "b2", "eps"), hyper_lr={"b1": 1e6, "b2": 1e6,
                                                  "eps": 1e6},
      hyperparams=dict(learning_rate=0.1))
  params = _params(jnp.float32)
  state = tx.init(params)
  step = jax.jit(lambda p, s: tx.update(jax.grad(_loss)(p), s, p))
  seen = []
  for _ in range(30):
    updates, state = step(params, state)
    params = optax.apply_updates(params, updates)
    seen.append({k: float(v) for k, v in state.inner_state.hyperparams.items()})
  for values in seen:
    assert 0 < values["b1"] < 1 and 0 < values["b2"] < 1, values
    assert values["eps"] > 0, values
  # Such steps wreck training (the loss overflows), but the non-finite guard
  # keeps φ finite and the reparametrisation keeps every value valid.
  assert all(np.isfinite(float(x)) for x in state.unconstrained.values())
  assert len({v["b1"] for v in seen}) > 2  # it did move


def test_jit_without_retrace_and_scan_stable_state():
  tx = hgo.adapt_hyperparams(
      optax.inject_hyperparams(optax.sgd)(learning_rate=0.05, momentum=0.5),
      ("momentum", "learning_rate"), hyper_optimizer=optax.sgd(1e-2))
  params = _params(jnp.float32)
  traces = []

  def body(carry, _):
    traces.append(None)
    p, s = carry
    updates, s = tx.update(jax.grad(_loss)(p), s, p)
    return (optax.apply_updates(p, updates), s), _loss(p)

  initial = tx.init(params)
  run = jax.jit(lambda c: jax.lax.scan(body, c, length=50))
  (params, state), losses = run((params, initial))
  (_, state2), _ = run((params, state))
  assert len(traces) == 1
  assert jax.tree.structure(state2) == jax.tree.structure(initial)
  assert losses[-1] < losses[0]
  assert float(state.inner_state.hyperparams["momentum"]) != 0.5


def test_stacked_hyper_optimizer_adapts_its_own_rate():
  """A hypergradient optimizer as the hyper-optimizer of the φ dict."""
  hyper = hgo.hypergradient(optax.sgd(1e-2))
  tx = hgo.adapt_hyperparams(optax.sgd, ("momentum",), hyper_optimizer=hyper,
                             hyperparams=dict(learning_rate=0.05,
                                              momentum=0.5))
  params = _params(jnp.float32)
  state = tx.init(params)
  step = jax.jit(lambda p, s: tx.update(jax.grad(_loss)(p), s, p))
  for _ in range(20):
    updates, state = step(params, state)
    params = optax.apply_updates(params, updates)
  assert isinstance(state.hyper_state, hgo.ScaleByHypergradientState)
  assert float(state.hyper_state.scale) != 1.0


def test_errors():
  params = _params(jnp.float32)
  with pytest.raises(ValueError, match="not a numeric hyperparameter"):
    hgo.adapt_hyperparams(optax.sgd, ("b1",), hyperparams=dict(
        learning_rate=0.1)).init(params)
  with pytest.raises(ValueError, match="schedule"):
    hgo.adapt_hyperparams(optax.sgd, ("learning_rate",), hyperparams=dict(
        learning_rate=optax.constant_schedule(0.1))).init(params)
  with pytest.raises(ValueError, match=r"\(0, 1\)"):
    hgo.adapt_hyperparams(optax.sgd, ("momentum",), hyperparams=dict(
        learning_rate=0.1, momentum=0.0)).init(params)
  with pytest.raises(TypeError, match="inject_hyperparams"):
    hgo.adapt_hyperparams(optax.sgd(0.1), ("learning_rate",)).init(params)
  with pytest.raises(ValueError, match="distinct"):
    hgo.adapt_hyperparams(optax.sgd, ("momentum", "momentum"))
  with pytest.raises(ValueError, match="reparametrization"):
    hgo.adapt_hyperparams(optax.sgd, ("momentum",),
                          reparametrization={"momentum": "tanh"},
                          hyperparams=dict(learning_rate=0.1, momentum=0.5))
