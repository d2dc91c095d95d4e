"""PNG plots like the paper's figures (matplotlib, Agg backend)."""

from __future__ import annotations

import os
from typing import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from hypergrad_optax.bench import methods as methods_lib  # pylint: disable=wrong-import-position

# Runs keyed by (method, alpha0) -> columns from train.read_csv; alpha0 is
# None for the learning-rate-free peers.
Runs = Mapping[tuple, Mapping[str, np.ndarray]]


def _smooth(values: np.ndarray, width: int) -> np.ndarray:
  """Moving average, so noisy minibatch losses stay readable."""
  width = max(1, min(width, len(values)))
  kernel = np.ones(width) / width
  return np.convolve(values, kernel, mode="valid")


def _style(method: str) -> dict:
  """One colour per method in every figure; HD solid, bases dashed, peers
  dotted (as in the paper's legends)."""
  names = list(methods_lib.METHODS)
  index = names.index(method) if method in names else len(names)
  color = plt.get_cmap("tab20")(index % 20)
  family = methods_lib.METHODS[method].family if method in names else "peer"
  linestyle = {"hd": "-", "base": "--"}.get(family, ":")
  return {"linestyle": linestyle, "color": color}


def _epoch_points(columns):
  mask = ~np.isnan(columns["loss_epoch"])
  return columns["epoch"][mask], columns["loss_epoch"][mask], columns[
      "valid_loss_epoch"][mask]


def plot_run_set(path: str, title: str, runs: Runs) -> None:
  """Loss per iteration, loss per epoch and α per iteration (paper Fig. 2)."""
  fig, axes = plt.subplots(1, 4, figsize=(20, 4.5))
  for (method, _), columns in runs.items():
    style = _style(method)
    iters, loss = columns["iteration"], columns["loss"]
    width = max(1, len(loss) // 100)
    smooth = _smooth(loss, width)
    axes[0].plot(iters[width - 1:], smooth, label=method, **style)
    epochs, train, valid = _epoch_points(columns)
    axes[1].plot(epochs, train, marker=".", label=method, **style)
    axes[2].plot(epochs, valid, marker=".", label=method, **style)
    alpha = columns["alpha"]
    if np.any(np.isfinite(alpha)):
      axes[3].plot(iters, alpha, label=method, **style)
  labels = ("training loss (moving avg.)", "training loss (epoch mean)",
            "validation loss", "learning rate α")
  xlabels = ("iteration", "epoch", "epoch", "iteration")
  for ax, label, xlabel in zip(axes, labels, xlabels):
    ax.set_yscale("log")
    ax.set_title(label)
    ax.set_xlabel(xlabel)
    ax.grid(True, which="both", alpha=0.3)
  handles, labels = axes[0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5),
             fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=80, bbox_inches="tight")
  plt.close(fig)


def plot_robustness(path: str, title: str, runs: Runs,
                    final: Mapping[tuple, float]) -> None:
  """The α0 grid: one panel of epoch losses per α0, and final loss vs α0
  (the paper's robustness figure), peers as horizontal lines."""
  alphas = sorted({a for (_, a) in runs if a is not None}, reverse=True)
  methods = list(dict.fromkeys(m for (m, _) in runs))
  fig, axes = plt.subplots(1, len(alphas) + 1,
                           figsize=(3.2 * (len(alphas) + 1), 3.8),
                           sharey=False)
  for ax, alpha0 in zip(axes, alphas):
    for method in methods:
      # The learning-rate-free peers (α0 None) appear in every panel.
      columns = runs.get((method, alpha0), runs.get((method, None)))
      if columns is None:
        continue
      epochs, train, _ = _epoch_points(columns)
      ax.plot(epochs, train, label=method, **_style(method))
    ax.set_yscale("log")
    ax.set_title(f"α0 = {alpha0:g}")
    ax.set_xlabel("epoch")
    ax.grid(True, which="both", alpha=0.3)
  axes[0].set_ylabel("training loss (epoch mean)")
  ax = axes[-1]
  for method in methods:
    points = sorted((a, v) for (m, a), v in final.items()
                    if m == method and a is not None)
    if points:
      ax.plot([a for a, _ in points], [v for _, v in points], marker="o",
              label=method, **_style(method))
    elif (method, None) in final:
      ax.axhline(final[(method, None)], label=f"{method} (LR-free)",
                 **_style(method))
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("α0")
  ax.set_title("final training loss")
  ax.grid(True, which="both", alpha=0.3)
  fig.legend(*ax.get_legend_handles_labels(), loc="center left",
             bbox_to_anchor=(1.0, 0.5), fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=80, bbox_inches="tight")
  plt.close(fig)


def ensure_dir(path: str) -> str:
  os.makedirs(path, exist_ok=True)
  return path
