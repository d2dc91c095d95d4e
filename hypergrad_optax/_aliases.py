"""The paper's optimizers: SGD-HD, SGDN-HD, Adam-HD, AdamW-HD.

Each alias is :func:`hypergrad_optax._core.hypergradient_descent` over an
Optax *direction* ``d_t`` (the update before the learning rate), with the
update ``u_t = -α_t d_t`` and the paper's hypergradient
``h_t = -g_t · d_{t-1}``. Where the direction's own state holds ``d_{t-1}``
(Adam's moments, the momentum trace) it is recomputed instead of stored.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import optax

from hypergrad_optax import _core
from hypergrad_optax import _validation
from hypergrad_optax._core import HypergradientState  # pylint: disable=unused-import

_COMMON_ARGS_DOC = r"""
    rule: ``'additive'`` (the paper, default) or ``'multiplicative'``
      (``α_t = α_{t-1}(1 - β h_t / (‖g_t‖ ‖d_{t-1}‖))``, scale-free ``β``).
    granularity: ``'global'`` (one ``α``, the paper, default),
      ``'per-tensor'`` (one per parameter leaf) or ``'per-element'``.
    min_rate: lower bound on ``α`` (default 0: the authors' runs saw negative
      rates, i.e. gradient ascent), or None for the paper's unbounded rule.
    max_rate: upper bound on ``α``, or None.
    overshoot_guard: cap ``α_t`` at a conservative secant estimate of the
      loss's minimiser along the last step when that step overshot by far
      (``h_t > 3 ‖g_{t-1}‖ ‖d_{t-1}‖``; off by default: not in the paper).
      True or ``'soft'``: the secant of the part of ``h_t`` past the
      threshold (since 0.9.0); ``'secant'``: of ``h_t`` itself (0.1.0 to
      0.8.0); see :func:`hypergrad_optax.hypergradient`.
    axis_name: inside ``shard_map``/``pmap`` with every parameter sharded over
      this mapped axis (a name or a tuple of names), sums the hypergradient's
      dot products and norms over it with ``lax.psum`` (a dot over the local
      shard is partial). None (default) for whole leaves on each device:
      replicated data parallelism, or ``jax.jit`` with sharded arrays.
    hyper_optimizer: None (default: the paper's plain SGD on ``α`` with
      ``hyper_lr``) or any Optax transform that updates ``α`` (its params)
      from its hypergradient ``h_t`` (its gradient; with the multiplicative
      rule, ``α_{t-1} h_t / (‖g_t‖ ‖d_{t-1}‖)``), e.g. ``optax.adam(1e-5)``
      ("Adam on α"), or, stacked, a hypergradient optimizer such as
      ``sgd_hd(β_0, γ)`` whose own rate ``β`` adapts with hypergradient
      ``-h_t h_{t-1}`` (Chandra et al., 2022). ``hyper_lr`` is then unused.
      Its state is the state's ``hyper_state``; bounds and the non-finite
      guard apply after its step.
    delayed: apply each step of ``α`` one step late (default False: the
      paper's rule): step ``t`` uses the ``α`` chosen at step ``t-1`` and
      ``h_t`` moves that of step ``t+1``, so the update does not wait for the
      reduction of ``h_t`` over every parameter. Not the paper's algorithm;
      for steps dominated by the optimizer's own passes (small batches, large
      models); see ``docs/results.md``, "Cost per step".
"""


def _with_common_args_doc(fn):
  """Splices the shared argument descriptions into ``fn``'s docstring.

  (A docstring built with ``+`` is an expression, not a docstring: Python
  would leave ``__doc__`` None.)
  """
  if fn.__doc__:  # None under python -OO
    fn.__doc__ = fn.__doc__.replace("    <COMMON ARGS>\n",
                                    _COMMON_ARGS_DOC.lstrip("\n"))
  return fn


def _is_zero(value: Any) -> bool:
  """True for a concrete zero; traced values (inject_hyperparams) are not."""
  return _validation.concrete_float(value) == 0.0


def _hd_alias(direction, *, learning_rate, hyper_lr, rule, granularity,
              min_rate, max_rate, overshoot_guard, weight_decay=None,
              previous_direction_fn=None, buffer_dtype=None, axis_name=None,
              hyper_optimizer=None, delayed=False):
  """Checks the shared arguments and builds the alias over ``direction``."""
  _validation.check_learning_rate(learning_rate)
  _core.check_common(hyper_lr=hyper_lr, rule=rule, granularity=granularity,
                     min_rate=min_rate, max_rate=max_rate)
  if weight_decay is not None:
    _validation.check_non_negative("weight_decay", weight_decay)
    if _is_zero(weight_decay):
      weight_decay = None
  return _core.hypergradient_descent(
      direction,
      state_cls=HypergradientState,
      sign=-1.0,
      initial_rate=learning_rate,
      rate_rule=_core.build_rule(
          hyper_lr=hyper_lr, rule=rule, min_rate=min_rate, max_rate=max_rate,
          overshoot_guard=overshoot_guard, hyper_optimizer=hyper_optimizer),
      granularity=granularity,
      previous_direction_fn=previous_direction_fn,
      buffer_dtype=buffer_dtype,
      weight_decay=weight_decay,
      axis_name=axis_name,
      delayed=delayed,
  )


def _trace_direction(trace_state: optax.TraceState) -> optax.Updates:
  # Heavy-ball momentum steps along the trace itself: d_{t-1} = v_{t-1}.
  return trace_state.trace


def _adam_direction(b1, b2, eps):
  """Recomputes Adam's last direction ``m̂/(√v̂ + ε)`` from its state."""
  def previous_direction(adam_state: optax.ScaleByAdamState):
    # At count 0 the moments are zero, so clamping the count to 1 gives the
    # exact d_0 = 0 without dividing by a zero bias correction.
    count = jnp.maximum(adam_state.count, 1)
    index = iter(range(len(jax.tree.leaves(adam_state.mu))))

    def leaf(m, v):
      # Corrections in float32, or float64 for float64 moments (as optax's
      # own): float32 ones would break float64-exactness.
      dtype = jnp.promote_types(m.dtype, jnp.float32)
      # An exact zero that differs from leaf to leaf: XLA would otherwise
      # share the broadcasts of these scalars between leaves of one shape and
      # materialise each as a parameter-sized array, read by every such
      # leaf's reduction (3.6 extra passes on a transformer). ε as a run-time
      # scalar for the same reason: a compile-time one is materialised too.
      zero = (count + next(index)).astype(dtype) * 0
      correction1 = 1 - jnp.asarray(b1, dtype) ** count.astype(dtype) + zero
      correction2 = 1 - jnp.asarray(b2, dtype) ** count.astype(dtype) + zero
      m_hat = m / correction1.astype(m.dtype)
      v_hat = v / correction2.astype(v.dtype)
      eps_now = jnp.asarray(eps, dtype) + zero
      return m_hat / (jnp.sqrt(v_hat) + eps_now.astype(v.dtype))
    return jax.tree.map(leaf, adam_state.mu, adam_state.nu)
  return previous_direction


@_with_common_args_doc
def sgd_hd(
    learning_rate: jax.typing.ArrayLike = 1e-3,
    hyper_lr: jax.typing.ArrayLike = 1e-3,
    momentum: Optional[jax.typing.ArrayLike] = None,
    nesterov: bool = False,
    weight_decay: jax.typing.ArrayLike = 0.0,
    *,
    rule: str = "additive",
    granularity: str = "global",
    min_rate: Optional[jax.typing.ArrayLike] = 0.0,
    max_rate: Optional[jax.typing.ArrayLike] = None,
    overshoot_guard: Union[bool, str] = False,
    buffer_dtype: Optional[Any] = None,
    axis_name: Optional[Union[str, tuple[str, ...]]] = None,
    hyper_optimizer: Optional[optax.GradientTransformation] = None,
    delayed: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""SGD-HD and SGDN-HD: SGD whose learning rate follows its hypergradient.

  With gradient :math:`g_t` (plus coupled decay :math:`\lambda\theta_{t-1}`),
  direction :math:`d_t = g_t` (plain), :math:`d_t = v_t` (momentum) or
  :math:`d_t = g_t + \mu v_t` (Nesterov), :math:`v_t = \mu v_{t-1} + g_t`
  (``optax.trace`` / PyTorch semantics), each step does

  .. math::
    h_t = -g_t \cdot d_{t-1}, \quad
    \alpha_t = \alpha_{t-1} - \beta h_t, \quad
    \theta_t = \theta_{t-1} - \alpha_t d_t,

  with :math:`d_0 = 0`, so the first step uses :math:`\alpha_0`.

  Memory beyond ``optax.sgd``: plain and Nesterov SGD keep
  :math:`d_{t-1}` (one parameter-sized buffer); heavy-ball momentum keeps
  none (:math:`d_{t-1}` is the trace). Plus the rate.

  Args:
    learning_rate: :math:`\alpha_0` (a number >= 0).
    hyper_lr: :math:`\beta` (>= 0; 0 gives plain SGD).
    momentum: :math:`\mu` in [0, 1), or None for plain SGD.
    nesterov: Nesterov momentum (needs ``momentum``).
    weight_decay: coupled L2 decay :math:`\lambda` added to the gradient
      before everything, as ``torch.optim.SGD`` and the reference code do.
    <COMMON ARGS>
    buffer_dtype: dtype in which to keep :math:`d_{t-1}` where it is stored.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`HypergradientState`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import hypergrad_optax as hgo
    >>> tx = hgo.sgd_hd(learning_rate=0.01, hyper_lr=0.01, momentum=0.9)
    >>> params = jnp.array([1.0, -2.0])
    >>> state = tx.init(params)
    >>> for _ in range(2):
    ...   updates, state = tx.update(2 * params, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> # d_0 = g_0 = (2, -4), θ_1 = θ_0 - 0.01 d_0, g_1 = (1.96, -3.92):
    >>> # α_1 = α_0 + β g_1·d_0 = 0.01 + 0.01 * 19.6
    >>> print(f'{optax.tree_utils.tree_get(state, "learning_rate"):.4f}')
    0.2060

  References:
    Baydin et al., `Online Learning Rate Adaptation with Hypergradient Descent
    <https://arxiv.org/abs/1703.04782>`_, ICLR 2018 (Algorithms 4-5).
  """
  if momentum is None or _is_zero(momentum):
    if nesterov:
      raise ValueError(
          "nesterov=True needs momentum in (0, 1); got momentum="
          f"{momentum!r}.")
    direction, previous_direction_fn = optax.identity(), None
  else:
    _validation.check_unit_interval("momentum", momentum)
    direction = optax.trace(decay=momentum, nesterov=nesterov)
    # Nesterov's d_{t-1} = g_{t-1} + μ v_{t-1} needs g_{t-1}: stored.
    previous_direction_fn = None if nesterov else _trace_direction
  return _hd_alias(
      direction, learning_rate=learning_rate, hyper_lr=hyper_lr, rule=rule,
      granularity=granularity, min_rate=min_rate, max_rate=max_rate,
      overshoot_guard=overshoot_guard,
      weight_decay=weight_decay, previous_direction_fn=previous_direction_fn,
      buffer_dtype=buffer_dtype, axis_name=axis_name,
      hyper_optimizer=hyper_optimizer, delayed=delayed)


def _check_adam_args(b1, b2, eps):
  _validation.check_unit_interval("b1", b1)
  _validation.check_unit_interval("b2", b2)
  _validation.check_non_negative("eps", eps)


@_with_common_args_doc
def adam_hd(
    learning_rate: jax.typing.ArrayLike = 1e-3,
    hyper_lr: jax.typing.ArrayLike = 1e-7,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: jax.typing.ArrayLike = 0.0,
    *,
    rule: str = "additive",
    granularity: str = "global",
    min_rate: Optional[jax.typing.ArrayLike] = 0.0,
    max_rate: Optional[jax.typing.ArrayLike] = None,
    overshoot_guard: Union[bool, str] = False,
    axis_name: Optional[Union[str, tuple[str, ...]]] = None,
    hyper_optimizer: Optional[optax.GradientTransformation] = None,
    delayed: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Adam-HD: Adam whose learning rate follows its hypergradient.

  With :math:`d_t = \hat m_t / (\sqrt{\hat v_t} + \epsilon)` Adam's
  bias-corrected direction (``optax.scale_by_adam``), each step does

  .. math::
    h_t = -g_t \cdot \frac{\hat m_{t-1}}{\sqrt{\hat v_{t-1}} + \epsilon}, \quad
    \alpha_t = \alpha_{t-1} - \beta h_t, \quad
    \theta_t = \theta_{t-1} - \alpha_t d_t,

  with one scalar :math:`h_t` over the whole pytree (the paper's Algorithm 6,
  not the reference code's per-tensor in-loop update). The previous direction
  is recomputed from Adam's moments, so there is no buffer beyond Adam's own:
  the state is Adam's plus the rate and a count.

  Args:
    learning_rate: :math:`\alpha_0` (a number >= 0).
    hyper_lr: :math:`\beta` (>= 0; the paper uses 1e-7 for MLPs, 1e-8 for
      VGG; 0 gives Adam).
    b1: Adam's first-moment decay, in [0, 1).
    b2: Adam's second-moment decay, in [0, 1).
    eps: Adam's :math:`\epsilon` (>= 0).
    weight_decay: coupled L2 decay :math:`\lambda` added to the gradient
      before everything, as the reference code does (see :func:`adamw_hd` for
      decoupled decay).
    <COMMON ARGS>

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`HypergradientState`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import hypergrad_optax as hgo
    >>> tx = hgo.adam_hd(learning_rate=0.01, hyper_lr=1e-3)
    >>> params = jnp.array([1.0, -2.0])
    >>> state = tx.init(params)
    >>> for _ in range(2):
    ...   updates, state = tx.update(2 * params, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> # Adam's first direction is d_0 = sign(g_0) = (1, -1), so
    >>> # g_1 = 2 (θ_0 - 0.01 d_0) = (1.98, -3.98) and
    >>> # α_1 = α_0 + β g_1·d_0 = 0.01 + 0.001 * 5.96
    >>> print(f'{optax.tree_utils.tree_get(state, "learning_rate"):.5f}')
    0.01596

  References:
    Baydin et al., `Online Learning Rate Adaptation with Hypergradient Descent
    <https://arxiv.org/abs/1703.04782>`_, ICLR 2018 (Algorithm 6).
  """
  _check_adam_args(b1, b2, eps)
  return _hd_alias(
      optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
      learning_rate=learning_rate, hyper_lr=hyper_lr, rule=rule,
      granularity=granularity, min_rate=min_rate, max_rate=max_rate,
      overshoot_guard=overshoot_guard,
      weight_decay=weight_decay,
      previous_direction_fn=_adam_direction(b1, b2, eps),
      axis_name=axis_name, hyper_optimizer=hyper_optimizer, delayed=delayed)


@_with_common_args_doc
def adamw_hd(
    learning_rate: jax.typing.ArrayLike = 1e-3,
    hyper_lr: jax.typing.ArrayLike = 1e-7,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: jax.typing.ArrayLike = 1e-4,
    *,
    rule: str = "additive",
    granularity: str = "global",
    min_rate: Optional[jax.typing.ArrayLike] = 0.0,
    max_rate: Optional[jax.typing.ArrayLike] = None,
    overshoot_guard: Union[bool, str] = False,
    buffer_dtype: Optional[Any] = None,
    axis_name: Optional[Union[str, tuple[str, ...]]] = None,
    hyper_optimizer: Optional[optax.GradientTransformation] = None,
    delayed: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""AdamW-HD: Adam-HD with decoupled weight decay in the direction.

  The direction is :math:`d_t = \hat m_t / (\sqrt{\hat v_t} + \epsilon) +
  \lambda \theta_{t-1}` (``optax.adamw``'s), so the decay is scaled by the
  adapted rate and enters the hypergradient :math:`h_t = -g_t \cdot d_{t-1}`.

  Memory beyond ``optax.adamw``: :math:`d_{t-1}` (one parameter-sized buffer,
  since the decay term depends on past parameters) and the rate.

  Args:
    learning_rate: :math:`\alpha_0` (a number >= 0).
    hyper_lr: :math:`\beta` (>= 0).
    b1: Adam's first-moment decay, in [0, 1).
    b2: Adam's second-moment decay, in [0, 1).
    eps: Adam's :math:`\epsilon` (>= 0).
    weight_decay: decoupled decay :math:`\lambda` (>= 0).
    <COMMON ARGS>
    buffer_dtype: dtype in which to keep :math:`d_{t-1}`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`HypergradientState`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import hypergrad_optax as hgo
    >>> tx = hgo.adamw_hd(learning_rate=0.01, hyper_lr=1e-3)
    >>> params = jnp.array([1.0, -2.0])
    >>> state = tx.init(params)
    >>> updates, state = tx.update(2 * params, state, params)
    >>> print(optax.tree_utils.tree_get(state, "learning_rate"))
    0.01

  References:
    Baydin et al., `Online Learning Rate Adaptation with Hypergradient Descent
    <https://arxiv.org/abs/1703.04782>`_, ICLR 2018; Loshchilov and Hutter,
    `Decoupled Weight Decay Regularization
    <https://arxiv.org/abs/1711.05101>`_, ICLR 2019.
  """
  _check_adam_args(b1, b2, eps)
  _validation.check_non_negative("weight_decay", weight_decay)
  direction = optax.chain(optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
                          optax.add_decayed_weights(weight_decay))
  return _hd_alias(
      direction, learning_rate=learning_rate, hyper_lr=hyper_lr, rule=rule,
      granularity=granularity, min_rate=min_rate, max_rate=max_rate,
      overshoot_guard=overshoot_guard,
      buffer_dtype=buffer_dtype, axis_name=axis_name,
      hyper_optimizer=hyper_optimizer, delayed=delayed)
