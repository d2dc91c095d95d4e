"""The optimizers the benchmark compares, built the same way for every task.

Every method gets the reference setup's coupled L2 weight decay (``g ← g +
λθ`` before the optimizer, as ``torch.optim`` does) except the AdamW pair,
whose decay is decoupled by definition. ``α0`` is the initial (or fixed)
learning rate; the learning-rate-free peers ignore it and run at their own
defaults, and ``β`` defaults to the paper's value per family.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from optax import contrib

import hypergrad_optax as hgo

# The paper's hyper learning rates at α0 = 1e-3 (additive rule).
BETA_SGD = 1e-3
BETA_ADAM = 1e-7
# The multiplicative rule's β is a relative change per step, unit-free: the
# library's default for the wrapper.
BETA_MULTIPLICATIVE = 0.1
MOMENTUM = 0.9


class Method(NamedTuple):
  """How to build one optimizer and read its current learning rate.

  Attributes:
    name: the name on the command line.
    family: ``'base'``, ``'hd'`` (a hypergradient method) or ``'peer'``
      (learning-rate free, ignores ``α0``).
    build: ``(alpha0, beta, weight_decay) -> GradientTransformation``.
    default_beta: β when ``--beta`` is not given (None: no β).
    rate: ``(state, alpha0) -> scalar`` the learning rate used by the last
      step (traceable), or NaN where the method has none.
    eval_params: ``(state, params) -> params`` where the loss should be
      evaluated (schedule-free), or None for the training params.
    description: one line for ``--help`` and tables.
  """
  name: str
  family: str
  build: Callable[[float, Optional[float], float], optax.GradientTransformation]
  default_beta: Optional[float]
  rate: Callable[[Any, float], jax.Array]
  eval_params: Optional[Callable[[Any, Any], Any]]
  description: str


def _coupled(weight_decay, tx):
  return optax.chain(optax.add_decayed_weights(weight_decay), tx)


def _fixed_rate(state, alpha0):
  del state
  return jnp.float32(alpha0)


def _hd_rate(state, alpha0):
  return jnp.asarray(hgo.get_learning_rate(state, base_learning_rate=alpha0),
                     jnp.float32)


def _no_rate(state, alpha0):
  del state, alpha0
  return jnp.float32(jnp.nan)


def _field_rate(cls, field, base=1.0):
  """Reads a peer's step-size estimate ``field`` out of its state."""
  def rate(state, alpha0):
    del alpha0
    for node in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, cls)):
      if isinstance(node, cls):
        value = getattr(node, field)
        return jnp.sum(jnp.asarray(value, jnp.float32)) * base
    return jnp.float32(jnp.nan)
  return rate


def _schedule_free_eval(state, params):
  for node in jax.tree.leaves(
      state, is_leaf=lambda x: isinstance(x, contrib.ScheduleFreeState)):
    if isinstance(node, contrib.ScheduleFreeState):
      return contrib.schedule_free_eval_params(node, params)
  return params


def _sgd_hd(momentum, nesterov, rule):
  def build(alpha0, beta, wd):
    return hgo.sgd_hd(alpha0, beta, momentum=momentum, nesterov=nesterov,
                      weight_decay=wd, rule=rule)
  return build


def _adam_hd(rule):
  def build(alpha0, beta, wd):
    return hgo.adam_hd(alpha0, beta, weight_decay=wd, rule=rule)
  return build


def _adamw_hd(rule):
  def build(alpha0, beta, wd):
    return hgo.adamw_hd(alpha0, beta, weight_decay=wd, rule=rule)
  return build


def _hypergradient(alpha0, beta, wd):
  # The wrapper's untuned defaults; the decay sits outside so that the
  # hypergradient sees the same gradient Adam does.
  kwargs = {} if beta is None else {"hyper_lr": beta}
  return _coupled(wd, hgo.hypergradient(optax.adam(alpha0), **kwargs))


def _method_table():
  mult = "multiplicative"
  add = "additive"
  nesterov = (MOMENTUM, True)
  rows = [
      Method("sgd", "base", lambda a, b, wd: _coupled(wd, optax.sgd(a)),
             None, _fixed_rate, None, "SGD"),
      Method("sgd_hd", "hd", _sgd_hd(None, False, add), BETA_SGD, _hd_rate,
             None, "SGD-HD (paper)"),
      Method("sgdn", "base",
             lambda a, b, wd: _coupled(
                 wd, optax.sgd(a, momentum=MOMENTUM, nesterov=True)),
             None, _fixed_rate, None, "SGD, Nesterov μ=0.9"),
      Method("sgdn_hd", "hd", _sgd_hd(*nesterov, add), BETA_SGD, _hd_rate,
             None, "SGDN-HD (paper)"),
      Method("adam", "base", lambda a, b, wd: _coupled(wd, optax.adam(a)),
             None, _fixed_rate, None, "Adam"),
      Method("adam_hd", "hd", _adam_hd(add), BETA_ADAM, _hd_rate, None,
             "Adam-HD (paper)"),
      Method("adamw", "base",
             lambda a, b, wd: optax.adamw(a, weight_decay=wd),
             None, _fixed_rate, None, "AdamW (decoupled decay)"),
      Method("adamw_hd", "hd", _adamw_hd(add), BETA_ADAM, _hd_rate, None,
             "AdamW-HD (decoupled decay)"),
      Method("sgd_hd_mult", "hd", _sgd_hd(None, False, mult),
             BETA_MULTIPLICATIVE, _hd_rate, None, "SGD-HD, multiplicative"),
      Method("sgdn_hd_mult", "hd", _sgd_hd(*nesterov, mult),
             BETA_MULTIPLICATIVE, _hd_rate, None, "SGDN-HD, multiplicative"),
      Method("adam_hd_mult", "hd", _adam_hd(mult), BETA_MULTIPLICATIVE,
             _hd_rate, None, "Adam-HD, multiplicative"),
      Method("adamw_hd_mult", "hd", _adamw_hd(mult), BETA_MULTIPLICATIVE,
             _hd_rate, None, "AdamW-HD, multiplicative"),
      Method("hypergradient", "hd", _hypergradient, None, _hd_rate, None,
             "hypergradient(optax.adam(α0)), untuned defaults"),
      Method("prodigy", "peer",
             lambda a, b, wd: _coupled(wd, contrib.prodigy()), None,
             _field_rate(contrib.ProdigyState, "estim_lr"), None,
             "optax.contrib.prodigy()"),
      Method("dadapt_adamw", "peer",
             lambda a, b, wd: _coupled(wd, contrib.dadapt_adamw()), None,
             _field_rate(contrib.DAdaptAdamWState, "estim_lr"), None,
             "optax.contrib.dadapt_adamw()"),
      Method("dog", "peer", lambda a, b, wd: _coupled(wd, contrib.dog()),
             None, _no_rate, None, "optax.contrib.dog()"),
      Method("mechanize", "peer",
             lambda a, b, wd: _coupled(
                 wd, contrib.mechanize(optax.adam(1.0))), None,
             _field_rate(contrib.MechanicState, "s"), None,
             "optax.contrib.mechanize(optax.adam(1.0))"),
      Method("cocob", "peer", lambda a, b, wd: _coupled(wd, contrib.cocob()),
             None, _no_rate, None, "optax.contrib.cocob()"),
      Method("schedule_free_adamw", "peer",
             lambda a, b, wd: _coupled(wd, contrib.schedule_free_adamw()),
             None, _no_rate, _schedule_free_eval,
             "optax.contrib.schedule_free_adamw() (loss at its eval params)"),
  ]
  return {m.name: m for m in rows}


METHODS = _method_table()

GROUPS = {
    "paper": ("sgd", "sgd_hd", "sgdn", "sgdn_hd", "adam", "adam_hd"),
    "base": tuple(n for n, m in METHODS.items() if m.family == "base"),
    "hd": tuple(n for n, m in METHODS.items() if m.family == "hd"),
    "peers": tuple(n for n, m in METHODS.items() if m.family == "peer"),
    "all": tuple(METHODS),
}

# Which base optimizer each HD method adapts (for pairing in tables).
BASE_OF = {
    "sgd_hd": "sgd", "sgd_hd_mult": "sgd", "sgdn_hd": "sgdn",
    "sgdn_hd_mult": "sgdn", "adam_hd": "adam", "adam_hd_mult": "adam",
    "hypergradient": "adam", "adamw_hd": "adamw", "adamw_hd_mult": "adamw",
}


def _expand(spec: str, methods, groups) -> list[str]:
  """The names in ``spec`` (comma-separated methods or groups), in order."""
  names = []
  for item in (s.strip() for s in spec.split(",")):
    if not item:
      continue
    if item in groups:
      names.extend(groups[item])
    elif item in methods:
      names.append(item)
    else:
      raise ValueError(
          f"unknown method {item!r}; choose from {', '.join(methods)} or a "
          f"group ({', '.join(groups)}).")
  if not names:
    raise ValueError("no method given.")
  return names


def parse_methods(spec: str) -> tuple[str, ...]:
  """``'sgd,adam_hd'`` or a group name (``paper``, ``hd``, ``all``...).

  Raises:
    ValueError: naming the unknown method and listing the known ones.
  """
  return tuple(dict.fromkeys(_expand(spec, METHODS, GROUPS)))


def beta_for(method: Method, beta: Optional[float]) -> Optional[float]:
  """``--beta`` for the HD methods when given, else the method's default."""
  if method.family != "hd":
    return None
  return beta if beta is not None else method.default_beta


# --------------------------------------------------------------------------
# The sweep's registry: name -> build(alpha0, base) -> optimizer.


class SweepMethod(NamedTuple):
  """One optimizer of ``hypergrad-bench sweep``.

  Attributes:
    name: the name on the command line and in ``sweep.csv``.
    family: ``'base'`` (the task's base at a fixed rate, tuned over the
      grid), ``'hd'`` (runs from every ``α0`` of the grid) or ``'peer'``
      (learning-rate free: runs once per seed).
    build: ``(alpha0, base) -> GradientTransformation``, where ``alpha0`` may
      be a traced value and ``base(learning_rate)`` builds the task's base
      optimizer (its schedule and weight decay included).
    description: one line for ``--help`` and tables.
    rate: ``(state, alpha0) -> scalar`` the rate of the last step (None:
      read it from a hypergradient state, else from ``inject_hyperparams``,
      else NaN).
    eval_params: ``(state, params) -> params`` for the validation loss.
  """
  name: str
  family: str
  build: Callable[[Any, Callable[[Any], optax.GradientTransformation]],
                  optax.GradientTransformation]
  description: str
  rate: Optional[Callable[[Any, Any], jax.Array]] = None
  eval_params: Optional[Callable[[Any, Any], Any]] = None


SWEEP_FAMILIES = ("base", "hd", "peer")
SWEEP_METHODS: dict = {}
# Named subsets for --methods; every registered name is also a group of one.
SWEEP_GROUPS: dict = {}


def register(name: str, family: str, build, description: str, *,
             rate=None, eval_params=None, groups=()) -> SweepMethod:
  """Adds a method to the sweep's registry (and to ``groups``).

  Example: a candidate default rule, run from every α0 of the grid::

    methods.register(
        "hg_h100", "hd",
        lambda a, base: hgo.hypergradient(base(a), horizon=100),
        "hypergradient(base, horizon=100)", groups=("candidates",))

  Args:
    name: a new name (letters, digits, ``_``, ``-``).
    family: one of ``'base'``, ``'hd'``, ``'peer'``.
    build: ``(alpha0, base) -> GradientTransformation``.
    description: one line.
    rate: optional ``(state, alpha0) -> scalar``.
    eval_params: optional ``(state, params) -> params``.
    groups: the groups it joins (created when new).

  Returns:
    The :class:`SweepMethod`.

  Raises:
    ValueError: a bad family or a name already taken.
  """
  if family not in SWEEP_FAMILIES:
    raise ValueError(f"family must be one of {', '.join(SWEEP_FAMILIES)}; "
                     f"got {family!r}.")
  if name in SWEEP_METHODS or name in SWEEP_GROUPS:
    raise ValueError(f"method name {name!r} is already registered.")
  method = SweepMethod(name, family, build, description, rate, eval_params)
  SWEEP_METHODS[name] = method
  for group in (family, "all") + tuple(groups):
    SWEEP_GROUPS[group] = SWEEP_GROUPS.get(group, ()) + (name,)
  return method


def auto_rate(state, alpha0):
  """The rate of the last step: a hypergradient state's (effective rate,
  schedules included), else an ``inject_hyperparams`` ``learning_rate``,
  else NaN."""
  del alpha0
  try:
    rate = hgo.get_learning_rate(state)
  except (ValueError, KeyError, TypeError, AttributeError):
    rate = None
  if rate is None:
    kinds = (optax.InjectHyperparamsState,
             optax.InjectStatefulHyperparamsState)
    for node in jax.tree.leaves(state,
                                is_leaf=lambda x: isinstance(x, kinds)):
      if isinstance(node, kinds):
        rate = node.hyperparams.get("learning_rate")
        break
  if rate is None:
    return jnp.float32(jnp.nan)
  return jnp.asarray(rate, jnp.float32).reshape(-1)[0]


def _register_defaults():
  default = ("default",)
  register("base", "base", lambda a, base: base(a),
           "the task's base optimizer at a constant (or scheduled peak) rate",
           groups=default)
  register("hypergradient", "hd", lambda a, base: hgo.hypergradient(base(a)),
           "hypergradient(base(α0)): the wrapper's untuned defaults, around "
           "the task's base (its schedule included)", groups=default)
  for horizon in (1, 100, 300, 1000):
    register(f"hypergradient_h{horizon}", "hd",
             lambda a, base, horizon=horizon: hgo.hypergradient(
                 base(a), horizon=horizon),
             f"hypergradient(base(α0), horizon={horizon}): the discounted "
             "tangent over about that many steps (1: the one-step rule)",
             groups=("horizon",))
  # Past defaults: (version, the options that give it back, those options
  # as written in the description, what it was). Those from 0.7.0 to 0.13.0
  # also need max_relative_step=0.1 (0.05 in 0.14.0, (0.05, 0.1) in 0.15.0,
  # (0.03, 0.1) since 0.16.0), and those before 0.13.0 start_log_step=None
  # (the default since 0.13.0).
  gate = functools.partial(hgo.rules.NoiseGate, start_log_step=None)
  kappa = dict(max_relative_step=0.1)
  past = (
      ("0150", dict(max_relative_step=(0.05, 0.1)),
       "max_relative_step=(0.05, 0.1)",
       "the 0.15.0 default, the relative step bound at 5 % of the norm, 10 % "
       "on a step where the rule raises the factor"),
      ("0140", dict(max_relative_step=0.05),
       "max_relative_step=0.05",
       "the 0.14.0 default, the relative step bound at 5 % of the norm on "
       "every step"),
      ("0130", dict(kappa),
       "max_relative_step=0.1",
       "the 0.13.0 default, the relative step bound at 10 % of the norm"),
      ("0120", dict(kappa, noise_gate=gate()),
       "max_relative_step=0.1, noise_gate=rules.NoiseGate("
       "start_log_step=None)",
       "the 0.11.0 and 0.12.0 default, without the start's longer log step"),
      ("0100", dict(kappa, noise_gate=gate(recovery=None)),
       "max_relative_step=0.1, noise_gate=rules.NoiseGate(recovery=None, "
       "start_log_step=None)",
       "the 0.10.0 default, without the gate's recovery after the guard's "
       "cuts"),
      ("090", dict(kappa, noise_gate=gate(soft_ceiling=False,
                                          recovery=None)),
       "max_relative_step=0.1, noise_gate=rules.NoiseGate("
       "soft_ceiling=False, recovery=None, start_log_step=None)",
       "the 0.9.0 default, the log step's ceiling at the rate that "
       "overshot"),
      ("080", dict(kappa, overshoot_guard="secant",
                   noise_gate=gate(soft_ceiling=False, recovery=None)),
       "max_relative_step=0.1, overshoot_guard='secant', "
       "noise_gate=rules.NoiseGate(soft_ceiling=False, recovery=None, "
       "start_log_step=None)",
       "the 0.8.0 default, the guard's secant cap"),
      ("070", dict(kappa, overshoot_guard="secant",
                   noise_gate=gate(log_step=None, recovery=None)),
       "max_relative_step=0.1, overshoot_guard='secant', "
       "noise_gate=rules.NoiseGate(log_step=None, recovery=None, "
       "start_log_step=None)",
       "the 0.7.0 default, without the gate's log step"),
      ("060", dict(max_relative_step=0.3, overshoot_guard="secant",
                   noise_gate=gate(log_step=None, recovery=None)),
       "max_relative_step=0.3, overshoot_guard='secant', noise_gate="
       "rules.NoiseGate(log_step=None, recovery=None, start_log_step=None)",
       "the 0.5.0 and 0.6.0 default"),
      ("040", dict(noise_gate=None, max_relative_step=0.3,
                   overshoot_guard="secant"),
       "noise_gate=None, max_relative_step=0.3, overshoot_guard='secant'",
       "the 0.4.0 default, without the noise gate"),
      ("030", dict(noise_gate=None, max_relative_step=None,
                   overshoot_guard="secant"),
       "noise_gate=None, max_relative_step=None, overshoot_guard='secant'",
       "the 0.3.0 default"),
  )
  for version, options, written, what in past:
    register(f"hypergradient_v{version}", "hd",
             lambda a, base, options=options: hgo.hypergradient(base(a),
                                                                **options),
             f"hypergradient(base(α0), {written}): {what}",
             groups=("horizon",))
  register("adam_hd", "hd", lambda a, base: hgo.adam_hd(a, BETA_ADAM),
           f"adam_hd(α0, {BETA_ADAM:g}): the paper's additive Adam-HD",
           groups=default)
  register("adam_hd_mult", "hd",
           lambda a, base: hgo.adam_hd(a, BETA_MULTIPLICATIVE,
                                       rule="multiplicative"),
           f"adam_hd(α0, {BETA_MULTIPLICATIVE:g}, rule='multiplicative')",
           groups=default)
  register("sgd_hd", "hd", lambda a, base: hgo.sgd_hd(a, BETA_SGD),
           f"sgd_hd(α0, {BETA_SGD:g}): the paper's SGD-HD")
  register("sgdn_hd", "hd",
           lambda a, base: hgo.sgd_hd(a, BETA_SGD, momentum=MOMENTUM,
                                      nesterov=True),
           f"sgd_hd(α0, {BETA_SGD:g}, Nesterov μ={MOMENTUM:g}): SGDN-HD")
  register("sgd_hd_mult", "hd",
           lambda a, base: hgo.sgd_hd(a, BETA_MULTIPLICATIVE,
                                      rule="multiplicative"),
           "sgd_hd, multiplicative rule")
  peers = {
      "prodigy": (lambda: contrib.prodigy(),
                  _field_rate(contrib.ProdigyState, "estim_lr"), None),
      "dadapt_adamw": (lambda: contrib.dadapt_adamw(),
                       _field_rate(contrib.DAdaptAdamWState, "estim_lr"),
                       None),
      "dog": (lambda: contrib.dog(), _no_rate, None),
      "mechanize": (lambda: contrib.mechanize(optax.adam(1.0)),
                    _field_rate(contrib.MechanicState, "s"), None),
      "cocob": (lambda: contrib.cocob(), _no_rate, None),
      "schedule_free_adamw": (lambda: contrib.schedule_free_adamw(),
                              _no_rate, _schedule_free_eval),
  }
  for name, (make, rate, eval_params) in peers.items():
    register(name, "peer", lambda a, base, make=make: make(),
             f"optax.contrib.{name}() at its defaults", rate=rate,
             eval_params=eval_params, groups=default)


_register_defaults()


def parse_sweep_methods(spec: str) -> tuple[str, ...]:
  """``'base,hypergradient'``, a group (``default``, ``hd``, ``peer``,
  ``all``...) or a mix; the base is always included (it defines regret).

  Raises:
    ValueError: naming the unknown method and listing the known ones.
  """
  names = _expand(spec, SWEEP_METHODS, SWEEP_GROUPS)
  base = [n for n in SWEEP_METHODS if SWEEP_METHODS[n].family == "base"]
  return tuple(dict.fromkeys(base[:1] + names))
