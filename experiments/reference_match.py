"""Whole-run match: the reference code and this library, same data, same settings.

    python experiments/reference_match.py --reference /tmp/continual --torch-python /tmp/refvenv/bin/python
    python experiments/reference_match.py --report     # rewrite the outputs from what ran

Random labels on 21,000 Fashion-MNIST images, MLP 784-256-256-10, batch 256,
10 tasks x 25 epochs, four arms: CReLU at Adam lr 1e-2 and coupled L2 1e-3 at
lr 1e-3, each vanilla and scheduled. The reference code (sheeerio/continual,
branch `sept`, run unmodified by experiments/reference/run_reference.py) runs
`--lr_schedule pl_lyapunov` for its scheduler; the library runs with every
setting of the reference that it exposes (`REFERENCE_SETTINGS`): threshold
`reference` (sqm10), a check every 400 steps, the 0.12 floor, warming only
while the run's update count is below 0.1 of a task (`--warm-window run`),
100 power iterations, and the reference's Adam beta ramp on the first layer
(`--adam-betas reference`), which the reference applies to vanilla runs too.
What still differs, by design or by framework, is listed in
experiments/reference/README.md.

Per arm, the reference runs `--seeds` seeds one after the other (seeds 0, 1, ...,
one CSV each, skipped when complete); the library runs as many seeds at once.
Outputs: reference_match.csv (one row per source x arm x seed x task: online
accuracy and each layer's learning rate at the task's end), reference_match.md
(per arm and task the two means, their difference and the seed-to-seed spread)
and reference_match.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import arms  # noqa: E402
import scheduler_modes as modes  # noqa: E402

RESULTS = os.path.join(HERE, "results")
TASKS, EPOCHS = 10, 25
REFERENCE_SETTINGS = ["--threshold", "reference", "--check-every", "400", "--floor", "0.12",
                      "--warm-fraction", "0.1", "--warm-window", "run", "--curvature", "power",
                      "--curvature-steps", "100"]
# arm: (the reference code's flags, the library's flags)
ARMS = {
    "crelu": (["--activation", "crelu", "--lr", "1e-2"], ["--activation", "crelu", "--lr", "1e-2"]),
    "crelu+scheduled": (["--activation", "crelu", "--lr", "1e-2", "--lr_schedule", "pl_lyapunov"],
                        ["--activation", "crelu", "--lr", "1e-2", "--scheduler", "noise_curvature",
                         *REFERENCE_SETTINGS]),
    "l2": (["--reg", "l2", "--l2_lambda", "1e-3", "--lr", "1e-3"], ["--l2", "1e-3"]),
    "l2+scheduled": (["--reg", "l2", "--l2_lambda", "1e-3", "--lr", "1e-3", "--lr_schedule",
                      "pl_lyapunov"],
                     ["--l2", "1e-3", "--scheduler", "noise_curvature", *REFERENCE_SETTINGS]),
}
LIBRARY = ["--dataset", "fashion_mnist", "--subset", "21000", "--batch-size", "256",
           "--adam-betas", "reference"]
# Library runs that change one more setting, to test an explanation of a gap:
# arm: [(variant name, extra flags)]. The output layer's init (torch's
# kaiming_uniform_ on every layer) for the L2 arm's early gap.
VARIANTS = {"l2": [("init kaiming_uniform", ["--init", "kaiming_uniform"])]}
# Reference runs with one harness change (experiments/reference/run_reference.py):
# dropping each epoch's last partial batch, as the library does.
REFERENCE_VARIANTS = {"l2": [("drop last", ["--drop-last"])]}
# The reference's layers (torch module names) in the library's names.
LAYERS = {"fc1": "hidden_0", "fc2": "hidden_1", "fc4": "output"}


def reference_runs(reference: str, torch_python: str, root: str, arm: str, seeds: int,
                   tasks: int, epochs: int, parallel: int) -> None:
  """The reference's seeds 0..seeds-1 of `arm`, `parallel` at a time (one thread each)."""
  pending = []
  for variant, harness in [(None, [])] + REFERENCE_VARIANTS.get(arm, []):
    for seed in range(seeds):
      out = reference_csv(root, arm, seed, variant)
      if os.path.exists(out) and len(modes.read_csv(out)) >= tasks:
        print(f"  reference {arm} {variant or ''} seed {seed}: complete, skipped", flush=True)
        continue
      pending.append([torch_python, os.path.join(HERE, "reference", "run_reference.py"),
                      "--reference", reference, "--out", out, *harness, "--",
                      "--dataset", "MNIST", "--runs", str(tasks), "--epochs", str(epochs),
                      "--batch_size", "256", "--seed", str(seed), *ARMS[arm][0]])
  running = []
  while pending or running:
    while pending and len(running) < parallel:
      command = pending.pop(0)
      print(f"  reference {arm}: {' '.join(command)}", flush=True)
      running.append(subprocess.Popen(command))
    running[0].wait()
    for process in [p for p in running if p.poll() is not None]:
      running.remove(process)
      if process.returncode:
        raise SystemExit(f"reference {arm}: {' '.join(process.args)} exited with "
                         f"{process.returncode}")


def run_name(arm: str, variant: str | None = None) -> str:
  """The file or directory name of an arm's runs, or of one variant of them."""
  return arm if variant is None else f"{arm}@{variant.replace(' ', '_')}"


def reference_csv(root: str, arm: str, seed: int, variant: str | None = None) -> str:
  return os.path.join(root, "reference", f"{run_name(arm, variant)}_seed{seed}.csv")


def library_dir(root: str, arm: str, variant: str | None = None) -> str:
  return os.path.join(root, "library", run_name(arm, variant))


def library_run(root: str, arm: str, seeds: int, tasks: int, epochs: int) -> None:
  flags = LIBRARY + ARMS[arm][1] + ["--tasks", str(tasks), "--epochs", str(epochs),
                                    "--seeds", str(seeds)]
  modes.run_arm(library_dir(root, arm), flags)  # skipped when complete with these flags
  for variant, extra in VARIANTS.get(arm, []):
    modes.run_arm(library_dir(root, arm, variant), flags + extra)


def rows(root: str):
  """(source, arm, seed, task, online accuracy, {layer: lr at the task's end})."""
  for arm in ARMS:
    for variant in [None] + [v for v, _ in REFERENCE_VARIANTS.get(arm, [])]:
      source = "reference" if variant is None else f"reference, {variant}"
      for seed in range(100):
        path = reference_csv(root, arm, seed, variant)
        if not os.path.exists(path):
          break
        for r in modes.read_csv(path):
          lrs = {LAYERS[k[3:]]: float(v) for k, v in r.items() if k.startswith("lr_")}
          yield source, arm, seed, int(r["task"]), float(r["online_accuracy"]), lrs
    for variant in [None] + [v for v, _ in VARIANTS.get(arm, [])]:
      out = library_dir(root, arm, variant)
      if not os.path.exists(os.path.join(out, "results.csv")):
        continue
      lr = json.load(open(os.path.join(out, "config.json")))["config"]["lr"]
      source = "library" if variant is None else f"library, {variant}"
      for name, seed, task, acc, _, _, per_layer in modes.arm_rows(arm, out):
        values = [float(v) for v in per_layer.split()] or [1.0] * 3
        yield (source, arm, int(seed), int(task), float(acc),
               dict(zip(LAYERS.values(), [lr * v for v in values])))


def report(root: str, results_dir: str) -> None:
  table = list(rows(root))
  stem = os.path.join(results_dir, "reference_match")
  with open(f"{stem}.csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["source", "arm", "seed", "task", "online_accuracy", *[
        f"lr_{name}" for name in LAYERS.values()]])
    for source, arm, seed, task, acc, lrs in table:
      writer.writerow([source, arm, seed, task, f"{acc:.4f}",
                       *[f"{lrs.get(n, float('nan')):.4g}" for n in LAYERS.values()]])
  acc = {}
  for source, arm, seed, task, value, _ in table:
    acc.setdefault((arm, source), {}).setdefault(task, []).append(value)
  lines = ["Online accuracy per task: mean ± standard deviation over seeds "
           "(reference: seeds run one by one; library: vmapped seeds). 'agree' when the "
           "difference of the means is at most twice the larger of the two standard "
           "deviations.\n"]
  for arm in ARMS:
    ref, lib = acc.get((arm, "reference"), {}), acc.get((arm, "library"), {})
    if not ref and not lib:
      continue
    variants = [(f"{side}, {v}", acc[(arm, f"{side}, {v}")])
                for side, named in (("library", VARIANTS), ("reference", REFERENCE_VARIANTS))
                for v, _ in named.get(arm, []) if (arm, f"{side}, {v}") in acc]
    nref = max((len(v) for v in ref.values()), default=0)
    nlib = max((len(v) for v in lib.values()), default=0)
    head = ["task", "reference", "library", "difference", "agree"]
    for v, _ in variants:  # a library variant against the reference; the library against
      head += [v, "difference" if v.startswith("library") else "library - it"]  # a reference one
    lines += [f"\n### {arm} (reference {nref} seeds, library {nlib} seeds)\n",
              "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    agree = 0
    cell = lambda a: f"{a.mean():.3f} ± {a.std():.3f}" if len(a) else ""
    for task in sorted(set(ref) | set(lib)):
      r, l = np.array(ref.get(task, [])), np.array(lib.get(task, []))
      row = [str(task + 1), cell(r), cell(l), "", ""]
      if len(r) and len(l):
        diff = l.mean() - r.mean()
        ok = abs(diff) <= 2 * max(r.std(), l.std())
        agree += ok
        row[3:] = [f"{diff:+.3f}", "yes" if ok else "no"]
      for v, by_task in variants:
        other = np.array(by_task.get(task, []))
        base, minus = (other, r) if v.startswith("library") else (l, other)
        row += [cell(other), f"{base.mean() - minus.mean():+.3f}" if len(base) and len(minus)
                else ""]
      lines.append("| " + " | ".join(row) + " |")
    lines.append(f"\n{agree} of {len(set(ref) & set(lib))} tasks agree.")
    lrs = [(s, t, lr) for s, a, _, t, _, lr in table if a == arm and "+" in arm]
    if lrs:
      last = max(t for _, t, _ in lrs)
      for source in ("reference", "library"):
        at = [lr for s, t, lr in lrs if s == source and t == last]
        if at:
          mean = {n: np.mean([lr[n] for lr in at]) for n in LAYERS.values()}
          lines.append(f"Learning rates after task {last + 1}, {source} (mean over seeds): "
                       + ", ".join(f"{n} {v:.3g}" for n, v in mean.items()) + ".")
  with open(f"{stem}.md", "w") as f:
    f.write("\n".join(lines) + "\n")
  plot(stem, acc)


def plot(stem, acc) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(ARMS), figsize=(4.0 * len(ARMS), 3.4), squeeze=False)
  for ax, arm in zip(axes[0], ARMS):
    for source, color in (("reference", "C3"), ("library", "C0")):
      by_task = acc.get((arm, source), {})
      for task, values in sorted(by_task.items()):
        ax.plot([task + 1] * len(values), values, ".", color=color, alpha=0.5)
      tasks = sorted(by_task)
      ax.plot([t + 1 for t in tasks], [np.mean(by_task[t]) for t in tasks], color=color,
              label=source)
    ax.set(title=arm, xlabel="task", ylabel="average online accuracy")
    ax.legend(fontsize=7)
  fig.suptitle("reference code against the library, 10 tasks x 25 epochs (dots: seeds)",
               fontsize=10)
  fig.tight_layout()
  fig.savefig(f"{stem}.png", dpi=110)
  plt.close(fig)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--reference", help="a checkout of sheeerio/continual, branch sept")
  parser.add_argument("--torch-python", help="a Python with torch (see experiments/reference)")
  parser.add_argument("--arms", default="all", help="comma list of arm names, or all")
  parser.add_argument("--seeds", type=int, default=2, help="reference seeds per arm")
  parser.add_argument("--parallel", type=int, default=2, help="reference runs at once")
  parser.add_argument("--library-seeds", type=int, default=3, help="library seeds per arm")
  parser.add_argument("--tasks", type=int, default=TASKS)
  parser.add_argument("--epochs", type=int, default=EPOCHS)
  parser.add_argument("--only", choices=("reference", "library"), default=None,
                      help="run one side only")
  parser.add_argument("--out", default=None, help="directory of the runs and outputs "
                      "(default: runs in experiments/results/reference_match)")
  parser.add_argument("--report", action="store_true", help="only rewrite the outputs")
  args = parser.parse_args(argv)
  chosen = list(ARMS) if args.arms == "all" else arms.choices(args.arms, list(ARMS), "--arms")
  root = os.path.join(args.out or RESULTS, "reference_match")
  if not args.report:
    if args.only != "library" and not (args.reference and args.torch_python):
      raise SystemExit("--reference, --torch-python: both are needed to run the reference "
                       "(or give --only library, or --report)")
    modes.ensure_fashion_mnist()
    for arm in chosen:
      if args.only != "reference":
        library_run(root, arm, args.library_seeds, args.tasks, args.epochs)
      if args.only != "library":
        reference_runs(args.reference, args.torch_python, root, arm, args.seeds, args.tasks,
                       args.epochs, args.parallel)
      report(root, args.out or RESULTS)
  report(root, args.out or RESULTS)
  return 0


if __name__ == "__main__":
  sys.exit(main())
