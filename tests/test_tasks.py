import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainability import tasks

N, C, PIXELS = 2000, 10, 16
LABELS = np.arange(N) % C
KEY = jax.random.key(7)


def stream(name, **kwargs):
  return tasks.make_stream(name, LABELS, C, PIXELS, **kwargs)


@pytest.mark.parametrize("name", ["random_labels", "permuted_inputs", "shuffled_labels",
                                  "class_incremental"])
def test_tasks_are_pure_functions_of_key_and_index(name):
  task = stream(name).task
  a, b = task(KEY, 3), jax.jit(task)(KEY, jnp.int32(3))
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  other_key = task(jax.random.key(8), 3)
  assert any(not np.array_equal(x, y) for x, y in zip(a, other_key))


def test_random_labels_first_task_is_uniform_noise():
  labels = np.asarray(stream("random_labels").task(KEY, 0).train_labels)
  counts = np.bincount(labels, minlength=C)
  assert counts.min() > 0.7 * N / C and counts.max() < 1.3 * N / C
  assert np.mean(labels == LABELS) < 0.15  # unrelated to the true labels


@pytest.mark.parametrize("ns", [0.1, 0.25, 0.5])
def test_random_labels_redraw_the_ns_fraction(ns):
  task = stream("random_labels", ns=ns).task
  redrawn = round(ns * N)
  for t in (1, 4):
    before = np.asarray(task(KEY, t - 1).train_labels)
    after = np.asarray(task(KEY, t).train_labels)
    changed = np.sum(before != after)
    # Exactly `redrawn` labels are drawn afresh; a draw keeps its old value w.p. 1/C.
    assert changed <= redrawn
    assert abs(changed - redrawn * (1 - 1 / C)) < 5 * np.sqrt(redrawn * 0.09) + 1


def test_random_labels_with_ns_one_redraw_everything():
  task = stream("random_labels", ns=1.0).task
  same = np.mean(np.asarray(task(KEY, 5).train_labels) == np.asarray(task(KEY, 6).train_labels))
  assert abs(same - 1 / C) < 0.04


def test_permuted_inputs_use_a_fresh_permutation_per_task():
  s = stream("permuted_inputs")
  assert s.permutes_inputs and not s.masks_examples
  perms = [np.asarray(s.task(KEY, t).pixel_permutation) for t in range(5)]
  for p in perms:
    assert sorted(p) == list(range(PIXELS))
  assert len({tuple(p) for p in perms}) == 5
  np.testing.assert_array_equal(s.task(KEY, 2).train_labels, LABELS)


def test_pixel_permutation_moves_channels_together():
  x = jnp.arange(2 * 2 * 3 * 2, dtype=jnp.float32).reshape(2, 2, 3, 2)  # (N, H, W, C)
  perm = jnp.array([5, 0, 1, 2, 3, 4])
  y = tasks.apply_pixel_permutation(x, perm)
  flat_x, flat_y = np.asarray(x).reshape(2, 6, 2), np.asarray(y).reshape(2, 6, 2)
  for p, source in enumerate(np.asarray(perm)):
    np.testing.assert_array_equal(flat_y[:, p, :], flat_x[:, source, :])


def test_shuffled_labels_permute_class_ids_per_task():
  s = stream("shuffled_labels")
  maps = []
  for t in range(4):
    task = s.task(KEY, t)
    label_map = np.asarray(task.label_map)
    assert sorted(label_map) == list(range(C))
    np.testing.assert_array_equal(task.train_labels, label_map[LABELS])
    maps.append(tuple(label_map))
  assert len(set(maps)) == 4


def test_class_incremental_grows_a_nested_set_of_classes():
  s = stream("class_incremental", classes_per_task=3)
  assert s.masks_examples
  previous = np.zeros(C, bool)
  for t in range(5):
    active = np.asarray(s.task(KEY, t).active_classes)
    assert active.sum() == min(C, 3 * (t + 1))
    assert np.all(active[previous])  # classes once added stay
    previous = active
  np.testing.assert_array_equal(s.task(KEY, 1).train_labels, LABELS)


def test_unknown_stream_is_refused():
  with pytest.raises(ValueError, match="^stream: 'rotations' is not accepted; choose one of"):
    stream("rotations")
