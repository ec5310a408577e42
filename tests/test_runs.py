"""runs.drive: chunks in order from `start`, rows before checkpoints, checkpoints every
N tasks but not after the last, padding runs dropped before `write`."""

import numpy as np

from trainability import runs


class FakeCheckpoints:
  def __init__(self, log):
    self.log = log

  def save(self, done, state):
    self.log.append(("save", done, state))


def test_drive_writes_each_chunk_then_checkpoints_every_n_tasks():
  log = []

  def run_chunk(state, task_ids):
    return state + len(task_ids), {"value": np.full((3, len(task_ids)), state)}

  def write(metrics, task_ids):
    assert metrics["value"].shape == (2, len(task_ids))  # the padding run is dropped
    log.append(("write", tuple(int(t) for t in task_ids)))

  final = runs.drive(run_chunk, 0, 2, 7, 2, write, start=1, checkpoints=FakeCheckpoints(log),
                     checkpoint_every=2, progress=lambda m, n: log.append(("progress", n)))
  assert final == 6
  assert log == [
      ("write", (1, 2)), ("progress", 2),                 # done = 3: no checkpoint
      ("write", (3, 4)), ("progress", 2),                 # done = 5: none
      ("write", (5, 6)), ("progress", 2),                 # done = 7 = tasks: none after the last
  ]
  log.clear()
  runs.drive(run_chunk, 0, 2, 5, 2, write, checkpoints=FakeCheckpoints(log), checkpoint_every=2)
  assert log == [("write", (0, 1)), ("save", 2, 2), ("write", (2, 3)), ("save", 4, 4),
                 ("write", (4,))]
