"""Task streams: pure functions of (key, task index) -> Task.

A stream never holds state: task t is recomputed from the run's stream key and
t alone, so a whole run is reproducible from one seed and any task can be built
inside a compiled `lax.scan` over task indices.

* random_labels: task 0 draws every training label uniformly at random; each
  later task redraws exactly round(ns * N) labels (a fresh random set of
  examples; a redrawn label may land on its old value with chance 1/C).
* permuted_inputs: a fresh permutation of pixel positions per task (task 0
  included); the channels of a pixel move together.
* shuffled_labels: a fresh permutation of the class ids per task (task 0
  included), applied to train and test labels.
* class_incremental: a random class order per run; task t trains on the
  examples of the first min(C, classes_per_task * (t + 1)) classes of it.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from trainability.settings import Integer, Number, Setting


class Task(NamedTuple):
  """One task, as arrays (all of static shape).

  pixel_permutation: (H*W,) positions; x_task[:, p] = x[:, pixel_permutation[p]].
  train_labels: (N,) the training labels of this task.
  label_map: (C,) maps an original class id to this task's id (test labels).
  active_classes: (C,) bool, the classes this task trains and evaluates on.
  """

  pixel_permutation: jax.Array
  train_labels: jax.Array
  label_map: jax.Array
  active_classes: jax.Array


class TaskStream(NamedTuple):
  """`task(key, t)` plus what the training loop may skip statically."""

  task: Callable[[jax.Array, jax.Array], Task]
  permutes_inputs: bool
  masks_examples: bool
  has_test_labels: bool


def make_stream(
    name: str,
    train_labels,
    num_classes: int,
    num_pixels: int,
    ns: float = 1.0,
    classes_per_task: int = 2,
) -> TaskStream:
  """Builds a stream over a fixed training set with the given original labels."""
  y = jnp.asarray(train_labels, jnp.int32)
  n = y.shape[0]
  identity_pixels = jnp.arange(num_pixels, dtype=jnp.int32)
  identity_classes = jnp.arange(num_classes, dtype=jnp.int32)
  all_classes = jnp.ones((num_classes,), bool)

  def plain(labels=y, pixels=identity_pixels, label_map=identity_classes, active=all_classes):
    return Task(pixels, labels, label_map, active)

  if name == "random_labels":
    num_redrawn = round(ns * n)

    def task(key, t):
      def redraw(s, labels):
        mask_key, draw_key = jax.random.split(jax.random.fold_in(key, s))
        chosen = jax.random.permutation(mask_key, n) < num_redrawn
        chosen = chosen | (s == 0)
        fresh = jax.random.randint(draw_key, (n,), 0, num_classes, jnp.int32)
        return jnp.where(chosen, fresh, labels)

      return plain(labels=jax.lax.fori_loop(0, t + 1, redraw, y))

    return TaskStream(task, False, False, False)

  if name == "permuted_inputs":
    def task(key, t):
      perm = jax.random.permutation(jax.random.fold_in(key, t), num_pixels)
      return plain(pixels=perm.astype(jnp.int32))

    return TaskStream(task, True, False, True)

  if name == "shuffled_labels":
    def task(key, t):
      label_map = jax.random.permutation(jax.random.fold_in(key, t), num_classes)
      label_map = label_map.astype(jnp.int32)
      return plain(labels=label_map[y], label_map=label_map)

    return TaskStream(task, False, False, True)

  if name == "class_incremental":
    def task(key, t):
      rank = jnp.argsort(jax.random.permutation(key, num_classes))  # class -> position
      active = rank < jnp.minimum(num_classes, classes_per_task * (t + 1))
      return plain(active=active)

    return TaskStream(task, False, True, True)

  raise ValueError(
      f"stream: {name!r} is not accepted; choose one of {', '.join(STREAMS)}"
  )


def apply_pixel_permutation(x: jax.Array, permutation: jax.Array) -> jax.Array:
  """Permutes the pixel positions of (..., H, W, C) images, channels together."""
  *lead, h, w, c = x.shape
  flat = x.reshape(*lead, h * w, c)
  return jnp.take(flat, permutation, axis=-2).reshape(*lead, h, w, c)


STREAMS = ("random_labels", "permuted_inputs", "shuffled_labels", "class_incremental")

SETTINGS = (
    Setting("stream", "random_labels", "task stream", str, STREAMS),
    Setting("ns", 1.0, "random_labels: fraction of training labels redrawn per task, in (0, 1]",
            float, check=Number(0.0, 1.0, low_open=True)),
    Setting("classes_per_task", 2, "class_incremental: classes added per task", int,
            check=Integer(1)),
)
