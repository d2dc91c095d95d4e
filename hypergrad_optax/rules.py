"""Rate rules: how the adapted rate moves, given its hypergradient.

A rate rule is one small object, :class:`RateRule`: ``init(rate)`` gives its
state (the optimizer state's ``hyper_state``) and ``update(rate, signals,
state)`` the next rate. :class:`RateSignals` carries what every rule may use,
each reduced like the rate (one value, one per tensor or one per element):

* ``hypergradient``: :math:`\\partial f(\\theta_{t-1}) / \\partial r_{t-1}`,
  the sign of the update included (``-g_t·d_{t-1}`` for the aliases,
  ``g_t·ũ_{t-1}`` for the wrapper);
* ``grad_norm`` and ``direction_norm``: :math:`\\|g_t\\|` and
  :math:`\\|D_{t-1}\\|`, whose product bounds the hypergradient (Cauchy-
  Schwarz), so ``hypergradient / (grad_norm · direction_norm)`` is a cosine;
* ``previous_grad_norm``: :math:`\\|g_{t-1}\\|` when the rule keeps it (the
  overshoot guard), else None.
* ``step_hypergradient`` and ``step_direction_norm``: :math:`g_t·d_{t-1}`
  (sign included) and :math:`\\|d_{t-1}\\|` along the last step alone. With
  the paper's one-step rule they are ``hypergradient`` and ``direction_norm``;
  with a longer horizon those two are taken along the discounted tangent
  :math:`D_{t-1} = Z_{t-1}` and these keep what the last step did (the
  overshoot guard reads them).

Rules are built from three kinds of pieces, each a plain function or an
Optax transform, that compose:

* a *feedback* (:func:`additive_feedback`, :func:`multiplicative_feedback`)
  turns the signals into the gradient the rate's optimizer sees;
* a *step* is any Optax transform on the rate, ``optax.sgd(β)`` being the
  paper's (the ``hyper_optimizer`` argument), or a step on ``log r``
  (:func:`scale_by_log_rate`);
* *constraints* map ``(old rate, proposed rate, signals)`` to the accepted
  rate: :func:`overshoot_cap`, :func:`bounds`; every rule ends with
  :func:`keep_finite`.

:func:`descend` and :func:`constrained` assemble them. Unused signals cost
nothing under ``jax.jit`` (XLA drops what no rule reads).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

from hypergrad_optax import _validation

Rate = Any
Feedback = Callable[[Rate, "RateSignals"], Rate]
Constraint = Callable[[Rate, Rate, "RateSignals"], Rate]


class RateSignals(NamedTuple):
  """What a rate rule sees at step ``t``, each reduced like the rate.

  Attributes:
    hypergradient: ``∂f(θ_{t-1}) / ∂r_{t-1}`` (sign of the update included).
    grad_norm: ``‖g_t‖``.
    direction_norm: ``‖D_{t-1}‖``, the norm of the tangent the
      hypergradient was taken along (the previous direction).
    previous_grad_norm: ``‖g_{t-1}‖`` for rules that keep it, else None.
    step_hypergradient: ``g_t·d_{t-1}`` (sign included) along the last step
      alone, where ``D_{t-1}`` is a longer tangent; None: ``hypergradient``.
    step_direction_norm: ``‖d_{t-1}‖`` likewise; None: ``direction_norm``.
  """
  hypergradient: Rate
  grad_norm: Rate
  direction_norm: Rate
  previous_grad_norm: Optional[Rate] = None
  step_hypergradient: Optional[Rate] = None
  step_direction_norm: Optional[Rate] = None

  def last_step(self) -> tuple[Rate, Rate]:
    """``(g_t·d_{t-1}, ‖d_{t-1}‖)``: the signals of the last step alone."""
    if self.step_hypergradient is None:
      return self.hypergradient, self.direction_norm
    return self.step_hypergradient, self.step_direction_norm


class RateRule(NamedTuple):
  """How the rate moves: ``init(rate) -> state``, ``update(rate, signals,
  state) -> (rate, state)``.

  Attributes:
    init: the rule's initial state from the initial rate (the optimizer
      state's ``hyper_state``; ``()`` for the paper's plain-SGD step).
    update: one step of the rate.
    keeps_grad_norm: True when the rule reads ``previous_grad_norm``: the core
      then keeps ``‖g_t‖`` in the state's ``previous_grad_norm`` field.
  """
  init: Callable[[Rate], Any]
  update: Callable[[Rate, RateSignals, Any], tuple[Rate, Any]]
  keeps_grad_norm: bool = False


def cosine(signals: RateSignals) -> Rate:
  """``hypergradient / (‖g_t‖ ‖D_{t-1}‖)`` in [-1, 1]; 0 where undefined.

  No previous direction (the first step) or a zero gradient carries no
  information about the rate. A non-finite hypergradient or norm (a NaN or
  overflowed gradient) stays non-finite, so that the step that follows is
  skipped (:func:`optimizer_step`, :func:`keep_finite`) rather than fed 0.
  """
  def leaf(h, g, d):
    norm = g * d
    cos = jnp.where(norm > 0, h / jnp.where(norm > 0, norm, 1), 0)
    return jnp.where(jnp.isfinite(h) & jnp.isfinite(norm), cos, jnp.nan)
  return jax.tree.map(leaf, signals.hypergradient, signals.grad_norm,
                      signals.direction_norm)


def last_step_cosine(signals: RateSignals) -> Rate:
  """:func:`cosine` of the last step alone, ``g_t·d_{t-1} / (‖g_t‖ ‖d_{t-1}‖)``
  (:meth:`RateSignals.last_step`; the tangent's cosine with the one-step
  rule)."""
  step_h, step_norm = signals.last_step()
  return cosine(signals._replace(hypergradient=step_h,
                                 direction_norm=step_norm))


def additive_feedback(rate: Rate, signals: RateSignals) -> Rate:
  """The paper's: the rate's gradient is its hypergradient ``h``."""
  del rate
  return signals.hypergradient


def multiplicative_feedback(rate: Rate, signals: RateSignals) -> Rate:
  """``r · h / (‖g‖ ‖D‖)``: SGD with ``β`` on it is the paper's
  multiplicative rule ``r_t = r_{t-1} (1 - β cos)``, a relative change of at
  most ``β`` per step whatever the loss's units."""
  return jax.tree.map(lambda r, c: r * c, rate, cosine(signals))


def cosine_feedback(rate: Rate, signals: RateSignals) -> Rate:
  """The cosine itself: the feedback of steps taken on ``log r``."""
  del rate
  return cosine(signals)


def _all_finite(tree) -> jax.Array:
  leaves = jax.tree.leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def optimizer_step(optimizer: optax.GradientTransformation, state: Any,
                   rate: Rate, grad: Rate, *, per_entry: bool = False,
                   **extra_args) -> tuple[Rate, Any]:
  """One step of ``optimizer`` on the rate, skipped when ``grad`` is not finite.

  A NaN/Inf gradient of the rate carries no information: like
  ``optax.apply_if_finite``, a stateful optimizer's whole step (rate and
  state) is skipped, so that neither its moments nor, when stacked, its own
  stored hypergradient are poisoned for the rest of training. With
  ``per_entry`` (for stateless optimizers, followed by :func:`keep_finite`)
  only the non-finite entries keep their old rate.
  """
  updates, new_state = optimizer.update(grad, state, rate, **extra_args)
  proposed = jax.tree.map(lambda r, u: r + u.astype(r.dtype), rate, updates)
  if per_entry:
    return proposed, new_state
  finite = _all_finite(grad)
  keep = lambda new, old: jnp.where(finite, new, old)  # pylint: disable=unnecessary-lambda-assignment
  return (jax.tree.map(keep, proposed, rate),
          jax.tree.map(keep, new_state, state))


def sgd(hyper_lr: Any) -> optax.GradientTransformation:
  """Plain SGD on the rate with ``β = hyper_lr``: the paper's step.

  Stateless (its state is ``()``, the checkpoint schema of the default rule),
  and ``β`` is taken in the rate's precision.
  """
  def update_fn(grad, state, params=None):
    del params
    return jax.tree.map(lambda g: -jnp.asarray(hyper_lr, g.dtype) * g,
                        grad), state
  return optax.GradientTransformation(lambda rate: (), update_fn)


def descend(feedback: Feedback,
            optimizer: optax.GradientTransformation) -> RateRule:
  """A rule that feeds ``feedback(rate, signals)`` to ``optimizer`` on the rate.

  ``optimizer`` sees the rate as its params and the feedback as their
  gradient; its update is added to the rate (:func:`optimizer_step`).
  ``descend(additive_feedback, sgd(β))`` is the paper's rule. The signals are
  passed on as the extra argument ``signals=`` (transforms that do not take it
  ignore it).
  """
  optimizer = optax.with_extra_args_support(optimizer)

  def update(rate, signals, state):
    return optimizer_step(optimizer, state, rate, feedback(rate, signals),
                          per_entry=not jax.tree.leaves(state),
                          signals=signals)

  return RateRule(optimizer.init, update)


def constrained(rule: RateRule, *constraints: Constraint,
                keeps_grad_norm: bool = False) -> RateRule:
  """``rule`` followed by ``constraints`` in order, then :func:`keep_finite`.

  Each constraint maps ``(old rate, proposed rate, signals)`` to the rate it
  accepts. ``keeps_grad_norm``: a constraint reads ``previous_grad_norm``.
  """
  def update(rate, signals, state):
    proposed, state = rule.update(rate, signals, state)
    for constraint in (*constraints, keep_finite):
      proposed = constraint(rate, proposed, signals)
    return proposed, state

  return RateRule(rule.init, update, rule.keeps_grad_norm or keeps_grad_norm)


def keep_finite(rate: Rate, proposed: Rate, signals: RateSignals) -> Rate:
  """A NaN/Inf entry (e.g. from an overflowed gradient) keeps the old rate,
  cast to the rate's dtype so that the state's dtypes never drift."""
  del signals
  return jax.tree.map(
      lambda old, new: jnp.where(jnp.isfinite(new), new, old).astype(old.dtype),
      rate, proposed)


def bounds(min_rate: Any = None, max_rate: Any = None) -> Constraint:
  """Clips the rate to ``[min_rate, max_rate]`` (None: no bound that side)."""
  def constraint(rate, proposed, signals):
    del rate, signals
    def leaf(new):
      if min_rate is not None:
        new = jnp.maximum(new, jnp.asarray(min_rate, new.dtype))
      if max_rate is not None:
        new = jnp.minimum(new, jnp.asarray(max_rate, new.dtype))
      return new
    return jax.tree.map(leaf, proposed)
  return constraint


# The last step overshot where its cosine g_t·d_{t-1} / (‖g_t‖ ‖d_{t-1}‖) (sign
# included) exceeds this: with a longer horizon the rule then follows the last
# step (follow_last_step) and the tangent restarts. A step that overshoots
# into growth has one near 1 (0.94 on the edge of stability of a full-batch
# tanh MLP under optax.sgd(0.1)). At 0.5 minibatch noise on a 225-parameter
# regression crossed it often enough to pull the rate of a 4,000-step run 8x
# lower (tests/test_default_rule.py); at 0.8 it never did there. (Requiring it
# of the cap as well, h > 3A, spared the Friedman sweep task the cap's noise
# triggers but let mlp-wine diverge from every α0: in minibatch divergence
# the gradient explodes along other directions, cosine 0.1-0.4.)
LAST_STEP_COSINE = 0.8


# With a longer horizon the cap acts only where the tangent's cosine exceeds
# this too: the recent path as a whole overshot, not one minibatch. Single
# minibatches with a gradient much larger than the last one's (h > 3A) are
# common once noise dominates; each cut the rate 10-50x, and the rate of a
# digits MLP saw-toothed at a tenth to a hundredth of the tuned rate (sweep:
# worst regret 1.33 -> 1.01). Where minibatch training starts to diverge
# (mlp-wine from large rates) the tangent's cosine stays above 0.03 for tens
# of steps; at 0 the cap missed too little of the noise (Friedman from 0.1:
# 8.2x tuned Adam, 1.9x at 0.03).
OVERSHOOT_TANGENT_COSINE = 0.03


# The overshoot guard acts when h > OVERSHOOT_RATIO * A (see overshoot_cap).
# h / A is about the growth factor of the gradient along the last step. At 1
# (any growth) minibatch noise on a plateau triggered it often enough to stall
# a digits MLP (final loss 0.051 vs 0.035 unguarded, from lr 1e-5); at 4 or
# more it missed the moderate divergence (growth 2-4x per step) of
# hypergradient(optax.sgd(0.1)) on a full-batch tanh MLP. 3 rescues every
# deterministic case of the tests and costs little in minibatch training.
# Noise still reaches just past it (h = 3-5 A on the Friedman regression at
# a fiftieth to a half of the tuned rate, the last minibatch's gradient a
# third of the typical norm): since 0.9.0 the cap is soft there
# (overshoot_cap), which took the Friedman sweep task from 2.89 / 2.20 to
# 2.08 / 1.30 (worst / median regret, 30 seeds; docs/results.md, (m)).
OVERSHOOT_RATIO = 3.0


# The noise gate (noise_gate, on by default since 0.5.0): the tangent's
# running mean cosine must clear NOISE_GATE_Z standard errors, over about
# 1 / (1 - NOISE_GATE_DECAY) steps, or this step's cosine must lie more than
# NOISE_GATE_DEVIATION_Z running standard deviations from that mean (a
# Shewhart control limit). Without the second test the gate stalled
# hypergradient(optax.sgd(0.1)) on the Rosenbrock function at (0.96, 0.92)
# and optax.adam(0.1) at (0.60, 0.31): riding the edge of stability the mean
# cosine is -0.4 (std 0.5), and it blocked the overshoots' cuts (cosine
# +0.5, a step in six). With it at 1.5, sgd(0.1) wandered near (0.99, 0.98)
# instead of converging and two of optax's contrib-suite bases
# (noisy_sgd, optimistic_gradient_descent) crawled on Rosenbrock; at 1.0 all
# converge. Over 30 seeds of mlp-friedman (worst / median regret over
# α0 = 1e-1 ... 1e-5): z = 1: 3.14 / 2.86, z = 2: 3.06 / 2.72 (ungated:
# 3.25 / 3.03); z = 3 and the deviation test alone were not better (10
# seeds). docs/results.md, section (i).
NOISE_GATE_Z = 2.0
NOISE_GATE_DECAY = 0.99
NOISE_GATE_DEVIATION_Z = 1.0


# The gate's log step (opt-in in 0.6.0 and 0.7.0, default since 0.8.0, with
# its ceiling at the last rate that overshot). Over 30 seeds, worst / median
# regret over α0 = 1e-1 ... 1e-5 (0.7.0's relative step bound, 0.1):
# mlp-friedman 2.89 / 2.20 against 3.06 / 2.72 without the log step;
# mlp-wine 1.00 / 0.996 against 1.03 / 0.997; mlp-digits-long (10 seeds)
# 0.970 / 0.966 against 0.990 / 0.987. Without the ceiling one digits run of
# 90 from 0.0316 ended at 14.9x tuned Adam's loss (at the 0.3 bound of 0.6.0:
# 6 runs, up to 58x): after each overshoot's cut the rate climbed straight
# back past the rate that had overshot. docs/results.md, section (l).
NOISE_GATE_LOG_STEP = 0.05

# The gate's recovery after the guard's cuts (default since 0.11.0). On the
# Friedman regression guard readings, after a minibatch whose gradient was
# a third of the typical norm, cut the rate by a median of 1.8x (a tenth of
# them by 3.4x or more), at rates well below the tuned one; on the runs that
# end worst they add up (a median of 6 a run), and the gate's evidence is
# then too weak to climb back.
# Over 30 seeds (worst / median regret over α0 = 1e-1 ... 1e-5): climbing
# back 70 % of each cut took mlp-friedman from 1.81 / 1.18 to 1.25 / 1.04
# and mlp-wine from 1.00 / 0.995 to 0.994 / 0.992, at a price on
# mlp-digits-long: 0.970 / 0.964 to 1.17 / 0.980 (2 of 270 runs above 1.2x,
# one at 6.6x; 0.10.0: none).
# The whole cut: Friedman 1.11, but the digits MLP's cuts at the edge of
# stability were undone (2.19 / 1.03, 10 seeds); half: Friedman 1.46.
# Held only where the mean asks for a lower rate (not this step's cosine),
# any recovery stalled sgd(0.1) on the Rosenbrock function.
# docs/results.md, section (p).
NOISE_GATE_RECOVERY = 0.7
NOISE_GATE_RECOVERY_STEP = 0.1

# The start's log step (opt-in in 0.12.0, default since 0.13.0): until the
# guard's first reading or the first step whose cosine asks for a lower
# rate, TCP's slow start. Over the sweep (worst / median regret over
# α0 = 1e-1 ... 1e-5; runs above 2x tuned Adam), against 0.12.0's default:
# mlp-friedman (60 seeds) 1.26 / 1.00, 24 of 540, to 1.18 / 0.966, 15;
# charlm (2 epochs, 3 seeds) from 1e-5 1.43 to 1.17; mlp-wine (30)
# 0.994 / 0.992 to 0.997 / 0.989; mlp-digits-long (60) 1.07 / 0.981,
# worst run 6.6x, to 1.02 / 0.983, worst run 3.0x (3 of 540 above 2x,
# against 1).
# Ended only where the running mean asked for a lower rate (0.12.0's
# opt-in), the climb on ReLU MLPs from a small α0 went on long after the
# cosines had turned (the mean remembers ~100 steps of the climb): the
# quickstart notebook's MLP from 1e-5, 6 epochs, ended at 0.27-0.33 against
# 0.09-0.16; ended by a reading alone: digits 1.27 / 1.00; at 0.2: a wine
# run at 6x. docs/results.md, (q) and (r).
NOISE_GATE_START_LOG_STEP = 0.1


class NoiseGate(NamedTuple):
  """The noise gate's settings: ``hypergradient(noise_gate=NoiseGate(...))``.

  A number ``z`` passed as ``noise_gate`` means ``NoiseGate(z)``. See
  :func:`noise_gate` for what each does. The log step (default since 0.8.0;
  ``log_step=None, recovery=None`` gives back the 0.7.0 gate) lets the rate
  climb off a noisy plateau, up to a ceiling that the overshoot guard's
  readings set (soft since 0.10.0; ``soft_ceiling=False, recovery=None``
  gives back the 0.9.0 gate): over 30 seeds the log step took the Friedman
  regression's median regret from 2.72 to 2.20, the soft ceiling (under the
  guard's soft cap) from 1.30 to 1.18; see ``docs/how_it_works.md`` ("The
  log step"). The recovery (default since 0.11.0; ``recovery=None`` gives
  back the 0.10.0 gate) climbs back part of each of the guard's cuts:
  Friedman's worst / median from 1.81 / 1.18 to 1.25 / 1.04 ("The gate's
  recovery"). The start's log step (default since 0.13.0;
  ``start_log_step=None`` gives back the 0.11.0-0.12.0 gate, and the older
  gates above need it too) is twice as long until the guard's first
  reading or the first step whose cosine asks for a lower rate: Friedman
  from 1.26 / 1.00 to 1.18 / 0.966 over 60 seeds ("The slow start").

  Attributes:
    z: how many standard errors the cosine's running mean must clear.
    decay: the running moments' decay (about ``1 / (1 - decay)`` steps).
    deviation_z: the control limit, in running standard deviations, beyond
      which this step's cosine passes its move on its own; None: none.
    log_step: the least upward drift of the log-rate per step along a
      clear mean (``NOISE_GATE_LOG_STEP`` = 0.05); None: the rule's own
      moves (the 0.5.0-0.7.0 default).
    soft_ceiling: the log step's ceiling after an overshoot reading is
      above the rate that overshot by as much as the reading is marginal,
      but not above the ceiling before (the default since 0.10.0); False:
      that rate itself (0.8.0, 0.9.0).
    recovery: after a cut of the overshoot guard, the fraction of the cut
      (in log-rate) the rate climbs back, in [0, 1]
      (``NOISE_GATE_RECOVERY`` = 0.7, the default since 0.11.0); None: none
      (0.10.0 and before).
    recovery_step: the most the climb back raises the log-rate per step
      (``NOISE_GATE_RECOVERY_STEP`` = 0.1).
    start_log_step: the log step until the overshoot guard's first reading
      or the first step whose cosine asks for a lower rate
      (``NOISE_GATE_START_LOG_STEP`` = 0.1, the default since 0.13.0; new
      in 0.12.0, where it was opt-in and ended only where the running mean
      asked for a lower rate); None: ``log_step`` throughout (0.12.0 and
      before).

  Example:
    >>> import optax, hypergrad_optax as hgo
    >>> from hypergrad_optax import rules
    >>> tx = hgo.hypergradient(optax.adam(1e-3),
    ...                        noise_gate=rules.NoiseGate(log_step=None))
  """
  z: float = NOISE_GATE_Z
  decay: float = NOISE_GATE_DECAY
  deviation_z: Optional[float] = NOISE_GATE_DEVIATION_Z
  log_step: Optional[float] = NOISE_GATE_LOG_STEP
  # Over 30 seeds (worst / median regret over α0 = 1e-1 ... 1e-5): Friedman
  # 1.81 / 1.18 against 2.08 / 1.30 with the ceiling at the rate (0.9.0),
  # wine 1.00 / 0.995 against 1.00 / 0.993, digits 0.970 / 0.964 against
  # 0.970 / 0.965. Not bounded by the ceiling before, digits ratcheted
  # (0.997 / 0.970, 4 of 270 runs at 1.2-1.9x); without any ceiling it saws
  # (5.46, 10 seeds). docs/results.md, section (n).
  soft_ceiling: bool = True
  recovery: Optional[float] = NOISE_GATE_RECOVERY
  recovery_step: float = NOISE_GATE_RECOVERY_STEP
  start_log_step: Optional[float] = NOISE_GATE_START_LOG_STEP

  def checked(self, prefix: str = "") -> "NoiseGate":
    """These settings, each checked; an error names ``prefix`` + the field
    (``'noise_gate.'`` from the wrapper)."""
    _validation.check_non_negative(prefix + "z", self.z)
    _validation.check_unit_interval(prefix + "decay", self.decay)
    for name in ("deviation_z", "log_step", "start_log_step"):
      if getattr(self, name) is not None:
        _validation.check_non_negative(prefix + name, getattr(self, name))
    _validation.check_choice(prefix + "soft_ceiling", self.soft_ceiling,
                             (True, False))
    if self.recovery is not None:
      _validation.check_closed_unit_interval(prefix + "recovery",
                                             self.recovery)
    _validation.check_positive(prefix + "recovery_step", self.recovery_step)
    return self


def overshoots(step_hypergradient: Rate, bound: Rate,
               tangent_cosine: Optional[Rate] = None) -> Rate:
  """Whether the overshoot guard reads an overshoot (one leaf or scalar).

  ``h > OVERSHOOT_RATIO · A`` along the last step (``A = ‖g_{t-1}‖‖d_{t-1}‖``)
  and, with a longer horizon (``tangent_cosine`` given), the tangent's cosine
  above ``OVERSHOOT_TANGENT_COSINE``: the one test :func:`overshoot_cap` and
  ``hgo.diagnose`` share.
  """
  over = step_hypergradient > OVERSHOOT_RATIO * bound
  if tangent_cosine is not None:
    over = over & (tangent_cosine > OVERSHOOT_TANGENT_COSINE)
  return over


def _past_threshold(step_hypergradient: Rate, bound: Rate) -> Rate:
  """How far ``h`` lies past the overshoot guard's threshold, ``h - 3A``
  (one leaf; > 0 where :func:`overshoots` reads one): the soft threshold
  both :func:`overshoot_cap` and the noise gate's ceiling measure from."""
  return step_hypergradient - OVERSHOOT_RATIO * bound


def overshoot_cap(active: Any = True, soft: bool = True) -> Constraint:
  r"""Caps the rate after a large overshoot of the last step.

  Along the last step, ``φ(σ) = f(θ_{t-2} + σ d_{t-1})`` had slope
  ``φ'(0) = g_{t-1}·d_{t-1} >= -A`` at its start, ``A = ‖g_{t-1}‖‖d_{t-1}‖``,
  and has slope ``h = φ'(r) > 0`` now: it passed a minimum. Fitting ``φ'``
  linearly puts that minimum at ``r |φ'(0)| / (|φ'(0)| + h) <= r A / (A + h)``,
  so capping at ``r A / (A + h)`` never shrinks more than the secant does.
  Acting only when ``h > 3 A`` (the new gradient's component along the step
  exceeds three times the old gradient's norm, as in divergence; see
  ``OVERSHOOT_RATIO``) keeps most gradient noise from triggering it. No rule
  that changes the rate by a bounded ratio per step shrinks it fast enough
  when the step is far too large. With a longer horizon the guard still
  reads the last step alone (:meth:`RateSignals.last_step`), not the tangent,
  and acts only where the tangent's cosine exceeds
  ``OVERSHOOT_TANGENT_COSINE`` too (the recent path overshot, not only the
  last minibatch).

  Minibatch noise alone reaches just past the threshold: a minibatch whose
  gradient is a few times the last one's, along the step (on a noisy
  regression, ``h`` from 3 to 5 ``A`` well below the tuned rate). The
  secant cuts such a reading by 4 to 6 times, and the rate does not climb
  back. So by default (``soft``) the secant is fitted to the part of ``h``
  past the threshold, a soft threshold (Donoho, 1995):

  .. math::
    r_t \le r\,\frac{A}{A + (h - 3A)^+},

  no cut at ``h = 3A``, a continuous cut beyond, and nearly the secant's
  for a far overshoot (``h = 20 A``: ``r / 18`` against ``r / 21``).

  Args:
    active: a boolean (possibly traced, e.g. ``β > 0`` so that ``β = 0``
      reproduces the inner optimizer exactly) that switches the cap on.
    soft: the soft threshold (the default since 0.9.0); False: the secant
      ``r A / (A + h)`` itself past the threshold (0.1.0 to 0.8.0).

  References:
    Donoho, `De-noising by soft-thresholding
    <https://doi.org/10.1109/18.382009>`_, IEEE Trans. Inf. Theory, 1995.
  """
  def constraint(rate, proposed, signals):
    step_h, step_norm = signals.last_step()

    def leaf(r, p, h, g_before, d, overshoot):
      bound_before = g_before * d
      overshoot = overshoot & active
      # Past the threshold h - 3A > 0, so the soft denominator is > A.
      excess = _past_threshold(h, bound_before) if soft else h
      cap = r * bound_before / jnp.where(overshoot, bound_before + excess, 1)
      return jnp.where(overshoot, jnp.minimum(p, cap), p)
    return jax.tree.map(leaf, rate, proposed, step_h,
                        signals.previous_grad_norm, step_norm,
                        overshooting(signals))
  return constraint


def overshooting(signals: RateSignals) -> Rate:
  """Where the overshoot guard reads an overshoot (:func:`overshoots`), like
  the rate: the one reading :func:`overshoot_cap` cuts on and the noise
  gate's log step takes its ceiling from. Needs ``previous_grad_norm``."""
  # The last step's own signals: along a longer tangent the across-valley
  # swings of an oscillation cancel out and the guard would never see them.
  step_h, step_norm = signals.last_step()
  longer = signals.step_hypergradient is not None
  return jax.tree.map(
      lambda h, g_before, d, c: overshoots(h, g_before * d,
                                           c if longer else None),
      step_h, signals.previous_grad_norm, step_norm, cosine(signals))


def follows_last_step(signals: RateSignals,
                      threshold: float = LAST_STEP_COSINE) -> Rate:
  """Where :func:`follow_last_step` reads the last step: its cosine exceeds
  ``threshold`` and the tangent's (needs the ``step_*`` signals)."""
  return jax.tree.map(lambda c1, c: (c1 > threshold) & (c1 > c),
                      last_step_cosine(signals), cosine(signals))


def follow_last_step(rule: RateRule,
                     threshold: float = LAST_STEP_COSINE) -> RateRule:
  """``rule``, reading the last step's signals where that step overshot.

  With a longer horizon the rate's hypergradient is taken along a tangent
  ``Z_{t-1}`` that sums many steps, so it answers slowly when the rate has
  just become too large: on the edge of stability the loss grows 2-3x per
  step (below the guard's 3x, :func:`overshoot_cap`), the last step's cosine
  is about 0.9 and the tangent's 0.2-0.4, and a multiplicative rule reading
  the tangent cuts the rate too slowly to stop the growth. Where the last
  step's cosine exceeds ``threshold`` and the tangent's, the rule sees the
  last step's hypergradient and direction norm instead
  (:meth:`RateSignals.last_step`): it cuts as fast as the one-step rule. A
  no-op for the one-step rule.

  Args:
    rule: the rule to feed.
    threshold: the last step's cosine above which it is followed.

  Returns:
    A :class:`RateRule` with ``rule``'s state.
  """
  def update(rate, signals, state):
    if signals.step_hypergradient is None:
      return rule.update(rate, signals, state)
    step_h, step_norm = signals.last_step()
    follow = follows_last_step(signals, threshold)
    pick = lambda f, a, b: jnp.where(f, a, b)  # pylint: disable=unnecessary-lambda-assignment
    signals = signals._replace(
        hypergradient=jax.tree.map(pick, follow, step_h,
                                   signals.hypergradient),
        direction_norm=jax.tree.map(pick, follow, step_norm,
                                    signals.direction_norm))
    return rule.update(rate, signals, state)
  return RateRule(rule.init, update, rule.keeps_grad_norm)


class NoiseGateState(NamedTuple):
  """State of :func:`noise_gate` (the optimizer state's ``hyper_state``).

  Attributes:
    inner: the gated rule's state.
    count: how many steps the running moments hold (int32, like the rate:
      one, one per tensor or one per element; a step whose cosine is not
      finite there is left out of its moments and count).
    mean: running mean of the tangent's cosine, before bias correction, like
      the rate.
    square: running mean of its square, likewise.
    ceiling: the rate above which the log step lengthens no increase, set
      by the last step the overshoot guard read as an overshoot (by default
      above that step's rate by as much as the reading was marginal; see
      :func:`noise_gate`); like the rate; 0 before any, and without the
      guard: no ceiling; with ``start_log_step`` (the default since
      0.13.0), 0 marks the start and -1 no ceiling after it; ``()``
      without the log step; new in 0.8.0.
    recovery: the rate the gate climbs back to after the overshoot guard's
      last cut (part of the way back to the rate that overshot; see
      :func:`noise_gate`), like the rate; 0: none; on the step of a
      reading, minus the rate that overshot (the next step sets the target
      from where the cut left the rate); ``()`` without the recovery or
      without the guard; new in 0.11.0.
  """
  inner: Any
  count: Rate
  mean: Rate
  square: Rate
  ceiling: Rate
  recovery: Any


def _ceiling(overshoot, rate, ceiling, h, grad_norm_before, step_norm, *,
             soft, none=0):
  """The log step's ceiling after this reading (one leaf; see
  :func:`noise_gate`): unchanged without an overshoot, else the rate ``r``
  that overshot, or with ``soft`` ``r (1 + A / (h - 3A))`` held between
  ``r`` and the ceiling before (0: none)."""
  if soft:
    bound = grad_norm_before * step_norm
    # An overshoot reading has h > 3A, so its excess is > 0.
    excess = jnp.where(overshoot, _past_threshold(h, bound), 1)
    top = jnp.minimum(rate * (1 + bound / excess),
                      jnp.where(ceiling > 0, ceiling, jnp.inf))
    top = jnp.maximum(rate, top)
    # Overflow with no ceiling before, where the excess all but vanishes:
    # the limit, no ceiling.
    rate = jnp.where(jnp.isfinite(top), top, none)
  return jnp.where(overshoot, rate, ceiling).astype(ceiling.dtype)


def _recover(rate, gated, target, overshoot, lower, *, fraction, step):
  """The recovery after the guard's cuts (one leaf; see :func:`noise_gate`):
  ``gated`` raised toward the target, and the new target."""
  # The step after a reading, the target holds minus the rate that
  # overshot, and the rate is where the guard's cut left it: the target
  # becomes `fraction` of the way back (in log-rate).
  # No target where the rate was not cut (the cap inactive, as at β = 0).
  over = -target
  back = over ** fraction * rate ** (1 - jnp.asarray(fraction, rate.dtype))
  target = jnp.where(target < 0, jnp.where(rate < over, back, 0), target)
  up = jnp.minimum(target, rate * jnp.exp(jnp.asarray(step, rate.dtype)))
  climb = (target > rate) & ~lower & ~overshoot
  gated = jnp.where(climb, jnp.maximum(gated, up), gated)
  target = jnp.where(overshoot, -rate, target)
  return gated.astype(rate.dtype), target.astype(rate.dtype)


def noise_gate(rule: RateRule, z: float = NOISE_GATE_Z,
               decay: float = NOISE_GATE_DECAY, *,
               deviation_z: Optional[float] = NOISE_GATE_DEVIATION_Z,
               log_step: Optional[float] = NOISE_GATE_LOG_STEP,
               rule_speed: Any = 0.0,
               follow_threshold: Optional[float] = None,
               soft_ceiling: bool = True,
               recovery: Optional[float] = NOISE_GATE_RECOVERY,
               recovery_step: float = NOISE_GATE_RECOVERY_STEP,
               start_log_step: Optional[float] = NOISE_GATE_START_LOG_STEP
               ) -> RateRule:
  r"""``rule``, moving the rate only where its hypergradient beats its noise.

  The tangent's cosine :math:`c_t` (:func:`cosine`) is a noisy estimate of
  how the loss depends on the rate; on a plateau its mean is a small fraction
  of its standard deviation and a rule that follows every step drifts. The
  gate keeps running moments of :math:`c_t`, bias-corrected like Adam's
  (Kingma & Ba, 2015),

  .. math::
    \hat m_t = \frac{(1-\rho)\sum_k \rho^{t-k} c_k}{1-\rho^t}, \quad
    \hat v_t = \frac{(1-\rho)\sum_k \rho^{t-k} c_k^2}{1-\rho^t}, \quad
    \mathrm{se}_t = \sqrt{(\hat v_t - \hat m_t^2)\,\frac{1-\rho}{1+\rho}},

  :math:`\mathrm{se}_t` being the standard error of an exponentially weighted
  mean of independent samples, and keeps ``rule``'s move only where the
  evidence points the same way: down where :math:`\hat m_t > z\,
  \mathrm{se}_t`, up where :math:`\hat m_t < -z\,\mathrm{se}_t`; elsewhere
  the rate holds: a test of the sign of the cosine's mean against its
  noise. It does not remove the short-horizon bias (Wu et al., ICLR 2018)
  but stops it from compounding once the signal is lost in the noise.

  The running mean lags where the cosine changes for real (an overshoot on
  the edge of stability, the cuts after a climb). So a move passes too where
  this step's cosine alone lies outside the noise band, in the move's
  direction: down where :math:`c_t - \hat m_{t-1} > z_d\, \hat\sigma_{t-1}`,
  up where :math:`\hat m_{t-1} - c_t > z_d\, \hat\sigma_{t-1}`, with
  :math:`\hat\sigma_{t-1} = \sqrt{\hat v_{t-1} - \hat m_{t-1}^2}` from the
  moments before this step (a Shewhart control limit, Shewhart 1931: a
  sample beyond it is a change, not noise). Measured in
  ``docs/how_it_works.md``.

  How far a kept move goes is ``rule``'s business: the multiplicative rule
  moves :math:`\log r` by about :math:`-\beta c_t`, a drift of
  :math:`-\beta \hat m_t` per step, and in many dimensions the cosine of
  even a consistent signal is small (a mean of -0.005 against a standard
  deviation of 0.03 on a regression plateau): the rate then crawls however
  clear the evidence. With ``log_step`` :math:`\eta`, a kept increase
  (:math:`\hat m_t < 0`) is lengthened so that the drift is at least
  :math:`\eta |\hat m_t| / \sqrt{\hat v_t}`, the mean over the root mean
  square (Adam's normalisation, Kingma & Ba, 2015: at most :math:`\eta`
  per step, whatever the cosine's typical size):

  .. math::
    r_t = r'_t \exp\!\big(-\hat m_t\,(\eta / \sqrt{\hat v_t} -
    \beta)^+\big),

  :math:`r'_t` being the gated move and :math:`\beta` (``rule_speed``) the
  drift ``rule`` has per unit of cosine. Where the cosine is large (a
  deterministic run on the edge of stability) :math:`\eta/\sqrt{\hat v_t}
  < \beta` and nothing changes. Decreases are left as they are: the greedy
  hypergradient's short-horizon bias (Wu et al., 2018) leans toward smaller
  rates, and lengthening the cuts too amplified it (measured in
  ``docs/how_it_works.md``).

  The evidence for a climb is gathered below the rate it leads to, and a
  rate whose step overshot is known to be too large: the lengthening stops
  at the ceiling :math:`c_t`, the rate of the last step the overshoot guard
  read as an overshoot (:func:`overshoots`; none before any, and without
  the guard): the lengthened rate becomes :math:`\min(r_t, \max(r'_t,
  c_t))`, so above the ceiling only ``rule``'s own move passes. This is
  TCP's slow-start threshold (Jacobson, 1988: grow fast up to the window
  that last lost packets, slowly beyond), without its halving. Before the
  guard's first reading there is no ceiling, and with ``start_log_step``
  :math:`\eta_0` (the default since 0.13.0: 0.1, twice :math:`\eta`) the
  log step is :math:`\eta_0` there, as TCP's slow start is fastest before
  the first loss: from a small :math:`\alpha_0` a climb at :math:`\eta`
  may not reach the tuned rate before the signal fades on a noisy plateau,
  or before a short run ends. Like slow start on the first sign of
  congestion, the start ends too at the first step whose cosine asks for a
  lower rate (:math:`c_t > 0`), whatever the running mean says: from a too
  large :math:`\alpha_0` the rate comes down first, and a fast climb back
  before any reading sent some digits MLP runs over the edge of stability;
  on ReLU MLPs from a small :math:`\alpha_0` the cosines turn from a
  steady -0.4 to about 0 within a few steps once the rate is good, while
  the running mean, remembering about :math:`1/(1-\rho)` steps of the
  climb, asks for more for a hundred steps (``docs/how_it_works.md``, "The
  slow start"). Without the ceiling
  the rate climbed back past the overshooting rate after each of the
  guard's cuts, a sawtooth that left some noisy runs far above their best
  loss. But minibatch noise alone gives readings just past the guard's
  threshold :math:`h_t > 3A` (:math:`A = \|g_{t-1}\|\|d_{t-1}\|`), whose
  rate may be well below the tuned one. So with ``soft_ceiling`` (the
  default since 0.10.0) the ceiling is set as softly as
  :func:`overshoot_cap` cuts, by the reading's excess over the threshold
  (a soft threshold, Donoho 1995):

  .. math::
    c_t = \max\Big(r_{t-1},\ \min\Big(r_{t-1}\Big(1 + \frac{A}{h_t -
    3A}\Big),\ c_{t-1}\Big)\Big),

  no ceiling at the threshold, twice the rate at :math:`4A`, and nearly
  the rate itself for a far overshoot (:math:`20A`: :math:`1.06\,r_{t-1}`),
  but never above the ceiling before (where there is one) unless the rate
  itself is: without that bound, mild overshoots at the edge of stability
  each raised the ceiling a little above the rate that overshot, the log
  step climbed to it, overshot there, and the ceiling ratcheted up (4
  digits runs of 270 ended at 1.2-1.9x tuned Adam's loss, their rates 20-40
  times the tuned one).

  The guard's cut itself rests on one minibatch. On a noisy regression
  the readings (after a minibatch whose gradient was a third of the
  typical norm) each cut the rate by a median of 1.8 times, at rates well
  below the tuned one; on the runs that end worst they add up (a median of
  6 a run), and the gate's evidence is then too weak to climb back for the
  rest of the run. So with ``recovery`` :math:`f` (the default since
  0.11.0) the guard's cut is provisional: from where the cut left the
  rate, :math:`r_{cut}`, the rate climbs back toward

  .. math::
    r^\star = r_{over}^{\,f}\, r_{cut}^{\,1-f},

  :math:`f` of the way (in log-rate) to the rate :math:`r_{over}` that
  overshot, by at most :math:`e^{\kappa}` per step (``recovery_step``),
  save on a step where the evidence asks for a lower rate: the running
  mean (:math:`\hat m_t > z\,\mathrm{se}_t`) or, with ``deviation_z``,
  this step's cosine alone (:math:`c_t - \hat m_{t-1} > z_d\,
  \hat\sigma_{t-1}`). :math:`r^\star` holds until the next reading. On
  the edge of stability of a deterministic run the steps after an
  overshoot swing back across the valley, their cosines beyond the control
  limit, and the climb holds; without that test the climb pushed
  ``sgd(0.1)`` back over the edge after every cut and it stalled on the
  Rosenbrock function. Like TCP CUBIC's return toward the window at the
  last loss (Ha, Rhee & Xu, 2008), but to a point between the two rates
  and at a bounded exponential speed.

  Only with a longer horizon (the ``step_*`` signals given); a no-op for the
  one-step rule, which stays the paper's. A non-finite cosine leaves the
  moments and the move to ``rule`` (whose step skips it).

  Args:
    rule: the rule to gate.
    z: how many standard errors the running mean must clear.
    decay: :math:`\rho`, the moments' decay (about ``1 / (1 - decay)``
      steps).
    deviation_z: :math:`z_d`; None: no move passes on its own sample.
    log_step: :math:`\eta`, the least upward drift of :math:`\log r` per
      step along a clear mean (at :math:`|\hat m_t| = \sqrt{\hat v_t}`);
      None: kept moves are ``rule``'s own.
    rule_speed: :math:`\beta`, ``rule``'s own drift of :math:`\log r` per
      unit of cosine (the multiplicative rule's ``hyper_lr``; 0 for a rule
      with none).
    follow_threshold: where the last step is followed
      (:func:`follows_last_step` at this threshold: an overshoot), the move
      is kept whatever the moments say; None: no exception. Given (the
      overshoot guard is on), the guard's readings set the log step's
      ceiling where ``signals`` carry ``previous_grad_norm``.
    soft_ceiling: the ceiling :math:`c_t` above (the default since
      0.10.0); False: the rate that overshot, :math:`c_t = r_{t-1}` (0.8.0
      and 0.9.0).
    recovery: :math:`f` in [0, 1], the fraction of the guard's cut (in
      log-rate) climbed back (the default since 0.11.0; needs the guard,
      ``follow_threshold`` given); None: none (0.10.0).
    recovery_step: :math:`\kappa`, the most the climb back raises
      :math:`\log r` per step.
    start_log_step: :math:`\eta_0`, the log step until the guard's first
      reading or the first step whose cosine asks for a lower rate (with
      the guard only; new in 0.12.0, the default since 0.13.0); None:
      :math:`\eta` throughout (0.12.0's default).

  Returns:
    A :class:`RateRule` whose state is a :class:`NoiseGateState`.

  Example:
    >>> import jax.numpy as jnp
    >>> from hypergrad_optax import rules
    >>> gated = rules.noise_gate(rules.descend(
    ...     rules.multiplicative_feedback, rules.sgd(0.1)), z=2.0)
    >>> int(gated.init(jnp.float32(1.0)).count)
    0

  References:
    Kingma & Ba, `Adam: A Method for Stochastic Optimization
    <https://arxiv.org/abs/1412.6980>`_, ICLR 2015 (the bias correction and
    the normalised drift);
    Wu, Ren, Liao & Grosse, `Understanding Short-Horizon Bias in Stochastic
    Meta-Optimization <https://arxiv.org/abs/1803.02021>`_, ICLR 2018;
    Shewhart, *Economic Control of Quality of Manufactured Product*, 1931
    (control limits);
    Jacobson, `Congestion Avoidance and Control
    <https://doi.org/10.1145/52324.52356>`_, SIGCOMM 1988 (the slow-start
    threshold);
    Donoho, `De-noising by soft-thresholding
    <https://doi.org/10.1109/18.382009>`_, IEEE Trans. Inf. Theory, 1995
    (the soft ceiling);
    Ha, Rhee & Xu, `CUBIC: A New TCP-Friendly High-Speed TCP Variant
    <https://doi.org/10.1145/1400097.1400105>`_, ACM SIGOPS Operating
    Systems Review, 2008 (the return toward the rate before a cut).
  """
  NoiseGate(z, decay, deviation_z, log_step, soft_ceiling, recovery,
            recovery_step, start_log_step).checked()
  # The guard's readings (follow_threshold given: the guard is on) set the
  # ceiling and the recovery's target.
  recovers = recovery is not None and follow_threshold is not None

  def init(rate):
    # Separate buffers for the two moments: a state holding one buffer twice
    # cannot be donated.
    return NoiseGateState(rule.init(rate),
                          optax.tree.zeros_like(rate, dtype=jnp.int32),
                          optax.tree.zeros_like(rate),
                          optax.tree.zeros_like(rate),
                          # Without the log step nothing reads a ceiling.
                          () if log_step is None
                          else optax.tree.zeros_like(rate),
                          optax.tree.zeros_like(rate) if recovers else ())

  def update(rate, signals, state):
    proposed, inner = rule.update(rate, signals, state.inner)
    if signals.step_hypergradient is None:
      return proposed, state._replace(inner=inner)
    cos = cosine(signals)
    # A non-finite cosine leaves its entry's moments and count alone. Per
    # entry, not over the whole rate: a per-element rate's entries may live
    # on different devices, where an `all` would need a collective.
    finite = jax.tree.map(jnp.isfinite, cos)

    def keep_if_finite(new, old):
      return jax.tree.map(lambda n, o, f: jnp.where(f, n, o).astype(o.dtype),
                          new, old, finite)
    count = jax.tree.map(lambda n, f: n + f.astype(n.dtype), state.count,
                         finite)
    mean = keep_if_finite(
        optax.tree.update_moment(cos, state.mean, decay, 1), state.mean)
    square = keep_if_finite(
        optax.tree.update_moment(cos, state.square, decay, 2), state.square)
    if follow_threshold is None:
      follow = jax.tree.map(lambda r: jnp.zeros(jnp.shape(r), bool), rate)
    else:
      follow = follows_last_step(signals, follow_threshold)

    def moments(m, v, n):
      # Bias-corrected mean and second moment after n steps (none: zeros).
      correction = 1 - jnp.asarray(decay, m.dtype) ** n.astype(m.dtype)
      correction = jnp.where(n > 0, correction, 1)
      return m / correction, v / correction

    # The guard's reading needs ‖g_{t-1}‖, kept only with the guard.
    ceiling, target = state.ceiling, state.recovery
    reads = (follow_threshold is not None
             and signals.previous_grad_norm is not None)
    if reads:
      step_h, step_norm = signals.last_step()
      overshoot = overshooting(signals)
      reading = (overshoot, rate)
      reading_tail = (step_h, signals.previous_grad_norm, step_norm)
    starts = reads and log_step is not None and start_log_step is not None
    if reads and log_step is not None:
      # After a reading a ceiling is never 0 again with the start: its end.
      ceiling = jax.tree.map(
          functools.partial(_ceiling, soft=soft_ceiling,
                            none=-1 if starts else 0),
          *reading, ceiling, *reading_tail)

    def lengthen(r, p, m, v, top):
      # Increases only, where the rule's own drift β|m̂| falls short of
      # η|m̂| / √v̂, and up to the ceiling (the rule's own move may pass it).
      rms = jnp.sqrt(v)
      eta = jnp.asarray(log_step, m.dtype)
      if starts:
        # A ceiling of 0: the start (no reading, and the mean has not yet
        # asked for a lower rate).
        eta = jnp.where(top == 0, jnp.asarray(start_log_step, m.dtype), eta)
      gain = eta / jnp.where(rms > 0, rms, 1)
      gain = jnp.maximum(gain - jnp.asarray(rule_speed, m.dtype), 0)
      agrees = (p > r) & (m < 0) & (rms > 0)
      longer = p * jnp.exp(-gain * m).astype(p.dtype)
      longer = jnp.where(top > 0, jnp.minimum(longer, jnp.maximum(top, p)),
                         longer).astype(p.dtype)
      return jnp.where(agrees, longer, p)

    def leaf(r, p, c, m, v, n, m0, v0, n0, f, top):
      m, v = moments(m, v, n)
      var = jnp.maximum(v - m * m, 0)
      error = jnp.sqrt(var * (1 - decay) / (1 + decay))
      down, up = m > z * error, m < -z * error
      if deviation_z is not None:
        m0, v0 = moments(m0, v0, n0)
        band = deviation_z * jnp.sqrt(jnp.maximum(v0 - m0 * m0, 0))
        # Not on the first step: no band yet.
        seen = n0 > 0
        down = down | (seen & (c - m0 > band))
        up = up | (seen & (m0 - c > band))
      keep = f | ~jnp.isfinite(c) | jnp.where(p < r, down, up)
      # The evidence that asks for a lower rate (the mean's or this step's
      # own), or none (a non-finite step): the recovery then holds.
      lower = down | ~jnp.isfinite(c)
      if log_step is not None:
        p = jnp.where(jnp.isfinite(c), lengthen(r, p, m, v, top), p)
      # The start's end: this step's cosine asks for a lower rate.
      return jnp.where(keep, p, r), lower, c > 0
    # Without the log step there is no ceiling; `rate` stands in, unread.
    gated_lower = jax.tree.map(leaf, rate, proposed, cos, mean, square, count,
                               state.mean, state.square, state.count, follow,
                               rate if log_step is None else ceiling)
    gated, lower, asks_lower = jax.tree.transpose(
        jax.tree.structure(rate), jax.tree.structure((0, 0, 0)), gated_lower)
    if starts:
      # The start ends at the first step whose cosine asks for a lower rate
      # (TCP's first loss): a negative ceiling, none to hold the log step.
      ceiling = jax.tree.map(
          lambda top, d: jnp.where((top == 0) & d, -1, top).astype(top.dtype),
          ceiling, asks_lower)
    if reads and recovers:
      gated, target = jax.tree.transpose(
          jax.tree.structure(rate), jax.tree.structure((0, 0)),
          jax.tree.map(functools.partial(_recover, fraction=recovery,
                                         step=recovery_step),
                       rate, gated, target, overshoot, lower))
    return gated, NoiseGateState(inner, count, mean, square, ceiling, target)

  return RateRule(init, update, rule.keeps_grad_norm)


class ScaleByLogRateState(NamedTuple):
  """State of :func:`scale_by_log_rate`: Adam's moments of the feedback."""
  count: jax.Array
  mu: Rate
  nu: Rate


def scale_by_log_rate(step_size: Any, b1: float = 0.9, b2: float = 0.99,
                      eps: float = 1e-8) -> optax.GradientTransformation:
  """A normalised step on ``log r``: ``r ← r · exp(-η m̂ / (√v̂ + ε))``.

  ``m̂`` and ``v̂`` are Adam's bias-corrected moments of the feedback (a
  cosine, :func:`cosine_feedback`). The step moves ``log r`` by at most about
  ``η`` per step, and by far less while the feedback's sign is noise: its
  mean over the window ``1/(1-b1)`` is small against its root mean square.
  Scale-free: neither the loss's units nor the typical size of the cosine
  (small in high dimensions) sets the speed. (Adam on ``log α``; see
  Chandra et al., 2022 for Adam as a hyper-optimizer, and Kingma & Ba, 2015.)

  Args:
    step_size: ``η``, the largest change of ``log r`` per step.
    b1: decay of the feedback's mean.
    b2: decay of its mean square.
    eps: added to ``√v̂``.

  Returns:
    An ``optax.GradientTransformation`` on the rate (its params), whose
    update is ``r (exp(-η m̂/(√v̂+ε)) - 1)``.
  """
  def init_fn(rate):
    zeros = optax.tree.zeros_like(rate)
    return ScaleByLogRateState(jnp.zeros([], jnp.int32), zeros,
                               optax.tree.zeros_like(rate))

  def update_fn(feedback, state, params):
    count = optax.safe_increment(state.count)
    mu = optax.tree.update_moment(feedback, state.mu, b1, 1)
    nu = optax.tree.update_moment_per_elem_norm(feedback, state.nu, b2, 2)
    mu_hat = optax.tree.bias_correction(mu, b1, count)
    nu_hat = optax.tree.bias_correction(nu, b2, count)

    def leaf(r, m, v):
      dtype = r.dtype
      step = jnp.asarray(step_size, dtype) * m / (jnp.sqrt(v) + eps)
      return r * jnp.expm1(-step.astype(dtype))
    updates = jax.tree.map(leaf, params, mu_hat, nu_hat)
    return updates, ScaleByLogRateState(count, mu, nu)

  return optax.GradientTransformation(init_fn, update_fn)


# What ``overshoot_guard`` accepts: True is "soft" (overshoot_cap's soft
# threshold, the wrapper's default since 0.9.0), "secant" the cap of 0.1.0 to
# 0.8.0.
OVERSHOOT_GUARDS = (True, False, "soft", "secant")


def guarded(rule: RateRule, *, overshoot_guard: Union[bool, str] = False,
            min_rate: Any = None, max_rate: Any = None,
            active: Any = True, gate: Optional[NoiseGate] = None,
            rule_speed: Any = 0.0) -> RateRule:
  """``rule`` followed by the overshoot guard (optional: the rule follows the
  last step where it overshot, :func:`follow_last_step`, and its rate is
  capped after a large overshoot, :func:`overshoot_cap`, switched by
  ``active``; ``overshoot_guard`` is one of ``OVERSHOOT_GUARDS``, True
  meaning ``'soft'``) and the bounds; with ``gate``, its moves gated by
  :func:`noise_gate` with those settings (save where it follows the last
  step), ``rule_speed`` being ``rule``'s own drift per unit of cosine."""
  _validation.check_choice("overshoot_guard", overshoot_guard,
                           OVERSHOOT_GUARDS)
  constraints: list[Constraint] = []
  if overshoot_guard:
    rule = follow_last_step(rule)
    constraints.append(overshoot_cap(active,
                                     soft=overshoot_guard != "secant"))
  if gate is not None:
    # NoiseGate's fields are noise_gate's keyword arguments.
    rule = noise_gate(rule, **gate._asdict(), rule_speed=rule_speed,
                      follow_threshold=(
                          LAST_STEP_COSINE if overshoot_guard else None))
  return constrained(rule, *constraints, bounds(min_rate, max_rate),
                     keeps_grad_norm=bool(overshoot_guard))


def rule_active(hyper_lr: Any,
                hyper_optimizer: Optional[optax.GradientTransformation]) -> Any:
  """Whether the guards and bounds act: β = 0 (with the plain SGD step) must
  reproduce the inner optimizer exactly, so they are off there (traced when
  ``hyper_lr`` is)."""
  return True if hyper_optimizer is not None else jnp.asarray(hyper_lr) > 0


def paper_rule(hyper_lr: Any, rule: str, *, min_rate: Any = None,
               max_rate: Any = None,
               overshoot_guard: Union[bool, str] = False,
               hyper_optimizer: Optional[optax.GradientTransformation] = None,
               gate: Optional[NoiseGate] = None) -> RateRule:
  """The paper's rules as a :class:`RateRule`: SGD with ``hyper_lr`` (or
  ``hyper_optimizer``) on the additive or multiplicative feedback, then the
  overshoot guard and the noise gate (optional; see :func:`guarded`) and the
  bounds. The gate's ``log_step`` needs the multiplicative rule's plain step
  (its drift is ``hyper_lr`` per unit of cosine); the additive rule's drift
  is no multiple of the cosine, and a hyper-optimizer's is its own, so
  there it is dropped."""
  feedback = {"additive": additive_feedback,
              "multiplicative": multiplicative_feedback}[rule]
  step = sgd(hyper_lr) if hyper_optimizer is None else hyper_optimizer
  if gate is not None and (rule != "multiplicative"
                           or hyper_optimizer is not None):
    gate = gate._replace(log_step=None)
  return guarded(descend(feedback, step), overshoot_guard=overshoot_guard,
                 min_rate=min_rate, max_rate=max_rate,
                 active=rule_active(hyper_lr, hyper_optimizer),
                 gate=gate, rule_speed=hyper_lr)
