"""The scheduler's threshold modes against fixed learning rates, on three suites.

    python experiments/scheduler_modes.py --suite main        # digits, random labels, 40 tasks
    python experiments/scheduler_modes.py --suite permuted    # digits, permuted inputs, 40 tasks
    python experiments/scheduler_modes.py --suite paper       # Fashion-MNIST, the paper's MLP
    python experiments/scheduler_modes.py --suite paper100    # the same at 100 epochs per task
    python experiments/scheduler_modes.py --suite main --arms adam,adam+stability --tasks 3

Each arm is one `trainability run` (a subprocess: seeds vmapped, results.csv
written after every task) into experiments/results/modes/SUITE/ARM/. An arm
whose results.csv is complete is skipped; a partial one resumes from its
last finished task (each run keeps a checkpoint after every task, deleted
when the arm finishes), so an interrupted sweep resumes where it stopped. After each arm the suite's committed outputs are rewritten:
* modes_SUITE.csv: one row per arm x seed x task (online and final accuracy,
  rho_hat, each layer's learning-rate multiplier at the task's end);
* modes_SUITE_table.csv: per arm, the mean online accuracy over all tasks,
  over the last 5, and at the last task (mean over seeds), with the paper's
  read-off values beside the paper suite's arms;
* modes_SUITE.png: online accuracy per task (paper Fig. 5), modes_SUITE_lr.png:
  each layer's learned learning rate at every task's end (paper Fig. 6), and
  modes_SUITE_steps.png: the first layer's effective step against alpha*_g,
  alpha*_vol and alpha~* over the first 10 tasks of seed 0 (paper Fig. 3);
* ARM/checks_seed0.csv: seed 0's checks (step, layer, alpha, alpha_g,
  alpha_vol, alpha_tilde, lam_bar, multiplier), and ARM/multipliers.csv, each
  seed's per-layer multipliers at every task's end, condensed from the run's
  checks.csv (which is not committed); ARM/flags.json: the run's flags.

The paper suite is the paper's setting (MLP 784-256-256-10, batch 256, Adam,
random labels on 21,000 images, 40 tasks) on Fashion-MNIST from the Debian
package `dataset-fashion-mnist` (installed here with apt-get if missing): MNIST
is not offline, and with every label random the image content hardly matters.
Its default 25 epochs per task are a tenth of the paper's 250. The paper100 suite
runs vanilla and the best mode of the paper suite (reference) at 100 epochs per
task, the paper's shortest ablation, with one seed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
FASHION = "/usr/share/datasets/fashion-mnist"

# The suites ran with at most 12 Lanczos steps per check, the default then (now 8).
SCHEDULED = ["--scheduler", "noise_curvature", "--curvature-steps", "12"]
MODES = {
    "paper": SCHEDULED + ["--threshold", "paper"],
    "algorithm1": SCHEDULED + ["--threshold", "paper", "--floor", "0.12"],
    "reference": SCHEDULED + ["--threshold", "reference"],
    "stability": SCHEDULED + ["--threshold", "stability"],
    # Tuned on this very benchmark by scheduler_beta.py (with the earlier one-iteration
    # curvature estimate); a comparison, not a candidate default.
    "paper_tuned": SCHEDULED + ["--threshold", "paper", "--beta", "1e5", "--cool", "0.9",
                                "--warm-fraction", "0.1"],
}
# The field's other optimizers against loss of plasticity, untuned, beside the modes:
# TRAC (Muppidi et al. 2024, parameter-free: its paper's defaults), Adam-Rel (Ellis et al.
# 2024: Adam's step count restarts at every task, its moments kept) and Adam with its
# moments and count reset at every task.
OPTIMIZER_BASELINES = {
    "trac": ["--scheduler", "trac"],
    "adam_rel": ["--reset", "timestep"],
    "adam_reset": ["--reset", "optimizer"],
}
MODES.update(OPTIMIZER_BASELINES)
# The default mode with a ceiling on the multipliers (issue 25: the paper100 CReLU run
# warmed to 1e8x without one); 10x is an order of magnitude above the base rate.
MODES["reference_max10"] = MODES["reference"] + ["--max-multiplier", "10"]

# Each suite: (common flags, {base arm: flags}, [(arm, base, extra flags)], read-off values).
MAIN = ["--tasks", "40", "--seeds", "2"]
PERMUTED = MAIN + ["--stream", "permuted_inputs"]
PAPER = ["--dataset", "fashion_mnist", "--subset", "21000", "--batch-size", "256",
         "--epochs", "25", "--tasks", "40", "--seeds", "2"]
# The paper's shortest ablation (100 epochs per task), vanilla and the best mode of the
# paper suite; one seed, as four times the epochs cost about 25 minutes a seed on 2 cores.
PAPER100 = PAPER[:PAPER.index("--epochs")] + ["--epochs", "100", "--tasks", "40", "--seeds", "1"]
PAPER_BASES = {"crelu": ["--activation", "crelu", "--lr", "1e-2"], "l2": ["--l2", "1e-3"]}
# Paper Fig. 5, read off the curves at task 40 (250 epochs per task): vanilla, scheduled.
PAPER_READOFF = {"crelu": 0.10, "crelu+scheduled": 0.54, "l2": 0.105, "l2+scheduled": 0.49}


def _arms(bases, modes):
  out = []
  for base in bases:
    out.append((base, base, []))
    out += [(f"{base}+{m}", base, MODES[m]) for m in modes]
  return out


SUITES = {
    "main": (MAIN, {"adam": [], "adam_lr1e-4": ["--lr", "1e-4"], "adam_lr3e-4": ["--lr", "3e-4"],
                    "crelu": ["--activation", "crelu"],
                    "l2_init": ["--regularizer", "l2_init", "--reg-coef", "1e-2"]},
             _arms(["adam"], ["paper", "algorithm1", "reference", "stability", "paper_tuned",
                              *OPTIMIZER_BASELINES, "reference_max10"])
             + [("adam_lr1e-4", "adam_lr1e-4", []), ("adam_lr3e-4", "adam_lr3e-4", [])]
             + _arms(["crelu", "l2_init"], ["paper", "reference", "stability", "trac",
                                            "adam_rel", "reference_max10"]), {}),
    "permuted": (PERMUTED, {"adam": [], "adam_lr1e-4": ["--lr", "1e-4"]},
                 _arms(["adam"], ["paper", "reference", "stability", "trac", "adam_rel"])
                 + [("adam_lr1e-4", "adam_lr1e-4", [])], {}),
    "paper": (PAPER, PAPER_BASES, _arms(["crelu", "l2"], ["paper", "reference", "stability",
                                                         "trac", "adam_rel"]),
              PAPER_READOFF),
    # crelu+reference ran on an earlier version of the library; crelu+reference_rerun is
    # the same arm on the code that runs crelu+reference_max10, its comparison.
    "paper100": (PAPER100, PAPER_BASES, _arms(["crelu", "l2"], ["reference"])
                 + [("crelu+reference_rerun", "crelu", MODES["reference"]),
                    ("crelu+reference_max10", "crelu", MODES["reference_max10"])],
                 PAPER_READOFF),
}

ROW = ["arm", "seed", "task", "online_accuracy", "final_accuracy", "rho_hat",
       "lr_multiplier_per_layer"]
CHECK_COLUMNS = ["task", "check", "step", "layer", "alpha", "alpha_g", "alpha_vol",
                 "alpha_tilde", "lam_bar", "multiplier"]


def arm_flags(suite: str, arm: str, base: str, extra, epochs: int | None, tasks: int | None):
  common, bases, _, _ = SUITES[suite]
  flags = list(common) + bases[base] + list(extra)
  for flag, value in (("--epochs", epochs), ("--tasks", tasks)):
    if value is not None:
      if flag in flags:
        flags[flags.index(flag) + 1] = str(value)
      else:
        flags += [flag, str(value)]
  return flags


def expected_rows(flags) -> int:
  from trainability.config import Config
  value = lambda flag, default: int(flags[flags.index(flag) + 1]) if flag in flags else default
  return value("--tasks", Config().tasks) * value("--seeds", Config().seeds)


def read_csv(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def run_arm(out: str, flags) -> None:
  """Runs one arm unless it is complete with these flags.

  The run keeps a checkpoint after every task, so an arm interrupted with
  these flags resumes from its last finished task (`trainability run
  --resume`); an arm started with other flags, or before its first
  checkpoint, starts again. A finished arm's checkpoint is deleted.
  """
  results = os.path.join(out, "results.csv")
  flags_path = os.path.join(out, "flags.json")
  pending_path = os.path.join(out, "pending.json")
  checkpoints = os.path.join(out, "checkpoints")
  same = os.path.exists(flags_path) and json.load(open(flags_path)) == list(flags)
  if same and os.path.exists(results) and len(read_csv(results)) >= expected_rows(flags):
    print(f"  {os.path.basename(out)}: complete, skipped", flush=True)
    return
  resumable = (os.path.exists(pending_path) and json.load(open(pending_path)) == list(flags)
               and os.path.isdir(checkpoints) and os.listdir(checkpoints))
  base = [sys.executable, "-m", "trainability", "run"]
  if resumable:
    command = base + ["--resume", out, "--no-progress"]
  else:
    if os.path.exists(out):
      shutil.rmtree(out)
    os.makedirs(out)
    with open(pending_path, "w") as f:
      json.dump(list(flags), f)
    command = base + [*flags, "--checkpoint-every", "1", "--keep-checkpoints", "1", "--out",
                      out, "--no-progress"]
  started = time.time()
  code = subprocess.run(command).returncode
  if code != 0:
    raise SystemExit(f"arm {os.path.basename(out)}: trainability run exited with {code}")
  with open(flags_path, "w") as f:  # written last: only a finished arm has it
    json.dump(list(flags), f)
  os.remove(pending_path)
  shutil.rmtree(checkpoints, ignore_errors=True)
  print(f"  {os.path.basename(out)}: {time.time() - started:.0f} s"
        + (" (resumed)" if resumable else ""), flush=True)
  condense_checks(out)


def condense_checks(out: str) -> None:
  """checks.csv (not committed) -> checks_seed0.csv and multipliers.csv (committed).

  checks_seed0.csv: seed 0's checks, a few columns, 4 significant digits;
  multipliers.csv: every seed's per-layer multipliers after each task's last check.
  """
  path = os.path.join(out, "checks.csv")
  if not os.path.exists(path):
    return
  last = {}
  with open(path, newline="") as f, open(os.path.join(out, "checks_seed0.csv"), "w",
                                         newline="") as g:
    writer = csv.writer(g)
    writer.writerow(CHECK_COLUMNS)
    for row in csv.DictReader(f):
      last.setdefault((row["seed"], row["task"]), {})[row["layer"]] = row["multiplier"]
      if row["seed"] == "0":
        writer.writerow([row[c] if c in ("task", "check", "step", "layer")
                         else f"{float(row[c]):.4g}" for c in CHECK_COLUMNS])
  with open(os.path.join(out, "multipliers.csv"), "w", newline="") as g:
    writer = csv.writer(g)
    writer.writerow(["seed", "task", "layer", "multiplier"])
    for (seed, task), layers in last.items():
      for layer, value in sorted(layers.items()):
        writer.writerow([seed, task, layer, f"{float(value):.4g}"])


def arm_rows(name: str, out: str):
  """The suite CSV's rows of one arm: from results.csv and the checks' multipliers."""
  rows = read_csv(os.path.join(out, "results.csv"))
  multipliers = {}
  path = os.path.join(out, "multipliers.csv")
  if os.path.exists(path):
    for row in read_csv(path):
      multipliers.setdefault((row["seed"], row["task"]), {})[row["layer"]] = float(
          row["multiplier"])
  for row in rows:
    seed, task = row["seed"], row["task"]
    per_layer = multipliers.get((seed, task), {})
    yield [name, seed, task, row["online_accuracy"], row["final_accuracy"],
           row.get("rho_hat", ""), " ".join(f"{per_layer[k]:.4g}" for k in sorted(per_layer))]


def write_outputs(suite: str, done, results_dir: str = RESULTS) -> None:
  """Rewrites the suite's CSV, table and figures from the arms done so far."""
  _, _, _, readoff = SUITES[suite]
  stem = os.path.join(results_dir, f"modes_{suite}")
  rows = []
  for name, out in done:
    rows += list(arm_rows(name, out))
  with open(f"{stem}.csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(ROW)
    writer.writerows(rows)
  online = {}
  for name, seed, task, acc, *_ in rows:
    online.setdefault(name, {}).setdefault(int(seed), {})[int(task)] = float(acc)
  curves = {name: np.array([[by_seed[s][t] for t in sorted(by_seed[s])] for s in sorted(by_seed)])
            for name, by_seed in online.items()}
  with open(f"{stem}_table.csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["arm", "seeds", "tasks", "mean_online_accuracy", "last5_online_accuracy",
                     "last_task_online_accuracy", "paper_task40_readoff"])
    for name, c in curves.items():
      base = name.split("+")[0]
      paper = readoff.get(name, readoff.get(f"{base}+scheduled") if "+" in name else "")
      writer.writerow([name, c.shape[0], c.shape[1], f"{c.mean():.3f}",
                       f"{c[:, -5:].mean():.3f}", f"{c[:, -1].mean():.3f}",
                       "" if paper in ("", None) else f"{paper:.2f}"])
  plot(suite, stem, curves, done)


def plot(suite, stem, curves, done) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  panel = lambda name: name.split("+")[0].split("_lr")[0]  # fixed rates beside their base
  bases = sorted({panel(n) for n in curves}, key=[panel(n) for n in curves].index)
  fig, axes = plt.subplots(1, len(bases), figsize=(4.6 * len(bases), 3.6), squeeze=False)
  for ax, base in zip(axes[0], bases):
    for name, c in curves.items():
      if panel(name) == base:
        ax.plot(np.arange(1, c.shape[1] + 1), c.mean(0), label=name, lw=1.3,
                ls="--" if "_lr" in name else "-")
    ax.set(title=base, xlabel="task", ylabel="average online accuracy", ylim=(0, 1.02))
    ax.axhline(0.1, color="grey", lw=0.6, ls=":")
    ax.legend(fontsize=7)
  fig.suptitle(f"suite {suite}: online accuracy per task, mean of seeds", fontsize=10)
  fig.tight_layout()
  fig.savefig(f"{stem}.png", dpi=110)
  plt.close(fig)

  scheduled = [(n, o) for n, o in done if os.path.exists(os.path.join(o, "checks_seed0.csv"))]
  if not scheduled:
    return
  cols = min(4, len(scheduled))
  rows_ = -(-len(scheduled) // cols)
  fig, axes = plt.subplots(rows_, cols, figsize=(4.0 * cols, 3.3 * rows_), squeeze=False)
  fig3, axes3 = plt.subplots(rows_, cols, figsize=(4.0 * cols, 3.3 * rows_), squeeze=False)
  for ax in list(axes.flat[len(scheduled):]) + list(axes3.flat[len(scheduled):]):
    ax.axis("off")
  for ax, ax3, (name, out) in zip(axes.flat, axes3.flat, scheduled):
    rows = read_csv(os.path.join(out, "checks_seed0.csv"))
    with open(os.path.join(out, "config.json")) as f:
      saved = json.load(f)
    lr, steps_per_task = saved["config"]["lr"], saved["steps_per_task"]
    for layer in sorted({r["layer"] for r in rows}):
      own = [r for r in rows if r["layer"] == layer]
      last = {}
      for r in own:
        last[int(r["task"])] = float(r["multiplier"]) * lr
      ax.plot(np.array(sorted(last)) + 1, [last[t] for t in sorted(last)], label=layer)
    ax.set(yscale="log", title=name, xlabel="task", ylabel="learning rate at task end")
    ax.legend(fontsize=7)
    first = sorted({r["layer"] for r in rows})[0]
    own = [r for r in rows if r["layer"] == first and int(r["task"]) < 10]
    step = np.array([int(r["task"]) * steps_per_task + int(r["step"]) for r in own])
    for column, color in (("alpha", "C0"), ("alpha_vol", "C1"), ("alpha_g", "C3"),
                          ("alpha_tilde", "C2")):
      values = np.array([float(r[column]) for r in own])
      ax3.plot(step, np.clip(values, 1e-6, 1e6), color=color, lw=0.8, label=column)
    ax3.set(yscale="log", title=f"{name}: {first}", xlabel="step (tasks 1-10, seed 0)")
    ax3.legend(fontsize=7)
  fig.suptitle(f"suite {suite}: learned learning rates (paper Fig. 6)", fontsize=10)
  fig.tight_layout()
  fig.savefig(f"{stem}_lr.png", dpi=110)
  fig3.suptitle(f"suite {suite}: effective step against the bounds (paper Fig. 3)",
                fontsize=10)
  fig3.tight_layout()
  fig3.savefig(f"{stem}_steps.png", dpi=110)
  plt.close(fig)
  plt.close(fig3)


def ensure_fashion_mnist() -> None:
  if os.path.isdir(FASHION):
    return
  print("installing the Debian package dataset-fashion-mnist", flush=True)
  subprocess.run(["apt-get", "install", "-y", "dataset-fashion-mnist"], check=True)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--suite", choices=sorted(SUITES), default="main")
  parser.add_argument("--arms", default="all", help="comma list of arm names, or all")
  parser.add_argument("--epochs", type=int, default=None, help="override epochs per task")
  parser.add_argument("--tasks", type=int, default=None, help="override the number of tasks")
  parser.add_argument("--out", default=None,
                      help="directory of the arm runs and the suite's outputs (default: the "
                      "arms in experiments/results/modes/SUITE, the outputs in "
                      "experiments/results)")
  args = parser.parse_args(argv)
  _, _, arms, _ = SUITES[args.suite]
  names = [a[0] for a in arms]
  chosen = names if args.arms == "all" else args.arms.split(",")
  for c in chosen:
    if c not in names:
      raise SystemExit(f"--arms: {c!r} is not accepted; choose from {', '.join(names)}")
  if args.suite.startswith("paper"):
    ensure_fashion_mnist()
  root = args.out or os.path.join(RESULTS, "modes", args.suite)
  for name, base, extra in arms:
    if name not in chosen:
      continue
    run_arm(os.path.join(root, name), arm_flags(args.suite, name, base, extra, args.epochs,
                                                args.tasks))
    # Every arm of the suite that has results, in suite order (also those of earlier calls).
    write_outputs(args.suite, [(a[0], os.path.join(root, a[0])) for a in arms
                               if os.path.exists(os.path.join(root, a[0], "results.csv"))],
                  args.out or RESULTS)
  return 0


if __name__ == "__main__":
  sys.exit(main())
