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

import functools
from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hypergrad_optax import rules as _rules
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
    hyper_state: the rule's state: with the default noise gate a
      :class:`hypergrad_optax.rules.NoiseGateState` (the running moments of
      the tangent's cosine; since 0.5.0); with a ``hyper_optimizer``, its
      state (the scale is its params; a hypergradient state again when
      stacked); ``()`` for the plain-SGD rule without the gate.
    tangent: with a horizon over several steps (the default), the
      discounted tangent ``Z_{t-1}`` the rate's hypergradient is taken along
      (see :func:`decay_tangent`); ``()`` with the one-step rule
      (``horizon=1``).
  """

  count: jax.Array
  scale: Rate
  inner_state: optax.OptState
  previous_update: optax.Updates
  previous_grad_norm: Any
  hyper_state: Any = ()
  tangent: optax.Updates = ()


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


def _square(x, _):
  # |x|·|x| (= x² exactly): XLA shares a plain x² with optax's Adam and then
  # materialises it as a parameter-sized array, an extra memory pass.
  return jnp.abs(x) * jnp.abs(x)


def signal_sums(grads: optax.Updates, previous_direction: optax.Updates,
                tangent: Optional[optax.Updates], *, granularity: str, dtype,
                read: Optional[frozenset] = None) -> dict[str, Any]:
  """Per leaf, the sums behind the signals: ``g·D``, ``‖D‖²``, ``‖g‖²``, and
  with a tangent ``g·d`` and ``‖d‖²`` of the last step.

  Keyed by the :class:`RateSignals` field each gives; only those in ``read``
  (all when None; ``hypergradient`` always). All of a leaf's sums are one
  pass over its buffers (:func:`hypergrad_optax._tree.leaf_sums`). Per
  element granularity keeps the products, any other the sum of each leaf.
  """
  along = previous_direction if tangent is None else tangent
  terms = {"hypergradient": (jnp.multiply, grads, along),
           "direction_norm": (_square, along, along),
           "grad_norm": (_square, grads, grads)}
  if tangent is not None:
    terms["step_hypergradient"] = (jnp.multiply, grads, previous_direction)
    terms["step_direction_norm"] = (_square, previous_direction,
                                    previous_direction)
  names = [n for n in terms
           if read is None or n in read or n == "hypergradient"]
  per = "per-element" if granularity == "per-element" else "per-tensor"
  return dict(zip(names, _tree.leaf_sums([terms[n] for n in names], per,
                                         dtype)))


def rate_signals(
    rate: Rate,
    grads: optax.Updates,
    previous_direction: optax.Updates,
    *,
    sign: float,
    granularity: str,
    previous_grad_norm: Any = None,
    axis_name: AxisName = None,
    tangent: Optional[optax.Updates] = None,
    sums: Optional[dict[str, Any]] = None,
) -> _rules.RateSignals:
  """What a rate rule sees: ``sign * g_t·D_{t-1}``, ``‖g_t‖``, ``‖D_{t-1}‖``.

  ``D_{t-1}`` is ``tangent`` when given (a longer horizon; the last step's
  ``d_{t-1}`` then gives the ``step_*`` signals), else the previous direction.
  Each is reduced like the rate, in its dtype, and summed over ``axis_name``
  (see :func:`hypergrad_optax._tree.finish_sums`). ``sums``: the per-leaf
  sums of :func:`signal_sums` when already taken (every signal when None); a
  signal without its sum is zero (for fields no rule reads).
  """
  dtype = jax.tree.leaves(rate)[0].dtype if jax.tree.leaves(rate) else (
      jnp.float32)
  if sums is None:
    sums = signal_sums(grads, previous_direction, tangent,
                       granularity=granularity, dtype=dtype)
  def signal(name, finish):
    if name not in sums:
      return jax.tree.map(jnp.zeros_like, rate)
    total = _tree.finish_sums(sums[name], granularity, dtype, axis_name)
    return jax.tree.map(finish, total)
  norm = lambda name: signal(name, jnp.sqrt)  # pylint: disable=unnecessary-lambda-assignment
  dot = lambda name: signal(name, lambda x: sign * x)  # pylint: disable=unnecessary-lambda-assignment
  longer = tangent is not None
  return _rules.RateSignals(
      hypergradient=dot("hypergradient"),
      grad_norm=norm("grad_norm"),
      direction_norm=norm("direction_norm"),
      previous_grad_norm=previous_grad_norm,
      step_hypergradient=dot("step_hypergradient") if longer else None,
      step_direction_norm=norm("step_direction_norm") if longer else None)


class RelativeStepBound(NamedTuple):
  r"""The relative step bound's two levels: ``max_relative_step=...``.

  Each step's factor is capped so that the step moves the parameters by at
  most a fraction of their norm (see :func:`hypergradient`); the fraction
  is ``rising`` on a step where the rule raises the factor (the rule's new
  factor above the stored one: its evidence asks for longer steps) and
  ``limit`` on every other step:

  .. math::
    s_t \le \kappa_t \|\theta_{t-1}\| / \|\tilde u_t\|, \qquad
    \kappa_t = \begin{cases} \kappa_\uparrow & s'_t > s_{t-1} \\
    \kappa & \text{otherwise,} \end{cases}

  :math:`s'_t` the rule's factor before the cap. A far-too-large start,
  whose factor the rule does not raise, is held at ``limit``; a norm that
  grows from near zero (zero-initialised weights), or a short run whose
  tuned first steps are large, climbs at up to ``rising`` per step. A
  number ``κ`` passed as ``max_relative_step`` means one level,
  ``RelativeStepBound(κ, κ)``; a pair ``(κ, κ↑)`` means this.

  Attributes:
    limit: :math:`\kappa`, the fraction on a step where the rule does not
      raise the factor.
    rising: :math:`\kappa_\uparrow \ge \kappa`, the fraction on a step
      where it does.

  Example:
    >>> import optax, hypergrad_optax as hgo
    >>> tx = hgo.hypergradient(
    ...     optax.adam(1e-3),
    ...     max_relative_step=hgo.RelativeStepBound(limit=0.05, rising=0.2))
  """
  limit: float
  rising: float


def relative_step_bound(value: Any) -> Optional[RelativeStepBound]:
  """``max_relative_step`` (None, a number or a pair), checked, as a
  :class:`RelativeStepBound` (or None)."""
  if value is None:
    return None
  if isinstance(value, (tuple, list)):
    if len(value) != 2:
      raise ValueError(
          "max_relative_step must be None, a number κ > 0 or a pair "
          f"(κ, κ_rising) (a RelativeStepBound); got {value!r}.")
    bound = RelativeStepBound(*value)
  else:
    bound = RelativeStepBound(value, value)
  for name, x in (("max_relative_step", bound.limit),
                  ("max_relative_step's rising level", bound.rising)):
    if (isinstance(x, bool)
        or not isinstance(x, (int, float, np.ndarray, jax.Array))):
      raise TypeError(f"{name} must be a number; got {x!r}.")
    _validation.check_positive(name, x)
  limit, rising = (_validation.concrete_float(x) for x in bound)
  if limit is not None and rising is not None and rising < limit:
    raise ValueError(
        "max_relative_step's rising level must be at least its limit (a "
        "rising factor may move further, not less far); got "
        f"{value!r}.")
  return bound


def relative_step_limit(params: optax.Params, direction: optax.Updates,
                        max_ratio: Any, *, granularity: str, dtype,
                        axis_name: AxisName = None) -> Rate:
  r"""The largest rate at which the step moves ``params`` by ``max_ratio``.

  .. math::
    r_{\max} = \kappa \, \|\theta_{t-1}\| / \|d_t\|,

  global norms, or per tensor (a rate per tensor); ``max_ratio`` is
  :math:`\kappa`, shaped like the rate (one per factor: the bound's level
  may differ from factor to factor); ``inf`` where either norm
  is zero or not finite (a zero-initialised tensor at the first step, a zero
  direction). Relative step sizes are what the trust ratios of LARS and LAMB
  (You et al., 2017, 2020) and Fromage (Bernstein et al., "On the distance
  between two neural networks and the stability of learning", NeurIPS 2020)
  bound; here the limit caps only the adapted rate.
  """
  param_sq, direction_sq = _tree.leaf_sums(
      [(_square, params, params), (_square, direction, direction)],
      "per-tensor", dtype)
  finish = lambda t: _tree.finish_sums(t, granularity, dtype, axis_name)  # pylint: disable=unnecessary-lambda-assignment

  def leaf(kappa, p2, d2):
    ok = (p2 > 0) & (d2 > 0) & jnp.isfinite(p2) & jnp.isfinite(d2)
    limit = kappa.astype(dtype) * jnp.sqrt(p2 / jnp.where(ok, d2, 1))
    return jnp.where(ok, limit, jnp.inf).astype(dtype)
  return jax.tree.map(leaf, max_ratio, finish(param_sq),
                      finish(direction_sq))


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


def _signals_template(rate: Rate, rule: _rules.RateRule,
                      tangent: Optional[optax.Updates]) -> _rules.RateSignals:
  """:class:`RateSignals` of the step's structure, each signal ``rate``
  (its shape and dtype): what :func:`_read_signals` traces the rule on."""
  longer = rate if tangent is not None else None
  return _rules.RateSignals(
      rate, rate, rate, rate if rule.keeps_grad_norm else None, longer,
      longer)


def _read_signals(rule: _rules.RateRule, rate: Rate,
                  signals: _rules.RateSignals, state: Any) -> frozenset:
  """The names of the ``signals`` fields whose values ``rule``'s step reads.

  Read off the step's jaxpr with dead code removed (every field when that
  cannot be done). Under ``jax.jit`` XLA drops a reduction no rule reads; the
  delayed rule must know which are computed to order the state's overwrite
  after exactly those.
  """
  try:
    from jax._src.interpreters import partial_eval as pe  # pylint: disable=import-outside-toplevel
    flat, treedef = jax.tree.flatten((rate, signals, state))
    def step(*leaves):
      return rule.update(*jax.tree.unflatten(treedef, leaves))
    closed = jax.make_jaxpr(step)(*[
        jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)) for x in flat])
    _, used = pe.dce_jaxpr(closed.jaxpr, [True] * len(closed.jaxpr.outvars))
    read, start = set(), len(jax.tree.leaves(rate))
    for name in signals._fields:
      count = len(jax.tree.leaves(getattr(signals, name)))
      if any(used[start:start + count]):
        read.add(name)
      start += count
    return frozenset(read)
  except Exception:  # pylint: disable=broad-exception-caught
    return frozenset(signals._fields)


def _leaf_tokens(grads: optax.Updates, sums: dict[str, Any],
                 read: frozenset) -> optax.Updates:
  """Each leaf's own share of the reductions the rule reads.

  ``g·D_{t-1}`` and ``‖D_{t-1}‖²`` (``D`` the tangent when kept, else the
  previous direction) and, with a tangent, ``g·d_{t-1}`` and ``‖d_{t-1}‖²``
  of the last step: the per-leaf sums of :func:`signal_sums` (per element:
  the products) before the sum over leaves or devices, each only when the
  rule reads it (``read``: field names of :class:`RateSignals`). What each
  leaf's overwrite of the old state can be ordered after without waiting for
  the other leaves.
  """
  dtype = jax.tree.leaves(sums["hypergradient"])[0].dtype
  shares = [sums[name] for name in ("hypergradient", "direction_norm",
                                    "step_hypergradient",
                                    "step_direction_norm")
            if name in sums and (name == "hypergradient" or name in read)]
  tokens = functools.reduce(
      lambda a, b: jax.tree.map(jnp.add, a, b), shares)
  # Plus one entry of every gradient: each update also waits for the whole
  # backward pass, as the exact rule's does (not for the reductions). Without
  # it XLA cannot order a layer's in-place parameter write after the backward
  # pass's last read of that parameter and copies it first, as it does for
  # the base optimizers.
  done = sum((jnp.ravel(g)[0].astype(dtype) for g in jax.tree.leaves(grads)),
             jnp.zeros((), dtype))
  return jax.tree.map(lambda t: t + done, tokens)


def _ordered_after_leafwise(tokens: optax.Updates,
                            tree: optax.Updates) -> optax.Updates:
  """``tree``, each leaf selected by a predicate on its token that always holds.

  :func:`_ordered_after` for the delayed rule, whose update does not wait for
  the rate: each leaf's overwrite of the state that its share of the
  hypergradient read is ordered after that share only. The predicate is on
  the token's bits, ``(bits | 1) != 0``, true for every value, NaN included
  (a gradient may be NaN; the rate of ``_ordered_after`` never is), and not
  folded away by XLA.
  """
  def leaf(token, x):
    bits = jax.lax.bitcast_convert_type(token.astype(jnp.float32), jnp.int32)
    return jnp.where((bits | 1) != 0, x, jnp.zeros_like(x))
  return jax.tree.map(leaf, tokens, tree)


def scale_by_rate(rate: Rate, direction: optax.Updates, *, sign: float,
                  granularity: str, like: optax.Updates) -> optax.Updates:
  """``sign * rate ⊙ direction`` in the rate's precision, cast like ``like``."""
  def leaf(r, d, ref):
    return (r * d.astype(r.dtype)).astype(ref.dtype)
  signed = jax.tree.map(lambda r: sign * r, rate)
  if granularity == "global":
    return jax.tree.map(lambda d, ref: leaf(signed, d, ref), direction, like)
  return jax.tree.map(leaf, signed, direction, like)


def run_decay(count: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
  """``μ_t = 1 - 1/(2t)``, ``t = count + 1``: a horizon of twice the run so far.

  The product of these discounts from step ``k`` to ``t`` is about
  ``√(k/t)``, so ``Z_t ≈ Σ_k √(k/t) D_k``: every update of the run counts,
  the recent ones most. Early in a run the horizon is short (a too-large
  start is cut as fast as by the one-step rule); late it spans thousands of
  steps (minibatch noise averages out).
  """
  t = count.astype(dtype) + 1
  return 1 - 1 / (2 * t)


def decay_tangent(tangent: optax.Updates, new_direction: optax.Updates,
                  old_rate: Rate, new_rate: Rate, decay: Any,
                  granularity: str,
                  correction: Optional[optax.Updates] = None,
                  restart: Optional[Rate] = None) -> optax.Updates:
  """``Z_t = μ (r_{t-1}/r_t) (Z_{t-1} + C_t) + D_t``: the discounted tangent.

  Perturbing every recent rate by the same relative amount ``ε`` moves the
  parameters by ``W_t = ∂θ_t/∂ε``, which follows MARTHE's recursion (Donini
  et al., 2020, eq. 12: ``Z_t = μ (∂Φ/∂θ) Z_{t-1} + ∂Φ/∂r``, ``Φ`` the
  optimizer's step) ``W_t = μ (W_{t-1} + sign r_t (∂D_t/∂g) H W_{t-1}) + sign
  r_t D_t``. Stored in the direction's units, ``Z_t = W_t / (sign r_t)``, so
  that ``sign g·Z`` is the rate's hypergradient as with ``D_{t-1}`` (``μ = 0``
  is the paper's one-step rule). ``correction`` is ``C_t = sign r_t (∂D_t/∂g)
  H Z_{t-1}`` (MARTHE's Jacobian term); None takes ``∂Φ/∂θ ≈ I``, a cheap
  tangent that is the discounted sum of the recent updates. A zero rate drops
  the history, and so does ``restart`` (a boolean shaped like the rate) where
  it holds.
  """
  def ratio(old, new):
    return jnp.where(new > 0, jnp.minimum(old / jnp.where(new > 0, new, 1), 1),
                     0) * jnp.asarray(decay, old.dtype)

  factor = jax.tree.map(ratio, old_rate, new_rate)
  if restart is not None:
    factor = jax.tree.map(lambda f, r: jnp.where(r, 0, f), factor, restart)
  # The cheap tangent has no correction term: none is built or added.
  history = tangent if correction is None else jax.tree.map(
      lambda z, c: z + c.astype(z.dtype), tangent, correction)

  def leaf(f, z, d):
    # A non-finite history (a NaN gradient once) would stay in a discounted
    # sum for good: drop it instead, as a zero rate does.
    z = z.astype(f.dtype)
    z = jnp.where(jnp.isfinite(z), z, 0)
    return (f * z + d.astype(f.dtype)).astype(d.dtype)
  if granularity == "global":
    return jax.tree.map(lambda z, d: leaf(factor, z, d), history,
                        new_direction)
  return jax.tree.map(leaf, factor, history, new_direction)


def _curvature_step(direction, updates, inner_state, params, tangent,
                    rate, sign, granularity, extra_args):
  """The direction's step and MARTHE's correction ``sign r (∂D/∂g) H Z``.

  ``H Z`` is a forward-mode Hessian-vector product of the ``grad_fn`` extra
  argument (``params -> gradient`` on the current batch), and ``∂D/∂g`` the
  forward-mode derivative of the direction at its current state, so the step
  costs about one extra gradient evaluation and one extra direction pass.
  """
  grad_fn = extra_args.get("grad_fn")
  if grad_fn is None:
    raise ValueError(
        "curvature=True needs the gradient function: call "
        "update(grads, state, params, grad_fn=lambda p: jax.grad(loss)(p, "
        "batch)).")
  if params is None:
    raise ValueError("curvature=True needs the parameters: call "
                     "update(grads, state, params, grad_fn=...).")
  tangent = optax.tree.cast_like(tangent, params)
  _, hz = jax.jvp(grad_fn, (params,), (tangent,))
  hz = optax.tree.cast_like(hz, updates)
  (new_direction, new_state), (jhz, _) = jax.jvp(
      lambda g: direction.update(g, inner_state, params, **extra_args),
      (updates,), (hz,))
  # Where the direction is not differentiable (Adam's sqrt at v = 0, a dead
  # unit's zero gradient) its derivative is NaN: no curvature term there.
  jhz = jax.tree.map(lambda x: jnp.where(jnp.isfinite(x), x, 0), jhz)
  correction = scale_by_rate(rate, jhz, sign=sign, granularity=granularity,
                             like=jhz)
  return new_direction, new_state, correction


def hypergradient_descent(
    direction: optax.GradientTransformation,
    *,
    state_cls: type,
    sign: float,
    initial_rate: Any,
    rate_rule: _rules.RateRule,
    granularity: str,
    previous_direction_fn: Optional[PreviousDirectionFn] = None,
    buffer_dtype: Any = None,
    weight_decay: Any = None,
    axis_name: AxisName = None,
    tangent_decay: float = 0.0,
    curvature: bool = False,
    delayed: bool = False,
    restart_cosine: Optional[float] = None,
    max_relative_step: Any = None,
    bound_active: Any = True,
    min_rate: Any = None,
) -> optax.GradientTransformationExtraArgs:
  """Builds a hypergradient optimizer over ``direction``; see module doc.

  Args:
    direction: the transform whose output is scaled by the adapted rate.
    state_cls: ``HypergradientState`` or ``ScaleByHypergradientState``; its
      fields are, in order, count, rate, inner state, previous direction,
      previous gradient norm, rate rule state.
    sign: ``-1`` (update is ``-r d``) or ``+1`` (update is ``r d``).
    initial_rate: ``r_0``.
    rate_rule: how the rate moves (:class:`hypergrad_optax._rules.RateRule`);
      its state is the state's ``hyper_state``, and the state's
      ``previous_grad_norm`` keeps ``‖g_{t-1}‖`` when it asks for it.
    granularity: ``'global'``, ``'per-tensor'`` or ``'per-element'``.
    previous_direction_fn: recomputes ``d_{t-1}`` from the direction's state;
      when None, ``d_{t-1}`` is stored in the state.
    buffer_dtype: dtype of the stored ``d_{t-1}`` (None: the direction's own).
    weight_decay: coupled L2 decay ``g ← g + λ θ`` applied before everything
      (the hypergradient included), or None.
    axis_name: mapped axis name(s) over which the parameters are sharded in
      ``shard_map``/``pmap``; None when each device holds whole leaves
      (replicated data parallelism, or jit with shardings). Every leaf must
      then be sharded over it: a replicated leaf would be counted once per
      device.
    tangent_decay: ``μ`` of :func:`decay_tangent`, in [0, 1), or a function
      ``(count, dtype) -> μ`` of the state's count (:func:`run_decay`). Above
      0 the rate's hypergradient is taken along the discounted tangent
      ``Z_{t-1}``, kept in the state's ``tangent`` field, and the stored
      previous direction ``d_{t-1}`` gives the last step's signals (the
      overshoot guard's). 0: along ``d_{t-1}``, the paper. Needs a stored
      direction.
    curvature: carry the tangent through the optimizer's Jacobian (MARTHE,
      with a Hessian-vector product of the ``grad_fn`` extra argument; see
      :func:`decay_tangent`) instead of taking it as the identity.
    delayed: apply each rate step one step late: step ``t`` updates with
      the rate chosen at step ``t-1`` (the state's rate is the one the *next*
      update uses), and ``h_t``, computed from this step's gradient, moves the
      rate of step ``t+1``. The update then does not wait for a reduction over
      every parameter: each leaf's update pass follows its own gradient (and
      its own share of ``h_t``) alone, as in the base optimizer. The rule's
      ``old rate / new rate`` (the tangent's decay) is that of its own step.
    restart_cosine: with a tangent, where the last step's cosine
      ``g_t·d_{t-1} / (‖g_t‖ ‖d_{t-1}‖)`` (sign included) exceeds it, the
      step overshot and the tangent restarts from the new direction: the
      history before it no longer says how the rate should move (None:
      never).
    max_relative_step: a :class:`RelativeStepBound` (see
      :func:`relative_step_bound`): caps the rate of each step at
      :func:`relative_step_limit` of its ``rising`` ratio where the rule
      raised the rate, of its ``limit`` elsewhere (None: no cap), where the
      parameters are given and the granularity is global or per tensor.
    bound_active: a boolean (possibly traced: ``β > 0``) that switches that
      cap on.
    min_rate: the rule's lower bound, which that cap respects (None: none).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.
  """
  _validation.check_axis_name(axis_name)
  direction = optax.with_extra_args_support(direction)
  store_previous = previous_direction_fn is None
  keeps_tangent = bool(tangent_decay or curvature)
  if keeps_tangent and not (store_previous
                            and "tangent" in state_cls._fields):
    raise ValueError("a longer horizon needs a stored previous direction "
                     "and a state with a tangent field.")

  def init_fn(params):
    inner_state = direction.init(params)
    previous = ()
    if store_previous:
      previous = optax.tree.zeros_like(params, dtype=buffer_dtype)
    rate = init_rate(initial_rate, params, granularity, rate_dtype(params))
    grad_norm = optax.tree.zeros_like(rate) if rate_rule.keeps_grad_norm else ()
    state = state_cls(jnp.zeros([], jnp.int32), rate, inner_state, previous,
                      grad_norm, rate_rule.init(rate))
    if keeps_tangent:
      # Its own zeros, not the previous direction's: a state holding one
      # buffer twice cannot be donated.
      state = state._replace(
          tangent=optax.tree.zeros_like(params, dtype=buffer_dtype))
    return state

  def update_fn(updates, state, params=None, **extra_args):
    count, old_rate, inner_state, previous, grad_norm, hyper_state = state[:6]
    tangent = state.tangent if keeps_tangent else None
    if weight_decay is not None:
      if params is None:
        raise ValueError(
            "weight_decay needs the parameters: call "
            "update(grads, state, params); got params=None.")
      updates = jax.tree.map(
          lambda g, p: g + (weight_decay * p).astype(g.dtype), updates, params)
    if not store_previous:
      previous = previous_direction_fn(inner_state)
    _validation.check_same_structure(updates, previous)
    read = _read_signals(rate_rule, old_rate,
                         _signals_template(old_rate, rate_rule, tangent),
                         hyper_state)
    needed = set(read)
    if rate_rule.keeps_grad_norm:
      needed.add("grad_norm")
    if tangent is not None and restart_cosine is not None:
      needed |= {"grad_norm", "step_hypergradient", "step_direction_norm"}
    dtype = jax.tree.leaves(old_rate)[0].dtype
    # One pass over g, D (and d) for all the sums the step needs.
    sums = signal_sums(updates, previous, tangent, granularity=granularity,
                       dtype=dtype, read=frozenset(needed))
    signals = rate_signals(
        old_rate, updates, previous, sign=sign, granularity=granularity,
        previous_grad_norm=grad_norm if rate_rule.keeps_grad_norm else None,
        axis_name=axis_name, tangent=tangent, sums=sums)
    next_rate, hyper_state = rate_rule.update(old_rate, signals, hyper_state)
    if delayed:
      # This step's rate was chosen at the last one; what reads the old state
      # is ordered leaf by leaf (see _ordered_after_leafwise), not after the
      # rate.
      rate = old_rate
      tokens = _leaf_tokens(updates, sums, read)
      ordered = lambda tree: _ordered_after_leafwise(tokens, tree)  # pylint: disable=unnecessary-lambda-assignment
    else:
      rate = next_rate
      ordered = lambda tree: _ordered_after(rate, tree, granularity)  # pylint: disable=unnecessary-lambda-assignment
    if not store_previous:
      # The direction overwrites the state d_{t-1} was recomputed from. (Not
      # done otherwise: it changes how XLA fuses, and so rounds, the inner
      # optimizer, which hyper_lr=0 must reproduce bit for bit.)
      updates = ordered(updates)
    correction = None
    if curvature:
      new_direction, inner_state, correction = _curvature_step(
          direction, updates, inner_state, params, tangent, rate, sign,
          granularity, extra_args)
    else:
      new_direction, inner_state = direction.update(
          updates, inner_state, params, **extra_args)
    if (max_relative_step is not None and params is not None
        and granularity != "per-element"):
      kappa, rising = max_relative_step
      level = jax.tree.map(lambda new, old: jnp.where(new > old, rising, kappa),
                           next_rate, old_rate)
      limit = relative_step_limit(params, new_direction, level,
                                  granularity=granularity, dtype=dtype,
                                  axis_name=axis_name)
      if min_rate is not None:  # the user's floor wins
        limit = jax.tree.map(lambda m: jnp.maximum(m, min_rate), limit)

      def cap(tree):
        return jax.tree.map(lambda r, m: jnp.where(
            bound_active, jnp.minimum(r, m), r).astype(r.dtype), tree, limit)
      next_rate = cap(next_rate)
      rate = cap(rate) if delayed else next_rate
    like = updates if params is None else params
    new_updates = scale_by_rate(rate, new_direction, sign=sign,
                                granularity=granularity, like=like)
    if delayed and store_previous:
      # Nothing else orders the parameters' overwrite after the backward
      # pass (the exact rule's rate does): see _leaf_tokens.
      new_updates = ordered(new_updates)
    if store_previous:
      last = ordered(new_direction)
      if keeps_tangent:
        decay = (tangent_decay(count, dtype) if callable(tangent_decay)
                 else tangent_decay)
        restart = None
        if restart_cosine is not None:
          restart = jax.tree.map(lambda c: c > restart_cosine,
                                 _rules.last_step_cosine(signals))
        tangent = optax.tree.cast_like(
            decay_tangent(tangent, last, old_rate, next_rate, decay,
                          granularity, correction, restart), state.tangent)
      # Cast to the stored dtype so that the state's dtypes never drift.
      previous = optax.tree.cast_like(last, state[3])
    if rate_rule.keeps_grad_norm:
      grad_norm = signals.grad_norm
    # A recomputed d_{t-1} is not state: keep init's empty placeholder, so
    # the state's structure (lax.scan, lax.cond) and size never change.
    stored = previous if store_previous else state[3]
    new_state = state_cls(optax.safe_increment(count), next_rate,
                          inner_state, stored, grad_norm, hyper_state)
    if keeps_tangent:
      new_state = new_state._replace(tangent=tangent)
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def build_rule(*, hyper_lr, rule, min_rate, max_rate, overshoot_guard=False,
               hyper_optimizer=None, gate=None) -> _rules.RateRule:
  """The paper's rule from the public arguments, checked."""
  if not (hyper_optimizer is None
          or isinstance(hyper_optimizer, optax.GradientTransformation)):
    raise TypeError(
        "hyper_optimizer must be None or an optax.GradientTransformation "
        f"(e.g. optax.adam(1e-4)); got {type(hyper_optimizer).__name__}.")
  return _rules.paper_rule(hyper_lr, rule, min_rate=min_rate,
                           max_rate=max_rate, overshoot_guard=overshoot_guard,
                           hyper_optimizer=hyper_optimizer, gate=gate)


# _hyperparams' hyper step on its hyperparameters (the rate rule's, shared).
hyper_step = _rules.optimizer_step


def check_common(*, hyper_lr, rule, granularity, min_rate, max_rate,
                 bound_names=("min_rate", "max_rate")) -> None:
  """Construction-time checks shared by the wrapper and the aliases."""
  _validation.check_non_negative("hyper_lr", hyper_lr)
  if not isinstance(rule, _rules.RateRule):
    _validation.check_choice("rule", rule, _validation.RULES)
  _validation.check_choice("granularity", granularity,
                           _validation.GRANULARITIES)
  _validation.check_bounds(min_rate, max_rate, bound_names)
