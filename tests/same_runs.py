"""Bit-for-bit comparison of short runs across a refactor (a developer tool, not a test).

    python tests/same_runs.py --write before.npz     # on the code before the change
    python tests/same_runs.py --compare before.npz   # on the code after it

Each case is a short run (digits, 3 tasks, 2 seeds) that switches on one
feature of the loop, or several together; every array of its TaskMetrics
(accuracies, losses, the scheduler's checks, the indicators) is saved, and
--compare reports any case whose arrays are not identical to the last bit.
Run with `PYTHONPATH=<other checkout>` to take the package from another tree.
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

from trainability import Config, make_trainer, seed_keys

SMALL = dict(subset=200, batch_size=20, epochs=3, tasks=3, seeds=2, width=32)
SCHED = dict(scheduler="noise_curvature", check_every=5)
CASES = {
    "adam": {},
    "sgd_l2": dict(optimizer="sgd", l2=1e-3),
    "adamw": dict(optimizer="adamw"),
    "l2_init": dict(regularizer="l2_init", reg_coef=1e-2),
    "wasserstein": dict(regularizer="wasserstein", reg_coef=1e-2),
    "spectral": dict(regularizer="spectral", reg_coef=1e-3),
    "orthogonal": dict(regularizer="orthogonal", reg_coef=1e-3),
    "sp_step": dict(shrink_perturb="step", shrink=1e-3, perturb=1e-3),
    "sp_task_init": dict(shrink_perturb="task", shrink=0.2, perturb=0.1, perturb_noise="init"),
    "cbp": dict(unit_reset="cbp", replacement_rate=1e-2, maturity=5),
    "redo": dict(unit_reset="redo", redo_every=10, redo_tau=0.5),
    "reset_model": dict(reset="model"),
    "reset_optimizer": dict(reset="optimizer"),
    "reset_both_cbp": dict(reset="both", unit_reset="cbp", replacement_rate=1e-2, maturity=5),
    "paper": dict(SCHED, threshold="paper"),
    "reference": dict(SCHED, threshold="reference"),
    "stability": dict(SCHED, threshold="stability", floor=0.05),
    "power": dict(SCHED, curvature="power", curvature_steps=2, threshold="paper", beta=1e4),
    "indicators": dict(indicators="all", indicator_every=10),
    "all_together": dict(SCHED, indicators="all", indicator_every=10, regularizer="l2_init",
                         reg_coef=1e-2, unit_reset="cbp", replacement_rate=1e-2, maturity=5,
                         shrink_perturb="step", shrink=1e-3, perturb=1e-3),
    "sched_reset_redo": dict(SCHED, reset="optimizer", unit_reset="redo", redo_every=10),
    "class_incremental": dict(stream="class_incremental", classes_per_task=3, heldout=True,
                              indicators="dormant_fraction,srank", indicator_every=5),
    "permuted_heldout": dict(stream="permuted_inputs", heldout=True, **SCHED),
    "cnn_batchnorm_redo": dict(model="cnn", channels=(4,), norm="batchnorm", unit_reset="redo",
                               redo_every=10, indicators="all", indicator_every=10),
    "crelu_layernorm_sched": dict(activation="crelu", norm="layernorm", **SCHED),
}


def run(name: str) -> dict[str, np.ndarray]:
  config = Config(**{**SMALL, **CASES[name]})
  trainer = make_trainer(config)
  state = jax.jit(jax.vmap(trainer.init))(seed_keys(config))
  _, metrics = jax.jit(jax.vmap(trainer.run_tasks, in_axes=(0, None)))(
      state, jnp.arange(config.tasks))
  leaves = jax.tree_util.tree_leaves_with_path(metrics)
  return {f"{name}{jax.tree_util.keystr(path)}": np.asarray(v) for path, v in leaves}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  group = parser.add_mutually_exclusive_group(required=True)
  group.add_argument("--write")
  group.add_argument("--compare")
  parser.add_argument("--cases", default="all")
  args = parser.parse_args(argv)
  names = list(CASES) if args.cases == "all" else args.cases.split(",")
  arrays = {}
  for name in names:
    arrays.update(run(name))
    print(f"  {name}: done", flush=True)
  if args.write:
    np.savez(args.write, **arrays)
    print(f"wrote {len(arrays)} arrays of {len(names)} cases to {args.write}")
    return 0
  before = np.load(args.compare)
  # Names of earlier versions: TaskMetrics.checks / .indicators became records.
  renamed = lambda k: k.replace(".checks", ".records['scheduler']").replace(
      ".indicators", ".records['indicators']")
  before = {renamed(k): before[k] for k in before.files}
  differ = 0
  for name in names:
    mine = {k: v for k, v in arrays.items() if k.startswith(name + ".") or k.startswith(name + "[")}
    theirs = {k: v for k, v in before.items() if k.split(".")[0].split("[")[0] == name}
    keys = sorted(set(mine) | set(theirs))
    bad = [k for k in keys if k not in mine or k not in theirs
           or mine[k].shape != theirs[k].shape
           or not np.array_equal(mine[k], theirs[k], equal_nan=True)]
    print(f"{name}: {'identical' if not bad else 'DIFFERS: ' + ', '.join(bad[:4])} "
          f"({len(keys)} arrays)")
    differ += bool(bad)
  print(f"{len(names) - differ} of {len(names)} cases identical to the last bit")
  return 1 if differ else 0


if __name__ == "__main__":
  sys.exit(main())
