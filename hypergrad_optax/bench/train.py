"""The training loop: JIT-compiled chunks of minibatch steps, logged per step.

Each chunk of steps is one ``lax.scan`` inside ``jax.jit`` (no Python in the
inner loop), returning every step's minibatch loss and learning rate, so the
log has the reference runs' per-iteration resolution at little cost.

:func:`train` runs one optimizer; :func:`train_many` runs the same scan
``jax.vmap``-ed over many initial learning rates and seeds at once (the
sweep's runs of one method), so both share one step function.
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
  state: Any = None
  params: Any = None


def _chunk_fn(loss_fn, tx, rate_fn, alpha0):
  """The jitted :func:`scan_steps`."""
  return jax.jit(scan_steps(loss_fn, tx, rate_fn, alpha0))


def scan_steps(loss_fn, tx, rate_fn, alpha0):
  """The loop: ``(params, state, x, y, idx[steps, batch])`` to ``(params,
  state, losses, rates)``, one ``lax.scan`` over the minibatch indices."""

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
          progress: bool = True, desc: str = "",
          loss_fn=None) -> RunResult:
  """Trains ``model`` with ``method`` and logs every step.

  Every method of a comparison starts from the same initial parameters (from
  ``seed``) and sees the same minibatch order. The last partial batch of an
  epoch is dropped. A run stops early once its loss is non-finite.
  ``loss_fn(params, x, y)`` defaults to the model's cross-entropy.
  """
  loss_fn = loss_fn or models_lib.cross_entropy(model)
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
  return RunResult(loss_epoch, valid_loss, alpha, elapsed, diverged, rows,
                   state, params)


def epoch_batches(rng: np.random.Generator, n: int, batch_size: int
                  ) -> np.ndarray:
  """One epoch's minibatch indices ``[n // batch_size, batch_size]`` (the
  last partial batch dropped), as :func:`train` draws them."""
  steps = n // batch_size
  return rng.permutation(n)[:steps * batch_size].reshape(steps, batch_size)


class ManyResult(NamedTuple):
  """The final figures of ``R`` runs trained side by side.

  Attributes:
    final_train_loss: ``[R]`` mean minibatch loss of the last epoch.
    final_valid_loss: ``[R]`` loss on the validation split at the end.
    rates: ``[R, steps]`` the learning rate used at every step.
    epoch_losses: ``[R, epochs]`` mean minibatch loss of each epoch.
    compile_seconds: time to compile the init, epoch and eval functions.
    run_seconds: time of the training steps and the evaluation.
    params: the final parameters, stacked over the ``R`` runs.
    state: the final optimizer states, stacked likewise.
  """
  final_train_loss: np.ndarray
  final_valid_loss: np.ndarray
  rates: np.ndarray
  epoch_losses: np.ndarray
  compile_seconds: float
  run_seconds: float
  params: Any = None
  state: Any = None


def train_many(dataset: data_lib.Dataset, model: models_lib.Model, build,
               *, alphas, seeds, epochs: int, batch_size: int, loss_fn=None,
               rate_fn=None, eval_params=None, valid_loss_fn=None,
               progress: bool = True, desc: str = "") -> ManyResult:
  """Trains ``R = len(alphas)`` runs at once: :func:`scan_steps` under
  ``jax.vmap`` over the initial learning rate and the seed.

  Run ``r`` starts from ``model.init(key(seeds[r]))`` and sees the minibatch
  order of ``seeds[r]``, exactly as :func:`train` with that seed would, and
  its optimizer is ``build(alphas[r])`` built inside the vmapped function, so
  ``alphas[r]`` is a traced value. A run whose loss becomes non-finite keeps
  NaN losses; the others carry on.

  Args:
    dataset: the data.
    model: the model.
    build: ``alpha0 -> optax.GradientTransformation`` (``alpha0`` traced).
    alphas: ``R`` initial learning rates.
    seeds: ``R`` integer seeds.
    epochs: the number of epochs.
    batch_size: the minibatch size.
    loss_fn: ``(params, x, y) -> loss``; the model's cross-entropy by
      default.
    rate_fn: ``(state, alpha0) -> scalar`` the rate of the last step; NaN
      when None.
    eval_params: ``(state, params) -> params`` for the validation loss.
    valid_loss_fn: the validation loss (default: ``loss_fn``).
    progress: show a progress bar.
    desc: the progress bar's label.

  Returns:
    A :class:`ManyResult`.
  """
  loss_fn = loss_fn or models_lib.cross_entropy(model)
  rate_fn = rate_fn or (lambda state, alpha0: jnp.float32(jnp.nan))
  eval_params = eval_params or (lambda state, params: params)
  valid_loss_fn = valid_loss_fn or loss_fn
  alphas = np.asarray(alphas, np.float32)
  seeds = np.asarray(seeds, np.int64)
  if alphas.shape != seeds.shape or alphas.ndim != 1 or not len(alphas):
    raise ValueError("alphas and seeds must be non-empty 1-D and of the same "
                     f"length; got {alphas.shape} and {seeds.shape}.")
  n = len(dataset.x_train)
  steps_per_epoch = n // batch_size
  if steps_per_epoch < 1:
    raise ValueError(f"batch_size {batch_size} exceeds the {n} training "
                     "examples.")
  x_train, y_train = jnp.asarray(dataset.x_train), jnp.asarray(
      dataset.y_train)
  x_test, y_test = jnp.asarray(dataset.x_test), jnp.asarray(dataset.y_test)
  input_shape = dataset.x_train.shape[1:]

  def init(alpha0, seed):
    params = model.init(jax.random.key(seed), input_shape)
    return params, build(alpha0).init(params)

  def epoch(alpha0, params, state, batches):
    return scan_steps(loss_fn, build(alpha0), rate_fn, alpha0)(
        params, state, x_train, y_train, batches)

  def valid(params, state):
    params = eval_params(state, params)
    total = 0.0
    for start in range(0, len(x_test), EVAL_BATCH):
      xb, yb = x_test[start:start + EVAL_BATCH], y_test[start:start +
                                                         EVAL_BATCH]
      total = total + valid_loss_fn(params, xb, yb) * xb.shape[0]
    return total / len(x_test)

  tic = time.perf_counter()
  alphas_j, seeds_j = jnp.asarray(alphas), jnp.asarray(seeds, jnp.uint32)
  init_c = jax.jit(jax.vmap(init)).lower(alphas_j, seeds_j).compile()
  params, state = init_c(alphas_j, seeds_j)
  shape = jax.ShapeDtypeStruct((len(alphas), steps_per_epoch, batch_size),
                               jnp.int32)
  epoch_c = jax.jit(jax.vmap(epoch), donate_argnums=(1, 2)).lower(
      alphas_j, params, state, shape).compile()
  valid_c = jax.jit(jax.vmap(valid)).lower(params, state).compile()
  compile_seconds = time.perf_counter() - tic

  tic = time.perf_counter()
  rngs = {int(s): np.random.default_rng(int(s)) for s in np.unique(seeds)}
  all_rates, epoch_losses = [], []
  bar = tqdm(total=epochs * steps_per_epoch, desc=desc, disable=not progress,
             leave=False, dynamic_ncols=True)
  for _ in range(epochs):
    per_seed = {s: epoch_batches(rng, n, batch_size) for s, rng in
                rngs.items()}
    batches = jnp.asarray(np.stack([per_seed[int(s)] for s in seeds]),
                          jnp.int32)
    params, state, losses, rates = epoch_c(alphas_j, params, state, batches)
    losses = np.asarray(losses)
    all_rates.append(np.asarray(rates))
    epoch_losses.append(losses.mean(axis=1))
    bar.update(steps_per_epoch)
    if progress:
      bar.set_postfix(loss=f"{np.nanmin(epoch_losses[-1]):.4g}")
    if not np.any(np.isfinite(epoch_losses[-1])):
      break  # Every run diverged.
  bar.close()
  valid_loss = np.asarray(valid_c(params, state))
  epoch_losses = np.stack(epoch_losses, axis=1)
  final = epoch_losses[:, -1]
  if epoch_losses.shape[1] < epochs:
    final = np.full_like(final, np.nan)
  return ManyResult(final, np.where(np.isfinite(final), valid_loss, np.nan),
                    np.concatenate(all_rates, axis=1), epoch_losses,
                    compile_seconds, time.perf_counter() - tic, params, state)


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


