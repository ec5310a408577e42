"""Run outputs: a tidy CSV (one row per seed x task) and the accuracy plot."""

from __future__ import annotations

import csv
import math
import os
from typing import Iterable, Sequence

import numpy as np

RESULTS_FILE = "results.csv"
CONFIG_FILE = "config.json"
PLOT_FILE = "online_accuracy.png"


def metric_rows(metrics, seeds: Sequence[int], task_ids: Sequence[int],
                heldout: bool) -> list[dict]:
  """Rows from a TaskMetrics of shape (seeds, tasks); heldout column only when measured."""
  values = {name: np.asarray(v) for name, v in metrics._asdict().items()}
  if not heldout:
    values.pop("heldout_accuracy")
  rows = []
  for s, seed in enumerate(seeds):
    for j, task in enumerate(task_ids):
      row = {"seed": int(seed), "task": int(task)}
      row.update({name: float(v[s, j]) for name, v in values.items()})
      rows.append(row)
  return rows


class ResultsWriter:
  """Appends rows to a CSV and forces them to disk, so an interrupted run keeps them."""

  def __init__(self, path: str):
    self.path = path
    self.rows: list[dict] = []

  def write(self, rows: list[dict]):
    if not rows:
      return
    new_file = not self.rows
    with open(self.path, "w" if new_file else "a", newline="") as f:
      writer = csv.DictWriter(f, fieldnames=list(rows[0]))
      if new_file:
        writer.writeheader()
      writer.writerows(rows)
      f.flush()
      os.fsync(f.fileno())
    self.rows.extend(rows)


def read_rows(path: str) -> list[dict]:
  with open(path, newline="") as f:
    return [
        {k: (int(v) if k in ("seed", "task") else float(v)) for k, v in row.items()}
        for row in csv.DictReader(f)
    ]


def per_task(rows: Iterable[dict], metric: str) -> tuple[np.ndarray, np.ndarray]:
  """(task ids, values of shape (seeds, tasks)) for tasks every seed finished."""
  rows = list(rows)
  seeds = sorted({r["seed"] for r in rows})
  by_seed = {s: {r["task"]: r[metric] for r in rows if r["seed"] == s} for s in seeds}
  done = sorted(set.intersection(*(set(v) for v in by_seed.values()))) if seeds else []
  values = np.array([[by_seed[s][t] for t in done] for s in seeds], dtype=float)
  return np.array(done, dtype=int), values.reshape(len(seeds), len(done))


def plot_online_accuracy(rows: Sequence[dict], path: str, title: str = "",
                         chance: float | None = None) -> None:
  """Mean over seeds of average online accuracy per task, with min-max spread."""
  # The Figure API needs no pyplot backend: safe headless and inside notebooks.
  from matplotlib.figure import Figure
  from matplotlib.ticker import MaxNLocator

  task_ids, values = per_task(rows, "online_accuracy")
  fig = Figure(figsize=(6.4, 3.8), dpi=120)
  ax = fig.subplots()
  if len(task_ids):
    x = task_ids + 1
    ax.fill_between(x, values.min(0), values.max(0), alpha=0.25, linewidth=0,
                    label=f"min-max over {values.shape[0]} seeds")
    ax.plot(x, values.mean(0), marker="o", markersize=3, label="mean over seeds")
    if chance is not None:
      ax.axhline(chance, color="gray", linestyle="--", linewidth=1, label=f"chance ({chance:g})")
    ax.legend(loc="upper right", fontsize=8)
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_xlabel("task")
  ax.set_ylabel("average online accuracy")
  ax.set_ylim(0.0, 1.02)
  ax.grid(alpha=0.3)
  if title:
    ax.set_title(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path)


def summary(rows: Sequence[dict]) -> str:
  task_ids, values = per_task(rows, "online_accuracy")
  if not len(task_ids):
    return "no task finished"
  means = values.mean(0)
  best = int(np.argmax(means))
  fmt = lambda v: "nan" if math.isnan(v) else f"{v:.3f}"
  return (
      f"average online accuracy (mean over {values.shape[0]} seeds): "
      f"task 1 {fmt(means[0])}, best task {task_ids[best] + 1} {fmt(means[best])}, "
      f"last task {task_ids[-1] + 1} {fmt(means[-1])}"
  )
