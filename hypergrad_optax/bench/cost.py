"""What hypergradient descent costs: per-step time, its floor, state bytes.

The time is that of a jitted step, for each base optimizer next to its
hypergradient variants: the full training step (forward, backward, optimizer
update, apply) of a model on a random batch, and the optimizer update alone
(update and apply, from fixed gradients). All variants are compiled and warmed
up in one process, then timed in alternating rounds (the order rotates each
round), so that a shared or throttled machine slows every variant alike; the
ratio to the base is the median over rounds of the ratio within a round.
Parameters and optimizer state are donated to the step, so memory is not
doubled.

Beside each measured ratio is its *floor*: the same ratio of XLA's compiled
cost analysis of the two steps, bytes accessed (the memory traffic, which
bounds an optimizer's elementwise passes) and flops. A measured ratio near the
bytes ratio means the step costs what its extra memory passes must; above it,
something else (scheduling, a slow kernel) costs more.

Models: the paper's MLP 784-1000-1000-10 (``--hidden`` sets both hidden
widths: 3000 gives 11.4M parameters), or a small decoder-only transformer
(``--model transformer``).

Run ``python -m hypergrad_optax.bench.cost`` (or ``hypergrad-bench cost``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

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
        # The wrapper's default (horizon='run': a tangent besides the last
        # update).
        "hypergradient(adam)": lambda: hgo.hypergradient(optax.adam(1e-3)),
        "hypergradient(adam),bf16": lambda: hgo.hypergradient(
            optax.adam(1e-3), buffer_dtype=jnp.bfloat16),
        # Without the relative step bound (the 0.3.0 default).
        "hypergradient(adam),no bound": lambda: hgo.hypergradient(
            optax.adam(1e-3), max_relative_step=None),
        # The paper's one-step rule (the default before 0.3.0).
        "hypergradient(adam,h=1)": lambda: hgo.hypergradient(
            optax.adam(1e-3), horizon=1),
    },
    "delayed": {
        "adam": lambda: optax.adam(1e-3),
        "adam_hd,delayed": lambda: hgo.adam_hd(1e-3, 1e-7, delayed=True),
        "hypergradient(adam),delayed": lambda: hgo.hypergradient(
            optax.adam(1e-3), delayed=True),
        "hypergradient(adam,h=1),delayed": lambda: hgo.hypergradient(
            optax.adam(1e-3), horizon=1, delayed=True),
    },
    "sgd": {
        "sgd": lambda: optax.sgd(1e-3),
        "sgd_hd": lambda: hgo.sgd_hd(1e-3, 1e-3),
        "hypergradient(sgd)": lambda: hgo.hypergradient(optax.sgd(1e-3)),
        "sgd_hd,delayed": lambda: hgo.sgd_hd(1e-3, 1e-3, delayed=True),
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


class Workload(NamedTuple):
  """A model to time: its parameters, loss and one batch (inputs, labels)."""
  name: str
  params: Any
  loss: Callable[..., jax.Array]
  batch: tuple[jax.Array, jax.Array]


def mlp_workload(sizes: Sequence[int] = (784, 1000, 1000, 10),
                 batch_size: int = 128, seed: int = 0) -> Workload:
  """The paper's MLP on a random batch (random inputs, random labels)."""
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(batch_size, sizes[0])), jnp.float32)
  y = jnp.asarray(rng.integers(0, sizes[-1], size=batch_size), jnp.int32)
  return Workload(f"MLP {'-'.join(map(str, sizes))}", mlp_params(sizes, seed),
                  mlp_loss, (x, y))


def transformer_params(vocab: int = 1024, width: int = 256, depth: int = 4,
                       seq_len: int = 128, seed: int = 0) -> dict[str, Any]:
  """A decoder-only transformer's parameters (pre-norm, 4x MLP, tied
  embeddings, learnt positions), N(0, 0.02) weights."""
  keys = iter(jax.random.split(jax.random.PRNGKey(seed), 4 + 4 * depth))
  normal = lambda shape: 0.02 * jax.random.normal(next(keys), shape)  # pylint: disable=unnecessary-lambda-assignment
  params = {"embed": normal((vocab, width)), "pos": normal((seq_len, width)),
            "norm": jnp.ones(width)}
  for i in range(depth):
    params[f"layer{i}"] = {
        "norm1": jnp.ones(width), "norm2": jnp.ones(width),
        "qkv": normal((width, 3 * width)), "out": normal((width, width)),
        "up": normal((width, 4 * width)), "up_b": jnp.zeros(4 * width),
        "down": normal((4 * width, width)), "down_b": jnp.zeros(width)}
  return params


def transformer_loss(params: Mapping[str, Any], x: jax.Array, y: jax.Array,
                     heads: int = 4) -> jax.Array:
  """Next-token cross-entropy of a causal transformer on token ids ``x``."""
  def norm(h, scale):
    h = h - h.mean(-1, keepdims=True)
    return scale * h * jax.lax.rsqrt((h * h).mean(-1, keepdims=True) + 1e-6)
  batch, seq_len = x.shape
  h = params["embed"][x] + params["pos"][:seq_len]
  width = h.shape[-1]
  mask = jnp.tril(jnp.ones((seq_len, seq_len), bool))
  depth = sum(1 for k in params if k.startswith("layer"))
  for i in range(depth):
    layer = params[f"layer{i}"]
    q, k, v = jnp.split(norm(h, layer["norm1"]) @ layer["qkv"], 3, axis=-1)
    split = lambda t: t.reshape(batch, seq_len, heads, width // heads)  # pylint: disable=unnecessary-lambda-assignment,cell-var-from-loop
    logits = jnp.einsum("bqhd,bkhd->bhqk", split(q), split(k))
    logits = jnp.where(mask, logits / np.sqrt(width // heads), -1e9)
    attn = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits), split(v))
    h = h + attn.reshape(batch, seq_len, width) @ layer["out"]
    hidden = jax.nn.gelu(norm(h, layer["norm2"]) @ layer["up"] + layer["up_b"])
    h = h + hidden @ layer["down"] + layer["down_b"]
  logits = norm(h, params["norm"]) @ params["embed"].T
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def transformer_workload(batch_size: int = 16, width: int = 256,
                         depth: int = 4, seq_len: int = 128, vocab: int = 1024,
                         seed: int = 0) -> Workload:
  """The transformer on random tokens (labels: the inputs shifted by one)."""
  rng = np.random.default_rng(seed)
  tokens = jnp.asarray(rng.integers(0, vocab, size=(batch_size, seq_len + 1)),
                       jnp.int32)
  return Workload(f"transformer d{width} L{depth} T{seq_len} V{vocab}",
                  transformer_params(vocab, width, depth, seq_len, seed),
                  transformer_loss, (tokens[:, :-1], tokens[:, 1:]))


def train_step_fn(tx: optax.GradientTransformation, loss=mlp_loss):
  """A jitted training step donating the parameters and optimizer state."""
  def step(params, opt_state, x, y):
    value, grads = jax.value_and_grad(loss)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params, value=value)
    return optax.apply_updates(params, updates), opt_state, value
  return jax.jit(step, donate_argnums=(0, 1))


def update_step_fn(tx: optax.GradientTransformation):
  """The optimizer alone: update from given gradients, then apply (jitted,
  parameters and state donated). Its last output is a scalar to wait on."""
  def step(params, opt_state, grads, value):
    updates, opt_state = tx.update(grads, opt_state, params, value=value)
    return optax.apply_updates(params, updates), opt_state, value
  return jax.jit(step, donate_argnums=(0, 1))


def _step_and_args(tx, workload: Workload, what: str, abstract: bool):
  """The jitted step of ``what`` ('full' or 'update') and its arguments
  after the parameters and state."""
  if what == "full":
    return train_step_fn(tx, workload.loss), workload.batch
  if what != "update":
    raise ValueError(f"what must be 'full' or 'update'; got {what!r}.")
  grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), workload.params)
  if abstract:
    grads = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype),
                         workload.params)
  return update_step_fn(tx), (grads, jnp.zeros([], jnp.float32))


def state_bytes(tx: optax.GradientTransformation, params: Any) -> int:
  """Bytes of ``tx``'s state for ``params`` (abstractly: nothing allocated)."""
  shapes = jax.eval_shape(tx.init, params)
  return sum(int(np.prod(s.shape)) * jnp.dtype(s.dtype).itemsize
             for s in jax.tree.leaves(shapes))


def compiled_cost(tx: optax.GradientTransformation, workload: Workload,
                  what: str = "full") -> dict[str, float]:
  """XLA's cost analysis of one compiled step: 'bytes accessed', 'flops' and
  'transcendentals' (square roots, exponentials: counted apart from flops,
  each costs many).

  Deterministic (no timing): a step's memory traffic, the bound of an
  optimizer's elementwise passes, is read off the compiled program.
  """
  step, args = _step_and_args(tx, workload, what, abstract=True)
  state = jax.eval_shape(tx.init, workload.params)
  analysis = step.lower(workload.params, state, *args).compile(
      ).cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  analysis = analysis or {}
  # XLA leaves out a count of zero.
  return {key: float(analysis.get(key, 0.0))
          for key in ("bytes accessed", "flops", "transcendentals")}


def step_bytes_accessed(tx: optax.GradientTransformation, params: Any,
                        batch_size: int = 128) -> float:
  """XLA's estimate of the bytes one compiled MLP training step reads and
  writes (see :func:`compiled_cost`)."""
  n_in = params["w0"].shape[0]
  workload = Workload("MLP", params, mlp_loss, (
      jax.ShapeDtypeStruct((batch_size, n_in), jnp.float32),
      jax.ShapeDtypeStruct((batch_size,), jnp.int32)))
  return compiled_cost(tx, workload, "full")["bytes accessed"]


def step_overhead(
    optimizers: Mapping[str, Callable[[], optax.GradientTransformation]],
    *,
    steps: int = 2,
    rounds: int = 40,
    warmup: int = 3,
    batch_size: int = 128,
    sizes: Sequence[int] = (784, 1000, 1000, 10),
    seed: int = 0,
    workload: Optional[Workload] = None,
    what: str = "full",
) -> dict[str, dict[str, float]]:
  """Times a step of each optimizer, side by side.

  Args:
    optimizers: name -> factory; the first is the base of the ratios.
    steps: steps per timed block.
    rounds: timed blocks per optimizer; the order rotates every round.
    warmup: untimed steps after compilation.
    batch_size: examples per step of the default MLP workload.
    sizes: the default MLP's layer widths.
    seed: for the default MLP's parameters and data.
    workload: the model and batch (default: the MLP of ``sizes``).
    what: 'full' (gradient, update, apply) or 'update' (update and apply
      from fixed gradients).

  Returns:
    name -> {'ms': median milliseconds per step, 'ratio': median over rounds
    of the within-round ratio to the base, 'ratio_min'/'ratio_max': its range
    over rounds (the noise), 'cpu_ratio': the same median ratio of the
    process's CPU time (all threads: the work, less sensitive than the wall
    time to other processes' load, blind to idle threads)}.
  """
  if workload is None:
    workload = mlp_workload(sizes, batch_size, seed)
  names = list(optimizers)
  runs = {}
  for name in names:
    tx = optimizers[name]()
    params = jax.tree.map(jnp.copy, workload.params)
    step, args = _step_and_args(tx, workload, what, abstract=False)
    carry = (params, tx.init(params))
    for _ in range(warmup):
      *carry, value = step(*carry, *args)
    jax.block_until_ready(value)
    runs[name] = [step, carry, args]

  times = {name: [] for name in names}
  cpu_times = {name: [] for name in names}
  for r in range(rounds):
    for name in names[r % len(names):] + names[:r % len(names)]:
      step, carry, args = runs[name]
      start, cpu_start = time.perf_counter(), time.process_time()
      for _ in range(steps):
        *carry, value = step(*carry, *args)
      jax.block_until_ready((carry, value))
      times[name].append((time.perf_counter() - start) / steps)
      cpu_times[name].append((time.process_time() - cpu_start) / steps)
      runs[name][1] = carry

  base, cpu_base = times[names[0]], cpu_times[names[0]]
  result = {}
  for name in names:
    ratios = [t / b for t, b in zip(times[name], base)]
    cpu_ratios = [t / b for t, b in zip(cpu_times[name], cpu_base)]
    result[name] = {"ms": 1e3 * statistics.median(times[name]),
                    "ratio": statistics.median(ratios),
                    "ratio_min": min(ratios), "ratio_max": max(ratios),
                    "cpu_ratio": statistics.median(cpu_ratios)}
  return result


def _ratio(value: float, base: float) -> float:
  """``value / base``, 1 when both are 0 (none of that kind of work)."""
  if base == 0:
    return 1.0 if value == 0 else float("inf")
  return value / base


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m hypergrad_optax.bench.cost",
      description="Per-step time of the hypergradient optimizers vs their "
      "bases, beside its floor (XLA's compiled bytes accessed and flops, HD "
      "step vs base step) and the optimizer-state bytes; one process.")
  parser.add_argument("--groups", default=",".join(GROUPS),
                      help=f"comma-separated, from {', '.join(GROUPS)}")
  parser.add_argument("--what", default="full,update",
                      help="comma-separated: 'full' (gradient + update + "
                      "apply) and/or 'update' (update + apply alone)")
  parser.add_argument("--model", default="mlp", choices=("mlp", "transformer"))
  parser.add_argument("--steps", type=int, default=2,
                      help="steps per timed block")
  parser.add_argument("--rounds", type=int, default=40,
                      help="timed blocks per optimizer (short blocks, many "
                      "rounds: neighbours in time see the same load)")
  parser.add_argument("--batch-size", type=int, default=None,
                      help="default 128 (MLP), 16 sequences (transformer)")
  parser.add_argument("--hidden", type=int, default=1000,
                      help="width of the MLP's two hidden layers (3000: 11.4M "
                      "parameters)")
  parser.add_argument("--width", type=int, default=256,
                      help="the transformer's model width")
  parser.add_argument("--depth", type=int, default=4,
                      help="the transformer's number of layers")
  parser.add_argument("--no-time", action="store_true",
                      help="only the compiled cost analysis (fast, "
                      "deterministic)")
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = _parser().parse_args(argv)
  groups = [g.strip() for g in args.groups.split(",") if g.strip()]
  unknown = sorted(set(groups) - set(GROUPS))
  if unknown:
    _parser().error(f"unknown groups {unknown}; choose from {list(GROUPS)}")
  whats = [w.strip() for w in args.what.split(",") if w.strip()]
  if not whats or set(whats) - {"full", "update"}:
    _parser().error(f"--what takes 'full' and/or 'update'; got {args.what!r}")
  if args.model == "mlp":
    workload = mlp_workload((784, args.hidden, args.hidden, 10),
                            args.batch_size or 128)
  else:
    workload = transformer_workload(args.batch_size or 16, args.width,
                                    args.depth)
  params = workload.params
  n_params = sum(p.size for p in jax.tree.leaves(params))
  print(f"{workload.name} ({n_params:,} parameters), batch "
        f"{workload.batch[0].shape[0]}, {args.rounds} rounds x {args.steps} "
        f"steps, {jax.devices()[0].platform}")
  print("ratio: measured wall time / base's (median over rounds, [range]); "
        "cpu: the same for the process's CPU time; floor B / F / T: XLA's "
        "compiled bytes accessed / flops / transcendentals, over base's")
  for what in whats:
    print(f"\n{'full step (grad + update + apply)' if what == 'full' else 'update + apply alone'}")
    print(f"{'optimizer':<34}{'ms/step':>9}{'ratio':>8}{'(range)':>16}"
          f"{'cpu':>7}{'floor B':>9}{'floor F':>9}{'floor T':>9}"
          f"{'MiB/step':>10}"
          f"{'state MiB':>10}{'B/param':>8}")
    for group in groups:
      timings = None
      if not args.no_time:
        timings = step_overhead(GROUPS[group], steps=args.steps,
                                rounds=args.rounds, workload=workload,
                                what=what)
      base = None
      for name, make in GROUPS[group].items():
        tx = make()
        nbytes = state_bytes(tx, params)
        analysis = compiled_cost(tx, workload, what)
        base = base or analysis
        if timings is None:
          measured = f"{'-':>9}{'-':>8}{'':>16}{'-':>7}"
        else:
          t = timings[name]
          spread = f"[{t['ratio_min']:.3f}, {t['ratio_max']:.3f}]"
          measured = (f"{t['ms']:>9.2f}{t['ratio']:>8.3f}{spread:>16}"
                      f"{t['cpu_ratio']:>7.3f}")
        floor_b = analysis["bytes accessed"] / base["bytes accessed"]
        floor_f = analysis["flops"] / base["flops"]
        floor_t = _ratio(analysis["transcendentals"], base["transcendentals"])
        print(f"{name:<34}{measured}{floor_b:>9.3f}{floor_f:>9.3f}"
              f"{floor_t:>9.3f}"
              f"{analysis['bytes accessed'] / 2**20:>10.1f}"
              f"{nbytes / 2**20:>10.2f}{nbytes / n_params:>8.2f}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
