"""The summary table and the goal checks printed after a benchmark."""

from __future__ import annotations

import csv
import math
import statistics
from typing import Iterable, NamedTuple, Optional

from hypergrad_optax.bench import methods as methods_lib

SUMMARY_COLUMNS = ("task", "method", "family", "alpha0", "beta", "epochs",
                   "loss_epoch", "valid_loss", "alpha", "seconds", "status")


class Row(NamedTuple):
  """One run's line in the summary (``alpha0`` NaN for the LR-free peers)."""
  task: str
  method: str
  family: str
  alpha0: float
  beta: Optional[float]
  epochs: int
  loss_epoch: float
  valid_loss: float
  alpha: float
  seconds: float
  status: str


def _num(value, digits=4) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "-"
  return f"{value:.{digits}g}"


def write_summary_csv(path: str, rows: Iterable[Row]) -> None:
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(SUMMARY_COLUMNS)
    for row in rows:
      writer.writerow([_num(v, 6) if isinstance(v, float) or v is None else v
                       for v in row])


def markdown_table(rows: Iterable[Row]) -> str:
  """The runs as a Markdown table (final-epoch mean training loss first)."""
  lines = ["| task | method | α0 | β | epochs | final train loss | "
           "valid loss | final α | time (s) | status |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(
        f"| {r.task} | {r.method} | {_num(r.alpha0)} | {_num(r.beta)} | "
        f"{r.epochs} | {_num(r.loss_epoch)} | {_num(r.valid_loss)} | "
        f"{_num(r.alpha, 3)} | {r.seconds:.1f} | {r.status} |")
  return "\n".join(lines)


def _loss(row: Row) -> float:
  return row.loss_epoch if math.isfinite(row.loss_epoch) else math.inf


def pair_lines(rows: list[Row]) -> list[str]:
  """Each HD method against its base at the same task and α0."""
  by_key = {(r.task, r.method, r.alpha0): r for r in rows}
  lines = []
  for r in rows:
    base = methods_lib.BASE_OF.get(r.method)
    other = by_key.get((r.task, base, r.alpha0))
    if other is None:
      continue
    ratio = _loss(r) / _loss(other) if _loss(other) > 0 else math.nan
    lines.append(f"{r.task} α0={_num(r.alpha0)}: {r.method} "
                 f"{_num(r.loss_epoch)} vs {base} {_num(other.loss_epoch)} "
                 f"(ratio {_num(ratio, 3)})")
  return lines


def robustness_lines(rows: list[Row]) -> list[str]:
  """Over an α0 grid: worst HD final loss vs the best tuned base optimizer,
  and the untuned wrapper vs the median of the learning-rate-free peers."""
  lines = []
  for task in dict.fromkeys(r.task for r in rows):
    task_rows = [r for r in rows if r.task == task]
    alphas = sorted({r.alpha0 for r in task_rows if math.isfinite(r.alpha0)})
    base = [r for r in task_rows if r.family == "base"]
    hd = [r for r in task_rows if r.family == "hd"]
    peers = [r for r in task_rows if r.family == "peer"]
    if len(alphas) > 1 and base and hd:
      best = min(base, key=_loss)
      worst = max(hd, key=_loss)
      lines.append(
          f"{task}: worst HD {worst.method} α0={_num(worst.alpha0)} "
          f"{_num(worst.loss_epoch)} vs best tuned base {best.method} "
          f"α0={_num(best.alpha0)} {_num(best.loss_epoch)}: ratio "
          f"{_num(_loss(worst) / _loss(best), 3)} (goal <= 1.5)")
      for name in dict.fromkeys(r.method for r in hd):
        worst_m = max((r for r in hd if r.method == name), key=_loss)
        lines.append(
            f"  {name}: worst over α0 {_num(worst_m.loss_epoch)} at "
            f"α0={_num(worst_m.alpha0)}, ratio "
            f"{_num(_loss(worst_m) / _loss(best), 3)}")
    wrapper = [r for r in task_rows if r.method == "hypergradient"]
    if peers and wrapper:
      median = statistics.median(_loss(r) for r in peers)
      for r in sorted(wrapper, key=lambda r: -r.alpha0):
        verdict = "beats" if _loss(r) < median else "does not beat"
        lines.append(
            f"{task}: hypergradient(adam({_num(r.alpha0)})) "
            f"{_num(r.loss_epoch)} {verdict} the peers' median "
            f"{_num(median)}")
  return lines


def summary_text(rows: list[Row]) -> str:
  parts = ["## Runs (final-epoch mean training loss)", "",
           markdown_table(rows)]
  pairs = pair_lines(rows)
  if pairs:
    parts += ["", "## HD vs base", ""] + [f"- {line}" for line in pairs]
  robust = robustness_lines(rows)
  if robust:
    parts += ["", "## Robustness over α0; the learning-rate-free peers", ""] + [
        f"- {line}" if not line.startswith("  ") else f"  - {line.strip()}"
        for line in robust]
  return "\n".join(parts) + "\n"
