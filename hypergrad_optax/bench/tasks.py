"""Benchmark tasks: a data set, a model, a loss, epochs and a base optimizer."""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from hypergrad_optax.bench import models

# The base optimizers a task can name: what a user would tune today.
BASES = ("adam", "adamw-cosine")


class Task(NamedTuple):
  """One benchmark task.

  Attributes:
    name: the name on the command line.
    dataset: a key of ``data.LOADERS``.
    model: ``() -> Model``.
    default_epochs: the epochs when ``--epochs`` is not given.
    description: one line for ``--help`` and plot titles.
    loss: ``'xent'`` (classification), ``'mse'`` (regression) or ``'lm'``
      (next character, nats/char).
    batch_size: the task's minibatch size (None: the command line's).
    base: the base optimizer of the sweep, one of :data:`BASES`:
      ``'adam'`` (coupled L2 decay ``weight_decay``) or ``'adamw-cosine'``
      (AdamW, decoupled decay ``weight_decay``, linear warmup over 5% of the
      steps then cosine decay to 10% of the peak).
    weight_decay: the base's decay in the sweep.
    l2: an L2 penalty ``l2 / 2 · ‖θ‖²`` added to the training loss (the
      objective every optimizer minimises, peers included, and the train
      loss reported); it gives the long runs on small data a minimum above
      zero, so that they are limited by minibatch noise, not by
      memorisation (the validation loss is the plain loss).
  """
  name: str
  dataset: str
  model: Callable[[], models.Model]
  default_epochs: int
  description: str
  loss: str = "xent"
  batch_size: Optional[int] = None
  base: str = "adam"
  weight_decay: float = 0.0
  l2: float = 0.0


def _logreg():
  return models.mlp(())


def _mlp():
  return models.mlp((1000, 1000))


TASKS = {t.name: t for t in (
    Task("logreg-digits", "digits", _logreg, 20,
         "logistic regression on sklearn's 8x8 digits (embedded)"),
    Task("mlp-digits", "digits", _mlp, 20,
         "MLP 64-1000-1000-10 ReLU on sklearn's digits (embedded)"),
    Task("cnn-digits", "digits", models.cnn, 20,
         "small CNN on sklearn's digits (embedded)"),
    Task("logreg-mnist", "mnist", _logreg, 10,
         "logistic regression 784-10 on MNIST (the paper's, 10 epochs)"),
    Task("mlp-mnist", "mnist", _mlp, 100,
         "MLP 784-1000-1000-10 ReLU on MNIST (the paper's, 100 epochs)"),
    Task("cnn-fashion", "fashion", models.cnn, 10,
         "small CNN (conv16-conv32-dense128) on Fashion-MNIST"),
    Task("resnet-fashion", "fashion", models.resnet_cnn, 5,
         "residual CNN with GroupNorm (2 stages, 16-32) on Fashion-MNIST",
         batch_size=128),
    Task("mlp-digits-long", "digits", lambda: models.mlp((128, 128)), 200,
         "MLP 64-128-128-10 ReLU on digits, L2 1e-3, batch 32 (noise-dominated)",
         batch_size=32, l2=1e-3),
    Task("mlp-wine", "wine", lambda: models.mlp((64, 64), 3), 300,
         "MLP 13-64-64-3 ReLU on sklearn's wine, L2 1e-3, batch 32 "
         "(noise-dominated)", batch_size=32, l2=1e-3),
    Task("mlp-friedman", "friedman",
         lambda: models.mlp((64, 64), 1, activation="tanh"), 150,
         "regression MLP 10-64-64-1 tanh, MSE + L2 1e-3, Friedman #1, 400 "
         "examples, batch 32", loss="mse", batch_size=32, l2=1e-3),
    Task("charlm", "charlm", models.transformer, 5,
         "decoder-only transformer 4x128 (0.84M) on characters, context 128 "
         "(embedded: Genesis, KJV)", loss="lm", batch_size=32,
         base="adamw-cosine", weight_decay=0.01),
    Task("cnn-cifar10", "cifar10", models.cnn, 10,
         "small CNN on CIFAR-10 python batches from --data-dir"),
)}

# The default runs with no data step and finishes in about a minute.
DEFAULT_TASKS = "logreg-digits,mlp-digits"
# The sweep's default: the embedded tasks that fit 15 minutes on 2 cores.
SWEEP_TASKS = "mlp-digits-long,mlp-wine,mlp-friedman"


def loss_fn(task: Task, model: models.Model, *, penalty: bool = True):
  """The task's training loss ``(params, x, y) -> scalar``.

  Args:
    task: the task.
    model: its model.
    penalty: add the task's L2 penalty (the training objective); False
      gives the plain loss (the validation loss).

  Returns:
    The loss function.
  """
  if task.loss not in models.LOSSES:
    raise ValueError(f"task {task.name}: loss must be one of "
                     f"{', '.join(models.LOSSES)}; got {task.loss!r}.")
  plain = models.LOSSES[task.loss](model)
  if not penalty or not task.l2:
    return plain

  def loss(params, x, y):
    squares = sum(jnp.sum(jnp.square(p)) for p in jax.tree.leaves(params))
    return plain(params, x, y) + 0.5 * task.l2 * squares
  return loss


def base_optimizer(task: Task, total_steps: int
                   ) -> Callable[[float], optax.GradientTransformation]:
  """``learning_rate -> optimizer``: the task's base at a peak rate.

  Built with ``optax.inject_hyperparams`` so that the rate actually used
  (schedules included) is in the state, where
  ``hypergrad_optax.get_learning_rate`` finds it for the wrapper too.

  Args:
    task: the task (its ``base`` and ``weight_decay``).
    total_steps: the run's number of steps (the schedule's length).

  Returns:
    A function of the (peak) learning rate, which may be a traced value.
  """
  if task.base == "adam":
    def build(lr):
      tx = optax.inject_hyperparams(optax.adam)(learning_rate=lr)
      if task.weight_decay:
        tx = optax.chain(optax.add_decayed_weights(task.weight_decay), tx)
      return tx
    return build
  if task.base == "adamw-cosine":
    warmup = max(1, total_steps // 20)

    # The shape at peak 1, scaled: optax's schedule branches on the peak's
    # value, which is traced in the sweep.
    shape = optax.warmup_cosine_decay_schedule(
        0.0, 1.0, warmup, max(total_steps, warmup + 1), end_value=0.1)

    def build(lr):
      def schedule(count):
        return lr * shape(count)
      return optax.inject_hyperparams(optax.adamw)(
          learning_rate=schedule, weight_decay=task.weight_decay)
    return build
  raise ValueError(f"task {task.name}: base must be one of "
                   f"{', '.join(BASES)}; got {task.base!r}.")


def parse_tasks(spec: str) -> tuple[str, ...]:
  """``'logreg-mnist,mlp-mnist'`` -> names; ValueError for unknown ones."""
  names = [s.strip() for s in spec.split(",") if s.strip()]
  for name in names:
    if name not in TASKS:
      raise ValueError(
          f"unknown task {name!r}; choose from {', '.join(TASKS)}.")
  if not names:
    raise ValueError("no task given.")
  return tuple(dict.fromkeys(names))
