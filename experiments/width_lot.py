"""Loss of trainability against width, and whether sigma_min(J) sees it coming.

Issue 13, item 4. Runs the main benchmark (random-label digits, 1,000 images,
20 tasks of 100 epochs, MLP 64-m-m-10, Adam lr 1e-3, batch 50) at hidden
widths m = 16 ... 512, one `trainability run` per width, each recording
every indicator (`--indicators all`, jacobian_sigma_min included) once per
task, at its end. Then, per width and seed:

* the task at which trainability is lost: the first task whose average online
  accuracy has fallen below chance + `--lost-fraction` x (the best earlier
  task's accuracy - chance); a run that never falls that far is censored at
  the number of tasks and shown as "> T";

and over all runs:

* the predictor report of `trainability report` (Spearman correlation of each
  indicator column's end-of-task value with the online accuracy of the same and
  of the next task), pooled over every width, and the same report within each
  width, with the rank of jacobian_sigma_min among all columns;
* an early warning: the Spearman correlation, over the (width, seed) runs, of
  each column's value at the end of task `--early-task` (before any run has
  lost trainability) with the task at which that run loses it.

Writes `results/width_lot/width_<m>/` (the runs: results.csv, indicators.csv,
config.json; a rerun skips finished widths and resumes an interrupted one from
its checkpoint), `width_lot.csv` (one row per width and seed), `width_lot.md`
(the tables) and `width_lot.png` (accuracy and sigma_min(J) per task, one line
per width).

    python experiments/width_lot.py        # 6 widths x 3 seeds x 20 tasks, ~35 min on 2 CPU cores
    python experiments/width_lot.py --widths 8,16 --tasks 3 --epochs 4   # a smoke run
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil

import jax
import numpy as np
from matplotlib.figure import Figure

import arms
from trainability import Config, cli, data, indicators, models, report, results, runs

JACOBIAN = ("jacobian_sigma_min", "network")
FIELDS = ["width", "params", "seed", "peak_accuracy", "peak_task", "final_accuracy", "lost_at",
          "lost", "singular_from"]
SINGULAR = 1e-3  # J counts as singular once sigma_min(J) <= SINGULAR x its first-task value


def base_config(args) -> Config:
  """The main benchmark with the indicators of `args`; `width_config` sets the width."""
  return Config(tasks=args.tasks, epochs=args.epochs, seeds=args.seeds,
                indicators=args.indicators, checkpoint_every=args.checkpoint_every,
                **arms.EARLIER_SCHEDULER)


def width_config(base: Config, width: int, dataset) -> Config:
  """`base` at hidden width `width`, the indicators once per task, at its end."""
  steps_per_task = base.epochs * (len(dataset.y_train) // base.batch_size)
  return base.replace(width=width, indicator_every=steps_per_task)


def parameter_count(config: Config, dataset) -> int:
  model = models.make_model(config, dataset.x_train.shape[1:], dataset.num_classes)
  params, _ = jax.eval_shape(model.init, jax.random.key(0))
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


def run_width(config: Config, out: str) -> None:
  """Runs `config` into `out` with `trainability run`; resumes it from its newest
  checkpoint if an earlier call was interrupted; does nothing if it finished."""
  results_path = os.path.join(out, results.RESULTS_FILE)
  checkpoints = os.path.join(out, runs.CHECKPOINT_DIR)
  if os.path.exists(results_path) and results.finished_tasks(results_path) == config.tasks:
    print(f"width {config.width}: finished in {out}", flush=True)
    return
  if os.path.isdir(checkpoints) and os.listdir(checkpoints):
    argv = ["run", "--resume", out]
  else:
    shutil.rmtree(out, ignore_errors=True)  # started but no checkpoint yet: start again
    changed = {k: v for k, v in config.to_dict().items() if v != getattr(Config(), k)}
    argv = ["run", "--out", out] + [f"--{k.replace('_', '-')}={v}" for k, v in changed.items()]
  if cli.main(argv + ["--no-progress"]) != 0:
    raise SystemExit(f"width {config.width}: trainability {' '.join(argv)} failed")
  shutil.rmtree(checkpoints, ignore_errors=True)  # finished: the checkpoints are not results


def lost_at(accuracy: np.ndarray, chance: float, fraction: float) -> int | None:
  """The first task whose accuracy is below chance + fraction x (best earlier - chance)."""
  accuracy = np.asarray(accuracy, dtype=float)
  for t in range(1, len(accuracy)):
    if accuracy[t] < chance + fraction * (accuracy[:t].max() - chance):
      return t
  return None


def singular_from(sigma: np.ndarray) -> int | None:
  """The first task at whose end sigma_min(J) <= SINGULAR x its value after the first task."""
  sigma = np.asarray(sigma, dtype=float)
  below = np.flatnonzero(sigma <= SINGULAR * sigma[0])
  return int(below[0]) if len(below) else None


def width_rows(width: int, params: int, result_rows, indicator_rows, chance: float,
               fraction: float) -> list[dict]:
  """One row per seed: peak and late accuracy, the lost-at task and the task from whose
  end on J is singular (0-based; the number of tasks if never)."""
  task_ids, accuracy = results.per_task(result_rows, "online_accuracy")
  sigma = report.task_values(indicator_rows, *JACOBIAN)
  rows = []
  for seed, acc in enumerate(accuracy):
    lost = lost_at(acc, chance, fraction)
    singular = singular_from([sigma[(seed, t)] for t in task_ids]) if sigma else None
    rows.append({"width": width, "params": params, "seed": seed,
                 "peak_accuracy": round(float(acc.max()), 4),
                 "peak_task": int(task_ids[acc.argmax()]),
                 "final_accuracy": round(float(acc[-5:].mean()), 4),
                 "lost_at": len(acc) if lost is None else int(task_ids[lost]),
                 "lost": lost is not None,
                 "singular_from": len(acc) if singular is None else int(task_ids[singular])})
  return rows


def within_width_ranks(runs_by_width: dict) -> list[dict]:
  """Per width: the predictor report's best column and where jacobian_sigma_min stands."""
  out = []
  for width, run in runs_by_width.items():
    table = [r for r in report.predictor_report([run]) if np.isfinite(r["spearman_next_task"])]
    names = [(r["indicator"], r["column"]) for r in table]
    jac = table[names.index(JACOBIAN)] if JACOBIAN in names else None
    out.append({"width": width, "best": f"{table[0]['indicator']} ({table[0]['column']})",
                "best_next": table[0]["spearman_next_task"], "columns": len(table),
                "jacobian_rank": names.index(JACOBIAN) + 1 if jac else None,
                "jacobian_same": jac["spearman_same_task"] if jac else float("nan"),
                "jacobian_next": jac["spearman_next_task"] if jac else float("nan")})
  return out


def early_warning(runs_by_width: dict, summary: list[dict], task: int) -> list[dict]:
  """Per column: Spearman over (width, seed) runs of its end-of-task-`task` value with lost_at."""
  lost = {(r["width"], r["seed"]): r["lost_at"] for r in summary}
  columns = []
  for _, (_, rows) in runs_by_width.items():
    columns += [p for p in report.series(rows) if p not in columns]
  table = []
  for indicator, column in columns:
    values, outcome = [], []
    for width, (_, rows) in runs_by_width.items():
      for (seed, t), value in report.task_values(rows, indicator, column).items():
        if t == task and (width, seed) in lost:
          values.append(value)
          outcome.append(lost[(width, seed)])
    table.append({"indicator": "rho_hat" if indicator == "crossed" else indicator,
                  "column": column, "spearman_lost_at": report.spearman(values, outcome),
                  "runs": len(values)})
  key = lambda r: -abs(r["spearman_lost_at"]) if np.isfinite(r["spearman_lost_at"]) else 1
  return sorted(table, key=key)


def _fmt(v) -> str:
  return "n/a" if v is None or not np.isfinite(v) else f"{v:+.2f}"


def _with_jacobian(table: list[dict], top: int) -> list[tuple[int, dict]]:
  """The first `top` rows (1-based rank) and jacobian_sigma_min's rows wherever they stand;
  a column with no correlation (constant, e.g. sigma_min = 0 throughout) has no rank."""
  value = lambda r: r.get("spearman_next_task", r.get("spearman_lost_at"))
  return [(i + 1 if np.isfinite(value(r)) else "-", r) for i, r in enumerate(table)
          if i < top or r["indicator"] == "jacobian_sigma_min"]


def write_tables(path: str, summary, pooled, within, early, args, tasks: int) -> str:
  widths = sorted({r["width"] for r in summary})
  lines = [f"Main benchmark (random-label digits, Adam lr 1e-3, {args.seeds} seeds x {tasks} "
           f"tasks of {args.epochs} epochs) at widths {', '.join(map(str, widths))}; every "
           f"indicator at the end of each task. Trainability is lost at the first task whose "
           f"online accuracy falls below chance + {args.lost_fraction} x (best earlier task "
           "- chance).", "",
           "| width | params | peak online acc. (task) | mean of last 5 tasks | lost at task "
           "(per seed) | sigma_min(J) ~ 0 from the end of task (per seed) |",
           "| --- | --- | --- | --- | --- | --- |"]
  for w in widths:
    rs = [r for r in summary if r["width"] == w]
    peak_task = ", ".join(str(r["peak_task"] + 1) for r in rs)
    lost = ", ".join(str(r["lost_at"] + 1) if r["lost"] else f"> {tasks}" for r in rs)
    singular = ", ".join(str(r["singular_from"] + 1) if r["singular_from"] < tasks
                         else f"> {tasks}" for r in rs)
    lines.append(f"| {w} | {rs[0]['params']} | {np.mean([r['peak_accuracy'] for r in rs]):.2f} "
                 f"({peak_task}) | {np.mean([r['final_accuracy'] for r in rs]):.2f} | {lost} | "
                 f"{singular} |")
  lines += ["", f"Tasks are numbered from 1. sigma_min(J) ~ 0: at most {SINGULAR:g} x its value "
            f"at the end of task 1 (network column, {indicators.Options().jacobian_examples} probe "
            "examples).", "",
            f"### Predictor report pooled over all widths (top {args.top}, and sigma_min(J))", "",
            "| rank | indicator | column | with same-task accuracy | with next-task accuracy |",
            "| --- | --- | --- | --- | --- |"]
  for rank, r in _with_jacobian(pooled, args.top):
    lines.append(f"| {rank} | {r['indicator']} | {r['column']} | "
                 f"{_fmt(r['spearman_same_task'])} | {_fmt(r['spearman_next_task'])} |")
  lines += ["", "### Within each width", "",
            "| width | best column (next-task corr.) | sigma_min(J) network: rank | same-task "
            "| next-task |", "| --- | --- | --- | --- | --- |"]
  for r in within:
    rank = f"{r['jacobian_rank']} of {r['columns']}" if r["jacobian_rank"] else "n/a"
    lines.append(f"| {r['width']} | {r['best']} {_fmt(r['best_next'])} | {rank} | "
                 f"{_fmt(r['jacobian_same'])} | {_fmt(r['jacobian_next'])} |")
  lines += ["", f"### Early warning: value at the end of task {args.early_task + 1} against "
            f"the task at which trainability is lost, over {len(summary)} runs "
            f"(top {args.top}, and sigma_min(J))", "",
            "| rank | indicator | column | Spearman with lost-at task |", "| --- | --- | --- | --- |"]
  for rank, r in _with_jacobian(early, args.top):
    lines.append(f"| {rank} | {r['indicator']} | {r['column']} | {_fmt(r['spearman_lost_at'])} |")
  text = "\n".join(lines) + "\n"
  with open(path, "w") as f:
    f.write(text)
  return text


def plot(path: str, runs_by_width: dict, chance: float) -> None:
  fig = Figure(figsize=(11, 3.8), dpi=110)
  acc_ax, jac_ax = fig.subplots(1, 2)
  colors = iter(np.linspace(0.1, 0.9, len(runs_by_width)))
  for width, (result_rows, rows) in runs_by_width.items():
    shade = next(colors)
    color = (shade, 0.2, 1 - shade)
    task_ids, accuracy = results.per_task(result_rows, "online_accuracy")
    acc_ax.plot(task_ids + 1, accuracy.mean(0), color=color, marker="o", markersize=3,
                label=f"m = {width}")
    by_task = report.task_values(rows, *JACOBIAN)
    seeds = sorted({s for s, _ in by_task})
    jac_ax.plot(task_ids + 1, [np.mean([by_task[(s, t)] for s in seeds]) for t in task_ids],
                color=color, marker="o", markersize=3, label=f"m = {width}")
  results.accuracy_axis(acc_ax, chance)
  acc_ax.set_xlabel("task")
  acc_ax.set_title("average online accuracy (mean over seeds)", fontsize=9)
  jac_ax.set_yscale("symlog", linthresh=1e-2)  # sigma_min = 0 (singular J) stays visible
  jac_ax.set_ylim(bottom=0)
  jac_ax.set_xlabel("task")
  jac_ax.set_title("sigma_min(J) of the network at each task's end", fontsize=9)
  jac_ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--widths", default="16,32,64,128,256,512")
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--tasks", type=int, default=20)
  parser.add_argument("--epochs", type=int, default=100)
  parser.add_argument("--indicators", default="all",
                      help="indicators to record (as `trainability run --indicators`); "
                      "jacobian_sigma_min is always added")
  parser.add_argument("--lost-fraction", type=float, default=0.5)
  parser.add_argument("--early-task", type=int, default=1,
                      help="0-based task whose end-of-task values serve as the early warning")
  parser.add_argument("--top", type=int, default=10, help="rows of each ranking shown")
  parser.add_argument("--checkpoint-every", type=int, default=5)
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  parser.add_argument("--name", default="width_lot", help="stem of the output files")
  args = parser.parse_args(argv)
  try:
    widths = [int(w) for w in args.widths.split(",")]
  except ValueError:
    raise SystemExit(f"--widths: {args.widths!r} is not accepted; give positive integers "
                     "separated by commas, e.g. 16,32,64")
  if not widths or min(widths) < 1:
    raise SystemExit(f"--widths: {args.widths!r} is not accepted; give positive integers")
  if args.indicators != "all" and "jacobian_sigma_min" not in args.indicators.split(","):
    args.indicators += ",jacobian_sigma_min"
  if not 0 < args.lost_fraction < 1:
    raise SystemExit(f"--lost-fraction: {args.lost_fraction} is not accepted; give a number "
                     "in (0, 1)")
  if not 0 <= args.early_task < args.tasks:
    raise SystemExit(f"--early-task: {args.early_task} is not accepted; give 0 ... "
                     f"{args.tasks - 1}")
  base = base_config(args)
  dataset = data.load_for(base)  # the same data set at every width
  chance = 1.0 / dataset.num_classes
  runs_by_width, summary = {}, []
  for width in widths:
    config = width_config(base, width, dataset)
    run_dir = os.path.join(args.out, args.name, f"width_{width}")
    run_width(config, run_dir)
    result_rows = results.read_rows(os.path.join(run_dir, results.RESULTS_FILE))
    runs_by_width[width] = (result_rows, report.read_indicator_rows(
        os.path.join(run_dir, report.INDICATORS_FILE)))
    summary += width_rows(width, parameter_count(config, dataset), *runs_by_width[width], chance,
                          args.lost_fraction)
  stem = os.path.join(args.out, args.name)
  with open(f"{stem}.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(summary)
  pooled = report.predictor_report(list(runs_by_width.values()))
  within = within_width_ranks(runs_by_width)
  early = early_warning(runs_by_width, summary, args.early_task)
  print(write_tables(f"{stem}.md", summary, pooled, within, early, args, args.tasks))
  plot(f"{stem}.png", runs_by_width, chance)
  print(f"wrote {stem}.csv, .md and .png")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
