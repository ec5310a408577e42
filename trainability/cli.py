"""`trainability run`, `trainability plot` and `trainability report`.

The flags of `run` are generated from the fields of `Config` (`--batch-size` is
`Config.batch_size`), so the CLI, the config file and the Python API agree.
Every bad flag or value ends the program with one line naming the field and
what it accepts (exit code 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import time
import typing

import jax
import numpy as np
from tqdm import tqdm

from trainability import data as data_lib
from trainability import checkpoints as checkpoints_lib
from trainability import devices, report, results, runs
from trainability import sweep as sweep_lib
from trainability.config import Config, ConfigError
from trainability.data import DataError
from trainability.train import make_trainer, seed_keys


class _OneLineParser(argparse.ArgumentParser):
  """argparse that reports a usage error in one line, not usage + message."""

  def error(self, message):
    self.exit(2, f"{self.prog}: error: {message}\n")


def _parse_optional_int(text: str):
  if text.lower() in ("none", "0", "all"):
    return None
  try:
    return int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not an integer or none") from None


def _parse_int_tuple(text: str):
  try:
    return tuple(int(part) for part in text.split(",") if part.strip())
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"{text!r} is not a comma-separated list of integers"
    ) from None


def _add_config_flags(parser: argparse.ArgumentParser):
  """One flag per Config field. A flag not given leaves no attribute (SUPPRESS), so
  `given_config_fields` tells the fields a user set from those left at their defaults."""
  hints = typing.get_type_hints(Config)
  for f in dataclasses.fields(Config):
    flag = "--" + f.name.replace("_", "-")
    default = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
    help_text = f"{f.metadata['help']} (default: {default})"
    hint = hints[f.name]
    if hint is bool:
      parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                          default=argparse.SUPPRESS, help=help_text)
      continue
    if f.name == "subset":
      kind = _parse_optional_int
    elif f.name == "channels":
      kind = _parse_int_tuple
    elif hint in (int, float):
      kind = hint
    else:
      kind = str
    parser.add_argument(flag, dest=f.name, type=kind, default=argparse.SUPPRESS,
                        choices=f.metadata.get("choices"), help=help_text,
                        metavar=None if f.metadata.get("choices") else f.name.upper())


def _add_distributed_flags(parser: argparse.ArgumentParser):
  group = parser.add_argument_group(
      "several hosts", "start the same command on every host (README: Several hosts)")
  group.add_argument("--distributed", action="store_true",
                     help="start jax.distributed, detecting the cluster (SLURM, GKE, Cloud TPU)")
  group.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                     help="jax.distributed coordinator address (with --num-processes and "
                     "--process-id, where no cluster is detected)")
  group.add_argument("--num-processes", type=int, default=None, help="processes in the job")
  group.add_argument("--process-id", type=int, default=None, help="this process's index")


def given_config_fields(args) -> dict:
  """The Config fields set on the command line, {name: value}."""
  names = {f.name for f in dataclasses.fields(Config)}
  return {k: v for k, v in vars(args).items() if k in names}


def build_parser() -> argparse.ArgumentParser:
  parser = _OneLineParser(
      prog="trainability",
      description="Loss of trainability in continual learning: run task streams and plot them.",
  )
  commands = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
  run = commands.add_parser(
      "run", help="train on a task stream; writes results.csv, config.json and a plot")
  _add_config_flags(run)
  run.add_argument("--out", default=None,
                   help="output directory (default: runs/<time>-<dataset>-<stream>); "
                   "must not already hold results")
  run.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its newest checkpoint (a run "
                   "started with --checkpoint-every); its config.json gives every setting")
  run.add_argument("--no-progress", action="store_true", help="no progress bar")
  _add_distributed_flags(run)
  sweep = commands.add_parser(
      "sweep", help="a grid of runs, as few compiled programs as its shapes allow; writes "
      "sweep.csv, summary.csv and one figure per axis",
      description="Settings given as flags form the base config; each --grid SETTING=V1,V2 "
      "adds an axis. Points differing only in traced hyperparameters (lr, reg_coef, ...) run "
      "vmapped in one program; others run one program per shape.")
  _add_config_flags(sweep)
  sweep.add_argument("--grid", action="append", default=[], metavar="SETTING=V1,V2",
                     help="an axis of the grid; repeat for more axes")
  sweep.add_argument("--grid-file", default=None,
                     help="JSON or YAML file with `grid` ({setting: [values]}) and optionally "
                     "`base` ({setting: value}); flags override its base")
  sweep.add_argument("--out", default=None,
                     help="output directory (default: runs/<time>-sweep); must not hold a sweep")
  sweep.add_argument("--resume", default=None, metavar="SWEEP_DIR",
                     help="continue the sweep in SWEEP_DIR (its sweep.json gives the grid)")
  sweep.add_argument("--no-progress", action="store_true", help="no progress bar")
  _add_distributed_flags(sweep)
  plot = commands.add_parser("plot", help="redraw the plot of a finished or interrupted run")
  plot.add_argument("run_dir", help="directory written by `trainability run`")
  predictors = commands.add_parser(
      "report", help="how well each recorded indicator predicts task accuracy, over runs")
  predictors.add_argument("run_dirs", nargs="+", metavar="run_dir",
                          help="directories written by `trainability run --indicators ...`")
  predictors.add_argument("--out", default=None,
                          help=f"CSV to write (default: <first run_dir>/{report.REPORT_FILE})")
  return parser


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  try:
    if args.command == "plot":
      return _plot(args.run_dir)
    if args.command == "report":
      return _report(args.run_dirs, args.out)
    if args.command == "sweep":
      return _sweep(args)
    return _run(args)
  except (ConfigError, DataError) as e:
    print(f"trainability: error: {e}", file=sys.stderr)
    return 2


def _plot(run_dir: str) -> int:
  path = os.path.join(run_dir, results.RESULTS_FILE)
  if not os.path.exists(path):
    raise ConfigError(f"run_dir: no {results.RESULTS_FILE} in {run_dir}")
  rows = results.read_rows(path)
  with open(os.path.join(run_dir, results.CONFIG_FILE)) as f:
    saved = json.load(f)
  config = Config.from_dict(saved["config"])
  results.plot_online_accuracy(rows, os.path.join(run_dir, results.PLOT_FILE),
                               _title(config), 1.0 / saved["num_classes"])
  checks_path = os.path.join(run_dir, results.CHECKS_FILE)
  if os.path.exists(checks_path):
    results.plot_scheduler(results.read_rows(checks_path),
                           os.path.join(run_dir, results.SCHEDULER_PLOT_FILE),
                           config.lr, _title(config))
  indicators_path = os.path.join(run_dir, report.INDICATORS_FILE)
  if os.path.exists(indicators_path):
    report.plot_indicators(rows, report.read_indicator_rows(indicators_path),
                           os.path.join(run_dir, report.INDICATORS_PLOT_FILE), _title(config))
  print(results.summary(rows))
  return 0


def _report(run_dirs, out) -> int:
  runs = []
  for run_dir in run_dirs:
    paths = [os.path.join(run_dir, f) for f in (results.RESULTS_FILE, report.INDICATORS_FILE)]
    for path in paths:
      if not os.path.exists(path):
        raise ConfigError(f"run_dir: no {os.path.basename(path)} in {run_dir} "
                          "(record indicators with `trainability run --indicators all`)")
    runs.append((results.read_rows(paths[0]), report.read_indicator_rows(paths[1])))
  table = report.predictor_report(runs)
  out = out or os.path.join(run_dirs[0], report.REPORT_FILE)
  report.write_report(table, out)
  print(report.format_report(table))
  print(f"wrote {out}")
  return 0


def _title(config: Config) -> str:
  title = (f"{config.dataset}, {config.stream}, {config.model} {config.activation}, "
           f"{config.optimizer} lr={config.lr:g}, B={config.batch_size}, E={config.epochs}")
  if config.scheduler == "noise_curvature":
    title += f", {config.scheduler} (K={config.check_every}, beta={config.beta:g})"
  elif config.scheduler == "trac":
    title += f", trac (s_init={config.trac_s_init:g})"
  return title


def _sweep(args) -> int:
  given = given_config_fields(args)
  if args.resume is not None:
    _refuse_with_resume(args.resume, sweep_lib.SWEEP_FILE, sorted(given) + [
        name for name, value in (("grid", args.grid), ("grid_file", args.grid_file),
                                 ("out", args.out)) if value])
    grid, out = sweep_lib.load_grid(args.resume), args.resume
  else:
    base, axes = ({}, {}) if args.grid_file is None else sweep_lib.read_grid_file(args.grid_file)
    for text in args.grid:
      name, values = sweep_lib.parse_axis(text)
      if name in axes:
        raise ConfigError(f"grid: {name!r} is given twice")
      axes[name] = values
    grid = sweep_lib.make_grid(Config.from_dict({**base, **given}), axes)
    out = args.out or os.path.join("runs", f"{datetime.datetime.now():%Y%m%d-%H%M%S}-sweep")
  results.output_directory(out, "resume" if args.resume is not None else "out")
  _start_devices(args)
  programs = sweep_lib.plan(grid)
  main_process = devices.is_main()
  if main_process:
    print(f"trainability sweep: {sum(len(p.points) for p in programs)} points x "
          f"{grid.base.seeds} seeds "
          f"in {len(programs)} program(s); writing to {out}", file=sys.stderr)
  started = time.time()
  try:
    rows = sweep_lib.run(grid, out, progress=not args.no_progress,
                         resume=args.resume is not None)
  except KeyboardInterrupt:
    print(f"trainability: sweep interrupted; its finished tasks are in "
          f"{os.path.join(out, sweep_lib.TABLE_FILE)}; continue with "
          f"`trainability sweep --resume {out}`", file=sys.stderr)
    return 130
  if not main_process:
    return 0
  for row in sweep_lib.summary_rows(grid, rows):
    print(" ".join(f"{k}={row[k]}" for k, _ in grid.axes) +
          f": mean online accuracy {row['mean_online_accuracy']:.3f}, last task "
          f"{row['last_task_online_accuracy']:.3f} ({row['seeds']} seeds)")
  print(f"sweep done in {time.time() - started:.1f} s; table: "
        f"{os.path.join(out, sweep_lib.TABLE_FILE)}")
  return 0


def _run_target(args) -> tuple[Config, str, bool]:
  """(config, output directory, resuming) of `trainability run`."""
  given = given_config_fields(args)
  if args.resume is None:
    config = Config(**given)
    out = args.out or os.path.join(
        "runs", f"{datetime.datetime.now():%Y%m%d-%H%M%S}-{config.dataset}-{config.stream}")
    if os.path.exists(os.path.join(out, results.RESULTS_FILE)):
      raise ConfigError(f"out: {out} already holds {results.RESULTS_FILE}; choose another --out")
    return config, results.output_directory(out), False
  _refuse_with_resume(args.resume, results.CONFIG_FILE,
                      sorted(given) + (["out"] if args.out is not None else []))
  config = _saved_config(args.resume)
  if not config.checkpoint_every:
    raise ConfigError(f"resume: {args.resume} was run without --checkpoint-every, so it has "
                      "no checkpoints to resume from")
  return config, results.output_directory(args.resume, "resume"), True


def _refuse_with_resume(resume_dir: str, saved_file: str, given: list[str]) -> None:
  """A one-line error naming the first flag in `given`: --resume takes every setting
  from `saved_file` in `resume_dir`, so any other would be ignored."""
  if given:
    raise ConfigError(f"resume: takes every setting from {resume_dir}/{saved_file}; "
                      f"do not give --{given[0].replace('_', '-')} with --resume")


def _saved_config(run_dir: str) -> Config:
  path = os.path.join(run_dir, results.CONFIG_FILE)
  if not os.path.isdir(run_dir):
    raise ConfigError(f"resume: {run_dir} is not a directory; give the directory of a run")
  if not os.path.exists(path):
    raise ConfigError(f"resume: {run_dir} holds no run (no {results.CONFIG_FILE}); give the "
                      "directory of a run started with --checkpoint-every")
  with open(path) as f:
    return Config.from_dict(json.load(f)["config"])


def _start_devices(args) -> None:
  """Before JAX's first computation: one CPU device per core, and jax.distributed if asked."""
  devices.use_cpu_cores()
  if args.distributed or args.coordinator is not None or args.num_processes is not None \
      or args.process_id is not None:
    if args.out is None and args.resume is None:
      raise ConfigError("out: give --out (a directory every process sees) when running "
                        "several processes")
    devices.initialize(args.coordinator, args.num_processes, args.process_id)


def _write_run_info(out: str, config: Config, dataset, trainer) -> None:
  """config.json: the run's config and what it ran on."""
  with open(os.path.join(out, results.CONFIG_FILE), "w") as f:
    json.dump({
        "config": config.to_dict(),
        "train_examples": int(len(dataset.y_train)),
        "test_examples": int(len(dataset.y_test)),
        "num_classes": dataset.num_classes,
        "steps_per_epoch": trainer.steps_per_epoch,
        "steps_per_task": trainer.steps_per_epoch * config.epochs,
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "processes": jax.process_count(),
    }, f, indent=2)


def _plot_run(out: str, config: Config, dataset, rows, check_rows, indicator_rows) -> None:
  """The run's figures from the rows written so far."""
  results.plot_online_accuracy(rows, os.path.join(out, results.PLOT_FILE), _title(config),
                               1.0 / dataset.num_classes)
  if check_rows:
    results.plot_scheduler(check_rows, os.path.join(out, results.SCHEDULER_PLOT_FILE),
                           config.lr, _title(config))
  if indicator_rows:
    report.plot_indicators(rows, indicator_rows, os.path.join(out, report.INDICATORS_PLOT_FILE),
                           _title(config))


def _run(args) -> int:
  config, out, resuming = _run_target(args)
  _start_devices(args)
  main_process = devices.is_main()

  dataset = data_lib.load_for(config)
  trainer = make_trainer(config, dataset)  # `out` exists: _run_target made it
  if not resuming and main_process:
    _write_run_info(out, config, dataset, trainer)

  seeds = list(range(config.seed, config.seed + config.seeds))
  keys = devices.shard_runs(seed_keys(config))
  init = devices.jit_runs(jax.vmap(trainer.init))  # one placement: one compile
  run_chunk = devices.jit_runs(jax.vmap(trainer.run_tasks, in_axes=(0, None)))
  results_path = os.path.join(out, results.RESULTS_FILE)
  writer = results.ResultsWriter(results_path)
  checks_writer = results.ResultsWriter(os.path.join(out, results.CHECKS_FILE))
  indicators_writer = results.ResultsWriter(os.path.join(out, report.INDICATORS_FILE))
  plot_path = os.path.join(out, results.PLOT_FILE)
  checkpoints = None
  if config.checkpoint_every:
    checkpoints = checkpoints_lib.Checkpoints(os.path.join(out, runs.CHECKPOINT_DIR),
                                              keep=config.keep_checkpoints)
  start = 0
  if resuming:
    if results.finished_tasks(results_path) == config.tasks:
      print(f"trainability: {out} already holds all {config.tasks} tasks; nothing to resume")
      return 0
    start = checkpoints.latest() or 0
    if main_process:
      before = lambda row: int(row["task"]) < start
      writer.resume(before)
      checks_writer.resume(before)
      indicators_writer.resume(before, report.read_indicator_rows)
  if main_process:
    print(f"trainability: {config.seeds} seeds x {config.tasks} tasks, "
          f"{trainer.steps_per_epoch * config.epochs} steps per task; "
          + (f"resuming after task {start} in {out}" if resuming else f"writing to {out}"),
          file=sys.stderr)

  def write(metrics, task_ids):
    if metrics.checks is not None:
      checks_writer.write(results.check_rows(metrics.checks, seeds, task_ids,
                                             trainer.layer_names, config.max_multiplier))
    if metrics.indicators is not None:
      indicators_writer.write(report.indicator_rows(
          metrics.indicators, trainer.indicator_labels, seeds, task_ids, config.indicator_every))
    writer.write(results.metric_rows(metrics, seeds, task_ids, config.heldout))

  started = time.time()
  interrupted = False
  try:
    state = init(keys)
    if start:
      state = checkpoints.restore(state)  # placed as the fresh state is
    with tqdm(total=config.tasks, initial=start, unit="task",
              disable=args.no_progress or not main_process,
              file=sys.stderr, dynamic_ncols=True) as bar:
      def progress(metrics, count):
        bar.update(count)
        bar.set_postfix(online_acc=f"{np.mean(metrics.online_accuracy[:, -1]):.3f}")

      runs.drive(run_chunk, state, config.seeds, config.tasks, config.chunk_tasks, write, start,
                 checkpoints, config.checkpoint_every, progress)
  except KeyboardInterrupt:
    interrupted = True
  finally:
    if checkpoints is not None:
      checkpoints.close()
    # Whatever finished is on disk already; draw it even after a crash.
    if main_process:
      _plot_run(out, config, dataset, writer.rows, checks_writer.rows, indicators_writer.rows)
  if not main_process:
    return 130 if interrupted else 0
  done = len({r["task"] for r in writer.rows})
  print(results.summary(writer.rows))
  held = results.ceiling_summary(checks_writer.rows, config.max_multiplier)
  if held:
    print(held)
  print(f"{done} of {config.tasks} tasks in {time.time() - started:.1f} s; "
        f"results: {results_path}; plot: {plot_path}")
  if interrupted:
    print(f"trainability: interrupted after {done} finished tasks; they are saved",
          file=sys.stderr)
    return 130
  return 0


if __name__ == "__main__":
  sys.exit(main())
