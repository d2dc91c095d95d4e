"""``hypergrad-bench``: the paper's experiments and the peers, one command.

Examples::

  hypergrad-bench --out results/digits              # digits, ~3 min, 2 cores
  hypergrad-bench --task logreg-mnist --data-dir DIR --epochs 10 \\
      --methods paper --out results/logreg          # the paper's Fig. 2
  hypergrad-bench --task logreg-mnist --data-dir DIR --alpha0 grid \\
      --methods all --out results/robustness        # α0 in 1e-1 ... 1e-6
  hypergrad-bench cost --help                       # per-step cost, state bytes
  hypergrad-bench sweep --seeds 1 --out results/sweep  # regret over an α0 grid
  hypergrad-bench demo                              # Adam vs the wrapper, 1 min
  hypergrad-bench hyper-lr                          # docs/choosing_hyper_lr.md
  hypergrad-bench stacking --help                   # docs/beyond.md (MNIST)
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
from typing import Optional, Sequence

from hypergrad_optax.bench import data as data_lib
from hypergrad_optax.bench import methods as methods_lib
from hypergrad_optax.bench import plots
from hypergrad_optax.bench import report
from hypergrad_optax.bench import tasks as tasks_lib
from hypergrad_optax.bench import train as train_lib

ALPHA_GRID = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
# Subcommand -> module of hypergrad_optax.bench with main(argv) -> int.
SUBCOMMANDS = {"sweep": "sweep", "demo": "demo", "hyper-lr": "hyper_lr",
               "stacking": "stacking"}


def _number(text: str, what: str, *, positive: bool, allowed: str = ""
            ) -> float:
  """A finite number (> 0 or >= 0). argparse names the argument in front of
  the message ("argument --beta: ..."); ``what`` names it when called
  elsewhere, and ``allowed`` says what the argument accepts."""
  del what  # argparse's own prefix names the argument.
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"{text!r} is not a number{allowed}") from None
  if not math.isfinite(value) or value < 0 or (positive and value == 0):
    raise argparse.ArgumentTypeError(
        f"{text!r} must be a finite number "
        f"{'> 0' if positive else '>= 0'}{allowed}")
  return value


_ALPHA0_ALLOWED = ("; give a number > 0 (e.g. 1e-3), a comma-separated list "
                   "(e.g. 1e-2,1e-3) or 'grid' (1e-1,1e-2,...,1e-6)")


def parse_alphas(text: str, grid: tuple[float, ...] = ALPHA_GRID,
                 allowed: str = _ALPHA0_ALLOWED) -> tuple[float, ...]:
  """``'1e-3'``, ``'1e-2,1e-3'`` or ``'grid'`` (``grid``: 1e-1 ... 1e-6)."""
  if text.strip() == "grid":
    return grid
  values = [_number(t.strip(), "--alpha0", positive=True, allowed=allowed)
            for t in text.split(",") if t.strip()]
  if not values:
    raise argparse.ArgumentTypeError("no value given" + allowed)
  return tuple(dict.fromkeys(values))


def positive_int(what):
  """An argparse type: an int >= 1, the message naming what it accepts."""
  def parse(text):
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(
          f"{text!r} is not an integer (give a whole number >= 1)"
      ) from None
    if value < 1:
      raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value
  return parse


def _int(text):
  try:
    return int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"--seed: {text!r} is not an integer") from None


def build_parser() -> argparse.ArgumentParser:
  tasks = "\n".join(f"  {t.name:<14} {t.description}"
                    for t in tasks_lib.TASKS.values())
  method_lines = "\n".join(
      f"  {m.name:<20} {m.description}" for m in methods_lib.METHODS.values())
  groups = ", ".join(methods_lib.GROUPS)
  parser = argparse.ArgumentParser(
      prog="hypergrad-bench",
      description=("Hypergradient descent (Baydin et al., ICLR 2018) against "
                   "its base optimizers and optax.contrib's learning-rate-"
                   "free peers: per-iteration CSVs, a summary table, plots."),
      epilog=(f"tasks:\n{tasks}\n\nmethods (groups: {groups}):\n"
              f"{method_lines}\n\nexamples:"
              + __doc__.split("Examples::", 1)[1]),
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--task", default=tasks_lib.DEFAULT_TASKS,
                      help="comma-separated tasks (default: %(default)s)")
  parser.add_argument("--methods", default="all",
                      help="comma-separated methods or groups "
                      "(default: %(default)s)")
  parser.add_argument("--alpha0", type=parse_alphas, default=(1e-3,),
                      help="initial learning rate: one value, a comma list, "
                      "or 'grid' for 1e-1,...,1e-6 (default: 1e-3)")
  parser.add_argument("--beta", type=lambda t: _number(t, "--beta",
                                                        positive=False),
                      default=None,
                      help="hyper learning rate for every HD method (default:"
                      f" the paper's, {methods_lib.BETA_SGD:g} SGD family, "
                      f"{methods_lib.BETA_ADAM:g} Adam family; "
                      f"{methods_lib.BETA_MULTIPLICATIVE:g} multiplicative; "
                      "the wrapper's own default)")
  parser.add_argument("--epochs", type=positive_int("--epochs"),
                      default=None,
                      help="epochs (default: the task's, e.g. 10 for "
                      "logreg-mnist, 100 for mlp-mnist)")
  parser.add_argument("--batch-size", type=positive_int("--batch-size"),
                      default=128)
  parser.add_argument("--seed", type=_int, default=0)
  parser.add_argument("--weight-decay", type=lambda t: _number(
      t, "--weight-decay", positive=False), default=1e-4,
                      help="coupled L2 decay (decoupled for AdamW) "
                      "(default: %(default)s)")
  parser.add_argument("--data-dir", default=None,
                      help="folder with the IDX files (MNIST, "
                      "Fashion-MNIST) or CIFAR-10 python batches")
  parser.add_argument("--out", default="results/bench",
                      help="output folder (default: %(default)s)")
  parser.add_argument("--resume", action="store_true",
                      help="reuse finished runs whose CSV is in --out")
  parser.add_argument("--no-progress", action="store_true",
                      help="no progress bars")
  return parser


def _run_plan(method_names, alphas):
  """(method, alpha0) pairs; the LR-free peers once, with alpha0 None."""
  plan = []
  for name in method_names:
    if methods_lib.METHODS[name].family == "peer":
      plan.append((name, None))
    else:
      plan.extend((name, a) for a in alphas)
  return plan


def run_task(task: tasks_lib.Task, dataset: data_lib.Dataset, args,
             method_names, out_dir: str, on_row) -> list[report.Row]:
  """Runs every (method, α0) of one task; writes CSVs and plots."""
  model = task.model()
  epochs = args.epochs or task.default_epochs
  rows, runs = [], {}
  plan = _run_plan(method_names, args.alpha0)
  for number, (name, alpha0) in enumerate(plan, 1):
    method = methods_lib.METHODS[name]
    beta = methods_lib.beta_for(method, args.beta)
    label = "lr-free" if alpha0 is None else f"a{alpha0:g}"
    desc = f"[{number}/{len(plan)}] {task.name} {name} {label}"
    csv_path = os.path.join(plots.ensure_dir(os.path.join(
        out_dir, task.name, label)), f"{name}.csv")
    result = (train_lib.result_from_csv(csv_path, epochs) if args.resume
              else None)
    if result is None:
      result = train_lib.train(
          dataset, model, method,
          alpha0=1e-3 if alpha0 is None else alpha0, beta=beta,
          epochs=epochs, batch_size=task.batch_size or args.batch_size,
          seed=args.seed, weight_decay=args.weight_decay,
          progress=not args.no_progress, desc=desc,
          loss_fn=tasks_lib.loss_fn(task, model))
      train_lib.write_csv(csv_path, result.rows)
    runs[(name, alpha0)] = train_lib.read_csv(csv_path)
    row = report.Row(
        task.name, name, method.family,
        math.nan if alpha0 is None else alpha0, beta, epochs,
        result.final_loss_epoch, result.final_valid_loss, result.final_alpha,
        result.seconds, "diverged" if result.diverged else "ok")
    rows.append(row)
    on_row(rows)
    print(f"{desc}: final train loss {row.loss_epoch:.4g}, valid "
          f"{row.valid_loss:.4g}, α {report.format_rate(row.alpha)}, "
          f"{row.seconds:.1f}s",
          flush=True)
  _plot_task(task, runs, rows, args.alpha0, out_dir, epochs)
  return rows


def _plot_task(task, runs, rows, alphas, out_dir, epochs):
  peers = {k: v for k, v in runs.items() if k[1] is None}
  for alpha0 in alphas:
    subset = {k: v for k, v in runs.items() if k[1] == alpha0}
    subset.update(peers)
    plots.plot_run_set(
        os.path.join(out_dir, f"{task.name}_a{alpha0:g}.png"),
        f"{task.name}: {_model_text(task)}, {epochs} epochs, α0 = {alpha0:g}",
        subset)
  if len(alphas) > 1:
    final = {(r.method, None if math.isnan(r.alpha0) else r.alpha0):
             r.loss_epoch for r in rows}
    plots.plot_robustness(
        os.path.join(out_dir, f"{task.name}_robustness.png"),
        f"{task.name}: {_model_text(task)}, {epochs} epochs: robustness to α0",
        runs, final)


def _model_text(task) -> str:
  # The task's description without its parenthesised notes.
  return task.description.split(" (")[0]


def write_summary(out_dir: str, rows: list[report.Row]) -> str:
  """summary.csv and summary.md (rewritten after every run, so an
  interrupted benchmark keeps what it finished)."""
  report.write_summary_csv(os.path.join(out_dir, "summary.csv"), rows)
  text = report.summary_text(rows)
  with open(os.path.join(out_dir, "summary.md"), "w") as f:
    f.write(text)
  return text


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv and argv[0] == "cost":
    return _cost_main(argv[1:])
  if argv and argv[0] in SUBCOMMANDS:
    module = importlib.import_module(
        f"hypergrad_optax.bench.{SUBCOMMANDS[argv[0]]}")
    result = module.main(argv[1:])
    return result if isinstance(result, int) else 0
  parser = build_parser()
  args = parser.parse_args(argv)
  try:
    task_names = tasks_lib.parse_tasks(args.task)
    method_names = methods_lib.parse_methods(args.methods)
  except ValueError as err:
    parser.error(str(err))
  out_dir = plots.ensure_dir(args.out)
  loaded = {}
  rows = []
  try:
    for name in task_names:
      task = tasks_lib.TASKS[name]
      if task.dataset not in loaded:
        loaded[task.dataset] = data_lib.load(task.dataset, args.data_dir,
                                             args.seed)
      rows += run_task(task, loaded[task.dataset], args, method_names,
                       out_dir,
                       lambda done: write_summary(out_dir, rows + done))
  except data_lib.DataError as err:
    parser.exit(2, f"hypergrad-bench: error: {err}\n")
  except ValueError as err:
    parser.error(str(err))
  print("\n" + write_summary(out_dir, rows))
  print(f"CSVs, summary.csv, summary.md and plots in {out_dir}")
  return 0


def _cost_main(argv: Sequence[str]) -> int:
  """The cost experiment (c), from :mod:`hypergrad_optax.bench.cost`."""
  try:
    from hypergrad_optax.bench import cost  # pylint: disable=import-outside-toplevel
  except ImportError:
    print("hypergrad-bench: error: the cost experiment "
          "(hypergrad_optax/bench/cost.py) is not installed.", file=sys.stderr)
    return 2
  result = cost.main(list(argv))
  return result if isinstance(result, int) else 0


if __name__ == "__main__":
  sys.exit(main())
