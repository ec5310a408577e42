"""Sweeps: a grid of runs compiled into as few programs as its shapes allow.

A `Grid` is a base `Config` and axes, {setting: values}; its points are the
cartesian product, each run for the base config's `seeds` seeds. Points that
differ only in traced hyperparameters (the optimizer's, such as `lr`, and the
settings declared `traced`, such as `reg_coef`) share one compiled program:
their runs (point x seed) are vmapped together, the hyperparameters passed as
arrays. Points that differ in anything else (depth, activation, the
scheduler, ...) are separate programs, run back to back. One tidy table,
`sweep.csv`, gets one row per point x seed x task as each chunk of tasks
finishes, with the point's axis values as columns.

`run(grid, out)` is the Python API and `trainability sweep` the command.
With the base config's `checkpoint_every`, every program checkpoints its whole
state, and `resume(out)` (`trainability sweep --resume DIR`) skips finished
programs and continues the interrupted one from its newest checkpoint, with
the same rows an uninterrupted sweep writes.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
import os
import shutil
import sys
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from trainability import checkpoints as checkpoints_lib
from trainability import data as data_lib
from trainability import devices, indicators, optim, results, runs
from trainability.settings import ConfigError

SWEEP_FILE = "sweep.json"
TABLE_FILE = "sweep.csv"
SUMMARY_FILE = "summary.csv"
METRICS = ("online_accuracy", "loss", "final_accuracy", "heldout_accuracy", "rho_hat")
# Settings of the sweep as a whole, not of its points.
SWEEP_LEVEL = ("seeds", "seed", "chunk_tasks", "checkpoint_every", "keep_checkpoints")


class Grid(NamedTuple):
  """A base config and its axes: ((setting, (values, ...)), ...)."""

  base: Any  # a Config
  axes: tuple[tuple[str, tuple], ...]


class Point(NamedTuple):
  index: int
  values: dict   # {axis: value}
  config: Any    # the base config with the point's values


class Program(NamedTuple):
  """Points that run as one compiled program."""

  config: Any                  # the config it is compiled from
  points: tuple[Point, ...]
  traced: tuple[str, ...]      # axes passed as traced arrays (Config field names)
  widths: tuple[int, ...] | None = None  # per point, when narrower nets are embedded


def _config_class():
  from trainability.config import Config  # config composes the modules; imported late
  return Config


def make_grid(base, axes: Mapping[str, Sequence]) -> Grid:
  """A Grid, with each axis name and value checked (one-line ConfigError otherwise)."""
  fields = {f.name: f for f in dataclasses.fields(_config_class())}
  checked = []
  for name, values in axes.items():
    if name not in fields:
      raise ConfigError(f"grid: {name!r} is not a setting; accepted: "
                        f"{', '.join(n for n in fields if n not in SWEEP_LEVEL)}")
    if name in SWEEP_LEVEL:
      raise ConfigError(f"grid: {name!r} is a setting of the whole sweep, not an axis; give it "
                        f"once (--{name.replace('_', '-')}), not in the grid")
    values = tuple(values) if isinstance(values, (list, tuple)) else (values,)
    if not values:
      raise ConfigError(f"grid: {name!r} has no values")
    if len(set(map(repr, values))) < len(values):
      raise ConfigError(f"grid: {name!r} repeats a value: {list(values)}")
    checked.append((name, values))
  if not checked:
    raise ConfigError("grid: give at least one axis, e.g. --grid lr=1e-3,1e-2")
  return Grid(base, tuple(checked))


def parse_axis(text: str, kinds: Mapping[str, Any] | None = None) -> tuple[str, tuple]:
  """'lr=1e-3,1e-2' -> ('lr', (0.001, 0.01)), values typed as the setting's."""
  if "=" not in text:
    raise ConfigError(f"grid: {text!r} is not accepted; give SETTING=V1,V2,... "
                      "(e.g. lr=1e-3,1e-2)")
  name, _, listed = text.partition("=")
  name = name.strip().replace("-", "_")
  kind = (kinds or _kinds()).get(name, str)
  parts = [p.strip() for p in listed.split(",") if p.strip()]
  return name, tuple(_typed(name, kind, p) for p in parts)


def _kinds() -> dict:
  import typing
  Config = _config_class()
  hints = typing.get_type_hints(Config)
  return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def _typed(name: str, kind, text: str):
  try:
    if kind is bool:
      if text.lower() not in ("true", "false"):
        raise ValueError
      return text.lower() == "true"
    if kind in (int, float):
      return kind(text)
  except ValueError:
    raise ConfigError(f"grid: {name}={text!r} is not accepted; give a "
                      f"{'true/false' if kind is bool else kind.__name__}") from None
  return text


def read_grid_file(path: str) -> tuple[dict, dict]:
  """({base settings}, {axis: values}) from a JSON or YAML file with keys `base`, `grid`."""
  if not os.path.exists(path):
    raise ConfigError(f"grid_file: {path} does not exist")
  with open(path) as f:
    text = f.read()
  if path.endswith((".yaml", ".yml")):
    import yaml
    spec = yaml.safe_load(text)
  else:
    try:
      spec = json.loads(text)
    except json.JSONDecodeError as e:
      raise ConfigError(f"grid_file: {path} is not valid JSON ({e.msg}, line {e.lineno}); "
                        "YAML files must end in .yaml or .yml") from None
  if not isinstance(spec, dict) or not isinstance(spec.get("grid"), dict) or \
      set(spec) - {"base", "grid"}:
    raise ConfigError(f"grid_file: {path} must hold a mapping with `grid` ({{setting: "
                      "[values]}}) and optionally `base` ({setting: value})")
  base = spec.get("base") or {}
  if not isinstance(base, dict):
    raise ConfigError(f"grid_file: `base` in {path} must be a mapping {{setting: value}}")
  return base, spec["grid"]


def points(grid: Grid) -> list[Point]:
  """The grid's points, the last axis varying fastest; each config validated."""
  names = [name for name, _ in grid.axes]
  out = []
  for i, values in enumerate(itertools.product(*(v for _, v in grid.axes))):
    chosen = dict(zip(names, values))
    try:
      config = grid.base.replace(**chosen)
    except ConfigError as e:
      raise ConfigError(f"{e} (at grid point {chosen})") from None
    except TypeError as e:  # a value of the wrong type for dataclasses
      raise ConfigError(f"grid: {chosen} is not accepted ({e})") from None
    out.append(Point(i, chosen, config))
  return out


def traced_axis(config, name: str) -> bool:
  """Whether an axis can vary inside one compiled program of `config`."""
  return name in config.traced_fields() or optim.hparam_name(config.optimizer, name) is not None


def not_embeddable(config) -> str | None:
  """Why narrower widths of `config` cannot run masked inside the widest; None if they can.

  Embedding is exact when every padding unit keeps zero weights and zero
  gradients and every mean over units or elements leaves the padding out: no
  norm layer (it averages over all units), nothing that draws a fresh
  initialization (resets, shrink and perturb, unit resets) and no penalty on
  the distribution of the weights. The scheduler and the indicators take
  their means over the network's own elements (`units.real_elements`).
  """
  reasons = [
      (config.norm != "none", f"norm {config.norm!r}"),
      (config.model == "mlp" and config.depth == 0, "depth 0"),
      (config.reset != "none", f"reset {config.reset!r}"),
      (config.shrink_perturb != "none", f"shrink_perturb {config.shrink_perturb!r}"),
      (config.unit_reset != "none", f"unit_reset {config.unit_reset!r}"),
      (config.regularizer not in ("none", "l2_init"), f"regularizer {config.regularizer!r}"),
  ]
  found = [why for bad, why in reasons if bad]
  return ", ".join(found) or None


def plan(grid: Grid) -> list[Program]:
  """The grid's programs, in the order of their first point.

  Widths are embedded in the widest of their program (`not_embeddable`);
  otherwise each width is a program of its own.
  """
  groups: dict[Any, list[Point]] = {}
  traced_of, config_of = {}, {}
  swept_width = any(name == "width" for name, _ in grid.axes)
  for point in points(grid):
    traced = tuple(n for n in point.values if traced_axis(point.config, n))
    config = point.config.replace(**{n: getattr(grid.base, n) for n in traced})
    masked = swept_width and not_embeddable(point.config) is None
    # Embedded widths share a program: the key leaves the width out.
    key = (config.replace(width=grid.base.width) if masked else config, masked)
    groups.setdefault(key, []).append(point)
    traced_of[key], config_of[key] = traced, config
  programs = []
  for key, ps in groups.items():
    if key[1]:
      widths = tuple(p.config.width for p in ps)
      programs.append(Program(config_of[key].replace(width=max(widths)), tuple(ps),
                              traced_of[key], widths))
    else:
      programs.append(Program(config_of[key], tuple(ps), traced_of[key]))
  return programs


def embed(x, like, width: int, widest: int):
  """x (runs, ...) of a net of `width` units, laid into `like`'s (runs, ...) of `widest`.

  An axis that differs holds c copies of the units, copy-major (c = 2 after
  crelu or fourier, whose outputs are [f(h), g(h)]): it has c * width entries
  in x and c * widest in `like`; each copy's units keep their index and the
  rest is zero.
  """
  out = x
  for axis, (n, total) in enumerate(zip(x.shape[1:], like.shape[1:]), start=1):
    if n == total:
      continue
    copies = n // width
    if n != copies * width or total != copies * widest:
      raise ValueError(f"cannot embed an axis of {n} entries of a {width}-unit net in "
                       f"{total} of a {widest}-unit one")
    shape = out.shape
    split = out.reshape(shape[:axis] + (copies, width) + shape[axis + 1:])
    pad = [(0, 0)] * split.ndim
    pad[axis + 1] = (0, widest - width)
    out = jnp.pad(split, pad).reshape(shape[:axis] + (total,) + shape[axis + 1:])
  return out


def embedded_init(config, dataset, widths: Sequence[int], keys, hparams, wide=None,
                  components=()):
  """The vmapped initial RunState of nets of `widths` (one per run), embedded in the widest.

  Each run starts exactly as a separate run of its own width would (the same
  draws, the same init scales): its state comes from the trainer of that
  width and is zero-padded; its model state's unit masks are 1 for its units
  and 0 for the padding. keys: (runs,) PRNG keys; hparams: {name: (runs,)}.
  wide: the trainer of the widest net with unit masks, if already built;
  components: the run's own components (`make_trainer`), if any.
  """
  from trainability.train import make_trainer

  widths = np.asarray(widths)
  if wide is None:
    wide = make_trainer(config.replace(width=int(widths.max())), dataset, components,
                        unit_masks=True)
  like = jax.eval_shape(jax.vmap(wide.init), keys, hparams)
  parts, order = [], []
  for width in sorted(set(widths.tolist())):
    idx = np.flatnonzero(widths == width)
    narrow = make_trainer(config.replace(width=width), dataset, components, unit_masks=True)
    mine = jax.tree.map(lambda a: a[idx], (keys, hparams))
    state = jax.jit(jax.vmap(narrow.init))(*mine)
    parts.append(jax.tree.map(lambda x, y: embed(x, y, width, int(widths.max())), state, like))
    order.extend(idx.tolist())
  inverse = np.argsort(np.array(order))
  return jax.tree.map(lambda *xs: jnp.concatenate(xs)[inverse], *parts)


def _hparams(program: Program, seeds: int) -> dict[str, np.ndarray]:
  """{traced name: (runs,)} of a program; runs are point-major, seed-minor."""
  out = {}
  for axis in program.traced:
    name = optim.hparam_name(program.config.optimizer, axis) or axis
    out[name] = np.repeat(np.array([p.values[axis] for p in program.points], np.float32), seeds)
  return out


def _columns(grid: Grid, programs: Sequence[Program]) -> list[str]:
  measured = {"online_accuracy", "loss", "final_accuracy"}
  for program in programs:
    config = program.config
    if config.heldout:
      measured.add("heldout_accuracy")
    if config.scheduler == "noise_curvature" or "crossed" in indicators.indicator_names(config.indicators):
      measured.add("rho_hat")
  return (["point"] + [name for name, _ in grid.axes] + ["seed", "task"]
          + [m for m in METRICS if m in measured])


def _value(v):
  return v if isinstance(v, (int, float, str, bool)) else ",".join(map(str, v))


def save_grid(grid: Grid, out: str) -> None:
  with open(os.path.join(out, SWEEP_FILE), "w") as f:
    json.dump({"base": grid.base.to_dict(), "grid": {n: list(v) for n, v in grid.axes}},
              f, indent=2)


def load_grid(out: str) -> Grid:
  path = os.path.join(out, SWEEP_FILE)
  if not os.path.exists(path):
    raise ConfigError(f"resume: {out} holds no sweep (no {SWEEP_FILE}); give the directory of "
                      "a sweep")
  with open(path) as f:
    saved = json.load(f)
  axes = {n: [tuple(x) if isinstance(x, list) else x for x in v] for n, v in saved["grid"].items()}
  return make_grid(_config_class().from_dict(saved["base"]), axes)


def run(grid: Grid, out: str, progress: bool = True, resume: bool = False) -> list[dict]:
  """Runs a sweep into `out` (sweep.json, sweep.csv, summary.csv, one figure per axis).

  Returns the rows of sweep.csv. `resume=True` continues a sweep in `out`
  (see `resume`); otherwise `out` must not hold one. In a multi-process job
  (`devices.initialize`) every process calls this with the same grid and a
  shared `out`; the runs are spread over all devices and process 0 writes.
  """
  from tqdm import tqdm

  table = os.path.join(out, TABLE_FILE)
  if not resume and os.path.exists(table):
    raise ConfigError(f"out: {out} already holds {TABLE_FILE}; choose another --out or --resume")
  programs = plan(grid)
  base = grid.base
  main = devices.is_main()
  os.makedirs(out, exist_ok=True)
  if main and not resume:
    save_grid(grid, out)
  columns = _columns(grid, programs)
  writer = results.ResultsWriter(table)
  folders = [os.path.join(out, runs.CHECKPOINT_DIR, f"program_{k}") for k in range(len(programs))]
  # Where each program starts, decided by every process before anything is rewritten.
  starts = [_start(program, table, folder, base) if resume else 0
            for program, folder in zip(programs, folders)]
  devices.barrier("sweep-start")
  total = sum(len(p.points) for p in programs) * base.seeds * base.tasks
  datasets = {}
  with tqdm(total=total, unit="run-task", disable=not progress or not main, file=sys.stderr,
            dynamic_ncols=True) as bar:
    for k, (program, start, folder) in enumerate(zip(programs, starts, folders)):
      count = len(program.points) * base.seeds
      bar.update(count * start)
      if start == base.tasks:
        continue
      bar.set_description(f"program {k + 1}/{len(programs)}")
      members = {str(p.index) for p in program.points}
      if resume and main:
        writer.resume(lambda row: row["point"] not in members or int(row["task"]) < start,
                      read_table)
      config = program.config
      data_key = data_lib.source_of(config)
      if data_key not in datasets:
        datasets[data_key] = data_lib.load_for(config)
      trainer, state = program_start(program, datasets[data_key], base)
      checkpoints = None
      if base.checkpoint_every:
        checkpoints = checkpoints_lib.Checkpoints(folder, keep=base.keep_checkpoints)
        if start:
          state = checkpoints.restore(state, start)
      run_chunk = devices.jit_runs(jax.vmap(trainer.run_tasks, in_axes=(0, None)))

      def write(metrics, task_ids, program=program):
        writer.write(_rows(program, base, columns, metrics, task_ids))

      runs.drive(run_chunk, state, count, base.tasks, base.chunk_tasks, write, start,
                 checkpoints, base.checkpoint_every,
                 lambda metrics, tasks, count=count: bar.update(count * tasks))
      if checkpoints is not None:
        checkpoints.close()
        devices.barrier(f"sweep-program-{k}")
        if main:
          shutil.rmtree(folder, ignore_errors=True)
  rows = read_table(table)
  if main:
    write_summary(grid, rows, out)
    plot_axes(grid, rows, out)
  return rows


def _start(program: Program, table: str, folder: str, base) -> int:
  """Tasks of a program already done: all if the table holds them, else its newest checkpoint."""
  members = {str(p.index) for p in program.points}
  if _finished(table, members, base.tasks, len(program.points) * base.seeds):
    return base.tasks
  if base.checkpoint_every and os.path.isdir(folder):
    found = checkpoints_lib.Checkpoints(folder, keep=base.keep_checkpoints)
    latest = found.latest() or 0
    found.close()
    return latest
  return 0


def program_start(program: Program, dataset, base, components=()):
  """(trainer, initial state of every run, sharded over the devices) of a program.

  Runs are point-major, seed-minor (seeds base.seed, base.seed + 1, ...);
  `jax.vmap(trainer.run_tasks, in_axes=(0, None))` runs them all. components:
  your own `trainability.components.Component`s, after the config's (e.g. a
  `record` of your own measurement, found in `TaskMetrics.records`).
  """
  from trainability.train import make_trainer

  trainer = make_trainer(program.config, dataset, components,
                         unit_masks=program.widths is not None)
  seeds = np.arange(base.seed, base.seed + base.seeds)
  keys = jax.vmap(jax.random.key)(np.tile(seeds, len(program.points)))
  hparams = _hparams(program, base.seeds)
  if program.widths is None:
    state = devices.jit_runs(jax.vmap(trainer.init))(*devices.shard_runs((keys, hparams)))
  else:
    widths = np.repeat(program.widths, base.seeds)
    state = devices.shard_runs(
        embedded_init(program.config, dataset, widths, keys, hparams, wide=trainer,
                      components=components))
  return trainer, state


def _rows(program: Program, base, columns, metrics, task_ids) -> list[dict]:
  """The table rows of a chunk: one per point x seed x task, in `columns`."""
  seeds = list(range(base.seed, base.seed + base.seeds))
  labels = [(p, s) for p in program.points for s in seeds]
  rows = results.metric_rows(metrics, [s for _, s in labels], task_ids, program.config.heldout)
  out = []
  for i, row in enumerate(rows):
    point = labels[i // len(task_ids)][0]
    full = {"point": point.index, **{n: _value(v) for n, v in point.values.items()}, **row}
    out.append({c: full.get(c, math.nan) for c in columns})
  return out


def resume(out: str, progress: bool = True) -> list[dict]:
  """Continues the sweep in `out` from where it stopped (see `run`)."""
  grid = load_grid(out)
  return run(grid, out, progress=progress, resume=True)


def read_table(path: str) -> list[dict]:
  """The rows of a sweep.csv: integers as ints, other numbers as floats, the rest strings."""
  def parse(text):
    for kind in (int, float):
      try:
        return kind(text)
      except ValueError:
        pass
    return text

  with open(path, newline="") as f:
    return [{k: parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _finished(table: str, members: set, tasks: int, runs_count: int) -> bool:
  """Whether sweep.csv holds every task of every run of a program."""
  mine = [t for (point, _), t in results.tasks_per_run(table, ("point", "seed")).items()
          if point in members]
  return len(mine) == runs_count and all(len(t) == tasks for t in mine)


def _by(rows, keys):
  groups = {}
  for row in rows:
    groups.setdefault(tuple(row[k] for k in keys), []).append(row)
  return groups


def summary_rows(grid: Grid, rows: Sequence[dict]) -> list[dict]:
  """Per point: its axis values, seeds, and online accuracy averaged over tasks and seeds,
  on the first and on the last task."""
  names = [n for n, _ in grid.axes]
  out = []
  for (point,), mine in sorted(_by(rows, ["point"]).items()):
    tasks = sorted({r["task"] for r in mine})
    online = lambda task: float(np.mean([r["online_accuracy"] for r in mine if r["task"] == task]))
    out.append({"point": point, **{n: mine[0][n] for n in names},
                "seeds": len({r["seed"] for r in mine}), "tasks": len(tasks),
                "mean_online_accuracy": float(np.mean([r["online_accuracy"] for r in mine])),
                "first_task_online_accuracy": online(tasks[0]),
                "last_task_online_accuracy": online(tasks[-1])})
  return out


def write_summary(grid: Grid, rows: Sequence[dict], out: str) -> None:
  table = summary_rows(grid, rows)
  if not table:
    return
  with open(os.path.join(out, SUMMARY_FILE), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(table[0]))
    writer.writeheader()
    writer.writerows(table)


def plot_axes(grid: Grid, rows: Sequence[dict], out: str) -> list[str]:
  """One figure per swept axis, sweep_<axis>.png: average online accuracy per task, one
  line per value of the axis (mean over seeds and the other axes). Returns the paths."""
  from matplotlib.figure import Figure

  paths = []
  for name, values in grid.axes:
    fig = Figure(figsize=(6.4, 3.8), dpi=120)
    ax = fig.subplots()
    for value in values:
      label = _value(value)
      mine = [r for r in rows if _same(r[name], label)]
      if not mine:
        continue
      tasks = sorted({r["task"] for r in mine})
      mean = [np.mean([r["online_accuracy"] for r in mine if r["task"] == t]) for t in tasks]
      ax.plot(np.array(tasks) + 1, mean, marker="o", markersize=3, label=f"{name}={label}")
    results.accuracy_axis(ax, legend=True)
    ax.set_title(f"sweep over {name} (mean over seeds and other axes)", fontsize=9)
    fig.tight_layout()
    path = os.path.join(out, f"sweep_{name}.png")
    fig.savefig(path)
    paths.append(path)
  return paths


def _same(cell, value) -> bool:
  if isinstance(value, bool) or isinstance(cell, str) or isinstance(value, str):
    return str(cell) == str(value)
  return math.isclose(float(cell), float(value), rel_tol=1e-9)
