"""optax.contrib's shared suite, run on ``hypergradient`` like ``mechanize``.

optax tests its wrappers (``contrib.mechanize``) over 19 base optimizers, all
at learning rate 1.0 (3.0 for sm3), on four targets (a parabola, Rosenbrock,
a matrix parabola, a mixed 1-D/2-D target), 30,000 steps each, converging to
within 3e-2. This file runs the same sweep, read from optax's own test
module, with ``hypergrad_optax.hypergradient`` as the wrapper (its untuned
default), plus the suite's extra-arguments/no-recompile and dtype-stability
checks. Slow (minutes): deselected by default, run with ``-m slow``.
"""

import jax
import jax.numpy as jnp
import optax
import pytest

import hypergrad_optax as hgo

common = pytest.importorskip("optax.contrib._common_test")

pytestmark = [pytest.mark.slow,
              pytest.mark.standard_promotion]  # optax's own optimizers

_BASES = common._BASE_OPTIMIZERS  # pylint: disable=protected-access
_IDS = [f"{b['opt_name']}-{i}" for i, b in enumerate(_BASES)]
_TARGETS = {
    "parabola": common._setup_parabola,  # pylint: disable=protected-access
    "rosenbrock": common._setup_rosenbrock,  # pylint: disable=protected-access
    "matrix_parabola": common._setup_matrix_parabola,  # pylint: disable=protected-access
    "mixed": common._setup_mixed_tensor_target,  # pylint: disable=protected-access
}

# Cases that do not converge, and why (checked: they must still fail, so
# that a fix is noticed). noisy_sgd(1.0, eta=1e-4) on the Rosenbrock function
# ended at (0.54, 0.29) under the one-step rule (0.2.0's default: its scale
# stayed above the stability limit 2/λ_max ≈ 0.0046, the injected noise
# exciting the valley's stiff direction); the default horizon's scale falls
# to 9e-5 and it ends at (0.9999, 0.9998).
# yogi(1.0, b1=0.99) on the Rosenbrock function ended 30,000 steps at
# (0.83, 0.69) under 0.3.0-0.10.0 (the first steps at lr 1.0 overshoot, the
# factor fell to 1e-6, then the heavy momentum swung the iterate through the
# valley, the factor ending at 3e-4-4e-3, crawling); since 0.11.0, with the
# gate's recovery after the guard's cuts, it converges (not traced).
_KNOWN_FAILURES = {}


def _wrapped(base):
  factory = common._get_opt_factory(base["opt_name"])  # pylint: disable=protected-access
  return hgo.hypergradient(factory(**base["opt_kwargs"]))


@pytest.mark.parametrize("target", list(_TARGETS))
@pytest.mark.parametrize("base", _BASES, ids=_IDS)
def test_converges_like_mechanize(base, target):
  opt = _wrapped(base)
  initial, final, objective = _TARGETS[target](jnp.float32)

  @jax.jit
  def run(params):
    def step(carry, _):
      params, state = carry
      updates, state = opt.update(jax.grad(objective)(params), state, params)
      return (optax.apply_updates(params, updates), state), None
    (params, state), _ = jax.lax.scan(step, (params, opt.init(params)),
                                      length=30_000)
    return params, state

  params, state = run(initial)
  close = all(bool(jnp.allclose(p, f, rtol=3e-2, atol=3e-2))
              for p, f in zip(jax.tree.leaves(params), jax.tree.leaves(final)))
  key = (base["opt_name"], target)
  if key in _KNOWN_FAILURES:
    assert not close, f"{key} now converges: drop it from _KNOWN_FAILURES"
    pytest.xfail(_KNOWN_FAILURES[key])
  assert close, (params, final, float(state.scale))


@pytest.mark.parametrize("base", _BASES, ids=_IDS)
def test_accepts_extra_args_without_recompiling(base):
  opt = _wrapped(base)
  initial, _, objective = common._setup_rosenbrock(jnp.float32)  # pylint: disable=protected-access

  @jax.jit
  def step(params, state):
    value, grads = jax.value_and_grad(objective)(params)
    updates, state = opt.update(grads, state, params, value=value,
                                unexpected_extra_args_your_optimizer=1)
    return optax.apply_updates(params, updates), state

  params, state = step(initial, opt.init(initial))
  compiled = step._cache_size()  # pylint: disable=protected-access
  params, state = step(params, state)
  step(params, state)
  assert step._cache_size() == compiled  # pylint: disable=protected-access


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32",
                                   "float64"])
@pytest.mark.parametrize("base", _BASES, ids=_IDS)
def test_state_shape_dtype_stable_under_cond(base, dtype, request):
  if dtype == "float64":
    request.getfixturevalue("x64")
  dtype = jnp.dtype(dtype)
  opt = _wrapped(base)
  initial, _, objective = common._setup_parabola(dtype)  # pylint: disable=protected-access

  @jax.jit
  def step(params, state):
    grads = jax.grad(objective)(params)
    # Both branches must agree on the state's types (lax.cond checks).
    cond = jax.random.randint(jax.random.key(0), (), 0, 2) == 0
    updates, state = jax.lax.cond(
        cond, lambda: opt.update(grads, state, params),
        lambda: (jnp.zeros_like(params), state))
    return optax.apply_updates(params, updates), state

  params, state = initial, opt.init(initial)
  for _ in range(2):
    params, state = step(params, state)
    assert params.dtype == dtype
