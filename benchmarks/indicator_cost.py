"""Cost of the trainability indicators, relative to training, in one process.

    python benchmarks/indicator_cost.py            # paper MLP, every 40 steps, ~2-3 minutes on a CPU
    python benchmarks/indicator_cost.py --quick    # smoke run; numbers not meaningful

On the MLP 784-256-256-10, batch 256, Adam lr 1e-3, random labels on
synthetic 28x28 inputs (MNIST is not offline; a step's cost does not depend
on the pixel values), one seed:

1. one full indicator pass (`--indicators all` on a 256-example probe batch),
   and each indicator alone, as multiples of one plain training step;
2. the wall time of a training run with `--indicators all --indicator-every 40`,
   and with all but the two HVP-hungry ones (top_eigenvalues: 20 Lanczos
   steps; hessian_trace: 10 Hutchinson samples), over the same run without
   indicators (compiled once each, best of `--repeats`).
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import optax

from scheduler_overhead import best_time
from trainability import data, devices, indicators
from trainability.config import Config, indicator_names

EXPENSIVE = ("top_eigenvalues", "hessian_trace")  # 20 and 10 HVPs per pass
from trainability.train import make_trainer


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--every", type=int, default=40, help="steps between indicator passes")
  parser.add_argument("--examples", type=int, default=2560, help="synthetic training images")
  parser.add_argument("--epochs", type=int, default=16, help="epochs of the timed task")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--alone", default="all",
                      help="indicators to also time alone: all or a comma list")
  parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
  args = parser.parse_args(argv)
  alone = indicator_names(args.alone)
  if args.quick:
    args.examples, args.epochs, args.repeats, args.every = 512, 2, 1, 2
  devices.use_cpu_cores()
  print(f"device: {jax.devices()[0].platform}; jax {jax.__version__}")
  dataset = data.synthetic_dataset(args.examples)
  base = Config(dataset="mnist", subset=None, batch_size=256, width=256, depth=2, lr=1e-3,
                epochs=args.epochs, tasks=1, seeds=1, indicator_every=args.every,
                indicator_examples=256)

  # 1. One pass, against one plain training step.
  trainer = make_trainer(base, dataset)
  params, model_state = trainer.model.init(jax.random.key(0))
  x, y = jnp.asarray(dataset.x_train[:256]), jnp.asarray(dataset.y_train[:256])

  def example_loss(p, s, example):
    logits, _ = trainer.model.apply(p, s, example[0][None])
    return optax.softmax_cross_entropy_with_integer_labels(logits, example[1][None])[0]

  tx = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
  opt_state = tx.init(params)

  def plain_step(p, o):
    loss = lambda q: jnp.mean(jax.vmap(example_loss, (None, None, 0))(q, model_state, (x, y)))
    updates, o = tx.update(jax.grad(loss)(p), o, p)
    return optax.apply_updates(p, updates), o

  step = best_time(jax.jit(plain_step), params, opt_state, repeats=max(args.repeats, 3))
  print(f"MLP 784-256-256-10, batch 256, probe batch 256; one plain training step "
        f"{step * 1e3:.2f} ms")

  def pass_cost(names):
    suite = indicators.make_suite(trainer.model, example_loss, x, names,
                                  indicators.options_of(base))  # as the run computes them
    state = suite.init(params, jax.random.key(1))
    compute = jax.jit(lambda s, p: suite.compute(s, p, model_state, (x, y), opt_state=opt_state))
    return best_time(compute, state, params, repeats=max(args.repeats, 3))

  full = pass_cost(indicators.NAMES)
  print(f"one full indicator pass (all {len(indicators.NAMES)}): {full * 1e3:8.2f} ms = "
        f"{full / step:6.1f} training steps; every {args.every} steps: "
        f"{full / step / args.every:.3f} steps per step")
  print("each indicator alone (its own pass; the signals share one measurement):")
  for name in alone:
    cost = pass_cost((name,))
    print(f"  {name:<18} {cost * 1e3:8.2f} ms  {cost / step:6.1f} steps")

  # 2. Run-time overhead inside training.
  timings = {}
  cheap = ",".join(n for n in indicators.NAMES if n not in EXPENSIVE)
  for label, config in (("no indicators", base),
                        (f"--indicators all --indicator-every {args.every}",
                         base.replace(indicators="all")),
                        (f"all but {', '.join(EXPENSIVE)}", base.replace(indicators=cheap))):
    t = make_trainer(config, dataset)
    state = t.init(jax.random.key(0))
    timings[label] = best_time(jax.jit(t.run_tasks), state, jnp.arange(1), repeats=args.repeats)
    steps = config.epochs * t.steps_per_epoch
  plain = timings["no indicators"]
  print(f"training runs of {steps} steps ({steps // args.every} indicator passes):")
  for label, seconds in timings.items():
    print(f"  {label:<48} {seconds:8.3f} s  {steps / seconds:8.1f} steps/s  "
          f"{seconds / plain:6.3f}x")
  print(f"run-time ratio with indicators / without: {timings[list(timings)[1]] / plain:.3f}x "
        f"(all), {timings[list(timings)[2]] / plain:.3f}x (all but the Lanczos and "
        f"Hutchinson ones)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
