"""Runs of the benchmark's tasks for the tests, through the sweep's own loop.

Each run is a lane of :func:`hypergrad_optax.bench.train.train_many`, the one
training loop behind ``hypergrad-bench sweep``: the task's model, loss, batch
size, epochs and base optimizer, parameters from ``key(seed)`` and the
minibatch order of ``seed``, so a test sees the runs the sweep measures.
"""

import jax
import jax.numpy as jnp
import numpy as np

from hypergrad_optax.bench import data as bench_data
from hypergrad_optax.bench import sweep as bench_sweep
from hypergrad_optax.bench import tasks as bench_tasks
from hypergrad_optax.bench import train as bench_train


def final_losses(task_name, alpha0, make_tx, seeds):
  """The sweep's ``task_name`` from ``make_tx(base(alpha0))``, ``base`` the
  task's base optimizer: one run per seed 0 … seeds - 1, the final
  full-data training loss of each."""
  return final_runs(task_name, alpha0, make_tx, seeds)[0]


def final_runs(task_name, alpha0, make_tx, seeds):
  """:func:`final_losses`' runs: each one's final full-data training loss
  and optimizer state (stacked over seeds)."""
  task = bench_tasks.TASKS[task_name]
  dataset = bench_data.load(task.dataset, None)
  model = task.model()
  loss_fn = bench_tasks.loss_fn(task, model)
  batch_size = task.batch_size or bench_sweep.DEFAULT_BATCH_SIZE
  steps = task.default_epochs * (len(dataset.x_train) // batch_size)
  base = bench_tasks.base_optimizer(task, steps)
  result = bench_train.train_many(
      dataset, model, lambda a: make_tx(base(a)),
      alphas=np.full(seeds, alpha0), seeds=np.arange(seeds),
      epochs=task.default_epochs, batch_size=batch_size,
      loss_fn=loss_fn, progress=False)
  x, y = jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train)
  losses = jax.jit(jax.vmap(loss_fn, in_axes=(0, None, None)))(
      result.params, x, y)
  return np.asarray(losses), result.state
