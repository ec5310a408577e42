"""Barren plateaus: gradient variance against qubits and depth, global and local costs.

Issue 14, item 2. For the hardware-efficient ansatz (`quantum.circuits.
hardware_efficient`: R_y R_z on every qubit, then a CZ ladder, per layer, from
|0...0>) with angles uniform in [0, 2 pi), it measures Var[dC/dtheta] over
`--draws` random inits, all draws of one (n, depth) vmapped in one program,
for Cerezo et al.'s global cost 1 - |<0...0|psi>|^2 and local cost 1 - mean_j
p_j(0), at n = 2 ... 12 qubits and several depths. Recorded per (cost, depth,
n): the variance of the first parameter's derivative with its Monte Carlo
standard error, and the mean over all parameters of their variances. Then a
least-squares line log2 V = a + slope n per (cost, depth), V the mean over
parameters (less noisy than one parameter's variance, whose fourth moment
grows as the variance shrinks): 2^slope is the factor V changes by per added
qubit. (The mean includes the last layer's R_z angles, whose derivatives are
0 for these Z-basis costs: a constant share at each depth, which moves the
line but not its slope.)

Writes `results/barren_plateaus.csv` (a row per (cost, depth, n), appended as
each finishes; a rerun skips the rows it has), `barren_plateaus.md` (the
slopes) and `barren_plateaus.png` (log-variance against n).

    python experiments/barren_plateaus.py          # 2 costs x 3 depths x 6 sizes, 500 draws, ~3 min
    python experiments/barren_plateaus.py --ns 2,3 --depths 1 --draws 50   # a smoke run
"""

from __future__ import annotations

import argparse
import csv
import os
import time

import jax
import numpy as np
from matplotlib.figure import Figure

from trainability import results
from trainability.quantum import circuits, plateaus

COSTS = {"global": circuits.global_cost, "local": circuits.local_cost}


def measure(cost: str, depth: int, n: int, draws: int, seed: int) -> dict:
  # rolled: each (cost, depth, n) compiles once and runs once, so compile time dominates
  circuit = circuits.hardware_efficient(n, depth, unroll=1)
  started = time.time()
  grads = plateaus.gradient_draws(COSTS[cost], circuit, jax.random.key(seed), draws)
  first = jax.tree.leaves(grads)[0].reshape(draws, -1)[:, 0]
  var_first, se_first = plateaus.variance_and_error(first)
  return {"cost": cost, "depth": depth, "n": n, "draws": draws, "var_first": var_first,
          "se_first": se_first, "var_mean": float(plateaus.gradient_variance(grads).mean()),
          "seconds": round(time.time() - started, 2)}


def read_rows(path: str) -> list[dict]:
  with open(path, newline="") as f:
    return [{**r, "depth": int(r["depth"]), "n": int(r["n"]), "draws": int(r["draws"]),
             "var_first": float(r["var_first"]), "se_first": float(r["se_first"]),
             "var_mean": float(r["var_mean"])} for r in csv.DictReader(f)]


def slopes(rows: list[dict]) -> list[dict]:
  out = []
  for cost in COSTS:
    for depth in sorted({r["depth"] for r in rows}):
      rs = sorted((r for r in rows if r["cost"] == cost and r["depth"] == depth),
                  key=lambda r: r["n"])
      if len(rs) < 2:
        continue
      slope, intercept = plateaus.decay_fit([r["n"] for r in rs], [r["var_mean"] for r in rs])
      power = np.polyfit(np.log2([r["n"] for r in rs]), np.log2([r["var_mean"] for r in rs]), 1)
      out.append({"cost": cost, "depth": depth, "slope": slope, "intercept": intercept,
                  "power": float(power[0]), "ns": f"{rs[0]['n']}-{rs[-1]['n']}",
                  "last_slope": float(np.log2(rs[-1]["var_mean"] / rs[-2]["var_mean"])
                                      / (rs[-1]["n"] - rs[-2]["n"]))})
  return out


def plot(path: str, rows: list[dict], fits: list[dict]) -> None:
  fig = Figure(figsize=(10, 3.8), dpi=110)
  axes = dict(zip(COSTS, fig.subplots(1, len(COSTS), sharey=True)))
  for fit in fits:
    ax = axes[fit["cost"]]
    rs = sorted((r for r in rows if r["cost"] == fit["cost"] and r["depth"] == fit["depth"]),
                key=lambda r: r["n"])
    ns = np.array([r["n"] for r in rs])
    line = ax.plot(ns, [r["var_mean"] for r in rs], marker="o", markersize=4,
                   label=f"depth {fit['depth']}: slope {fit['slope']:+.2f} "
                   f"(x{2 ** fit['slope']:.2f}/qubit)")[0]
    ax.plot(ns, 2.0 ** (fit["intercept"] + fit["slope"] * ns), linestyle="--", linewidth=0.8,
            color=line.get_color())
  for cost, ax in axes.items():
    ax.set_yscale("log", base=2)
    ax.set_xlabel("qubits n")
    ax.set_title(f"{cost} cost: mean over parameters of Var[dC/dtheta] (fits dashed)",
                 fontsize=9)
    ax.legend(fontsize=7)
  axes["global"].set_ylabel("gradient variance (log2 scale)")
  fig.tight_layout()
  fig.savefig(path)


def int_list(text: str, flag: str, least: int) -> list[int]:
  try:
    values = [int(v) for v in text.split(",")]
  except ValueError:
    values = []
  if not values or min(values) < least:
    raise SystemExit(f"--{flag}: {text!r} is not accepted; give integers >= {least} separated "
                     "by commas")
  return values


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--ns", default="2,4,6,8,10,12", help="qubit counts")
  parser.add_argument("--depths", default="1,4,16", help="layers of the ansatz")
  parser.add_argument("--draws", type=int, default=500, help="random inits per (n, depth)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  parser.add_argument("--name", default="barren_plateaus", help="stem of the output files")
  args = parser.parse_args(argv)
  ns, depths = int_list(args.ns, "ns", 1), int_list(args.depths, "depths", 1)
  if args.draws < 2:
    raise SystemExit(f"--draws: {args.draws} is not accepted; a variance needs at least 2")
  os.makedirs(args.out, exist_ok=True)
  stem = os.path.join(args.out, args.name)
  out = results.ResultsWriter(f"{stem}.csv")
  out.resume(lambda row: True, read_rows)
  rows = out.rows
  done = {(r["cost"], r["depth"], r["n"]) for r in rows}
  for cost in COSTS:
    for depth in depths:
      for n in ns:
        if (cost, depth, n) in done:
          continue
        row = measure(cost, depth, n, args.draws, args.seed)
        out.write([row])  # appends to out.rows too
        print(f"{cost:>6} depth {depth:>2} n {n:>2}: Var first {row['var_first']:.3e} "
              f"+- {row['se_first']:.1e}, mean {row['var_mean']:.3e} ({row['seconds']} s)",
              flush=True)
  rows = [r for r in rows if r["depth"] in depths and r["n"] in ns]
  fits = slopes(rows)
  lines = [f"Hardware-efficient ansatz (R_y R_z + CZ ladder per layer), angles uniform in "
           f"[0, 2 pi), {args.draws} draws per point; slope of log2 of the mean over parameters "
           "of Var[dC/dtheta] against n, by least squares (`barren_plateaus.csv` also has "
           "Var[dC/dtheta_1] of the first R_y alone, with its standard error).", "",
           "| cost | depth | qubits | slope (log2 per qubit) | factor per qubit | slope between "
           "the last two sizes | power-law exponent (log V against log n) |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
  lines += [f"| {f['cost']} | {f['depth']} | {f['ns']} | {f['slope']:+.3f} | "
            f"{2 ** f['slope']:.3f} | {f['last_slope']:+.3f} | {f['power']:+.2f} |" for f in fits]
  lines += ["", "An exponential decay (a barren plateau) has a constant slope per qubit; a "
            "polynomial one has a slope that flattens as n grows and a constant power-law "
            "exponent."]
  text = "\n".join(lines) + "\n"
  with open(f"{stem}.md", "w") as f:
    f.write(text)
  plot(f"{stem}.png", rows, fits)
  print(text)
  print(f"wrote {stem}.csv, .md and .png")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
