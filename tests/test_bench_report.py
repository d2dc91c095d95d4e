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
  assert "Merged rows:" in table and "same multiplicative rule" in table
  # Different numbers are not merged.
  rows = _one_alpha_rows()
  rows[4] = rows[4]._replace(valid_loss=0.21)
  table = report.summary_text(rows).split("## Runs")[1]
  assert "| hypergradient | 0.001 | 0.1 |" in table and "Merged" not in table


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
