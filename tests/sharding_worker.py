"""Sharded training on 8 CPU devices, compared with one device.

Run by ``tests/test_scaling.py`` in a subprocess, because the device count
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``) must be set before
JAX is imported. Prints one JSON object: for each scenario and optimizer, the
largest relative difference from the single-device run of the parameters and
of the adapted rate after ``STEPS`` steps, how far the rate moved (so that a
match is not trivially a frozen rate), and whether the optimizer state kept
its shardings and types through ``update``.
"""

import functools
import json
import os

os.environ.setdefault("XLA_FLAGS",
                      "--xla_force_host_platform_device_count=8")

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import optax  # pylint: disable=g-import-not-at-top
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top

import hypergrad_optax as hgo  # pylint: disable=g-import-not-at-top

STEPS = 30
N = 8  # devices
HYPER_LR_ADAPT = 3.0

OPTIMIZERS = {
    # β = 0.5: the default horizon moves the rate only 0.6 % in 30 steps at
    # β = 0.1 here, too little for a match to mean anything.
    "wrap-adam": lambda **kw: hgo.hypergradient(optax.adam(1e-2), 0.5, **kw),
    "wrap-sgd-additive-per-tensor": lambda **kw: hgo.hypergradient(
        optax.sgd(0.2), hyper_lr=1.0, rule="additive",
        granularity="per-tensor", **kw),
    # A two-level bound that holds most steps (of the norm summed over
    # the shards).
    "wrap-sgd-per-tensor-bound": lambda **kw: hgo.hypergradient(
        optax.sgd(0.2), granularity="per-tensor",
        max_relative_step=(0.01, 0.02), **kw),
    "wrap-sgd-per-element": lambda **kw: hgo.hypergradient(
        optax.sgd(0.2), granularity="per-element", **kw),
    "wrap-sgd-per-element-gate-0.7.0": lambda **kw: hgo.hypergradient(
        optax.sgd(0.2), granularity="per-element",
        noise_gate=hgo.rules.NoiseGate(log_step=None),
        overshoot_guard="secant", **kw),
    "sgd_hd": lambda **kw: hgo.sgd_hd(0.2, hyper_lr=0.05, **kw),
    "sgdn_hd-multiplicative": lambda **kw: hgo.sgd_hd(
        0.05, hyper_lr=0.05, momentum=0.9, nesterov=True,
        rule="multiplicative", **kw),
    "adam_hd": lambda **kw: hgo.adam_hd(1e-2, hyper_lr=1e-4, **kw),
    "adamw_hd-per-tensor": lambda **kw: hgo.adamw_hd(
        1e-2, hyper_lr=1e-4, granularity="per-tensor", **kw),
    "adapt-adam": lambda **kw: hgo.adapt_hyperparams(
        optax.adam, ("learning_rate", "b1"), hyper_lr=HYPER_LR_ADAPT,
        hyperparams=dict(learning_rate=1e-2), **kw),
}

# FSDP: every leaf sharded along its first dimension (divisible by 8).
SPECS = {"w1": P("x", None), "b1": P("x"), "w2": P("x", None), "b2": P("x")}


def problem():
  """A small tanh MLP regression: parameters, inputs, targets."""
  keys = jax.random.split(jax.random.key(0), 6)
  params = {
      "w1": jax.random.normal(keys[0], (32, 16)) / 4,  # (out, in)
      "b1": jax.random.normal(keys[1], (32,)) / 10,
      "w2": jax.random.normal(keys[2], (32, 8)) / 6,
      "b2": jnp.zeros(8),
  }
  x = jax.random.normal(keys[3], (64, 16))
  y = jnp.sin(x[:, :8]) + 0.1 * jax.random.normal(keys[4], (64, 8))
  return params, x, y


def loss_fn(params, x, y):
  hidden = jnp.tanh(x @ params["w1"].T + params["b1"])
  return jnp.mean(jnp.square(hidden @ params["w2"] + params["b2"] - y))


def make_step(tx, loss=loss_fn):
  def step(params, state, x, y):
    grads = jax.grad(loss)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state
  return step


def run(step, params, state, x, y, steps=STEPS):
  for _ in range(steps):
    params, state = step(params, state, x, y)
  return params, state


def rel_diff(a, b):
  """Largest |a - b| over the largest |b|, over all leaves."""
  a, b = jax.tree.leaves(a), jax.tree.leaves(b)
  num = max(float(np.max(np.abs(np.asarray(u) - np.asarray(v))))
            for u, v in zip(a, b))
  den = max(float(np.max(np.abs(np.asarray(v)))) for v in b)
  return num / den


def rate_of(state):
  if isinstance(state, hgo.AdaptHyperparamsState):
    return state.unconstrained  # log lr and logit b1
  return hgo.get_learning_rate(state, base_learning_rate=1.0)


def summary(params, state, ref_params, ref_state, initial_state):
  return {
      "param_rel_diff": rel_diff(params, ref_params),
      "rate_rel_diff": rel_diff(rate_of(state), rate_of(ref_state)),
      "rate_change": rel_diff(rate_of(ref_state), rate_of(initial_state)),
  }


def reference(name):
  """Single device, no sharding: the trajectory every scenario must match."""
  params, x, y = problem()
  tx = OPTIMIZERS[name]()
  state = tx.init(params)
  return state, run(jax.jit(make_step(tx)), params, state, x, y)


def same_shardings(a, b):
  """Leafwise equivalent shardings (``P('x', None)`` is ``P('x')``)."""
  return jax.tree.structure(a) == jax.tree.structure(b) and all(
      u.sharding.is_equivalent_to(v.sharding, u.ndim)
      for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def types(tree):
  return jax.tree.map(jax.typeof, tree)


def jit_fsdp(name, ref, explicit=False, donate=False):
  """jit over NamedSharding-sharded parameters (Auto or Explicit axes)."""
  axis_type = AxisType.Explicit if explicit else AxisType.Auto
  mesh = jax.make_mesh((N,), ("x",), axis_types=(axis_type,))
  with jax.set_mesh(mesh):
    params, x, y = problem()
    params = {k: jax.device_put(v, NamedSharding(mesh, SPECS[k]))
              for k, v in params.items()}
    x, y = (jax.device_put(a, NamedSharding(mesh, P())) for a in (x, y))
    tx = OPTIMIZERS[name]()

    def gathered_loss(params, x, y):
      # FSDP: gather the parameters before use (explicit mode requires it
      # before contracting over a sharded dimension).
      if explicit:
        params = jax.tree.map(lambda a: jax.sharding.reshard(a, P()), params)
      return loss_fn(params, x, y)

    # Eager init follows the parameters' shardings (jit(tx.init) without
    # out_shardings would let the compiler replicate the state).
    state = tx.init(params)
    before = types(state)
    step = jax.jit(make_step(tx, gathered_loss),
                   donate_argnums=(0, 1) if donate else ())
    # Copies to compare with, as donation deletes the arguments.
    params_copy, state_copy = jax.tree.map(jnp.copy, (params, state))
    first_params, first_state = step(params, state, x, y)
    donated = params["w1"].is_deleted() and state.count.is_deleted()

    final_params, final_state = run(step, first_params, first_state, x, y,
                                    STEPS - 1)
    result = summary(final_params, final_state, *ref[1], ref[0])
    result["same_shardings"] = same_shardings(state_copy, first_state)
    result["same_types"] = before == types(first_state)
    result["params_stay_sharded"] = same_shardings(params_copy, final_params)
    if donate:
      result["donated"] = bool(donated)
    return result


def place(mesh, args, specs):
  """``device_put`` of each argument with its shard_map in_spec."""
  return jax.tree.map(
      lambda s, a: jax.device_put(a, NamedSharding(mesh, s)), specs, args,
      is_leaf=lambda s: isinstance(s, P))


def state_specs(state, axes):
  """Specs for shard_map: scalars replicated, parameter-shaped leaves split."""
  return jax.tree.map(lambda a: P() if a.ndim == 0 else P(axes), state)


def _fsdp_local_step(tx, axes):
  """One step on local shards of the parameters and of the batch."""
  def local_loss(local_params, x, y):
    full = jax.tree.map(
        lambda a: jax.lax.all_gather(a, axes, tiled=True), local_params)
    return loss_fn(full, x, y)

  def local_step(params, state, x, y):
    grads = jax.grad(local_loss)(params, x, y)
    grads = jax.tree.map(lambda g: g / N, grads)  # mean over the batch shards
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state
  return local_step


def shard_map_fsdp(name, ref, axes=("x",), mesh_shape=(N,), use_axis_name=True):
  """shard_map with every leaf split along dim 0 over ``axes`` (ZeRO-3).

  The batch is split too. The loss all-gathers the parameters, so autodiff
  returns the local shard of the gradient summed over devices (the transpose
  of all_gather is psum_scatter).
  """
  mesh = jax.make_mesh(mesh_shape, axes)
  axis_name = (axes if len(axes) > 1 else axes[0]) if use_axis_name else None
  params, x, y = problem()
  tx = OPTIMIZERS[name](axis_name=axis_name)
  state = tx.init(params)
  param_specs = jax.tree.map(lambda _: P(axes), params)
  specs = state_specs(state, axes)

  local_step = _fsdp_local_step(tx, axes)
  in_specs = (param_specs, specs, P(axes), P(axes))
  step = jax.jit(jax.shard_map(
      local_step, mesh=mesh, in_specs=in_specs,
      out_specs=(param_specs, specs),
      # Without axis_name the rate differs per device: the negative control
      # reads it unchecked.
      check_vma=use_axis_name))
  final_params, final_state = run(
      step, *place(mesh, (params, state, x, y), in_specs))
  return summary(final_params, final_state, *ref[1], ref[0])


def pmap_fsdp(name, ref):
  """``jax.pmap`` with every leaf split along dim 0 and axis_name given."""
  params, x, y = problem()
  tx = OPTIMIZERS[name](axis_name="x")
  state = tx.init(params)
  # A leading device axis: scalars repeated, everything else split.
  split = lambda a: (jnp.broadcast_to(a, (N,)) if a.ndim == 0  # pylint: disable=g-long-lambda
                     else a.reshape(N, a.shape[0] // N, *a.shape[1:]))
  step = jax.pmap(_fsdp_local_step(tx, "x"), axis_name="x")
  final_params, final_state = run(
      step, *jax.tree.map(split, (params, state, x, y)))
  agree = all(bool(jnp.all(a[0] == a)) for a in jax.tree.leaves(final_state)
              if a.ndim == 1 and a.shape[0] == N)
  join = lambda a, like: a[0] if like.ndim == 0 else a.reshape(like.shape)  # pylint: disable=unnecessary-lambda-assignment
  final_params, final_state = jax.tree.map(
      join, (final_params, final_state), (params, state))
  result = summary(final_params, final_state, *ref[1], ref[0])
  result["replicas_agree"] = agree
  return result


def shard_map_data_parallel(name, ref):
  """shard_map with replicated parameters and pmean'd gradients."""
  mesh = jax.make_mesh((N,), ("data",))
  params, x, y = problem()
  tx = OPTIMIZERS[name]()
  state = tx.init(params)

  def local_step(params, state, x, y):
    # Mark the replicated parameters device-varying so that grad returns the
    # local batch's gradient (for invariant inputs shard_map's autodiff
    # already sums over devices), then average it.
    local = jax.lax.pcast(params, "data", to="varying")
    grads = jax.lax.pmean(jax.grad(loss_fn)(local, x, y), "data")
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  in_specs = (P(), P(), P("data"), P("data"))
  step = jax.jit(jax.shard_map(local_step, mesh=mesh, in_specs=in_specs,
                               out_specs=(P(), P())))
  args = place(mesh, (params, state, x, y), in_specs)
  return summary(*run(step, *args), *ref[1], ref[0])


# Each scenario runs the optimizers that exercise what it can break; the
# suite runs on 2 shared cores, so compilations are counted.
_JIT = ["wrap-adam", "wrap-sgd-per-element", "sgdn_hd-multiplicative",
        "adam_hd", "adamw_hd-per-tensor"]
SCENARIOS = {
    "jit_fsdp": (jit_fsdp, _JIT),
    "jit_fsdp_explicit": (functools.partial(jit_fsdp, explicit=True), _JIT),
    "jit_fsdp_donated": (functools.partial(jit_fsdp, donate=True),
                         ["wrap-adam"]),
    "shard_map_data_parallel": (shard_map_data_parallel,
                                ["wrap-adam", "sgd_hd"]),
    # Every reduction kind: global, per-tensor, per-element; additive and
    # multiplicative (norms); overshoot guard (wrap-*); Adam's recomputed and
    # stored previous directions.
    "shard_map_fsdp": (shard_map_fsdp,
                       ["wrap-adam", "wrap-sgd-additive-per-tensor",
                        "wrap-sgd-per-element",
                        "wrap-sgd-per-element-gate-0.7.0",
                        "sgdn_hd-multiplicative",
                        "adam_hd", "adamw_hd-per-tensor", "adapt-adam"]),
    "shard_map_fsdp_2d": (
        functools.partial(shard_map_fsdp, axes=("a", "b"), mesh_shape=(2, 4)),
        ["wrap-sgd-additive-per-tensor"]),
    "pmap_fsdp": (pmap_fsdp, ["wrap-adam", "wrap-sgd-per-element",
                              "adapt-adam"]),
    # Negative control: a dot over the local shard is partial.
    "shard_map_fsdp_no_axis_name": (
        functools.partial(shard_map_fsdp, use_axis_name=False),
        ["wrap-adam", "wrap-sgd-additive-per-tensor", "adapt-adam"]),
}


def main():
  assert jax.device_count() == N, jax.devices()
  refs = {name: reference(name) for name in OPTIMIZERS}  # all are used
  results = {
      scenario: {name: fn(name, refs[name]) for name in names}
      for scenario, (fn, names) in SCENARIOS.items()}
  print(json.dumps(results))


if __name__ == "__main__":
  main()
