"""``hypergrad-bench stacking``: stacked hyper-optimizers and JVP
hyperparameter adaptation on MNIST.

Two measurements for ``docs/beyond.md`` (issue 4):

``sweep``: the final-epoch mean training loss of SGD-HD (the paper's
logistic regression and 784-1000-1000-10 MLP on MNIST, batch 128, α0 = 1e-3,
coupled weight decay 1e-4) over a grid of the hyper learning rate β spanning
four orders of magnitude, for

* ``L1``: ``sgd_hd(α0, β)``, the paper (plain SGD on α);
* ``L2``: ``sgd_hd(α0, hyper_optimizer=hypergradient(optax.sgd(β)))``: β
  itself adapts, by the wrapper's scale-free multiplicative rule (0.1);
* ``L3``: as L2, with the wrapper's 0.1 adapted by a third level,
  ``hypergradient(optax.sgd(β), hyper_optimizer=hypergradient(optax.sgd(0.1)))``;
* ``L3-capped``: L3 with ``max_scale=10`` on the third level, so that level
  2's multiplicative rate ``0.1 s_3`` stays <= 1;
* ``L2-noguard``, ``L3-noguard``: L2 and L3 with ``overshoot_guard=False``
  in the wrappers;
* ``L2-additive``: ``sgd_hd(α0, hyper_optimizer=sgd_hd(β, γ))``, the paper's
  additive rule at both levels (γ = ``--gamma``);
* ``adam``: Adam on α, ``sgd_hd(α0, hyper_optimizer=optax.adam(β))``.

The spread (max - min over the grid; a diverged run counts as +inf) of each
stack is compared with L1's.

``adapt``: Adam, Adam-HD and ``adapt_hyperparams`` (learning rate, b1, b2,
with Adam as the hyper-optimizer): final-epoch loss and the adapted values.

Every run goes through the benchmark's one training loop
(:func:`hypergrad_optax.bench.train.train`; ``cost`` times its
:func:`~hypergrad_optax.bench.train.scan_steps` directly).

``cost``: seconds per training step (gradient + update, one jitted
``lax.scan`` of steps) of ``adapt_hyperparams`` over Adam against plain
``adam_hd``, measured side by side in one process: warm-up, then alternating
rounds, ratio of the medians.

Usage::

  hypergrad-bench stacking sweep --data-dir DIR --task logreg --epochs 3
  hypergrad-bench stacking sweep --data-dir DIR --task mlp --epochs 1
  hypergrad-bench stacking cost --data-dir DIR
  hypergrad-bench stacking adapt --data-dir DIR --epochs 3
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import hypergrad_optax as hgo
from hypergrad_optax.bench import data as data_lib
from hypergrad_optax.bench import methods as methods_lib
from hypergrad_optax.bench import models as models_lib
from hypergrad_optax.bench import train as train_lib

GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
ALPHA0 = 1e-3
WEIGHT_DECAY = 1e-4
MODELS = {"logreg": lambda: models_lib.mlp(()),
          "mlp": lambda: models_lib.mlp((1000, 1000))}


def stacks(gamma: float) -> dict:
  """``name -> (alpha0, beta, weight_decay) -> optimizer``."""
  return {
      "L1": lambda a, b, wd: hgo.sgd_hd(a, b, weight_decay=wd),
      "L2": lambda a, b, wd: hgo.sgd_hd(
          a, weight_decay=wd,
          hyper_optimizer=hgo.hypergradient(optax.sgd(b))),
      "L3": lambda a, b, wd: hgo.sgd_hd(
          a, weight_decay=wd,
          hyper_optimizer=hgo.hypergradient(
              optax.sgd(b),
              hyper_optimizer=hgo.hypergradient(optax.sgd(0.1)))),
      # L3 with level 2's multiplicative rate β2 = 0.1 s3 kept <= 1 (s3 <= 10):
      # above 1 one step can more than double β, or zero it.
      "L3-capped": lambda a, b, wd: hgo.sgd_hd(
          a, weight_decay=wd,
          hyper_optimizer=hgo.hypergradient(
              optax.sgd(b),
              hyper_optimizer=hgo.hypergradient(optax.sgd(0.1),
                                                max_scale=10.0))),
      # The same without the wrapper's overshoot guard, which for a scalar
      # "parameter" (β) fires on every sign flip of a growing hypergradient.
      "L2-noguard": lambda a, b, wd: hgo.sgd_hd(
          a, weight_decay=wd, hyper_optimizer=hgo.hypergradient(
              optax.sgd(b), overshoot_guard=False)),
      "L3-noguard": lambda a, b, wd: hgo.sgd_hd(
          a, weight_decay=wd,
          hyper_optimizer=hgo.hypergradient(
              optax.sgd(b), overshoot_guard=False,
              hyper_optimizer=hgo.hypergradient(optax.sgd(0.1),
                                                overshoot_guard=False))),
      "L2-additive": lambda a, b, wd: hgo.sgd_hd(
          a, weight_decay=wd, hyper_optimizer=hgo.sgd_hd(b, gamma)),
      "adam": lambda a, b, wd: hgo.sgd_hd(
          a, weight_decay=wd, hyper_optimizer=optax.adam(b)),
  }


def sweep(args) -> dict:
  dataset = data_lib.load("mnist", args.data_dir)
  model = MODELS[args.task]()
  builders = stacks(args.gamma)
  results = {}
  for name in args.methods.split(","):
    method = methods_lib.Method(name, "hd", builders[name], None,
                                methods_lib._hd_rate, None, name)  # pylint: disable=protected-access
    losses = []
    for beta in args.grid:
      tic = time.perf_counter()
      run = train_lib.train(
          dataset, model, method, alpha0=ALPHA0, beta=beta,
          epochs=args.epochs, batch_size=128, seed=args.seed,
          weight_decay=WEIGHT_DECAY, progress=False)
      loss = math.inf if run.diverged else run.final_loss_epoch
      losses.append(loss)
      print(f"{args.task} {name} beta={beta:g} loss={loss:.4f} "
            f"alpha={run.final_alpha:.4g} ({time.perf_counter() - tic:.0f}s)",
            flush=True)
    results[name] = losses
  _print_table(args, results)
  return results


def _print_table(args, results) -> None:
  spread = {k: max(v) - min(v) for k, v in results.items()}
  head = " | ".join(f"β={b:g}" for b in args.grid)
  print(f"\n{args.task}, {args.epochs} epoch(s), final-epoch mean train loss")
  print(f"| method | {head} | spread | spread / L1 |")
  print("|---" * (len(args.grid) + 3) + "|")
  for name, losses in results.items():
    base = spread.get("L1", math.nan)
    ratio = spread[name] / base if math.isfinite(base) and base > 0 else (
        math.nan)
    cells = " | ".join(f"{x:.4f}" for x in losses)
    print(f"| {name} | {cells} | {spread[name]:.4f} | {ratio:.2f} |")


def _step_fn(loss_fn, tx):
  """The training loop's jitted scan, without the per-step rate."""
  run = jax.jit(train_lib.scan_steps(loss_fn, tx, methods_lib._no_rate, 0.0))  # pylint: disable=protected-access

  def step(params, state, xs, ys):
    # xs, ys are the minibatches themselves: index them in order.
    batches = jnp.arange(xs.shape[0] * xs.shape[1]).reshape(xs.shape[:2])
    return run(params, state, xs.reshape((-1,) + xs.shape[2:]),
               ys.reshape(-1), batches)[:2]
  return step


def cost(args) -> dict:
  """Per-step seconds of each optimizer, alternating rounds, one process."""
  dataset = data_lib.load("mnist", args.data_dir)
  model = MODELS[args.task]()
  loss_fn = models_lib.cross_entropy(model)
  steps = args.steps
  idx = np.arange(steps * 128).reshape(steps, 128) % len(dataset.x_train)
  xs = jnp.asarray(dataset.x_train[idx])
  ys = jnp.asarray(dataset.y_train[idx])
  params = model.init(jax.random.key(0), dataset.x_train.shape[1:])
  optimizers = {
      "adam_hd": hgo.adam_hd(ALPHA0, 1e-7),
      "adapt lr (1 JVP tangent)": hgo.adapt_hyperparams(
          optax.adam, ("learning_rate",), 1e-3,
          hyperparams=dict(learning_rate=ALPHA0)),
      "adapt lr,b1,b2 (3 tangents)": hgo.adapt_hyperparams(
          optax.adam, ("learning_rate", "b1", "b2"), 1e-3,
          hyperparams=dict(learning_rate=ALPHA0)),
      "adam": optax.adam(ALPHA0),
  }
  runs = {}
  for name, tx in optimizers.items():
    run, state = _step_fn(loss_fn, tx), tx.init(params)
    jax.block_until_ready(run(params, state, xs, ys))  # compile + warm up
    runs[name] = (run, state)
  times = {name: [] for name in optimizers}
  for _ in range(args.rounds):
    for name, (run, state) in runs.items():
      tic = time.perf_counter()
      jax.block_until_ready(run(params, state, xs, ys))
      times[name].append((time.perf_counter() - tic) / steps)
  base = statistics.median(times["adam_hd"])
  print(f"\n{args.task}: {steps} steps per round, {args.rounds} rounds")
  print("| optimizer | median ms/step | ratio to adam_hd |")
  print("|---|---|---|")
  for name, values in times.items():
    median = statistics.median(values)
    print(f"| {name} | {1e3 * median:.2f} | {median / base:.3f} |")
  return {k: statistics.median(v) for k, v in times.items()}


def adapt(args) -> dict:
  """Adam, Adam-HD and Adam with lr, b1, b2 adapted by forward mode."""
  dataset = data_lib.load("mnist", args.data_dir)
  model = MODELS[args.task]()
  loss_fn = models_lib.cross_entropy(model)
  optimizers = {
      "adam": optax.adam(ALPHA0),
      "adam_hd (β=1e-7)": hgo.adam_hd(ALPHA0, 1e-7),
      "adapt lr,b1,b2 (hyper: adam 1e-2)": hgo.adapt_hyperparams(
          optax.adam, ("learning_rate", "b1", "b2"),
          hyper_optimizer=optax.adam(1e-2),
          hyperparams=dict(learning_rate=ALPHA0)),
  }
  results = {}
  for name, tx in optimizers.items():
    method = methods_lib.Method(name, "hd", lambda a, b, wd, tx=tx: tx, None,
                                methods_lib._no_rate, None, name)  # pylint: disable=protected-access
    run = train_lib.train(dataset, model, method, alpha0=ALPHA0, beta=None,
                          epochs=args.epochs, batch_size=128, seed=args.seed,
                          weight_decay=0.0, progress=False, loss_fn=loss_fn)
    state = run.state
    values = ({k: float(state.inner_state.hyperparams[k])
               for k in ("learning_rate", "b1", "b2")}
              if isinstance(state, hgo.AdaptHyperparamsState) else {})
    results[name] = {"loss": run.final_loss_epoch, **values}
    print(f"{args.task} {name}: final-epoch loss {results[name]['loss']:.4f}"
          f" {values}", flush=True)
  return results


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="hypergrad-bench stacking",
                                   description=__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("sweep", help="final loss over a β grid")
  p.add_argument("--data-dir", required=True)
  p.add_argument("--task", choices=tuple(MODELS), default="logreg")
  p.add_argument("--epochs", type=int, default=3)
  p.add_argument("--methods", default="L1,L2,L3,L2-additive,adam")
  p.add_argument("--grid", type=lambda s: tuple(map(float, s.split(","))),
                 default=GRID)
  p.add_argument("--gamma", type=float, default=1e-5,
                 help="hyper-hyper learning rate of L2-additive")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--json", help="also write the results here")
  c = sub.add_parser("cost", help="per-step cost vs adam_hd")
  c.add_argument("--data-dir", required=True)
  c.add_argument("--task", choices=tuple(MODELS), default="mlp")
  c.add_argument("--steps", type=int, default=20)
  c.add_argument("--rounds", type=int, default=15)
  c.add_argument("--json", help="also write the results here")
  a = sub.add_parser("adapt", help="Adam with lr, b1, b2 adapted")
  a.add_argument("--data-dir", required=True)
  a.add_argument("--task", choices=tuple(MODELS), default="logreg")
  a.add_argument("--epochs", type=int, default=3)
  a.add_argument("--seed", type=int, default=0)
  a.add_argument("--json", help="also write the results here")
  args = parser.parse_args(argv)
  results = {"sweep": sweep, "cost": cost, "adapt": adapt}[args.command](args)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"args": {k: v for k, v in vars(args).items()},
                 "results": results}, f, indent=1)
  return 0


if __name__ == "__main__":
  main()
