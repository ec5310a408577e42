"""The paper's arms (vanilla Adam, L2, CReLU), each plain and with the scheduler.

Paper Table 1 / Figures 3 and 6 on the main command's benchmark (random-label
digits, 1,000 images, 100 epochs per task, MLP 64-256-256-10, batch 50, Adam lr
1e-3). Each base arm runs plain, with the scheduler at the paper's defaults
(beta 1, cool 0.99), and at the setting tuned on vanilla Adam
(beta 1e5, cool 0.9, warm window 0.1 of a task as in the reference code; see
`scheduler_beta.py` and experiments/README.md). Writes

* `<name>.csv`: one row per arm x seed x task (online and final accuracy,
  rho_hat, each layer's learning-rate multiplier at the task's end);
* `<name>.png`: average online accuracy per task, one panel per base arm;
* `<name>_lr.png` (paper Fig. 6): each layer's learning rate at every check,
  mean over seeds, one panel per scheduled arm;
* `<name>_steps.png` (paper Fig. 3): for one scheduled arm (`--steps-arm`),
  each layer's effective step against alpha*_g, alpha*_vol and alpha~*.

    python experiments/scheduler_arms.py                  # 9 arms x 2 seeds x 40 tasks, ~12 min
    python experiments/scheduler_arms.py --bases adam --schedulers none,tuned --tasks 5
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from matplotlib.figure import Figure

import arms
from trainability import Config, devices, results

BASES = {"adam": {}, "l2": {"l2": 1e-3}, "crelu": {"activation": "crelu"}}
SCHEDULERS = ("none", "paper", "tuned")


def arm_configs(base: Config, bases, schedulers, beta, cool, warm_fraction):
  """[(arm name, base name, scheduler name, Config)] in run order."""
  settings = {"paper": {"beta": 1.0, "cool": 0.99, "warm_fraction": 0.3},
              "tuned": {"beta": beta, "cool": cool, "warm_fraction": warm_fraction}}
  out = []
  for b in bases:
    for s in schedulers:
      config = base.replace(**BASES[b])
      if s != "none":
        config = config.replace(scheduler="noise_curvature", **settings[s],
                                **arms.EARLIER_SCHEDULER)
      out.append((b if s == "none" else f"{b} + {s}", b, s, config))
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--bases", default=",".join(BASES), help="adam, l2, crelu")
  parser.add_argument("--schedulers", default=",".join(SCHEDULERS), help="none, paper, tuned")
  parser.add_argument("--beta", type=float, default=1e5, help="beta of the tuned setting")
  parser.add_argument("--cool", type=float, default=0.9, help="cool of the tuned setting")
  parser.add_argument("--warm-fraction", type=float, default=0.1,
                      help="warm window of the tuned setting, as a fraction of a task")
  parser.add_argument("--steps-arm", default="adam + tuned",
                      help="scheduled arm whose steps and thresholds <name>_steps.png shows")
  parser.add_argument("--seeds", type=int, default=2)
  parser.add_argument("--tasks", type=int, default=40)
  parser.add_argument("--epochs", type=int, default=100)
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  parser.add_argument("--name", default="scheduler_arms", help="stem of the output files")
  args = parser.parse_args(argv)
  bases = arms.choices(args.bases, BASES, "--bases")
  schedulers = arms.choices(args.schedulers, SCHEDULERS, "--schedulers")
  runs = arm_configs(Config(tasks=args.tasks, epochs=args.epochs, seeds=args.seeds),
                     bases, schedulers, args.beta, args.cool, args.warm_fraction)
  scheduled = [name for name, _, s, _ in runs if s != "none"]
  if scheduled and args.steps_arm not in scheduled:
    raise SystemExit(f"--steps-arm: {args.steps_arm!r} is not accepted; choose from "
                     f"{', '.join(scheduled)}")
  devices.use_cpu_cores()
  os.makedirs(args.out, exist_ok=True)
  stem = os.path.join(args.out, args.name)

  def after_arm(name, config, done):
    if name == args.steps_arm:
      rows = results.check_rows(done[name].metrics.checks, range(config.seeds),
                                range(config.tasks), done[name].layer_names)
      results.plot_scheduler(rows, f"{stem}_steps.png", base_lr=config.lr,
                             title=f"{name} (beta {config.beta:g}, cool {config.cool:g}, "
                                   f"warm window {config.warm_fraction:g}): "
                                   "effective step against the thresholds (paper Fig. 3)")

  done = arms.run_all(runs, f"{stem}.csv", after_arm)
  _plot_accuracy(runs, done, bases, args, f"{stem}.png")
  if scheduled:
    _plot_learning_rates(runs, done, f"{stem}_lr.png")
  print(f"wrote {stem}.csv and {stem}*.png")


def _plot_accuracy(runs, done, bases, args, path):
  fig = Figure(figsize=(4.2 * len(bases), 3.6), dpi=120)
  axes = np.atleast_1d(fig.subplots(1, len(bases), sharey=True))
  x = np.arange(1, args.tasks + 1)
  for ax, b in zip(axes, bases):
    for name, base, _, _ in runs:
      if base == b:
        online = done[name].online.mean(0)
        ax.plot(x, online, marker="o", markersize=2.5,
                label=f"{name} (mean {online.mean():.2f})")
    results.accuracy_axis(ax, chance=0.1)
    ax.set_title(f"{b}: mean of {args.seeds} seeds", fontsize=9)
  fig.tight_layout()
  fig.savefig(path)


def _plot_learning_rates(runs, done, path):
  """One panel per scheduled arm: rows are scheduler settings, columns base arms."""
  scheduled = [(name, b, s, config) for name, b, s, config in runs if s != "none"]
  rows = list(dict.fromkeys(s for _, _, s, _ in scheduled))
  cols = list(dict.fromkeys(b for _, b, _, _ in scheduled))
  fig = Figure(figsize=(4.2 * len(cols), 3.0 * len(rows)), dpi=120)
  axes = fig.subplots(len(rows), len(cols), sharey=True, sharex=True, squeeze=False)
  for name, b, s, config in scheduled:
    ax = axes[rows.index(s), cols.index(b)]
    arm = done[name]
    m = arm.multipliers.mean(0)  # (tasks, checks, layers)
    tasks, checks, layers = m.shape
    x = np.arange(tasks * checks) / checks + 1 / checks
    for l in range(layers):
      ax.plot(x, config.lr * m[:, :, l].reshape(-1), label=arm.layer_names[l])
    ax.set(yscale="log", title=f"{name} (beta {config.beta:g}, cool {config.cool:g})")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
  for ax in axes[-1]:
    ax.set_xlabel("task")
  for ax in axes[:, 0]:
    ax.set_ylabel("learning rate of the layer")
  axes[0, 0].legend(fontsize=7)
  fig.suptitle("per-layer learning rates learned by the scheduler (paper Fig. 6), mean of seeds",
               fontsize=9)
  fig.tight_layout()
  fig.savefig(path)


if __name__ == "__main__":
  main()
