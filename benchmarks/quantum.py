"""Gradient-variance benchmark of the statevector simulator, side by side with TensorCircuit.

The setting TensorCircuit publishes for its barren-plateau benchmark
(tensorcircuit-ng, examples/bp_benchmark.py): 10 qubits, depth 10, 100
circuits. Each circuit starts from |0...0>, applies R_y(pi/4) to every qubit,
then per layer a rotation about a random axis (x, y or z, uniform) with an
angle uniform in [0, 2 pi) on every qubit, followed by CZ(i, i + 1) for
i = 0 ... n - 2. The cost is <Z_0 Z_1>; the full gradient of all 100
circuits (each its own gate choices and angles) is computed in one vmapped,
jitted program, and the statistic is the standard deviation over the circuits
of dC/dtheta for qubit 0, layer 0.

* ours: `quantum.circuits.random_rotations` and `quantum.plateaus.gradient_draws`
  (gate choices and angles drawn in the program from a key), with the layers
  unrolled (the default) and as a rolled `lax.scan` (`unroll=1`);
* tensorcircuit (if `tensorcircuit-ng` imports): the same circuit written with
  its API, JAX backend, the random gate choice made as its example does (a
  one-hot mixture over R_x, R_y, R_z selected by a uniform draw), gate choices
  and angles drawn by the same JAX program.

Both are timed in this process on the same CPU: the first call (tracing,
compilation and one run) and then the median of `--repeats` calls, each
ending in `block_until_ready`. Prints both and the ratio of steady-state
times, tensorcircuit / ours (> 1: ours is faster).

    python benchmarks/quantum.py                 # ours, and tensorcircuit if installed
    python benchmarks/quantum.py --only ours     # one implementation (whole-process timing)
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from trainability.quantum import circuits, plateaus, statevector as sv


def ours(n: int, depth: int, count: int, unroll: bool | int = True):
  circuit = circuits.random_rotations(n, depth, unroll=unroll)
  cost = lambda state: sv.expectation(state, "ZZ" + "I" * (n - 2))

  def run(key):
    k_axes, k_params = jax.random.split(key)
    axes = jax.vmap(lambda k: circuits.random_axes(k, n, depth))(jax.random.split(k_axes, count))
    grads = plateaus.gradient_draws(cost, circuit, k_params, count, axes)
    first_layer = grads[circuits.layer_names(depth)[0]]["theta"]  # (count, n)
    return jnp.std(first_layer[:, 0])

  return jax.jit(run)


def tensorcircuit(n: int, depth: int, count: int):
  import tensorcircuit as tc

  backend = tc.set_backend("jax")
  tc.set_dtype("complex64")

  def expectation(params, status):
    c = tc.Circuit(n)
    for q in range(n):
      c.ry(q, theta=jnp.pi / 4)
    for layer in range(depth):
      for q in range(n):
        theta = params[q, layer]
        gates = [tc.gates.rx(theta), tc.gates.ry(theta), tc.gates.rz(theta)]
        c.unitary_kraus(gates, q, prob=[1 / 3, 1 / 3, 1 / 3], status=status[q, layer])
      for q in range(n - 1):
        c.cz(q, q + 1)
    return backend.real(c.expectation_ps(z=[0, 1]))

  value_and_grad = backend.vectorized_value_and_grad(expectation, argnums=0,
                                                     vectorized_argnums=(0, 1))

  def run(key):
    k_params, k_status = jax.random.split(key)
    params = jax.random.uniform(k_params, (count, n, depth), maxval=2 * jnp.pi)
    status = jax.random.uniform(k_status, (count, n, depth))
    _, grads = value_and_grad(params, status)
    return jnp.std(grads[:, 0, 0])

  return jax.jit(run)


def timed(fn, repeats: int):
  """(first-call seconds, median of `repeats` later calls, the last result)."""
  key = jax.random.key(0)
  started = time.perf_counter()
  out = jax.block_until_ready(fn(key))
  first = time.perf_counter() - started
  times = []
  for i in range(repeats):
    started = time.perf_counter()
    out = jax.block_until_ready(fn(jax.random.fold_in(key, i + 1)))
    times.append(time.perf_counter() - started)
  return first, float(np.median(times)), float(out)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--qubits", type=int, default=10)
  parser.add_argument("--depth", type=int, default=10)
  parser.add_argument("--circuits", type=int, default=100)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--only", choices=("ours", "ours_rolled", "tensorcircuit"), default=None,
                      help="time one implementation only")
  args = parser.parse_args(argv)
  if args.qubits < 2 or args.depth < 1 or args.circuits < 2:
    raise SystemExit("--qubits, --depth, --circuits: give at least 2 qubits, 1 layer and 2 "
                     "circuits")
  print(f"{args.qubits} qubits, depth {args.depth}, {args.circuits} circuits; jax "
        f"{jax.__version__} on {jax.devices()[0].device_kind} ({jax.default_backend()})")
  builders = {"ours": ours, "ours_rolled": functools.partial(ours, unroll=1),
              "tensorcircuit": tensorcircuit}
  wanted = [args.only] if args.only else list(builders)
  steady = {}
  for name in wanted:
    try:
      fn = builders[name](args.qubits, args.depth, args.circuits)
    except ImportError as e:
      print(f"{name:>13}: not installed ({e}); `pip install tensorcircuit-ng` to compare")
      continue
    first, median, std = timed(fn, args.repeats)
    steady[name] = median
    print(f"{name:>13}: first call {first:7.3f} s, then median {median * 1e3:8.2f} ms over "
          f"{args.repeats} calls; std of dC/dtheta_00 over circuits {std:.4f}", flush=True)
  if "tensorcircuit" in steady:
    for name in ("ours", "ours_rolled"):
      if name in steady:
        print(f"ratio tensorcircuit / {name} (steady state): "
              f"{steady['tensorcircuit'] / steady[name]:.2f}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
