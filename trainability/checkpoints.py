"""Whole-run checkpoints with orbax-checkpoint: save after a task, resume bit for bit.

A checkpoint holds a run's complete `train.RunState` (params, model state,
optimizer state, every component's state, the traced hyperparameters and all
PRNG keys), with a leading axis over the vmapped runs, and is numbered by the
tasks finished. Because the run is a pure function of that state and the task
index, continuing from a checkpoint computes exactly what the uninterrupted
run computes (tests/test_checkpoints.py kills a run with SIGKILL and compares
results.csv byte for byte).

orbax writes each checkpoint into a temporary directory and renames it when it
is complete, so a run killed while saving leaves the previous checkpoint as the
latest. `Checkpoints(directory, keep=k)` prunes all but the newest k.

PRNG keys are saved as their raw uint32 data and re-wrapped on restore (orbax
stores plain arrays).
"""

from __future__ import annotations

import os

import jax
import numpy as np

from trainability.devices import is_key
from trainability.settings import ConfigError


def _saveable(tree):
  """The tree with every PRNG key array replaced by its raw data."""
  return jax.tree.map(lambda x: jax.random.key_data(x) if is_key(x) else x, tree)


def _abstract(like):
  """ShapeDtypeStructs (with shardings where known) of the saveable form of `like`."""
  def leaf(x):
    if is_key(x):
      shape = jax.eval_shape(jax.random.key_data, x)
      return jax.ShapeDtypeStruct(shape.shape, shape.dtype, sharding=getattr(x, "sharding", None))
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
  return jax.tree.map(leaf, like)


def _key_impl(template):
  """The PRNG implementation of a key array or of its ShapeDtypeStruct."""
  if isinstance(template, jax.Array):
    return jax.random.key_impl(template)
  return template.dtype._impl  # a key dtype carries its implementation


def _rewrap(saved, like):
  """Turns raw key data back into PRNG key arrays where `like` has keys."""
  def leaf(value, template):
    if is_key(template):
      return jax.random.wrap_key_data(value, impl=_key_impl(template))
    return value
  return jax.tree.map(leaf, saved, like)


class Checkpoints:
  """The checkpoints of one run in `directory`, numbered by tasks finished.

  keep: how many of the newest checkpoints to keep (older ones are deleted).
  """

  def __init__(self, directory: str, keep: int = 2):
    if keep < 1:
      raise ConfigError(f"keep_checkpoints: {keep} is not accepted; give an integer >= 1")
    import orbax.checkpoint as ocp  # imported only by runs that checkpoint

    self._ocp = ocp
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=False))

  def latest(self) -> int | None:
    """Tasks finished at the newest complete checkpoint, or None if there is none."""
    return self._manager.latest_step()

  def all(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, tasks_done: int, state) -> None:
    """Saves `state` as the checkpoint after `tasks_done` tasks; returns when it is on disk."""
    self._manager.save(tasks_done, args=self._ocp.args.StandardSave(_saveable(state)))
    self._manager.wait_until_finished()

  def restore(self, like, tasks_done: int | None = None):
    """The state saved after `tasks_done` tasks (default: the newest), shaped and placed as `like`.

    `like` is a state of the same run (or its `jax.eval_shape`), whose
    shardings say where the restored arrays go.
    """
    step = self.latest() if tasks_done is None else tasks_done
    if step is None:
      raise ConfigError(f"resume: no checkpoint in {self.directory}")
    saved = self._manager.restore(step, args=self._ocp.args.StandardRestore(_abstract(like)))
    return _rewrap(saved, like)

  def close(self) -> None:
    self._manager.close()


def host_copy(tree):
  """A numpy copy of a state (keys as raw data): for comparing states in tests."""
  return jax.tree.map(np.asarray, _saveable(tree))
