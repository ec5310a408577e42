"""Driving a compiled run over its tasks: chunks, rows on disk, checkpoints, resuming.

Shared by `trainability run` and `trainability sweep`. The compiled program
runs `chunk_tasks` tasks per call; after each call the caller's `write` puts
that chunk's rows on disk, and only then, every `checkpoint_every` tasks, the
whole run state is checkpointed (`trainability.checkpoints`). A resumed run
therefore restarts from a checkpoint whose tasks are all on disk, drops the
rows written after it (`results.keep_rows`) and computes them again.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from trainability import devices
from trainability.checkpoints import Checkpoints

CHECKPOINT_DIR = "checkpoints"


def drive(run_chunk: Callable, state, runs: int, tasks: int, chunk_tasks: int,
          write: Callable[[object, np.ndarray], None], start: int = 0,
          checkpoints: Checkpoints | None = None, checkpoint_every: int = 0,
          progress: Callable[[object, int], None] | None = None):
  """Runs tasks start, ..., tasks - 1 of a state sharded over `runs` (+ padding) runs.

  run_chunk(state, task_ids) -> (state, TaskMetrics). After each chunk the
  metrics of the first `runs` runs are gathered to numpy on every process
  (`devices.gather`); the main process calls write(metrics, task_ids) and
  progress(metrics, tasks in the chunk). Checkpoints are saved by every
  process after tasks k * checkpoint_every (not after the last task, whose
  rows complete the run). Returns the final state.
  """
  for first in range(start, tasks, chunk_tasks):
    task_ids = np.arange(first, min(first + chunk_tasks, tasks))
    state, metrics = run_chunk(state, task_ids)
    metrics = devices.gather(metrics, runs)
    if devices.is_main():
      write(metrics, task_ids)
    done = int(task_ids[-1]) + 1
    if checkpoints is not None and checkpoint_every and done % checkpoint_every == 0 \
        and done < tasks:
      checkpoints.save(done, state)
    if progress is not None and devices.is_main():
      progress(metrics, len(task_ids))
  return state
