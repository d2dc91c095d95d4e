"""Tree reductions shared by every hypergradient optimizer in the package."""

from __future__ import annotations

from typing import Optional, Union

import jax
import jax.numpy as jnp

AxisName = Optional[Union[str, tuple[str, ...]]]


def reduce_product(op, a, b, granularity: str, dtype,
                   axis_name: AxisName = None):
  """Reduces ``op(a, b)`` leaf by leaf to the granularity's shape, in ``dtype``.

  With ``axis_name`` (inside ``shard_map``/``pmap`` with the parameters
  sharded over that axis) each device holds only a shard of every leaf, so a
  sum over it is partial: the sums are completed with ``lax.psum``. Per-element
  results need none. (Summing leaf products, not ``optax.tree.vdot``, also
  keeps jit with explicit sharding working: optax 0.2.8's vdot fails there.)
  """
  def leaf(x, y):
    z = op(x.astype(dtype), y.astype(dtype))
    return z if granularity == "per-element" else jnp.sum(z)
  per_leaf = jax.tree.map(leaf, a, b)
  if granularity == "global":
    per_leaf = sum(jax.tree.leaves(per_leaf), jnp.zeros((), dtype))
  if axis_name is None or granularity == "per-element":
    return per_leaf
  return jax.lax.psum(per_leaf, axis_name)
