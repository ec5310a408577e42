"""Indicator outputs of a run: the tidy table, the paper's Figure 1, the predictor report.

* `indicator_rows`: one row per seed x task x evaluation x indicator x column
  of `TaskMetrics.indicators` (written to indicators.csv by the CLI).
* `task_values`: an indicator column's value at the end of each task (its
  last evaluation); for `crossed`, rho_hat: the fraction of the task's
  evaluations at which some layer's step exceeded alpha~*.
* `plot_indicators` (paper Fig. 1): task accuracy against each indicator on
  twin axes.
* `predictor_report`: for each indicator column, Spearman's rank correlation
  of its end-of-task value with the average online accuracy of the same task
  and of the next task, over every (run, seed, task); the quantitative form
  of the paper's Figures 1 and 4.
"""

from __future__ import annotations

import csv
import os
from typing import Sequence

import numpy as np

from trainability import results

INDICATORS_FILE = "indicators.csv"
INDICATORS_PLOT_FILE = "indicators.png"
REPORT_FILE = "predictor_report.csv"


def indicator_rows(values: dict, labels: dict, seeds: Sequence[int], task_ids: Sequence[int],
                   every: int) -> list[dict]:
  """Rows from {name: (seeds, tasks, evaluations, columns)} arrays, in `labels` order."""
  rows = []
  for name in (n for n in labels if n in values):
    array = np.asarray(values[name], dtype=float)
    for s, seed in enumerate(seeds):
      for j, task in enumerate(task_ids):
        for e in range(array.shape[2]):
          for c, column in enumerate(labels[name]):
            rows.append({"seed": int(seed), "task": int(task), "evaluation": e,
                         "step": (e + 1) * every, "indicator": name, "column": column,
                         "value": float(array[s, j, e, c])})
  return rows


def read_indicator_rows(path: str) -> list[dict]:
  with open(path, newline="") as f:
    return [{"seed": int(r["seed"]), "task": int(r["task"]), "evaluation": int(r["evaluation"]),
             "step": int(r["step"]), "indicator": r["indicator"], "column": r["column"],
             "value": float(r["value"])} for r in csv.DictReader(f)]


def series(rows: Sequence[dict]) -> list[tuple[str, str]]:
  """The (indicator, column) pairs of the rows, in first-seen order; rho_hat for crossed."""
  pairs = dict.fromkeys((r["indicator"], "any layer" if r["indicator"] == "crossed"
                         else r["column"]) for r in rows)
  return list(pairs)


def task_values(rows: Sequence[dict], indicator: str, column: str) -> dict:
  """{(seed, task): value at the task's last evaluation}; crossed: rho_hat of the task."""
  if indicator == "crossed":
    any_layer = {}
    for r in rows:
      if r["indicator"] == "crossed":
        key = (r["seed"], r["task"], r["evaluation"])
        any_layer[key] = max(any_layer.get(key, 0.0), r["value"])
    out = {}
    for (seed, task, _), v in any_layer.items():
      out.setdefault((seed, task), []).append(v)
    return {k: float(np.mean(v)) for k, v in out.items()}
  last = {}
  for r in rows:
    if r["indicator"] == indicator and r["column"] == column:
      key = (r["seed"], r["task"])
      if key not in last or r["evaluation"] > last[key][0]:
        last[key] = (r["evaluation"], r["value"])
  return {k: v for k, (_, v) in last.items()}


def plot_indicators(result_rows: Sequence[dict], rows: Sequence[dict], path: str,
                    title: str = "") -> None:
  """Paper Fig. 1: online accuracy per task (left axis) against each indicator (right).

  One panel per indicator; one line per column (network and layers), each the
  end-of-task value averaged over seeds; `crossed` is drawn as rho_hat.
  """
  from matplotlib.figure import Figure

  task_ids, accuracy = results.per_task(result_rows, "online_accuracy")
  names = list(dict.fromkeys(r["indicator"] for r in rows))
  cols = min(4, max(len(names), 1))
  grid_rows = -(-max(len(names), 1) // cols)
  fig = Figure(figsize=(4.0 * cols, 2.9 * grid_rows), dpi=110)
  axes = np.atleast_1d(fig.subplots(grid_rows, cols, squeeze=False)).ravel()
  x = task_ids + 1
  for ax, name in zip(axes, names):
    ax.plot(x, accuracy.mean(0), color="black", linewidth=1.5, label="online accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(name if name != "crossed" else "rho_hat (crossed)", fontsize=9)
    twin = ax.twinx()
    for indicator, column in series(rows):
      if indicator != name:
        continue
      by_task = task_values(rows, indicator, column)
      seeds = sorted({s for s, _ in by_task})
      y = [np.mean([by_task[(s, t)] for s in seeds if (s, t) in by_task]) for t in task_ids]
      twin.plot(x, y, linewidth=1.0, label=column)
    if any(v > 0 for line in twin.get_lines() for v in line.get_ydata()) and name in (
        "weight_norm", "gradient_norm", "update_norm", "grad_param_ratio", "alpha_g",
        "alpha_vol", "alpha_tilde", "hessian_trace", "vol"):
      twin.set_yscale("symlog", linthresh=1e-6)
    twin.tick_params(labelsize=7)
    ax.tick_params(labelsize=7)
    if name == names[0]:
      ax.set_ylabel("online accuracy", fontsize=8)
    handles = twin.get_lines()
    if 1 < len(handles) <= 6:
      twin.legend(fontsize=6, loc="upper right")
  for ax in axes[len(names):]:
    ax.set_visible(False)
  for ax in axes[-cols:]:
    ax.set_xlabel("task", fontsize=8)
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path)


def spearman(a, b) -> float:
  """Spearman's rank correlation (average ranks for ties); NaN if either is constant."""
  a, b = _ranks(np.asarray(a, float)), _ranks(np.asarray(b, float))
  if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
    return float("nan")
  return float(np.corrcoef(a, b)[0, 1])


def _ranks(x):
  order = np.argsort(x, kind="stable")
  ranks = np.empty(len(x))
  ranks[order] = np.arange(len(x), dtype=float)
  for value in np.unique(x):  # ties share their mean rank
    tied = x == value
    if tied.sum() > 1:
      ranks[tied] = ranks[tied].mean()
  return ranks


def predictor_report(runs: Sequence[tuple[Sequence[dict], Sequence[dict]]]) -> list[dict]:
  """One row per (indicator, column): rank correlations with accuracy, over all runs.

  runs: (result rows, indicator rows) per run. For each indicator column, the
  pairs are (end-of-task value of task t, online accuracy of task t) and
  (end-of-task value of task t, online accuracy of task t + 1), pooled over
  every run, seed and task; `n` and `n_next` count them. Rows are sorted by
  the absolute next-task correlation, the better predictor first.
  """
  pairs = []
  for _, rows in runs:
    for p in series(rows):
      if p not in pairs:
        pairs.append(p)
  report = []
  for indicator, column in pairs:
    now, now_acc, nxt, nxt_acc = [], [], [], []
    for result_rows, rows in runs:
      acc = {(r["seed"], r["task"]): r["online_accuracy"] for r in result_rows}
      for (seed, task), value in task_values(rows, indicator, column).items():
        if (seed, task) in acc:
          now.append(value)
          now_acc.append(acc[(seed, task)])
        if (seed, task + 1) in acc:
          nxt.append(value)
          nxt_acc.append(acc[(seed, task + 1)])
    label = "rho_hat" if indicator == "crossed" else indicator
    report.append({"indicator": label, "column": column,
                   "spearman_same_task": spearman(now, now_acc), "n": len(now),
                   "spearman_next_task": spearman(nxt, nxt_acc), "n_next": len(nxt)})
  key = lambda r: -abs(r["spearman_next_task"]) if np.isfinite(r["spearman_next_task"]) else 1
  return sorted(report, key=key)


def format_report(report: Sequence[dict]) -> str:
  """The report as a markdown table."""
  lines = ["| indicator | column | rank corr. with same-task accuracy | with next-task accuracy "
           "| pairs (same / next) |", "| --- | --- | --- | --- | --- |"]
  fmt = lambda v: "n/a" if not np.isfinite(v) else f"{v:+.2f}"
  for r in report:
    lines.append(f"| {r['indicator']} | {r['column']} | {fmt(r['spearman_same_task'])} | "
                 f"{fmt(r['spearman_next_task'])} | {r['n']} / {r['n_next']} |")
  return "\n".join(lines)


def write_report(report: Sequence[dict], path: str) -> None:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=["indicator", "column", "spearman_same_task", "n",
                                           "spearman_next_task", "n_next"])
    writer.writeheader()
    writer.writerows(report)
