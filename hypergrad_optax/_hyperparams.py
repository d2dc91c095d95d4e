r"""Hypergradients for any numeric hyperparameter, by forward-mode AD.

A hyperparameter :math:`\lambda` (Adam's ``b1``, ``b2``, ``eps``, SGD's
``momentum``, a weight decay, the learning rate) enters the loss at
:math:`\theta_t = \theta_{t-1} + u_t(\lambda)` only through the update, so
the one-step hypergradient is

.. math::
  \frac{\partial f(\theta_t)}{\partial \lambda_t}
  = g_{t+1} \cdot \frac{\partial u_t}{\partial \lambda},

the same greedy approximation as the paper's (the dependence of the optimizer
state on past :math:`\lambda` is dropped). The tangent
:math:`\partial u_t / \partial \lambda` is a Jacobian-vector product of the
update function, computed by ``jax.jvp`` together with the update itself and
kept until the next gradient arrives: one forward-mode pass per step (one
tangent per adapted name, batched with ``jax.vmap``), one parameter-sized
buffer per name, no second gradient evaluation.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import optax

from hypergrad_optax import _core
from hypergrad_optax import _tree
from hypergrad_optax import _validation

# Default reparametrisations, by hyperparameter name.
_LOGIT_NAMES = ("b1", "b2", "b3", "momentum", "decay", "beta1", "beta2")
_LOG_NAMES = ("learning_rate", "eps", "eps_root", "weight_decay")
REPARAMETRIZATIONS = ("logit", "log", "identity")
# sigmoid(±15) stays inside (0, 1) in float32 (sigmoid(17) rounds to 1, where
# Adam's bias correction 1 - b2**t would divide by zero); exp(±80) is a
# normal float32.
_LIMITS = {"logit": 15.0, "log": 80.0}


class AdaptHyperparamsState(NamedTuple):
  """State of :func:`adapt_hyperparams`.

  The field names are the checkpoint schema.

  Attributes:
    count: number of updates taken, int32 scalar.
    unconstrained: the adapted hyperparameters in unconstrained coordinates
      :math:`\\phi` (``logit(λ)``, ``log(λ)`` or ``λ``), a dict by name of
      float32 scalars (float64 with float64 params). The values used by the
      most recent update are ``inner_state.hyperparams``.
    inner_state: the ``inject_hyperparams`` state of the adapted optimizer.
    tangents: ``∂u_{t-1}/∂φ`` for each name, shaped like the updates.
    hyper_state: the state of the hyper-optimizer (whose params are
      ``unconstrained``).
  """

  count: jax.Array
  unconstrained: dict[str, jax.Array]
  inner_state: optax.OptState
  tangents: dict[str, optax.Updates]
  hyper_state: optax.OptState


def default_reparametrization(name: str) -> str:
  r"""The coordinates in which :func:`adapt_hyperparams` adapts a hyperparameter.

  Hypergradient steps are taken on an unconstrained :math:`\phi`, mapped to
  the hyperparameter :math:`\lambda` by

  .. math::
    \text{logit:}\ \lambda = \sigma(\phi), \qquad
    \text{log:}\ \lambda = e^{\phi}, \qquad
    \text{identity:}\ \lambda = \phi,

  so that decay rates stay in (0, 1) and scales stay positive.

  Args:
    name: a hyperparameter's keyword name in the optimizer's factory.

  Returns:
    ``'logit'`` for decay rates (``b1``, ``b2``, ``momentum``, ``decay``,
    ...), ``'log'`` for positive scales (``learning_rate``, ``eps``,
    ``weight_decay``, ...), else ``'identity'``.

  Example:
    >>> import hypergrad_optax as hgo
    >>> [hgo.default_reparametrization(n) for n in ("b1", "eps", "nesterov")]
    ['logit', 'log', 'identity']

  References:
    Chandra et al., `Gradient Descent: The Ultimate Optimizer
    <https://arxiv.org/abs/1909.13371>`_, NeurIPS 2022.
  """
  if name in _LOGIT_NAMES:
    return "logit"
  if name in _LOG_NAMES:
    return "log"
  return "identity"


def _to_value(kind: str, phi: jax.Array) -> jax.Array:
  if kind == "logit":
    return jax.nn.sigmoid(phi)
  if kind == "log":
    return jnp.exp(phi)
  return phi


def _to_unconstrained(kind: str, name: str, value: jax.Array) -> jax.Array:
  """``φ`` from ``λ``, checking the domain when ``λ`` is concrete."""
  x = _validation.concrete_float(value)
  if x is not None:
    if kind == "logit" and not 0.0 < x < 1.0:
      raise ValueError(
          f"{name} is adapted through a logit and must be in (0, 1); got {x}. "
          "Pass reparametrization={" + repr(name) + ": 'identity'} to adapt "
          "it unconstrained.")
    if kind == "log" and not x > 0.0:
      raise ValueError(
          f"{name} is adapted through a log and must be > 0; got {x} (a zero "
          "would stay zero). Start from a small positive value, or pass "
          "reparametrization={" + repr(name) + ": 'identity'}.")
  if kind == "logit":
    return jnp.log(value) - jnp.log1p(-value)
  if kind == "log":
    return jnp.log(value)
  return value


def _clip(kind: str, phi: jax.Array) -> jax.Array:
  limit = _LIMITS.get(kind)
  return phi if limit is None else jnp.clip(phi, -limit, limit)


def _inject_state(state: Any, names: Sequence[str]) -> None:
  """Checks that ``state`` is an ``inject_hyperparams`` state holding names."""
  hyperparams = getattr(state, "hyperparams", None)
  if not isinstance(hyperparams, dict):
    raise TypeError(
        "adapt_hyperparams needs an optimizer built with "
        "optax.inject_hyperparams (e.g. optax.inject_hyperparams(optax.adam)"
        "(learning_rate=1e-3)) or a factory such as optax.adam; got a state "
        f"of type {type(state).__name__}.")
  scheduled = getattr(state, "hyperparams_states", {}) or {}
  for name in names:
    if name not in hyperparams:
      raise ValueError(
          f"{name!r} is not a numeric hyperparameter of the optimizer; "
          f"adaptable: {sorted(set(hyperparams) - set(scheduled))}.")
    if name in scheduled:
      raise ValueError(
          f"{name!r} follows a schedule, which would overwrite the adapted "
          "value at every step; pass a number to adapt it.")


def adapt_hyperparams(
    inner: Union[optax.GradientTransformation,
                 Callable[..., optax.GradientTransformation]],
    names: Sequence[str],
    hyper_lr: Union[jax.typing.ArrayLike,
                    Mapping[str, jax.typing.ArrayLike]] = 1e-3,
    *,
    hyperparams: Optional[Mapping[str, Any]] = None,
    hyper_optimizer: Optional[optax.GradientTransformation] = None,
    reparametrization: Optional[Mapping[str, str]] = None,
    tangent_dtype: Optional[Any] = None,
    axis_name: _tree.AxisName = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Adapts hyperparameters of an Optax optimizer online by hypergradients.

  Each adapted hyperparameter :math:`\lambda` is kept as an unconstrained
  :math:`\phi` with :math:`\lambda = \sigma(\phi)` (decay rates ``b1``,
  ``b2``, ``momentum``, ``decay``: they stay in :math:`(0, 1)`),
  :math:`\lambda = e^\phi` (``learning_rate``, ``eps``, ``weight_decay``: they
  stay :math:`> 0`) or :math:`\lambda = \phi` (other names), and each step
  first moves :math:`\phi`, then updates with it:

  .. math::
    h_t = g_t \cdot \frac{\partial u_{t-1}}{\partial \phi}, \qquad
    \phi_t = \phi_{t-1} - \beta h_t, \qquad
    u_t, \frac{\partial u_t}{\partial \phi} =
    \mathrm{jvp}\big(\phi \mapsto U(g_t, s_{t-1}; \lambda(\phi)),\ \phi_t\big),

  where :math:`U` is the inner optimizer's update from its state
  :math:`s_{t-1}`. :math:`h_t` is the exact derivative of the loss at
  :math:`\theta_{t-1}` with respect to :math:`\phi` through the last update
  (the paper's greedy hypergradient); :math:`\partial u_0/\partial\phi = 0`,
  so the first step uses the initial values. With ``hyper_optimizer`` (e.g.
  ``optax.adam(1e-2)``, natural here since every :math:`\phi` is unit-free,
  or a hypergradient optimizer for a stack) the :math:`\phi` step is that
  transform's, fed :math:`h_t` as the gradient of :math:`\phi`.

  Cost per step beyond the inner optimizer: the update is evaluated in
  forward mode (one JVP, its tangents batched over the adapted names) plus one
  dot product per name; no extra gradient evaluation. Memory: one
  parameter-sized tangent per name (in ``tangent_dtype`` when given).

  A step whose hypergradients are not all finite leaves :math:`\phi` and the
  hyper-optimizer's state unchanged; :math:`\phi` is clipped to
  :math:`[-15, 15]` (logit; :math:`\lambda \in [3 \cdot 10^{-7},
  1 - 3 \cdot 10^{-7}]`, so float32 never rounds a decay rate to 1) or
  :math:`[-80, 80]` (log).

  Args:
    inner: an optimizer built with ``optax.inject_hyperparams`` (e.g.
      ``optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)``), or a
      factory such as ``optax.adam``, then built with ``hyperparams``.
    names: the hyperparameters to adapt (numeric, not scheduled), e.g.
      ``("b1", "b2")``.
    hyper_lr: :math:`\beta`, one number or a dict by name (>= 0); unused with
      ``hyper_optimizer``.
    hyperparams: keyword arguments for a factory ``inner``.
    hyper_optimizer: None (plain SGD with ``hyper_lr``) or an Optax transform
      updating the dict of :math:`\phi` from the dict of :math:`h_t`.
    reparametrization: overrides by name: ``'logit'``, ``'log'`` or
      ``'identity'``.
    tangent_dtype: dtype of the stored tangents (None: the updates' own).
    axis_name: inside ``shard_map``/``pmap`` with every parameter sharded over
      this mapped axis (a name or a tuple of names), sums the hypergradients'
      dot products over it with ``lax.psum``, so that every device takes the
      same step on :math:`\phi`. None (default) for whole leaves on each
      device (replicated data parallelism, or ``jax.jit`` with sharded
      arrays). The inner optimizer's own reductions are its own business.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is an
    :class:`AdaptHyperparamsState`; the values used by the last update are in
    ``state.inner_state.hyperparams``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import hypergrad_optax as hgo
    >>> tx = hgo.adapt_hyperparams(optax.sgd, ("momentum",), hyper_lr=0.1,
    ...                            hyperparams=dict(learning_rate=0.05,
    ...                                             momentum=0.5))
    >>> params = jnp.array([1.0, -2.0])
    >>> state = tx.init(params)
    >>> for _ in range(3):
    ...   updates, state = tx.update(2 * params, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> # u_1 does not depend on μ; ∂u_2/∂φ = -0.05 μ(1-μ) g_1 with
    >>> # g_1 = (2, -4), g_3 = (1.52, -3.04): h_3 = -0.19, φ = 0.019, μ = σ(φ)
    >>> print(f'{state.inner_state.hyperparams["momentum"]:.5f}')
    0.50475

  References:
    Baydin et al., `Online Learning Rate Adaptation with Hypergradient Descent
    <https://arxiv.org/abs/1703.04782>`_, ICLR 2018; Chandra et al.,
    `Gradient Descent: The Ultimate Optimizer
    <https://arxiv.org/abs/1909.13371>`_, NeurIPS 2022 (hypergradients for
    Adam's :math:`\beta_1, \beta_2`, stacking).
  """
  names = _check_names(names)
  inner = _built(inner, hyperparams)
  kinds = _reparametrizations(names, reparametrization)
  hyper_optimizer = _hyper_optimizer(names, hyper_lr, hyper_optimizer)
  _validation.check_axis_name(axis_name)

  def init_fn(params):
    inner_state = inner.init(params)
    _inject_state(inner_state, names)
    dtype = _core.rate_dtype(params)
    phi = {n: _to_unconstrained(kinds[n], n, jnp.asarray(
        inner_state.hyperparams[n], dtype)) for n in names}
    tangents = {n: optax.tree.zeros_like(params, dtype=tangent_dtype)
                for n in names}
    return AdaptHyperparamsState(jnp.zeros([], jnp.int32), phi, inner_state,
                                 tangents, hyper_optimizer.init(phi))

  def update_fn(updates, state, params=None, **extra_args):
    count, phi, inner_state, tangents, hyper_state = state
    _validation.check_same_structure(updates, tangents[names[0]])
    h = _hypergradients(updates, tangents, phi[names[0]].dtype, axis_name)
    new_phi, hyper_state = _core.hyper_step(hyper_optimizer, hyper_state,
                                            phi, h)
    # Clipping the kept (already valid) φ changes nothing.
    phi = {n: _clip(kinds[n], new_phi[n]) for n in names}
    new_updates, du, inner_state = _update_and_tangents(
        inner, kinds, phi, updates, inner_state, params, extra_args)
    tangents = {n: optax.tree.cast_like(du[n], tangents[n]) for n in names}
    return new_updates, AdaptHyperparamsState(
        optax.safe_increment(count), phi, inner_state, tangents, hyper_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _check_names(names) -> tuple[str, ...]:
  names = (names,) if isinstance(names, str) else tuple(names)
  if not names or len(set(names)) != len(names):
    raise ValueError(f"names must be distinct and non-empty; got {names!r}.")
  return names


def _built(inner, hyperparams) -> optax.GradientTransformation:
  """``inner`` itself, or the factory ``inner`` built with ``hyperparams``."""
  if not isinstance(inner, optax.GradientTransformation):
    if not callable(inner):
      raise TypeError(
          "inner must be an inject_hyperparams optimizer or a factory such as "
          f"optax.adam; got {type(inner).__name__}.")
    return optax.inject_hyperparams(inner)(**dict(hyperparams or {}))
  if hyperparams:
    raise ValueError("hyperparams is for a factory inner (e.g. optax.adam); "
                     "this optimizer is already built.")
  return inner


def _reparametrizations(names, overrides) -> dict[str, str]:
  """Each name's coordinates: the default, or the user's override."""
  kinds = {n: default_reparametrization(n) for n in names}
  kinds.update(overrides or {})
  for name, kind in kinds.items():
    if name not in names:
      raise ValueError(f"reparametrization names {name!r}, not adapted.")
    _validation.check_choice(f"reparametrization[{name!r}]", kind,
                             REPARAMETRIZATIONS)
  return kinds


def _hyper_optimizer(names, hyper_lr, hyper_optimizer
                     ) -> optax.GradientTransformation:
  """The step on φ: the user's transform, or plain SGD with a β per name."""
  if hyper_optimizer is not None:
    if not isinstance(hyper_optimizer, optax.GradientTransformation):
      raise TypeError("hyper_optimizer must be None or an optax."
                      f"GradientTransformation; got {type(hyper_optimizer)}.")
    return hyper_optimizer
  rates = hyper_lr if isinstance(hyper_lr, Mapping) else {
      n: hyper_lr for n in names}
  if set(rates) != set(names):
    raise ValueError(f"hyper_lr must name exactly {names}; got {rates}.")
  for name, rate in rates.items():
    _validation.check_non_negative(f"hyper_lr[{name!r}]", rate)
  return optax.stateless(
      lambda h, _: {n: -jnp.asarray(rates[n], h[n].dtype) * h[n] for n in h})


def _hypergradients(grads, tangents, dtype, axis_name) -> dict[str, Any]:
  """``h_t = g_t · ∂u_{t-1}/∂φ`` for each name, summed over ``axis_name``."""
  return {n: _tree.reduce_product(jnp.multiply, grads, tangent, "global",
                                  dtype, axis_name)
          for n, tangent in tangents.items()}


def _update_and_tangents(inner, kinds, phi, updates, inner_state, params,
                         extra_args):
  """The inner update at ``λ(φ)`` and its tangents ``∂u/∂φ``, one per name.

  One forward-mode pass: the update once, the tangents batched by
  ``jax.vmap`` over the basis vectors of ``φ``.
  """
  names = tuple(phi)

  def update_with(phi):
    values = dict(inner_state.hyperparams)
    for n in names:
      values[n] = _to_value(kinds[n], phi[n]).astype(values[n].dtype)
    return inner.update(updates, inner_state._replace(hyperparams=values),
                        params, **extra_args)

  def jvp(direction):
    return jax.jvp(update_with, (phi,), (direction,), has_aux=True)

  basis = {n: jnp.eye(len(names), dtype=phi[n].dtype)[i]
           for i, n in enumerate(names)}
  new_updates, du, new_state = jax.vmap(jvp, out_axes=(None, 0, None))(basis)
  du = _zero_undefined(du, new_updates)
  tangents = {n: jax.tree.map(lambda d, i=i: d[i], du)
              for i, n in enumerate(names)}
  return new_updates, tangents, new_state


def _zero_undefined(du, updates):
  """Zeroes a non-finite tangent of a finite update entry.

  That is forward mode's 0 * inf: Adam's sqrt(v̂) at v̂ = 0, for a coordinate
  whose gradient has always been 0 (a constant input feature, a dead unit),
  where u = 0 for every λ and the derivative is 0. Left as NaN it would make
  h_t NaN at every step, so b2 (and anything adapted with it) would never
  move.
  """
  return jax.tree.map(
      lambda d, u: jnp.where(jnp.isfinite(d) | ~jnp.isfinite(u), d,
                             jnp.zeros_like(d)), du, updates)
