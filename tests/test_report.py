"""Indicator tables, the Figure-1 plot and the predictor report."""

import numpy as np
import pytest

from trainability import report


def _rows(seeds=2, tasks=4):
  """Results and indicator rows where `good` falls with next-task accuracy, `noise` is random."""
  rng = np.random.default_rng(0)
  acc = {(s, t): 0.9 - 0.2 * t - 0.01 * s for s in range(seeds) for t in range(tasks)}
  result_rows = [{"seed": s, "task": t, "online_accuracy": a} for (s, t), a in acc.items()]
  values = {
      "good": np.zeros((seeds, tasks, 2, 1)), "noise": rng.normal(size=(seeds, tasks, 2, 2)),
      "crossed": np.zeros((seeds, tasks, 2, 2))}
  for s in range(seeds):
    for t in range(tasks):
      values["good"][s, t, -1, 0] = t + 0.1 * s  # end-of-task value rises as accuracy falls
      values["good"][s, t, 0, 0] = -100.0         # earlier evaluations are ignored
  values["crossed"][0, 1, 0, 1] = 1.0  # seed 0, task 1: one of two evaluations crossed
  labels = {"good": ("network",), "noise": ("a", "b"), "crossed": ("a", "b")}
  return result_rows, report.indicator_rows(values, labels, range(seeds), range(tasks), 5)


def test_indicator_rows_are_tidy_and_in_label_order():
  _, rows = _rows()
  assert len(rows) == 2 * 4 * 2 * (1 + 2 + 2)
  assert rows[0] == {"seed": 0, "task": 0, "evaluation": 0, "step": 5, "indicator": "good",
                     "column": "network", "value": -100.0}
  assert list(dict.fromkeys(r["indicator"] for r in rows)) == ["good", "noise", "crossed"]


def test_task_values_take_the_last_evaluation_and_crossed_gives_rho_hat():
  _, rows = _rows()
  good = report.task_values(rows, "good", "network")
  assert good[(1, 2)] == pytest.approx(2.1)
  rho = report.task_values(rows, "crossed", "any layer")
  assert rho[(0, 1)] == 0.5 and rho[(1, 1)] == 0.0


@pytest.mark.parametrize("a, b, expected", [
    ([1, 2, 3, 4], [10, 20, 30, 40], 1.0), ([1, 2, 3, 4], [4, 3, 2, 1], -1.0),
    ([1, 2, 2, 3], [1, 2, 3, 4], 0.9486833)])
def test_spearman(a, b, expected):
  assert report.spearman(a, b) == pytest.approx(expected, rel=1e-6)


def test_spearman_of_a_constant_is_nan():
  assert np.isnan(report.spearman([1, 1, 1], [1, 2, 3]))


def test_predictor_report_ranks_the_monotone_indicator_first():
  result_rows, rows = _rows()
  table = report.predictor_report([(result_rows, rows), (result_rows, rows)])
  assert table[0]["indicator"] == "good"
  assert table[0]["spearman_next_task"] == pytest.approx(-1.0)
  assert table[0]["n"] == 2 * 2 * 4 and table[0]["n_next"] == 2 * 2 * 3
  assert {r["indicator"] for r in table} == {"good", "noise", "rho_hat"}
  text = report.format_report(table)
  assert text.splitlines()[2].startswith("| good | network | ")


def test_plot_indicators_writes_a_figure(tmp_path):
  result_rows, rows = _rows()
  path = tmp_path / "ind.png"
  report.plot_indicators(result_rows, rows, str(path), "title")
  assert path.stat().st_size > 10_000
