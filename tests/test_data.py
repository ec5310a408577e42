import gzip
import os
import pickle
import struct

import numpy as np
import pytest

from trainability import data
from trainability.config import Config
from trainability.data import DataError


def write_idx(path, array, compress=False):
  header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
  payload = header + np.asarray(array, np.uint8).tobytes()
  with (gzip.open if compress else open)(path, "wb") as f:
    f.write(payload)


def make_idx_dir(directory, n_train=12, n_test=5, compress=False, seed=0):
  rng = np.random.default_rng(seed)
  arrays = {
      "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
      "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
      "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
      "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
  }
  for key, base in data.IDX_NAMES.items():
    write_idx(os.path.join(directory, base + (".gz" if compress else "")), arrays[key], compress)
  return arrays


def test_digits_is_embedded_and_split():
  ds = data.load("digits", normalize="none")
  assert ds.x_train.shape == (1500, 8, 8, 1) and ds.x_test.shape == (297, 8, 8, 1)
  assert ds.y_train.dtype == np.int32 and set(np.unique(ds.y_train)) == set(range(10))
  assert ds.x_train.max() == 16.0 and ds.is_image and ds.num_classes == 10


def test_subset_keeps_the_first_images():
  full = data.load("digits", normalize="none")
  sub = data.load("digits", subset=100, normalize="none")
  np.testing.assert_array_equal(sub.x_train, full.x_train[:100])
  np.testing.assert_array_equal(sub.y_train, full.y_train[:100])
  np.testing.assert_array_equal(sub.x_test, full.x_test)


def test_normalizations_use_training_statistics():
  raw = data.load("digits", subset=300, normalize="none")
  std = data.load("digits", subset=300, normalize="standardize")
  assert abs(std.x_train.mean()) < 1e-5 and abs(std.x_train.std() - 1) < 1e-4
  expected_test = (raw.x_test - raw.x_train.mean()) / raw.x_train.std()
  np.testing.assert_allclose(std.x_test, expected_test, rtol=1e-5, atol=1e-5)
  per = data.load("digits", subset=300, normalize="per_feature")
  varying = raw.x_train.std(axis=0) > 0
  np.testing.assert_allclose(per.x_train.mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(per.x_train.std(0)[varying], 1, rtol=1e-4)
  assert np.all(per.x_train[:, ~varying] == 0)  # constant pixels stay finite
  unit = data.load("digits", subset=300, normalize="unit")
  assert unit.x_train.max() == 1.0 and unit.x_train.min() == 0.0


def test_mnist1d_is_generated_offline_and_leaves_the_global_rng_alone():
  np.random.seed(123)
  expected = np.random.rand()
  np.random.seed(123)
  ds = data.load("mnist1d", subset=500, normalize="none")
  assert np.random.rand() == expected
  assert ds.x_train.shape == (500, 40, 1, 1) and ds.x_test.shape == (1000, 40, 1, 1)
  assert not ds.is_image and set(np.unique(ds.y_train)) <= set(range(10))


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("name", ["fashion_mnist", "mnist"])
def test_idx_loaders_read_plain_and_gzip_files(tmp_path, name, compress):
  arrays = make_idx_dir(tmp_path, compress=compress)
  ds = data.load(name, data_dir=str(tmp_path), normalize="none")
  np.testing.assert_array_equal(ds.x_train[..., 0], arrays["train_images"])
  np.testing.assert_array_equal(ds.y_train, arrays["train_labels"])
  np.testing.assert_array_equal(ds.x_test[..., 0], arrays["test_images"])
  np.testing.assert_array_equal(ds.y_test, arrays["test_labels"])
  assert ds.x_train.dtype == np.float32 and ds.x_train.shape == (12, 28, 28, 1)


def test_mnist_reads_npz(tmp_path):
  rng = np.random.default_rng(1)
  x_train, x_test = rng.integers(0, 256, (7, 28, 28)), rng.integers(0, 256, (3, 28, 28))
  y_train, y_test = rng.integers(0, 10, 7), rng.integers(0, 10, 3)
  np.savez(tmp_path / "mnist.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
  ds = data.load("mnist", data_dir=str(tmp_path), normalize="none")
  np.testing.assert_array_equal(ds.x_train[..., 0], x_train)
  np.testing.assert_array_equal(ds.y_test, y_test)


def write_cifar(directory, n=4, seed=0):
  rng = np.random.default_rng(seed)
  batches = {}
  for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             b"labels": list(rng.integers(0, 10, n))}
    with open(os.path.join(directory, name), "wb") as f:
      pickle.dump(batch, f)
    batches[name] = batch
  return batches


def test_cifar10_reads_python_batches_as_nhwc(tmp_path):
  batches = write_cifar(tmp_path)
  ds = data.load("cifar10", data_dir=str(tmp_path), normalize="none")
  assert ds.x_train.shape == (20, 32, 32, 3) and ds.x_test.shape == (4, 32, 32, 3)
  row = batches["data_batch_2"][b"data"][1]  # the 6th training image
  # Channel c, pixel (r, k) sits at c * 1024 + r * 32 + k in the flat row.
  for c, r, k in [(0, 0, 0), (1, 3, 7), (2, 31, 30)]:
    assert ds.x_train[5, r, k, c] == row[c * 1024 + r * 32 + k]
  np.testing.assert_array_equal(ds.y_test, batches["test_batch"][b"labels"])


def assert_one_line(err, *fragments):
  message = str(err.value)
  assert "\n" not in message
  for fragment in fragments:
    assert fragment in message, message


def test_missing_fashion_mnist_names_the_path_and_the_debian_package(tmp_path):
  with pytest.raises(DataError) as err:
    data.load("fashion_mnist", data_dir=str(tmp_path / "nowhere"))
  assert_one_line(err, str(tmp_path / "nowhere" / "train-images-idx3-ubyte"),
                  "dataset-fashion-mnist", "--data-dir")


def test_missing_mnist_and_cifar_say_how_to_get_them(tmp_path):
  with pytest.raises(DataError) as err:
    data.load("mnist", data_dir=str(tmp_path))
  assert_one_line(err, str(tmp_path), "mnist.npz", "--data-dir")
  with pytest.raises(DataError) as err:
    data.load("cifar10", data_dir=str(tmp_path))
  assert_one_line(err, str(tmp_path / "data_batch_1"), "cifar-10-python.tar.gz")


@pytest.mark.parametrize("corrupt, fragment", [
    (lambda raw: b"\x08\x03" + raw[2:], "not an unsigned-byte IDX header"),
    (lambda raw: raw[:-10], "bytes follow"),
    (lambda raw: raw[:3], "too short"),
])
def test_malformed_idx_names_the_file(tmp_path, corrupt, fragment):
  make_idx_dir(tmp_path)
  path = tmp_path / "train-images-idx3-ubyte"
  path.write_bytes(corrupt(path.read_bytes()))
  with pytest.raises(DataError) as err:
    data.load("fashion_mnist", data_dir=str(tmp_path))
  assert_one_line(err, str(path), fragment)


def test_corrupt_gzip_names_the_file(tmp_path):
  make_idx_dir(tmp_path, compress=True)
  path = tmp_path / "t10k-labels-idx1-ubyte.gz"
  path.write_bytes(b"\x1f\x8b garbage")
  with pytest.raises(DataError) as err:
    data.load("mnist", data_dir=str(tmp_path))
  assert_one_line(err, str(path))


def test_images_and_labels_of_different_length_are_refused(tmp_path):
  make_idx_dir(tmp_path)
  write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(11, np.uint8))
  with pytest.raises(DataError) as err:
    data.load("mnist", data_dir=str(tmp_path))
  assert_one_line(err, "train images (12, 28, 28) and labels (11,)")


def test_out_of_range_labels_are_refused(tmp_path):
  make_idx_dir(tmp_path)
  write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([1, 2, 10, 3, 4], np.uint8))
  with pytest.raises(DataError) as err:
    data.load("fashion_mnist", data_dir=str(tmp_path))
  assert_one_line(err, "test labels", "outside 0..9")


def test_malformed_npz_and_cifar_batches(tmp_path):
  (tmp_path / "mnist.npz").write_bytes(b"not a zip")
  with pytest.raises(DataError) as err:
    data.load("mnist", data_dir=str(tmp_path))
  assert_one_line(err, str(tmp_path / "mnist.npz"))
  write_cifar(tmp_path)
  with open(tmp_path / "data_batch_3", "wb") as f:
    pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
  with pytest.raises(DataError) as err:
    data.load("cifar10", data_dir=str(tmp_path))
  assert_one_line(err, str(tmp_path / "data_batch_3"), "malformed")


def test_bad_subset_and_normalize_and_name():
  with pytest.raises(DataError, match="subset: 5000 is more than the 1500"):
    data.load("digits", subset=5000)
  with pytest.raises(DataError, match="^normalize: 'zscore' is not accepted; choose one of"):
    data.load("digits", normalize="zscore")
  with pytest.raises(DataError, match="^dataset: 'svhn' is not accepted; choose one of"):
    data.load("svhn")


def test_gaussian_points_have_the_asked_dimension_and_a_fixed_draw():
  a = data.load("gaussian", subset=100, gaussian_dim=7)
  b = data.load_for(Config(dataset="gaussian", gaussian_dim=7, subset=100))
  assert a.x_train.shape == (100, 7, 1, 1) and a.x_test.shape == (1000, 7, 1, 1)
  assert not a.is_image and a.num_classes == 10
  np.testing.assert_array_equal(a.x_train, b.x_train)
  np.testing.assert_array_equal(a.y_train, b.y_train)
  assert abs(float(a.x_train.mean())) < 1e-5 and abs(float(a.x_train.std()) - 1) < 1e-4
  assert data.load("gaussian", subset=10).x_train.shape == (10, 20, 1, 1)  # the default d
  with pytest.raises(ValueError, match="gaussian_dim: .*acts only with dataset gaussian"):
    Config(gaussian_dim=7)
  with pytest.raises(ValueError, match="gaussian_dim"):
    Config(dataset="gaussian", gaussian_dim=0)
  with pytest.raises(ValueError, match="model: 'cnn' needs an image data set"):
    Config(dataset="gaussian", model="cnn")
