"""Runs of the benchmark's tasks for the tests: one per seed, vmapped."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hypergrad_optax.bench import data as bench_data
from hypergrad_optax.bench import tasks as bench_tasks


def final_losses(task_name, alpha0, make_tx, seeds):
  """The sweep's ``task_name`` (its model, loss, batch size and epochs) from
  ``make_tx(base(alpha0))``, ``base`` the task's base optimizer: one run per
  seed 0 … seeds - 1 (vmapped; parameters from ``key(seed)``, epochs shuffled
  from ``key(1000 + seed)``), the final full-data training loss of each."""
  return final_runs(task_name, alpha0, make_tx, seeds)[0]


def final_runs(task_name, alpha0, make_tx, seeds):
  """:func:`final_losses`' runs: each one's final full-data training loss
  and optimizer state (stacked over seeds)."""
  task = bench_tasks.TASKS[task_name]
  ds = bench_data.load(task.dataset, None)
  model = task.model()
  loss_fn = bench_tasks.loss_fn(task, model)
  x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
  n, batch = len(x), task.batch_size
  per_epoch = n // batch
  tx = make_tx(bench_tasks.base_optimizer(task, per_epoch *
                                          task.default_epochs)(alpha0))

  def run(seed):
    params = model.init(jax.random.key(seed), x.shape[1:])
    key = jax.random.key(1000 + seed)
    idx = jnp.stack([
        jax.random.permutation(jax.random.fold_in(key, e), n)
        [:per_epoch * batch].reshape(per_epoch, batch)
        for e in range(task.default_epochs)]).reshape(-1, batch)

    def step(carry, i):
      params, state = carry
      grads = jax.grad(loss_fn)(params, x[i], y[i])
      updates, state = tx.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), None

    (params, state), _ = jax.lax.scan(step, (params, tx.init(params)), idx)
    return loss_fn(params, x, y), state

  losses, states = jax.jit(jax.vmap(run))(jnp.arange(seeds))
  return np.asarray(losses), states
