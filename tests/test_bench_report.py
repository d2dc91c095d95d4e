"""hypergrad-bench's words and pictures: argument errors, the summary's
takeaways, the progress lines and the plots."""

import pytest

from hypergrad_optax.bench import cli


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
