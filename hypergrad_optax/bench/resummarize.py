"""Rewrites summary.md (and, for an α0 grid, the robustness PNG) of finished
``hypergrad-bench --out`` folders from their summary.csv, without training.

Used after a change to the report or the plots::

  python -m hypergrad_optax.bench.resummarize docs/results/logreg-grid docs/results/mlp-a

The per-α0 run-set figures need the per-run CSVs (not committed for the
MNIST runs): re-run the benchmark for those.
"""

from __future__ import annotations

import csv
import math
import os
import sys

from hypergrad_optax.bench import plots
from hypergrad_optax.bench import report


def _float(text: str) -> float:
  return math.nan if text in ("", "-") else float(text)


def read_rows(path: str) -> list[report.Row]:
  with open(path, newline="") as f:
    return [report.Row(
        r["task"], r["method"], r["family"], _float(r["alpha0"]),
        None if r["beta"] in ("", "-") else float(r["beta"]),
        int(r["epochs"]), _float(r["loss_epoch"]), _float(r["valid_loss"]),
        _float(r["alpha"]), _float(r["seconds"]), r["status"])
        for r in csv.DictReader(f)]


def main(folders: list[str]) -> None:
  for folder in folders:
    rows = read_rows(os.path.join(folder, "summary.csv"))
    with open(os.path.join(folder, "summary.md"), "w") as f:
      f.write(report.summary_text(rows))
    for task in dict.fromkeys(r.task for r in rows):
      task_rows = [r for r in rows if r.task == task]
      alphas = {r.alpha0 for r in task_rows if math.isfinite(r.alpha0)}
      png = os.path.join(folder, f"{task}_robustness.png")
      if len(alphas) > 1 and os.path.exists(png):
        final = {(r.method, None if math.isnan(r.alpha0) else r.alpha0):
                 r.loss_epoch for r in task_rows}
        epochs = task_rows[0].epochs
        plots.plot_robustness(
            png, f"{task}, {epochs} epochs: robustness to α0", {}, final)
    print("rewrote", folder)


if __name__ == "__main__":
  main(sys.argv[1:])
