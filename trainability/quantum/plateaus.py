"""Barren-plateau measurements: gradient variance over random parameter draws, vmapped.

* `gradient_draws(cost, circuit, key, draws, inputs)`: d cost(apply(params)) /
  d params for `draws` independent inits, one jitted, vmapped program; a tree
  shaped like the params with a leading draws axis.
* `gradient_variance(grads)`: the variance over draws of every partial
  derivative (ddof 1), as one flat vector in param-tree order.
* `variance_and_error(samples)`: a sample variance and its standard error;
* `decay_fit(ns, variances)`: the least-squares line log2 Var = a + slope n;
  `2 ** -slope` is the factor the variance shrinks by per added qubit.
* `generated_circuit(generators, layers)`: exp(-i theta_k G_k / 2) for every
  Pauli-string generator in turn, `layers` times, from |0...0>: deep random
  circuits of a given dynamical Lie algebra (`dla`).
* `haar_state(key, n)`: a Haar-random pure state (normalized complex Gaussian).
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from trainability.quantum import statevector as sv
from trainability.quantum.circuits import Circuit, run_layers, stacked, uniform_layers


def gradient_draws(cost: Callable[[jax.Array], jax.Array], circuit: Circuit, key: jax.Array,
                   draws: int, inputs: jax.Array | None = None):
  """Gradients of cost(circuit.apply(params, inputs_i)) at `draws` random inits
  (inputs, if given, has a leading draws axis: one gate structure per draw)."""
  if draws < 2:
    raise ValueError(f"draws: {draws} is not accepted; a variance needs at least 2")
  grad = jax.grad(lambda p, x: cost(circuit.apply(p, x)))

  @jax.jit
  def run(key, inputs):
    params = jax.vmap(circuit.init)(jax.random.split(key, draws))
    return jax.vmap(grad, in_axes=(0, None if inputs is None else 0))(params, inputs)

  return run(key, inputs)


def gradient_variance(grads) -> jax.Array:
  """Var over draws (axis 0, ddof 1) of every partial derivative, flattened in tree order."""
  leaves = [g.reshape(g.shape[0], -1) for g in jax.tree.leaves(grads)]
  return jnp.var(jnp.concatenate(leaves, axis=1), axis=0, ddof=1)


def variance_and_error(samples) -> tuple[float, float]:
  """(sample variance, its standard error sqrt((m4 - var^2) / N)) of 1-D samples: the
  error grows with the fourth moment, which is large in a barren plateau."""
  x = np.asarray(samples, float)
  centred = x - x.mean()
  variance = float(centred.var(ddof=1))
  return variance, float(np.sqrt(max(np.mean(centred ** 4) - variance ** 2, 0.0) / len(x)))


def decay_fit(ns: Sequence[int], variances: Sequence[float]) -> tuple[float, float]:
  """(slope, intercept) of log2 Var against n by least squares."""
  slope, intercept = np.polyfit(np.asarray(ns, float), np.log2(np.asarray(variances, float)), 1)
  return float(slope), float(intercept)


def generated_circuit(generators: Sequence[str], layers: int) -> Circuit:
  """exp(-i theta G / 2) for each Pauli-string generator G in order, repeated `layers`
  times on |0...0>; params {"layer_l": {"theta": (len(generators),)}}, uniform in
  [0, 2 pi)."""
  if not generators:
    raise ValueError("generators: give at least one Pauli string")
  n = len(generators[0])
  for g in generators:
    sv.parse_pauli(g, n)
  if layers < 1:
    raise ValueError(f"layers: {layers} is not accepted; give at least 1")

  def layer(state, thetas):
    for g, theta in zip(generators, thetas):
      state = sv.pauli_rotation(state, g, theta)
    return state, None

  def apply(params, inputs=None):
    # a rolled loop: unrolled, XLA's compile time for chains of Pauli rotations blows up
    # (minutes for 10 layers of 5 generators on 3 qubits, vmapped, against seconds rolled)
    return run_layers(layer, sv.zero_state(n), stacked(params, "theta"), unroll=1)

  return Circuit(uniform_layers(layers, "theta", (len(generators),)), apply, n)


def haar_state(key: jax.Array, n: int) -> jax.Array:
  """A Haar-random pure state on n qubits, shape (2,) * n."""
  re, im = jax.random.normal(key, (2,) + (2,) * n)
  state = (re + 1j * im).astype(jnp.complex64)
  return state / jnp.linalg.norm(state.reshape(-1))
