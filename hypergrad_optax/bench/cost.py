"""What hypergradient descent costs: per-step time and optimizer-state bytes.

The time is that of a full jitted training step (forward, backward, optimizer
update, apply) of the paper's MLP 784-1000-1000-10 on a random batch of 128,
for each base optimizer next to its hypergradient variants. All variants are
compiled and warmed up in one process, then timed in alternating rounds (the
order rotates each round), so that a shared or throttled machine slows every
variant alike; the ratio to the base is the median over rounds of the ratio
within a round. Parameters and optimizer state are donated to the step, so
memory is not doubled.

Run ``python -m hypergrad_optax.bench.cost`` (or ``hypergrad-bench cost``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import hypergrad_optax as hgo

# Each group: its base first, then the variants compared with it.
GROUPS: dict[str, dict[str, Callable[[], optax.GradientTransformation]]] = {
    "adam": {
        "adam": lambda: optax.adam(1e-3),
        "adam_hd": lambda: hgo.adam_hd(1e-3, 1e-7),
        "hypergradient(adam)": lambda: hgo.hypergradient(optax.adam(1e-3)),
        "hypergradient(adam),bf16": lambda: hgo.hypergradient(
            optax.adam(1e-3), buffer_dtype=jnp.bfloat16),
    },
    "sgd": {
        "sgd": lambda: optax.sgd(1e-3),
        "sgd_hd": lambda: hgo.sgd_hd(1e-3, 1e-3),
        "hypergradient(sgd)": lambda: hgo.hypergradient(optax.sgd(1e-3)),
    },
    "sgdm": {
        "sgd(momentum)": lambda: optax.sgd(1e-3, momentum=0.9),
        "sgd_hd(momentum)": lambda: hgo.sgd_hd(1e-3, 1e-3, momentum=0.9),
    },
    "sgdn": {
        "sgd(nesterov)": lambda: optax.sgd(1e-3, momentum=0.9, nesterov=True),
        "sgdn_hd": lambda: hgo.sgd_hd(1e-3, 1e-3, momentum=0.9,
                                      nesterov=True),
    },
    "adamw": {
        "adamw": lambda: optax.adamw(1e-3, weight_decay=1e-4),
        "adamw_hd": lambda: hgo.adamw_hd(1e-3, 1e-7, weight_decay=1e-4),
    },
}


def mlp_params(sizes: Sequence[int] = (784, 1000, 1000, 10),
               seed: int = 0) -> dict[str, jax.Array]:
  """Parameters of an MLP with ``torch.nn.Linear``'s default initialisation."""
  keys = jax.random.split(jax.random.PRNGKey(seed), 2 * (len(sizes) - 1))
  params = {}
  for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
    bound = 1.0 / np.sqrt(n_in)
    params[f"w{i}"] = jax.random.uniform(keys[2 * i], (n_in, n_out),
                                         jnp.float32, -bound, bound)
    params[f"b{i}"] = jax.random.uniform(keys[2 * i + 1], (n_out,),
                                         jnp.float32, -bound, bound)
  return params


def mlp_loss(params: Mapping[str, jax.Array], x: jax.Array,
             y: jax.Array) -> jax.Array:
  """Mean cross-entropy of a ReLU MLP."""
  n_layers = len(params) // 2
  for i in range(n_layers):
    x = x @ params[f"w{i}"] + params[f"b{i}"]
    if i < n_layers - 1:
      x = jax.nn.relu(x)
  return optax.softmax_cross_entropy_with_integer_labels(x, y).mean()


def train_step_fn(tx: optax.GradientTransformation, loss=mlp_loss):
  """A jitted training step donating the parameters and optimizer state."""
  def step(params, opt_state, x, y):
    value, grads = jax.value_and_grad(loss)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params, value=value)
    return optax.apply_updates(params, updates), opt_state, value
  return jax.jit(step, donate_argnums=(0, 1))


def state_bytes(tx: optax.GradientTransformation, params: Any) -> int:
  """Bytes of ``tx``'s state for ``params`` (abstractly: nothing allocated)."""
  shapes = jax.eval_shape(tx.init, params)
  return sum(int(np.prod(s.shape)) * jnp.dtype(s.dtype).itemsize
             for s in jax.tree.leaves(shapes))


def step_bytes_accessed(tx: optax.GradientTransformation, params: Any,
                        batch_size: int = 128) -> float:
  """XLA's estimate of the bytes one compiled training step reads and writes.

  A deterministic complement to the timings: on a shared machine the
  optimizer's extra memory passes are easier to see here than in the clock.
  """
  n_in = params["w0"].shape[0]
  x = jax.ShapeDtypeStruct((batch_size, n_in), jnp.float32)
  y = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
  state = jax.eval_shape(tx.init, params)
  compiled = train_step_fn(tx).lower(params, state, x, y).compile()
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get("bytes accessed", float("nan")))


def step_overhead(
    optimizers: Mapping[str, Callable[[], optax.GradientTransformation]],
    *,
    steps: int = 2,
    rounds: int = 40,
    warmup: int = 3,
    batch_size: int = 128,
    sizes: Sequence[int] = (784, 1000, 1000, 10),
    seed: int = 0,
) -> dict[str, dict[str, float]]:
  """Times a full training step of each optimizer, side by side.

  Args:
    optimizers: name -> factory; the first is the base of the ratios.
    steps: training steps per timed block.
    rounds: timed blocks per optimizer; the order rotates every round.
    warmup: untimed steps after compilation.
    batch_size: examples per step (random inputs, random labels).
    sizes: the MLP's layer widths.
    seed: for the parameters and data.

  Returns:
    name -> {'ms': median milliseconds per step, 'ratio': median over rounds
    of the within-round ratio to the base, 'ratio_min'/'ratio_max': its range
    over rounds (the noise)}.
  """
  names = list(optimizers)
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(batch_size, sizes[0])), jnp.float32)
  y = jnp.asarray(rng.integers(0, sizes[-1], size=batch_size), jnp.int32)
  runs = {}
  for name in names:
    tx = optimizers[name]()
    params = mlp_params(sizes, seed)
    step = train_step_fn(tx, mlp_loss)
    carry = (params, tx.init(params))
    for _ in range(warmup):
      *carry, value = step(*carry, x, y)
    jax.block_until_ready(value)
    runs[name] = [step, carry]

  times = {name: [] for name in names}
  for r in range(rounds):
    for name in names[r % len(names):] + names[:r % len(names)]:
      step, carry = runs[name]
      start = time.perf_counter()
      for _ in range(steps):
        *carry, value = step(*carry, x, y)
      jax.block_until_ready((carry, value))
      times[name].append((time.perf_counter() - start) / steps)
      runs[name][1] = carry

  base = times[names[0]]
  result = {}
  for name in names:
    ratios = [t / b for t, b in zip(times[name], base)]
    result[name] = {"ms": 1e3 * statistics.median(times[name]),
                    "ratio": statistics.median(ratios),
                    "ratio_min": min(ratios), "ratio_max": max(ratios)}
  return result


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m hypergrad_optax.bench.cost",
      description="Per-step time and optimizer-state bytes of the "
      "hypergradient optimizers vs their bases (MLP 784-1000-1000-10, "
      "batch 128, one process).")
  parser.add_argument("--groups", default=",".join(GROUPS),
                      help=f"comma-separated, from {', '.join(GROUPS)}")
  parser.add_argument("--steps", type=int, default=2,
                      help="steps per timed block")
  parser.add_argument("--rounds", type=int, default=40,
                      help="timed blocks per optimizer (short blocks, many "
                      "rounds: neighbours in time see the same load)")
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--hidden", type=int, default=1000,
                      help="width of the two hidden layers")
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = _parser().parse_args(argv)
  groups = [g.strip() for g in args.groups.split(",") if g.strip()]
  unknown = sorted(set(groups) - set(GROUPS))
  if unknown:
    _parser().error(f"unknown groups {unknown}; choose from {list(GROUPS)}")
  sizes = (784, args.hidden, args.hidden, 10)
  params = mlp_params(sizes)
  n_params = sum(p.size for p in jax.tree.leaves(params))
  print(f"MLP {'-'.join(map(str, sizes))} ({n_params:,} parameters), batch "
        f"{args.batch_size}, {args.rounds} rounds x {args.steps} steps, "
        f"{jax.devices()[0].platform}")
  print(f"{'optimizer':<26}{'ms/step':>9}{'ratio':>8}{'(range)':>16}"
        f"{'state MiB':>10}{'B/param':>9}{'XLA MiB/step':>13}{'ratio':>7}")
  for group in groups:
    timings = step_overhead(GROUPS[group], steps=args.steps,
                            rounds=args.rounds, batch_size=args.batch_size,
                            sizes=sizes)
    base_traffic = None
    for name, t in timings.items():
      tx = GROUPS[group][name]()
      nbytes = state_bytes(tx, params)
      traffic = step_bytes_accessed(tx, params, args.batch_size)
      base_traffic = base_traffic or traffic
      spread = f"[{t['ratio_min']:.3f}, {t['ratio_max']:.3f}]"
      print(f"{name:<26}{t['ms']:>9.2f}{t['ratio']:>8.3f}{spread:>16}"
            f"{nbytes / 2**20:>10.2f}{nbytes / n_params:>9.2f}"
            f"{traffic / 2**20:>13.1f}{traffic / base_traffic:>7.3f}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
