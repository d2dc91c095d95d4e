"""PNG plots like the paper's figures (matplotlib, Agg backend).

Methods are grouped by the base optimizer they build on: one column of panels
per family (SGD, SGDN, Adam, AdamW), the base optimizer solid and its
hypergradient variants dashed beside it in the same colour family, and the
learning-rate-free peers in grey (faint in every family's loss panels, for
reference, and named in a column of their own). Axes are labelled, epoch axes
have integer ticks, each panel's legend lists only the lines drawn in it, and
figures are written at 150 dpi.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
from matplotlib.ticker import LogFormatter  # pylint: disable=wrong-import-position
from matplotlib.ticker import MaxNLocator  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from hypergrad_optax.bench import methods as methods_lib  # pylint: disable=wrong-import-position

# Runs keyed by (method, alpha0) -> columns from train.read_csv; alpha0 is
# None for the learning-rate-free peers.
Runs = Mapping[tuple, Mapping[str, np.ndarray]]

DPI = 150
FAMILIES = ("sgd", "sgdn", "adam", "adamw")
FAMILY_TITLES = {"sgd": "SGD", "sgdn": "SGD + Nesterov", "adam": "Adam",
                 "adamw": "AdamW", "peer": "learning-rate-free peers",
                 "other": "other"}
# One colour map per family; the base optimizer takes the darkest shade.
_CMAPS = {"sgd": "Blues", "sgdn": "Purples", "adam": "Oranges",
          "adamw": "Greens", "other": "RdPu"}
# Line style by variant: base solid, HD variants dashed beside it.
_VARIANT_STYLE = {
    "base": ("-", 0.95, 2.0),
    "additive": ("--", 0.75, 1.8),
    "multiplicative": ((0, (6, 2, 1, 2)), 0.6, 1.8),
    "wrapper": ((0, (2, 1.5)), 0.45, 2.2),
}
_PEER_STYLES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)))
_PEER_GREYS = (0.05, 0.25, 0.4, 0.55, 0.3, 0.15)
_PEER_MARKERS = ("o", "s", "^", "v", "D", "P")


def family_of(method: str) -> str:
  """The base optimizer a method belongs to, "peer" or "other"."""
  info = methods_lib.METHODS.get(method)
  if info is not None and info.family == "peer":
    return "peer"
  family = methods_lib.BASE_OF.get(method, method)
  return family if family in FAMILIES else "other"


def _variant(method: str) -> str:
  if method == "hypergradient":
    return "wrapper"
  if method in FAMILIES:
    return "base"
  if method.endswith("_mult"):
    return "multiplicative"
  return "additive"


def style(method: str) -> dict:
  """Colour and line style of a method, the same in every figure."""
  family = family_of(method)
  if family == "peer":
    peers = [n for n, m in methods_lib.METHODS.items() if m.family == "peer"]
    i = peers.index(method) % len(_PEER_STYLES)
    return {"color": str(_PEER_GREYS[i]), "linestyle": _PEER_STYLES[i],
            "linewidth": 1.6, "marker": _PEER_MARKERS[i], "markevery": 0.1,
            "markersize": 4}
  linestyle, shade, width = _VARIANT_STYLE[_variant(method)]
  return {"color": plt.get_cmap(_CMAPS[family])(shade),
          "linestyle": linestyle, "linewidth": width}


def _smooth(values: np.ndarray, width: int) -> np.ndarray:
  """Moving average, so noisy minibatch losses stay readable."""
  width = max(1, min(width, len(values)))
  kernel = np.ones(width) / width
  return np.convolve(values, kernel, mode="valid")


def _epoch_points(columns):
  mask = ~np.isnan(columns["loss_epoch"])
  return columns["epoch"][mask], columns["loss_epoch"][mask], columns[
      "valid_loss_epoch"][mask]


def _positive(values: np.ndarray) -> bool:
  return bool(np.any(np.isfinite(values) & (values > 0)))


def _grouped(methods) -> dict:
  """Family -> its methods in the benchmark's order, families in order."""
  groups = {}
  variants = list(_VARIANT_STYLE)
  for method in methods:
    groups.setdefault(family_of(method), []).append(method)
  for family, names in groups.items():
    if family != "peer":  # base first, then its variants
      names.sort(key=lambda m: variants.index(_variant(m)))
  order = [*FAMILIES, "other", "peer"]
  return {f: groups[f] for f in order if f in groups}


class _PlainLogFormatter(LogFormatter):
  """Log-axis labels as plain numbers (0.2, 1, 1e-05), not 2×10⁻¹."""

  def __call__(self, x, pos=None):
    return f"{x:g}" if super().__call__(x, pos) else ""


def _finish(ax, *, ylabel: Optional[str], xlabel: str, integer_x: bool,
            log_y: bool = True) -> None:
  if log_y:
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(_PlainLogFormatter(labelOnlyBase=False))
    ax.yaxis.set_minor_formatter(_PlainLogFormatter(
        labelOnlyBase=False, minor_thresholds=(1, 0.4)))
  if integer_x:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_xlabel(xlabel)
  if ylabel:
    ax.set_ylabel(ylabel)
  ax.grid(True, which="major", alpha=0.3)


def _legend(ax, **kwargs) -> None:
  handles, labels = ax.get_legend_handles_labels()
  if handles:  # only lines actually drawn in this panel
    ax.legend(handles, labels, fontsize=7, **kwargs)


def plot_run_set(path: str, title: str, runs: Runs) -> None:
  """One α0 (paper Fig. 2): per family, the training loss per epoch, the
  validation loss per epoch and the learning rate per iteration."""
  _save(run_set_figure(title, runs), path)


def plot_robustness(path: str, title: str, runs: Runs,
                    final: Mapping[tuple, float]) -> None:
  """The α0 grid (the paper's robustness figure): per family, the final
  training loss against α0; the LR-free peers as grey horizontal lines."""
  del runs  # the final losses say it all; kept for the caller's signature
  _save(robustness_figure(title, final), path)


def _save(fig, path: str) -> None:
  fig.savefig(path, dpi=DPI, bbox_inches="tight")
  plt.close(fig)


def run_set_figure(title: str, runs: Runs):
  """The figure of :func:`plot_run_set`, not yet saved."""
  methods = list(dict.fromkeys(m for (m, _) in runs))
  groups = _grouped(methods)
  peers = groups.get("peer", [])
  fig, axes = plt.subplots(3, len(groups), figsize=(3.6 * len(groups), 9.0),
                           squeeze=False, sharex="row")
  rows = (("training loss (epoch mean)", "epoch"),
          ("validation loss", "epoch"),
          ("learning rate α (per step)", "iteration"))
  for col, (family, names) in enumerate(groups.items()):
    ax_train, ax_valid, ax_rate = axes[:, col]
    # Peers faint in grey behind every family's loss panels, for reference.
    if family != "peer":
      for i, peer in enumerate(peers):
        for ax, key in ((ax_train, 1), (ax_valid, 2)):
          points = _epoch_points(runs[(peer, None)])
          ax.plot(points[0], points[key], color="0.75", linewidth=1.0,
                  zorder=1, label="LR-free peers" if i == 0 else None)
    for method in names:
      alpha0 = next(a for (m, a) in runs if m == method)
      columns = runs[(method, alpha0)]
      st = style(method)
      epochs, train, valid = _epoch_points(columns)
      marked = {"marker": ".", **st}
      ax_train.plot(epochs, train, label=method, zorder=3, **marked)
      ax_valid.plot(epochs, valid, label=method, zorder=3, **marked)
      alpha = columns["alpha"]
      if _positive(alpha):
        iters = columns["iteration"]
        ax_rate.plot(iters, alpha, label=method, **st)
    ax_train.set_title(FAMILY_TITLES[family])
    for row, ax in enumerate((ax_train, ax_valid, ax_rate)):
      ylabel, xlabel = rows[row]
      _finish(ax, ylabel=ylabel if col == 0 else None, xlabel=xlabel,
              integer_x=xlabel == "epoch",
              log_y=row < 2 or _positive(np.concatenate(
                  [l.get_ydata() for l in ax.get_lines()] or [np.zeros(1)])))
      _legend(ax)
    if not ax_rate.get_lines():
      ax_rate.text(0.5, 0.5, "no learning rate to show", ha="center",
                   va="center", transform=ax_rate.transAxes, color="0.4")
  fig.suptitle(f"{title}\nbase optimizer solid, its hypergradient variants "
               "dashed; learning-rate-free peers grey")
  fig.tight_layout()
  return fig


def robustness_figure(title: str, final: Mapping[tuple, float]):
  """The figure of :func:`plot_robustness`, not yet saved."""
  methods = list(dict.fromkeys(m for (m, _) in final))
  groups = _grouped(methods)
  peers = groups.pop("peer", [])
  fig, axes = plt.subplots(1, max(1, len(groups)),
                           figsize=(3.8 * max(1, len(groups)), 3.9),
                           squeeze=False, sharey=True)
  finite = [v for v in final.values() if np.isfinite(v) and v > 0]
  for ax, (family, names) in zip(axes[0], groups.items()):
    for i, peer in enumerate(peers):
      value = final.get((peer, None))
      if value is not None and np.isfinite(value):
        ax.axhline(value, color="0.7", linewidth=1.0, zorder=1,
                   label="LR-free peers" if i == 0 else None)
    for method in names:
      points = sorted((a, v) for (m, a), v in final.items()
                      if m == method and a is not None)
      if not points:
        continue
      alphas = np.array([a for a, _ in points])
      values = np.array([v for _, v in points], dtype=float)
      ok = np.isfinite(values)
      st = style(method)
      st["marker"] = "o"
      st.pop("markevery", None)
      ax.plot(alphas[ok], values[ok], label=method, zorder=3, **st)
      for a in alphas[~ok]:  # diverged runs: a cross at the top
        ax.plot([a], [max(finite or [1.0]) * 1.5], marker="x", color="red",
                linestyle="none", zorder=4)
    ax.set_xscale("log")
    ax.set_title(FAMILY_TITLES[family])
    _finish(ax, ylabel="final training loss (epoch mean)"
            if ax is axes[0, 0] else None, xlabel="initial learning rate α0",
            integer_x=False)
    _legend(ax)
  fig.suptitle(f"{title}\nbase optimizer solid, hypergradient variants dashed;"
               " grey: learning-rate-free peers; red x: diverged")
  fig.tight_layout()
  return fig


def ensure_dir(path: str) -> str:
  os.makedirs(path, exist_ok=True)
  return path
