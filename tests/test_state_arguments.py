"""Every public argument that reaches the state has its value checked.

Written against issue 13's mutation run, whose survivors were arguments that
reached the state while no test looked at their value: ``initial_scale``, the
wrapper's ``hyper_optimizer``, ``adapt_hyperparams``' extra arguments and
``tangent_dtype``, Adam-HD's recomputed first direction under a stateful
hyper-optimizer, and the library's own tree-structure message. Each reference
here is written from the equations, in numpy, not from the library.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hypergrad_optax as hgo

_ADAM = pytest.mark.standard_promotion  # optax's Adam is not strict-clean

# A diagonal quadratic 0.5 θᵀ diag(A) θ - bᵀθ: g = A θ - b.
_A = np.array([1.0, 3.0, 0.5])
_B = np.array([1.0, -1.0, 0.5])
_THETA0 = np.array([0.3, -0.2, 1.1])


def _grad(theta):
  return _A * theta - _B


def _jgrad(theta):
  return jnp.asarray(_A, theta.dtype) * theta - jnp.asarray(_B, theta.dtype)


def _np_adam(eta, b1=0.9, b2=0.999, eps=1e-8):
  """Adam in numpy: (init, step(grad, state) -> (update, state))."""
  def init(x):
    return (0, np.zeros_like(x), np.zeros_like(x))

  def step(g, state):
    t, m, v = state
    t, m, v = t + 1, b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
    m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
    return -eta * m_hat / (np.sqrt(v_hat) + eps), (t, m, v)

  return init, step


def _run(tx, steps, dtype=jnp.float64, **extra_args):
  theta = jnp.asarray(_THETA0, dtype)
  state = tx.init(theta)
  update = jax.jit(lambda g, s, p: tx.update(g, s, p, **extra_args))
  states, thetas = [], []
  for _ in range(steps):
    updates, state = update(_jgrad(theta), state, theta)
    theta = optax.apply_updates(theta, updates)
    states.append(state)
    thetas.append(np.asarray(theta))
  return states, thetas


# ------------------------------------------------------------ the wrapper


def test_wrapper_initial_scale_is_the_first_factor(x64):
  # ‖θ‖² loss (g = 2θ), inner SGD 0.1: ũ_0 = -0.2 θ_0, θ_1 = (1 - 0.2 s_0)
  # θ_0 and g_1 = 2 θ_1, so cos = -1 and the multiplicative rule gives
  # s_1 = s_0 (1 + β) whatever θ_0. Its steps move θ by 5 % and 6.5 %: the
  # relative step bound (tested by hand in test_relative_step.py) is off.
  del x64
  s0, beta = 0.25, 0.3
  tx = hgo.hypergradient(optax.sgd(0.1), beta, initial_scale=s0,
                         max_relative_step=None)
  theta = jnp.asarray(_THETA0)
  state = tx.init(theta)
  assert float(state.scale) == s0
  updates, state = tx.update(2 * theta, state, theta)
  np.testing.assert_allclose(updates, -s0 * 0.1 * 2 * _THETA0, rtol=1e-14)
  np.testing.assert_allclose(hgo.get_learning_rate(state, 0.1), s0 * 0.1,
                             rtol=1e-14)
  theta = theta + updates
  updates, state = tx.update(2 * theta, state, theta)
  s1 = s0 * (1 + beta)
  np.testing.assert_allclose(float(state.scale), s1, rtol=1e-14)
  np.testing.assert_allclose(updates, -s1 * 0.1 * 2 * (1 - 0.2 * s0) * _THETA0,
                             rtol=1e-14)


@_ADAM
@pytest.mark.parametrize("rule", ["additive", "multiplicative"])
def test_wrapper_hyper_optimizer_adam_on_the_scale(x64, rule):
  """Adam (not SGD) on s: an ignored hyper_optimizer changes every step."""
  del x64
  lr, eta, steps = 0.1, 1e-2, 6
  # Without the relative step bound, which the reference does not model.
  tx = hgo.hypergradient(optax.sgd(lr), 0.5, rule=rule, horizon=1,
                         overshoot_guard=False, max_relative_step=None,
                         hyper_optimizer=optax.adam(eta))
  states, thetas = _run(tx, steps)
  init, step = _np_adam(eta)
  s, hyper, theta, previous = 1.0, init(1.0), _THETA0, np.zeros(3)
  want_s, want_theta = [], []
  for _ in range(steps):
    g = _grad(theta)
    h = g @ previous  # the wrapper's sign: ∂f/∂s = g_t · ũ_{t-1}
    if rule == "multiplicative":
      norm = np.linalg.norm(g) * np.linalg.norm(previous)
      h = s * h / norm if norm > 0 else 0.0
    delta, hyper = step(h, hyper)
    s = max(s + delta, 0.0)
    previous = -lr * g
    theta = theta + s * previous
    want_s.append(s)
    want_theta.append(theta)
  np.testing.assert_allclose([float(x.scale) for x in states], want_s,
                             rtol=1e-10)
  np.testing.assert_allclose(thetas, want_theta, rtol=1e-10)
  assert int(states[-1].hyper_state[0].count) == steps
  assert abs(want_s[-1] - 1.0) > 1e-2  # the scale moved (by ~η per step)


def test_wrapper_max_and_min_scale_clip(x64):
  # SGD 0.01 on the quadratic undershoots (g_t·ũ_{t-1} < 0), so the factor
  # grows by (1 - β cos) > 1 per step; max_scale stops it exactly.
  del x64
  free = [float(s.scale) for s in _run(
      hgo.hypergradient(optax.sgd(0.01), 0.5), 8)[0]]
  assert free[-1] > 1.5
  clipped = [float(s.scale) for s in _run(
      hgo.hypergradient(optax.sgd(0.01), 0.5, max_scale=1.5), 8)[0]]
  np.testing.assert_allclose(clipped, np.minimum(free, 1.5), rtol=1e-14)
  # min_scale: an additive rule with a huge β would turn the step to ascent.
  low = [float(s.scale) for s in _run(hgo.hypergradient(
      optax.sgd(1.0), 100.0, rule="additive", overshoot_guard=False,
      max_relative_step=None, min_scale=0.2), 3)[0]]
  assert low[1] == 0.2


# ------------------------------------------------------------ the aliases


@_ADAM
def test_adam_hd_with_adam_on_the_rate_matches_numpy(x64):
  """Adam-HD's recomputed d_0 is exactly 0 (the count clamp): h_1 = 0 is a
  finite hypergradient, so a stateful hyper-optimizer counts every step."""
  del x64
  alpha0, eta, steps = 0.05, 1e-2, 5
  tx = hgo.adam_hd(alpha0, hyper_optimizer=optax.adam(eta))
  states, thetas = _run(tx, steps)
  adam_init, adam_step = _np_adam(1.0)  # direction d = -update at rate 1
  hyper_init, hyper_step = _np_adam(eta)
  alpha, theta, previous = alpha0, _THETA0, np.zeros(3)
  direction_state, hyper = adam_init(_THETA0), hyper_init(alpha0)
  want_alpha, want_theta = [], []
  for _ in range(steps):
    g = _grad(theta)
    delta, hyper = hyper_step(-g @ previous, hyper)
    alpha = max(alpha + delta, 0.0)
    minus_d, direction_state = adam_step(g, direction_state)
    previous = -minus_d
    theta = theta - alpha * previous
    want_alpha.append(alpha)
    want_theta.append(theta)
  np.testing.assert_allclose([float(s.learning_rate) for s in states],
                             want_alpha, rtol=1e-10)
  np.testing.assert_allclose(thetas, want_theta, rtol=1e-10)
  assert int(states[-1].hyper_state[0].count) == steps
  assert abs(want_alpha[-1] - alpha0) > 1e-2


# ---------------------------------------------------------- the structure

# The library's own words (jax's tree errors say "Dict key mismatch" etc.).
_LIBRARY_MESSAGE = "The gradients' tree structure differs from "


@pytest.mark.parametrize("make_tx", [
    lambda: hgo.sgd_hd(0.1, 0.01),
    lambda: hgo.sgd_hd(0.1, 0.01, momentum=0.9),  # d_{t-1} recomputed
    pytest.param(lambda: hgo.adam_hd(0.1), marks=_ADAM),
    pytest.param(lambda: hgo.adamw_hd(0.1), marks=_ADAM),
    lambda: hgo.hypergradient(optax.sgd(0.1)),
    lambda: hgo.adapt_hyperparams(optax.sgd, ("learning_rate",),
                                  hyperparams=dict(learning_rate=0.1)),
], ids=["sgd_hd", "sgdm_hd", "adam_hd", "adamw_hd", "wrapper", "adapt"])
def test_structure_mismatch_raises_the_library_message(make_tx):
  tx = make_tx()
  params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
  state = tx.init(params)
  grads = {"w": jnp.ones((2, 3)), "bias": jnp.zeros(3)}
  with pytest.raises(ValueError) as info:
    tx.update(grads, state, None)
  message = str(info.value)
  assert message.startswith(_LIBRARY_MESSAGE), message
  assert "'bias'" in message and "'b'" in message


# ----------------------------------------------------- adapt_hyperparams


def _sgd_then_plateau(learning_rate):
  return optax.chain(
      optax.sgd(learning_rate),
      optax.contrib.reduce_on_plateau(factor=0.5, patience=1))


@pytest.mark.standard_promotion  # optax's reduce_on_plateau
def test_adapt_hyperparams_forwards_extra_args():
  """reduce_on_plateau inside needs ``value=``: forwarded, and it acts."""
  tx = hgo.adapt_hyperparams(_sgd_then_plateau, ("learning_rate",), 0.0,
                             hyperparams=dict(learning_rate=0.1))
  reference = _sgd_then_plateau(0.1)
  theta = jnp.asarray(_THETA0, jnp.float32)
  state, ref_state = tx.init(theta), reference.init(theta)
  grads = _jgrad(theta)
  for value in (1.0, 2.0, 3.0, 4.0, 5.0):  # the loss never improves
    value = jnp.asarray(value)
    updates, state = tx.update(grads, state, theta, value=value)
    expected, ref_state = reference.update(grads, ref_state, theta,
                                           value=value)
    # (The adapted rate is exp(log 0.1): equal up to rounding.)
    np.testing.assert_allclose(updates, expected, rtol=1e-6)
  # The plateau did cut the step: 0.1 · 0.5^k with k >= 1.
  plateau = state.inner_state.inner_state[1]
  assert float(plateau.scale) <= 0.5
  np.testing.assert_allclose(updates, -0.1 * float(plateau.scale) * grads,
                             rtol=1e-6)


def test_adapt_hyperparams_tangent_dtype_stores_and_rounds():
  """Tangents kept in bfloat16; h uses the rounded tangent (closed form)."""
  lr, mu = 0.1, 0.6
  recorder = optax.GradientTransformation(
      lambda phi: jax.tree.map(jnp.zeros_like, phi),
      lambda h, state, params=None: (jax.tree.map(jnp.zeros_like, h), h))
  tx = hgo.adapt_hyperparams(
      optax.sgd, ("momentum",), hyper_optimizer=recorder,
      tangent_dtype=jnp.bfloat16,
      hyperparams=dict(learning_rate=lr, momentum=mu))
  theta = jnp.asarray(_THETA0, jnp.float32)
  state = tx.init(theta)
  assert state.tangents["momentum"].dtype == jnp.bfloat16
  grads = []
  for _ in range(3):
    g = _jgrad(theta)
    grads.append(np.asarray(g, np.float64))
    updates, state = tx.update(g, state, theta)
    assert state.tangents["momentum"].dtype == jnp.bfloat16
    theta = optax.apply_updates(theta, updates)
  # SGD with momentum: u_2 = -lr (g_2 + μ g_1), so ∂u_2/∂φ = -lr μ(1-μ) g_1
  # with μ = σ(φ); h_3 = g_3 · ∂u_2/∂φ, the tangent rounded to bfloat16.
  tangent = -lr * mu * (1 - mu) * grads[0]
  rounded = np.asarray(jnp.asarray(tangent, jnp.bfloat16), np.float64)
  # The stored tangent is now ∂u_3/∂φ = -lr μ(1-μ) (g_2 + μ g_1), rounded.
  stored = -lr * mu * (1 - mu) * (grads[1] + mu * grads[0])
  np.testing.assert_allclose(
      np.asarray(state.tangents["momentum"], np.float32),
      np.asarray(jnp.asarray(stored, jnp.bfloat16), np.float32), rtol=0.01)
  h = float(state.hyper_state["momentum"])
  exact, in_bf16 = grads[2] @ tangent, grads[2] @ rounded
  assert abs(exact - in_bf16) > 1e-4 * abs(exact)  # sensitive to rounding
  np.testing.assert_allclose(h, in_bf16, rtol=1e-5)


@pytest.mark.parametrize("kinds", [None, {"learning_rate": "identity"}])
def test_adapt_hyperparams_per_name_rates_by_hand(x64, kinds):
  """hyper_lr as a dict: each name moves with its own β (closed form)."""
  del x64
  lr0, mu0 = 0.1, 0.6
  betas = {"learning_rate": 0.5, "momentum": 2.0}
  tx = hgo.adapt_hyperparams(optax.sgd, ("learning_rate", "momentum"),
                             betas, reparametrization=kinds,
                             hyperparams=dict(learning_rate=lr0, momentum=mu0))
  states, _ = _run(tx, 3)
  identity = kinds is not None
  # Reference: u_t = -lr_t v_t, v_t = g_t + μ_t v_{t-1}; ∂u/∂φ_lr is
  # -lr v_t (log) or -v_t (identity); ∂u/∂φ_μ = -lr μ(1-μ) v_{t-1}.
  to_phi = (lambda x: x) if identity else np.log
  from_phi = (lambda x: x) if identity else np.exp
  dlr = (lambda lr: 1.0) if identity else (lambda lr: lr)
  phi_lr, phi_mu = to_phi(lr0), np.log(mu0 / (1 - mu0))
  theta, v = _THETA0, np.zeros(3)
  t_lr, t_mu = np.zeros(3), np.zeros(3)
  for state in states:
    g = _grad(theta)
    phi_lr -= betas["learning_rate"] * (g @ t_lr)
    phi_mu -= betas["momentum"] * (g @ t_mu)
    lr, mu = from_phi(phi_lr), 1 / (1 + np.exp(-phi_mu))
    t_mu = -lr * mu * (1 - mu) * v
    v = g + mu * v
    t_lr = -dlr(lr) * v
    theta = theta - lr * v
    np.testing.assert_allclose(state.unconstrained["learning_rate"], phi_lr,
                               rtol=1e-12)
    np.testing.assert_allclose(state.unconstrained["momentum"], phi_mu,
                               rtol=1e-12)
    np.testing.assert_allclose(state.inner_state.hyperparams["momentum"], mu,
                               rtol=1e-12)
  assert phi_lr != to_phi(lr0) and phi_mu != np.log(mu0 / (1 - mu0))


# ------------------------------------------------------------- buffers


@_ADAM
@pytest.mark.parametrize("make", [
    lambda: hgo.adamw_hd(0.05, 1e-3, buffer_dtype=jnp.bfloat16),
    lambda: hgo.sgd_hd(0.05, 1e-3, momentum=0.9, nesterov=True,
                       buffer_dtype=jnp.bfloat16),
], ids=["adamw_hd", "sgdn_hd"])
def test_alias_buffer_dtype_is_the_stored_direction_dtype(make):
  states, _ = _run(make(), 2, dtype=jnp.float32)
  for state in states:
    assert state.previous_direction.dtype == jnp.bfloat16
    assert state.learning_rate.dtype == jnp.float32


def test_adapt_hyperparams_stacked_on_the_wrapper_by_hand(x64):
  """hyper_optimizer=hypergradient(sgd(γ), horizon=1) (the one-step rule):
  φ moves by s_t ũ_t, ũ_t = -γ h_t,
  and s follows the wrapper's default rule on its own hypergradient h_t ũ_{t-1}
  (multiplicative, β = 0.1, the 3A guard, s >= 0)."""
  del x64
  lr, mu0, gamma, beta, steps = 0.1, 0.6, 0.5, 0.1, 12
  tx = hgo.adapt_hyperparams(
      optax.sgd, ("momentum",), hyper_optimizer=hgo.hypergradient(
          optax.sgd(gamma), horizon=1),
      hyperparams=dict(learning_rate=lr, momentum=mu0))
  states, _ = _run(tx, steps)
  theta, v, tangent = _THETA0, np.zeros(3), np.zeros(3)
  phi, s, u_prev, h_prev = np.log(mu0 / (1 - mu0)), 1.0, 0.0, 0.0
  for state in states:
    g = _grad(theta)
    h = g @ tangent  # φ's hypergradient: the wrapper's gradient
    hs = h * u_prev  # the scale's hypergradient
    norm = abs(h) * abs(u_prev)
    proposed = s * (1 - beta * (hs / norm if norm > 0 else 0.0))
    bound = abs(h_prev) * abs(u_prev)
    if hs > 3 * bound:
      proposed = min(proposed, s * bound / (bound + hs))
    s = max(proposed, 0.0)
    u_prev, h_prev = -gamma * h, h
    phi = phi + s * u_prev
    mu = 1 / (1 + np.exp(-phi))
    tangent = -lr * mu * (1 - mu) * v
    v = g + mu * v
    theta = theta - lr * v
    np.testing.assert_allclose(state.unconstrained["momentum"], phi,
                               rtol=1e-12)
    np.testing.assert_allclose(state.hyper_state.scale, s, rtol=1e-12)
  assert abs(s - 1.0) > 1e-2 and abs(phi - np.log(mu0 / (1 - mu0))) > 1e-3


# ---------------------------------------------------------------- memory


@_ADAM
def test_recomputed_previous_direction_keeps_no_buffer():
  """Documented memory: heavy-ball SGD-HD and Adam-HD recompute d_{t-1}
  from the direction's state (no buffer); Nesterov and AdamW store it."""
  params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
  for tx in (hgo.sgd_hd(0.1, momentum=0.9), hgo.adam_hd(0.1)):
    state = tx.init(params)
    for _ in range(2):
      _, state = tx.update(params, state, params)
      assert state.previous_direction == ()
  for tx in (hgo.sgd_hd(0.1, momentum=0.9, nesterov=True), hgo.sgd_hd(0.1),
             hgo.adamw_hd(0.1)):
    state = tx.init(params)
    assert jax.tree.map(jnp.shape, state.previous_direction) == {
        "w": (2, 3), "b": (3,)}


# ------------------------------------------------------------ axis_name

_N = 4  # shards of the vmapped "device" axis


@pytest.mark.parametrize("make_tx", [
    lambda **kw: hgo.hypergradient(optax.sgd(0.1), 1.0, rule="additive",
                                   granularity="per-tensor", **kw),
    lambda **kw: hgo.hypergradient(optax.sgd(0.1), **kw),
    lambda **kw: hgo.sgd_hd(0.05, 0.05, momentum=0.5, **kw),
    lambda **kw: hgo.adapt_hyperparams(
        optax.sgd, ("learning_rate", "momentum"), 1.0,
        hyperparams=dict(learning_rate=0.05, momentum=0.5), **kw),
], ids=["wrap-additive-per-tensor", "wrap-default", "sgdm_hd", "adapt"])
def test_axis_name_sums_over_shards_like_one_device(x64, make_tx):
  """Every leaf split in 4 along dim 0 over a vmapped axis: with axis_name
  the dot products are summed over it, so each shard's rate is the
  unsharded run's (a comparison, not a type check)."""
  del x64
  rng = np.random.default_rng(0)
  curvature = {"w": rng.uniform(0.5, 3, (8, 3)), "b": rng.uniform(0.5, 3, 8)}
  target = {"w": rng.normal(size=(8, 3)), "b": rng.normal(size=8)}
  grad = lambda p, c, t: jax.tree.map(  # pylint: disable=unnecessary-lambda-assignment
      lambda p, c, t: c * (p - t), p, c, t)
  params = jax.tree.map(jnp.zeros_like, target)

  def run(tx, params, curvature, target, state):
    for _ in range(4):
      updates, state = tx.update(grad(params, curvature, target), state,
                                 params)
      params = optax.apply_updates(params, updates)
    return params, state

  tx = make_tx()
  want_params, want_state = run(tx, params, curvature, target,
                                tx.init(params))
  split = lambda a: a.reshape(_N, a.shape[0] // _N, *a.shape[1:])  # pylint: disable=unnecessary-lambda-assignment
  local_tx = make_tx(axis_name="x")
  state = jax.tree.map(
      lambda a: jnp.broadcast_to(a, (_N,)) if a.ndim == 0 else split(a),
      local_tx.init(params))
  got_params, got_state = jax.vmap(
      lambda *args: run(local_tx, *args), axis_name="x")(
          *jax.tree.map(split, (params, curvature, target)), state)
  for a, b in zip(jax.tree.leaves(got_params), jax.tree.leaves(want_params)):
    np.testing.assert_allclose(a.reshape(b.shape), b, rtol=1e-12)
  rate = lambda s: (s.unconstrained if isinstance(  # pylint: disable=unnecessary-lambda-assignment
      s, hgo.AdaptHyperparamsState) else s[1])
  for a, b in zip(jax.tree.leaves(rate(got_state)),
                  jax.tree.leaves(rate(want_state))):
    np.testing.assert_allclose(a, np.broadcast_to(b, a.shape), rtol=1e-12)
    assert not np.allclose(b, jax.tree.leaves(rate(tx.init(params)))[0])
