"""The summary table and the goal checks printed after a benchmark."""

from __future__ import annotations

import csv
import inspect
import math
import statistics
from typing import Iterable, NamedTuple, Optional

import hypergrad_optax as hgo
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


def format_rate(value: Optional[float]) -> str:
  """A learning rate for progress bars and log lines: "-" where the method
  has none (the LR-free peers' NaN), as in the table."""
  return _num(value, 3)


def _wrapper_default_beta() -> float:
  """The ``hyper_lr`` that ``hgo.hypergradient`` uses when none is given."""
  return inspect.signature(hgo.hypergradient).parameters["hyper_lr"].default


def used_beta(row: Row) -> Optional[float]:
  """The β a run really used: its own, or for ``hypergradient`` run without
  ``--beta`` the wrapper's default (0.1); None for methods without one."""
  if row.beta is not None and not (isinstance(row.beta, float)
                                   and math.isnan(row.beta)):
    return row.beta
  if row.method == "hypergradient":
    return _wrapper_default_beta()
  return None


def write_summary_csv(path: str, rows: Iterable[Row]) -> None:
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(SUMMARY_COLUMNS)
    for row in rows:
      row = row._replace(beta=used_beta(row))
      writer.writerow([_num(v, 6) if isinstance(v, float) or v is None else v
                       for v in row])


# Why two methods can print the same numbers: the same computation reached by
# two routes. Keys are sorted method names.
SAME_COMPUTATION = {
    ("adam_hd_mult", "hypergradient"):
        "`hypergradient(optax.adam(α0))` with its defaults and "
        "`adam_hd(α0, 0.1, rule='multiplicative')` apply the same "
        "multiplicative rule (β = 0.1) to Adam's step; the wrapper's overshoot "
        "guard, their one difference, did not change this run",
}


def _same_key(row: Row):
  values = (row.loss_epoch, row.valid_loss, row.alpha)
  if not all(isinstance(v, float) and math.isfinite(v) for v in values):
    return None
  return (row.task, row.alpha0, used_beta(row)) + values


def merge_identical(rows: Iterable[Row]) -> tuple[list[Row], list[str]]:
  """Rows of two methods known to run the same computation
  (``SAME_COMPUTATION``) whose results are identical (same task, α0, β, final
  losses and rate) become one row named "a = b". Returns the rows and one
  note per merged pair and task, saying why; other methods that happen to
  print the same numbers are kept apart, with a note that they differ."""
  merged, index = [], {}
  reasons = {}  # (task, names) -> (why, [α0, ...])
  for row in rows:
    key = _same_key(row)
    first = merged[index[key]] if key in index else None
    names = (tuple(sorted(first.method.split(" = ") + [row.method]))
             if first is not None else ())
    if first is not None and names in SAME_COMPUTATION:
      merged[index[key]] = first._replace(method=" = ".join(names))
      why, label = SAME_COMPUTATION[names], " = ".join(names)
    else:
      if first is not None:
        why = ("different methods whose results agree to the digits "
               "printed; kept as two rows")
        label = " and ".join(names)
      if key is not None and first is None:
        index[key] = len(merged)
      merged.append(row)
      if first is None:
        continue
    reasons.setdefault((row.task, label), (why, []))[1].append(
        _num(row.alpha0))
  notes = [f"{task}: {names} (α0 = {', '.join(alphas)}): {why}."
           for (task, names), (why, alphas) in reasons.items()]
  return merged, notes


def markdown_table(rows: Iterable[Row]) -> str:
  """The runs as a Markdown table (final-epoch mean training loss first)."""
  lines = ["| task | method | α0 | β | epochs | final train loss | "
           "valid loss | final α | time (s) | status |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(
        f"| {r.task} | {r.method} | {_num(r.alpha0)} | {_num(used_beta(r))} | "
        f"{r.epochs} | {_num(r.loss_epoch)} | {_num(r.valid_loss)} | "
        f"{_num(r.alpha, 3)} | {r.seconds:.1f} | {r.status} |")
  return "\n".join(lines)


def _loss(row: Row) -> float:
  return row.loss_epoch if math.isfinite(row.loss_epoch) else math.inf


def _times(a: float, b: float) -> str:
  """How a compares with b, in words: "3.2x lower", "1.5x higher", "equal"."""
  if not (math.isfinite(a) and math.isfinite(b)) or a <= 0 or b <= 0:
    return "not comparable (a run diverged)"
  if a == b:
    return "equal"
  ratio = max(a, b) / min(a, b)
  word = "lower" if a < b else "higher"
  if ratio < 1.1:
    return f"{100 * (ratio - 1):.0f}% {word}"
  return f"{ratio:.2g}x {word}"


def _at(row: Row) -> str:
  return "" if not math.isfinite(row.alpha0) else f" (α0={_num(row.alpha0)})"


def takeaway_lines(rows: list[Row]) -> list[str]:
  """One plain-language takeaway per task: which method won and by how much,
  how the HD methods did against their bases, and where the untuned wrapper
  stands against the tuned base optimizers and the LR-free peers."""
  lines = []
  for task in dict.fromkeys(r.task for r in rows):
    task_rows = [r for r in rows if r.task == task]
    finite = sorted((r for r in task_rows if math.isfinite(r.loss_epoch)),
                    key=_loss)
    if not finite:
      lines.append(f"**{task}**: every run diverged.")
      continue
    alphas = sorted({r.alpha0 for r in task_rows if math.isfinite(r.alpha0)})
    grid = len(alphas) > 1
    parts = []
    win = finite[0]
    text = (f"{win.method}{_at(win)} reached the lowest final training loss, "
            f"{_num(win.loss_epoch)}")
    if len(finite) > 1:
      second = finite[1]
      text += (f", {_times(win.loss_epoch, second.loss_epoch)} than the next "
               f"best, {second.method}{_at(second)} ({_num(second.loss_epoch)})")
    parts.append(text + ".")
    by_key = {(r.method, r.alpha0): r for r in task_rows}
    pairs = [(r, by_key[(methods_lib.BASE_OF[r.method], r.alpha0)])
             for r in task_rows
             if (methods_lib.BASE_OF.get(r.method), r.alpha0) in by_key]
    if pairs:
      better = sum(_loss(hd) < _loss(base) for hd, base in pairs)
      ratios = sorted(_loss(hd) / _loss(base) for hd, base in pairs
                      if math.isfinite(_loss(base)) and _loss(base) > 0)
      text = (f"A hypergradient method beat its base optimizer at the same "
              f"α0 in {better} of {len(pairs)} pairs")
      if ratios:
        text += (f" (median loss ratio HD/base "
                 f"{_num(statistics.median(ratios), 2)})")
      parts.append(text + ".")
    wrapper = sorted((r for r in task_rows if r.method == "hypergradient"),
                     key=_loss)
    base = [r for r in task_rows if r.family == "base"]
    peers = [r for r in task_rows if r.family == "peer"]
    if wrapper:
      w = wrapper[-1] if grid else wrapper[0]
      head = ("The untuned wrapper hypergradient(adam)" +
              (f", at its worst α0={_num(w.alpha0)}," if grid else
               f" (α0={_num(w.alpha0)})"))
      text = f"{head} ended at {_num(w.loss_epoch)}"
      adam = by_key.get(("adam", w.alpha0))
      if adam is not None:
        text += f": {_times(w.loss_epoch, adam.loss_epoch)} than Adam at the same α0"
      if base:
        best = min(base, key=_loss)
        which = ("the best base optimizer tuned over the α0 grid" if grid
                 else "the best base optimizer at this one α0 (not tuned)")
        text += (f"; {_times(w.loss_epoch, best.loss_epoch)} than {which}, "
                 f"{best.method}{_at(best)} {_num(best.loss_epoch)}")
      if peers:
        median = statistics.median(_loss(r) for r in peers)
        best_peer = min(peers, key=_loss)
        text += (f"; {_times(w.loss_epoch, median)} than the LR-free peers' "
                 f"median {_num(median)} (best peer {best_peer.method} "
                 f"{_num(best_peer.loss_epoch)})")
      parts.append(text + ".")
    failed = [r for r in task_rows if not math.isfinite(r.loss_epoch)
              or r.status != "ok"]
    if failed:
      parts.append("Diverged: " + ", ".join(
          f"{r.method}{_at(r)}" for r in failed) + ".")
    lines.append(f"**{task}**: " + " ".join(parts))
  return lines


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
  """Over an α0 grid (empty without one): worst HD final loss vs the best
  tuned base optimizer, then each HD method's worst α0."""
  lines = []
  for task in dict.fromkeys(r.task for r in rows):
    task_rows = [r for r in rows if r.task == task]
    alphas = sorted({r.alpha0 for r in task_rows if math.isfinite(r.alpha0)})
    base = [r for r in task_rows if r.family == "base"]
    hd = [r for r in task_rows if r.family == "hd"]
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
  return lines


def peer_lines(rows: list[Row]) -> list[str]:
  """The untuned wrapper at each α0 against the median of the LR-free peers."""
  lines = []
  for task in dict.fromkeys(r.task for r in rows):
    task_rows = [r for r in rows if r.task == task]
    peers = [r for r in task_rows if r.family == "peer"]
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
  """summary.md: the takeaways, the table (identical rows merged, with the
  reason), HD vs base, robustness (only after an α0 grid), and the peers."""
  parts = ["## Takeaways", ""] + [f"- {line}" for line in takeaway_lines(rows)]
  table_rows, notes = merge_identical(rows)
  parts += ["", "## Runs (final-epoch mean training loss)", "",
            markdown_table(table_rows)]
  if notes:
    parts += ["", "Identical results:", ""] + [f"- {note}" for note in notes]
  pairs = pair_lines(rows)
  if pairs:
    parts += ["", "## HD vs base", ""] + [f"- {line}" for line in pairs]
  robust = robustness_lines(rows)
  if robust:
    parts += ["", "## Robustness over α0", ""] + [
        f"- {line}" if not line.startswith("  ") else f"  - {line.strip()}"
        for line in robust]
  peer = peer_lines(rows)
  if peer:
    parts += ["", "## The untuned wrapper against the learning-rate-free "
              "peers", ""] + [f"- {line}" for line in peer]
  return "\n".join(parts) + "\n"
