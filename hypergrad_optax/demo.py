"""A short demo: an MLP on sklearn's digits from a poor learning rate.

Trains the same model with ``optax.adam(lr)`` and with
``hypergradient(optax.adam(lr))`` and prints the loss and the adapted rate.
Runs offline (the digits ship inside scikit-learn) in well under a minute::

  python -m hypergrad_optax.demo
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import hypergrad_optax as hgo


def load_digits_split(seed: int = 0):
  """Digits scaled to [0, 1], split 80/20 into train and validation."""
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  data = load_digits()
  x = (data.data / 16.0).astype(np.float32)
  y = data.target.astype(np.int32)
  order = np.random.default_rng(seed).permutation(len(x))
  x, y = x[order], y[order]
  cut = int(0.8 * len(x))
  return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def init_mlp(key, sizes):
  """PyTorch-default (uniform ±1/√fan_in) initialisation of linear layers."""
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


def mlp_loss(params, x, y):
  for layer in params[:-1]:
    x = jax.nn.relu(x @ layer["w"] + layer["b"])
  logits = x @ params[-1]["w"] + params[-1]["b"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def train(tx, params, train_set, *, epochs, batch_size, seed):
  """Minibatch training; returns per-epoch (loss, rate) and final params."""
  x, y = train_set

  @jax.jit
  def step(params, state, xb, yb):
    loss, grads = jax.value_and_grad(mlp_loss)(params, xb, yb)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  state = tx.init(params)
  rng = np.random.default_rng(seed)
  history = []
  for _ in range(epochs):
    order = rng.permutation(len(x))
    losses = []
    for start in range(0, len(x) - batch_size + 1, batch_size):
      idx = order[start:start + batch_size]
      params, state, loss = step(params, state, x[idx], y[idx])
      losses.append(float(loss))
    history.append((float(np.mean(losses)), state))
  return params, history


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--learning-rate", type=float, default=1e-5,
                      help="a deliberately poor Adam learning rate")
  parser.add_argument("--epochs", type=int, default=20)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)

  train_set, valid_set = load_digits_split(args.seed)
  params0 = init_mlp(jax.random.key(args.seed), [64, 128, 128, 10])
  lr = args.learning_rate
  runs = {
      "optax.adam": optax.adam(lr),
      "hypergradient(optax.adam)": hgo.hypergradient(optax.adam(lr)),
  }
  print(f"digits MLP 64-128-128-10, Adam from learning rate {lr:g}, "
        f"{args.epochs} epochs, batch {args.batch_size}")
  for name, tx in runs.items():
    start = time.perf_counter()
    params, history = train(tx, params0, train_set, epochs=args.epochs,
                            batch_size=args.batch_size, seed=args.seed)
    print(f"\n{name}")
    for epoch, (loss, state) in enumerate(history, 1):
      rate = (hgo.get_learning_rate(state, base_learning_rate=lr)
              if name.startswith("hyper") else lr)
      if epoch in (1, 2, 5) or epoch % 5 == 0:
        print(f"  epoch {epoch:3d}  train loss {loss:.4f}  "
              f"learning rate {float(rate):.3g}")
    valid = float(mlp_loss(params, *valid_set))
    print(f"  validation loss {valid:.4f}  ({time.perf_counter() - start:.1f}s)")


if __name__ == "__main__":
  main()
