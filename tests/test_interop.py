"""Interop with Optax combinators, Flax, jit; and reading the adapted rate."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax._src import test_utils
import pytest

import hypergrad_optax as hgo

_ADAM = pytest.mark.standard_promotion  # optax's Adam is not strict-clean

_PARAMS = {"w": jnp.array([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]]),
           "b": jnp.array([0.1, -0.2, 0.3])}


def _loss(params):
  return sum(jnp.sum(jnp.square(p - 1.0) * (1.0 + i))
             for i, p in enumerate(jax.tree.leaves(params)))


def _grads(params):
  return jax.grad(_loss)(params)


def _steps(tx, n, params=_PARAMS, **extra_args):
  state = tx.init(params)
  update = jax.jit(functools.partial(tx.update, **extra_args))
  for _ in range(n):
    updates, state = update(_grads(params), state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


_OPTIMIZERS = [
    pytest.param(lambda: hgo.hypergradient(optax.sgd(0.1)), id="wrap-sgd"),
    pytest.param(lambda: hgo.hypergradient(optax.adam(0.1)), id="wrap-adam",
                 marks=_ADAM),
    pytest.param(lambda: hgo.hypergradient(
        optax.sgd(0.1), max_relative_step=(0.01, 0.02)),
                 id="wrap-sgd-two-level-bound"),
    pytest.param(lambda: hgo.sgd_hd(0.05, 1e-3), id="sgd_hd"),
    pytest.param(lambda: hgo.sgd_hd(0.05, 1e-3, momentum=0.9), id="sgdm_hd"),
    pytest.param(lambda: hgo.adam_hd(0.05, 1e-3, weight_decay=0.01),
                 id="adam_hd", marks=_ADAM),
    pytest.param(lambda: hgo.adamw_hd(0.05, 1e-3), id="adamw_hd",
                 marks=_ADAM),
]


# --------------------------------------------------------- optax combinators


def test_chain_around_alias_equals_manual_clipping():
  clip = optax.clip_by_global_norm(1.0)
  chained = optax.chain(clip, hgo.sgd_hd(0.05, 0.01, momentum=0.9))
  params, state = _PARAMS, chained.init(_PARAMS)
  alias = hgo.sgd_hd(0.05, 0.01, momentum=0.9)
  manual_params, manual_state = _PARAMS, alias.init(_PARAMS)
  for _ in range(4):
    updates, state = chained.update(_grads(params), state, params)
    params = optax.apply_updates(params, updates)
    clipped, _ = clip.update(_grads(manual_params), clip.init(None))
    updates, manual_state = alias.update(clipped, manual_state, manual_params)
    manual_params = optax.apply_updates(manual_params, updates)
  _assert_trees_equal(params, manual_params)
  _assert_trees_equal(state[1], manual_state)


def _np_wrapper(inner_update, steps, beta=0.1):
  """The wrapper's one-step rule (horizon=1, no relative step bound) in
  numpy: multiplicative, the 3A guard, s >= 0.

  ``inner_update(g, t)`` is the inner optimizer's update ũ_t. Returns the
  final parameters (as a dict) and the scales.
  """
  theta = {k: np.asarray(v, np.float64) for k, v in _PARAMS.items()}
  keys = sorted(theta)  # jax's leaf order: the loss weighs leaf i by 1 + i
  s, previous, previous_norm, scales = 1.0, None, 0.0, []
  for t in range(steps):
    g = {k: 2 * (1 + i) * (theta[k] - 1) for i, k in enumerate(keys)}
    flat = np.concatenate([g[k].ravel() for k in keys])
    if previous is None:
      h, prev_norm = 0.0, 0.0
    else:
      h, prev_norm = flat @ previous, np.linalg.norm(previous)
    norm = np.linalg.norm(flat) * prev_norm
    proposed = s * (1 - beta * (h / norm if norm > 0 else 0.0))
    bound = previous_norm * prev_norm
    if h > 3 * bound:
      proposed = min(proposed, s * bound / (bound + h))
    s = max(proposed, 0.0)
    u = inner_update(flat, t)
    offset = 0
    for k in keys:
      n = theta[k].size
      theta[k] = theta[k] + s * u[offset:offset + n].reshape(theta[k].shape)
      offset += n
    previous, previous_norm = u, np.linalg.norm(flat)
    scales.append(s)
  return theta, scales


def _assert_close_to(params, state, reference, rtol=2e-5):
  theta, scales = reference
  np.testing.assert_allclose(float(state.scale), scales[-1], rtol=rtol)
  for k, v in theta.items():
    np.testing.assert_allclose(params[k], v, rtol=rtol, atol=1e-6)
  assert abs(scales[-1] - 1.0) > 1e-2  # the scale did move


def test_wrapper_around_chain_matches_numpy():
  inner = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.05))
  params, state = _steps(
      hgo.hypergradient(inner, horizon=1, max_relative_step=None), 5)
  assert isinstance(state.inner_state, tuple) and len(state.inner_state) == 2
  clipped_sgd = lambda g, t: -0.05 * g / max(np.linalg.norm(g), 1.0)  # pylint: disable=unnecessary-lambda-assignment
  _assert_close_to(params, state, _np_wrapper(clipped_sgd, 5))


@pytest.mark.parametrize("factory,kwargs,changed", [
    (functools.partial(hgo.hypergradient, optax.sgd(0.05)),
     {"hyper_lr": 0.1}, "hyper_lr"),
    (hgo.sgd_hd, {"learning_rate": 0.05, "hyper_lr": 0.01, "momentum": 0.9},
     "hyper_lr"),
    pytest.param(hgo.adam_hd, {"learning_rate": 0.05, "hyper_lr": 1e-3},
                 "hyper_lr", marks=_ADAM),
])
def test_inject_hyperparams_around(factory, kwargs, changed):
  injected = optax.inject_hyperparams(factory)(**kwargs)
  # Same numbers as the plain construction. (Adam differs by ~1e-5: optax
  # computes 1 - b2 in float64 from a Python b2 but from float32 once
  # injected, and 1 - b2 is ill-conditioned.)
  rtol = 1e-4 if factory is hgo.adam_hd else 1e-6
  p1, s1 = _steps(injected, 3)
  p2, s2 = _steps(factory(**kwargs), 3)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
    np.testing.assert_allclose(a, b, rtol=rtol)
  np.testing.assert_allclose(hgo.get_learning_rate(s1, 0.05),
                             hgo.get_learning_rate(s2, 0.05), rtol=rtol)

  # Changing the hyperparameter in the state takes effect, no recompile.
  @jax.jit
  def step(params, state):
    updates, state = injected.update(_grads(params), state, params)
    return optax.apply_updates(params, updates), state

  params, state = _PARAMS, injected.init(_PARAMS)
  params, state = step(params, state)
  params, state = step(params, state)
  state.hyperparams[changed] = jnp.zeros_like(state.hyperparams[changed])
  with test_utils.log_compilations() as logs:
    frozen_params, frozen = step(params, state)
    frozen_params, frozen = step(frozen_params, frozen)
  assert not logs, "changing an injected hyper_lr recompiled"
  rate_before = hgo.get_learning_rate(state, 0.05)
  np.testing.assert_array_equal(hgo.get_learning_rate(frozen, 0.05),
                                rate_before)


@pytest.mark.standard_promotion  # optax's MultiSteps divides float by int32
@pytest.mark.parametrize("make_tx", _OPTIMIZERS)
def test_multisteps_first_update_is_zero(make_tx):
  tx = optax.MultiSteps(make_tx(), every_k_schedule=3)
  state = tx.init(_PARAMS)
  updates, state = jax.jit(tx.update)(_grads(_PARAMS), state, _PARAMS)
  for u in jax.tree.leaves(updates):
    np.testing.assert_array_equal(u, 0.0)
  # The parameters stay put between real steps, so the mean of 3 equal
  # gradients is the gradient: 6 mini-steps are 2 steps of the optimizer.
  params, state = _steps(tx, 6)
  expected, expected_state = _steps(make_tx(), 2)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  np.testing.assert_allclose(hgo.get_learning_rate(state, 0.1),
                             hgo.get_learning_rate(expected_state, 0.1),
                             rtol=1e-6)
  assert _loss(params) < _loss(_PARAMS)


@pytest.mark.parametrize("make_tx", _OPTIMIZERS)
def test_apply_if_finite_skips_nan_step(make_tx):
  tx = optax.apply_if_finite(make_tx(), max_consecutive_errors=3)
  state = tx.init(_PARAMS)
  update = jax.jit(tx.update)
  updates, state = update(_grads(_PARAMS), state, _PARAMS)
  params = optax.apply_updates(_PARAMS, updates)
  bad = jax.tree.map(lambda g: g.at[0].set(jnp.nan), _grads(params))
  updates, skipped = update(bad, state, params)
  for u in jax.tree.leaves(updates):
    np.testing.assert_array_equal(u, 0.0)
  _assert_trees_equal(skipped.inner_state, state.inner_state)
  updates, state = update(_grads(params), skipped, params)
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


def test_schedule_inside_inner_optimizer():
  schedule = optax.exponential_decay(0.1, transition_steps=1, decay_rate=0.5)
  # β = 0 follows the schedule exactly; β > 0 adapts on top of it.
  fixed, _ = _steps(hgo.hypergradient(optax.sgd(schedule), 0.0), 4)
  reference, _ = _steps(optax.sgd(schedule), 4)
  _assert_trees_equal(fixed, reference)
  params, state = _steps(hgo.hypergradient(
      optax.sgd(schedule), horizon=1, max_relative_step=None), 4)
  _assert_close_to(params, state, _np_wrapper(
      lambda g, t: -0.1 * 0.5 ** t * g, 4))
  np.testing.assert_allclose(
      hgo.get_learning_rate(state, base_learning_rate=schedule),
      float(state.scale) * schedule(3), rtol=1e-6)


@pytest.mark.parametrize("make_tx", _OPTIMIZERS)
def test_tree_map_params(make_tx):
  tx = make_tx()
  _, state = _steps(tx, 2)
  doubled = optax.tree_utils.tree_map_params(tx, lambda p: 2 * p, state)
  assert jax.tree.structure(doubled) == jax.tree.structure(state)
  # Parameter-shaped buffers are mapped; the count and scalar rate are not.
  np.testing.assert_array_equal(doubled.count, state.count)
  np.testing.assert_array_equal(doubled[1], state[1])
  mapped = [(a, b) for a, b in zip(jax.tree.leaves(doubled),
                                   jax.tree.leaves(state))
            if not np.array_equal(a, b)]
  assert mapped and all(np.array_equal(a, 2 * b) for a, b in mapped)


# ------------------------------------------------------------------- flax


@_ADAM
@pytest.mark.parametrize("make_tx", [
    lambda: hgo.hypergradient(optax.adam(0.05)),
    lambda: hgo.adam_hd(0.05, 1e-3),
], ids=["wrapper", "adam_hd"])
def test_flax_nnx_optimizer(make_tx):
  from flax import nnx  # pylint: disable=g-import-not-at-top
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, make_tx(), wrt=nnx.Param)
  x = jnp.ones((4, 3))

  def loss_fn(model):
    return jnp.mean(jnp.square(model(x) - 1.0))

  @nnx.jit
  def train_step(model, optimizer):
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads, value=loss)
    return loss

  losses = [float(train_step(model, optimizer)) for _ in range(20)]
  assert losses[-1] < 0.5 * losses[0]
  rate = hgo.get_learning_rate(optimizer.opt_state, 0.05)
  assert np.isfinite(float(rate)) and float(rate) != 0.05


@_ADAM
def test_flax_train_state():
  from flax.training import train_state  # pylint: disable=g-import-not-at-top
  state = train_state.TrainState.create(
      apply_fn=None, params=_PARAMS, tx=hgo.adam_hd(0.05, 1e-3))
  step = jax.jit(lambda s: s.apply_gradients(grads=_grads(s.params)))
  for _ in range(10):
    state = step(state)
  assert _loss(state.params) < _loss(_PARAMS)
  assert float(optax.tree_utils.tree_get(state.opt_state,
                                         "learning_rate")) != 0.05


# ------------------------------------------------------------- extra args


def _needs_scale():
  """An inner transform that requires an extra argument ``scale_by``."""
  def update_fn(updates, state, params=None, *, scale_by, **extra):
    del params, extra
    return jax.tree.map(lambda g: -scale_by * g, updates), state
  return optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(),
                                               update_fn)


def test_extra_args_forwarded_to_inner():
  tx = hgo.hypergradient(_needs_scale(), 0.0)
  state = tx.init(_PARAMS)
  g = _grads(_PARAMS)
  updates, _ = tx.update(g, state, _PARAMS, scale_by=jnp.asarray(0.25),
                         unexpected_extra_arg=1)
  _assert_trees_equal(updates, jax.tree.map(lambda x: -0.25 * x, g))
  with pytest.raises(TypeError, match="scale_by"):
    tx.update(g, state, _PARAMS)


@pytest.mark.parametrize("make_tx", _OPTIMIZERS)
def test_unknown_extra_args_and_no_retrace(make_tx):
  tx = make_tx()

  @jax.jit
  def step(params, state):
    value, grads = jax.value_and_grad(_loss)(params)
    updates, state = tx.update(grads, state, params, value=value,
                               unexpected_extra_args_your_optimizer=1)
    return optax.apply_updates(params, updates), state

  params, state = step(_PARAMS, tx.init(_PARAMS))
  with test_utils.log_compilations() as logs:
    params, state = step(params, state)
    step(params, state)
  assert not logs, "the optimizer recompiles on the second call"


@pytest.mark.parametrize("make_tx", _OPTIMIZERS)
def test_init_on_shape_dtype_structs(make_tx):
  tx = make_tx()
  abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype),
                          _PARAMS)
  concrete = tx.init(_PARAMS)
  for shapes in (tx.init(abstract), jax.eval_shape(tx.init, _PARAMS),
                 jax.eval_shape(tx.init, abstract)):
    assert jax.tree.structure(shapes) == jax.tree.structure(concrete)
    for a, b in zip(jax.tree.leaves(shapes), jax.tree.leaves(concrete)):
      assert (a.shape, a.dtype) == (b.shape, b.dtype)


# ---------------------------------------------------------------- logging


@pytest.mark.parametrize("granularity", ["global", "per-tensor",
                                         "per-element"])
@pytest.mark.parametrize("make_alias", [
    lambda **kw: hgo.sgd_hd(0.05, 0.01, **kw),
    lambda **kw: hgo.sgd_hd(0.05, 0.01, momentum=0.9, nesterov=True, **kw),
    pytest.param(lambda **kw: hgo.adam_hd(0.05, 1e-3, **kw), marks=_ADAM),
    pytest.param(lambda **kw: hgo.adamw_hd(0.05, 1e-3, **kw), marks=_ADAM),
])
def test_tree_get_learning_rate(make_alias, granularity):
  _, state = _steps(make_alias(granularity=granularity), 3)
  rate = optax.tree_utils.tree_get(state, "learning_rate")
  if granularity == "global":
    assert rate.shape == () and rate.dtype == jnp.float32
    assert float(rate) != 0.05
  else:
    assert jax.tree.structure(rate) == jax.tree.structure(_PARAMS)
    shapes = jax.tree.map(
        lambda p: p.shape if granularity == "per-element" else (), _PARAMS)
    assert jax.tree.map(lambda r: r.shape, rate) == shapes
  _assert_trees_equal(hgo.get_learning_rate(state), rate)


@_ADAM
def test_get_learning_rate_wrapper_with_injected_inner():
  schedule = optax.linear_schedule(0.1, 0.01, 10)
  for base, expected in ((0.1, lambda count: 0.1),
                         (schedule, lambda count: schedule(count - 1))):
    inner = optax.inject_hyperparams(optax.adam)(learning_rate=base)
    tx = hgo.hypergradient(inner)
    _, state = _steps(tx, 4)
    # inject_hyperparams holds the rate of the most recent step.
    np.testing.assert_allclose(
        hgo.get_learning_rate(state),
        float(state.scale) * expected(int(state.count)), rtol=1e-6)


@_ADAM
def test_get_learning_rate_base_and_nesting():
  tx = hgo.hypergradient(optax.adam(0.1))
  _, state = _steps(tx, 3)
  scale = float(state.scale)
  np.testing.assert_allclose(hgo.get_learning_rate(state, 0.1), 0.1 * scale,
                             rtol=1e-6)
  schedule = lambda count: 0.1 / (1.0 + count)  # pylint: disable=unnecessary-lambda-assignment
  # The schedule is evaluated at the most recent update's step (count - 1).
  np.testing.assert_allclose(hgo.get_learning_rate(state, schedule),
                             scale * 0.1 / 3.0, rtol=1e-6)
  nested = {
      "chain": optax.chain(optax.clip(1.0), tx),
      "multisteps": optax.MultiSteps(tx, 1),
      "inject": optax.inject_hyperparams(
          functools.partial(hgo.hypergradient, optax.adam(0.1)))(
              hyper_lr=0.1),
      "if_finite": optax.apply_if_finite(tx, 2),
  }
  for name, outer in nested.items():
    _, outer_state = _steps(outer, 3)
    rate = hgo.get_learning_rate(outer_state, 0.1)
    # The same run as tx alone, but inside chain (clipped gradients).
    want = (0.1 * outer_state[1].scale if name == "chain"
            else 0.1 * scale)
    np.testing.assert_allclose(rate, want, rtol=1e-6, err_msg=name)
    assert float(rate) != 0.1, name
  with pytest.raises(ValueError, match="base_learning_rate"):
    hgo.get_learning_rate(state)
  with pytest.raises(ValueError, match="No hypergradient state"):
    hgo.get_learning_rate(optax.adam(0.1).init(_PARAMS))
