"""hypergrad-bench's words and pictures: argument errors, the summary's
takeaways, the progress lines and the plots."""

import math

import pytest

from hypergrad_optax.bench import cli
from hypergrad_optax.bench import report


@pytest.mark.parametrize("argv, expected", [
    (["--alpha0", "abc"],
     ["argument --alpha0: 'abc' is not a number", "'grid'", "1e-2,1e-3"]),
    (["--alpha0", ","], ["argument --alpha0: no value given", "'grid'"]),
    (["--epochs", "x"], ["argument --epochs: 'x' is not an integer"]),
    (["--beta", "abc"], ["argument --beta: 'abc' is not a number"]),
])
def test_argument_errors_name_the_argument_once_and_what_it_takes(
    argv, expected, capsys, tmp_path):
  with pytest.raises(SystemExit) as info:
    cli.main([*argv, "--out", str(tmp_path)])
  assert info.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()[-1]
  for text in expected:
    assert text in err
  assert err.count(argv[0]) == 1, err  # not "--alpha0: --alpha0"


def _row(method, family, alpha0, beta, loss, valid=0.5, alpha=1e-3,
         task="t"):
  return report.Row(task, method, family, alpha0, beta, 2, loss, valid,
                    alpha, 1.0, "ok")


def _one_alpha_rows():
  nan = math.nan
  return [
      _row("sgd", "base", 1e-3, None, 2.0),
      _row("sgd_hd", "hd", 1e-3, 1e-3, 0.5),
      _row("adam", "base", 1e-3, None, 0.8),
      _row("adam_hd_mult", "hd", 1e-3, 0.1, 0.1, valid=0.2, alpha=0.014),
      _row("hypergradient", "hd", 1e-3, None, 0.1, valid=0.2, alpha=0.014),
      _row("prodigy", "peer", nan, None, 0.05, alpha=0.07),
      _row("cocob", "peer", nan, None, 0.3, alpha=nan),
      _row("dog", "peer", nan, None, 0.2, alpha=nan),
  ]


def test_summary_takeaway_says_who_won_by_how_much_and_where_the_wrapper_is():
  text = report.summary_text(_one_alpha_rows())
  takeaway = text.split("## Runs")[0]
  # prodigy 0.05 is lowest; next best 0.1 (adam_hd_mult): 2x.
  assert "prodigy reached the lowest final training loss, 0.05, 2x lower " \
         "than the next best" in takeaway
  # sgd_hd 0.5 < sgd 2.0, adam_hd_mult 0.1 < adam 0.8, wrapper 0.1 < 0.8.
  assert "in 3 of 3 pairs" in takeaway
  # Wrapper 0.1 vs Adam 0.8: 8x lower; vs the peers' median 0.2: 2x lower.
  assert "ended at 0.1: 8x lower than Adam at the same α0" in takeaway
  assert "2x lower than the LR-free peers' median 0.2" in takeaway
  assert "(not tuned)" in takeaway  # one α0: the base was not tuned


def test_summary_merges_identical_rows_and_says_why():
  text = report.summary_text(_one_alpha_rows())
  table = text.split("## Runs")[1].split("## HD vs base")[0]
  assert "| adam_hd_mult = hypergradient | 0.001 | 0.1 |" in table
  assert "| hypergradient |" not in table
  assert "Identical results:" in table and "same multiplicative rule" in table
  # Different numbers are not merged.
  rows = _one_alpha_rows()
  rows[4] = rows[4]._replace(valid_loss=0.21)
  table = report.summary_text(rows).split("## Runs")[1]
  assert "| hypergradient | 0.001 | 0.1 |" in table
  assert "Identical results" not in table
  # Different computations that print the same numbers stay two rows.
  rows = _one_alpha_rows()
  rows[0] = rows[0]._replace(loss_epoch=0.5)  # sgd now equals sgd_hd...
  rows[1] = rows[1]._replace(beta=None)       # ...β included
  table = report.summary_text(rows).split("## Runs")[1]
  assert "| sgd | 0.001 |" in table and "| sgd_hd | 0.001 |" in table
  assert "sgd and sgd_hd (α0 = 0.001): different methods" in table


def test_beta_column_shows_the_wrappers_default():
  rows = _one_alpha_rows()
  table = report.markdown_table([rows[4]])
  assert "| hypergradient | 0.001 | 0.1 |" in table
  assert report.used_beta(rows[0]) is None  # sgd has no β
  assert report.used_beta(rows[1]) == 1e-3


def test_robustness_heading_only_after_a_grid():
  rows = _one_alpha_rows()
  assert "Robustness over α0" not in report.summary_text(rows)
  grid = rows + [_row("sgd", "base", 1e-2, None, 1.0),
                 _row("sgd_hd", "hd", 1e-2, 1e-3, 0.4)]
  text = report.summary_text(grid)
  assert "## Robustness over α0" in text
  assert "tuned over the α0 grid" in text


def test_rates_without_a_value_print_as_a_dash():
  assert report.format_rate(math.nan) == "-"
  assert report.format_rate(0.00123) == "0.00123"


def test_final_lines_show_a_dash_for_methods_without_a_rate(tmp_path, capsys):
  assert cli.main(["--task", "logreg-digits", "--epochs", "1",
                   "--methods", "dog,sgd", "--no-progress",
                   "--out", str(tmp_path)]) == 0
  out = capsys.readouterr().out
  dog = next(line for line in out.splitlines() if " dog lr-free:" in line)
  assert "α -," in dog and "nan" not in dog
  sgd = next(line for line in out.splitlines() if " sgd a0.001:" in line)
  assert "α 0.001," in sgd


def _fake_runs(epochs=2, steps=5):
  """Per-iteration columns as train.read_csv returns them."""
  import numpy as np
  runs = {}
  for k, (method, alpha0) in enumerate([
      ("sgd", 1e-3), ("sgd_hd", 1e-3), ("adam", 1e-3), ("hypergradient", 1e-3),
      ("dog", None), ("prodigy", None)]):
    n = epochs * steps
    it = np.arange(1, n + 1, dtype=float)
    loss_epoch = np.full(n, np.nan)
    loss_epoch[steps - 1::steps] = 2.0 / (1 + k) / np.arange(1, epochs + 1)
    alpha = (np.full(n, np.nan) if method == "dog"
             else 1e-3 * (1 + 0.1 * it))
    runs[(method, alpha0)] = {
        "epoch": np.repeat(np.arange(1, epochs + 1, dtype=float), steps),
        "iteration": it, "time": it, "loss": np.exp(-it / n),
        "loss_epoch": loss_epoch, "valid_loss_epoch": loss_epoch * 1.1,
        "alpha": alpha}
  return runs


def _legend_texts(ax):
  legend = ax.get_legend()
  return [] if legend is None else [t.get_text() for t in legend.get_texts()]


def test_run_set_figure_groups_by_family_and_labels_what_it_draws():
  from hypergrad_optax.bench import plots
  fig = plots.run_set_figure("t", _fake_runs())
  axes = fig.axes
  titles = [ax.get_title() for ax in axes if ax.get_title()]
  assert titles == ["SGD", "Adam", "learning-rate-free peers"]
  for ax in axes:
    drawn = {line.get_label() for line in ax.get_lines()}
    # A legend entry for every drawn method and nothing else.
    assert set(_legend_texts(ax)) <= drawn, (_legend_texts(ax), drawn)
    if ax.get_xlabel() == "epoch":
      ticks = [t for t in ax.get_xticks()
               if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
      assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert ax.get_xlabel()
  # Rows have y labels in the first column.
  assert {axes[0].get_ylabel(), axes[3].get_ylabel(), axes[6].get_ylabel()} \
      == {"training loss (epoch mean)", "validation loss",
          "learning rate α (per step)"}
  # Adam panel: adam solid, the wrapper dashed, in one hue family;
  # dog (no rate) is not in the rate panel's legend.
  adam_lines = {l.get_label(): l for l in axes[1].get_lines()}
  assert adam_lines["adam"].get_linestyle() == "-"
  assert adam_lines["hypergradient"].get_linestyle() != "-"
  assert "dog" not in _legend_texts(axes[8])
  assert "prodigy" in _legend_texts(axes[8])
  # Peers are grey everywhere.
  import matplotlib.colors as mcolors
  for line in axes[2].get_lines():
    r, g, b, _ = mcolors.to_rgba(line.get_color())
    assert r == g == b
  import matplotlib.pyplot as plt
  plt.close(fig)


def test_plots_are_written_at_150_dpi(tmp_path):
  from PIL import Image
  from hypergrad_optax.bench import plots
  path = tmp_path / "run.png"
  plots.plot_run_set(str(path), "t", _fake_runs())
  final = {("sgd", 1e-2): 1.0, ("sgd", 1e-3): 2.0, ("sgd_hd", 1e-2): 0.5,
           ("sgd_hd", 1e-3): math.nan, ("dog", None): 0.7}
  robust = tmp_path / "robust.png"
  plots.plot_robustness(str(robust), "t", {}, final)
  for p in (path, robust):
    dpi = Image.open(p).info["dpi"]
    assert min(dpi) >= 149.9, dpi
