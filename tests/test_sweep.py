"""hypergrad-bench sweep, the new tasks, the corpus loader, the folded-in
subcommands (demo, hyper-lr, stacking)."""

import csv
import gzip
import math
import os

import jax
import numpy as np
import optax
import pytest

import hypergrad_optax as hgo
from hypergrad_optax.bench import cli
from hypergrad_optax.bench import data
from hypergrad_optax.bench import demo
from hypergrad_optax.bench import hyper_lr
from hypergrad_optax.bench import methods
from hypergrad_optax.bench import sweep
from hypergrad_optax.bench import tasks
from hypergrad_optax.bench import train

# Adam inside (optax's Adam is not strict-dtype clean): see conftest.py.
pytestmark = pytest.mark.standard_promotion


def _small(dataset, n_train, n_test):
  return data.Dataset(dataset.name, dataset.x_train[:n_train],
                      dataset.y_train[:n_train], dataset.x_test[:n_test],
                      dataset.y_test[:n_test])


def _fashion_dir(root, n_train=32, n_test=16):
  rng = np.random.default_rng(0)
  os.makedirs(root, exist_ok=True)
  for prefix, n in (("train", n_train), ("t10k", n_test)):
    data.write_idx(os.path.join(root, f"{prefix}-images-idx3-ubyte.gz"),
                   rng.integers(0, 256, (n, 28, 28)))
    data.write_idx(os.path.join(root, f"{prefix}-labels-idx1-ubyte.gz"),
                   rng.integers(0, 10, (n,)))
  return str(root)


@pytest.mark.parametrize("name", [
    "mlp-digits-long", "mlp-wine", "mlp-friedman", "charlm",
    # ~40 s on the shared 2-core machine; the model is tested fast below.
    pytest.param("resnet-fashion", marks=pytest.mark.slow)])
def test_new_task_trains_a_few_steps(name, tmp_path):
  task = tasks.TASKS[name]
  data_dir = (_fashion_dir(tmp_path / "fashion") if task.dataset == "fashion"
              else None)
  dataset = _small(data.load(task.dataset, data_dir), 16, 8)
  model = task.model()
  base = tasks.base_optimizer(task, total_steps=4)
  result = train.train_many(
      dataset, model, base, alphas=[1e-3, 1e-2], seeds=[0, 1], epochs=2,
      batch_size=8, loss_fn=tasks.loss_fn(task, model),
      rate_fn=methods.auto_rate, progress=False)
  assert result.final_train_loss.shape == (2,)
  assert np.all(np.isfinite(result.final_train_loss))
  assert np.all(np.isfinite(result.final_valid_loss))
  assert result.rates.shape == (2, 4)
  if task.base == "adam":
    np.testing.assert_allclose(result.rates[:, -1], [1e-3, 1e-2], rtol=1e-6)
  else:  # Warmup then cosine: the rate rises from 0, peaks at α0.
    assert np.all(result.rates[:, 0] < result.rates[:, 1])
    assert np.all(result.rates <= np.asarray([[1e-3], [1e-2]]) * 1.0001)
  if name == "charlm":
    # Near-uniform prediction at init: ~ln(128) = 4.85 nats per character.
    assert 3.5 < result.epoch_losses[0, 0] < 6.0


def test_resnet_cnn_steps_on_fashion_sized_images():
  import jax  # pylint: disable=import-outside-toplevel
  model = tasks.TASKS["resnet-fashion"].model()
  params = model.init(jax.random.key(0), (28, 28, 1))
  loss = tasks.loss_fn(tasks.TASKS["resnet-fashion"], model)
  x = np.random.default_rng(0).normal(size=(4, 28, 28, 1)).astype(np.float32)
  y = np.arange(4, dtype=np.int32)
  value, grads = jax.value_and_grad(loss)(params, x, y)
  assert 1.5 < float(value) < 3.5  # about ln(10) at init
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert any(np.any(g != 0) for g in jax.tree.leaves(grads["stages"][1]))


def test_transformer_size_and_causality():
  model = tasks.TASKS["charlm"].model()
  import jax  # pylint: disable=import-outside-toplevel
  params = model.init(jax.random.key(0), None)
  count = sum(p.size for p in jax.tree.leaves(params))
  assert 500_000 <= count <= 1_000_000
  x = np.zeros((1, 128), np.int32)
  y = x.copy()
  y[0, 100] = 65
  a, b = model.apply(params, x), model.apply(params, y)
  # A change at position 100 leaves the logits before it unchanged.
  np.testing.assert_allclose(a[0, :100], b[0, :100], atol=1e-5)
  assert not np.allclose(a[0, 100:], b[0, 100:], atol=1e-5)


def test_train_many_matches_train():
  """One vmapped lane reproduces the single-run loop (same init, order)."""
  task = tasks.TASKS["logreg-digits"]
  dataset = _small(data.load("digits", None), 256, 64)
  model = task.model()
  single = train.train(dataset, model, methods.METHODS["adam"], alpha0=3e-3,
                       beta=None, epochs=2, batch_size=32, seed=1,
                       weight_decay=0.0, progress=False)
  many = train.train_many(
      dataset, model,
      lambda a: optax.chain(optax.add_decayed_weights(0.0), optax.adam(a)),
      alphas=[1e-2, 3e-3], seeds=[0, 1], epochs=2, batch_size=32,
      progress=False)
  np.testing.assert_allclose(many.final_train_loss[1],
                             single.final_loss_epoch, rtol=1e-4)
  np.testing.assert_allclose(many.final_valid_loss[1],
                             single.final_valid_loss, rtol=1e-4)
  assert abs(many.final_train_loss[0] - single.final_loss_epoch) > 1e-4
  # The final parameters and state come back stacked over the lanes.
  for lanes, one in ((many.params, single.params),
                     (many.state, single.state)):
    for stacked, leaf in zip(jax.tree.leaves(lanes), jax.tree.leaves(one),
                             strict=True):
      np.testing.assert_allclose(stacked[1], leaf, rtol=1e-4, atol=1e-6)


def _read(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def test_sweep_tiny_grid_csv_regret_summary_and_plots(tmp_path, capsys):
  out = tmp_path / "sweep"
  code = cli.main(["sweep", "--task", "mlp-wine", "--epochs", "2",
                   "--alpha0", "1e-2,1e-3", "--seeds", "2", "--methods",
                   "hypergradient,cocob", "--out", str(out),
                   "--no-progress"])
  assert code == 0
  with open(out / "sweep.csv", newline="") as f:
    header = next(csv.reader(f))
  assert tuple(header) == (
      "task", "method", "alpha0", "seed", "final_train_loss",
      "final_valid_loss", "best_tuned_train_loss", "regret")
  rows = _read(out / "sweep.csv")
  # base and hypergradient: 2 α0 x 2 seeds; the peer once per seed.
  count = {}
  for r in rows:
    count[r["method"]] = count.get(r["method"], 0) + 1
  assert count == {"base": 4, "hypergradient": 4, "cocob": 2}
  assert all(r["alpha0"] == "" for r in rows if r["method"] == "cocob")
  # The regret, recomputed from the CSV alone.
  for seed in ("0", "1"):
    best = min(float(r["final_train_loss"]) for r in rows
               if r["method"] == "base" and r["seed"] == seed)
    for r in (r for r in rows if r["seed"] == seed):
      assert float(r["best_tuned_train_loss"]) == pytest.approx(best,
                                                                rel=1e-5)
      assert float(r["regret"]) == pytest.approx(
          float(r["final_train_loss"]) / best, rel=1e-4)
  # The two seeds' bests differ (not one seed's best used for both).
  bests = {r["seed"]: r["best_tuned_train_loss"] for r in rows}
  assert bests["0"] != bests["1"]
  summary = (out / "summary.md").read_text()
  assert "| mlp-wine |" in summary and "| hypergradient |" in summary
  table = sweep.regret_table(sweep.read_csv(out / "sweep.csv"))
  wrap = table["mlp-wine"]["hypergradient"]
  per_alpha = [np.mean([float(r["regret"]) for r in rows
                        if r["method"] == "hypergradient"
                        and float(r["alpha0"]) == a]) for a in (1e-2, 1e-3)]
  assert wrap["worst"] == pytest.approx(max(per_alpha), rel=1e-4)
  assert wrap["median"] == pytest.approx(np.median(per_alpha), rel=1e-4)
  assert f"{wrap['worst']:.3g}" in summary
  for png in ("mlp-wine_sensitivity.png", "mlp-wine_rates.png"):
    assert (out / png).stat().st_size > 10_000
  assert "Regret" in capsys.readouterr().out


def test_sweep_diverged_run_has_infinite_regret():
  runs = {}

  class R:  # A minimal MethodRuns.
    def __init__(self, family, train_loss):
      self.method = methods.SweepMethod("m", family, None, "")
      self.alphas = np.asarray([1e-1, 1e-2])
      self.seeds = np.asarray([0])
      self.train = np.asarray(train_loss).reshape(2, 1)
      self.valid = self.train

  runs["base"] = R("base", [math.nan, 0.5])
  runs["hypergradient"] = R("hd", [math.nan, 1.0])
  rows = sweep.rows_for("t", runs)
  by = {(r["method"], r["alpha0"]): r["regret"] for r in rows}
  assert by[("base", 1e-2)] == 1.0
  assert by[("hypergradient", 1e-2)] == 2.0
  assert math.isinf(by[("hypergradient", 1e-1)])
  assert sweep.regret_table(rows)["t"]["hypergradient"]["worst"] == math.inf


def test_sweep_registry_and_method_parsing():
  assert methods.parse_sweep_methods("hypergradient")[0] == "base"
  assert set(methods.SWEEP_GROUPS["peer"]) <= set(
      methods.parse_sweep_methods("default"))
  name = "test_candidate_h10"
  if name not in methods.SWEEP_METHODS:
    methods.register(name, "hd",
                     lambda a, base: hgo.hypergradient(base(a), horizon=10),
                     "a candidate", groups=("test_candidates",))
  assert methods.parse_sweep_methods("test_candidates") == ("base", name)
  with pytest.raises(ValueError, match="already registered"):
    methods.register(name, "hd", None, "")
  with pytest.raises(ValueError, match="family must be one of"):
    methods.register("x_y", "other", None, "")
  with pytest.raises(ValueError, match="unknown method 'nope'.*choose from"):
    methods.parse_sweep_methods("nope")


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0"], "--seeds: '0' must be >= 1"),
    (["--alpha0", "-1"], "--alpha0: '-1' must be a finite number > 0"),
    (["--task", "nope"], "unknown task 'nope'"),
    (["--methods", "nope"], "unknown method 'nope'"),
])
def test_sweep_argument_errors(argv, message, capsys):
  with pytest.raises(SystemExit) as err:
    cli.main(["sweep", *argv])
  assert err.value.code == 2
  assert message in capsys.readouterr().err


def test_charlm_missing_corpus_names_file_and_how(tmp_path, capsys):
  with pytest.raises(SystemExit) as err:
    cli.main(["sweep", "--task", "charlm", "--data-dir", str(tmp_path),
              "--out", str(tmp_path / "o"), "--no-progress"])
  assert err.value.code == 2
  message = capsys.readouterr().err
  assert os.path.join(str(tmp_path), "kjv.txt") in message
  assert "apt-get install bible-kjv" in message


def test_corrupt_corpus_files_name_the_file(tmp_path):
  nul = tmp_path / "nul.txt"
  nul.write_bytes(b"In the beginning\x00" * 100)
  with pytest.raises(data.DataError, match=r"nul\.txt: not a text file"):
    data.read_corpus(str(nul))
  binary = tmp_path / "binary.txt"
  binary.write_bytes(bytes(range(128, 256)) * 10)
  with pytest.raises(data.DataError, match=r"binary\.txt: not a UTF-8"):
    data.read_corpus(str(binary))
  short = tmp_path / "short.txt"
  short.write_text("too short")
  with pytest.raises(data.DataError, match=r"short\.txt: only 9 characters"):
    data.read_corpus(str(short))
  truncated = tmp_path / "cut.txt.gz"
  truncated.write_bytes(gzip.compress(b"x" * 5000)[:-12])
  with pytest.raises(data.DataError, match=r"cut\.txt\.gz: corrupt"):
    data.read_corpus(str(truncated))


def test_corpus_from_a_data_dir_strips_verse_labels(tmp_path):
  lines = [f"Ge1:{i} And God said, let there be light number {i}."
           for i in range(1, 60)]
  (tmp_path / "kjv.txt").write_text("\n".join(lines))
  dataset = data.load("charlm", str(tmp_path))
  text = bytes(dataset.x_train[0].astype(np.uint8)).decode()
  assert text.startswith("And God said")
  assert "Ge1:" not in text
  assert dataset.x_train.shape[1] == data.CONTEXT + 1


def test_embedded_corpus_is_there():
  dataset = data.load("charlm", None)
  assert dataset.x_train.shape == (len(dataset.x_train), 129)
  assert len(dataset.x_train) > 1000 and len(dataset.x_test) > 100
  assert dataset.x_train.max() < data.VOCAB_SIZE


def test_demo_subcommand(capsys):
  assert cli.main(["demo", "--epochs", "1"]) == 0
  out = capsys.readouterr().out
  assert "hypergradient(optax.adam)" in out and "validation loss" in out
  (x, y), (xv, _) = demo.load_digits_split(0)
  assert x.shape == (1437, 64) and xv.shape == (360, 64)


def test_hyper_lr_make_names_kinds():
  assert isinstance(hyper_lr.make("wrap-adam", 1e-3, 0.1),
                    optax.GradientTransformation)
  with pytest.raises(ValueError, match="kind must be one of"):
    hyper_lr.make("nope", 1e-3, 0.1)


@pytest.mark.slow
def test_hyper_lr_subcommand(capsys):
  assert cli.main(["hyper-lr", "--epochs", "1"]) == 0
  assert "| wrap-adam | 0.1 |" in capsys.readouterr().out


def _mnist_dir(root, n_train=256, n_test=32):
  rng = np.random.default_rng(0)
  os.makedirs(root, exist_ok=True)
  for prefix, n in (("train", n_train), ("t10k", n_test)):
    data.write_idx(os.path.join(root, f"{prefix}-images-idx3-ubyte"),
                   rng.integers(0, 256, (n, 28, 28)))
    data.write_idx(os.path.join(root, f"{prefix}-labels-idx1-ubyte"),
                   rng.integers(0, 10, (n,)))
  return str(root)


def test_stacking_subcommands(tmp_path, capsys):
  mnist = _mnist_dir(tmp_path / "mnist")
  assert cli.main(["stacking", "sweep", "--data-dir", mnist, "--epochs", "1",
                   "--methods", "L1,L3-capped", "--grid", "1e-3"]) == 0
  assert cli.main(["stacking", "adapt", "--data-dir", mnist,
                   "--epochs", "1"]) == 0
  assert cli.main(["stacking", "cost", "--data-dir", mnist, "--task",
                   "logreg", "--steps", "2", "--rounds", "1"]) == 0
  out = capsys.readouterr().out
  assert "| L3-capped |" in out and "learning_rate" in out
  assert "ratio to adam_hd" in out
