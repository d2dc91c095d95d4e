"""The default horizon (``'run'``) and fixed horizons under minibatch noise (issue 10).

A seeded noise-dominated regression: a small tanh MLP on a Friedman #1
problem (Friedman, 1991) with 256 examples and small minibatches, against the
best constant Adam rate of a small grid found inside the test.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bench_runs
import hypergrad_optax as hgo
from hypergrad_optax.bench import data, tasks, train

# optax.adam is not strict-clean (see conftest.py).
pytestmark = pytest.mark.standard_promotion

N = 256
GRID = (1e-3, 3e-3, 1e-2, 3e-2)


def _data():
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(N, 5))
  y = (10 * np.sin(np.pi * x[:, 0] * x[:, 1]) + 20 * (x[:, 2] - 0.5) ** 2
       + 10 * x[:, 3] + 5 * x[:, 4] + rng.normal(size=N))
  x = (x - x.mean(0)) / x.std(0)
  return jnp.asarray(x, jnp.float32), jnp.asarray((y - y.mean()) / y.std(),
                                                  jnp.float32)


def _loss(params, x, y):
  hidden = jnp.tanh(x @ params["w1"] + params["b1"])
  return jnp.mean((hidden @ params["w2"] + params["b2"] - y) ** 2)


def _scan_minibatches(loss, tx, params, x, y, batches):
  """``tx`` on ``loss`` over the rows of ``batches`` (indices): final
  parameters and optimizer state."""
  def step(carry, idx):
    params, state = carry
    grads = jax.grad(loss)(params, x[idx], y[idx])
    updates, state = tx.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), None

  return jax.lax.scan(step, (params, tx.init(params)), batches)[0]


def _train(make_tx, lr, steps, batch):
  """Final full-data loss, first-epoch loss and last effective rate."""
  x, y = _data()
  key = jax.random.PRNGKey(0)
  k1, k2 = jax.random.split(key)
  params = {"w1": jax.random.normal(k1, (5, 32)) / np.sqrt(5),
            "b1": jnp.zeros(32),
            "w2": jax.random.normal(k2, (32,)) / np.sqrt(32),
            "b2": jnp.zeros([])}
  batches = jax.random.randint(jax.random.PRNGKey(1), (steps, batch), 0, N)
  start = _loss(params, x, y)
  params, state = _scan_minibatches(_loss, make_tx(lr), params, x, y, batches)
  rate = lr * state.scale if hasattr(state, "scale") else lr
  return _loss(params, x, y), start, rate


def _constant(steps, batch):
  train = jax.jit(jax.vmap(lambda lr: _train(optax.adam, lr, steps, batch)))
  losses, _, _ = train(jnp.asarray(GRID))
  best = int(np.argmin(np.asarray(losses)))
  return float(losses[best]), GRID[best]


def _adapted(steps, batch, **kwargs):
  train = jax.jit(lambda lr: _train(
      lambda a: hgo.hypergradient(optax.adam(a), **kwargs), lr, steps, batch))
  return [tuple(map(float, train(lr))) for lr in (1e-3, 1e-2)]


@pytest.mark.parametrize("horizon", [None, 1, 300],
                         ids=["default", "one-step", "h300"])
def test_matches_the_best_constant_rate_under_noise(horizon):
  """From 1e-3 and 1e-2 the wrapper ends within 1.25x of the best constant
  rate's loss (1,500 steps at batch 16). Fails with the rule switched off
  (hyper_lr=0: Adam at 1e-3 ends 2.6x above)."""
  best_loss, _ = _constant(1500, 16)
  for final, start, _ in _adapted(1500, 16, horizon=horizon):
    assert final < 0.1 * start, (final, start)
    assert final <= 1.25 * best_loss, (final, best_loss)


def _long_run_holds(horizon):
  best_loss, best_rate = _constant(4000, 32)
  for final, start, rate in _adapted(4000, 32, horizon=horizon):
    assert final < 0.1 * start, (final, start)
    assert best_rate / 10 <= rate <= best_rate * 10, (rate, best_rate)
    assert final <= 1.25 * best_loss, (final, best_loss)


def test_default_rate_stays_within_10x_of_the_best_constant_on_a_long_run():
  """4,000 steps at batch 32 (500 epochs): the default's rate does not
  collapse (about 5e-3 against the best constant 3e-2) and its loss ends
  within 1.25x of the best constant rate's (1.04x and 1.15x from 1e-3 and
  1e-2). The one-step rule's rate falls to 2e-4 there (next tests)."""
  _long_run_holds(None)


@pytest.mark.parametrize("horizon", [1, 300], ids=["one-step", "h300"])
@pytest.mark.xfail(strict=True, reason=(
    "known, kept as the reason for the default: over 4,000 steps at batch 32 "
    "the one-step rule's rate falls to about 2e-4 and a fixed horizon=300's "
    "to 2e-5, against a best constant rate of 3e-2 (final loss 1.8-2.2x the "
    "best constant's): a fixed horizon slows the short-horizon bias, a "
    "horizon that grows with the run removes it here."))
def test_fixed_horizon_rate_collapses_on_a_long_run(horizon):
  _long_run_holds(horizon)


# ------------------------------------------- a far-too-large start, attention

_V, _D, _T, _N = 16, 32, 12, 256


def _sequences():
  """Arithmetic sequences mod 16 (step 1 or 2): next-token prediction."""
  rng = np.random.default_rng(0)
  start = rng.integers(0, _V, size=(_N, 1))
  step = rng.integers(1, 3, size=(_N, 1))
  seq = (start + step * np.arange(_T + 1)) % _V
  return jnp.asarray(seq[:, :-1]), jnp.asarray(seq[:, 1:])


def _attention_loss(params, tokens, targets):
  """One pre-LayerNorm causal self-attention block, as in a transformer."""
  def norm(h, gain):
    return gain * (h - h.mean(-1, keepdims=True)) / jnp.sqrt(
        h.var(-1, keepdims=True) + 1e-5)
  h = params["emb"][tokens] + params["pos"]
  q, k, v = jnp.split(norm(h, params["g1"]) @ params["qkv"], 3, -1)
  scores = jnp.einsum("btd,bsd->bts", q, k) / np.sqrt(_D)
  causal = jnp.tril(jnp.ones((_T, _T), bool))
  weights = jax.nn.softmax(jnp.where(causal, scores, -1e9), -1)
  h = h + jnp.einsum("bts,bsd->btd", weights, v) @ params["o"]
  logits = norm(h, params["g2"]) @ params["out"]
  return optax.softmax_cross_entropy_with_integer_labels(logits,
                                                         targets).mean()


def _train_attention(tx, steps=400, batch=32):
  x, y = _sequences()
  keys = jax.random.split(jax.random.PRNGKey(0), 5)
  params = {"emb": jax.random.normal(keys[0], (_V, _D)) * 0.1,
            "pos": jax.random.normal(keys[1], (_T, _D)) * 0.1,
            "qkv": jax.random.normal(keys[2], (_D, 3 * _D)) / np.sqrt(_D),
            "o": jax.random.normal(keys[3], (_D, _D)) / np.sqrt(_D),
            "out": jax.random.normal(keys[4], (_D, _V)) / np.sqrt(_D),
            "g1": jnp.ones(_D), "g2": jnp.ones(_D)}
  batches = jax.random.randint(jax.random.PRNGKey(1), (steps, batch), 0, _N)
  params, _ = _scan_minibatches(_attention_loss, tx, params, x, y, batches)
  return _attention_loss(params, x, y)


def test_too_large_start_on_attention_is_brought_down():
  """From α0 = 0.1 (10x the best rate of the grid) the default ends within
  2x of the best constant rate's loss (0.068 against 0.068; 0.065 with the
  0.14.0-0.15.0 bound of 5 %, 0.067 with the 0.7.0-0.13.0 bound of 0.1,
  0.074 with the 0.6.0 bound of 0.3). The
  hypergradient alone cannot: the first steps do the damage before it
  answers (0.3.0, max_relative_step=None: 0.47-0.67; the one-step rule:
  0.77; Adam at 0.1: 1.33). The relative step bound holds those steps at
  0.03 of the parameters' norm (see docs/how_it_works.md)."""
  grid = jnp.asarray([3e-3, 1e-2, 3e-2])
  best = float(jnp.min(jax.jit(jax.vmap(
      lambda lr: _train_attention(optax.adam(lr))))(grid)))
  final = float(jax.jit(
      lambda: _train_attention(hgo.hypergradient(optax.adam(0.1))))())
  assert final <= 2 * best, (final, best)


def _warmup(peak, steps=400, warmup=5):
  # The shape at peak 1, scaled: optax's schedule branches on its peak,
  # which vmap traces.
  shape = optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, steps, 0.1)
  return lambda count: peak * shape(count)


@pytest.mark.parametrize("warmup", [5, 20])
def test_too_large_peak_after_a_warmup_is_brought_down(warmup):
  """A warmup to a peak of 0.1 (like the charlm task's): the first steps at
  the peak move the parameters by far more than tuned Adam's few per cent
  of their norm and the hypergradient answers too late (Adam: 0.50; the
  0.6.0 bound of 0.3: 0.077 after 5 steps). Held at 3 % of the norm (the
  default since 0.16.0; 5 % from 0.14.0) the default ends within 1.1x of
  the best peak of the grid: 0.062 after 5 steps and 0.062 after 20
  (5 %: 0.063, 0.066), against 0.0625 and 0.062. At 10 % (0.7.0 to 0.13.0)
  the 20-step warmup was not rescued
  (0.35): the norm grows with the rate during the warmup and a bound of 10 %
  never binds."""
  grid = jnp.asarray([3e-3, 1e-2, 3e-2])
  best = float(jnp.min(jax.jit(jax.vmap(
      lambda peak: _train_attention(optax.adam(_warmup(peak, warmup=warmup)))
  ))(grid)))
  final = float(jax.jit(lambda: _train_attention(
      hgo.hypergradient(optax.adam(_warmup(0.1, warmup=warmup)))))())
  assert final <= 1.1 * best, (final, best)


@pytest.mark.parametrize("soft", [True, False])
def test_log_step_climbs_fast_only_up_to_the_last_rate_that_overshot(soft):
  """The sweep's digits MLP (mlp-digits-long: ReLU, batch 32) from
  adam(0.0316), seed 0, 40 epochs, per step: the state's ceiling is set
  by the last step diagnosed as an overshoot, at the factor s before it
  (soft_ceiling=False, 0.8.0 and 0.9.0) or at s (1 + A / (h - 3A)) from
  that step's reading, held between s and the ceiling before; the gate's
  log step lengthens many climbs past the rule's own step s (1 - β cos)
  (``longer``), and none beyond the ceiling. With the ceiling switched off
  103 steps climb fast above it: the rate climbed straight back past the
  rate that had overshot (docs/how_it_works.md, "The log step's
  ceiling")."""
  task = tasks.TASKS["mlp-digits-long"]
  dataset = data.load(task.dataset, None)
  model = task.model()
  loss = tasks.loss_fn(task, model)
  x, y = jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train)
  rng = np.random.default_rng(0)
  batches = jnp.asarray(np.concatenate([
      train.epoch_batches(rng, len(x), task.batch_size) for _ in range(40)]))
  tx = hgo.hypergradient(optax.adam(0.0316), noise_gate=hgo.rules.NoiseGate(
      soft_ceiling=soft))

  def step(carry, idx):
    params, state = carry
    grads = jax.grad(loss)(params, x[idx], y[idx])
    info = hgo.diagnose(grads, state)
    updates, new = tx.update(grads, state, params)
    return (optax.apply_updates(params, updates), new), (
        state.scale, new.scale, new.hyper_state.ceiling, info["overshoot"],
        info["cosine"], info["step_hypergradient"], info["bound"])

  params = model.init(jax.random.key(0), x.shape[1:])
  _, trace = jax.jit(lambda p: jax.lax.scan(
      step, (p, tx.init(p)), batches))(params)
  before, after, ceiling, overshoot, cosine, h, bound = map(
      np.asarray, trace)
  assert overshoot.sum() >= 2, overshoot.sum()
  previous = np.concatenate([[0.0], ceiling[:-1]])
  top = before
  if soft:
    with np.errstate(invalid="ignore"):  # no reading (NaN) on the first step
      top = before * (1 + bound / (h - 3 * bound))
    top = np.maximum(before, np.minimum(top, np.where(previous > 0, previous,
                                                      np.inf)))
  # The start's end marks a ceiling of 0 as -1 (none) once, before any
  # reading, where the gate's mean first asks for a lower rate.
  ended = ~overshoot & (previous == 0) & (ceiling == -1)
  assert ended.sum() <= 1 and not (ended & (np.cumsum(overshoot) > 0)).any()
  np.testing.assert_allclose(
      ceiling, np.where(ended, -1, np.where(overshoot, top, previous)),
      rtol=1e-5)
  own = before * (1 - 0.1 * cosine)
  longer = after > own * (1 + 1e-4)
  assert (longer & (ceiling > 0)).sum() > 100, longer.sum()
  fast_above = ((ceiling > 0) & (after > before)
                & (after > np.maximum(ceiling, own) * (1 + 1e-5)))
  assert not fast_above.any(), np.nonzero(fast_above)[0][:10]


# The 0.10.0 gate: without the recovery (0.11.0) or the start (0.13.0).
_NO_RECOVERY = hgo.rules.NoiseGate(recovery=None, start_log_step=None)


@pytest.mark.slow
def test_soft_cap_spares_a_noisy_regression():
  """The sweep's Friedman regression (tanh MLP, batch 32, 1,800 steps) from
  adam(1e-3), 8 seeds, against the best constant rate of a small grid per
  seed: the guard's soft cap (the default) ends at a median of at most 1.25x
  that loss, and no run above 3x. Its secant (overshoot_guard='secant',
  0.1.0-0.8.0) cut the rate 4-6x on minibatches whose gradient along the
  last step merely reached 3-5 A, well below the tuned rate, and some runs
  stayed on the loss plateau (here 3 of 8 above 3.5x; soft: a median of
  1.10, the worst 1.92; docs/how_it_works.md, "The guard's soft cap").
  Without the gate's recovery (0.11.0), which climbs back part of either
  cap's cut: the cap alone."""
  best = np.min([bench_runs.final_losses("mlp-friedman", rate, lambda b: b, 8)
                 for rate in (3e-3, 1e-2, 3e-2)], axis=0)

  def regret(guard):
    return bench_runs.final_losses(
        "mlp-friedman", 1e-3,
        lambda b: hgo.hypergradient(b, overshoot_guard=guard,
                                    noise_gate=_NO_RECOVERY), 8) / best
  soft, secant = regret(True), regret("secant")
  assert np.median(soft) <= 1.25 and np.all(soft < 3), soft
  assert np.sum(secant > 3) >= 3, secant


@pytest.mark.slow
def test_soft_ceiling_lets_the_climbs_off_a_noisy_plateau():
  """The sweep's Friedman regression from adam(3.16e-5), 30 seeds: the
  guard reads a few overshoots a run just past its threshold (h about
  3.6 A), at rates well below the tuned 1e-2. With the log step's ceiling
  at the rate that overshot (soft_ceiling=False, 0.8.0 and 0.9.0) about
  half the runs end with a ceiling below a fifth of the tuned rate, on the
  loss plateau; the soft ceiling (the default: r (1 + A / (h - 3A)), held
  between r and the ceiling before) leaves fewer there (17 and 10 on this
  machine), and the median final loss falls by a third (0.167 and 0.109;
  docs/how_it_works.md, "The log step's soft ceiling"). Without the gate's
  recovery (0.11.0): the ceiling alone."""
  alpha0, low = 3.16e-5, 2e-3

  def runs(soft):
    gate = _NO_RECOVERY._replace(soft_ceiling=soft)
    losses, states = bench_runs.final_runs(
        "mlp-friedman", alpha0,
        lambda b: hgo.hypergradient(b, noise_gate=gate), 30)
    ceiling = alpha0 * np.asarray(states.hyper_state.ceiling)
    return losses, int(((ceiling > 0) & (ceiling < low)).sum())

  soft_losses, soft_low = runs(True)
  hard_losses, hard_low = runs(False)
  assert hard_low >= 12 and soft_low <= 0.65 * hard_low, (hard_low, soft_low)
  assert np.median(soft_losses) < 0.8 * np.median(hard_losses), (
      np.median(soft_losses), np.median(hard_losses))


@pytest.mark.slow
def test_recovery_lifts_a_noisy_regression_off_its_plateau():
  """The sweep's Friedman regression from adam(3.16e-5), 30 seeds: the
  guard's readings, after a minibatch whose gradient was a third of the
  typical norm, cut the rate well below the tuned one and add up. Without
  the recovery (0.10.0) 12 runs end above 0.127 (1.5x tuned Adam's mean
  loss, 0.0844), the median at 0.109; the recovery (the default since
  0.11.0: 70 % of each cut climbed back, in log-rate) leaves 6 there and a
  median of 0.087 (on this machine; docs/how_it_works.md, "The gate's
  recovery")."""
  def runs(gate):
    return bench_runs.final_losses(
        "mlp-friedman", 3.16e-5,
        lambda b: hgo.hypergradient(b, noise_gate=gate), 30)
  plateau = 1.5 * 0.0844
  # The recovery alone: without the start (0.13.0) on either side.
  default = runs(hgo.rules.NoiseGate(start_log_step=None))
  before = runs(_NO_RECOVERY)
  assert np.sum(before > plateau) >= 8, np.sort(before)
  assert np.sum(default > plateau) <= 0.65 * np.sum(before > plateau), (
      np.sort(default), np.sort(before))
  assert np.median(default) < 0.9 * np.median(before), (
      np.median(default), np.median(before))
