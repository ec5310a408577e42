"""What TRAC does on the main benchmark: its scale S and the weights' distance from init.

    python experiments/trac_scale.py              # main benchmark, 40 tasks, 2 seeds (~5 min)
    python experiments/trac_scale.py --tasks 3    # a quick look

The main benchmark (digits, random labels, 100 epochs per task, Adam lr 1e-3)
with `--scheduler trac`, the same run as `scheduler_modes.py --suite main`'s
adam+trac arm, driven task by task through the Python API so that each task's
end can be read from the run state: TRAC's scale S, and for TRAC and plain
Adam each the relative distance of the weights from their initialization,
||theta - theta_0|| / ||theta_0||, beside the task's online accuracy. One
compiled program per arm (the same chunk of one task, called 40 times).
Writes experiments/results/trac_scale.csv, one row per arm x seed x task,
after every task.
"""

from __future__ import annotations

import argparse
import csv
import os

import jax
import jax.numpy as jnp
import numpy as np

from trainability import Config, make_trainer, seed_keys, trac

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "results", "trac_scale.csv")
ARMS = {"adam": {}, "adam+trac": {"scheduler": "trac"}}
COLUMNS = ["arm", "seed", "task", "online_accuracy", "trac_scale", "relative_distance"]


def relative_distance(params, start):
  """||params - start|| / ||start|| over every parameter, per seed (leading axis)."""
  sq = lambda tree: sum(jnp.sum(x.reshape(x.shape[0], -1) ** 2, axis=1)
                        for x in jax.tree.leaves(tree))
  return jnp.sqrt(sq(jax.tree.map(jnp.subtract, params, start)) / sq(start))


def run_arm(name: str, config: Config, writer, handle) -> None:
  trainer = make_trainer(config)
  keys = seed_keys(config)
  state = jax.jit(jax.vmap(trainer.init))(keys)
  start = state.params
  run_task = jax.jit(jax.vmap(trainer.run_tasks, in_axes=(0, None)))
  for t in range(config.tasks):
    state, metrics = run_task(state, jnp.arange(t, t + 1))
    found = trac.state_of(state.opt_state)
    scale = (np.full(config.seeds, np.nan) if found is None else np.asarray(found.scale))
    distance = np.asarray(relative_distance(state.params, start))
    for s in range(config.seeds):
      writer.writerow([name, config.seed + s, t + 1,
                       f"{float(metrics.online_accuracy[s, 0]):.4f}", f"{scale[s]:.4g}",
                       f"{distance[s]:.4g}"])
    handle.flush()
    shown = "" if found is None else f", S {scale.mean():.3g}"
    print(f"  {name} task {t + 1}: online {np.mean(metrics.online_accuracy[:, 0]):.3f}"
          f"{shown}, distance {distance.mean():.3g}", flush=True)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tasks", type=int, default=40)
  parser.add_argument("--seeds", type=int, default=2)
  parser.add_argument("--epochs", type=int, default=Config().epochs, help="epochs per task")
  parser.add_argument("--out", default=OUT)
  args = parser.parse_args(argv)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w", newline="") as handle:
    writer = csv.writer(handle)
    writer.writerow(COLUMNS)
    for name, changes in ARMS.items():
      config = Config(tasks=args.tasks, seeds=args.seeds, epochs=args.epochs, **changes)
      run_arm(name, config, writer, handle)
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
