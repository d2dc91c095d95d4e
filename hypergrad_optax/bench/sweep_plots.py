"""The sweep's two figures per task: sensitivity to α0 and the rate over time."""

from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

DPI = 160


def _finite_mean(values):
  values = np.where(np.isfinite(values), values, np.nan)
  with np.errstate(all="ignore"):
    return np.nanmean(values, axis=-1), np.nanstd(values, axis=-1)


def plot_sensitivity(path: str, title: str, runs, ylabel: str) -> None:
  """Final train and validation loss against α0 (log axes), one line per
  method (mean ± std over seeds; a gap where every seed diverged), the peers
  as horizontal lines."""
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
  peer_styles = ["--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1)),
                 (0, (1, 1))]
  for ax, field, what in ((axes[0], "train", "final train loss"),
                          (axes[1], "valid", "final validation loss")):
    peers = 0
    for name, r in runs.items():
      mean, std = _finite_mean(getattr(r, field))
      if r.method.family == "peer":
        if np.isfinite(mean[0]):
          ax.axhline(mean[0], color=f"C{(peers + 4) % 10}",
                     linestyle=peer_styles[peers % len(peer_styles)],
                     linewidth=1.2, label=f"{name} (LR-free)")
        peers += 1
        continue
      style = dict(marker="o", markersize=4, linewidth=2.2 if name in (
          "base", "hypergradient") else 1.3)
      if name == "base":
        style.update(color="black", zorder=4)
      elif name == "hypergradient":
        # On top, dashed: it often coincides with adam_hd_mult.
        style.update(color="C0", marker="s", linestyle="--", zorder=5)
      line = ax.errorbar(r.alphas, mean, yerr=std if std.size else None,
                         capsize=2, label=name, **style)
      del line
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("initial learning rate α0 (base: the fixed / peak rate)")
    ax.set_ylabel(f"{what} ({ylabel})")
    ax.grid(True, which="both", alpha=0.3)
  handles, labels = axes[0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="outside right center", fontsize=8)
  fig.suptitle(title, fontsize=11)
  fig.savefig(path, dpi=DPI)
  plt.close(fig)


def plot_rates(path: str, title: str, runs) -> None:
  """The rate of every step (seed 0) of each HD method from each α0, beside
  the tuned base's rate (its schedule where it has one)."""
  hd = [n for n, r in runs.items() if r.method.family == "hd"
        and np.any(np.isfinite(r.rates))]
  base = runs.get("base")
  if not hd:
    return
  cols = min(2, len(hd))
  rows = math.ceil(len(hd) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.2 * rows),
                           squeeze=False, constrained_layout=True)
  tuned = None
  if base is not None:
    losses = np.where(np.isfinite(base.train[:, 0]), base.train[:, 0], np.inf)
    tuned = int(np.argmin(losses))
  cmap = plt.get_cmap("viridis")
  for ax, name in zip(axes.flat, hd):
    r = runs[name]
    for i, alpha in enumerate(r.alphas):
      ax.plot(r.steps, r.rates[i], color=cmap(i / max(1, len(r.alphas) - 1)),
              linewidth=1.1, label=f"α0={alpha:.3g}")
    if tuned is not None:
      ax.plot(base.steps, base.rates[tuned], color="red", linestyle="--",
              linewidth=2, label=f"tuned base ({base.alphas[tuned]:.3g})")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("learning rate (effective)")
    ax.set_title(name, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
  for ax in list(axes.flat)[len(hd):]:
    ax.axis("off")
  axes.flat[0].legend(fontsize=7, ncol=2)
  fig.suptitle(title, fontsize=11)
  fig.savefig(path, dpi=DPI)
  plt.close(fig)


def plot_task(out_dir: str, task, runs, epochs: int) -> None:
  """``TASK_sensitivity.png`` and ``TASK_rates.png`` in ``out_dir``."""
  model = task.description.split(" (")[0]
  unit = {"lm": "nats/char", "mse": "MSE"}.get(task.loss, "cross-entropy")
  seeds = len(next(iter(runs.values())).seeds)
  plot_sensitivity(
      os.path.join(out_dir, f"{task.name}_sensitivity.png"),
      f"{task.name}: {model}, {epochs} epochs, {seeds} seed(s): "
      "sensitivity to α0", runs, unit)
  plot_rates(
      os.path.join(out_dir, f"{task.name}_rates.png"),
      f"{task.name}: adapted learning rate over time (seed 0) vs the tuned "
      "base", runs)
