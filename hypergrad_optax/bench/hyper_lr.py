"""``hypergrad-bench hyper-lr``: the experiment behind docs/choosing_hyper_lr.md.

``hypergradient(optax.adam(lr))`` (multiplicative rule) and ``adam_hd`` /
``sgd_hd`` (additive rule) on the digits MLP 64-128-128-10 of
``hypergrad-bench demo``, batch 32, over a grid of initial rates and hyper
learning rates. Prints the final-epoch mean training loss and the validation
loss of each run, as a markdown table. The runs of one optimizer and hyper
learning rate train side by side (:func:`hypergrad_optax.bench.train.
train_many`, vmapped over the initial rate)::

  hypergrad-bench hyper-lr [--epochs 20]
"""

from __future__ import annotations

import argparse
import time
from typing import Optional, Sequence

import numpy as np
import optax

import hypergrad_optax as hgo
from hypergrad_optax.bench import demo
from hypergrad_optax.bench import train as train_lib

LRS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
BATCH = 32
GRIDS = {
    "adam": (0.0,),
    "wrap-adam": (0.01, 0.03, 0.1, 0.3),
    "wrap-adam-noguard": (0.01, 0.03, 0.1, 0.3),
    "adam_hd": (1e-7, 1e-6, 1e-5, 1e-4),
    "sgd": (0.0,),
    "sgd_hd": (1e-4, 1e-3, 1e-2, 1e-1),
}


def make(kind: str, lr, beta: float) -> optax.GradientTransformation:
  """The optimizer ``kind`` (a key of :data:`GRIDS`) at ``lr`` and ``beta``.

  Raises:
    ValueError: an unknown ``kind``, naming the known ones.
  """
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
  raise ValueError(f"kind must be one of {', '.join(GRIDS)}; got {kind!r}.")


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Prints the table; returns the exit status."""
  parser = argparse.ArgumentParser(prog="hypergrad-bench hyper-lr",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--epochs", type=int, default=20)
  args = parser.parse_args(argv)
  if args.epochs < 1:
    parser.error("--epochs must be >= 1")
  dataset, model = demo.digits_problem(0)
  print(f"digits MLP 64-128-128-10, batch {BATCH}, {args.epochs} epochs; "
        "final-epoch training loss / validation loss\n")
  print("| optimizer | hyper_lr | " + " | ".join(f"lr {lr:g}" for lr in LRS)
        + " |")
  print("|---|---|" + "---|" * len(LRS))
  start = time.perf_counter()
  for kind, betas in GRIDS.items():
    for beta in betas:
      result = train_lib.train_many(
          dataset, model, lambda a, kind=kind, beta=beta: make(kind, a, beta),
          alphas=LRS, seeds=np.zeros(len(LRS), int), epochs=args.epochs,
          batch_size=BATCH, loss_fn=demo.mlp_loss, progress=False)
      cells = [f"{f:.3f} / {v:.3f}" if np.isfinite(f) else "nan"
               for f, v in zip(result.final_train_loss,
                               result.final_valid_loss)]
      print(f"| {kind} | {beta:g} | " + " | ".join(cells) + " |", flush=True)
  print(f"\n({time.perf_counter() - start:.0f}s)")
  return 0


if __name__ == "__main__":
  main()
