"""Run outputs: a tidy CSV (one row per seed x task) and the accuracy plot."""

from __future__ import annotations

import csv
import math
import os
from typing import Callable, Iterable, Sequence

import numpy as np

RESULTS_FILE = "results.csv"
CONFIG_FILE = "config.json"
PLOT_FILE = "online_accuracy.png"
CHECKS_FILE = "checks.csv"
SCHEDULER_PLOT_FILE = "scheduler.png"


def ceiling_summary(rows: Sequence[dict], ceiling: float) -> str | None:
  """One line on the checks whose multiplier was held at the ceiling, or None."""
  held = [r for r in rows if str(r.get("at_ceiling")) == "True"]
  if not held:
    return None
  layers = sorted({r["layer"] for r in held})
  return (f"scheduler: a multiplier was held at the ceiling (max_multiplier {ceiling:g}) in "
          f"{len(held)} of {len(rows)} layer checks, layers {', '.join(layers)}, from task "
          f"{min(int(r['task']) for r in held) + 1}")


def output_directory(path: str, field: str = "out") -> str:
  """Makes `path` (and its parents) and checks that files can be written in it.

  A path that cannot be made or written to stops with one line naming the
  field, the path and the reason (ConfigError), before any work is done.
  """
  from trainability.settings import ConfigError
  import tempfile

  try:
    os.makedirs(path, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
      pass
  except OSError as error:
    reason = error.strerror or str(error)
    raise ConfigError(f"{field}: cannot write to {path}: {reason}; give a directory you "
                      "can write to") from None
  return path


def metric_rows(metrics, seeds: Sequence[int], task_ids: Sequence[int],
                heldout: bool) -> list[dict]:
  """Rows from a TaskMetrics of shape (seeds, tasks); heldout column only when measured."""
  values = {name: np.asarray(v) for name, v in metrics._asdict().items() if name != "records"}
  if not heldout:
    values.pop("heldout_accuracy")
  if metrics.checks is not None:  # the scheduler's own checks, on training minibatches
    values["rho_hat"] = rho_hat(metrics.checks.crossed)
  elif metrics.indicators is not None and "crossed" in metrics.indicators:
    values["rho_hat"] = rho_hat(metrics.indicators["crossed"])
  rows = []
  for s, seed in enumerate(seeds):
    for j, task in enumerate(task_ids):
      row = {"seed": int(seed), "task": int(task)}
      row.update({name: float(v[s, j]) for name, v in values.items()})
      rows.append(row)
  return rows


def rho_hat(crossed) -> np.ndarray:
  """Fraction of a task's checks at which some layer's step exceeded alpha~*.

  `crossed` (a Check's, or the `crossed` indicator) has shape
  (..., checks, layers); the result (...,).
  """
  return np.asarray(crossed).any(-1).mean(-1)


def check_rows(checks, seeds: Sequence[int], task_ids: Sequence[int],
               layer_names: Sequence[str], ceiling: float = math.inf) -> list[dict]:
  """One row per seed x task x check x layer with every quantity of the check.

  `checks` is a signals.Check whose fields have shape (seeds, tasks, checks, layers).
  With a finite `ceiling` (the scheduler's max_multiplier) the rows also say
  whether the layer's multiplier is held at it (`at_ceiling`).
  """
  fields = {name: np.asarray(v) for name, v in checks._asdict().items()}
  step = fields.pop("step")
  rows = []
  for s, seed in enumerate(seeds):
    for j, task in enumerate(task_ids):
      for c in range(step.shape[2]):
        for l, layer in enumerate(layer_names):
          row = {"seed": int(seed), "task": int(task), "check": c,
                 "step": int(step[s, j, c]),
                 "layer": layer}
          row.update({name: float(v[s, j, c, l]) for name, v in fields.items()})
          if math.isfinite(ceiling):
            row["at_ceiling"] = bool(row["multiplier"] >= ceiling * (1 - 1e-6))
          rows.append(row)
  return rows


class ResultsWriter:
  """Appends rows to a CSV and forces them to disk, so an interrupted run keeps them."""

  def __init__(self, path: str):
    self.path = path
    self.rows: list[dict] = []

  def resume(self, keep: Callable[[dict], bool], read: Callable[[str], list[dict]] | None = None):
    """Continues an existing file: keeps its rows for which keep(row as strings) holds.

    read(path) parses the kept rows into `rows` (default `read_rows`).
    """
    if keep_rows(self.path, keep):
      self.rows = (read or read_rows)(self.path)

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


def _whole_lines(path: str) -> list[str]:
  """The lines of a CSV with their line ends; a last line cut short by a kill is dropped."""
  if not os.path.exists(path):
    return []
  with open(path, newline="") as f:
    return [line for line in f.readlines() if line.endswith("\n")]


def tasks_per_run(path: str, run_columns: Sequence[str] = ("seed",)) -> dict[tuple, set]:
  """{run (its run_columns' values, as strings): the tasks a CSV holds for it}; cut lines
  ignored."""
  runs: dict[tuple, set] = {}
  for row in csv.DictReader(_whole_lines(path)):
    runs.setdefault(tuple(row[c] for c in run_columns), set()).add(row["task"])
  return runs


def finished_tasks(path: str) -> int:
  """How many tasks a results CSV holds for every seed it names (cut lines ignored)."""
  tasks = list(tasks_per_run(path).values())
  return len(set.intersection(*tasks)) if tasks else 0


def keep_rows(path: str, keep: Callable[[dict], bool]) -> int:
  """Rewrites a CSV keeping, byte for byte, the rows (as strings) for which keep(row) holds.

  For resuming: the rows of tasks after the checkpoint are dropped and computed
  again. The file is replaced atomically. Returns the rows kept.
  """
  lines = _whole_lines(path)
  if not lines:
    return 0
  header = next(csv.reader([lines[0]]))
  kept = [line for line in lines[1:] if keep(dict(zip(header, next(csv.reader([line])))))]
  partial = path + ".partial"
  with open(partial, "w", newline="") as f:
    f.writelines(lines[:1] + kept)
    f.flush()
    os.fsync(f.fileno())
  os.replace(partial, path)
  return len(kept)


def read_rows(path: str) -> list[dict]:
  """Rows of a results or checks CSV with numbers parsed (the layer stays a name)."""
  integers = ("seed", "task", "check", "step")
  with open(path, newline="") as f:
    return [
        {k: (int(v) if k in integers else v if k == "layer" else float(v))
         for k, v in row.items()}
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

  task_ids, values = per_task(rows, "online_accuracy")
  fig = Figure(figsize=(6.4, 3.8), dpi=120)
  ax = fig.subplots()
  if len(task_ids):
    x = task_ids + 1
    ax.fill_between(x, values.min(0), values.max(0), alpha=0.25, linewidth=0,
                    label=f"min-max over {values.shape[0]} seeds")
    ax.plot(x, values.mean(0), marker="o", markersize=3, label="mean over seeds")
  accuracy_axis(ax, chance if len(task_ids) else None, legend=bool(len(task_ids)))
  if title:
    ax.set_title(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path)


def accuracy_axis(ax, chance: float | None = None, legend: bool = True) -> None:
  """Styles an axis of accuracy per task: integer tasks, [0, 1], grid, chance line."""
  from matplotlib.ticker import MaxNLocator

  if chance is not None:
    ax.axhline(chance, color="gray", linestyle="--", linewidth=1, label=f"chance ({chance:g})")
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_xlabel("task")
  ax.set_ylabel("average online accuracy")
  ax.set_ylim(0.0, 1.02)
  ax.grid(alpha=0.3)
  if legend:
    ax.legend(loc="upper right", fontsize=8)


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


def plot_scheduler(rows: Sequence[dict], path: str, base_lr: float, title: str = "") -> None:
  """Per layer: effective step against the thresholds, and the learning rate.

  Top row (paper Fig. 3), first seed: the effective step alpha against
  alpha*_g, alpha*_vol and alpha~* at every check, on a log scale (unbounded
  values are not drawn). Bottom row (paper Fig. 6): the layer's learning rate,
  base_lr times its multiplier, mean over seeds. x: tasks (check positions as
  fractions of a task).
  """
  from matplotlib.figure import Figure
  from trainability.estimators import UNBOUNDED

  layers = list(dict.fromkeys(r["layer"] for r in rows))
  seeds = sorted({r["seed"] for r in rows})
  checks_per_task = 1 + max((r["check"] for r in rows), default=0)
  fig = Figure(figsize=(4.0 * max(len(layers), 1), 6.4), dpi=110)
  axes = fig.subplots(2, max(len(layers), 1), squeeze=False, sharex=True)
  for col, layer in enumerate(layers):
    mine = [r for r in rows if r["layer"] == layer]
    first = sorted((r for r in mine if r["seed"] == seeds[0]), key=lambda r: (r["task"], r["check"]))
    x = np.array([r["task"] + (r["check"] + 1) / checks_per_task for r in first])
    top = axes[0, col]
    for key, label, style in (("alpha", "effective step", "-"), ("alpha_tilde", "alpha~*", "-"),
                              ("alpha_g", "alpha*_g", ":"), ("alpha_vol", "alpha*_vol", "--")):
      y = np.array([r[key] for r in first], dtype=float)
      y = np.where((y > 0) & (y < 0.1 * UNBOUNDED), y, np.nan)
      top.plot(x, y, style, linewidth=1.2 if key in ("alpha", "alpha_tilde") else 0.9, label=label)
    top.set_yscale("log")
    top.set_title(f"{layer} (seed {seeds[0]})", fontsize=9)
    top.grid(alpha=0.3)
    bottom = axes[1, col]
    lr = np.array([[r["multiplier"] for r in sorted(
        (r for r in mine if r["seed"] == s), key=lambda r: (r["task"], r["check"]))] for s in seeds])
    bottom.plot(x, base_lr * lr.mean(0), label=f"mean of {len(seeds)} seeds")
    bottom.set_yscale("log")
    bottom.set_xlabel("task")
    bottom.grid(alpha=0.3)
  axes[0, 0].set_ylabel("step size")
  axes[0, 0].legend(fontsize=7)
  axes[1, 0].set_ylabel("learning rate of the layer")
  axes[1, 0].legend(fontsize=7)
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path)
