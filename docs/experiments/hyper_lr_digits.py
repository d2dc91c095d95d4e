"""The short experiment behind docs/choosing_hyper_lr.md.

``hypergradient(optax.adam(lr))`` (multiplicative rule) and ``adam_hd`` /
``sgd_hd`` (additive rule) on the digits MLP 64-128-128-10 of
``hypergrad_optax.demo``, batch 32, over a grid of initial rates and hyper
learning rates. Prints the final-epoch mean training loss and the validation
loss of each run, as a markdown table. About a minute on a laptop CPU::

  python docs/experiments/hyper_lr_digits.py [--epochs 20]
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import hypergrad_optax as hgo
from hypergrad_optax.demo import init_mlp, load_digits_split, mlp_loss

LRS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def make(kind, lr, beta):
  if kind == "adam":
    return optax.adam(lr)
  if kind == "wrap-adam":
    return hgo.hypergradient(optax.adam(lr), beta)
  if kind == "wrap-adam-noguard":
    return hgo.hypergradient(optax.adam(lr), beta, overshoot_guard=False)
  if kind == "adam_hd":
    return hgo.adam_hd(lr, beta)
  if kind == "sgd":
    return optax.sgd(lr)
  if kind == "sgd_hd":
    return hgo.sgd_hd(lr, beta)
  raise ValueError(kind)


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument("--epochs", type=int, default=20)
  args = parser.parse_args(argv)
  (x, y), (xv, yv) = load_digits_split(0)
  x, y, xv, yv = map(jnp.asarray, (x, y, xv, yv))
  batch = 32
  steps = len(x) // batch
  rng = np.random.default_rng(0)
  batches = np.stack([rng.permutation(len(x))[:steps * batch].reshape(steps, batch)
                      for _ in range(args.epochs)])
  params0 = init_mlp(jax.random.key(0), [64, 128, 128, 10])

  @functools.partial(jax.jit, static_argnames="kind")
  @functools.partial(jax.vmap, in_axes=(None, 0, 0))
  def train(kind, lr, beta):
    tx = make(kind, lr, beta)

    def step(carry, idx):
      params, state = carry
      loss, grads = jax.value_and_grad(mlp_loss)(params, x[idx], y[idx])
      updates, state = tx.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), loss

    (params, _), losses = jax.lax.scan(
        step, (params0, tx.init(params0)), batches.reshape(-1, batch))
    final = losses.reshape(args.epochs, steps)[-1].mean()
    return final, mlp_loss(params, xv, yv)

  grids = {
      "adam": (0.0,),
      "wrap-adam": (0.01, 0.03, 0.1, 0.3),
      "wrap-adam-noguard": (0.01, 0.03, 0.1, 0.3),
      "adam_hd": (1e-7, 1e-6, 1e-5, 1e-4),
      "sgd": (0.0,),
      "sgd_hd": (1e-4, 1e-3, 1e-2, 1e-1),
  }
  print(f"digits MLP 64-128-128-10, batch {batch}, {args.epochs} epochs; "
        "final-epoch training loss / validation loss\n")
  print("| optimizer | hyper_lr | " + " | ".join(f"lr {lr:g}" for lr in LRS) + " |")
  print("|---|---|" + "---|" * len(LRS))
  start = time.perf_counter()
  for kind, betas in grids.items():
    lr_grid, beta_grid = np.meshgrid(np.asarray(LRS, np.float32),
                                     np.asarray(betas, np.float32))
    final, valid = jax.device_get(train(kind, lr_grid.ravel(), beta_grid.ravel()))
    final = final.reshape(lr_grid.shape)
    valid = valid.reshape(lr_grid.shape)
    for i, beta in enumerate(betas):
      cells = [f"{f:.3f} / {v:.3f}" if np.isfinite(f) else "nan"
               for f, v in zip(final[i], valid[i])]
      print(f"| {kind} | {beta:g} | " + " | ".join(cells) + " |")
  print(f"\n({time.perf_counter() - start:.0f}s)")


if __name__ == "__main__":
  main()
