"""Which beta makes the noise-curvature scheduler keep the default benchmark trainable?

Runs the main command's benchmark (random-label digits, 1,000 images, 100
epochs per task, MLP 64-256-256-10, batch 50, Adam lr 1e-3) with
`--scheduler noise_curvature` at several values of beta (the weight of the
curvature-volatility term in the combined threshold), next to plain Adam, and
writes a table and a figure of average online accuracy per task, and of the
learning rate each layer ends each task with.

    python experiments/scheduler_beta.py                       # ~5 min on 2 CPU cores
    python experiments/scheduler_beta.py --betas 1,1000 --tasks 10 --seeds 2

Once the volatility term dominates, alpha~* ~ B / (beta * Vol): with B = 50
and Vol ~ 0.05 to 0.1 here, beta must reach the thousands before the
threshold comes down to the effective step (~0.2 to 0.3), so the sweep spans
1 to 10,000.
"""

from __future__ import annotations

import argparse
import csv
import os

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

import arms
from trainability import Config, devices, results


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--betas", default="1,100,1000,3000,10000")
  parser.add_argument("--cool", type=float, default=0.99)
  parser.add_argument("--seeds", type=int, default=2)
  parser.add_argument("--tasks", type=int, default=20)
  parser.add_argument("--epochs", type=int, default=100)
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  parser.add_argument("--name", default="scheduler_beta", help="stem of the output files")
  args = parser.parse_args(argv)
  devices.use_cpu_cores()
  base = Config(tasks=args.tasks, epochs=args.epochs, seeds=args.seeds)
  runs = [("adam", base)] + [
      (f"beta {float(b):g}", base.replace(scheduler="noise_curvature", beta=float(b),
                                          cool=args.cool, **arms.EARLIER_SCHEDULER))
      for b in args.betas.split(",")]
  os.makedirs(args.out, exist_ok=True)
  table = os.path.join(args.out, f"{args.name}.csv")
  curves, lrs = {}, {}
  with open(table, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(arms.HEADER)
    for name, config in runs:
      arm = arms.run(name, config, writer)
      f.flush()
      curves[name] = arm.online.mean(0)
      if arm.multipliers is not None:
        lrs[name] = arm.multipliers[:, :, -1, :].mean(0)  # at task ends

  fig = Figure(figsize=(11, 3.8), dpi=120)
  left, right = fig.subplots(1, 2)
  x = np.arange(1, args.tasks + 1)
  for name, curve in curves.items():
    left.plot(x, curve, marker="o", markersize=3, label=name)
  results.accuracy_axis(left, chance=0.1)
  left.set_title(f"mean of {args.seeds} seeds; scheduler cool={args.cool:g}", fontsize=9)
  for name, multipliers in lrs.items():
    right.plot(x, 1e-3 * multipliers.mean(-1), marker="o", markersize=3, label=name)
  right.set(xlabel="task", ylabel="learning rate at task end (mean of layers)", yscale="log")
  right.xaxis.set_major_locator(MaxNLocator(integer=True))
  right.grid(alpha=0.3)
  right.legend(fontsize=7)
  fig.tight_layout()
  figure = os.path.join(args.out, f"{args.name}.png")
  fig.savefig(figure)
  print(f"wrote {table} and {figure}")


if __name__ == "__main__":
  main()
