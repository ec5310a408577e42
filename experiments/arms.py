"""Shared by the experiment scripts: train one arm (a Config) and write its rows.

An arm is one Config run for all its seeds in one compiled program
(`jax.jit(jax.vmap(train))`, seeds split over the CPU cores). Its rows go to
the table CSV as soon as it finishes, so an interrupted sweep keeps the arms
that are done.
"""

from __future__ import annotations

import csv
import time
from typing import Callable, NamedTuple

import jax
import numpy as np

from trainability import Config, devices, make_trainer, results, seed_keys

# The scheduler these experiments were run with, before issue 10 made Lanczos
# the curvature estimator and "reference" the default threshold: Eq. (2)-(3)
# and one warm-started power iteration per check. Their committed results
# come from it; the scripts keep it so that they reproduce them.
# scheduler_modes.py uses the current defaults.
EARLIER_SCHEDULER = {"threshold": "paper", "curvature": "power", "curvature_steps": 1}

HEADER = ["arm", "seed", "task", "online_accuracy", "final_accuracy", "rho_hat",
          "lr_multiplier_per_layer"]


class Arm(NamedTuple):
  online: np.ndarray            # (seeds, tasks) average online accuracy
  multipliers: np.ndarray | None  # (seeds, tasks, checks, layers), scheduled arms only
  metrics: object               # the TaskMetrics
  layer_names: tuple


def run(name: str, config: Config, writer) -> Arm:
  """Trains `config`'s seeds, writes one row per seed x task, prints a summary line."""
  trainer = make_trainer(config)
  started = time.time()
  metrics = devices.gather(jax.jit(jax.vmap(trainer.train))(
      devices.shard_runs(seed_keys(config))), config.seeds)
  online = np.asarray(metrics.online_accuracy)
  final = np.asarray(metrics.final_accuracy)
  rho = multipliers = None
  if metrics.checks is not None:
    rho = results.rho_hat(metrics.checks.crossed)
    multipliers = np.asarray(metrics.checks.multiplier)
  for s in range(config.seeds):
    for t in range(config.tasks):
      writer.writerow([
          name, s, t, f"{online[s, t]:.4f}", f"{final[s, t]:.4f}",
          "" if rho is None else f"{rho[s, t]:.3f}",
          "" if multipliers is None else " ".join(f"{m:.4g}" for m in multipliers[s, t, -1])])
  print(f"{name:>16} ({time.time() - started:5.1f} s): "
        + " ".join(f"{v:.2f}" for v in online.mean(0)), flush=True)
  return Arm(online, multipliers, metrics, trainer.layer_names)


def choices(text: str, accepted, flag: str) -> list[str]:
  """A comma list of names from `accepted`; exits with one line naming the flag otherwise."""
  chosen = text.split(",")
  for c in chosen:
    if c not in accepted:
      raise SystemExit(f"{flag}: {c!r} is not accepted; choose from {', '.join(accepted)}")
  return chosen


def run_all(runs, csv_path: str, after_arm: Callable | None = None) -> dict[str, Arm]:
  """Runs [(name, ..., config)] in order into one CSV; {name: Arm}.

  after_arm(name, config, done) runs after each arm (its rows are flushed
  first), so a sweep can write its tables and figures as it goes.
  """
  done = {}
  with open(csv_path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(HEADER)
    for name, *_, config in runs:
      done[name] = run(name, config, writer)
      f.flush()
      if after_arm is not None:
        after_arm(name, config, done)
  return done
