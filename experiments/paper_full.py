"""The paper's experiment at the paper's length: 40 tasks x 250 epochs, resumable over days.

    nohup nice -n 10 python experiments/paper_full.py > experiments/results/paper_full_log.txt &
    python experiments/paper_full.py --report          # rewrite the outputs from what ran
    python experiments/paper_full.py --arms crelu,l2 --seeds 1 --parallel 1

The setting of the paper's Table 1 / App. D (OPT 2025 PDF of sheeerio/continual):
random labels on 21,000 images, every label redrawn each task, MLP
784-256-256-10, batch 256, Adam, 40 tasks x 250 epochs (20,500 steps per task,
the last partial batch dropped). The images are Fashion-MNIST's from the
Debian package `dataset-fashion-mnist` (MNIST is not offline here); with every
label random the images hardly matter, the task is to memorize 21,000 labels.

Arms (ARMS, in the order they run):
  1 crelu                 CReLU, Adam lr 1e-2 (the paper's Fig. 8 arm)
  2 crelu+reference       1 scheduled with the reference code's settings
  3 l2                    coupled L2 1e-3, Adam lr 1e-3
  4 l2+reference          3 scheduled with the reference code's settings
  5 crelu+default         1 scheduled with the library's defaults
  6 l2+default            3 scheduled with the library's defaults
  7 crelu_ramp            1 with the reference's Adam beta ramp (`--adam-betas reference`)
  8 crelu_ramp+reference  2 with the reference's Adam beta ramp
The reference's settings: threshold `reference` (sqm10), a check every 400
steps, the 0.12 floor, warming only while the run's update count is below 0.1
of a task (`--warm-window run`), 100 power iterations per check.

Each (arm, seed) is one `trainability run` into
experiments/results/paper_full/ARM/seedS/ with a checkpoint after every task
(the newest kept, 4 to 5 MB for these models). Seed 0 of every arm runs first, then seeds 1
and 2. A finished run is skipped; an unfinished one resumes from its
checkpoint (`trainability run --resume`), so an interruption loses at most
the task in progress. The checkpoints are committed with the results, so a
later session finds them; a finished run's are deleted. `--parallel` runs
that many at once (default 2, the cores here), each on one CPU device
(`JAX_NUM_CPU_DEVICES=1`: a one-seed run on one device per core would be
padded with a copy of itself, at twice the cost).

Outputs, rewritten whenever a run ends and by `--report`:
* paper_full.csv: one row per arm x seed x task (online and final accuracy,
  rho_hat, each layer's learning-rate multiplier at the task's end);
* paper_full_table.md: per arm, online accuracy at tasks 1, 10, 20, 30 and
  40 and over the last 5 tasks done, the paper's read-off value at task 40,
  wall time and steps per second;
* paper_full.png (paper Fig. 5) and paper_full_lr.png (Fig. 6);
* ARM/seedS/: results.csv, config.json, timing.csv (each stretch of tasks run
  and its wall time), log.txt, and for scheduled arms checks_seed0.csv and
  multipliers.csv condensed from the run's checks.csv (not committed).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import arms  # noqa: E402
import scheduler_modes as modes  # noqa: E402  (Fashion-MNIST, reading and condensing runs)

RESULTS = os.path.join(HERE, "results")
PAPER = ["--dataset", "fashion_mnist", "--subset", "21000", "--batch-size", "256",
         "--epochs", "250", "--tasks", "40", "--seeds", "1"]
REFERENCE = ["--scheduler", "noise_curvature", "--threshold", "reference", "--check-every", "400",
             "--floor", "0.12", "--warm-fraction", "0.1", "--warm-window", "run",
             "--curvature", "power", "--curvature-steps", "100"]
DEFAULT = ["--scheduler", "noise_curvature"]
CRELU = ["--activation", "crelu", "--lr", "1e-2"]
L2 = ["--l2", "1e-3"]
RAMP = ["--adam-betas", "reference"]
ARMS = {
    "crelu": CRELU,
    "crelu+reference": CRELU + REFERENCE,
    "l2": L2,
    "l2+reference": L2 + REFERENCE,
    "crelu+default": CRELU + DEFAULT,
    "l2+default": L2 + DEFAULT,
    "crelu_ramp": CRELU + RAMP,
    "crelu_ramp+reference": CRELU + RAMP + REFERENCE,
}
# Paper Fig. 5, read off the curves at task 40: vanilla ~0.1, scheduled ~0.54 (CReLU)
# and ~0.49 (L2).
READOFF = {"crelu": 0.10, "l2": 0.105, "crelu+": 0.54, "l2+": 0.49}
CHECKPOINTS = "checkpoints"


def readoff(arm: str):
  base = arm.split("+")[0].replace("_ramp", "")
  return READOFF.get(base + "+" if "+" in arm else base)


def run_flags(arm: str, seed: int, epochs: int | None, tasks: int | None):
  flags = list(PAPER) + ARMS[arm] + ["--seed", str(seed), "--checkpoint-every", "1",
                                     "--keep-checkpoints", "1"]
  for flag, value in (("--epochs", epochs), ("--tasks", tasks)):
    if value is not None:
      flags[flags.index(flag) + 1] = str(value)
  return flags


def tasks_of(flags) -> int:
  return int(flags[flags.index("--tasks") + 1])


def tasks_done(out: str) -> int:
  path = os.path.join(out, "results.csv")
  return len(modes.read_csv(path)) if os.path.exists(path) else 0


def command(out: str, flags):
  """The command that runs or resumes `out`, or None when it is complete.

  A run directory made with other flags is refused, not overwritten.
  """
  flags_path = os.path.join(out, "flags.json")
  if os.path.exists(flags_path):
    saved = json.load(open(flags_path))
    if saved != list(flags):
      raise SystemExit(f"{out}: was run with other flags ({' '.join(saved)}); move it away "
                       "to run these")
    if tasks_done(out) >= tasks_of(flags):
      return None
    if os.path.isdir(os.path.join(out, CHECKPOINTS)) and os.listdir(os.path.join(out,
                                                                               CHECKPOINTS)):
      return [sys.executable, "-m", "trainability", "run", "--resume", out, "--no-progress"]
  if os.path.exists(out):  # started, but no checkpoint yet: nothing to keep
    shutil.rmtree(out)
  os.makedirs(out)
  with open(flags_path, "w") as f:
    json.dump(list(flags), f)
  return [sys.executable, "-m", "trainability", "run", *flags, "--out", out, "--no-progress"]


class Running:
  """One run in progress: its process and what it had done when it started."""

  def __init__(self, name: str, out: str, argv):
    self.name, self.out, self.first = name, out, tasks_done(out)
    self.started = time.time()
    self.log = open(os.path.join(out, "log.txt"), "a")
    self.log.write(f"$ {' '.join(argv)}\n")
    self.log.flush()
    # One seed per run: one CPU device, or the CLI would pad the run to one per core
    # and compute a copy of the seed on the other (devices.pad_runs).
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "1"}
    self.process = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env)

  def finish(self) -> int:
    code = self.process.wait()
    done = tasks_done(self.out)
    # Up to the last task written: a task cut short by a stop is not counted.
    results = os.path.join(self.out, "results.csv")
    end = os.path.getmtime(results) if done > self.first else time.time()
    seconds = max(end - self.started, 0.0)
    path = os.path.join(self.out, "timing.csv")
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
      writer = csv.writer(f)
      if new:
        writer.writerow(["first_task", "tasks", "seconds", "exit_code"])
      writer.writerow([self.first, done - self.first, f"{seconds:.1f}", code])
    self.log.close()
    condense(self.out)
    if code == 0 and done >= tasks_of(json.load(open(os.path.join(self.out, "flags.json")))):
      shutil.rmtree(os.path.join(self.out, CHECKPOINTS), ignore_errors=True)
    print(f"  {self.name}: tasks {self.first + 1}-{done} in {seconds:.0f} s (exit {code})",
          flush=True)
    return code


def condense(out: str) -> None:
  """checks.csv -> checks_seed0.csv and multipliers.csv, keeping the condensed rows of
  tasks that this session's checks.csv no longer holds (a run resumed on a new machine)."""
  path = os.path.join(out, "checks.csv")
  if not os.path.exists(path):
    return
  first = min((int(r["task"]) for r in modes.read_csv(path)), default=None)
  kept = {}
  for name in ("checks_seed0.csv", "multipliers.csv"):
    old = os.path.join(out, name)
    kept[name] = ([r for r in modes.read_csv(old) if first is None or int(r["task"]) < first]
                  if os.path.exists(old) else [])
  modes.condense_checks(out)
  for name, rows in kept.items():
    if rows:
      new = modes.read_csv(os.path.join(out, name))
      with open(os.path.join(out, name), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows + new)


def timing(out: str):
  """(seconds, tasks) over every stretch of the run."""
  path = os.path.join(out, "timing.csv")
  if not os.path.exists(path):
    return 0.0, 0
  rows = modes.read_csv(path)
  return sum(float(r["seconds"]) for r in rows), sum(int(r["tasks"]) for r in rows)


def runs_of(root: str):
  """{arm: {seed: run dir}} of the runs that have results, in ARMS order."""
  found = {}
  for arm in ARMS:
    for seed in range(10):
      out = os.path.join(root, arm, f"seed{seed}")
      if tasks_done(out):
        found.setdefault(arm, {})[seed] = out
  return found


def report(root: str, results_dir: str) -> None:
  """Rewrites paper_full.csv, _table.md and the figures from the runs in `root`."""
  runs = runs_of(root)
  rows, curves = [], {}
  for arm, by_seed in runs.items():
    for seed, out in by_seed.items():
      for row in modes.arm_rows(arm, out):
        row[1] = str(seed)
        rows.append(row)
      curves.setdefault(arm, {})[seed] = np.array(
          [float(r["online_accuracy"]) for r in modes.read_csv(os.path.join(out, "results.csv"))])
  stem = os.path.join(results_dir, "paper_full")
  with open(f"{stem}.csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(modes.ROW)
    writer.writerows(rows)
  with open(f"{stem}_table.md", "w") as f:
    f.write(table(runs, curves))
  plot(stem, runs, curves)


def table(runs, curves) -> str:
  head = ["arm", "seeds", "tasks done", "task 1", "task 10", "task 20", "task 30", "task 40",
          "last 5 done", "paper, task 40", "wall time per seed", "steps/s"]
  lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
  for arm, by_seed in curves.items():
    done = min(len(c) for c in by_seed.values())
    stack = np.stack([c[:done] for c in by_seed.values()])
    mean = stack.mean(0)
    at = lambda t: (f"{mean[t - 1]:.3f}" + (f" ± {stack[:, t - 1].std():.3f}"
                                           if len(stack) > 1 else "")) if t <= done else ""
    seconds = tasks = 0
    for out in runs[arm].values():
      s, t = timing(out)
      seconds, tasks = seconds + s, tasks + t
    config = json.load(open(os.path.join(next(iter(runs[arm].values())), "config.json")))
    per_task = config["steps_per_task"]
    total = config["config"]["tasks"]
    wall = f"{seconds / tasks * total / 3600:.2f} h (est.)" if tasks else ""
    if tasks and done >= total:
      wall = f"{seconds / len(by_seed) / 3600:.2f} h"
    rate = f"{tasks * per_task / seconds:.0f}" if seconds else ""
    paper = readoff(arm)
    lines.append("| " + " | ".join([
        arm, str(len(by_seed)), str(done), at(1), at(10), at(20), at(30), at(40),
        f"{mean[-5:].mean():.3f}", "" if paper is None else f"~{paper:.2f}", wall, rate]) + " |")
  return "\n".join(lines) + "\n"


def plot(stem, runs, curves) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  panels = ["crelu", "l2"]
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  for ax, panel in zip(axes, panels):
    for arm, by_seed in curves.items():
      if arm.split("+")[0].replace("_ramp", "") != panel:
        continue
      done = min(len(c) for c in by_seed.values())
      mean = np.stack([c[:done] for c in by_seed.values()]).mean(0)
      ax.plot(np.arange(1, done + 1), mean, lw=1.3, label=f"{arm} ({len(by_seed)} seed)",
              ls="--" if "_ramp" in arm else "-")
    for key, style in ((panel, "x"), (panel + "+", "*")):
      ax.plot([40], [READOFF[key]], style, color="k", ms=9,
              label=f"paper, task 40 ({'scheduled' if '+' in key else 'vanilla'})")
    ax.set(title=f"{panel}: 40 tasks x 250 epochs", xlabel="task",
           ylabel="average online accuracy", ylim=(0, 1.02), xlim=(0, 41))
    ax.axhline(0.1, color="grey", lw=0.6, ls=":")
    ax.legend(fontsize=7)
  fig.suptitle("random-label Fashion-MNIST (21k), MLP 256x2 (paper Fig. 5)", fontsize=10)
  fig.tight_layout()
  fig.savefig(f"{stem}.png", dpi=110)
  plt.close(fig)

  scheduled = [(arm, by_seed[min(by_seed)]) for arm, by_seed in runs.items()
               if os.path.exists(os.path.join(by_seed[min(by_seed)], "multipliers.csv"))]
  if not scheduled:
    return
  fig, axes = plt.subplots(1, len(scheduled), figsize=(4.0 * len(scheduled), 3.4),
                           squeeze=False)
  for ax, (arm, out) in zip(axes[0], scheduled):
    lr = json.load(open(os.path.join(out, "config.json")))["config"]["lr"]
    rows = modes.read_csv(os.path.join(out, "multipliers.csv"))
    for layer in sorted({r["layer"] for r in rows}):
      own = sorted((int(r["task"]), float(r["multiplier"])) for r in rows if r["layer"] == layer)
      ax.plot([t + 1 for t, _ in own], [m * lr for _, m in own], label=layer)
    ax.set(yscale="log", title=arm, xlabel="task", ylabel="learning rate at task end")
    ax.legend(fontsize=7)
  fig.suptitle("learned learning rates, first seed (paper Fig. 6)", fontsize=10)
  fig.tight_layout()
  fig.savefig(f"{stem}_lr.png", dpi=110)
  plt.close(fig)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--arms", default="all", help="comma list of arm names, or all")
  parser.add_argument("--seeds", type=int, default=3, help="seeds per arm (default 3)")
  parser.add_argument("--parallel", type=int, default=2, help="runs at once (default 2)")
  parser.add_argument("--epochs", type=int, default=None, help="override epochs per task")
  parser.add_argument("--tasks", type=int, default=None, help="override the number of tasks")
  parser.add_argument("--out", default=None, help="directory of the runs and outputs "
                      "(default: runs in experiments/results/paper_full, outputs beside)")
  parser.add_argument("--report", action="store_true", help="only rewrite the outputs")
  args = parser.parse_args(argv)
  chosen = list(ARMS) if args.arms == "all" else arms.choices(args.arms, list(ARMS), "--arms")
  for name in ("seeds", "parallel"):
    if getattr(args, name) < 1:
      raise SystemExit(f"--{name}: {getattr(args, name)} is not accepted; give an integer >= 1")
  root = os.path.join(args.out, "paper_full") if args.out else os.path.join(RESULTS,
                                                                             "paper_full")
  results_dir = args.out or RESULTS
  if args.report:
    report(root, results_dir)
    return 0
  modes.ensure_fashion_mnist()
  queue = [(arm, seed) for seed in range(args.seeds) for arm in chosen]
  running, failed = [], []

  def stop(signum, frame):  # kill or end of a session: stop the runs, keep their timing
    for r in running:  # a run checks for a signal only between tasks: kill it now; its
      r.process.kill()  # checkpoint and rows are those of its last finished task
    for r in running:
      r.finish()
    report(root, results_dir)
    print(f"  stopped (signal {signum}); resume with the same command", flush=True)
    sys.exit(128 + signum)

  signal.signal(signal.SIGTERM, stop)
  signal.signal(signal.SIGINT, stop)
  while queue or running:
    while queue and len(running) < args.parallel:
      arm, seed = queue.pop(0)
      out = os.path.join(root, arm, f"seed{seed}")
      argv = command(out, run_flags(arm, seed, args.epochs, args.tasks))
      if argv is None:
        print(f"  {arm} seed {seed}: complete, skipped", flush=True)
        continue
      how = f"resuming at task {tasks_done(out) + 1}" if "--resume" in argv else "starting"
      print(f"  {arm} seed {seed}: {how}", flush=True)
      running.append(Running(f"{arm} seed {seed}", out, argv))
    if not running:
      break
    while all(r.process.poll() is None for r in running):
      time.sleep(5)
    for r in [r for r in running if r.process.poll() is not None]:
      running.remove(r)
      if r.finish() != 0:
        failed.append(r.name)
      report(root, results_dir)
  if failed:
    raise SystemExit(f"runs that failed (see their log.txt): {', '.join(failed)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
