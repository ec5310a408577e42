"""Every baseline against loss of trainability, plain and with the scheduler.

Runs on the main command's benchmark (random-label digits, 1,000 images, 100
epochs per task, MLP 64-256-256-10, batch 50, Adam lr 1e-3): plain Adam, each
remedy of method.md section 6 at one setting from its paper or the reference
code (not tuned here), and each of them again with the noise-curvature
scheduler at the setting tuned on plain Adam (beta 1e5, cool 0.9, warm window
0.1; see scheduler_arms.py). Writes

* `<name>.csv`: one row per arm x seed x task (arms.HEADER);
* `<name>_table.csv`: per arm, the average online accuracy of each task (mean
  over seeds) and its mean over tasks;
* `<name>.png`: average online accuracy per task, one panel per baseline, plain
  and with the scheduler, plain Adam in grey for reference.

    python experiments/baselines.py                       # 32 arms x 2 seeds x 20 tasks
    python experiments/baselines.py --baselines adam,cbp --tasks 5 --seeds 2
"""

from __future__ import annotations

import argparse
import csv
import os

import numpy as np
from matplotlib.figure import Figure

import arms
from trainability import Config, devices, results

# name -> (config changes, what it is). Settings: the paper or reference code's.
BASELINES = {
    "adam": ({}, "plain Adam"),
    "l2": ({"l2": 1e-3}, "coupled L2 1e-3 (torch weight_decay; the paper's arm)"),
    "adamw": ({"optimizer": "adamw", "weight_decay": 0.1}, "AdamW, decoupled decay 0.1"),
    "l2_init": ({"regularizer": "l2_init", "reg_coef": 1e-3}, "L2-init 1e-3 (Kumar et al.)"),
    "spectral": ({"regularizer": "spectral", "reg_coef": 1e-3},
                 "spectral (sigma_max^2 - 1)^2, 1e-3 (reference)"),
    "orthogonal": ({"regularizer": "orthogonal", "reg_coef": 1e-4},
                   "orthogonality ||W W^T - I||_F^2, 1e-4"),
    "crelu": ({"activation": "crelu"}, "CReLU"),
    "fourier": ({"activation": "fourier"}, "Fourier features sin/cos (Lewandowski et al.)"),
    "linear": ({"activation": "identity"}, "deep linear network"),
    "layernorm": ({"norm": "layernorm"}, "LayerNorm after each hidden layer"),
    "batchnorm": ({"norm": "batchnorm"}, "BatchNorm after each hidden layer"),
    "shrink_perturb": ({"shrink_perturb": "step", "shrink": 1e-4, "perturb": 1e-4},
                       "shrink & perturb every step, 1e-4 / N(0, 1e-4^2)"),
    "cbp": ({"unit_reset": "cbp"}, "continual backprop (rate 1e-4, maturity 100, decay 0.99)"),
    "redo": ({"unit_reset": "redo"}, "ReDo (every 1000 steps, tau 0.1)"),
    "reset": ({"reset": "both"}, "reset model and optimizer at each task"),
    # Last: its per-tensor sort makes a step about 10x slower on a CPU (XLA's sort).
    "wasserstein": ({"regularizer": "wasserstein", "reg_coef": 1e-3},
                    "Wasserstein to init 1e-3 (Lewandowski et al.; reference 1e-3)"),
}
SCHEDULERS = {
    "none": {},
    "tuned": {"scheduler": "noise_curvature", "beta": 1e5, "cool": 0.9, "warm_fraction": 0.1,
              **arms.EARLIER_SCHEDULER},
    "paper": {"scheduler": "noise_curvature", **arms.EARLIER_SCHEDULER},
}


def arm_configs(base: Config, baselines, schedulers):
  """[(arm name, baseline, scheduler, Config)] in run order."""
  out = []
  for b in baselines:
    for s in schedulers:
      config = base.replace(**BASELINES[b][0], **SCHEDULERS[s])
      out.append((b if s == "none" else f"{b} + {s}", b, s, config))
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--baselines", default=",".join(BASELINES), help=", ".join(BASELINES))
  parser.add_argument("--schedulers", default="none,tuned", help=", ".join(SCHEDULERS))
  parser.add_argument("--seeds", type=int, default=2)
  parser.add_argument("--tasks", type=int, default=20)
  parser.add_argument("--epochs", type=int, default=100)
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  parser.add_argument("--name", default="baselines", help="stem of the output files")
  args = parser.parse_args(argv)
  baselines = arms.choices(args.baselines, BASELINES, "--baselines")
  schedulers = arms.choices(args.schedulers, SCHEDULERS, "--schedulers")
  runs = arm_configs(Config(tasks=args.tasks, epochs=args.epochs, seeds=args.seeds),
                     baselines, schedulers)
  devices.use_cpu_cores()
  os.makedirs(args.out, exist_ok=True)
  stem = os.path.join(args.out, args.name)

  def after_arm(name, config, done):  # an interrupted sweep keeps the arms that are done
    _write_table(runs, done, f"{stem}_table.csv")
    _plot(runs, done, baselines, schedulers, args, f"{stem}.png")

  arms.run_all(runs, f"{stem}.csv", after_arm)
  print(f"wrote {stem}.csv, {stem}_table.csv and {stem}.png")


def _write_table(runs, done, path):
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    tasks = next(iter(done.values())).online.shape[1]
    writer.writerow(["arm", "baseline", "scheduler", "mean_online_accuracy"]
                    + [f"task_{t + 1}" for t in range(tasks)])
    for name, b, s, _ in runs:
      if name in done:
        per_task = done[name].online.mean(0)
        writer.writerow([name, b, s, f"{per_task.mean():.4f}"]
                        + [f"{v:.4f}" for v in per_task])


def _plot(runs, done, baselines, schedulers, args, path):
  cols = min(4, len(baselines))
  rows = -(-len(baselines) // cols)
  fig = Figure(figsize=(3.4 * cols, 2.7 * rows), dpi=120)
  axes = np.atleast_1d(fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)).ravel()
  x = np.arange(1, args.tasks + 1)
  reference = done.get("adam")
  for ax, b in zip(axes, baselines):
    if reference is not None and b != "adam":
      ax.plot(x, reference.online.mean(0), color="0.7", lw=1, label="adam")
    for name, base, s, _ in runs:
      if base == b and name in done:
        online = done[name].online.mean(0)
        ax.plot(x, online, marker="o", markersize=2,
                label=f"{'plain' if s == 'none' else '+ ' + s} ({online.mean():.2f})")
    results.accuracy_axis(ax, chance=0.1, legend=False)
    ax.set_title(b, fontsize=9)
    ax.legend(fontsize=6, loc="lower left")
  for ax in axes[len(baselines):]:
    ax.set_visible(False)
  fig.suptitle(f"average online accuracy per task, mean of {args.seeds} seeds "
               f"(schedulers: {', '.join(schedulers)})", fontsize=9)
  fig.tight_layout()
  fig.savefig(path)


if __name__ == "__main__":
  main()
