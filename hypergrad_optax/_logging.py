"""Reading the adapted learning rate out of any optimizer state, for logging."""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax

from hypergrad_optax import _core
from hypergrad_optax import rules as _rules
from hypergrad_optax._core import HypergradientState
from hypergrad_optax._core import ScaleByHypergradientState

_STATES = (HypergradientState, ScaleByHypergradientState)


def find_state(opt_state: Any):
  """The outermost hypergradient state inside ``opt_state`` (or ValueError)."""
  for node in jax.tree.leaves(opt_state,
                              is_leaf=lambda x: isinstance(x, _STATES)):
    if isinstance(node, _STATES):
      return node
  raise ValueError(
      "No hypergradient state found: opt_state must come from an optimizer "
      "built with hypergrad_optax (hypergradient, sgd_hd, adam_hd, adamw_hd), "
      "possibly inside optax.chain, MultiSteps or inject_hyperparams.")


def _injected_learning_rate(inner_state: Any) -> Optional[jax.Array]:
  """The inner optimizer's ``inject_hyperparams`` learning rate, if any."""
  found = optax.tree_utils.tree_get_all_with_path(
      inner_state, "learning_rate",
      filtering=lambda path, _: any(
          getattr(k, "key", None) == "learning_rate" for k in path))
  return found[0][1] if found else None


def get_learning_rate(opt_state: Any,
                      base_learning_rate: Any = None) -> Any:
  r"""Returns the current adapted learning rate of a hypergradient optimizer.

  For ``sgd_hd``, ``adam_hd`` and ``adamw_hd`` this is the state's
  ``learning_rate`` field :math:`\alpha_t`. For :func:`hypergradient` it is
  the effective rate :math:`s_t \cdot \alpha^{inner}`: the adapted scale
  times the wrapped optimizer's own rate, which is read from the inner state
  when the inner optimizer was built with ``optax.inject_hyperparams``
  (schedules included: the value of the most recent step) and must otherwise
  be passed as ``base_learning_rate`` (a number, or the schedule itself, then
  evaluated at the step of the most recent update).

  Unlike ``optax.tree_utils.tree_get(state, "learning_rate")`` this never
  raises a ``KeyError`` for several matches: it takes the outermost
  hypergradient state, looking inside ``optax.chain``, ``MultiSteps``,
  ``inject_hyperparams`` and ``apply_if_finite`` states.

  Args:
    opt_state: an optimizer state containing a hypergradient state.
    base_learning_rate: for :func:`hypergradient` only, the inner optimizer's
      learning rate or schedule when it is not in the inner state.

  Returns:
    A float32 scalar (float64 with float64 params), or a pytree of rates for
    ``granularity='per-tensor'`` / ``'per-element'``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import hypergrad_optax as hgo
    >>> tx = hgo.hypergradient(
    ...     optax.inject_hyperparams(optax.adam)(learning_rate=1e-2))
    >>> state = tx.init(jnp.zeros(3))
    >>> print(hgo.get_learning_rate(state))
    0.01

  References:
    Baydin et al., `Online Learning Rate Adaptation with Hypergradient Descent
    <https://arxiv.org/abs/1703.04782>`_, ICLR 2018.
  """
  state = find_state(opt_state)
  if isinstance(state, HypergradientState):
    return state.learning_rate
  if base_learning_rate is None:
    base = _injected_learning_rate(state.inner_state)
    if base is None:
      raise ValueError(
          "The wrapped optimizer's learning rate is not in its state: pass it, "
          "get_learning_rate(state, base_learning_rate=1e-3) (or the "
          "schedule), or build the inner optimizer with "
          "optax.inject_hyperparams(optax.adam)(learning_rate=1e-3). The "
          "adapted factor alone is state.scale.")
  elif callable(base_learning_rate):
    base = base_learning_rate(jnp.maximum(state.count - 1, 0))
  else:
    base = base_learning_rate
  return jax.tree.map(
      lambda s: s * jnp.asarray(base).astype(s.dtype), state.scale)


def diagnose(grads: optax.Updates, opt_state: Any) -> dict[str, jax.Array]:
  r"""What the wrapper's rule sees at the coming step, for logging.

  Call it with the gradient and the state *before* ``update``: the values are
  those the next update's rule will use. For a :func:`hypergradient` state
  (any granularity; the values are reduced over the whole model):

  * ``hypergradient``: :math:`h_t = g_t \cdot Z_{t-1}`, the derivative of the
    loss with respect to the factor along the stored tangent :math:`Z_{t-1}`
    (the state's ``tangent``: the discounted sum of the updates, with the
    default horizon; the previous update with ``horizon=1``);
  * ``cosine``: :math:`h_t / (\|g_t\| \|Z_{t-1}\|)`, what the
    multiplicative rule moves the factor by (times ``-hyper_lr``; the last
    update's cosine instead where that exceeds ``rules.LAST_STEP_COSINE`` and
    this, see :func:`hypergrad_optax.rules.follow_last_step`);
  * ``step_hypergradient``: :math:`g_t \cdot \tilde u_{t-1}` along the last
    update alone (``hypergradient`` itself with the one-step rule);
  * ``bound``: :math:`A = \|g_{t-1}\| \|\tilde u_{t-1}\|` when the overshoot
    guard keeps :math:`\|g_{t-1}\|` (NaN otherwise);
  * ``overshoot``: whether the guard caps this step: the last update's
    hypergradient exceeds :math:`3A` (and, with the default horizon, the
    tangent's cosine exceeds ``rules.OVERSHOOT_TANGENT_COSINE``).

  Running means and standard deviations of ``hypergradient`` over a log tell
  whether the rule sees signal or noise (see ``docs/how_it_works.md``).

  Args:
    grads: the gradient about to be passed to ``update``.
    opt_state: a state containing a :func:`hypergradient` state.

  Returns:
    A dict of float32 scalars (float64 with float64 params).

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import hypergrad_optax as hgo
    >>> tx = hgo.hypergradient(optax.sgd(0.1))
    >>> params = jnp.array([1.0, -2.0])
    >>> state = tx.init(params)
    >>> _, state = tx.update(2 * params, state, params)   # ũ_0 = -0.1 g_0
    >>> info = hgo.diagnose(-2 * params, state)           # g_1 = -g_0
    >>> print(f"{info['cosine']:.2f}")
    1.00

  References:
    Baydin et al., `Online Learning Rate Adaptation with Hypergradient Descent
    <https://arxiv.org/abs/1703.04782>`_, ICLR 2018; Wu et al.,
    `Understanding Short-Horizon Bias in Stochastic Meta-Optimization
    <https://arxiv.org/abs/1803.02021>`_, ICLR 2018.
  """
  state = find_state(opt_state)
  if not isinstance(state, ScaleByHypergradientState):
    raise ValueError(
        "diagnose reads the state of hypergradient(...); the aliases' "
        "learning_rate is their state's learning_rate field.")
  dtype = jax.tree.leaves(state.scale)[0].dtype
  # The rule's own signals, reduced over the whole model whatever the
  # granularity (the rate passed only sets their dtype).
  tangent = state.tangent if jax.tree.leaves(state.tangent) else None
  signals = _core.rate_signals(jnp.zeros([], dtype), grads,
                               state.previous_update, sign=1.0,
                               granularity="global", tangent=tangent)
  step_h, step_norm = signals.last_step()
  stored = jax.tree.leaves(state.previous_grad_norm)
  if stored:  # ‖g_{t-1}‖ from its per-rate pieces.
    previous = jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(dtype)))
                            for x in stored))
    bound = previous * step_norm
  else:
    bound = jnp.asarray(jnp.nan, dtype)
  return {"hypergradient": signals.hypergradient,
          "cosine": _rules.cosine(signals), "step_hypergradient": step_h,
          "bound": bound,
          "overshoot": _rules.overshoots(
              step_h, bound,
              None if tangent is None else _rules.cosine(signals))}
