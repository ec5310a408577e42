"""Offline data sets as numpy arrays of shape (N, H, W, C).

Loaders never touch the network. A missing or malformed file raises `DataError`
with one line naming the path tried and how to get the data.

* digits: scikit-learn's bundled 8x8 digits (1,797 images); the first 1,500 are
  the training split, the last 297 the test split.
* mnist1d: generated locally from its templates (4,000 train / 1,000 test),
  stored as (N, 40, 1, 1); not an image, so the CNN refuses it.
* fashion_mnist / mnist: IDX files (`train-images-idx3-ubyte[.gz]`, ...); mnist
  also reads a single `mnist.npz` (x_train, y_train, x_test, y_test).
* cifar10: the standard python batches (`data_batch_1..5`, `test_batch`).
* gaussian: synthetic inputs x ~ N(0, I_d), d = `gaussian_dim`, 4,000 train /
  1,000 test, labels uniform over 10 classes (a fixed seed); stored as
  (N, d, 1, 1), not an image. With the random-labels stream this is the
  memorization problem of n random points in dimension d (Zhang et al. 2021).
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from typing import NamedTuple

import numpy as np

from trainability.settings import Integer, Predicate, Setting, by_name

DEFAULT_DATA_DIRS = {
    "fashion_mnist": "/usr/share/datasets/fashion-mnist",
    "mnist": "data/mnist",
    "cifar10": "data/cifar-10-batches-py",
}

HOW_TO_GET = {
    "fashion_mnist": "install the Debian package dataset-fashion-mnist "
    "(apt-get install dataset-fashion-mnist) or pass --data-dir to a folder with the IDX files",
    "mnist": "put train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
    "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz] or mnist.npz there, "
    "or pass --data-dir",
    "cifar10": "unpack cifar-10-python.tar.gz there (data_batch_1..5, test_batch) "
    "or pass --data-dir",
}

IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


class DataError(ValueError):
  """A data file is missing or malformed; the message is one line."""


class Dataset(NamedTuple):
  """Train and test arrays; x is float32 (N, H, W, C), y is int32 (N,)."""

  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  is_image: bool


def load(
    name: str,
    data_dir: str | None = None,
    subset: int | None = None,
    normalize: str = "standardize",
    gaussian_dim: int | None = None,
) -> Dataset:
  """Loads a data set, keeps the first `subset` training images, normalizes.

  gaussian_dim: the input dimension of `gaussian` (None: the setting's default).
  """
  if gaussian_dim is None:
    gaussian_dim = by_name(SETTINGS)["gaussian_dim"].default
  loaders = {
      "digits": _load_digits,
      "mnist1d": _load_mnist1d,
      "fashion_mnist": lambda d: _load_idx_dir("fashion_mnist", d),
      "mnist": _load_mnist,
      "cifar10": _load_cifar10,
      "gaussian": lambda d: _gaussian(gaussian_dim),
  }
  if name not in loaders:
    raise DataError(f"dataset: {name!r} is not accepted; choose one of {', '.join(loaders)}")
  directory = data_dir if data_dir is not None else DEFAULT_DATA_DIRS.get(name)
  ds = loaders[name](directory)
  if subset:
    if subset > len(ds.y_train):
      raise DataError(
          f"subset: {subset} is more than the {len(ds.y_train)} training images of {name}"
      )
    ds = ds._replace(x_train=ds.x_train[:subset], y_train=ds.y_train[:subset])
  return normalize_dataset(ds, normalize)


def source_of(config) -> tuple:
  """The `load` arguments of a Config: two configs with the same source share a data set."""
  return (config.dataset, config.data_dir, config.subset, config.normalize, config.gaussian_dim)


def load_for(config) -> Dataset:
  """The data set a Config names."""
  return load(*source_of(config))


def _gaussian(dim: int, n: int = 4000, n_test: int = 1000, num_classes: int = 10) -> Dataset:
  rng = np.random.default_rng(20211)
  x = rng.standard_normal((n + n_test, dim, 1, 1), dtype=np.float32)
  y = rng.integers(0, num_classes, n + n_test).astype(np.int32)
  return Dataset("gaussian", x[:n], y[:n], x[n:], y[n:], num_classes, False)


def synthetic_dataset(n: int, shape=(28, 28, 1), num_classes: int = 10, n_test: int = 100,
                      seed: int = 0) -> Dataset:
  """Gaussian images with uniform labels: for benchmarks, where the cost of a
  step does not depend on the pixel values (MNIST itself is not offline)."""
  rng = np.random.default_rng(seed)
  return Dataset(
      "synthetic",
      rng.standard_normal((n, *shape), dtype=np.float32),
      rng.integers(0, num_classes, n).astype(np.int32),
      rng.standard_normal((n_test, *shape), dtype=np.float32),
      rng.integers(0, num_classes, n_test).astype(np.int32),
      num_classes, True,
  )


def normalize_dataset(ds: Dataset, method: str) -> Dataset:
  """Scales inputs with statistics of the (subsampled) training split only."""
  x_train = ds.x_train.astype(np.float32)
  x_test = ds.x_test.astype(np.float32)
  if method == "standardize":
    mean, std = x_train.mean(), x_train.std()
  elif method == "per_feature":
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
  elif method == "unit":
    mean, std = np.float32(0.0), np.abs(x_train).max()
  elif method == "none":
    mean, std = np.float32(0.0), np.float32(1.0)
  else:
    raise DataError(
        f"normalize: {method!r} is not accepted; choose one of {', '.join(NORMALIZATIONS)}"
    )
  std = np.where(std > 0, std, 1.0).astype(np.float32)  # constant pixels stay 0.
  return ds._replace(
      x_train=((x_train - mean) / std).astype(np.float32),
      x_test=((x_test - mean) / std).astype(np.float32),
  )


def _load_digits(_directory) -> Dataset:
  from sklearn.datasets import load_digits

  digits = load_digits()
  x = digits.images.astype(np.float32)[..., None]  # (1797, 8, 8, 1), values 0..16
  y = digits.target.astype(np.int32)
  return Dataset("digits", x[:1500], y[:1500], x[1500:], y[1500:], 10, True)


def _load_mnist1d(_directory) -> Dataset:
  from mnist1d.data import get_dataset_args, make_dataset

  # make_dataset reseeds numpy's global RNG; leave the caller's RNG untouched.
  state = np.random.get_state()
  try:
    raw = make_dataset(get_dataset_args())
  finally:
    np.random.set_state(state)
  as_images = lambda x: np.asarray(x, np.float32)[:, :, None, None]
  return Dataset(
      "mnist1d",
      as_images(raw["x"]), np.asarray(raw["y"], np.int32),
      as_images(raw["x_test"]), np.asarray(raw["y_test"], np.int32),
      10, False,
  )


def _load_mnist(directory) -> Dataset:
  npz = os.path.join(directory, "mnist.npz")
  if os.path.exists(npz):
    try:
      with np.load(npz) as f:
        parts = [f[k] for k in ("x_train", "y_train", "x_test", "y_test")]
    except Exception as e:  # noqa: BLE001 - any failure is a malformed file.
      raise DataError(f"mnist: cannot read {npz}: {_reason(e)}; {HOW_TO_GET['mnist']}") from None
    x_train, y_train, x_test, y_test = parts
    if x_train.ndim != 3 or x_test.ndim != 3 or len(x_train) != len(y_train) or len(x_test) != len(y_test):
      raise DataError(
          f"mnist: {npz} has shapes {x_train.shape}, {y_train.shape}, {x_test.shape}, "
          f"{y_test.shape}; expected (N, 28, 28) images with N labels"
      )
    return _checked("mnist", npz, x_train[..., None], y_train, x_test[..., None], y_test, 10)
  return _load_idx_dir("mnist", directory)


def _load_idx_dir(name, directory) -> Dataset:
  arrays = {key: read_idx(_find(name, directory, base)) for key, base in IDX_NAMES.items()}
  for split in ("train", "test"):
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
      raise DataError(
          f"{name}: {split} images {images.shape} and labels {labels.shape} in {directory} "
          "do not match; expected (N, H, W) images and N labels"
      )
  return _checked(
      name, directory,
      arrays["train_images"][..., None], arrays["train_labels"],
      arrays["test_images"][..., None], arrays["test_labels"], 10,
  )


def _find(name, directory, base):
  for candidate in (base, base + ".gz"):
    path = os.path.join(directory, candidate)
    if os.path.exists(path):
      return path
  raise DataError(
      f"{name}: file not found: {os.path.join(directory, base)}[.gz]; {HOW_TO_GET[name]}"
  )


def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file of unsigned bytes (plain or gzip-compressed)."""
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError) as e:
    raise DataError(f"cannot read {path}: {_reason(e)}") from None
  if len(raw) < 4:
    raise DataError(f"malformed IDX file {path}: {len(raw)} bytes, too short for a header")
  zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
  if zero != 0 or dtype_code != 0x08 or not 1 <= ndim <= 4:
    raise DataError(
        f"malformed IDX file {path}: header {raw[:4].hex()} is not an unsigned-byte IDX header"
    )
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise DataError(f"malformed IDX file {path}: truncated header")
  shape = struct.unpack(">" + "I" * ndim, raw[4:header])
  expected = int(np.prod(shape))
  if len(raw) - header != expected:
    raise DataError(
        f"malformed IDX file {path}: header says shape {shape} ({expected} bytes) "
        f"but {len(raw) - header} bytes follow"
    )
  return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _load_cifar10(directory) -> Dataset:
  names = [f"data_batch_{i}" for i in range(1, 6)]
  train = [_read_cifar_batch(directory, n) for n in names]
  x_test, y_test = _read_cifar_batch(directory, "test_batch")
  x_train = np.concatenate([x for x, _ in train])
  y_train = np.concatenate([y for _, y in train])
  return _checked("cifar10", directory, x_train, y_train, x_test, y_test, 10)


def _read_cifar_batch(directory, name):
  path = os.path.join(directory, name)
  if not os.path.exists(path):
    raise DataError(f"cifar10: file not found: {path}; {HOW_TO_GET['cifar10']}")
  try:
    with open(path, "rb") as f:
      batch = pickle.load(f, encoding="bytes")
    data = np.asarray(batch[b"data"], np.uint8)
    labels = np.asarray(batch[b"labels"], np.int64)
    x = data.reshape(len(data), 3, 32, 32).transpose(0, 2, 3, 1)
  except Exception as e:  # noqa: BLE001 - any failure is a malformed file.
    raise DataError(
        f"cifar10: malformed batch file {path}: {_reason(e)}; expected a pickled dict "
        "with b'data' (N, 3072) uint8 and b'labels'"
    ) from None
  if len(labels) != len(x):
    raise DataError(f"cifar10: {path} has {len(x)} images but {len(labels)} labels")
  return x, labels


def _checked(name, where, x_train, y_train, x_test, y_test, num_classes) -> Dataset:
  for split, y in (("train", y_train), ("test", y_test)):
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
      raise DataError(
          f"{name}: {split} labels in {where} outside 0..{num_classes - 1} "
          f"(found {y.min()}..{y.max()})"
      )
  return Dataset(
      name, x_train, y_train.astype(np.int32), x_test, y_test.astype(np.int32),
      num_classes, True,
  )


def _reason(e: Exception) -> str:
  return " ".join(str(e).split()) or type(e).__name__


DATASETS = ("digits", "mnist1d", "fashion_mnist", "mnist", "cifar10", "gaussian")
NORMALIZATIONS = ("standardize", "per_feature", "unit", "none")


def _subset_problem(value):
  """None (all) or an integer >= 0."""
  if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
    return "give an integer >= 0 or none"
  return None


SETTINGS = (
    Setting("dataset", "digits", "data set", str, DATASETS),
    Setting("data_dir", None, "directory holding the data files (default: per data set, see "
            "README)", str),
    Setting("subset", 1000, "train on the first N training images only (0 or none: all)", int,
            check=Predicate(_subset_problem)),
    Setting("gaussian_dim", 20, "gaussian: the input dimension d", int, check=Integer(1),
            acts_with=("dataset", ("gaussian",))),
    Setting("normalize", "standardize", "input scaling: standardize (global mean/std of the "
            "training set), per_feature (per-pixel mean/std), unit ([0, 1]), none", str,
            NORMALIZATIONS),
)
