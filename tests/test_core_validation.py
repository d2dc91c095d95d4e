"""Bad input gives clear errors; dtypes and state shapes are stable."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hypergrad_optax as hgo

_ADAM = pytest.mark.standard_promotion  # optax's Adam is not strict-clean

# ------------------------------------------------------------ construction

_BAD_CONSTRUCTION = [
    (lambda: hgo.sgd_hd(hyper_lr=-1e-3), ValueError, "hyper_lr"),
    (lambda: hgo.hypergradient(optax.sgd(0.1), hyper_lr=-0.1), ValueError,
     "hyper_lr"),
    (lambda: hgo.adam_hd(learning_rate=float("nan")), ValueError,
     "learning_rate"),
    (lambda: hgo.sgd_hd(learning_rate=float("inf")), ValueError,
     "learning_rate"),
    (lambda: hgo.adamw_hd(learning_rate=-1e-3), ValueError, "learning_rate"),
    (lambda: hgo.sgd_hd(learning_rate=optax.constant_schedule(0.1)),
     TypeError, "learning_rate"),
    (lambda: hgo.sgd_hd(rule="exponential"), ValueError,
     "rule must be one of 'additive', 'multiplicative'"),
    (lambda: hgo.hypergradient(optax.sgd(0.1), rule="Additive"), ValueError,
     "rule must be one of"),
    (lambda: hgo.adam_hd(granularity="per-layer"), ValueError,
     "granularity must be one of 'global', 'per-tensor', 'per-element'"),
    (lambda: hgo.hypergradient(optax.sgd(0.1), min_scale=2.0, max_scale=1.0),
     ValueError, "min_scale must be <= max_scale"),
    (lambda: hgo.sgd_hd(min_rate=2.0, max_rate=1.0), ValueError,
     "min_rate must be <= max_rate"),
    (lambda: hgo.sgd_hd(min_rate=float("nan")), ValueError, "min_rate"),
    (lambda: hgo.adam_hd(b1=1.0), ValueError, r"b1 must be in \[0, 1\)"),
    (lambda: hgo.adamw_hd(b2=-0.1), ValueError, r"b2 must be in \[0, 1\)"),
    (lambda: hgo.adam_hd(eps=-1.0), ValueError, "eps"),
    (lambda: hgo.sgd_hd(momentum=1.0), ValueError,
     r"momentum must be in \[0, 1\)"),
    (lambda: hgo.sgd_hd(momentum=-0.5), ValueError, "momentum"),
    (lambda: hgo.sgd_hd(nesterov=True), ValueError, "nesterov"),
    (lambda: hgo.sgd_hd(momentum=0.0, nesterov=True), ValueError,
     "nesterov"),
    (lambda: hgo.sgd_hd(weight_decay=-1e-4), ValueError, "weight_decay"),
    (lambda: hgo.adamw_hd(weight_decay=-1e-4), ValueError, "weight_decay"),
    (lambda: hgo.hypergradient(optax.sgd(0.1), initial_scale=0.0),
     ValueError, "initial_scale"),
    (lambda: hgo.hypergradient(optax.sgd), TypeError, "inner"),
    (lambda: hgo.hypergradient(optax.sgd(0.1), overshoot_guard="hard"),
     ValueError, "overshoot_guard must be one of True, False, 'soft', "
     "'secant'; got 'hard'"),
    (lambda: hgo.adam_hd(overshoot_guard="on"), ValueError,
     "overshoot_guard must be one of"),
]


@pytest.mark.parametrize("build,error,match", _BAD_CONSTRUCTION)
def test_bad_construction(build, error, match):
  with pytest.raises(error, match=match):
    build()


def test_checks_skip_traced_values():
  # Under jit the hyperparameters are tracers: no check may concretise them.
  params = jnp.ones(3)

  @jax.jit
  def run(hyper_lr, lr, momentum, min_rate):
    tx = hgo.sgd_hd(lr, hyper_lr, momentum=momentum, min_rate=min_rate,
                    max_rate=jnp.asarray(1.0))
    state = tx.init(params)
    updates, state = tx.update(params, state, params)
    return updates, state.learning_rate

  updates, rate = run(jnp.asarray(0.1), jnp.asarray(0.01), jnp.asarray(0.5),
                      jnp.asarray(0.0))
  np.testing.assert_allclose(updates, -0.01 * np.ones(3), rtol=1e-6)
  np.testing.assert_allclose(rate, 0.01)


# ------------------------------------------------------------------ update


_PARAMS = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}

_ALL = [
    pytest.param(lambda: hgo.hypergradient(optax.sgd(0.1)), id="wrap-sgd"),
    pytest.param(lambda: hgo.hypergradient(optax.adam(0.1)), id="wrap-adam",
                 marks=_ADAM),
    pytest.param(lambda: hgo.sgd_hd(), id="sgd_hd"),
    pytest.param(lambda: hgo.sgd_hd(momentum=0.9), id="sgdm_hd"),
    pytest.param(lambda: hgo.sgd_hd(momentum=0.9, nesterov=True),
                 id="sgdn_hd"),
    pytest.param(lambda: hgo.adam_hd(), id="adam_hd", marks=_ADAM),
    pytest.param(lambda: hgo.adamw_hd(), id="adamw_hd", marks=_ADAM),
]


@pytest.mark.parametrize("make_tx", [
    lambda: hgo.sgd_hd(weight_decay=1e-4),
    pytest.param(lambda: hgo.adam_hd(weight_decay=1e-4), marks=_ADAM),
    pytest.param(lambda: hgo.adamw_hd(weight_decay=1e-4), marks=_ADAM),
], ids=["sgd_hd", "adam_hd", "adamw_hd"])
def test_weight_decay_needs_params(make_tx):
  tx = make_tx()
  state = tx.init(_PARAMS)
  with pytest.raises(ValueError, match="params"):
    tx.update(_PARAMS, state)


@pytest.mark.parametrize("make_tx", _ALL)
def test_gradient_structure_mismatch_names_both(make_tx):
  tx = make_tx()
  state = tx.init(_PARAMS)
  wrong = {"w": jnp.ones((2, 3)), "bias": jnp.zeros(3)}
  with pytest.raises(ValueError, match=r"(?s)tree structure.*'bias'.*'b'"
                     ) as info:
    tx.update(wrong, state, wrong)
  # Not every variant keeps a previous direction (adam_hd recomputes it).
  assert "previous direction" not in str(info.value)


@pytest.mark.parametrize("make_tx", _ALL)
def test_gradient_shape_mismatch_names_the_leaf_and_both_shapes(make_tx):
  tx = make_tx()
  state = tx.init(_PARAMS)
  wrong = {"w": jnp.ones((3, 2)), "b": jnp.zeros(3)}
  with pytest.raises(ValueError, match=r"\['w'\] has shape \(3, 2\).*"
                     r"with shape \(2, 3\)"):
    tx.update(wrong, state, wrong)


# ------------------------------------------------------------------ dtypes

_DTYPES = ["float16", "bfloat16", "float32", "float64"]


def _abstract(tree):
  return jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), tree)


@pytest.fixture
def maybe_x64(request):
  """jax_enable_x64 for float64 params only."""
  if "float64" in request.node.name:
    jax.config.update("jax_enable_x64", True)
  try:
    yield
  finally:
    jax.config.update("jax_enable_x64", False)


@pytest.mark.parametrize("granularity", ["global", "per-element"])
@pytest.mark.parametrize("dtype", _DTYPES)
@pytest.mark.parametrize("make", [
    pytest.param(lambda **kw: hgo.hypergradient(optax.sgd(0.1), **kw),
                 id="wrap-sgd"),
    pytest.param(lambda **kw: hgo.hypergradient(optax.adam(0.1), **kw),
                 id="wrap-adam", marks=_ADAM),
    pytest.param(lambda **kw: hgo.sgd_hd(0.1, 1e-3, **kw), id="sgd_hd"),
    pytest.param(lambda **kw: hgo.sgd_hd(0.1, 1e-3, momentum=0.9,
                                         nesterov=True, weight_decay=1e-4,
                                         **kw), id="sgdn_hd"),
    pytest.param(lambda **kw: hgo.adam_hd(0.1, 1e-3, **kw), id="adam_hd",
                 marks=_ADAM),
    pytest.param(lambda **kw: hgo.adamw_hd(0.1, 1e-3, **kw), id="adamw_hd",
                 marks=_ADAM),
])
def test_dtypes_and_state_stability(maybe_x64, make, dtype, granularity):
  del maybe_x64
  dtype = jnp.dtype(dtype)
  tx = make(granularity=granularity)
  params = {"w": jnp.full((2, 3), 0.5, dtype), "b": jnp.arange(3, dtype=dtype)}
  # No zero gradient: optax's own Adam gives 0/0 = NaN there in float16
  # (eps=1e-8 underflows).
  grads = jax.tree.map(lambda p: (p - 1.25).astype(dtype), params)
  state = tx.init(params)
  rate_type = jnp.float64 if dtype == jnp.float64 else jnp.float32
  assert all(r.dtype == rate_type for r in jax.tree.leaves(state[1]))

  update = jax.jit(tx.update)
  new_state = state
  for _ in range(3):
    updates, new_state = update(grads, new_state, params)
    assert _abstract(updates) == _abstract(params)
    assert _abstract(new_state) == _abstract(state)
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(
        updates))

  # Inside lax.cond both branches must produce the same state types.
  @jax.jit
  def cond_step(flag, state):
    return jax.lax.cond(flag, lambda s: update(grads, s, params)[1],
                        lambda s: s, state)

  assert _abstract(cond_step(True, state)) == _abstract(state)
  assert _abstract(cond_step(False, new_state)) == _abstract(state)
