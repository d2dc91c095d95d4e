"""``hypergrad-bench demo``: an MLP on sklearn's digits from a poor rate.

Trains the same model with ``optax.adam(lr)`` and with
``hypergradient(optax.adam(lr))`` (the benchmark's training loop,
:func:`hypergrad_optax.bench.train.train`) and prints the loss and the
adapted rate. Runs offline (the digits ship inside scikit-learn) in well
under a minute::

  hypergrad-bench demo [--learning-rate 1e-5] [--epochs 20]

The helpers :func:`load_digits_split`, :func:`init_mlp` and :func:`mlp_loss`
are the notebooks' small digits problem.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hypergrad_optax.bench import data as data_lib
from hypergrad_optax.bench import methods as methods_lib
from hypergrad_optax.bench import models as models_lib
from hypergrad_optax.bench import train as train_lib

SIZES = (64, 128, 128, 10)


def load_digits_split(seed: int = 0):
  """Digits scaled to [0, 1], flat, split 80/20 into train and validation.

  Args:
    seed: the shuffle before the split.

  Returns:
    ``((x_train, y_train), (x_valid, y_valid))`` as numpy arrays.
  """
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  data = load_digits()
  x = (data.data / 16.0).astype(np.float32)
  y = data.target.astype(np.int32)
  order = np.random.default_rng(seed).permutation(len(x))
  x, y = x[order], y[order]
  cut = int(0.8 * len(x))
  return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def init_mlp(key, sizes):
  """PyTorch-default (uniform ±1/√fan_in) initialisation of linear layers.

  Args:
    key: a PRNG key.
    sizes: the layer widths, input first.

  Returns:
    A list of ``{'w', 'b'}`` dicts.
  """
  params = []
  for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
    key, kw, kb = jax.random.split(key, 3)
    bound = 1.0 / np.sqrt(fan_in)
    params.append({
        "w": jax.random.uniform(kw, (fan_in, fan_out), jnp.float32, -bound,
                                bound),
        "b": jax.random.uniform(kb, (fan_out,), jnp.float32, -bound, bound),
    })
  return params


def _logits(params, x):
  for layer in params[:-1]:
    x = jax.nn.relu(x @ layer["w"] + layer["b"])
  return x @ params[-1]["w"] + params[-1]["b"]


def mlp_loss(params, x, y):
  """Mean softmax cross-entropy of the ReLU MLP ``params`` on ``(x, y)``."""
  return optax.softmax_cross_entropy_with_integer_labels(
      _logits(params, x), y).mean()


def digits_problem(seed: int = 0):
  """The demo's data set and model for :mod:`hypergrad_optax.bench.train`.

  Returns:
    ``(Dataset, Model)``: flat digits in [0, 1] and the 64-128-128-10 MLP
    initialised by :func:`init_mlp`.
  """
  (x, y), (xv, yv) = load_digits_split(seed)
  dataset = data_lib.Dataset("digits-flat", x, y, xv, yv)
  model = models_lib.Model(
      "mlp-128-128", lambda key, shape: init_mlp(key, SIZES), _logits)
  return dataset, model


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs the demo; returns the exit status."""
  parser = argparse.ArgumentParser(prog="hypergrad-bench demo",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--learning-rate", type=float, default=1e-5,
                      help="a deliberately poor Adam learning rate")
  parser.add_argument("--epochs", type=int, default=20)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  if not (args.learning_rate > 0 and math.isfinite(args.learning_rate)):
    parser.error("--learning-rate must be a finite number > 0")
  if args.epochs < 1 or args.batch_size < 1:
    parser.error("--epochs and --batch-size must be >= 1")

  dataset, model = digits_problem(args.seed)
  lr = args.learning_rate
  print(f"digits MLP 64-128-128-10, Adam from learning rate {lr:g}, "
        f"{args.epochs} epochs, batch {args.batch_size}")
  for name, label in (("adam", "optax.adam"),
                      ("hypergradient", "hypergradient(optax.adam)")):
    start = time.perf_counter()
    method = methods_lib.METHODS[name]
    result = train_lib.train(
        dataset, model, method, alpha0=lr, beta=None, epochs=args.epochs,
        batch_size=args.batch_size, seed=args.seed, weight_decay=0.0,
        progress=False, loss_fn=mlp_loss)
    print(f"\n{label}")
    for row in result.rows:
      epoch, loss, rate = row[0], row[4], row[6]
      if math.isnan(loss):
        continue
      if epoch in (1, 2, 5) or epoch % 5 == 0:
        print(f"  epoch {epoch:3d}  train loss {loss:.4f}  "
              f"learning rate {rate:.3g}")
    print(f"  validation loss {result.final_valid_loss:.4f}  "
          f"({time.perf_counter() - start:.1f}s)")
  return 0


if __name__ == "__main__":
  main()
