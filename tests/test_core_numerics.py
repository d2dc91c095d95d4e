"""Step-by-step numerics against the paper's equations, computed in numpy.

The reference below is written from the paper (Baydin et al., ICLR 2018), not
from the library: each step first moves the rate ``r`` by its hypergradient
``h_t = g_t · p_{t-1}``, where ``p_{t-1} = ∂u_{t-1}/∂r`` is the previous
update per unit rate (``-d_{t-1}`` for the aliases, the inner optimizer's
update ``ũ_{t-1}`` for the wrapper), then steps with the new rate.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hypergrad_optax as hgo


def _one_step(*args, **kwargs):
  """The wrapper with the paper's one-step hypergradient (horizon=1) and no
  relative step bound, which the hand-written references below transcribe;
  the default's horizon has its own references in test_rules.py, its bound
  in test_relative_step.py."""
  return hgo.hypergradient(*args, horizon=1, max_relative_step=None,
                           **kwargs)

_ADAM = pytest.mark.standard_promotion  # optax's Adam is not strict-clean

RULES = ("additive", "multiplicative")
GRANULARITIES = ("global", "per-tensor", "per-element")

# A quadratic with a different curvature per entry: g = c ⊙ (θ - target).
_CURVATURE = {"b": np.array([1.0, 3.0, 0.5]),
              "w": np.array([[2.0, 0.25, 1.5], [4.0, 1.0, 0.75]])}
_TARGET = {"b": np.array([0.5, -1.0, 2.0]),
           "w": np.array([[1.0, -2.0, 0.0], [0.5, 3.0, -1.5]])}
_INIT = {"b": np.array([0.1, 0.2, -0.3]),
         "w": np.array([[-0.5, 0.4, 1.0], [0.0, -0.2, 0.3]])}
_KEYS = ("b", "w")  # jax flattens dicts in sorted key order
# The overshoot guard caps the rate when h > 3 A, A = ‖g_{t-1}‖‖p_{t-1}‖
# (written here, not read from the library; checked against it below).
OVERSHOOT_RATIO = 3.0


def _grad(params):
  return {k: _CURVATURE[k] * (params[k] - _TARGET[k]) for k in _KEYS}


def _jax_grad(params):
  return jax.tree.map(
      lambda c, p, t: jnp.asarray(c, p.dtype) * (p - jnp.asarray(t, p.dtype)),
      _CURVATURE, params, _TARGET)


# ----------------------------------------------------------------- reference


def _reduce(x, granularity):
  """Sums a dict of arrays to one total, one per leaf, or keeps entries."""
  if granularity == "global":
    total = sum(np.sum(x[k]) for k in _KEYS)
    return {k: total for k in _KEYS}
  if granularity == "per-tensor":
    return {k: np.sum(x[k]) for k in _KEYS}
  return dict(x)


def _np_direction(kind, hp):
  """The base optimizer's direction d_t (the update is -α d_t), in numpy."""
  def init(params):
    zeros = {k: np.zeros_like(params[k]) for k in _KEYS}
    return {"m": zeros, "v": dict(zeros), "t": 0}

  def step(g, state, params):
    t = state["t"] + 1
    if kind == "sgd":
      return dict(g), {**state, "t": t}
    if kind in ("momentum", "nesterov"):
      mu = hp["momentum"]
      trace = {k: mu * state["m"][k] + g[k] for k in _KEYS}
      if kind == "momentum":
        d = trace
      else:
        d = {k: g[k] + mu * trace[k] for k in _KEYS}
      return d, {**state, "m": trace, "t": t}
    b1, b2, eps = hp["b1"], hp["b2"], hp["eps"]
    m = {k: b1 * state["m"][k] + (1 - b1) * g[k] for k in _KEYS}
    v = {k: b2 * state["v"][k] + (1 - b2) * g[k] ** 2 for k in _KEYS}
    d = {k: (m[k] / (1 - b1 ** t)) / (np.sqrt(v[k] / (1 - b2 ** t)) + eps)
         for k in _KEYS}
    if kind == "adamw":
      d = {k: d[k] + hp["weight_decay"] * params[k] for k in _KEYS}
    return d, {"m": m, "v": v, "t": t}

  return init, step


def reference_run(kind, hp, *, wrapper, steps, rule, granularity, beta,
                  rate0, min_rate=None, max_rate=None, guard=False,
                  coupled_decay=0.0, grads_override=None, caps=None):
  """Runs the paper's rule for ``steps`` steps; returns (params, rates).

  Args:
    kind: the base direction ('sgd', 'momentum', 'nesterov', 'adam',
      'adamw').
    hp: its hyperparameters (and ``lr`` for the wrapper's inner optimizer).
    wrapper: True for hypergradient(inner): r is the scale s and the update
      per unit rate is the inner update -lr d; False for the aliases: r is
      α and the update per unit rate is -d.
    steps, rule, granularity, beta, rate0, min_rate, max_rate: the rule.
    guard: apply the overshoot cap when h > 3 A: at r A / (A + h - 3A)
      (True or 'soft') or at the secant r A / (A + h) ('secant').
    coupled_decay: λ in g ← g + λθ.
    grads_override: optional {step index: gradient dict} replacing g_t.
    caps: optional list; the index of every step where the cap lowers a rate
      is appended to it.

  Returns:
    the final parameters and the list of rates used at each step.
  """
  params = {k: _INIT[k].copy() for k in _KEYS}
  init, direction_step = _np_direction(kind, hp)
  dstate = init(params)
  rate = {k: np.broadcast_to(np.float64(rate0), params[k].shape).copy()
          if granularity == "per-element" else np.float64(rate0)
          for k in _KEYS}
  per_unit_prev = {k: np.zeros_like(params[k]) for k in _KEYS}
  grad_norm_prev = {k: np.zeros_like(rate[k]) for k in _KEYS}
  rates = []
  for t in range(steps):
    g = _grad(params)
    if grads_override and t in grads_override:
      g = grads_override[t]
    g = {k: g[k] + coupled_decay * params[k] for k in _KEYS}
    h = _reduce({k: g[k] * per_unit_prev[k] for k in _KEYS}, granularity)
    gnorm = {k: np.sqrt(v) for k, v in
             _reduce({k: g[k] ** 2 for k in _KEYS}, granularity).items()}
    pnorm = {k: np.sqrt(v) for k, v in _reduce(
        {k: per_unit_prev[k] ** 2 for k in _KEYS}, granularity).items()}
    new_rate = {}
    for k in _KEYS:
      r, hk = rate[k], h[k]
      with np.errstate(invalid="ignore", divide="ignore"):
        if rule == "additive":
          proposed = r - beta * hk
        else:
          norm = gnorm[k] * pnorm[k]
          cosine = np.where(norm > 0, hk / np.where(norm > 0, norm, 1), 0.0)
          proposed = r * (1 - beta * cosine)
        if guard:
          bound = grad_norm_prev[k] * pnorm[k]
          over = hk > OVERSHOOT_RATIO * bound
          excess = hk if guard == "secant" else hk - OVERSHOOT_RATIO * bound
          cap = r * bound / np.where(over, bound + excess, 1)
          if caps is not None and np.any(over & (cap < proposed)):
            caps.append(t)
          proposed = np.where(over, np.minimum(proposed, cap), proposed)
      proposed = np.where(np.isfinite(proposed), proposed, r)
      if min_rate is not None:
        proposed = np.maximum(proposed, min_rate)
      if max_rate is not None:
        proposed = np.minimum(proposed, max_rate)
      new_rate[k] = proposed
    rate = new_rate
    grad_norm_prev = gnorm
    rates.append({k: np.copy(rate[k]) for k in _KEYS})
    d, dstate = direction_step(g, dstate, params)
    per_unit = ({k: -hp["lr"] * d[k] for k in _KEYS} if wrapper
                else {k: -d[k] for k in _KEYS})
    params = {k: params[k] + rate[k] * per_unit[k] for k in _KEYS}
    per_unit_prev = per_unit
  return params, rates


def library_run(tx, steps, dtype=jnp.float64, grads_override=None):
  """Runs ``tx`` on the same quadratic; returns (params, rates, state)."""
  params = {k: jnp.asarray(_INIT[k], dtype) for k in _KEYS}
  state = tx.init(params)
  update = jax.jit(tx.update)
  rates = []
  for t in range(steps):
    g = _jax_grad(params)
    if grads_override and t in grads_override:
      g = jax.tree.map(lambda x, p: jnp.asarray(x, p.dtype),
                       grads_override[t], params)
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
    rates.append(hgo.get_learning_rate(state) if isinstance(
        state, hgo.HypergradientState) else state.scale)
  return params, rates, state


def _as_dict(rate):
  """A library rate (scalar or per-leaf pytree) as {key: np.ndarray}."""
  if isinstance(rate, dict):
    return {k: np.asarray(rate[k]) for k in _KEYS}
  return {k: np.asarray(rate) for k in _KEYS}


def assert_runs_match(lib, ref, rtol=1e-12):
  (lib_params, lib_rates, _), (ref_params, ref_rates) = lib, ref
  assert len(lib_rates) == len(ref_rates)
  for t, (a, b) in enumerate(zip(lib_rates, ref_rates)):
    a = _as_dict(a)
    for k in _KEYS:
      np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=0,
                                 err_msg=f"rate at step {t}, leaf {k}")
  for k in _KEYS:
    np.testing.assert_allclose(np.asarray(lib_params[k]), ref_params[k],
                               rtol=rtol, atol=rtol, err_msg=f"params {k}")


# ------------------------------------------------------------- the aliases

_SGD_KINDS = {
    "sgd": ({}, {}),
    "momentum": ({"momentum": 0.9}, {"momentum": 0.9}),
    "nesterov": ({"momentum": 0.9, "nesterov": True}, {"momentum": 0.9}),
}


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("kind", list(_SGD_KINDS))
def test_sgd_hd_matches_paper_equations(x64, kind, rule, granularity):
  kwargs, hp = _SGD_KINDS[kind]
  beta = 0.02 if rule == "additive" else 0.3
  tx = hgo.sgd_hd(0.05, beta, rule=rule, granularity=granularity, **kwargs)
  lib = library_run(tx, steps=3)
  ref = reference_run(kind, hp, wrapper=False, steps=3, rule=rule,
                      granularity=granularity, beta=beta, rate0=0.05,
                      min_rate=0.0)
  assert_runs_match(lib, ref)
  # The first step is taken with α0 and the rate moves on later steps.
  np.testing.assert_array_equal(_as_dict(lib[1][0])["w"], 0.05)
  assert not np.allclose(_as_dict(lib[1][2])["w"], 0.05)


@_ADAM
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("kind", ["adam", "adamw"])
def test_adam_hd_matches_paper_equations(x64, kind, rule, granularity):
  hp = {"b1": 0.8, "b2": 0.9, "eps": 1e-3, "weight_decay": 0.1}
  beta = 2e-3 if rule == "additive" else 0.3
  factory = hgo.adam_hd if kind == "adam" else hgo.adamw_hd
  extra = {} if kind == "adam" else {"weight_decay": hp["weight_decay"]}
  tx = factory(0.05, beta, b1=hp["b1"], b2=hp["b2"], eps=hp["eps"],
               rule=rule, granularity=granularity, **extra)
  lib = library_run(tx, steps=3)
  ref = reference_run(kind, hp, wrapper=False, steps=3, rule=rule,
                      granularity=granularity, beta=beta, rate0=0.05,
                      min_rate=0.0)
  assert_runs_match(lib, ref)


def test_sgd_hd_coupled_weight_decay(x64):
  tx = hgo.sgd_hd(0.05, 0.02, momentum=0.5, nesterov=True, weight_decay=0.3)
  ref = reference_run("nesterov", {"momentum": 0.5}, wrapper=False, steps=3,
                      rule="additive", granularity="global", beta=0.02,
                      rate0=0.05, min_rate=0.0, coupled_decay=0.3)
  assert_runs_match(library_run(tx, steps=3), ref)


@_ADAM
def test_adam_hd_coupled_weight_decay(x64):
  hp = {"b1": 0.8, "b2": 0.9, "eps": 1e-3}
  tx = hgo.adam_hd(0.05, 2e-3, weight_decay=0.3, **hp)
  ref = reference_run("adam", hp, wrapper=False, steps=3, rule="additive",
                      granularity="global", beta=2e-3, rate0=0.05,
                      min_rate=0.0, coupled_decay=0.3)
  assert_runs_match(library_run(tx, steps=3), ref)


def test_paper_rule_unbounded_goes_negative_and_bounds_clip(x64):
  # SGD at α0 = 0.6 overshoots along the stiff entries, so g1·g0 < 0 and a
  # large β drives α negative on step 2 (as in the authors' own runs);
  # min_rate=None keeps the paper's unbounded rule, the default clips at 0.
  kw = dict(wrapper=False, steps=3, rule="additive", granularity="global",
            beta=1.0, rate0=0.6)
  ref = reference_run("sgd", {}, min_rate=None, **kw)
  assert ref[1][1]["b"] < 0  # the case exercises the bound
  tx = hgo.sgd_hd(0.6, 1.0, min_rate=None)
  assert_runs_match(library_run(tx, steps=3), ref)
  ref = reference_run("sgd", {}, min_rate=0.0, **kw)
  assert ref[1][1]["b"] == 0.0
  assert_runs_match(library_run(hgo.sgd_hd(0.6, 1.0), steps=3), ref)


def test_min_and_max_rate_clip(x64):
  kw = dict(granularity="per-element", min_rate=0.2, max_rate=0.5)
  ref = reference_run("sgd", {}, wrapper=False, steps=3, rule="additive",
                      beta=0.5, rate0=0.3, **kw)
  lib = library_run(hgo.sgd_hd(0.3, 0.5, **kw), steps=3)
  assert_runs_match(lib, ref)
  rates = np.concatenate([np.ravel(v) for v in _as_dict(lib[1][1]).values()])
  # Both bounds are hit on step 2, so the case exercises both clips.
  assert np.any(rates == 0.5) and np.any(rates == 0.2)


# ------------------------------------------------------------- the wrapper

def _inners(lr, b1):
  """SGD, heavy ball and Adam (with ``b1``) at rate ``lr``: (a factory,
  the reference's hyperparameters) for each."""
  adam = {"lr": lr, "b1": b1, "b2": 0.9, "eps": 1e-3}
  return {
      "sgd": (lambda: optax.sgd(lr), {"lr": lr}),
      "momentum": (lambda: optax.sgd(lr, momentum=0.5),
                   {"lr": lr, "momentum": 0.5}),
      "adam": (lambda: optax.adam(lr, b1=b1, b2=0.9, eps=1e-3), adam),
  }


_INNER = _inners(0.1, b1=0.8)


@pytest.mark.parametrize("guard", [False, True])
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("inner", list(_INNER))
def test_wrapper_matches_paper_equations(x64, inner, granularity, rule,
                                         guard):
  make_inner, hp = _INNER[inner]
  beta = 0.5 if rule == "additive" else 0.3
  tx = _one_step(make_inner(), beta, rule=rule,
                         granularity=granularity, overshoot_guard=guard)
  with jax.numpy_dtype_promotion("standard"):  # optax's Adam
    lib = library_run(tx, steps=3)
  ref = reference_run(inner, hp, wrapper=True, steps=3, rule=rule,
                      granularity=granularity, beta=beta, rate0=1.0,
                      min_rate=0.0, guard=guard)
  assert_runs_match(lib, ref)


def test_reference_threshold_is_the_librarys():
  assert OVERSHOOT_RATIO == hgo.rules.OVERSHOOT_RATIO


# Inner optimizers whose steps overshoot the stiff entries (the soft cap
# spares more of them: larger steps).
_CAPPED = _inners(2.0, b1=0.5)
_CAPPED_SOFT = _inners(3.0, b1=0.5)
# Adam's bounded direction overshoots by 3A only entry by entry.
_CAPPED_CASES = [(inner, g) for inner in ("sgd", "momentum")
                 for g in GRANULARITIES] + [("adam", "per-element")]


@pytest.mark.parametrize("guard", [True, "secant"])
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("inner,granularity", _CAPPED_CASES)
def test_wrapper_guard_caps_like_the_reference(x64, inner, granularity, rule,
                                               guard):
  """Steps where the 3A cap acts, checked against the hand-written cap."""
  make_inner, hp = _CAPPED[inner]
  if guard is True:
    # The soft cap spares the moderate overshoots of lr 2 (global, the rule
    # alone handles them): larger steps, to make it act in every case.
    make_inner, hp = _CAPPED_SOFT[inner]
  # A small additive β: a large one already cuts the rate below the cap.
  beta = 1e-3 if rule == "additive" else 0.3
  steps = 8
  tx = _one_step(make_inner(), beta, rule=rule, granularity=granularity,
                 overshoot_guard=guard)
  with jax.numpy_dtype_promotion("standard"):  # optax's Adam
    lib = library_run(tx, steps=steps)
  caps = []
  kw = dict(wrapper=True, steps=steps, rule=rule, granularity=granularity,
            beta=beta, rate0=1.0, min_rate=0.0)
  ref = reference_run(inner, hp, guard=guard, caps=caps, **kw)
  assert caps, "the case must make the cap act"
  assert_runs_match(lib, ref, rtol=1e-10)
  # Without the cap the rates differ from the first step where it acts.
  unguarded = reference_run(inner, hp, **kw)[1][caps[0]]
  assert any(not np.allclose(unguarded[k], ref[1][caps[0]][k]) for k in _KEYS)


@pytest.mark.parametrize("guard", [True, "secant"])
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("kind", ["sgd", "momentum"])
def test_alias_guard_caps_like_the_reference(x64, kind, rule, guard):
  kwargs, hp = {"sgd": ({}, {}), "momentum": ({"momentum": 0.5},
                                              {"momentum": 0.5})}[kind]
  beta = 0.01 if rule == "additive" else 0.3
  # The soft cap spares the additive rule's moderate overshoots from α = 2.
  rate0 = 4.0 if guard is True else 2.0
  tx = hgo.sgd_hd(rate0, beta, rule=rule, overshoot_guard=guard, **kwargs)
  caps = []
  ref = reference_run(kind, hp, wrapper=False, steps=8, rule=rule,
                      granularity="global", beta=beta, rate0=rate0,
                      min_rate=0.0, guard=guard, caps=caps)
  assert caps, "the case must make the cap act"
  assert_runs_match(library_run(tx, steps=8), ref, rtol=1e-10)


def _overshooting_sgd(guard, lr):
  """SGD on the quadratic with a step that overshoots (cα > 2 for most c)."""
  return _one_step(optax.sgd(lr), 0.1, overshoot_guard=guard)


def _first_overshoot_by_hand(lr, soft=False):
  """(h, A, multiplicative proposal, cap) at step 2, by hand: the secant
  cap, or with ``soft`` the secant of the part of h past 3 A."""
  g0 = _grad(_INIT)
  u0 = {k: -lr * g0[k] for k in _KEYS}
  theta1 = {k: _INIT[k] + u0[k] for k in _KEYS}
  g1 = _grad(theta1)
  h = sum(np.sum(g1[k] * u0[k]) for k in _KEYS)
  norm_u0 = math.sqrt(sum(np.sum(u0[k] ** 2) for k in _KEYS))
  bound = math.sqrt(sum(np.sum(g0[k] ** 2) for k in _KEYS)) * norm_u0
  # Multiplicative proposal: s (1 - β cos) with cos = h / (‖g1‖‖ũ0‖).
  cosine = h / (math.sqrt(sum(np.sum(g1[k] ** 2) for k in _KEYS)) * norm_u0)
  excess = h - 3 * bound if soft else h
  return h, bound, 1.0 * (1 - 0.1 * cosine), 1.0 * bound / (bound + excess)


def test_overshoot_guard_caps_at_secant_by_hand(x64):
  # Step 1: θ1 = θ0 - 10 g0; step 2 sees h = g1·ũ0 > 3 A, A = ‖g0‖‖ũ0‖.
  h, bound, proposed, capped = _first_overshoot_by_hand(10.0)
  assert h > 3 * bound, "the case must trigger the guard"
  assert capped < proposed
  _, rates, _ = library_run(_overshooting_sgd("secant", 10.0), steps=2)
  np.testing.assert_allclose(np.asarray(rates[1]), capped, rtol=1e-12)
  # The default soft cap: milder, still below the rule's proposal.
  _, _, _, soft = _first_overshoot_by_hand(10.0, soft=True)
  assert capped < soft < proposed
  _, rates, _ = library_run(_overshooting_sgd(True, 10.0), steps=2)
  np.testing.assert_allclose(np.asarray(rates[1]), soft, rtol=1e-12)
  _, rates, _ = library_run(_overshooting_sgd(False, 10.0), steps=2)
  np.testing.assert_allclose(np.asarray(rates[1]), proposed, rtol=1e-12)


def test_overshoot_guard_ignores_a_moderate_overshoot(x64):
  # A < h < 3 A: an overshoot of the size minibatch noise also produces; the
  # multiplicative rule alone handles it, the cap must not act.
  h, bound, proposed, capped = _first_overshoot_by_hand(1.5)
  assert bound < h < 3 * bound and capped < proposed
  _, rates, _ = library_run(_overshooting_sgd(True, 1.5), steps=2)
  np.testing.assert_allclose(np.asarray(rates[1]), proposed, rtol=1e-12)


def test_overshoot_guard_idle_without_overshoot(x64):
  # A small inner rate never overshoots: the guard must change nothing.
  on = library_run(_one_step(optax.sgd(0.01), 0.1), steps=5)
  off = library_run(_one_step(optax.sgd(0.01), 0.1,
                                      overshoot_guard=False), steps=5)
  for a, b in zip(on[1], off[1]):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert float(on[1][-1]) > 1.0  # the rate did move, just not capped


# ----------------------------------------------- the wrapper as the paper


@pytest.mark.parametrize("momentum", [None, 0.9])
def test_additive_wrapper_equals_sgd_hd(x64, momentum):
  a0, beta = 0.05, 0.02
  alias = hgo.sgd_hd(a0, beta, momentum=momentum, min_rate=None)
  wrapped = _one_step(optax.sgd(a0, momentum=momentum),
                              rule="additive", hyper_lr=beta / a0 ** 2,
                              min_scale=None, overshoot_guard=False)
  p1, r1, _ = library_run(alias, steps=4)
  p2, r2, _ = library_run(wrapped, steps=4)
  for a, s in zip(r1, r2):
    np.testing.assert_allclose(float(a), a0 * float(s), rtol=1e-12)
  for k in _KEYS:
    np.testing.assert_allclose(p1[k], p2[k], rtol=1e-12, atol=1e-14)


@_ADAM
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_additive_wrapper_equals_adam_hd(x64, granularity):
  a0, beta = 0.05, 2e-3
  alias = hgo.adam_hd(a0, beta, b1=0.8, b2=0.9, eps=1e-3,
                      granularity=granularity)
  wrapped = _one_step(optax.adam(a0, b1=0.8, b2=0.9, eps=1e-3),
                              rule="additive", hyper_lr=beta / a0 ** 2,
                              granularity=granularity, overshoot_guard=False)
  p1, r1, _ = library_run(alias, steps=4)
  p2, r2, _ = library_run(wrapped, steps=4)
  for a, s in zip(r1, r2):
    a, s = _as_dict(a), _as_dict(s)
    for k in _KEYS:
      np.testing.assert_allclose(a[k], a0 * s[k], rtol=1e-12)
  for k in _KEYS:
    np.testing.assert_allclose(p1[k], p2[k], rtol=1e-12, atol=1e-14)


def test_multiplicative_wrapper_equals_multiplicative_alias(x64):
  # The multiplicative rule is unit-free: the same β on α and on s.
  alias = hgo.sgd_hd(0.05, 0.3, rule="multiplicative")
  wrapped = _one_step(optax.sgd(0.05), 0.3, overshoot_guard=False)
  _, r1, _ = library_run(alias, steps=4)
  _, r2, _ = library_run(wrapped, steps=4)
  for a, s in zip(r1, r2):
    np.testing.assert_allclose(float(a), 0.05 * float(s), rtol=1e-12)


# ------------------------------------------------------ NaN/Inf, buffers


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_non_finite_hypergradient_keeps_rate(x64, bad, granularity):
  g = _grad(_INIT)  # any step-2 gradient; only one entry is poisoned
  poisoned = {k: g[k].copy() for k in _KEYS}
  poisoned["w"][0, 1] = bad
  tx = hgo.sgd_hd(0.05, 0.02, momentum=0.9, granularity=granularity)
  _, rates, _ = library_run(tx, steps=3, grads_override={1: poisoned})
  before, after = _as_dict(rates[0]), _as_dict(rates[1])
  if granularity == "per-element":
    # Only the poisoned entry keeps its rate; the others move.
    assert after["w"][0, 1] == before["w"][0, 1]
    assert np.all(np.isfinite(after["w"]))
    assert after["b"][0] != before["b"][0]
  elif granularity == "per-tensor":
    assert after["w"] == before["w"] and after["b"] != before["b"]
  else:
    assert after["w"] == before["w"]
  # The rate stays finite on later steps too (the poisoned trace
  # makes later hypergradients non-finite, and they are ignored).
  assert all(np.all(np.isfinite(v)) for v in _as_dict(rates[2]).values())


@pytest.mark.parametrize("wrapper", [False, True])
def test_bfloat16_buffer_by_hand(wrapper):
  # Step 2's hypergradient sees the step-1 direction rounded to bfloat16.
  a0, beta = 0.05, 0.02
  if wrapper:
    tx = _one_step(optax.sgd(a0), beta / a0 ** 2, rule="additive",
                           buffer_dtype=jnp.bfloat16, overshoot_guard=False)
  else:
    tx = hgo.sgd_hd(a0, beta, buffer_dtype=jnp.bfloat16)
  params, rates, state = library_run(tx, steps=2, dtype=jnp.float32)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(state[3]))
  assert jax.tree.map(lambda p: p.dtype, params) == {"b": jnp.float32,
                                                      "w": jnp.float32}
  f32 = lambda x: np.asarray(x, np.float32)  # pylint: disable=unnecessary-lambda-assignment
  g0 = {k: f32(_CURVATURE[k]) * (f32(_INIT[k]) - f32(_TARGET[k]))
        for k in _KEYS}
  theta1 = {k: f32(_INIT[k]) - np.float32(a0) * g0[k] for k in _KEYS}
  g1 = {k: f32(_CURVATURE[k]) * (theta1[k] - f32(_TARGET[k])) for k in _KEYS}
  # The stored buffer: g0 for sgd_hd, the inner update -a0 g0 for the wrapper.
  stored = {k: -np.float32(a0) * g0[k] if wrapper else g0[k] for k in _KEYS}
  rounded = {k: np.asarray(jnp.asarray(stored[k], jnp.bfloat16), np.float64)
             for k in _KEYS}
  exact = sum(np.sum(g1[k] * stored[k].astype(np.float64)) for k in _KEYS)
  in_bf16 = sum(np.sum(g1[k] * rounded[k]) for k in _KEYS)
  assert exact != in_bf16  # the case is sensitive to the rounding
  if wrapper:  # s1 = 1 - (β/a0²) g1·ũ0, α1 = a0 s1
    expected = a0 * (1 - beta / a0 ** 2 * in_bf16)
    alpha = a0 * float(rates[1])
  else:  # α1 = α0 + β g1·d0
    expected, alpha = a0 + beta * in_bf16, float(rates[1])
  np.testing.assert_allclose(alpha, expected, rtol=1e-6)
  # About 2^-8 relative in h, not more.
  np.testing.assert_allclose(in_bf16, exact, rtol=2 ** -7)
