"""Wall-time cost of the noise-curvature scheduler over plain Adam, in one process.

    python benchmarks/scheduler_overhead.py            # paper MLP, K = 40, ~1-2 minutes on a CPU
    python benchmarks/scheduler_overhead.py --quick    # smoke run; numbers not meaningful

Runs the same training (MLP 784-256-256-10, batch 256, Adam lr 1e-3, random
labels on synthetic 28x28 inputs: MNIST is not offline, and the cost of a step
does not depend on the pixel values) with and without
`--scheduler noise_curvature` at its defaults (Lanczos curvature, at most 8
HVPs per layer and check, stopping at a relative residual of 0.01), one seed,
compiled once each, best of `--repeats` timed calls, and prints the ratio
(target: at most 1.5x at K = 40). `--curvature power --curvature-steps 1` is
the one-iteration estimator used before (cheap, and up to 92% off:
benchmarks/curvature_accuracy.py).

It also splits the cost of one check, each part jitted and timed alone on the
same parameters and batch: the per-example gradient norms (the dense-layer path
the training loop uses for this MLP; the generic per-example gradients are
printed for comparison), the curvature from a cold start (an upper bound: a
warm-started check in training stops as soon as the residual is small), and
the rest of the check (the measured check minus those two), each as a multiple
of one plain training step, and the check's cost amortized over K steps.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from trainability import data, devices, estimators
from trainability.config import Config
from trainability.scheduler import CURVATURES, DEFAULTS as SIGNALS
from trainability.train import make_trainer

TARGET = 1.5


def best_time(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # compile and warm up
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return best


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--check-every", type=int, default=40)
  parser.add_argument("--curvature", default=SIGNALS.curvature, choices=CURVATURES)
  parser.add_argument("--curvature-steps", type=int, default=SIGNALS.curvature_steps)
  parser.add_argument("--curvature-tol", type=float, default=SIGNALS.curvature_tol)
  parser.add_argument("--examples", type=int, default=2560, help="synthetic training images")
  parser.add_argument("--epochs", type=int, default=16, help="epochs of the timed task")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
  args = parser.parse_args(argv)
  if args.quick:
    args.examples, args.epochs, args.repeats, args.check_every = 512, 4, 1, 2
  devices.use_cpu_cores()
  print(f"device: {jax.devices()[0].platform}; jax {jax.__version__}")

  dataset = data.synthetic_dataset(args.examples)
  base = Config(dataset="mnist", subset=None, batch_size=256, width=256, depth=2, lr=1e-3,
                epochs=args.epochs, tasks=1, seeds=1)
  scheduled = base.replace(scheduler="noise_curvature", check_every=args.check_every,
                           curvature=args.curvature, curvature_steps=args.curvature_steps,
                           curvature_tol=args.curvature_tol)
  timings = {}
  for name, config in (("adam", base), ("adam + noise_curvature", scheduled)):
    trainer = make_trainer(config, dataset)
    state = trainer.init(jax.random.key(0))
    run = jax.jit(trainer.run_tasks)
    timings[name] = best_time(run, state, jnp.arange(1), repeats=args.repeats)
    steps = config.epochs * trainer.steps_per_epoch
  checks = steps // args.check_every
  ratio = timings["adam + noise_curvature"] / timings["adam"]
  print(f"MLP 784-256-256-10, batch 256, synthetic inputs; {steps} steps, "
        f"{checks} checks (K = {args.check_every}; curvature {args.curvature}, "
        f"{args.curvature_steps} steps, tol {args.curvature_tol:g})")
  for name, seconds in timings.items():
    print(f"  {name:<24} {seconds:8.3f} s  {steps / seconds:8.1f} steps/s")
  verdict = "PASS" if ratio <= TARGET else "FAIL"
  print(f"  ratio scheduled / plain: {ratio:.3f}x (target <= {TARGET}x): {verdict}")

  # Cost split of one check, on the same parameters and one batch.
  trainer = make_trainer(base, dataset)
  state = trainer.init(jax.random.key(0))
  params = state.params
  layers = estimators.layers_of(params)
  x, y = jnp.asarray(dataset.x_train[:256]), jnp.asarray(dataset.y_train[:256])

  def example_loss(p, example):
    logits, _ = trainer.model.apply(p, {}, example[0][None])
    return optax.softmax_cross_entropy_with_integer_labels(logits, example[1][None])[0]

  def mean_loss(p):
    logits, _ = trainer.model.apply(p, {}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  tx = optax.adam(1e-3)
  opt_state = tx.init(params)

  def plain_step(p, o):
    updates, o = tx.update(jax.grad(mean_loss)(p), o, p)
    return optax.apply_updates(p, updates), o

  start = estimators.random_unit_vectors(jax.random.key(1), params, layers)
  parts = {
      "plain training step": (jax.jit(plain_step), (params, opt_state)),
      "per-example norms (dense path)": (
          jax.jit(lambda p: estimators.dense_gradient_noise(
              example_loss, p, (x, y), layers, trainer.model.dense_inputs(p, {}, x))),
          (params,)),
      "per-example gradients (generic)": (
          jax.jit(lambda p: estimators.gradient_noise(example_loss, p, (x, y), layers)),
          (params,)),
      "curvature (cold start)": (
          jax.jit(lambda p, v: estimators.top_block_eigenvalues(
              mean_loss, p, layers, v, args.curvature, args.curvature_steps,
              args.curvature_tol)), (params, start)),
  }
  cost = {name: best_time(fn, *a, repeats=max(args.repeats, 3)) for name, (fn, a) in parts.items()}
  step = cost["plain training step"]
  measured_check = (timings["adam + noise_curvature"] - timings["adam"]) / max(checks, 1)
  rest = (measured_check - cost["per-example norms (dense path)"]
          - cost["curvature (cold start)"])
  print("cost of one check, in plain training steps (the loop uses the dense path for "
        "MLPs without norm layers; the generic path for comparison):")
  for name in ("per-example norms (dense path)", "curvature (cold start)",
               "per-example gradients (generic)"):
    print(f"  {name:<30} {cost[name] * 1e3:8.2f} ms  {cost[name] / step:6.2f} steps")
  print(f"  {'rest (measured check - parts)':<30} {rest * 1e3:8.2f} ms  {rest / step:6.2f} steps")
  print(f"  {'whole check (from the runs)':<30} {measured_check * 1e3:8.2f} ms  "
        f"{measured_check / step:6.2f} steps; amortized over K = {args.check_every}: "
        f"{measured_check / step / args.check_every:.3f} steps per step")
  print(f"  (one plain training step: {step * 1e3:.2f} ms)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
