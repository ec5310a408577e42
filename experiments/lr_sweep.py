"""Why the main command's default shows loss of trainability: an Adam lr sweep.

Runs the main command's benchmark (random-label digits, 1,000 images, 100
epochs per task, MLP 64-256-256-10, batch 50) with plain Adam at several fixed
learning rates x seeds, all in ONE compiled program (vmap over keys and the
traced learning rate), and writes a table and a figure of average online
accuracy per task.

    python experiments/lr_sweep.py                  # 3 lrs x 2 seeds x 20 tasks
    python experiments/lr_sweep.py --lrs 1e-3,1e-4 --seeds 4 --tasks 30
"""

from __future__ import annotations

import argparse
import csv
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from trainability import Config, devices, make_train, results


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--lrs", default="1e-3,3e-4,1e-4")
  parser.add_argument("--seeds", type=int, default=2)
  parser.add_argument("--tasks", type=int, default=20)
  parser.add_argument("--epochs", type=int, default=100)
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  args = parser.parse_args(argv)
  devices.use_cpu_cores()  # before JAX's first computation: runs spread over the cores
  lrs = [float(v) for v in args.lrs.split(",")]
  config = Config(tasks=args.tasks, epochs=args.epochs)

  # Grid of (lr, seed): one program, one compilation.
  grid_lr = np.repeat(np.array(lrs, np.float32), args.seeds)
  grid_seed = np.tile(np.arange(args.seeds), len(lrs))
  keys, hparams = devices.shard_runs(
      (jax.vmap(jax.random.key)(grid_seed), {"learning_rate": jnp.asarray(grid_lr)}))
  train = jax.jit(jax.vmap(make_train(config)))
  started = time.time()
  metrics = devices.gather(train(keys, hparams), len(grid_lr))
  online = np.asarray(metrics.online_accuracy)  # (lrs * seeds, tasks)
  seconds = time.time() - started

  os.makedirs(args.out, exist_ok=True)
  table = os.path.join(args.out, "lr_sweep.csv")
  with open(table, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["lr", "seed", "task", "online_accuracy", "final_accuracy"])
    for i in range(len(grid_lr)):
      for t in range(args.tasks):
        writer.writerow([f"{grid_lr[i]:g}", int(grid_seed[i]), t,
                         f"{online[i, t]:.4f}", f"{float(metrics.final_accuracy[i, t]):.4f}"])

  fig = Figure(figsize=(6.4, 3.8), dpi=120)
  ax = fig.subplots()
  print(f"{len(grid_lr)} runs ({len(lrs)} lrs x {args.seeds} seeds) x {args.tasks} tasks "
        f"in {seconds:.1f} s on {jax.default_backend()}")
  print("average online accuracy per task, mean over seeds:")
  for lr in lrs:
    curve = online[grid_lr == np.float32(lr)].mean(0)
    ax.plot(np.arange(1, args.tasks + 1), curve, marker="o", markersize=3, label=f"Adam lr {lr:g}")
    print(f"  lr {lr:g}: " + " ".join(f"{v:.2f}" for v in curve))
  results.accuracy_axis(ax, chance=0.1)
  ax.set_title(f"random-label digits, {args.epochs} epochs/task, mean of {args.seeds} seeds",
               fontsize=9)
  fig.tight_layout()
  figure = os.path.join(args.out, "lr_sweep.png")
  fig.savefig(figure)
  print(f"wrote {table} and {figure}")


if __name__ == "__main__":
  main()
