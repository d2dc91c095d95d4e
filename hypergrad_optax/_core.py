"""The one mechanism behind every hypergradient optimizer in this package.

A hypergradient optimizer is a *direction* transform ``D`` (an Optax
transform: ``scale_by_adam``, ``trace``, an identity, or a whole user
optimizer) whose output is scaled by an adapted *rate* ``r``::

  u_t = sign * r_t ⊙ D(g_t)

The rate moves before it is used, by (hyper)gradient descent on the loss::

  h_t = ∂f(θ_{t-1}) / ∂r_{t-1} = sign * g_t · D_{t-1}
  additive:        r_t = r_{t-1} - β h_t
  multiplicative:  r_t = r_{t-1} (1 - β h_t / (‖g_t‖ ‖D_{t-1}‖))

The aliases (``sgd_hd``, ``adam_hd``, ...) use ``sign = -1`` and a rate that
is the learning rate ``α``; the generic :func:`hypergradient` wrapper uses
``sign = +1`` on an already-signed update and a dimensionless scale ``s``.

``D_{t-1}`` is either kept in the state or, when the direction's own state
allows, recomputed from it (Adam's moments, the momentum trace), which saves a
parameter-sized buffer.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

from hypergrad_optax import _tree
from hypergrad_optax import _validation

Rate = Union[jax.Array, optax.Updates]
PreviousDirectionFn = Callable[[optax.OptState], optax.Updates]
AxisName = _tree.AxisName


class HypergradientState(NamedTuple):
  """State of the hypergradient aliases (``sgd_hd``, ``adam_hd``, ...).

  The field names are the checkpoint schema.

  Attributes:
    count: number of updates taken, int32 scalar.
    learning_rate: the current adapted learning rate ``α_t`` (used by the most
      recent update): a float32 scalar for ``granularity='global'`` (float64
      with float64 params), else a pytree shaped by the granularity.
    inner_state: state of the base direction (e.g. ``ScaleByAdamState``).
    previous_direction: the previous step's direction ``d_{t-1}`` where it
      cannot be recomputed from ``inner_state``; ``()`` otherwise.
    previous_grad_norm: with ``overshoot_guard``, ``‖g_{t-1}‖`` reduced like
      the rate (one norm, one per tensor, or ``|g|`` per element); ``()``
      otherwise.
    hyper_state: with a ``hyper_optimizer``, its state (the rate is its
      params; a hypergradient state again when stacked); ``()`` for the
      default plain-SGD rule.
  """

  count: jax.Array
  learning_rate: Rate
  inner_state: optax.OptState
  previous_direction: optax.Updates
  previous_grad_norm: Any
  hyper_state: Any = ()


class ScaleByHypergradientState(NamedTuple):
  """State of :func:`hypergrad_optax.hypergradient`.

  The field names are the checkpoint schema.

  Attributes:
    count: number of updates taken, int32 scalar.
    scale: the adapted factor ``s_t`` applied to the inner optimizer's update
      (starts at 1): a float32 scalar for ``granularity='global'`` (float64 with
      float64 params), else a pytree shaped by the granularity. The effective
      learning rate is ``s_t`` times the inner optimizer's own rate; see
      :func:`hypergrad_optax.get_learning_rate`.
    inner_state: state of the wrapped optimizer.
    previous_update: the wrapped optimizer's previous (unscaled) update.
    previous_grad_norm: with ``overshoot_guard``, ``‖g_{t-1}‖`` reduced like
      the scale; ``()`` otherwise.
    hyper_state: with a ``hyper_optimizer``, its state (the scale is its
      params; a hypergradient state again when stacked); ``()`` for the
      default plain-SGD rule.
  """

  count: jax.Array
  scale: Rate
  inner_state: optax.OptState
  previous_update: optax.Updates
  previous_grad_norm: Any
  hyper_state: Any = ()


def rate_dtype(params: Any) -> jnp.dtype:
  """float64 when any parameter is float64, else float32."""
  dtypes = {jnp.dtype(leaf.dtype) for leaf in jax.tree.leaves(params)}
  return jnp.dtype(jnp.float64 if jnp.dtype(jnp.float64) in dtypes
                   else jnp.float32)


def init_rate(value: Any, params: Any, granularity: str,
              dtype: jnp.dtype) -> Rate:
  """The initial rate: a scalar, one scalar per leaf, or one per element."""
  value = jnp.asarray(value, dtype)
  if granularity == "global":
    return value
  if granularity == "per-tensor":
    # One array per leaf, not one shared: a state holding the same buffer
    # twice cannot be donated (jit(..., donate_argnums) rejects it).
    return jax.tree.map(lambda _: jnp.array(value), params)
  # full_like, not full(shape): per-element rates take each parameter's
  # sharding, which explicit-sharding jit requires where they meet.
  return jax.tree.map(lambda p: jnp.full_like(p, value, dtype), params)


def next_rate(
    rate: Rate,
    grads: optax.Updates,
    previous_direction: optax.Updates,
    *,
    sign: float,
    hyper_lr: Any,
    rule: str,
    granularity: str,
    min_rate: Any = None,
    max_rate: Any = None,
    previous_grad_norm: Any = None,
    hyper_optimizer: Optional[optax.GradientTransformation] = None,
    hyper_state: Any = (),
    axis_name: AxisName = None,
) -> tuple[Rate, Rate, Any]:
  """One hypergradient step on the rate, guarded and bounded.

  The step is plain SGD on the rate with ``hyper_lr`` (the paper), or one
  step of ``hyper_optimizer`` fed the hypergradient as the rate's gradient:
  ``sign * h`` for the additive rule, ``r * sign * h / (‖g‖ ‖D‖)`` for the
  multiplicative one, so that ``optax.sgd(β)`` reproduces either rule.

  Args:
    rate: the current rate ``r_{t-1}`` (scalar or pytree per granularity).
    grads: ``g_t``, the gradient at the current parameters.
    previous_direction: ``D_{t-1}``, the direction the last update scaled.
    sign: ``-1`` when the update is ``-r D`` (aliases), ``+1`` for ``r D``.
    hyper_lr: ``β``.
    rule: ``'additive'`` or ``'multiplicative'``.
    granularity: ``'global'``, ``'per-tensor'`` or ``'per-element'``.
    min_rate: optional lower bound on the new rate.
    max_rate: optional upper bound on the new rate.
    previous_grad_norm: optional ``‖g_{t-1}‖`` (reduced like the rate). Given
      it, the overshoot guard acts; see :func:`_cap_at_secant`.
    hyper_optimizer: optional Optax transform updating the rate (its params)
      from its hypergradient; replaces the SGD step with ``hyper_lr``.
    hyper_state: ``hyper_optimizer``'s state (``()`` without one).
    axis_name: the ``shard_map``/``pmap`` axis (or axes) over which the
      parameters are sharded; dot products and norms are summed over it.

  Returns:
    ``(r_t, ‖g_t‖, hyper_state)``; entries of ``r_t`` whose hypergradient step
    is not finite keep ``r_{t-1}``. ``‖g_t‖`` is reduced like the rate (None
    unless it was needed). ``hyper_state`` is the hyper-optimizer's new state
    (unchanged when any hypergradient entry is not finite; see
    :func:`hyper_step`).
  """
  dtype = jax.tree.leaves(rate)[0].dtype if jax.tree.leaves(rate) else (
      jnp.float32)
  beta = jnp.asarray(hyper_lr, dtype)
  h = _tree.reduce_product(jnp.multiply, grads, previous_direction, granularity, dtype,
                axis_name)

  def cosine(h, gg, dd):
    norm = jnp.sqrt(gg) * jnp.sqrt(dd)
    # No previous direction (first step) or a zero gradient: no information.
    return jnp.where(norm > 0, h / jnp.where(norm > 0, norm, 1), 0)

  grad_norm = None
  if rule == "multiplicative" or previous_grad_norm is not None:
    # |x|·|x| (= x² exactly): XLA shares a plain x² with optax's Adam and then
    # materialises it as a parameter-sized array, an extra memory pass.
    square = lambda x, _: jnp.abs(x) * jnp.abs(x)  # pylint: disable=unnecessary-lambda-assignment
    gg = _tree.reduce_product(square, grads, grads, granularity, dtype, axis_name)
    dd = _tree.reduce_product(square, previous_direction, previous_direction,
                   granularity, dtype, axis_name)
    grad_norm = jax.tree.map(jnp.sqrt, gg)

  # The rate's hypergradient under each rule: SGD on it with β is the rule.
  if rule == "additive":
    hypergrad = jax.tree.map(lambda h: sign * h, h)
  else:
    hypergrad = jax.tree.map(
        lambda r, h, gg, dd: r * (sign * cosine(h, gg, dd)), rate, h, gg, dd)

  if hyper_optimizer is not None:
    proposed, hyper_state = hyper_step(hyper_optimizer, hyper_state, rate,
                                       hypergrad)
  else:
    proposed = jax.tree.map(lambda r, g: r - beta * g, rate, hypergrad)

  if previous_grad_norm is not None:
    # β = 0 must reproduce the inner optimizer exactly: no cap either.
    adapting = True if hyper_optimizer is not None else beta > 0
    proposed = jax.tree.map(
        lambda r, p, h, n, dd: _cap_at_secant(r, p, sign * h, n * jnp.sqrt(dd),
                                              adapting),
        rate, proposed, h, previous_grad_norm, dd)

  def guard(old, new):
    # A NaN/Inf hypergradient (e.g. an overflowed gradient) must not poison
    # the rate for the rest of training: keep the previous value.
    new = jnp.where(jnp.isfinite(new), new, old)
    if min_rate is not None:
      new = jnp.maximum(new, jnp.asarray(min_rate, new.dtype))
    if max_rate is not None:
      new = jnp.minimum(new, jnp.asarray(max_rate, new.dtype))
    return new.astype(old.dtype)

  return jax.tree.map(guard, rate, proposed), grad_norm, hyper_state


def hyper_step(hyper_optimizer, hyper_state, rate, hypergrad):
  """One step of ``hyper_optimizer`` on the rate, skipped when not finite.

  A NaN/Inf hypergradient carries no information: like
  ``optax.apply_if_finite``, the hyper-optimizer's whole step is skipped
  (rate and state), so that neither its moments nor, when stacked, its own
  stored hypergradient are poisoned for the rest of training.
  """
  updates, new_state = hyper_optimizer.update(hypergrad, hyper_state, rate)
  proposed = jax.tree.map(lambda r, u: r + u.astype(r.dtype), rate, updates)
  finite = jnp.all(jnp.stack(
      [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(hypergrad)]))
  keep = lambda new, old: jnp.where(finite, new, old)  # pylint: disable=unnecessary-lambda-assignment
  return (jax.tree.map(keep, proposed, rate),
          jax.tree.map(keep, new_state, hyper_state))


# The overshoot guard acts when h > OVERSHOOT_RATIO * A (see _cap_at_secant).
# h / A is about the growth factor of the gradient along the last step. At 1
# (any growth) minibatch noise on a plateau triggered it often enough to stall
# a digits MLP (final loss 0.051 vs 0.035 unguarded, from lr 1e-5); at 4 or
# more it missed the moderate divergence (growth 2-4x per step) of
# hypergradient(optax.sgd(0.1)) on a full-batch tanh MLP. 3 rescues every
# deterministic case of the tests and costs little in minibatch training.
OVERSHOOT_RATIO = 3.0


def _cap_at_secant(rate, proposed, slope_now, bound_before, adapting=True):
  """Caps the rate after a large overshoot of the last step.

  Along the last step, ``φ(σ) = f(θ_{t-2} + σ D_{t-1})`` had slope
  ``φ'(0) = g_{t-1}·D_{t-1} >= -A`` at its start, ``A = ‖g_{t-1}‖‖D_{t-1}‖``,
  and has slope ``h = φ'(r) > 0`` now: it passed a minimum. Fitting ``φ'``
  linearly puts that minimum at ``r |φ'(0)| / (|φ'(0)| + h) <= r A / (A + h)``,
  so capping at ``r A / (A + h)`` never shrinks more than the secant does.
  Acting only when ``h > 3 A`` (the new gradient's component along the step
  exceeds three times the old gradient's norm, as in divergence; see
  ``OVERSHOOT_RATIO``) keeps most gradient noise from triggering it. No rule
  that changes the rate by a bounded ratio per step shrinks it fast enough
  when the step is far too large. ``adapting`` False (``β = 0``) disables it.
  """
  overshoot = (slope_now > OVERSHOOT_RATIO * bound_before) & adapting
  secant = rate * bound_before / jnp.where(overshoot,
                                           bound_before + slope_now, 1)
  return jnp.where(overshoot, jnp.minimum(proposed, secant), proposed)


def _ordered_after(rate: Rate, tree: optax.Updates,
                   granularity: str) -> optax.Updates:
  """``tree``, selected by a predicate on ``rate`` that always holds.

  The hypergradient reads the old state (the stored ``D_{t-1}``, or the
  moments it is recomputed from); the step then overwrites that state, in
  place when the caller donates it. Unless the overwrite depends on the
  hypergradient by data, XLA cannot order the two and copies every such
  state buffer first, which made the optimizer step several times slower on
  CPU (an ``optimization_barrier`` is dropped there). A ``select`` on
  ``r == r`` (the rate is never NaN) adds that dependence without changing
  any value.
  """
  def leaf(r, g):
    return jnp.where(r == r, g, jnp.zeros_like(g))  # pylint: disable=comparison-with-itself
  if granularity == "global":
    return jax.tree.map(lambda g: leaf(rate, g), tree)
  return jax.tree.map(leaf, rate, tree)


def scale_by_rate(rate: Rate, direction: optax.Updates, *, sign: float,
                  granularity: str, like: optax.Updates) -> optax.Updates:
  """``sign * rate ⊙ direction`` in the rate's precision, cast like ``like``."""
  def leaf(r, d, ref):
    return (r * d.astype(r.dtype)).astype(ref.dtype)
  signed = jax.tree.map(lambda r: sign * r, rate)
  if granularity == "global":
    return jax.tree.map(lambda d, ref: leaf(signed, d, ref), direction, like)
  return jax.tree.map(leaf, signed, direction, like)


def hypergradient_descent(
    direction: optax.GradientTransformation,
    *,
    state_cls: type,
    sign: float,
    initial_rate: Any,
    hyper_lr: Any,
    rule: str,
    granularity: str,
    min_rate: Any = None,
    max_rate: Any = None,
    previous_direction_fn: Optional[PreviousDirectionFn] = None,
    buffer_dtype: Any = None,
    weight_decay: Any = None,
    overshoot_guard: bool = False,
    axis_name: AxisName = None,
    hyper_optimizer: Optional[optax.GradientTransformation] = None,
) -> optax.GradientTransformationExtraArgs:
  """Builds a hypergradient optimizer over ``direction``; see module doc.

  Args:
    direction: the transform whose output is scaled by the adapted rate.
    state_cls: ``HypergradientState`` or ``ScaleByHypergradientState``; its
      fields are, in order, count, rate, inner state, previous direction,
      previous gradient norm, hyper-optimizer state.
    sign: ``-1`` (update is ``-r d``) or ``+1`` (update is ``r d``).
    initial_rate: ``r_0``.
    hyper_lr: ``β``.
    rule: ``'additive'`` or ``'multiplicative'``.
    granularity: ``'global'``, ``'per-tensor'`` or ``'per-element'``.
    min_rate: optional lower bound on the rate.
    max_rate: optional upper bound on the rate.
    previous_direction_fn: recomputes ``d_{t-1}`` from the direction's state;
      when None, ``d_{t-1}`` is stored in the state.
    buffer_dtype: dtype of the stored ``d_{t-1}`` (None: the direction's own).
    weight_decay: coupled L2 decay ``g ← g + λ θ`` applied before everything
      (the hypergradient included), or None.
    overshoot_guard: cap the rate after a large overshoot of the last step
      (see :func:`_cap_at_secant`); keeps ``‖g_{t-1}‖`` (shaped like the rate).
    hyper_optimizer: an Optax transform that updates the rate (its params)
      from the rate's hypergradient (its gradient), replacing the plain SGD
      step with ``hyper_lr``; see :func:`next_rate`. Bounds, the non-finite
      guard and the overshoot guard apply after its step.
    axis_name: mapped axis name(s) over which the parameters are sharded in
      ``shard_map``/``pmap``; None when each device holds whole leaves
      (replicated data parallelism, or jit with shardings). Every leaf must
      then be sharded over it: a replicated leaf would be counted once per
      device.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.
  """
  if not (hyper_optimizer is None
          or isinstance(hyper_optimizer, optax.GradientTransformation)):
    raise TypeError(
        "hyper_optimizer must be None or an optax.GradientTransformation "
        f"(e.g. optax.adam(1e-4)); got {type(hyper_optimizer).__name__}.")
  _validation.check_axis_name(axis_name)
  direction = optax.with_extra_args_support(direction)
  store_previous = previous_direction_fn is None

  def init_fn(params):
    inner_state = direction.init(params)
    previous = ()
    if store_previous:
      previous = optax.tree.zeros_like(params, dtype=buffer_dtype)
    rate = init_rate(initial_rate, params, granularity, rate_dtype(params))
    grad_norm = optax.tree.zeros_like(rate) if overshoot_guard else ()
    hyper_state = () if hyper_optimizer is None else hyper_optimizer.init(rate)
    return state_cls(jnp.zeros([], jnp.int32), rate, inner_state, previous,
                     grad_norm, hyper_state)

  def update_fn(updates, state, params=None, **extra_args):
    count, rate, inner_state, previous, grad_norm, hyper_state = state
    if weight_decay is not None:
      if params is None:
        raise ValueError(
            "weight_decay needs the parameters: call "
            "update(grads, state, params); got params=None.")
      updates = jax.tree.map(
          lambda g, p: g + (weight_decay * p).astype(g.dtype), updates, params)
    if not store_previous:
      previous = previous_direction_fn(inner_state)
    _validation.check_same_structure(updates, previous, "previous direction")
    rate, new_grad_norm, hyper_state = next_rate(
        rate, updates, previous, sign=sign, hyper_lr=hyper_lr, rule=rule,
        hyper_optimizer=hyper_optimizer, hyper_state=hyper_state,
        granularity=granularity, min_rate=min_rate, max_rate=max_rate,
        previous_grad_norm=grad_norm if overshoot_guard else None,
        axis_name=axis_name)
    if not store_previous:
      # The direction overwrites the state d_{t-1} was recomputed from. (Not
      # done otherwise: it changes how XLA fuses, and so rounds, the inner
      # optimizer, which hyper_lr=0 must reproduce bit for bit.)
      updates = _ordered_after(rate, updates, granularity)
    new_direction, inner_state = direction.update(
        updates, inner_state, params, **extra_args)
    like = updates if params is None else params
    new_updates = scale_by_rate(rate, new_direction, sign=sign,
                                granularity=granularity, like=like)
    if store_previous:
      # Cast to the stored dtype so that the state's dtypes never drift.
      previous = optax.tree.cast_like(
          _ordered_after(rate, new_direction, granularity), state[3])
    if overshoot_guard:
      grad_norm = new_grad_norm
    # A recomputed d_{t-1} is not state: keep init's empty placeholder, so
    # the state's structure (lax.scan, lax.cond) and size never change.
    stored = previous if store_previous else state[3]
    return new_updates, state_cls(optax.safe_increment(count), rate,
                                  inner_state, stored, grad_norm,
                                  hyper_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def check_common(*, hyper_lr, rule, granularity, min_rate, max_rate) -> None:
  """Construction-time checks shared by the wrapper and the aliases."""
  _validation.check_non_negative("hyper_lr", hyper_lr)
  _validation.check_choice("rule", rule, _validation.RULES)
  _validation.check_choice("granularity", granularity,
                           _validation.GRANULARITIES)
  _validation.check_bounds(min_rate, max_rate)
