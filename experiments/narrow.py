"""Memorization against width: when can a one-hidden-layer net fit n random labels?

Zhang et al. (NeurIPS 2021, "When Expressivity Meets Trainability: Fewer than
n Neurons Can Work") prove that width m >= 2n/d suffices for a zero-loss
global minimizer (n samples of dimension d, smooth activation), that a region
around a mirrored LeCun init has no bad local minima, and that projected
gradient methods trained there beat SGD. This script measures, for n
random-label samples:

* data: synthetic Gaussian inputs (d = 20) and digits (d = 64), n = 80 each;
* nets: one hidden layer, tanh, softplus and relu, widths 2 ... 128;
* arms: `adam` (LeCun init), `mirrored` (Adam from the mirrored LeCun init,
  `--init mirrored_lecun`) and `projected` (the same, each layer projected onto
  its ball of radius 1 x its initial norm around the init after every update,
  `--constraint init_ball`: our design, the paper's constraint set was not
  available here);
* full-batch Adam, lr 1e-2, 2,000 steps; every width and seed of an arm run as
  ONE program: the widths embedded in the widest (`trainability.sweep`).

Recorded per run: final training loss and accuracy, the steps to fit (the
first check, every 20 steps, at which every training label is predicted), and
sigma_min(J) of the Jacobian of the n x 10 logits with respect to all
parameters (`indicators.jacobian_sigma_min`, in float64) at init and at the
end. Writes `results/narrow.csv` (one row per run, appended as each arm
finishes; a rerun resumes after the last finished arm), `narrow_table.md`
(means over seeds) and `narrow.png`.

    python experiments/narrow.py            # 2 data sets x 3 activations x 3 arms, ~20 min on 2 cores
    python experiments/narrow.py --quick    # a smoke run (the tests)
"""

from __future__ import annotations

import argparse
import csv
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from matplotlib.figure import Figure

from trainability import Config, data, devices, indicators, models, sweep
from trainability.components import Component

ARMS = {
    "adam": dict(init="lecun"),
    "mirrored": dict(init="mirrored_lecun"),
    "projected": dict(init="mirrored_lecun", constraint="init_ball", constraint_radius=1.0),
}
DATA = {"gaussian": dict(dataset="gaussian", gaussian_dim=20), "digits": dict(dataset="digits")}
ACTIVATIONS = ("tanh", "softplus", "relu")
FIELDS = ["dataset", "activation", "arm", "width", "seed", "params", "final_loss",
          "final_train_accuracy", "steps_to_fit", "sigma_min_init", "sigma_min_end"]


def fit_recorder(model, n: int, every: int) -> Component:
  """Records the training loss and accuracy on all n examples every `every` steps."""

  def record(step, state, hp):
    del hp
    x, y = step.task.examples(jnp.arange(n))
    logits, _ = model.apply(step.params, step.model_state, x)
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
    return {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}, state

  return Component("fit", record=record, every=every)


def sigma_min(model, params, model_state, x):
  """sigma_min(J) of each run (vmapped), the whole network, in float64."""
  with jax.enable_x64(True):
    wide = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)
    one = lambda p, s: indicators.model_jacobian_sigma_min(model, p, s, x)[0]
    return np.asarray(jax.jit(jax.vmap(one))(wide(params), wide(model_state)))


def parameter_count(width: int, d: int, classes: int = 10) -> int:
  return width * (d + 1) + classes * (width + 1)


def run_arm(dataset_name, activation, arm, args, dataset):
  base = Config(**DATA[dataset_name], subset=args.n, tasks=1, epochs=args.steps,
                batch_size=args.n, depth=1, width=max(args.widths), activation=activation,
                lr=args.lr, seeds=args.seeds, **ARMS[arm])
  grid = sweep.make_grid(base, {"width": args.widths})
  (program,) = sweep.plan(grid)
  shape = dataset.x_train.shape[1:]
  model = models.make_model(program.config, shape, dataset.num_classes, unit_masks=True)
  trainer, state = sweep.program_start(program, dataset, base,
                                       (fit_recorder(model, args.n, args.every),))
  end, metrics = jax.jit(jax.vmap(trainer.run_tasks, in_axes=(0, None)))(state, jnp.arange(1))
  runs = len(program.points) * base.seeds
  state, end, metrics = (devices.gather(t, runs) for t in (state, end, metrics))
  x = dataset.x_train[: args.n].astype(np.float64)
  low_init = sigma_min(model, state.params, state.model_state, x)
  low_end = sigma_min(model, end.params, end.model_state, x)
  fit = metrics.records["fit"]                        # (runs, tasks, evaluations)
  accuracy, loss = np.asarray(fit["accuracy"])[:, 0], np.asarray(fit["loss"])[:, 0]
  d = int(np.prod(shape))
  rows = []
  for i in range(runs):
    point, seed = program.points[i // base.seeds], base.seed + i % base.seeds
    width = point.values["width"]
    fitted = np.flatnonzero(accuracy[i] >= 1.0)
    rows.append({
        "dataset": dataset_name, "activation": activation, "arm": arm, "width": width,
        "seed": seed, "params": parameter_count(width, d), "final_loss": f"{loss[i, -1]:.6g}",
        "final_train_accuracy": f"{accuracy[i, -1]:.4f}",
        "steps_to_fit": int((fitted[0] + 1) * args.every) if fitted.size else "",
        "sigma_min_init": f"{low_init[i]:.6g}", "sigma_min_end": f"{low_end[i]:.6g}"})
  return rows


def read_rows(path):
  if not os.path.exists(path):
    return []
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def summary(rows):
  """Means over seeds per (dataset, activation, arm, width); steps to fit only
  when every seed fitted."""
  groups = {}
  for r in rows:
    groups.setdefault((r["dataset"], r["activation"], r["arm"], int(r["width"])), []).append(r)
  out = []
  for (ds, act, arm, width), rs in groups.items():
    steps = [r["steps_to_fit"] for r in rs]
    out.append({"dataset": ds, "activation": act, "arm": arm, "width": width,
                "params": int(rs[0]["params"]),
                "final_loss": np.mean([float(r["final_loss"]) for r in rs]),
                "train_accuracy": np.mean([float(r["final_train_accuracy"]) for r in rs]),
                "steps_to_fit": (np.mean([int(s) for s in steps]) if all(steps) else None),
                "sigma_min_init": np.mean([float(r["sigma_min_init"]) for r in rs]),
                "sigma_min_end": np.mean([float(r["sigma_min_end"]) for r in rs])})
  return out


def thresholds(stats):
  """Per (dataset, activation, arm): the smallest width from which every wider
  width fitted every seed, and from which sigma_min(J) > 1e-6 at init / at the end."""
  out = {}
  for s in sorted(stats, key=lambda s: -s["width"]):
    key = (s["dataset"], s["activation"], s["arm"])
    entry = out.setdefault(key, {"fits": None, "init": None, "end": None, "open": {
        "fits": True, "init": True, "end": True}})
    for name, ok in (("fits", s["steps_to_fit"] is not None),
                     ("init", s["sigma_min_init"] > 1e-6), ("end", s["sigma_min_end"] > 1e-6)):
      if entry["open"][name] and ok:
        entry[name] = s["width"]
      else:
        entry["open"][name] = False
  return out


def write_table(rows, args, path):
  lines = ["### Widths from which (every wider net too): all labels fitted, sigma_min(J) > 1e-6",
           "", "| data | activation | arm | fits | sigma_min(J) > 0 at init | at the end |",
           "| --- | --- | --- | --- | --- | --- |"]
  for (ds, act, arm), t in thresholds(summary(rows)).items():
    if ds in args.datasets:
      cells = [str(t[k]) if t[k] is not None else "none" for k in ("fits", "init", "end")]
      lines.append(f"| {ds} | {act} | {arm} | " + " | ".join(cells) + " |")
  lines.append("")
  for ds in args.datasets:
    d = DATA[ds].get("gaussian_dim", 64)
    lines += [f"### {ds} (n = {args.n}, d = {d}, 10 classes: n/d = {args.n / d:.3g}, "
              f"2n/d = {2 * args.n / d:.3g}, P = n at m = {(args.n - 10) / (d + 11):.3g}, "
              f"P = n C at m = {(10 * args.n - 10) / (d + 11):.3g})", "",
              "| activation | arm | m | P | train acc | final loss | steps to fit | "
              "sigma_min(J) init | sigma_min(J) end |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in summary([r for r in rows if r["dataset"] == ds]):
      steps = "not fitted" if s["steps_to_fit"] is None else f"{s['steps_to_fit']:.0f}"
      lines.append(f"| {s['activation']} | {s['arm']} | {s['width']} | {s['params']} | "
                   f"{s['train_accuracy']:.3f} | {s['final_loss']:.2e} | {steps} | "
                   f"{s['sigma_min_init']:.2e} | {s['sigma_min_end']:.2e} |")
    lines.append("")
  with open(path, "w") as f:
    f.write("\n".join(lines))


def plot(rows, args, path):
  fig = Figure(figsize=(15, 4.2 * len(args.datasets)))
  axes = fig.subplots(len(args.datasets), 3, squeeze=False)
  styles = {"adam": "-", "mirrored": "--", "projected": ":"}
  colors = dict(zip(ACTIVATIONS, ("C0", "C1", "C2")))
  for row_i, ds in enumerate(args.datasets):
    d = DATA[ds].get("gaussian_dim", 64)
    stats = summary([r for r in rows if r["dataset"] == ds])
    for col, (key, label) in enumerate((("train_accuracy", "training accuracy (end)"),
                                        ("sigma_min_init", "sigma_min(J) at init"),
                                        ("sigma_min_end", "sigma_min(J) at the end"))):
      ax = axes[row_i, col]
      for act in ACTIVATIONS:
        for arm in ARMS:
          s = sorted((x for x in stats if x["activation"] == act and x["arm"] == arm),
                     key=lambda x: x["width"])
          if s:
            ax.plot([x["width"] for x in s], [max(x[key], 1e-12) for x in s], styles[arm],
                    color=colors[act], marker=".", label=f"{act} {arm}")
      for m, text, color in ((2 * args.n / d, "2n/d", "k"),
                             ((args.n - 10) / (d + 11), "P = n", "0.5"),
                             ((10 * args.n - 10) / (d + 11), "P = nC", "r")):
        ax.axvline(m, color=color, lw=0.8, ls="-.")
        ax.text(m, 1.0, text, transform=ax.get_xaxis_transform(), fontsize=8, ha="center",
                va="bottom", color=color)
      ax.set_xscale("log", base=2)
      if key != "train_accuracy":
        ax.set_yscale("log")
      ax.set_xlabel("hidden width m")
      ax.set_title(f"{ds} (n={args.n}, d={d}): {label}", fontsize=10, pad=14)
  axes[0, 0].legend(fontsize=7, ncol=3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=80, help="training examples")
  parser.add_argument("--widths", default="2,4,6,8,12,16,20,24,32,48,64,96,128")
  parser.add_argument("--steps", type=int, default=2000, help="full-batch Adam steps")
  parser.add_argument("--every", type=int, default=20, help="steps between fit checks")
  parser.add_argument("--lr", type=float, default=1e-2)
  parser.add_argument("--seeds", type=int, default=2)
  parser.add_argument("--datasets", default=",".join(DATA))
  parser.add_argument("--activations", default=",".join(ACTIVATIONS))
  parser.add_argument("--arms", default=",".join(ARMS))
  parser.add_argument("--quick", action="store_true",
                      help="tiny sizes, gaussian and tanh only: a smoke run")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  args = parser.parse_args(argv)
  if args.quick:
    args.n, args.widths, args.steps, args.every, args.seeds = 20, "2,8", 40, 10, 1
    args.datasets, args.activations, args.arms = "gaussian", "tanh", "adam,projected"
  args.widths = [int(w) for w in args.widths.split(",")]
  for name, known in (("datasets", DATA), ("activations", ACTIVATIONS), ("arms", ARMS)):
    chosen = getattr(args, name).split(",")
    if not set(chosen) <= set(known):
      parser.error(f"{name}: {getattr(args, name)!r} is not accepted; choose from "
                   f"{', '.join(known)}")
    setattr(args, name, chosen)
  devices.use_cpu_cores()
  os.makedirs(args.out, exist_ok=True)
  table = os.path.join(args.out, "narrow.csv")
  rows = read_rows(table)
  done = {(r["dataset"], r["activation"], r["arm"]) for r in rows}
  for ds in args.datasets:
    dataset = data.load_for(Config(**DATA[ds], subset=args.n))
    for activation in args.activations:
      for arm in args.arms:
        if (ds, activation, arm) in done:
          continue
        started = time.time()
        new = run_arm(ds, activation, arm, args, dataset)
        with open(table, "a", newline="") as f:
          writer = csv.DictWriter(f, FIELDS)
          if not rows:
            writer.writeheader()
          writer.writerows(new)
        rows += new
        print(f"{ds} {activation} {arm}: {len(new)} runs in {time.time() - started:.0f} s",
              flush=True)
  write_table(rows, args, os.path.join(args.out, "narrow_table.md"))
  plot(rows, args, os.path.join(args.out, "narrow.png"))
  print(f"wrote {table}, narrow_table.md, narrow.png")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
