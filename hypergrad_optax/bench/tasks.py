"""Benchmark tasks: a data set, a model and the paper's number of epochs."""

from __future__ import annotations

from typing import Callable, NamedTuple

from hypergrad_optax.bench import models


class Task(NamedTuple):
  name: str
  dataset: str
  model: Callable[[], models.Model]
  default_epochs: int
  description: str


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
    Task("cnn-cifar10", "cifar10", models.cnn, 10,
         "small CNN on CIFAR-10 python batches from --data-dir"),
)}

# The default runs with no data step and finishes in about a minute.
DEFAULT_TASKS = "logreg-digits,mlp-digits"


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
