"""One training run: JIT-compiled chunks of minibatch steps, logged per step.

Each chunk of steps is one ``lax.scan`` inside ``jax.jit`` (no Python in the
inner loop), returning every step's minibatch loss and learning rate, so the
log has the reference runs' per-iteration resolution at little cost.
"""

from __future__ import annotations

import csv
import math
import time
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from hypergrad_optax.bench import data as data_lib
from hypergrad_optax.bench import methods as methods_lib
from hypergrad_optax.bench import models as models_lib
from hypergrad_optax.bench import report

# Columns of the per-iteration CSV, after the reference runs' Epoch,
# Iteration, Time, Loss, LossEpoch, ValidLossEpoch, Alpha.
CSV_COLUMNS = ("epoch", "iteration", "time", "loss", "loss_epoch",
               "valid_loss_epoch", "alpha")
CHUNK_STEPS = 50
EVAL_BATCH = 2000


class RunResult(NamedTuple):
  """The final figures of one run (the per-step log is in ``rows``)."""
  final_loss_epoch: float
  final_valid_loss: float
  final_alpha: float
  seconds: float
  diverged: bool
  rows: list


def _chunk_fn(loss_fn, tx, rate_fn, alpha0):
  """``(params, state, x, y, idx[steps, batch])`` to ``(params, state,
  losses, rates)``."""

  @jax.jit
  def run(params, state, x, y, batches):
    def step(carry, idx):
      params, state = carry
      loss, grads = jax.value_and_grad(loss_fn)(params, x[idx], y[idx])
      updates, state = tx.update(grads, state, params)
      params = optax.apply_updates(params, updates)
      return (params, state), (loss, rate_fn(state, alpha0))
    (params, state), (losses, rates) = jax.lax.scan(
        step, (params, state), batches)
    return params, state, losses, rates

  return run


def _mean_loss_fn(loss_fn):
  @jax.jit
  def batch_sum(params, x, y):
    return loss_fn(params, x, y) * x.shape[0]

  def mean_loss(params, x, y):
    total = 0.0
    for start in range(0, len(x), EVAL_BATCH):
      total += float(batch_sum(params, x[start:start + EVAL_BATCH],
                               y[start:start + EVAL_BATCH]))
    return total / len(x)
  return mean_loss


def train(dataset: data_lib.Dataset, model: models_lib.Model,
          method: methods_lib.Method, *, alpha0: float, beta: Optional[float],
          epochs: int, batch_size: int, seed: int, weight_decay: float,
          progress: bool = True, desc: str = "") -> RunResult:
  """Trains ``model`` with ``method`` and logs every step.

  Every method of a comparison starts from the same initial parameters (from
  ``seed``) and sees the same minibatch order. The last partial batch of an
  epoch is dropped. A run stops early once its loss is non-finite.
  """
  loss_fn = models_lib.cross_entropy(model)
  x_train = jnp.asarray(dataset.x_train)
  y_train = jnp.asarray(dataset.y_train)
  steps_per_epoch = len(dataset.x_train) // batch_size
  if steps_per_epoch < 1:
    raise ValueError(
        f"--batch-size {batch_size} exceeds the {len(dataset.x_train)} "
        "training examples.")
  params = model.init(jax.random.key(seed), dataset.x_train.shape[1:])
  tx = method.build(alpha0, beta, weight_decay)
  state = tx.init(params)
  run_chunk = _chunk_fn(loss_fn, tx, method.rate, alpha0)
  mean_loss = _mean_loss_fn(loss_fn)
  eval_params = method.eval_params or (lambda state, params: params)
  order_rng = np.random.default_rng(seed)

  rows, elapsed, diverged = [], 0.0, False
  loss_epoch = valid_loss = alpha = math.nan
  bar = tqdm(total=epochs * steps_per_epoch, desc=desc, disable=not progress,
             leave=False, dynamic_ncols=True)
  for epoch in range(1, epochs + 1):
    order = order_rng.permutation(len(dataset.x_train))
    batches = order[:steps_per_epoch * batch_size].reshape(
        steps_per_epoch, batch_size)
    epoch_losses = []
    for start in range(0, steps_per_epoch, CHUNK_STEPS):
      chunk = batches[start:start + CHUNK_STEPS]
      tic = time.perf_counter()
      params, state, losses, rates = run_chunk(params, state, x_train,
                                               y_train, jnp.asarray(chunk))
      losses, rates = np.asarray(losses), np.asarray(rates)
      chunk_seconds = time.perf_counter() - tic
      # Spread the chunk's wall time evenly over its steps.
      times = elapsed + chunk_seconds * np.arange(1, len(chunk) + 1) / len(
          chunk)
      elapsed += chunk_seconds
      iteration0 = (epoch - 1) * steps_per_epoch + start
      for i, (loss, rate) in enumerate(zip(losses, rates)):
        rows.append([epoch, iteration0 + i + 1, times[i], float(loss),
                     math.nan, math.nan, float(rate)])
      epoch_losses.extend(losses.tolist())
      alpha = float(rates[-1])
      bar.update(len(chunk))
      bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=report.format_rate(alpha))
      if not np.all(np.isfinite(losses)):
        diverged = True
        break
    loss_epoch = float(np.mean(epoch_losses))
    valid_loss = (math.nan if diverged else
                  mean_loss(eval_params(state, params), dataset.x_test,
                            dataset.y_test))
    rows[-1][4], rows[-1][5] = loss_epoch, valid_loss
    if diverged:
      break
  bar.close()
  return RunResult(loss_epoch, valid_loss, alpha, elapsed, diverged, rows)


def write_csv(path: str, rows: list) -> None:
  """The per-iteration log; epoch-level columns are filled on each epoch's
  last iteration and empty elsewhere."""
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(CSV_COLUMNS)
    for row in rows:
      writer.writerow(["" if isinstance(v, float) and math.isnan(v) and
                       i in (4, 5) else _format(v)
                       for i, v in enumerate(row)])


def _format(value: Any) -> str:
  if isinstance(value, float):
    return f"{value:.6g}"
  return str(value)


def result_from_csv(path: str, epochs: int) -> Optional[RunResult]:
  """A finished run's result read back from its CSV, or None when the CSV
  is missing, unreadable or stops before ``epochs`` without diverging."""
  try:
    columns = read_csv(path)
  except (OSError, ValueError, KeyError, TypeError):
    return None
  if len(columns.get("epoch", ())) == 0:
    return None
  diverged = not np.all(np.isfinite(columns["loss"]))
  done = ~np.isnan(columns["loss_epoch"])
  if not diverged and (not np.any(done) or
                       columns["epoch"][done][-1] < epochs):
    return None

  def last(name):
    return float(columns[name][done][-1]) if np.any(done) else math.nan

  return RunResult(last("loss_epoch"), last("valid_loss_epoch"),
                   float(columns["alpha"][-1]), float(columns["time"][-1]),
                   diverged, [])


def read_csv(path: str) -> dict:
  """Reads a run's CSV back into numpy columns (NaN for empty cells)."""
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    columns = {name: [] for name in reader.fieldnames}
    for row in reader:
      for name, value in row.items():
        columns[name].append(float(value) if value != "" else math.nan)
  return {name: np.asarray(values) for name, values in columns.items()}


