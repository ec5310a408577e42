"""Training throughput of 1 seed vs vmapped seeds, and the fraction of matmul peak.

Run from the repository root:

    python benchmarks/throughput.py                  # full run, ~1-3 minutes on a CPU
    python benchmarks/throughput.py --quick          # smoke run, seconds
    python benchmarks/throughput.py --seeds 1,8,64 --repeats 5     # a CPU: 512 seeds take long

For each model it compiles `jit(vmap(trainer.run_tasks, in_axes=(0, None)))` for
1 seed and for each vmapped seed count, over states from
`jit(vmap(trainer.init))(keys)`, runs it once to warm up, then times it: a
timed repeat is `calls` back-to-back calls of the compiled program over
`--tasks-per-call` tasks each (the state of one call feeds the next; one
`jax.block_until_ready` at the end), with `calls` chosen from the warm-up call so
that a repeat takes about `--target-seconds`; the best of `--repeats` counts.
The repeats of a model's seed counts are interleaved (1, 8, 64, 1, 8, 64, ...),
so a busy spell of a shared machine does not fall on one seed count only.

    seed-steps/s = seeds * calls * tasks_per_call * epochs * steps_per_epoch / time

Running N seeds one after another has the 1-seed program's throughput, so
"vs 1 seed" (vmapped seed-steps/s over 1-seed seed-steps/s) is the gain of
vmapping over sequential seeds.

Every vmapped seed count is measured twice: on one device ("devs" 1), and with
its seed axis split over the local devices as `trainability run` does
(`devices.shard_runs`; on a CPU, `devices.use_cpu_cores()` makes one device per
core). The targets are judged on the CLI's layout; the 1-device ratio is
printed beside them. On a CPU, XLA runs the small per-seed matmuls of a vmapped
step on one thread, so without the split a small model cannot use both cores.

Models:
* paper: the paper's MLP 784-256-256-10, batch 256, Adam lr 1e-3, random labels.
  MNIST is not available offline, so the inputs are synthetic Gaussian
  28x28x1 images (the cost of a step does not depend on the pixel values).
* small: the main command's default model (`Config()`: digits, first 1,000
  images, MLP 64-256-256-10, batch 50, Adam lr 1e-3), fewer epochs per task.

FLOPs are counted analytically: a dense layer's forward pass is
2 * rows * fan_in * fan_out; a training step is 3x the forward pass of its
minibatch (the backward pass ~2x forward); the once-per-task accuracy pass over
the training set (forward only, part of `run_tasks`) is counted too.
Elementwise work (activations, softmax, Adam) is not counted. The peak is a
jitted, warm `jnp.dot` of two float32 square matrices, best of several, timed in
the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from trainability import data, devices
from trainability.config import Config
from trainability.train import make_trainer, seed_keys

# Issue targets: seeds -> minimum vmapped/sequential throughput ratio.
# Issue 12's CPU targets: the paper MLP never slower than sequential seeds, and
# 8 seeds of the small model at 2x or more.
TARGETS = {
    "paper": {8: 1.0, 64: 1.0, 512: 1.0},
    "small": {8: 2.0},
}


@dataclasses.dataclass(frozen=True)
class Bench:
  name: str
  title: str
  note: str
  config: Config
  dataset: data.Dataset


@dataclasses.dataclass
class Program:
  """One compiled, warmed-up `jit(vmap(run_tasks))` for a seed count, and its timings."""

  seeds: int
  devices: int  # devices the seed axis is split over (1: plain vmap on one device)
  compiled: object
  states: object
  task_ids: jax.Array
  calls: int
  compile_seconds: float
  seconds: float = math.inf  # best timed repeat
  cpu_seconds: float = math.nan  # process CPU time (all threads) of that repeat


def make_benches(args) -> list[Bench]:
  benches = []
  if "paper" in args.models:
    config = Config(dataset="mnist", subset=None, stream="random_labels", tasks=1,
                    epochs=args.paper_epochs, batch_size=256, model="mlp", width=256,
                    depth=2, optimizer="adam", lr=1e-3, seed=args.seed)
    n = args.paper_examples
    benches.append(Bench(
        "paper", "paper MLP 784-256-256-10, batch 256, Adam lr 1e-3, random labels",
        f"inputs are SYNTHETIC: {n} Gaussian 28x28x1 images (MNIST is not available "
        "offline; the cost does not depend on the pixel values)",
        config, data.synthetic_dataset(n)))
  if "small" in args.models:
    config = Config(epochs=args.small_epochs, tasks=1, seed=args.seed)
    if args.small_subset is not None:
      config = config.replace(subset=args.small_subset)
    ds = data.load(config.dataset, config.data_dir, config.subset, config.normalize)
    benches.append(Bench(
        "small", "main command's default model: Config() defaults (digits, MLP "
        f"64-256-256-10, batch {config.batch_size}, Adam lr {config.lr:g})",
        f"data: {config.dataset}, first {len(ds.y_train)} training images; "
        f"{config.epochs} epochs per task instead of the default 100",
        config, ds))
  return benches


def dense_macs(trainer) -> tuple[int, list[tuple[int, int]]]:
  """Sum of fan_in * fan_out over the model's 2-D (dense) kernels, and the shapes."""
  state = jax.eval_shape(trainer.init, jax.random.key(0))
  shapes = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(state.params)[0]:
    last = path[-1]
    name = getattr(last, "key", getattr(last, "name", None))
    if name == "kernel" and len(leaf.shape) == 2:
      shapes.append(tuple(leaf.shape))
  return sum(a * b for a, b in shapes), shapes


def measure_peak(size: int, repeats: int = 5) -> float:
  """FLOP/s of a jitted, warm float32 (size x size) @ (size x size), best of `repeats`."""
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.random.normal(ka, (size, size), jnp.float32)
  b = jax.random.normal(kb, (size, size), jnp.float32)
  dot = jax.jit(jnp.dot)
  jax.block_until_ready(dot(a, b))
  t0 = time.perf_counter()
  jax.block_until_ready(dot(a, b))
  once = max(time.perf_counter() - t0, 1e-6)
  inner = max(1, int(0.1 / once))  # small matrices: several calls per timing
  best = math.inf
  for _ in range(repeats):
    t0 = time.perf_counter()
    for _ in range(inner):
      out = dot(a, b)
    jax.block_until_ready(out)
    best = min(best, (time.perf_counter() - t0) / inner)
  return 2.0 * size**3 / best


def prepare(trainer, all_states, seeds: int, shard: bool, tasks_per_call: int,
            target_seconds: float) -> Program:
  """Compiles the program for `seeds` seeds, runs it once, sizes the timed repeats.

  With `shard`, the seed axis is split over the devices as the CLI does
  (`devices.shard_runs`); otherwise all seeds run vmapped on one device.
  """
  # The first `seeds` of the states of all seeds: the same as initializing
  # seed_keys(config.replace(seeds=seeds)), without compiling init again.
  states = jax.tree.map(lambda a: a[:seeds], all_states)  # on one device
  if shard:
    states = devices.shard_runs(states)
  used = len(jax.tree.leaves(states)[0].sharding.device_set)
  task_ids = jnp.arange(tasks_per_call, dtype=jnp.int32)
  run = jax.jit(jax.vmap(trainer.run_tasks, in_axes=(0, None)))
  t0 = time.perf_counter()
  compiled = run.lower(states, task_ids).compile()
  compile_seconds = time.perf_counter() - t0
  t0 = time.perf_counter()  # warm-up call.
  jax.block_until_ready(compiled(states, task_ids))
  warm = time.perf_counter() - t0
  calls = max(1, round(target_seconds / max(warm, 1e-6)))
  return Program(seeds, used, compiled, states, task_ids, calls, compile_seconds)


def time_repeat(program: Program) -> None:
  """One timed repeat: `calls` chained calls, one block at the end; keeps the best."""
  state = program.states
  t0, c0 = time.perf_counter(), time.process_time()
  for _ in range(program.calls):
    state, _ = program.compiled(state, program.task_ids)
  jax.block_until_ready(state)
  elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
  if elapsed < program.seconds:
    program.seconds, program.cpu_seconds = elapsed, cpu


def run_bench(bench: Bench, args, peak: float) -> dict[tuple[int, int], float]:
  """Measures and prints one model; returns (seeds, devices) -> ratio over sequential."""
  config = bench.config
  trainer = make_trainer(config, bench.dataset)
  n = len(bench.dataset.y_train)
  batch = config.batch_size
  macs, shapes = dense_macs(trainer)
  step_flops = 3 * 2 * batch * macs
  eval_flops = 2 * n * macs
  steps_per_call = args.tasks_per_call * config.epochs * trainer.steps_per_epoch
  flops_per_seed_call = args.tasks_per_call * (
      config.epochs * trainer.steps_per_epoch * step_flops + eval_flops)
  layers = "-".join([str(shapes[0][0])] + [str(s[1]) for s in shapes]) if shapes else "?"

  print(f"\n== {bench.name}: {bench.title}")
  print(f"   {bench.note}")
  print(f"   dense layers {layers}; {n} examples, {trainer.steps_per_epoch} steps/epoch, "
        f"{config.epochs} epochs/task, {args.tasks_per_call} task(s)/call = "
        f"{steps_per_call} steps/call per seed")
  print(f"   FLOPs per seed: {step_flops / 1e6:.2f} MFLOP/training step, "
        f"{eval_flops / 1e6:.2f} MFLOP/task for the accuracy pass "
        f"({eval_flops / (config.epochs * trainer.steps_per_epoch * step_flops + eval_flops):.1%}"
        " of the counted work)")
  header = (f"   {'seeds':>5} {'devs':>4} {'calls':>5} {'time(s)':>8} {'seed-steps/s':>13} "
            f"{'vs 1 seed':>9} {'GFLOP/s':>8} {'of peak':>8} {'cpu/wall':>8} {'compile(s)':>10}")
  print(header, flush=True)

  seed_counts = sorted(set(args.seeds) | {1})
  all_states = jax.jit(jax.vmap(trainer.init))(
      seed_keys(config.replace(seeds=max(seed_counts))))
  # Each seed count vmapped on one device and, where the CLI would, with the
  # seed axis split over the devices (`devices.shard_runs`).
  layouts = [(s, False) for s in seed_counts]
  layouts += [(s, True) for s in seed_counts if math.gcd(s, len(jax.local_devices())) > 1]
  programs = [prepare(trainer, all_states, s, shard, args.tasks_per_call, args.target_seconds)
              for s, shard in sorted(layouts)]
  # Repeats interleave the programs, so a slow spell of a shared machine does
  # not hit one of them only.
  for _ in range(args.repeats):
    for program in programs:
      time_repeat(program)

  sequential = next(p for p in programs if p.seeds == 1 and p.devices == 1)
  base = sequential.calls * steps_per_call / sequential.seconds
  ratios = {}
  for p in programs:
    throughput = p.seeds * p.calls * steps_per_call / p.seconds
    ratios[p.seeds, p.devices] = throughput / base
    flops = p.seeds * p.calls * flops_per_seed_call / p.seconds
    print(f"   {p.seeds:>5} {p.devices:>4} {p.calls:>5} {p.seconds:>8.3f} {throughput:>13.1f} "
          f"{ratios[p.seeds, p.devices]:>8.2f}x {flops / 1e9:>8.2f} {flops / peak:>8.1%} "
          f"{p.cpu_seconds / p.seconds:>8.2f} {p.compile_seconds:>10.2f}", flush=True)
  for s, need in sorted(TARGETS.get(bench.name, {}).items()):
    # Judged as the CLI runs seeds: split over the devices where that applies.
    layout = max((k for k in ratios if k[0] == s), default=None, key=lambda k: k[1])
    if layout is None:
      print(f"   TARGET {bench.name}: {s} vmapped seeds / sequential (need >= {need:.2f}x): "
            f"SKIP ({s} seeds not measured)")
      continue
    verdict = "PASS" if ratios[layout] >= need else "FAIL"
    print(f"   TARGET {bench.name}: {s} vmapped seeds on {layout[1]} device(s) / sequential = "
          f"{ratios[layout]:.2f}x (need >= {need:.2f}x): {verdict}; on 1 device: "
          f"{ratios[s, 1]:.2f}x")
  return ratios


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      description="Training throughput (seed-steps/s) of 1 seed vs vmapped seeds, "
      "and achieved FLOP/s as a fraction of the measured matmul peak.")
  parser.add_argument("--seeds", default=None,
                      help="comma-separated seed counts; 1 is always measured "
                      "(default 1,8,64,512; --quick: 1,2)")
  parser.add_argument("--models", default="paper,small",
                      help="comma-separated: paper, small (default both)")
  parser.add_argument("--repeats", type=int, default=None,
                      help="timed repeats per measurement, best counts (default 3; --quick: 1)")
  parser.add_argument("--target-seconds", type=float, default=None,
                      help="approximate length of one timed repeat (default 1.5; --quick: 0)")
  parser.add_argument("--tasks-per-call", type=int, default=1,
                      help="tasks per call of the compiled program (default 1)")
  parser.add_argument("--paper-examples", type=int, default=None,
                      help="synthetic training examples of the paper MLP "
                      "(default 2560 = 10 steps/epoch; --quick: 512)")
  parser.add_argument("--paper-epochs", type=int, default=None,
                      help="epochs per task of the paper MLP (default 2; --quick: 1)")
  parser.add_argument("--small-epochs", type=int, default=None,
                      help="epochs per task of the small model (default 10; --quick: 1)")
  parser.add_argument("--small-subset", type=int, default=None,
                      help="training images of the small model (default: Config's 1000)")
  parser.add_argument("--peak-size", type=int, default=None,
                      help="matrix size of the peak matmul (default 2048; --quick: 256)")
  parser.add_argument("--seed", type=int, default=0, help="first seed")
  parser.add_argument("--quick", action="store_true",
                      help="fast smoke run: small sizes, 1 repeat; numbers are not meaningful")
  args = parser.parse_args(argv)

  quick = args.quick
  defaults = dict(seeds="1,2" if quick else "1,8,64,512", repeats=1 if quick else 3,
                  target_seconds=0.0 if quick else 1.5,
                  paper_examples=512 if quick else 2560, paper_epochs=1 if quick else 2,
                  small_epochs=1 if quick else 10, peak_size=256 if quick else 2048)
  for name, value in defaults.items():
    if getattr(args, name) is None:
      setattr(args, name, value)
  try:
    args.seeds = sorted({int(s) for s in str(args.seeds).split(",") if s.strip()})
  except ValueError:
    parser.error(f"--seeds: {args.seeds!r} is not a comma-separated list of integers")
  if not args.seeds or min(args.seeds) < 1:
    parser.error("--seeds: give positive integers, e.g. 1,8,32")
  args.models = [m.strip() for m in args.models.split(",") if m.strip()]
  unknown = sorted(set(args.models) - {"paper", "small"})
  if unknown or not args.models:
    parser.error(f"--models: {','.join(unknown) or '(none)'} is not accepted; choose from paper, small")
  for name in ("repeats", "tasks_per_call", "paper_examples", "paper_epochs",
               "small_epochs", "peak_size"):
    if getattr(args, name) < 1:
      parser.error(f"--{name.replace('_', '-')}: give an integer >= 1")
  if args.paper_examples < 256:
    parser.error("--paper-examples: give at least 256 (one batch of the paper MLP)")
  return args


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  # One CPU device per core, as `trainability run` sets up (no-op if JAX already
  # runs, e.g. under pytest, or if JAX_NUM_CPU_DEVICES is set).
  devices.use_cpu_cores()
  start = time.perf_counter()
  available = jax.devices()
  print(f"device: {available[0].platform} / {getattr(available[0], 'device_kind', '?')}; "
        f"jax.devices() = {available}; {os.cpu_count()} CPU cores visible; jax {jax.__version__}")
  if args.quick:
    print("QUICK smoke run: sizes are tiny and the numbers are not meaningful")
  peak = measure_peak(args.peak_size)
  print(f"matmul peak: {args.peak_size}x{args.peak_size} float32 jnp.dot, jitted, warm, "
        f"best of 5: {peak / 1e9:.1f} GFLOP/s")
  print("FLOP convention: dense forward = 2*rows*fan_in*fan_out; training step = 3x "
        "forward (backward ~2x forward); plus the once-per-task forward accuracy pass "
        "over the training set; elementwise ops and Adam not counted")
  print("sequential = 1-seed throughput (N seeds run one after another have the same "
        "seed-steps/s); 'vs 1 seed' = vmapped seed-steps/s / sequential seed-steps/s; "
        "cpu/wall = process CPU time / wall time of the timed repeat")
  print(f"timing: best of {args.repeats} interleaved repeat(s) of `calls` back-to-back "
        f"calls, each over {args.tasks_per_call} task(s), after compiling and one warm-up "
        "call; time includes the per-task accuracy pass")

  for bench in make_benches(args):
    run_bench(bench, args, peak)

  if available[0].platform == "cpu":
    print("\nnote (CPU): with one seed a large model's matmuls already keep the cores busy, "
          "so vmapping can at best keep its seed-steps/s (cpu/wall shows how many cores a "
          "program kept busy); on a GPU vmapped seeds should scale far better")
  print(f"total time: {time.perf_counter() - start:.1f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
