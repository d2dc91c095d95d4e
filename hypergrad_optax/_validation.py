"""Argument checks shared by every factory.

Checks run at construction time on concrete Python or NumPy values only: a
traced value (``optax.inject_hyperparams`` passes hyperparameters as arrays,
possibly under ``jit``) cannot be inspected without breaking tracing, so it is
accepted as is.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import jax
import numpy as np

RULES = ("additive", "multiplicative")
GRANULARITIES = ("global", "per-tensor", "per-element")


def concrete_float(value: Any) -> Optional[float]:
  """Returns ``value`` as a float when it is concrete and scalar, else None."""
  if isinstance(value, jax.core.Tracer) or callable(value):
    return None
  try:
    array = np.asarray(value)
  except (TypeError, ValueError):
    return None
  if array.shape != () or not np.issubdtype(array.dtype, np.number):
    return None
  return float(array)


def check_choice(name: str, value: Any, allowed: Sequence[str]) -> str:
  if value not in allowed:
    raise ValueError(
        f"{name} must be one of {', '.join(repr(a) for a in allowed)}; "
        f"got {value!r}."
    )
  return value


def check_axis_name(value: Any) -> None:
  """``axis_name``: None, a mapped axis name, or a tuple of them."""
  names = value if isinstance(value, tuple) else (value,)
  if value is not None and (
      not names or not all(isinstance(n, str) for n in names)):
    raise TypeError(
        "axis_name must be None, a str or a tuple of str naming the "
        f"shard_map/pmap axes the parameters are sharded over; got {value!r}.")


def check_non_negative(name: str, value: Any) -> None:
  x = concrete_float(value)
  if x is not None and not (math.isfinite(x) and x >= 0):
    raise ValueError(f"{name} must be a finite number >= 0; got {value!r}.")


def check_unit_interval(name: str, value: Any) -> None:
  """Checks ``0 <= value < 1`` (decay rates, momentum)."""
  x = concrete_float(value)
  if x is not None and not 0.0 <= x < 1.0:
    raise ValueError(f"{name} must be in [0, 1); got {value!r}.")


def check_closed_unit_interval(name: str, value: Any) -> None:
  """Checks that ``value`` is a number with ``0 <= value <= 1`` (a
  fraction)."""
  x = concrete_float(value)
  if x is None or not 0.0 <= x <= 1.0:
    raise ValueError(f"{name} must be a number in [0, 1]; got {value!r}.")


def check_positive(name: str, value: Any) -> None:
  x = concrete_float(value)
  if x is not None and not (math.isfinite(x) and x > 0):
    raise ValueError(f"{name} must be a finite number > 0; got {value!r}.")


def check_learning_rate(value: Any) -> None:
  if callable(value):
    raise TypeError(
        "learning_rate of a hypergradient alias is the initial rate and must "
        "be a number, not a schedule. To adapt a scheduled optimizer, wrap it: "
        "hypergradient(optax.adam(schedule))."
    )
  check_non_negative("learning_rate", value)


def check_horizon(horizon: Any, curvature: Any) -> None:
  """``horizon``: ``'run'`` or an int >= 1 (1: the paper); ``curvature``
  needs a horizon over several steps."""
  if isinstance(horizon, str):
    if horizon != "run":
      raise ValueError(
          f"horizon must be 'run' or an int >= 1 (steps); got {horizon!r}.")
  elif isinstance(horizon, bool) or not isinstance(horizon,
                                                   (int, np.integer)):
    raise TypeError(
        f"horizon must be 'run' or an int >= 1 (steps); got {horizon!r}.")
  elif horizon < 1:
    raise ValueError(
        f"horizon must be 'run' or an int >= 1 (steps); got {horizon!r}.")
  if not isinstance(curvature, bool):
    raise TypeError(f"curvature must be True or False; got {curvature!r}.")
  if curvature and horizon == 1:
    raise ValueError(
        "curvature=True carries the tangent over several steps: it needs "
        f"horizon='run' or >= 2; got horizon={horizon!r}.")


def check_bounds(min_rate: Any, max_rate: Any,
                 names: tuple[str, str] = ("min_rate", "max_rate")) -> None:
  """Bounds on the rate (or on the wrapper's scale), named as the caller's."""
  lo, hi = concrete_float(min_rate), concrete_float(max_rate)
  low_name, high_name = names
  for name, raw, x in ((low_name, min_rate, lo), (high_name, max_rate, hi)):
    if raw is not None and x is not None and math.isnan(x):
      raise ValueError(f"{name} must not be NaN; got {raw!r}.")
  if lo is not None and hi is not None and lo > hi:
    raise ValueError(
        f"{low_name} must be <= {high_name}; got {low_name}={min_rate!r} > "
        f"{high_name}={max_rate!r}."
    )


def check_same_structure(grads: Any, reference: Any) -> None:
  """Raises a ValueError naming both structures when they differ, or the
  first leaf whose shape differs (its path and both shapes). The message
  speaks of the parameters the state was initialised with, true of every
  variant (some keep no previous direction the user would know of).
  """
  got, expected = jax.tree.structure(grads), jax.tree.structure(reference)
  if got != expected:
    raise ValueError(
        "The gradients' tree structure differs from that of the parameters "
        "the optimizer state was initialised with (tx.init(params)).\n"
        f"  gradients: {got}\n  state:     {expected}"
    )
  flat, _ = jax.tree_util.tree_flatten_with_path(grads)
  for (path, leaf), ref in zip(flat, jax.tree.leaves(reference)):
    if np.shape(leaf) != np.shape(ref):
      raise ValueError(
          f"The gradient at {jax.tree_util.keystr(path) or 'the root'} has "
          f"shape {np.shape(leaf)}, but the optimizer state was initialised "
          f"(tx.init(params)) with shape {np.shape(ref)} there.")
