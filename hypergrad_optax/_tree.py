"""Tree reductions shared by every hypergradient optimizer in the package."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp

AxisName = Optional[Union[str, tuple[str, ...]]]


def leaf_sums(terms: Sequence[tuple[Callable, Any, Any]], granularity: str,
              dtype) -> list:
  """Per leaf, ``sum(op(a, b))`` for every ``(op, a, b)`` of ``terms`` at once.

  The sums of one leaf are one variadic ``lax.reduce``: XLA fuses it into a
  single pass over that leaf's buffers, however many sums read them (as
  separate reductions XLA's CPU backend reads each buffer once per sum).
  Per-element granularity keeps the products. Every ``a`` and ``b`` is a tree
  of one structure; the products are taken in ``dtype``.

  Returns:
    One tree per term: per leaf a scalar (per element: the products).
  """
  if not terms:
    return []
  treedef = jax.tree.structure(terms[0][1])
  leaves = [(op, jax.tree.leaves(a), jax.tree.leaves(b))
            for op, a, b in terms]
  per_leaf = []
  for i in range(treedef.num_leaves):
    products = [op(a[i].astype(dtype), b[i].astype(dtype))
                for op, a, b in leaves]
    if granularity != "per-element" and products[0].ndim:
      zero = jnp.zeros((), dtype)
      products = jax.lax.reduce(
          products, [zero] * len(products),
          lambda x, y: [u + v for u, v in zip(x, y)],
          tuple(range(products[0].ndim)))
    per_leaf.append(products)
  return [jax.tree.unflatten(treedef, [sums[k] for sums in per_leaf])
          for k in range(len(terms))]


def finish_sums(per_leaf, granularity: str, dtype,
                axis_name: AxisName = None):
  """:func:`leaf_sums`' tree reduced to the granularity's shape.

  With ``axis_name`` (inside ``shard_map``/``pmap`` with the parameters
  sharded over that axis) each device holds only a shard of every leaf, so a
  sum over it is partial: the sums are completed with ``lax.psum``. Per-element
  results need none. (Summing leaf products, not ``optax.tree.vdot``, also
  keeps jit with explicit sharding working: optax 0.2.8's vdot fails there.)
  """
  if granularity == "global":
    per_leaf = sum(jax.tree.leaves(per_leaf), jnp.zeros((), dtype))
  if axis_name is None or granularity == "per-element":
    return per_leaf
  return jax.lax.psum(per_leaf, axis_name)


def reduce_product(op, a, b, granularity: str, dtype,
                   axis_name: AxisName = None):
  """Reduces ``op(a, b)`` leaf by leaf to the granularity's shape, in ``dtype``
  (:func:`leaf_sums` of one term, then :func:`finish_sums`)."""
  [per_leaf] = leaf_sums([(op, a, b)], granularity, dtype)
  return finish_sums(per_leaf, granularity, dtype, axis_name)
