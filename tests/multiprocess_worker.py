"""One process of a 2-process data-parallel run over ``jax.distributed``.

``tests/test_scaling.py`` starts two of these on 127.0.0.1 (``python
multiprocess_worker.py PORT PROCESS_ID``) and compares what each prints, the
final parameters and adapted learning rate as JSON, with a single-process run
of :func:`train` on the whole batch. Each process feeds its half of the batch;
the parameters and optimizer state are replicated over both.
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import hypergrad_optax as hgo

STEPS = 20
LEARNING_RATE = 1e-2


def problem():
  """A tanh MLP regression on a fixed batch of 32: params, inputs, targets."""
  keys = jax.random.split(jax.random.key(1), 4)
  params = {"w1": jax.random.normal(keys[0], (8, 16)) / 3,
            "b1": jnp.zeros(16),
            "w2": jax.random.normal(keys[1], (16, 1)) / 4}
  x = jax.random.normal(keys[2], (32, 8))
  y = jnp.sin(x[:, :1]) + 0.1 * jax.random.normal(keys[3], (32, 1))
  return params, x, y


def loss_fn(params, x, y):
  hidden = jnp.tanh(x @ params["w1"] + params["b1"])
  return jnp.mean(jnp.square(hidden @ params["w2"] - y))


def optimizer():
  return hgo.hypergradient(optax.adam(LEARNING_RATE))


def train(params, state, x, y, tx):
  """STEPS jitted steps; the shardings of the arguments decide the layout."""
  @jax.jit
  def step(params, state, x, y):
    updates, state = tx.update(jax.grad(loss_fn)(params, x, y), state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(STEPS):
    params, state = step(params, state, x, y)
  return params, state


def main(port, process_id):
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
      coordinator_address=f"127.0.0.1:{port}", num_processes=2,
      process_id=process_id, initialization_timeout=60,
      shutdown_timeout_seconds=10)
  try:
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    replicated = jax.sharding.NamedSharding(mesh, jax.P())
    batch = jax.sharding.NamedSharding(mesh, jax.P("data"))
    params, x, y = problem()
    half = slice(16 * process_id, 16 * (process_id + 1))
    x, y = (jax.make_array_from_process_local_data(batch, np.asarray(a[half]))
            for a in (x, y))
    params = jax.tree.map(
        lambda a: jax.make_array_from_process_local_data(
            replicated, np.asarray(a)), params)
    tx = optimizer()
    params, state = train(params, tx.init(params), x, y, tx)
    local = lambda a: np.asarray(a.addressable_data(0)).tolist()  # pylint: disable=unnecessary-lambda-assignment
    print(json.dumps({
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "params": jax.tree.map(local, params),
        "learning_rate": local(hgo.get_learning_rate(
            state, base_learning_rate=LEARNING_RATE)),
    }))
  finally:
    jax.distributed.shutdown()


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]))
