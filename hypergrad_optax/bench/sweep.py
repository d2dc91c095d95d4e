"""``hypergrad-bench sweep``: is the learning-rate search gone?

For each task, the task's base optimizer over a grid of rates (half decades,
1e-1 ... 1e-5 by default) gives the *best tuned* rate; every hypergradient
method runs from every ``α0`` of the grid, and the learning-rate-free peers
run once, each for ``--seeds`` seeds. All the runs of one method (every
``α0`` and seed) train side by side as one ``jax.vmap``-ed, jitted
:func:`hypergrad_optax.bench.train.train_many`.

Outputs in ``--out DIR``:

* ``sweep.csv``: ``task, method, alpha0, seed, final_train_loss,
  final_valid_loss, best_tuned_train_loss, regret`` where ``regret`` is the
  final training loss over the best tuned base's of the same seed;
* ``summary.md`` (also printed): per task, the worst and median regret of
  each method over the ``α0`` grid (means over seeds), the peers' regret, the
  tuned rate, and how long each part took;
* ``TASK_sensitivity.png``: final loss against ``α0``, one line per method,
  the peers as horizontal lines; ``TASK_rates.png``: the adapted rate over
  time from each ``α0`` against the tuned base's rate (its schedule, where
  the base has one).

Example::

  hypergrad-bench sweep --seeds 1 --out results/sweep   # ~10 min, 2 cores
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from typing import Optional, Sequence

import numpy as np

from hypergrad_optax.bench import cli
from hypergrad_optax.bench import data as data_lib
from hypergrad_optax.bench import methods as methods_lib
from hypergrad_optax.bench import tasks as tasks_lib
from hypergrad_optax.bench import train as train_lib

# Half decades from 1e-1 down to 1e-5.
GRID = tuple(float(f"{10.0 ** (-k / 2):.3g}") for k in range(2, 11))
CSV_COLUMNS = ("task", "method", "alpha0", "seed", "final_train_loss",
               "final_valid_loss", "best_tuned_train_loss", "regret")
# Points per rate trace kept for the plots and rates.npz.
TRACE_POINTS = 400
# The minibatch size of a task that sets none.
DEFAULT_BATCH_SIZE = 128


_GRID_ALLOWED = ("; give a number > 0 (e.g. 1e-3), a comma-separated list "
                 "(e.g. 1e-2,1e-3) or 'grid' (half decades 1e-1 ... 1e-5)")


def _grid(text: str) -> tuple[float, ...]:
  return cli.parse_alphas(text, GRID, _GRID_ALLOWED)


positive_int = cli.positive_int


def build_parser() -> argparse.ArgumentParser:
  """The ``sweep`` subcommand's arguments."""
  tasks = "\n".join(f"  {t.name:<16} {t.description}"
                    for t in tasks_lib.TASKS.values())
  methods = "\n".join(f"  {m.name:<20} [{m.family}] {m.description}"
                      for m in methods_lib.SWEEP_METHODS.values())
  groups = ", ".join(g for g in methods_lib.SWEEP_GROUPS
                     if g not in methods_lib.SWEEP_METHODS)
  parser = argparse.ArgumentParser(
      prog="hypergrad-bench sweep",
      description="Regret of every method against the best tuned base rate, "
      "over a grid of initial learning rates.",
      epilog=(f"tasks:\n{tasks}\n\nmethods (groups: {groups}):\n{methods}\n\n"
              "example:" + __doc__.split("Example::", 1)[1]),
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--task", default=tasks_lib.SWEEP_TASKS,
                      help="comma-separated tasks (default: %(default)s)")
  parser.add_argument("--methods", default="default",
                      help="comma-separated methods or groups; the base is "
                      "always run (default: %(default)s)")
  parser.add_argument("--alpha0", type=_grid, default=GRID,
                      help="comma-separated rates or 'grid' (default: half "
                      "decades 1e-1 ... 1e-5)")
  parser.add_argument("--seeds", type=positive_int("--seeds"), default=3,
                      help="seeds 0..N-1 (default: %(default)s)")
  parser.add_argument("--epochs", type=positive_int("--epochs"),
                      default=None, help="override every task's epochs")
  parser.add_argument("--batch-size", type=positive_int("--batch-size"),
                      default=None,
                      help="override the tasks' batch sizes (default: the "
                      f"task's, else {DEFAULT_BATCH_SIZE})")
  parser.add_argument("--data-dir", default=None,
                      help="data folder (MNIST/Fashion-MNIST IDX files, "
                      "CIFAR-10 batches, or kjv.txt for charlm)")
  parser.add_argument("--out", default="results/sweep",
                      help="output folder (default: %(default)s)")
  parser.add_argument("--no-progress", action="store_true",
                      help="no progress bars")
  return parser


class MethodRuns:
  """One method's runs on one task: arrays over (α0, seed)."""

  def __init__(self, method, alphas, seeds, result):
    self.method = method
    self.alphas = alphas          # [A] (NaN for a peer)
    self.seeds = seeds            # [S]
    shape = (len(alphas), len(seeds))
    self.train = result.final_train_loss.reshape(shape)
    self.valid = result.final_valid_loss.reshape(shape)
    rates = result.rates.reshape(shape + (-1,))[:, 0]  # seed 0's traces
    keep = np.unique(np.linspace(0, rates.shape[-1] - 1,
                                 min(TRACE_POINTS, rates.shape[-1])
                                 ).astype(int))
    self.steps = keep + 1
    self.rates = rates[:, keep]
    self.compile_seconds = result.compile_seconds
    self.run_seconds = result.run_seconds


def run_task(task, dataset, method_names, alphas, seeds, *, epochs,
             batch_size, progress=True, log=print):
  """Every method's runs on one task, as :class:`MethodRuns` by name."""
  model = task.model()
  loss_fn = tasks_lib.loss_fn(task, model)
  total_steps = epochs * (len(dataset.x_train) // batch_size)
  base = tasks_lib.base_optimizer(task, total_steps)
  runs = {}
  for number, name in enumerate(method_names, 1):
    method = methods_lib.SWEEP_METHODS[name]
    peer = method.family == "peer"
    grid = (math.nan,) if peer else alphas
    lanes_a = np.repeat(np.asarray([1e-3 if peer else a for a in grid],
                                   np.float32), len(seeds))
    lanes_s = np.tile(np.asarray(seeds), len(grid))
    desc = f"[{number}/{len(method_names)}] {task.name} {name} x{len(lanes_a)}"
    result = train_lib.train_many(
        dataset, model, lambda a, m=method: m.build(a, base),
        alphas=lanes_a, seeds=lanes_s, epochs=epochs, batch_size=batch_size,
        loss_fn=loss_fn, rate_fn=method.rate or methods_lib.auto_rate,
        eval_params=method.eval_params,
        valid_loss_fn=tasks_lib.loss_fn(task, model, penalty=False),
        progress=progress, desc=desc)
    runs[name] = MethodRuns(method, np.asarray(grid, np.float64),
                            np.asarray(seeds), result)
    finite = result.final_train_loss[np.isfinite(result.final_train_loss)]
    best = finite.min() if finite.size else math.nan
    log(f"{desc}: compile {result.compile_seconds:.1f}s, train "
        f"{result.run_seconds:.1f}s, best final train loss {best:.4g}")
  return runs


def best_tuned(runs) -> tuple[np.ndarray, np.ndarray]:
  """Per seed: the base's best final train loss over the grid and its rate
  (a diverged run counts as +inf)."""
  base = next(r for r in runs.values() if r.method.family == "base")
  losses = np.where(np.isfinite(base.train), base.train, np.inf)
  index = np.argmin(losses, axis=0)
  return losses[index, np.arange(losses.shape[1])], base.alphas[index]


def rows_for(task_name, runs) -> list[dict]:
  """``sweep.csv``'s rows of one task."""
  best, _ = best_tuned(runs)
  rows = []
  for name, r in runs.items():
    for i, alpha in enumerate(r.alphas):
      for j, seed in enumerate(r.seeds):
        train = r.train[i, j]
        regret = (train / best[j] if np.isfinite(train) and best[j] > 0
                  else math.inf)
        rows.append({"task": task_name, "method": name,
                     "alpha0": alpha, "seed": int(seed),
                     "final_train_loss": train,
                     "final_valid_loss": r.valid[i, j],
                     "best_tuned_train_loss": best[j], "regret": regret})
  return rows


def _cell(value) -> str:
  if isinstance(value, float):
    if math.isnan(value):
      return ""
    return f"{value:.6g}"
  return str(value)


def write_csv(path: str, rows: list[dict]) -> None:
  """``sweep.csv`` (an empty ``alpha0`` for the peers; ``inf`` regret for a
  diverged run)."""
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(CSV_COLUMNS)
    for row in rows:
      writer.writerow([_cell(row[c]) for c in CSV_COLUMNS])


def read_csv(path: str) -> list[dict]:
  """``sweep.csv`` back as dicts of floats (NaN for empty cells)."""
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  for row in rows:
    for key in CSV_COLUMNS[2:]:
      row[key] = float(row[key]) if row[key] != "" else math.nan
    row["seed"] = int(row["seed"])
  return rows


def regret_table(rows: list[dict]) -> dict:
  """Per task and method: ``{'worst', 'worst_alpha0', 'median', 'best',
  'std_worst', 'family'}`` from the per-α0 mean regret over seeds (a peer's
  "grid" is its one run)."""
  table = {}
  for task in dict.fromkeys(r["task"] for r in rows):
    table[task] = {}
    for method in dict.fromkeys(r["method"] for r in rows
                                if r["task"] == task):
      mine = [r for r in rows if r["task"] == task and r["method"] == method]
      alphas = list(dict.fromkeys(
          "peer" if math.isnan(r["alpha0"]) else r["alpha0"] for r in mine))
      per_alpha, per_seed = [], {}
      for a in alphas:
        vals = np.asarray([r["regret"] for r in mine if (
            math.isnan(r["alpha0"]) if a == "peer" else r["alpha0"] == a)])
        per_alpha.append(float(np.mean(vals)))
        per_seed[a] = vals
      k = int(np.argmax(per_alpha))
      worst_alpha = alphas[k]
      table[task][method] = {
          "worst": per_alpha[k], "worst_alpha0": worst_alpha,
          "median": float(np.median(per_alpha)),
          "best": float(np.min(per_alpha)),
          # A diverged seed (infinite regret) has no spread to report.
          "std_worst": (float(np.std(per_seed[worst_alpha]))
                        if np.all(np.isfinite(per_seed[worst_alpha]))
                        else math.nan),
          "peer": alphas == ["peer"]}
  return table


def _fmt(x: float) -> str:
  if math.isinf(x):
    return "diverged"
  if math.isnan(x):
    return "n/a"
  return f"{x:.3g}"


def summary_text(rows: list[dict], runs_by_task: dict, timings: dict,
                 seeds: int, epochs: dict) -> str:
  """The regret tables of ``summary.md``."""
  table = regret_table(rows)
  lines = ["# hypergrad-bench sweep", "",
           "Regret = final training loss / the best tuned base's (same seed); "
           "worst and median over the α0 grid of the per-α0 mean over "
           f"{seeds} seed(s); a peer runs once per seed.", ""]
  lines += ["| task | tuned base rate (per seed) | tuned base loss (mean) | "
            "untuned wrapper: "
            "worst regret (α0) | wrapper median | peers' median | best "
            "peer |", "|---|---|---|---|---|---|---|"]
  for task, methods in table.items():
    runs = runs_by_task.get(task)
    best_loss = [r["best_tuned_train_loss"] for r in rows
                 if r["task"] == task and r["method"] == "base"]
    rates = ("n/a" if runs is None else ", ".join(
        f"{a:g}" for a in best_tuned(runs)[1]))
    wrap = methods.get("hypergradient")
    peers = {m: v for m, v in methods.items() if v["peer"]}
    peer_median = (float(np.median([v["median"] for v in peers.values()]))
                   if peers else math.nan)
    best_peer = (min(peers, key=lambda m: peers[m]["median"]) if peers
                 else None)
    lines.append(
        f"| {task} | {rates} | {np.mean(best_loss):.4g} | "
        + (f"{_fmt(wrap['worst'])} ({wrap['worst_alpha0']:g}) | "
           f"{_fmt(wrap['median'])}" if wrap else "n/a | n/a")
        + f" | {_fmt(peer_median)} | "
        + (f"{best_peer} {_fmt(peers[best_peer]['median'])}" if best_peer
           else "n/a") + " |")
  for task, methods in table.items():
    lines += ["", f"## {task} ({epochs.get(task, '?')} epochs)", "",
              "| method | worst regret | ± std (seeds) | at α0 | median regret "
              "| best regret |", "|---|---|---|---|---|---|"]
    for method, v in methods.items():
      where = "once" if v["peer"] else f"{v['worst_alpha0']:g}"
      lines.append(f"| {method} | {_fmt(v['worst'])} | "
                   f"{_fmt(v['std_worst'])} | {where} | {_fmt(v['median'])} "
                   f"| {_fmt(v['best'])} |")
    if task in timings:
      lines += ["", "| method | runs | compile (s) | train + eval (s) |",
                "|---|---|---|---|"]
      for method, (n, c, t) in timings[task].items():
        lines.append(f"| {method} | {n} | {c:.1f} | {t:.1f} |")
      total_c = sum(c for _, c, _ in timings[task].values())
      total_t = sum(t for _, _, t in timings[task].values())
      lines.append(f"| total | | {total_c:.1f} | {total_t:.1f} |")
  return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs the sweep; returns the exit status."""
  parser = build_parser()
  args = parser.parse_args(argv)
  try:
    task_names = tasks_lib.parse_tasks(args.task)
    method_names = methods_lib.parse_sweep_methods(args.methods)
  except ValueError as err:
    parser.error(str(err))
  from hypergrad_optax.bench import sweep_plots  # pylint: disable=import-outside-toplevel
  os.makedirs(args.out, exist_ok=True)
  seeds = list(range(args.seeds))
  rows, runs_by_task, timings, epochs_of = [], {}, {}, {}
  start = time.perf_counter()
  loaded = {}
  for name in task_names:
    task = tasks_lib.TASKS[name]
    tic = time.perf_counter()
    try:
      if task.dataset not in loaded:
        loaded[task.dataset] = data_lib.load(task.dataset, args.data_dir)
    except data_lib.DataError as err:
      parser.exit(2, f"hypergrad-bench sweep: error: {err}\n")
    dataset = loaded[task.dataset]
    epochs = args.epochs or task.default_epochs
    batch_size = args.batch_size or task.batch_size or DEFAULT_BATCH_SIZE
    epochs_of[name] = epochs
    print(f"{name}: {task.description}; {epochs} epochs, batch {batch_size}, "
          f"{len(dataset.x_train)} training examples (data "
          f"{time.perf_counter() - tic:.1f}s)", flush=True)
    try:
      runs = run_task(task, dataset, method_names, args.alpha0, seeds,
                      epochs=epochs, batch_size=batch_size,
                      progress=not args.no_progress,
                      log=lambda s: print(s, flush=True))
    except ValueError as err:
      parser.error(str(err))
    runs_by_task[name] = runs
    timings[name] = {m: (r.train.size, r.compile_seconds, r.run_seconds)
                     for m, r in runs.items()}
    rows += rows_for(name, runs)
    write_csv(os.path.join(args.out, "sweep.csv"), rows)
    tic = time.perf_counter()
    sweep_plots.plot_task(args.out, task, runs, epochs)
    print(f"{name}: plots {time.perf_counter() - tic:.1f}s", flush=True)
  text = summary_text(rows, runs_by_task, timings, args.seeds, epochs_of)
  total = time.perf_counter() - start
  text += f"\nTotal wall time: {total:.0f} s.\n"
  with open(os.path.join(args.out, "summary.md"), "w") as f:
    f.write(text)
  print("\n" + text)
  print(f"sweep.csv, summary.md and plots in {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
