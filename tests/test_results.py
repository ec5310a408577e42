import numpy as np

from trainability import results
from trainability.train import TaskMetrics


def test_rows_are_tidy_and_round_trip_through_csv(tmp_path):
  values = np.arange(6, dtype=np.float32).reshape(2, 3) / 10
  metrics = TaskMetrics(values, values + 1, values + 2, np.full((2, 3), np.nan))
  rows = results.metric_rows(metrics, seeds=[5, 6], task_ids=[3, 4, 5], heldout=False)
  assert len(rows) == 6 and "heldout_accuracy" not in rows[0]
  assert rows[4] == {"seed": 6, "task": 4, "online_accuracy": values[1, 1].item(),
                     "loss": (values[1, 1] + 1).item(), "final_accuracy": (values[1, 1] + 2).item()}
  writer = results.ResultsWriter(str(tmp_path / "r.csv"))
  writer.write(rows[:3])
  writer.write(rows[3:])
  assert results.read_rows(str(tmp_path / "r.csv")) == rows


def test_per_task_keeps_tasks_every_seed_finished():
  rows = [{"seed": s, "task": t, "online_accuracy": s + t / 10}
          for s in (0, 1) for t in range(3) if not (s == 1 and t == 2)]
  task_ids, values = results.per_task(rows, "online_accuracy")
  np.testing.assert_array_equal(task_ids, [0, 1])
  np.testing.assert_allclose(values, [[0.0, 0.1], [1.0, 1.1]])
  assert "task 1 0.500" in results.summary(rows)


def test_plot_handles_no_finished_task(tmp_path):
  path = tmp_path / "p.png"
  results.plot_online_accuracy([], str(path))
  assert path.read_bytes()[:4] == b"\x89PNG"
