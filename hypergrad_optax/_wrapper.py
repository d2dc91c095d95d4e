"""``hypergradient``: adapt the step size of any Optax optimizer online."""

from __future__ import annotations

import warnings
from typing import Any, Optional, Union

import jax
import optax

from hypergrad_optax import _core
from hypergrad_optax import _validation
from hypergrad_optax import rules as rules_lib
from hypergrad_optax._core import ScaleByHypergradientState  # pylint: disable=unused-import


_UNSET = object()

# The default horizon grows with the run (see _core.run_decay). In the sweep
# of docs/results.md (f) it is the best across the tasks: against the paper's
# one-step rule (horizon=1, the default before 0.3) worst regret 1.01 / 1.00
# / 3.42 on digits-long / wine / friedman against 1.94 / 1.04 / 10.5, MNIST
# logreg from every α0 within 0.995x tuned Adam (one step: 1.08x from 0.1),
# and still converging on the Rosenbrock function from optax.sgd(0.1). A
# fixed horizon=300 lost on MNIST from 0.1 (1.28x): its horizon is as long at
# the first steps, where a too-large start must be cut fast.
DEFAULT_HORIZON = "run"

# No step moves the parameters by more than this fraction of their norm
# (max_relative_step; _core.relative_step_limit). Tuned Adam moves the sweep's
# MLPs by about 1-5 % of their norm per step (about 10 % at most, in the first
# steps) and the charlm transformer by 3-6 %. The bound caps the stored factor,
# so where it binds in the first steps of a far-too-large start it also sets
# the rate the run goes on from: under a warmup to a peak of 0.1 the charlm
# transformer's first steps move 27-43 % of its norm; held at 30 % (0.4.0 to
# 0.6.0) the run ended on the unigram plateau (1.30x tuned AdamW), at 10 %
# (0.7.0 to 0.13.0) its rate settled at 6x the tuned one (1.11x over 3 seeds),
# at 5 % at 3x (1.02x); the one-block attention model of the tests, under a
# 20-step warmup to 0.1, is rescued only at 5 % (0.066 against 0.35; best
# peak 0.0625). Its cost: a norm that starts near zero grows by at most 5 %
# per step (a zero-initialised logistic regression on digits over 280 steps
# from 1e-5: 0.21 against 0.065 at 10 %), and a short logistic regression
# whose tuned first steps move 59 % pays too. At 1, mlp-wine from α0 = 0.1
# still diverged in 6 of 30 seeds. docs/results.md, sections (k) and (s).
# Since 0.15.0 a step where the rule raises the factor may move 10 %: most of
# those costs come back (the short logistic regression from α0 >= 1e-2:
# 0.041-0.065 against 0.070-0.105 at 5 %; weights from zero climb as at 10 %)
# and the gains stay (charlm, the attention model's warmup, the sweep: the
# same figures), since a far-too-large start is cut on steps where the rule
# does not ask for more. docs/results.md, section (t).
# Since 0.16.0 the other steps are held at 3 %: charlm from a peak of 0.1
# 1.02 over 5 epochs (1.04 at 5 %), and the digits MLP (30 seeds) 0.983 /
# 0.980 with no run above 1.2x (1.03 / 0.978, one at 2.5x), at the price of
# Friedman from the large α0 (0.952 against 0.927; worst and median the
# same). docs/results.md, section (u).
DEFAULT_MAX_RELATIVE_STEP = _core.RelativeStepBound(limit=0.03, rising=0.1)


def _renamed(new_value, old_value, new_name, old_name):
  """``min_rate``/``max_rate`` bounded the factor, not the rate: renamed."""
  if old_value is _UNSET:
    return new_value
  warnings.warn(
      f"hypergradient({old_name}=...) is deprecated: it bounds the factor "
      f"s, not the learning rate; use {new_name}.", DeprecationWarning,
      stacklevel=3)
  return old_value


def _noise_gate(noise_gate, rule, hyper_optimizer, horizon):
  """``noise_gate``'s settings (a :class:`rules.NoiseGate` or None):
  ``'auto'`` gates the built-in rules' plain step with a horizon over
  several steps (not the one-step rule, a custom rule or a hyper-optimizer,
  whose states stay as they were); a number is the gate's z."""
  if isinstance(noise_gate, str):
    if noise_gate != "auto":
      raise ValueError(
          "noise_gate must be 'auto', None, a number z >= 0 or a "
          f"rules.NoiseGate; got {noise_gate!r}.")
    builtin = isinstance(rule, str) and hyper_optimizer is None
    return rules_lib.NoiseGate() if builtin and horizon != 1 else None
  if noise_gate is None:
    return None
  if not isinstance(noise_gate, rules_lib.NoiseGate):
    _validation.check_non_negative("noise_gate", noise_gate)
    return rules_lib.NoiseGate(z=noise_gate)
  return noise_gate.checked("noise_gate.")


def _rate_rule(rule, hyper_lr, hyper_optimizer, overshoot_guard, min_scale,
               max_scale, noise_gate):
  """The wrapper's rule: a named one, or the user's, guarded, gated and
  bounded."""
  if not isinstance(rule, rules_lib.RateRule):
    return _core.build_rule(
        hyper_lr=hyper_lr, rule=rule, min_rate=min_scale, max_rate=max_scale,
        overshoot_guard=overshoot_guard, hyper_optimizer=hyper_optimizer,
        gate=noise_gate)
  if hyper_optimizer is not None:
    raise ValueError(
        "hyper_optimizer is part of the rule: with rule=RateRule(...), build "
        "it into the rule (rules.descend(feedback, hyper_optimizer)); got "
        "both.")
  return rules_lib.guarded(rule, overshoot_guard=overshoot_guard,
                           min_rate=min_scale, max_rate=max_scale,
                           gate=noise_gate)


def hypergradient(
    inner: optax.GradientTransformation,
    hyper_lr: jax.typing.ArrayLike = 0.1,
    *,
    rule: Union[str, rules_lib.RateRule] = "multiplicative",
    granularity: str = "global",
    initial_scale: jax.typing.ArrayLike = 1.0,
    min_scale: Optional[jax.typing.ArrayLike] = 0.0,
    max_scale: Optional[jax.typing.ArrayLike] = None,
    buffer_dtype: Optional[Any] = None,
    overshoot_guard: Union[bool, str] = True,
    axis_name: Optional[Union[str, tuple[str, ...]]] = None,
    hyper_optimizer: Optional[optax.GradientTransformation] = None,
    horizon: Optional[Union[int, str]] = None,
    curvature: bool = False,
    noise_gate: Union[float, str, rules_lib.NoiseGate, None] = "auto",
    max_relative_step: Union[float, tuple[float, float], None] = (
        DEFAULT_MAX_RELATIVE_STEP),
    min_rate: Any = _UNSET,
    max_rate: Any = _UNSET,
    delayed: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Scales any optimizer's updates by a factor learnt by hypergradient descent.

  The wrapped optimizer's update :math:`\tilde u_t` (its own learning rate,
  schedule and sign included) is scaled by an adapted factor :math:`s_t`,
  :math:`u_t = s_t \tilde u_t`. Since
  :math:`\theta_{t-1} = \theta_{t-2} + s_{t-1} \tilde u_{t-1}`, the derivative
  of the loss at :math:`\theta_{t-1}` with respect to the previous factor is

  .. math::
    h_t = \nabla f(\theta_{t-1}) \cdot \tilde u_{t-1} = g_t \cdot \tilde u_{t-1},

  and before each step the factor moves by one of the paper's rules

  .. math::
    \text{additive:}\quad s_t = s_{t-1} - \beta h_t, \qquad
    \text{multiplicative:}\quad
    s_t = s_{t-1}\Big(1 - \beta \frac{h_t}{\|g_t\| \|\tilde u_{t-1}\|}\Big).

  The multiplicative rule (the default) is scale-free: :math:`\beta` is the
  largest relative change of the factor in one step, whatever the units of the
  loss or the inner learning rate, which makes the default safe untuned. The
  additive rule with ``initial_scale=1`` matches the paper's rule on the
  effective rate :math:`\alpha = \alpha_0 s` when ``hyper_lr`` is
  :math:`\beta_{paper} / \alpha_0^2`. The first step is the inner optimizer's
  (there is no previous update yet); ``hyper_lr=0`` reproduces it exactly.

  Memory: the previous update and, with a horizon over several steps (the
  default), the tangent: two parameter-sized buffers (in ``buffer_dtype``
  when given; one with ``horizon=1``), and the factor (a scalar, one per
  tensor or one per element).

  Args:
    inner: any Optax transformation producing updates (``optax.adam(1e-3)``,
      a ``chain`` with clipping, a scheduled or ``inject_hyperparams``-built
      optimizer). Extra keyword arguments of ``update`` are forwarded to it.
    hyper_lr: :math:`\beta`, the hyper learning rate (>= 0). For the
      multiplicative rule, the largest relative change of the factor per step.
    rule: ``'multiplicative'`` (default, scale-free), ``'additive'``, or a
      :class:`hypergrad_optax.rules.RateRule` built from the pieces of
      :mod:`hypergrad_optax.rules` (e.g. ``rules.descend(
      rules.cosine_feedback, rules.scale_by_log_rate(0.02))``, a normalised
      step on :math:`\log s`); the guard and the bounds still apply after it.
    granularity: ``'global'`` (one factor, the paper), ``'per-tensor'`` (one
      per parameter leaf) or ``'per-element'`` (one per parameter entry).
    initial_scale: :math:`s_0` (> 0).
    min_scale: lower bound on the factor :math:`s` (default 0: the step never
      turns into ascent), or None. It bounds the factor, not the rate: the
      rate's floor is ``min_scale`` times the inner rate. (Formerly
      ``min_rate``, still accepted with a ``DeprecationWarning``.)
    max_scale: upper bound on the factor, or None (formerly ``max_rate``).
    buffer_dtype: dtype in which to keep the previous update (e.g.
      ``jnp.bfloat16`` halves that buffer for float32 params; the
      hypergradient then sees a rounded :math:`\tilde u_{t-1}`, a relative
      error of about 2^-8 in :math:`h_t`). None keeps the update's dtype.
    overshoot_guard: after a large overshoot, :math:`h_t > 3A`,
      :math:`A = \|g_{t-1}\| \|\tilde u_{t-1}\|`, cap :math:`s_t` at
      :math:`s_{t-1} A / (A + h_t - 3A)`, a conservative secant estimate of
      the minimiser of the loss along the last update fitted to the part of
      :math:`h_t` past the threshold (a soft threshold: no cut at
      :math:`3A`; True or ``'soft'``, the default since 0.9.0); ``'secant'``:
      at :math:`s_{t-1} A / (A + h_t)` (0.1.0 to 0.8.0), which cut the rate
      4-6x on readings that minibatch noise alone reaches (see
      :func:`hypergrad_optax.rules.overshoot_cap`); False: no guard. Keeps
      :math:`\|g_{t-1}\|` (one scalar per rate).
      This is what makes the untuned default safe when the inner rate is far
      too large (``optax.sgd(0.1)`` on the Rosenbrock function): no rule that
      changes the factor by a bounded ratio per step shrinks it fast enough.
      The factor 3 keeps most minibatch noise from triggering it: with a
      threshold of :math:`A` it kept cutting the rate of a digits MLP on its
      loss plateau until training stalled; above 3 it missed moderate
      divergence (the gradient growing 2-4x per step). With a horizon over
      several steps (the default) the cap acts only where the tangent's
      cosine exceeds ``rules.OVERSHOOT_TANGENT_COSINE`` (0.03) too, so that a
      single noisy minibatch does not cut the rate; and the guard has the
      rule follow a last step whose cosine exceeds ``rules.LAST_STEP_COSINE``
      (0.8) and restarts the tangent there
      (:func:`hypergrad_optax.rules.follow_last_step`).
    axis_name: inside ``shard_map``/``pmap`` with every parameter sharded over
      this mapped axis (a name or a tuple of names), sums the hypergradient's
      dot products and norms over it with ``lax.psum`` (a dot over the local
      shard is partial). None (default) for whole leaves on each device:
      replicated data parallelism, or ``jax.jit`` with sharded arrays. The
      inner optimizer's own reductions (e.g. ``clip_by_global_norm``) are its
      own business.
    hyper_optimizer: None (default: plain SGD on :math:`s` with ``hyper_lr``)
      or any Optax transform that updates :math:`s` (its params) from its
      hypergradient (its gradient: :math:`h_t` for the additive rule,
      :math:`s_{t-1} h_t / (\|g_t\| \|\tilde u_{t-1}\|)` for the
      multiplicative one, so that ``optax.sgd(hyper_lr)`` is the default),
      e.g. ``optax.adam(1e-3)``, or another hypergradient optimizer
      (stacking: ``hypergradient(optax.sgd(0.1))`` adapts the ``0.1`` with
      hypergradient :math:`-h_t h_{t-1}`; Chandra et al., 2022). ``hyper_lr``
      is then unused. Its state is the state's ``hyper_state``; bounds and
      both guards apply after its step.
    horizon: how far back the hypergradient looks: ``'run'`` (the default,
      ``DEFAULT_HORIZON``), an int :math:`H` (steps), or 1 for the paper's
      one-step rule. With :math:`H > 1` the rate's hypergradient is taken
      along the discounted sum of the recent updates,
      :math:`Z_t = \mu_t \min(s_{t-1}/s_t, 1) Z_{t-1} + \tilde u_t` with
      :math:`\mu_t = 1 - 1/H` (the ratio capped at 1 so that when the factor
      falls, old larger updates never outweigh the horizon's discount), so
      :math:`h_t = g_t \cdot Z_{t-1}` is the derivative of the loss with
      respect to a common relative change of the last :math:`H` or so
      factors (MARTHE's tangent, Donini et al., 2020, with the optimizer's
      Jacobian taken as the identity). ``'run'`` takes :math:`H_t = 2t`,
      :math:`\mu_t = 1 - 1/(2t)`: every update of the run so far counts,
      weighted about :math:`\sqrt{k/t}`, so the horizon is short at the
      first steps (a too-large start is cut as fast as by the one-step rule)
      and spans the run later. The one-step hypergradient is biased toward
      small rates under minibatch noise (Wu et al., 2018) and its rate
      collapses on long noisy runs; a longer horizon sees the progress the
      noise hides. :math:`Z` is kept in the state's ``tangent`` field (one
      more parameter-sized buffer) beside the last update, which the
      overshoot guard still reads: an oscillation's swings cancel in
      :math:`Z` and the guard would otherwise never see them.
    curvature: with a horizon over several steps, carry the tangent through
      the optimizer's Jacobian (MARTHE's full recursion): :math:`Z_t` gains
      the term :math:`s_t (\partial \tilde u_t/\partial g) H_t Z_{t-1}`, a
      Hessian-vector product of the ``grad_fn`` extra argument of ``update``
      (``grad_fn=lambda p: jax.grad(loss)(p, batch)``), so a step costs about
      one more gradient. The inner optimizer's state is held fixed in that
      derivative (exact for SGD; for Adam its moments' dependence on the
      past is dropped).
    noise_gate: ``'auto'`` (default), None (no gate), a number :math:`z` or
      a :class:`hypergrad_optax.rules.NoiseGate` (its settings). ``'auto'``
      is ``rules.NoiseGate()`` (:math:`z` = ``rules.NOISE_GATE_Z`` = 2) for
      the built-in rules' plain step with a horizon over several steps,
      None with ``horizon=1``, a custom ``rule`` or a ``hyper_optimizer``;
      a number :math:`z` is ``NoiseGate(z)``. With a horizon over several
      steps, move the factor only where the running mean of the tangent's
      cosine clears :math:`z` standard errors in the direction of the move
      (over about 100 steps), or where this step's cosine lies more than
      ``rules.NOISE_GATE_DEVIATION_Z`` = 1 running standard deviations from
      that mean in that direction (:func:`hypergrad_optax.rules.noise_gate`),
      and where the guard follows an overshooting last step. On a noisy loss
      plateau it stops the factor's drift (Friedman regression over 30
      seeds, worst / median regret: 3.06 / 2.72 against 3.25 / 3.03
      ungated); on deterministic runs the deviation test lets the
      overshoots' cuts through. Its log step (``NoiseGate.log_step`` =
      0.05, default since 0.8.0) lengthens the kept increases where the
      multiplicative rule's own drift is slower than the evidence warrants,
      up to a ceiling that the overshoot guard's readings set (Friedman:
      2.89 / 2.20), since 0.10.0 as softly as its cap cuts (1.81 / 1.18;
      :func:`hypergrad_optax.rules.noise_gate`). Since 0.11.0 the gate
      climbs back 70 % of each of the guard's cuts (in log-rate), save
      where its evidence asks for a lower rate (``NoiseGate.recovery``;
      Friedman: 1.25 / 1.04). Since 0.13.0 the log step is twice as long
      at the start (``NoiseGate.start_log_step`` = 0.1), until the guard's
      first reading or the first step whose cosine asks for a lower rate
      (Friedman over 60 seeds: 1.18 / 0.966 against 1.26 / 1.00).
      The additive rule and a
      ``hyper_optimizer`` get no log step (their drift per unit of cosine
      is not ``hyper_lr``); a custom rule gets it in full.
      ``NoiseGate(start_log_step=None)`` restores the 0.11.0-0.12.0 gate,
      ``NoiseGate(recovery=None, start_log_step=None)`` the 0.10.0 gate,
      ``NoiseGate(soft_ceiling=False, recovery=None, start_log_step=None)``
      the 0.8.0-0.9.0 ceiling, ``NoiseGate(log_step=None, recovery=None,
      start_log_step=None)`` the 0.5.0-0.7.0 gate, None the 0.4.0 default
      (their checkpoints: ``docs/recipes.md``). No effect with
      ``horizon=1``.
    max_relative_step: :math:`\kappa`: each step's factor is capped so that
      the step moves the parameters by at most :math:`\kappa` times their
      norm, :math:`s_t \le \kappa \|\theta_{t-1}\| / \|\tilde u_t\|`
      (global norms, or per tensor with ``granularity='per-tensor'``; not per
      element, and not when ``update`` is called without ``params``). A
      number is one level; a pair :class:`RelativeStepBound` ``(κ, κ↑)``
      allows :math:`\kappa_\uparrow` on a step where the rule raises the
      factor. Default ``DEFAULT_MAX_RELATIVE_STEP`` = ``(0.03, 0.1)``
      (``(0.05, 0.1)`` in 0.15.0, 0.05 in 0.14.0, 0.1 from 0.7.0 to 0.13.0,
      0.3 from 0.4.0 to 0.6.0); never below ``min_scale``. Without
      it the factor climbed on smooth stretches until the network diverged
      (a ReLU MLP under ``adam(0.1)``: a third of the seeds), and
      pre-LayerNorm transformers were damaged by their first steps at
      ``adam(0.1)`` before the hypergradient could answer (at 0.1 a 4-layer
      one under a warmup to 0.1 still settled at 6 times its tuned rate,
      1.11x tuned AdamW's loss; at 0.05, 1.02x; at 0.03, 1.01x). A model
      whose weights start
      at or near zero grows by at most :math:`\kappa_\uparrow` per step
      (the rule raises the factor there): pass None if that is too slow.
      Costs two reductions (of the parameters and of the new update). None:
      no cap (0.3.0).
    delayed: apply each step of the factor one step late (default False):
      step ``t`` uses the factor chosen at step ``t-1`` and :math:`h_t` moves
      that of step ``t+1``, so the update does not wait for the reduction of
      :math:`h_t` over every parameter (the state's ``scale`` is then the one
      the next update uses). For steps dominated by the optimizer's own passes
      (small batches, large models); see ``docs/results.md``, "Cost per step".

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`ScaleByHypergradientState`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import hypergrad_optax as hgo
    >>> tx = hgo.hypergradient(optax.adam(0.1))
    >>> params = jnp.array([10.0, -20.0])
    >>> state = tx.init(params)
    >>> for _ in range(2):
    ...   updates, state = tx.update(2 * params, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> # ũ_0 = -0.1 sign(g_0) = (-0.1, 0.1), g_1 = (19.8, -39.8), so the rule's
    >>> # s_1 = 1 - 0.1 c, c = cos(g_1, ũ_0) = -5.96 / (0.1 √2 ‖g_1‖) = -0.948;
    >>> # the noise gate's start lengthens it by e^{-(0.1 / √v̂ - 0.1) m̂}, m̂ and
    >>> # v̂ the bias-corrected moments of the cosines (0, c): (1 - 0.1 c) 1.024.
    >>> # (Steps of 0.6 % of ‖θ‖, well inside the relative step bound of 3 %.)
    >>> print(f"{hgo.get_learning_rate(state, base_learning_rate=0.1):.4f}")
    0.1121

  References:
    Baydin et al., `Online Learning Rate Adaptation with Hypergradient Descent
    <https://arxiv.org/abs/1703.04782>`_, ICLR 2018; Chandra et al.,
    `Gradient Descent: The Ultimate Optimizer
    <https://arxiv.org/abs/1909.13371>`_, NeurIPS 2022 (hyper-optimizers);
    Donini et al., `Scheduling the Learning Rate via Hypergradients: New
    Insights and a New Algorithm <https://arxiv.org/abs/1910.08525>`_, 2020
    (MARTHE: ``horizon``, ``curvature``); Wu et al., `Understanding
    Short-Horizon Bias in Stochastic Meta-Optimization
    <https://arxiv.org/abs/1803.02021>`_, ICLR 2018.
  """
  min_scale = _renamed(min_scale, min_rate, "min_scale", "min_rate")
  max_scale = _renamed(max_scale, max_rate, "max_scale", "max_rate")
  _core.check_common(
      hyper_lr=hyper_lr, granularity=granularity, min_rate=min_scale,
      max_rate=max_scale, bound_names=("min_scale", "max_scale"), rule=rule)
  _validation.check_positive("initial_scale", initial_scale)
  # None, not 1, by default: optax.inject_hyperparams turns every numeric
  # default into a (traced) array, and the horizon must stay static.
  horizon = DEFAULT_HORIZON if horizon is None else horizon
  _validation.check_horizon(horizon, curvature)
  noise_gate = _noise_gate(noise_gate, rule, hyper_optimizer, horizon)
  max_relative_step = _core.relative_step_bound(max_relative_step)
  if not isinstance(inner, optax.GradientTransformation):
    raise TypeError(
        "inner must be an optax.GradientTransformation (e.g. optax.adam(1e-3));"
        f" got {type(inner).__name__}.")
  return _core.hypergradient_descent(
      inner,
      state_cls=ScaleByHypergradientState,
      sign=1.0,
      initial_rate=initial_scale,
      rate_rule=_rate_rule(rule, hyper_lr, hyper_optimizer, overshoot_guard,
                           min_scale, max_scale, noise_gate),
      granularity=granularity,
      buffer_dtype=buffer_dtype,
      axis_name=axis_name,
      tangent_decay=(_core.run_decay if isinstance(horizon, str)
                     else 1.0 - 1.0 / horizon),
      curvature=curvature,
      # The guard's other half: a step that overshot ends the tangent's
      # memory (see rules.follow_last_step).
      restart_cosine=(rules_lib.LAST_STEP_COSINE if overshoot_guard
                      else None),
      delayed=delayed,
      max_relative_step=max_relative_step,
      min_rate=min_scale,
      bound_active=rules_lib.rule_active(hyper_lr, hyper_optimizer),
  )
