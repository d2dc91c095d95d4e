"""Any Optax transform as the hyper-optimizer, and stacking (issue 4).

Every trajectory is compared with a numpy transcription of the equations:
level ``k`` of a stack receives ``x_k`` as its gradient (``x_0 = g_t``), hands
``x_{k+1} = -x_k · x_k^{prev}`` (its hypergradient) to level ``k + 1``, and
moves its rate by the update that level returns.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hypergrad_optax as hgo

_A = np.array([1.0, 2.0, 3.0])
_B = np.array([1.0, -1.0, 0.5])


def _grad(theta):
  """Gradient of the quadratic 0.5 θᵀ diag(A) θ - bᵀθ."""
  return _A * theta - _B


def _loss(theta):
  return 0.5 * jnp.sum(jnp.asarray(_A, theta.dtype) * theta**2) - jnp.sum(
      jnp.asarray(_B, theta.dtype) * theta)


def _run(tx, steps, dtype=jnp.float64):
  """Runs ``tx`` jitted on the quadratic; returns the states and trace count."""
  traces = []

  @jax.jit
  def step(theta, state):
    traces.append(None)  # Runs once per trace, not per call.
    updates, state = tx.update(jax.grad(_loss)(theta), state, theta)
    return optax.apply_updates(theta, updates), state

  theta = jnp.zeros(3, dtype)
  state = tx.init(theta)
  states = []
  for _ in range(steps):
    theta, state = step(theta, state)
    states.append(state)
  return states, len(traces)


def _stack_reference(rates, top_lr, steps):
  """Rates of an ``sgd_hd`` stack (all ``min_rate=0``) after each step.

  ``rates[0]`` is the learning rate α, ``rates[k]`` the rate of level ``k``
  (the step size of level ``k - 1``'s rate); ``top_lr`` the top level's fixed
  hyper learning rate.
  """
  levels = len(rates)
  rates = list(rates)
  previous = [0.0 * _B] + [0.0] * (levels - 1)
  theta = np.zeros(3)
  trajectory = []
  for _ in range(steps):
    x = [_grad(theta)]
    for k in range(levels):
      x.append(-np.sum(x[k] * previous[k]))
    rates[-1] = max(rates[-1] - top_lr * x[levels], 0.0)
    for k in range(levels - 2, -1, -1):
      rates[k] = max(rates[k] - rates[k + 1] * x[k + 1], 0.0)
    previous = x[:levels]
    theta = theta - rates[0] * x[0]
    trajectory.append(list(rates))
  return np.array(trajectory)


def _stacked_sgd_hd(rates, top_lr):
  """``sgd_hd(rates[0], hyper_optimizer=sgd_hd(rates[1], ...))``."""
  tx = None
  for k in range(len(rates) - 1, -1, -1):
    hyper_lr = top_lr if tx is None else 0.0  # Unused below the top.
    tx = hgo.sgd_hd(rates[k], hyper_lr, hyper_optimizer=tx)
  return tx


def _level_rates(state, levels):
  """Each level's learning rate, outermost first."""
  out = []
  for _ in range(levels):
    out.append(float(state.learning_rate))
    state = state.hyper_state
  return out


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_stack_of_sgd_hd_matches_reference(x64, levels):
  del x64
  rates, top_lr, steps = [0.1, 0.01, 1e-3][:levels], 1e-3, 6
  states, traces = _run(_stacked_sgd_hd(rates, top_lr), steps)
  got = np.array([_level_rates(s, levels) for s in states])
  want = _stack_reference(rates, top_lr, steps)
  np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
  assert traces == 1
  # The test can fail: every level's rate actually moves.
  moved = np.abs(want[-1] - np.array(rates)) / np.array(rates)
  assert np.all(moved > 1e-4), moved


def test_wrapper_as_second_level_matches_reference(x64):
  """``hypergradient(optax.sgd(β0))`` adapts β by a factor s: β_t = s_t β0
  (with the paper's one-step hypergradient, which the reference transcribes)."""
  del x64
  alpha0, beta0, gamma, steps = 0.1, 0.01, 50.0, 6
  hyper = hgo.hypergradient(optax.sgd(beta0), gamma, rule="additive",
                            overshoot_guard=False, horizon=1,
                            max_relative_step=None)
  states, traces = _run(hgo.sgd_hd(alpha0, hyper_optimizer=hyper), steps)
  alpha, s, previous_g, previous_u = alpha0, 1.0, 0.0 * _B, 0.0
  theta, want = np.zeros(3), []
  for _ in range(steps):
    g = _grad(theta)
    x1 = -np.sum(g * previous_g)  # α's hypergradient, the wrapper's gradient
    s = max(s - gamma * x1 * previous_u, 0.0)  # its hypergradient: x1 · ũ
    previous_u = -beta0 * x1  # optax.sgd's unscaled update ũ
    alpha = max(alpha + s * previous_u, 0.0)
    previous_g, theta = g, theta - alpha * g
    want.append([alpha, s])
  got = [[float(st.learning_rate), float(st.hyper_state.scale)]
         for st in states]
  np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
  assert traces == 1
  assert abs(want[-1][1] - 1.0) > 1e-3  # the scale on β did move


@pytest.mark.parametrize("granularity", ["global", "per-tensor", "per-element"])
@pytest.mark.parametrize("rule", ["additive", "multiplicative"])
@pytest.mark.parametrize("wrapper", [False, True])
def test_sgd_hyper_optimizer_is_the_default_rule(rule, granularity, wrapper):
  """``optax.sgd(β)`` fed the rule-dependent hypergradient is the rule (the
  wrapper's, ungated: a hyper-optimizer is not gated by default, and the
  gate's log step lengthens the rule's climbs here)."""
  target = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
  loss = lambda p: optax.tree.norm(optax.tree.sub(p, target), squared=True)

  def make(hyper_optimizer):
    if wrapper:
      return hgo.hypergradient(optax.sgd(0.05), 0.05, rule=rule,
                               granularity=granularity,
                               hyper_optimizer=hyper_optimizer,
                               noise_gate=None)
    return hgo.sgd_hd(0.05, 0.01, momentum=0.5, rule=rule,
                      granularity=granularity, hyper_optimizer=hyper_optimizer)

  def rates(tx):
    params, state = optax.tree.zeros_like(target), None
    state = tx.init(params)
    step = jax.jit(lambda p, s: tx.update(jax.grad(loss)(p), s, p))
    for _ in range(8):
      updates, state = step(params, state)
      params = optax.apply_updates(params, updates)
    return state[1]

  default = rates(make(None))
  by_sgd = rates(make(optax.sgd(0.05 if wrapper else 0.01)))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5),
               default, by_sgd)
  initial = 0.05 if not wrapper else 1.0
  assert any(np.any(np.abs(np.asarray(r) - initial) > 1e-3)
             for r in jax.tree.leaves(default))


@pytest.mark.standard_promotion
@pytest.mark.parametrize("granularity", ["global", "per-tensor", "per-element"])
def test_adam_on_the_rate_matches_reference(x64, granularity):
  """Adam on α (Chandra et al.): α_t = α_{t-1} - η m̂/(√v̂ + ε), per rate."""
  del x64
  alpha0, eta, steps = 0.1, 0.01, 6
  tx = hgo.sgd_hd(alpha0, granularity=granularity,
                  hyper_optimizer=optax.adam(eta))
  states, traces = _run(tx, steps)
  alpha, m, v = np.full(3, alpha0), np.zeros(3), np.zeros(3)
  previous_g, theta, want = 0.0 * _B, np.zeros(3), []
  for t in range(1, steps + 1):
    g = _grad(theta)
    h = -g * previous_g  # per-element; summed below when not per-element
    if granularity != "per-element":
      h = np.full(3, h.sum())
    m = 0.9 * m + 0.1 * h
    v = 0.999 * v + 0.001 * h**2
    step = eta * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
    alpha = np.maximum(alpha - step, 0.0)
    previous_g, theta = g, theta - alpha * g
    want.append(alpha.copy())
  got = np.array([np.broadcast_to(s.learning_rate, (3,)) for s in states])
  np.testing.assert_allclose(got, want, rtol=1e-10, atol=0)
  assert traces == 1
  assert isinstance(states[-1].hyper_state[0], optax.ScaleByAdamState)


def test_non_finite_hypergradient_skips_the_hyper_step():
  tx = _stacked_sgd_hd([0.1, 0.01], 1e-3)
  theta = jnp.zeros(3)
  state = tx.init(theta)
  for grads in (jnp.ones(3), 2 * jnp.ones(3)):
    _, state = tx.update(grads, state, theta)
  _, after = tx.update(jnp.array([1.0, jnp.nan, 1.0]), state, theta)
  assert float(after.learning_rate) == float(state.learning_rate)
  jax.tree.map(np.testing.assert_array_equal, after.hyper_state,
               state.hyper_state)
  assert np.isfinite(float(after.hyper_state.learning_rate))


def test_state_structure_is_stable_under_scan():
  # Without the relative step bound, under which a minimum at θ = 0 is
  # approached by at most 10 % of the norm per step (0.9^20 in 20 steps).
  tx = hgo.hypergradient(optax.sgd(0.1), hyper_optimizer=_stacked_sgd_hd(
      [0.1, 0.01], 1e-3), granularity="per-tensor", max_relative_step=None)
  params = {"a": jnp.ones(2), "b": jnp.ones((2, 2))}
  loss = lambda p: sum(jnp.sum(x**2) for x in jax.tree.leaves(p))

  def body(carry, _):
    p, s = carry
    updates, s = tx.update(jax.grad(loss)(p), s, p)
    return (optax.apply_updates(p, updates), s), loss(p)

  initial = tx.init(params)
  (params, state), losses = jax.lax.scan(body, (params, initial), length=20)
  assert losses[-1] < 1e-3 * losses[0]
  assert jax.tree.structure(state) == jax.tree.structure(initial)


def test_hyper_state_is_empty_by_default_and_read_outermost():
  state = hgo.sgd_hd(0.1).init(jnp.zeros(2))
  assert state.hyper_state == ()
  assert state._fields[-1] == "hyper_state"
  stacked = _stacked_sgd_hd([0.1, 0.01, 1e-3], 1e-3).init(jnp.zeros(2))
  assert float(hgo.get_learning_rate(stacked)) == pytest.approx(0.1)


def test_hyper_optimizer_must_be_a_transform():
  with pytest.raises(TypeError, match="hyper_optimizer"):
    hgo.adam_hd(hyper_optimizer=1e-3)
  with pytest.raises(TypeError, match="hyper_optimizer"):
    hgo.hypergradient(optax.sgd(0.1), hyper_optimizer=optax.sgd)
