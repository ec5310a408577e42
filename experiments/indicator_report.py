"""Which trainability indicator predicts the accuracy of the next task? (paper Figs. 1 and 4)

Runs the main command's benchmark (random-label digits, 1,000 images, 100
epochs per task, MLP 64-256-256-10, batch 50) in several arms that lose
trainability at different speeds: Adam at lr 1e-3, 3e-4 and 1e-4, and Adam
1e-3 with coupled L2 1e-3. Every run records all 19 indicators every 400
steps (5 evaluations per task). Then it pools every arm, seed and task and
ranks the indicators by the Spearman correlation of their end-of-task value
with the average online accuracy of the same and of the next task
(`trainability report` on the same runs gives the same table). Writes

* `<name>.csv` and `<name>.md`: the predictor report;
* `<name>.png`: online accuracy against every indicator (paper Fig. 1) for
  the arm `--figure-arm`.

    python experiments/indicator_report.py                 # 4 arms x 2 seeds x 20 tasks, ~10 min
    python experiments/indicator_report.py --tasks 4 --epochs 20 --every 100
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np

import arms
from trainability import Config, devices, make_trainer, report, results, seed_keys

ARMS = {"adam 1e-3": {}, "adam 3e-4": {"lr": 3e-4}, "adam 1e-4": {"lr": 1e-4},
        "l2 1e-3": {"l2": 1e-3}}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, default=2)
  parser.add_argument("--tasks", type=int, default=20)
  parser.add_argument("--epochs", type=int, default=100)
  parser.add_argument("--every", type=int, default=400, help="steps between indicator passes")
  parser.add_argument("--figure-arm", default="adam 1e-3", choices=list(ARMS))
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  parser.add_argument("--name", default="indicator_report", help="stem of the output files")
  args = parser.parse_args(argv)
  devices.use_cpu_cores()
  base = Config(tasks=args.tasks, epochs=args.epochs, seeds=args.seeds, indicators="all",
                indicator_every=args.every, **arms.EARLIER_SCHEDULER)
  runs = {}
  for name, changes in ARMS.items():
    config = base.replace(**changes)
    trainer = make_trainer(config)
    started = time.time()
    metrics = devices.gather(jax.jit(jax.vmap(trainer.train))(
      devices.shard_runs(seed_keys(config))), config.seeds)
    seeds, task_ids = range(config.seeds), range(config.tasks)
    result_rows = results.metric_rows(metrics, seeds, task_ids, heldout=False)
    rows = report.indicator_rows(metrics.indicators, trainer.indicator_labels, seeds, task_ids,
                                 config.indicator_every)
    runs[name] = (result_rows, rows)
    online = np.asarray(metrics.online_accuracy).mean(0)
    print(f"{name:>10} ({time.time() - started:5.1f} s): "
          + " ".join(f"{v:.2f}" for v in online), flush=True)
  table = report.predictor_report(list(runs.values()))
  os.makedirs(args.out, exist_ok=True)
  stem = os.path.join(args.out, args.name)
  report.write_report(table, f"{stem}.csv")
  text = report.format_report(table)
  with open(f"{stem}.md", "w") as f:
    f.write(f"Arms: {', '.join(ARMS)}; {args.seeds} seeds x {args.tasks} tasks; indicators "
            f"every {args.every} steps, end-of-task values.\n\n{text}\n")
  result_rows, rows = runs[args.figure_arm]
  report.plot_indicators(result_rows, rows, f"{stem}.png",
                         f"{args.figure_arm}: online accuracy (black) and each indicator")
  print(text)
  print(f"wrote {stem}.csv, .md and .png")


if __name__ == "__main__":
  main()
