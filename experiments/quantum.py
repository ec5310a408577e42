"""A data re-uploading classifier at increasing depth: per-layer indicators, with and without the scheduler.

Issue 14, item 5. `quantum.circuits.reuploading_classifier` (per layer and
qubit R_y(w . x + phi_0) R_z(phi_1), then a CZ ladder; logits 5 <Z_c>) on
`--qubits` qubits classifies the digits 0-3 of scikit-learn's 8x8 digits,
each image average-pooled to 4x4 (16 features, standardized on the training
split). Every depth in `--depths` is trained for `--steps` steps of Adam
(`--lr`, batches of `--batch` drawn with replacement), `--seeds` seeds vmapped
in one program, in two arms:

* `adam`: optax.adam alone;
* `scheduler`: `noise_curvature_scheduler(optax.adam(lr))` with the library's
  defaults (threshold "reference", a check every 40 steps, Lanczos curvature),
  the whole run one task (warming allowed in its first 30%).

Every `--record-every` steps (and at step 0) the library's indicator suite
runs, unchanged, on the circuit's parameters at a fixed probe batch (the first
64 training examples), per circuit layer: the gradient norm, the per-example
gradient noise bound alpha_g = B ||g||^2 / sigma2 (B = the probe size), the
top Hessian eigenvalue of the layer's block (sharpness, Lanczos), the
effective step (Adam's mean step times the scheduler's multiplier) and the
combined threshold alpha_tilde; plus the Jacobian's smallest singular value
(whole circuit) and the training loss and test accuracy.

Writes `results/quantum.csv` (a row per depth, arm, seed and record: loss,
accuracy, the multiplier's mean and each indicator's mean over layers),
`results/quantum_layers.csv` (a row per depth, arm, seed, record and layer),
both appended as each (depth, arm) finishes, so a rerun skips those done;
then `quantum.md` (the table) and `quantum.png` (the figure).

    python experiments/quantum.py      # depths 1-8, 6 qubits, 3 seeds, 300 steps, ~20 min on 2 cores
    python experiments/quantum.py --qubits 10 --depths 1,4,16 --steps 600 --record-every 100 \
        --name quantum_deep      # into the plateau: results/quantum_deep.*
    python experiments/quantum.py --depths 1,2 --qubits 3 --steps 20 --record-every 10   # a smoke run

From 9 circuit layers on, the per-layer curvature linearizes the circuit once
(`estimators.block_hvp`), so a 16-layer circuit compiles in minutes and fits in
memory; with a linearization per layer it needed a 32.6 GB buffer.
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

from barren_plateaus import int_list
from trainability import data, indicators, results
from trainability.quantum import circuits
from trainability.scheduler import noise_curvature_scheduler

ARMS = ("adam", "scheduler")
CLASSES = 4
PROBE = 64
PER_LAYER = ("gradient_norm", "alpha_g", "sharpness", "effective_step", "alpha_tilde")
NAMES = PER_LAYER + ("jacobian_sigma_min",)


def pooled_digits():
  """(x_train, y_train, x_test, y_test): digits 0-3, 4x4 average-pooled, 16 features
  standardized with the training split's statistics."""
  ds = data.load("digits", normalize="none")

  def take(x, y):
    keep = y < CLASSES
    x = x[keep, :, :, 0].reshape(-1, 4, 2, 4, 2).mean(axis=(2, 4)).reshape(-1, 16)
    return x.astype(np.float32), y[keep].astype(np.int32)

  x_train, y_train = take(ds.x_train, ds.y_train)
  x_test, y_test = take(ds.x_test, ds.y_test)
  mean, std = x_train.mean(0), x_train.std(0) + 1e-6
  return (x_train - mean) / std, y_train, (x_test - mean) / std, y_test


def make_train(depth: int, arm: str, qubits: int, steps: int, record_every: int, batch: int,
               lr: float, dataset):
  """A pure train(key) -> records (each leaf with a leading records axis), for vmap over seeds."""
  if arm not in ARMS:
    raise ValueError(f"arm: {arm!r} is not accepted; choose one of {', '.join(ARMS)}")
  x_train, y_train, x_test, y_test = (jnp.asarray(a) for a in dataset)
  # rolled: compile time (the suite and the scheduler differentiate the circuit many ways)
  # stays flat in depth
  model = circuits.reuploading_classifier(qubits, depth, x_train.shape[1], CLASSES, unroll=1)
  probe = (x_train[:PROBE], y_train[:PROBE])

  def example_loss(params, example):
    logits, _ = model.apply(params, {}, example[0][None])
    return optax.softmax_cross_entropy_with_integer_labels(logits[0], example[1])

  def mean_loss(params, examples):
    return jax.vmap(example_loss, in_axes=(None, 0))(params, examples).mean()

  optimizer = optax.adam(lr)
  if arm == "scheduler":
    optimizer = noise_curvature_scheduler(optimizer, learning_rate=lr, steps_per_task=steps)
  suite = indicators.make_suite(model, lambda p, s, e: example_loss(p, e), probe[0], NAMES,
                                learning_rate=lr)

  def measure(params, opt_state, suite_state, count):
    multiplier = jnp.ones((depth,)) if arm == "adam" else opt_state.multiplier
    values, suite_state = suite.compute(suite_state, params, {}, probe, opt_state=opt_state,
                                        count=count, multiplier=multiplier)
    logits, _ = model.apply(params, {}, x_test)
    record = {"train_loss": mean_loss(params, (x_train, y_train)),
              "test_accuracy": jnp.mean(jnp.argmax(logits, -1) == y_test),
              "multiplier": multiplier, **values}
    return record, suite_state

  def train(key):
    k_init, k_suite, k_batches = jax.random.split(key, 3)
    params, _ = model.init(k_init)
    opt_state = optimizer.init(params)
    suite_state = suite.init(params, k_suite)

    def step(carry, t):
      params, opt_state = carry
      idx = jax.random.randint(jax.random.fold_in(k_batches, t), (batch,), 0, x_train.shape[0])
      examples = (x_train[idx], y_train[idx])
      grads = jax.grad(mean_loss)(params, examples)
      extra = {}
      if arm == "scheduler":
        extra = dict(example_loss=example_loss, batch=examples, task_step=t, step=t)
      updates, opt_state = optimizer.update(grads, opt_state, params, **extra)
      return (optax.apply_updates(params, updates), opt_state), None

    def segment(carry, start):
      params, opt_state, suite_state = carry
      (params, opt_state), _ = jax.lax.scan(step, (params, opt_state),
                                            start + jnp.arange(record_every))
      record, suite_state = measure(params, opt_state, suite_state, start + record_every)
      return (params, opt_state, suite_state), record

    first, suite_state = measure(params, opt_state, suite_state, 0)
    _, later = jax.lax.scan(segment, (params, opt_state, suite_state),
                            jnp.arange(0, steps, record_every))
    return jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first, later)

  return train, suite.labels


def run_rows(depth, arm, seeds, records, labels, record_every):
  """The CSV rows of one (depth, arm): per seed and record, and per layer."""
  layers = labels["gradient_norm"][1:]
  runs, per_layer = [], []
  for s in range(seeds):
    for r in range(records["train_loss"].shape[1]):
      at = lambda name: np.asarray(records[name][s, r], float)
      row = {"depth": depth, "arm": arm, "seed": s, "step": r * record_every,
             "train_loss": float(at("train_loss")), "test_accuracy": float(at("test_accuracy")),
             "multiplier": float(at("multiplier").mean()),
             "jacobian_sigma_min": float(at("jacobian_sigma_min")[0])}
      columns = {n: at(n)[1:] if n in ("gradient_norm", "sharpness") else at(n) for n in PER_LAYER}
      row.update({f"{n}_mean": float(columns[n].mean()) for n in PER_LAYER})
      runs.append(row)
      for i, layer in enumerate(layers):
        per_layer.append({"depth": depth, "arm": arm, "seed": s, "step": r * record_every,
                          "layer": layer, **{n: float(columns[n][i]) for n in PER_LAYER},
                          "multiplier": float(at("multiplier")[i])})
  return runs, per_layer


def read(path):
  """Rows of quantum.csv or quantum_layers.csv with numbers parsed (arm and layer stay names)."""
  with open(path, newline="") as f:
    return [{k: (v if k in ("arm", "layer") else float(v)) for k, v in r.items()}
            for r in csv.DictReader(f)]


def summary(runs, layer_rows, depths):
  """Per (depth, arm): means over seeds at init and at the end of training."""
  out = []
  for depth in depths:
    for arm in ARMS:
      rs = [r for r in runs if r["depth"] == depth and r["arm"] == arm]
      if not rs:
        continue
      last = max(r["step"] for r in rs)
      start = [r for r in rs if r["step"] == 0]
      end = [r for r in rs if r["step"] == last]
      ls = [r for r in layer_rows if r["depth"] == depth and r["arm"] == arm]
      mean = lambda rows, key: float(np.mean([r[key] for r in rows]))
      out.append({
          "depth": depth, "arm": arm, "steps": int(last),
          "grad_init": mean(start, "gradient_norm_mean"),
          "alpha_g_init": float(np.median([r["alpha_g"] for r in ls if r["step"] == 0])),
          "sharpness_init": mean(start, "sharpness_mean"),
          "loss_init": mean(start, "train_loss"), "loss_end": mean(end, "train_loss"),
          "acc_end": mean(end, "test_accuracy"),
          "acc_end_sd": float(np.std([r["test_accuracy"] for r in end])),
          "grad_end": mean(end, "gradient_norm_mean"),
          "alpha_g_end": float(np.median([r["alpha_g"] for r in ls if r["step"] == last])),
          "sharpness_end": mean(end, "sharpness_mean"),
          "step_end": mean(end, "effective_step_mean"),
          "threshold_end": float(np.median([r["alpha_tilde"] for r in ls if r["step"] == last])),
          "multiplier_end": mean(end, "multiplier"),
          "sigma_min_end": mean(end, "jacobian_sigma_min")})
  return out


def table(rows, args) -> str:
  lines = [f"Re-uploading classifier, {args.qubits} qubits, digits 0-3 pooled to 16 features; "
           f"Adam {args.lr}, batch {args.batch}, {args.steps} steps; means over {args.seeds} "
           f"seeds; per-layer values are means over layers (alpha_g and alpha_tilde: medians). "
           "Init = step 0, end = the last record.", "",
           "| depth | arm | grad norm init | alpha_g init | sharpness init | loss init -> end | "
           "test acc end | grad norm end | alpha_g end | sharpness end | eff. step end | "
           "alpha_tilde end | multiplier end | sigma_min(J) end |",
           "| " + " | ".join(["---"] * 14) + " |"]
  for r in rows:
    lines.append(
        f"| {r['depth']} | {r['arm']} | {r['grad_init']:.2e} | {r['alpha_g_init']:.3g} | "
        f"{r['sharpness_init']:.3g} | {r['loss_init']:.3f} -> {r['loss_end']:.3f} | "
        f"{r['acc_end']:.3f} +- {r['acc_end_sd']:.3f} | {r['grad_end']:.2e} | "
        f"{r['alpha_g_end']:.3g} | {r['sharpness_end']:.3g} | {r['step_end']:.2e} | "
        f"{r['threshold_end']:.3g} | {r['multiplier_end']:.3f} | {r['sigma_min_end']:.3g} |")
  return "\n".join(lines) + "\n"


def _per_layer(layer_rows, depth, arm, step, key):
  """(layer positions 1..depth, the seed mean of `key` at each layer) at one record."""
  rows = [r for r in layer_rows if r["depth"] == depth and r["arm"] == arm and r["step"] == step]
  names = sorted({r["layer"] for r in rows})
  return (np.arange(1, len(names) + 1),
          [np.mean([r[key] for r in rows if r["layer"] == n]) for n in names])


def plot(path, runs, layer_rows, depths):
  """Top row: per circuit layer at init (adam arm), the gradient norm, the noise bound
  alpha_g and the block sharpness. Bottom row: test accuracy and the median layer's
  effective step / alpha_tilde over training (solid adam, dashed scheduler), and each
  layer's effective step / alpha_tilde at the end."""
  fig = Figure(figsize=(13, 7.2), dpi=110)
  (ax_grad, ax_noise, ax_sharp), (ax_acc, ax_step, ax_end) = fig.subplots(2, 3)
  colors = {d: c for d, c in zip(depths, [f"C{i}" for i in range(10)] * 4)}
  for depth in depths:
    for ax, key in ((ax_grad, "gradient_norm"), (ax_noise, "alpha_g"),
                    (ax_sharp, "sharpness")):
      x, y = _per_layer(layer_rows, depth, "adam", 0, key)
      if len(x):
        ax.plot(x, y, marker="o", markersize=3, color=colors[depth], label=f"depth {depth}")
    for arm, style in zip(ARMS, ("-", "--")):
      rs = [r for r in runs if r["depth"] == depth and r["arm"] == arm]
      if not rs:
        continue
      steps = sorted({r["step"] for r in rs})
      acc = [np.mean([r["test_accuracy"] for r in rs if r["step"] == s]) for s in steps]
      ax_acc.plot(steps, acc, linestyle=style, color=colors[depth],
                  label=f"depth {depth}, {arm}" if depth == depths[0] or arm == "adam" else None)
      stepped = [s for s in steps if s > 0]  # Adam has no step before its first update
      ratio = [np.median([r["effective_step"] / max(r["alpha_tilde"], 1e-30)
                          for r in layer_rows if r["depth"] == depth and r["arm"] == arm
                          and r["step"] == s]) for s in stepped]
      ax_step.plot(stepped, ratio, linestyle=style, color=colors[depth])
      x, step_end = _per_layer(layer_rows, depth, arm, steps[-1], "effective_step")
      _, threshold_end = _per_layer(layer_rows, depth, arm, steps[-1], "alpha_tilde")
      ax_end.plot(x, np.asarray(step_end) / np.maximum(threshold_end, 1e-30), linestyle=style,
                  marker="o", markersize=3, color=colors[depth])
  ax_grad.set(yscale="log", xlabel="circuit layer", ylabel="||dL/dtheta_layer||",
              title="gradient norm per layer at init (adam arm)")
  ax_noise.set(yscale="log", xlabel="circuit layer", ylabel="alpha_g = B ||g||^2 / sigma2",
               title="gradient-noise bound per layer at init")
  ax_sharp.set(yscale="log", xlabel="circuit layer", ylabel="top eigenvalue of the layer block",
               title="sharpness per layer at init")
  ax_acc.set(xlabel="step", ylabel="test accuracy",
             title="test accuracy (solid adam, dashed scheduler)")
  ax_acc.axhline(1 / CLASSES, color="grey", linewidth=0.6)
  ax_step.set(yscale="log", xlabel="step", ylabel="effective step / alpha_tilde (median layer)",
              title="effective step against the threshold")
  ax_end.set(yscale="log", xlabel="circuit layer", ylabel="effective step / alpha_tilde",
             title="per layer at the end (solid adam, dashed scheduler)")
  for ax in (ax_step, ax_end):
    ax.axhline(1.0, color="grey", linewidth=0.6)
  for ax in (ax_grad, ax_acc):
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=6)
  for ax in (ax_grad, ax_noise, ax_sharp, ax_acc, ax_step, ax_end):
    ax.title.set_fontsize(9)
  fig.tight_layout()
  fig.savefig(path)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--depths", default="1,2,4,8", help="circuit layers")
  parser.add_argument("--arms", default=",".join(ARMS), help=f"any of {', '.join(ARMS)}")
  parser.add_argument("--qubits", type=int, default=6)
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--record-every", type=int, default=50)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--lr", type=float, default=0.01)
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  parser.add_argument("--name", default="quantum", help="stem of the output files")
  args = parser.parse_args(argv)
  depths = int_list(args.depths, "depths", 1)
  arms = [a.strip() for a in args.arms.split(",")]
  if not arms or any(a not in ARMS for a in arms):
    raise SystemExit(f"--arms: {args.arms!r} is not accepted; give any of {', '.join(ARMS)}, "
                     "separated by commas")
  if args.qubits < CLASSES:
    raise SystemExit(f"--qubits: {args.qubits} is not accepted; the {CLASSES} classes are read "
                     f"out on {CLASSES} qubits, give at least {CLASSES}")
  for flag, value in (("seeds", args.seeds), ("steps", args.steps), ("batch", args.batch),
                      ("record-every", args.record_every)):
    if value < 1:
      raise SystemExit(f"--{flag}: {value} is not accepted; give a positive integer")
  if args.steps % args.record_every:
    raise SystemExit(f"--record-every: {args.record_every} is not accepted; give a divisor of "
                     f"--steps ({args.steps})")
  if not args.lr > 0:
    raise SystemExit(f"--lr: {args.lr} is not accepted; give a positive learning rate")
  os.makedirs(args.out, exist_ok=True)
  stem = os.path.join(args.out, args.name)
  runs_out = results.ResultsWriter(f"{stem}.csv")
  runs_out.resume(lambda row: True, read)
  done = {(int(r["depth"]), r["arm"]) for r in runs_out.rows}
  # the layer rows of a cell interrupted between the two files are dropped
  layers_out = results.ResultsWriter(f"{stem}_layers.csv")
  layers_out.resume(lambda row: (int(float(row["depth"])), row["arm"]) in done, read)
  dataset = pooled_digits()
  for depth in depths:
    for arm in arms:
      if (depth, arm) in done:
        continue
      started = time.time()
      train, labels = make_train(depth, arm, args.qubits, args.steps, args.record_every,
                                 args.batch, args.lr, dataset)
      keys = jax.random.split(jax.random.key(depth), args.seeds)  # the same inits in both arms
      records = jax.device_get(jax.jit(jax.vmap(train))(keys))
      new_runs, new_layers = run_rows(depth, arm, args.seeds, records, labels,
                                      args.record_every)
      layers_out.write(new_layers)  # layers first: the run rows mark a cell done
      runs_out.write(new_runs)
      end = [r for r in new_runs if r["step"] == args.steps]
      print(f"depth {depth:>2} {arm:>9}: test accuracy "
            f"{np.mean([r['test_accuracy'] for r in end]):.3f}, grad norm at init "
            f"{np.mean([r['gradient_norm_mean'] for r in new_runs if r['step'] == 0]):.2e} "
            f"({time.time() - started:.0f} s)", flush=True)
  rows = summary(runs_out.rows, layers_out.rows, depths)
  text = table(rows, args)
  with open(f"{stem}.md", "w") as f:
    f.write(text)
  plot(f"{stem}.png", runs_out.rows, layers_out.rows, depths)
  print(text)
  print(f"wrote {stem}.csv, {stem}_layers.csv, .md and .png")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
