"""How close each per-layer curvature estimator gets to the converged top eigenvalue.

    python benchmarks/curvature_accuracy.py            # paper MLP, ~3 minutes on a 2-core CPU
    python benchmarks/curvature_accuracy.py --quick    # smoke run; numbers not meaningful

Trains the paper's MLP (784-256-256-10, batch 256, Adam lr 1e-3) on random
labels (Fashion-MNIST from the Debian package `dataset-fashion-mnist` when it
is installed, else synthetic 28x28 inputs) for `--warmup-steps` steps, then
goes on training and, every `--check-every` steps (a scheduler check), asks
each estimator for every layer's top Hessian-block eigenvalue on that step's
minibatch, each warm-started from its own previous answer as the scheduler
does. The reference is Lanczos run to `--reference-steps` from a fresh random
start, whose residual bound is printed too. Prints, per estimator, the
relative error |estimate - reference| / |reference| at checks 3 onwards
(max and median over checks and layers), the HVPs it spent per check and
layer, and its time per check in plain training steps.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from trainability import data, estimators, models
from trainability.config import Config

FASHION = "/usr/share/datasets/fashion-mnist"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--warmup-steps", type=int, default=3000)
  parser.add_argument("--checks", type=int, default=12)
  parser.add_argument("--check-every", type=int, default=40)
  parser.add_argument("--examples", type=int, default=5120)
  parser.add_argument("--reference-steps", type=int, default=120)
  parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
  args = parser.parse_args(argv)
  if args.quick:
    args.warmup_steps, args.checks, args.examples, args.reference_steps = 40, 4, 512, 30
  if os.path.isdir(FASHION) and not args.quick:
    dataset = data.load("fashion_mnist", FASHION, subset=args.examples)
    source = f"Fashion-MNIST, first {args.examples} images"
  else:
    dataset = data.synthetic_dataset(args.examples)
    source = f"synthetic 28x28 inputs, {args.examples} images"
  config = Config(dataset="mnist", width=256, depth=2, batch_size=256)
  model = models.make_model(config, dataset.x_train.shape[1:], dataset.num_classes)
  x = jnp.asarray(dataset.x_train)
  y = jax.random.randint(jax.random.key(7), (x.shape[0],), 0, dataset.num_classes)
  params, state = model.init(jax.random.key(0))
  layers = estimators.layers_of(params)
  tx = optax.adam(1e-3)
  opt_state = tx.init(params)

  def batch_loss(p, xb, yb):
    logits, _ = model.apply(p, state, xb)
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  @functools.partial(jax.jit, static_argnums=3)
  def train(params, opt_state, key, steps):
    def step(carry, k):
      params, opt_state = carry
      idx = jax.random.choice(k, x.shape[0], (256,), replace=False)
      grads = jax.grad(batch_loss)(params, x[idx], y[idx])
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), None
    (params, opt_state), _ = jax.lax.scan(step, (params, opt_state), jax.random.split(key, steps))
    return params, opt_state

  def batch_at(i):
    idx = jax.random.choice(jax.random.key(1000 + i), x.shape[0], (256,), replace=False)
    return x[idx], y[idx]

  estimators_ = {
      "power, 1 iteration (before)": ("power", 1, 0.0),
      "power, 20 iterations": ("power", 20, 0.0),
      "lanczos, 5 steps": ("lanczos", 5, 0.0),
      "lanczos, 8 steps": ("lanczos", 8, 0.0),
      "lanczos, tol 0.01, <= 8 steps": ("lanczos", 8, 0.01),  # the default
      "lanczos, tol 0.01, <= 12 steps": ("lanczos", 12, 0.01),
  }

  def make_estimate(kind, steps, tol):
    @jax.jit
    def estimate(params, xb, yb, start):
      loss = lambda p: batch_loss(p, xb, yb)
      if kind == "power":
        eig = estimators.power_iteration(loss, params, layers, start, steps)
        return eig.values, eig.vectors, jnp.int32(steps)
      out = estimators.lanczos(estimators.block_hvp(loss, params, layers), layers, start,
                               steps, tol, min_steps=min(3, steps))
      return out.values, out.vectors, out.steps
    return estimate

  @jax.jit
  def reference(params, xb, yb, key):
    loss = lambda p: batch_loss(p, xb, yb)
    start = estimators.random_unit_vectors(key, params, layers)
    return estimators.lanczos(estimators.block_hvp(loss, params, layers), layers, start,
                              args.reference_steps)

  @jax.jit
  def plain_step(params, opt_state, xb, yb):
    updates, opt_state = tx.update(jax.grad(batch_loss)(params, xb, yb), opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  print(f"device: {jax.devices()[0].platform}; jax {jax.__version__}; {source}, random labels")
  params, opt_state = train(params, opt_state, jax.random.key(1), args.warmup_steps)
  estimates = {name: make_estimate(*spec) for name, spec in estimators_.items()}
  starts = {name: estimators.random_unit_vectors(jax.random.key(2), params, layers)
            for name in estimators_}
  errors = {name: [] for name in estimators_}
  spent = {name: [] for name in estimators_}
  residuals = []
  for c in range(args.checks):
    params, opt_state = train(params, opt_state, jax.random.key(10 + c), args.check_every)
    xb, yb = batch_at(c)
    ref = reference(params, xb, yb, jax.random.key(500 + c))
    residuals.append(np.asarray(ref.residuals / jnp.abs(ref.values)))
    for name, estimate in estimates.items():
      values, starts[name], steps = estimate(params, xb, yb, starts[name])
      if c >= 2:  # "every check after the second"
        errors[name].append(np.abs(np.asarray(values) - np.asarray(ref.values))
                            / np.abs(np.asarray(ref.values)))
        spent[name].append(int(steps))
    if c == args.checks - 1:
      print(f"reference top eigenvalues at the last check ({', '.join(layers.names)}): "
            + ", ".join(f"{v:.4g}" for v in np.asarray(ref.values)))

  def best_time(fn, *a):
    jax.block_until_ready(fn(*a))
    times = []
    for _ in range(5):
      t0 = time.perf_counter()
      jax.block_until_ready(fn(*a))
      times.append(time.perf_counter() - t0)
    return min(times)

  xb, yb = batch_at(0)
  step_time = best_time(plain_step, params, opt_state, xb, yb)
  print(f"after {args.warmup_steps} Adam steps, {args.checks} checks every "
        f"{args.check_every} steps; reference: Lanczos, {args.reference_steps} steps, "
        f"largest relative residual bound {np.max(residuals):.1e}")
  print(f"{'estimator':<32} {'max rel err':>11} {'median':>8} {'HVPs/check':>10} "
        f"{'check cost (plain steps)':>25}")
  for name, estimate in estimates.items():
    err = np.concatenate(errors[name])
    cost = best_time(estimate, params, xb, yb, starts[name]) / step_time
    print(f"{name:<32} {np.max(err):11.3%} {np.median(err):8.3%} "
          f"{np.mean(spent[name]):10.1f} {cost:25.1f}")
  print(f"(one plain training step: {step_time * 1e3:.2f} ms)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
