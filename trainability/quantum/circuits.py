"""Parameterized circuits as pure (init, apply) pairs, built on `statevector`.

* `Circuit(init, apply, n_qubits)`: `init(key) -> params` (a dict of layers,
  {"layer_00": ...}, so the library's per-layer tools group them) and
  `apply(params, inputs) -> state` (inputs: anything not differentiated, e.g.
  a random circuit's gate choices). Layers run through `run_layers`
  (`lax.scan`). The layered circuits take `unroll`: True by default, one
  straight-line program, which on a CPU runs the gradient benchmark about 4x
  faster than a rolled loop (benchmarks/quantum.py) but compiles in time that
  grows with depth; `unroll=1` keeps the loop rolled, so compile time stays
  flat for deep circuits.
* `rx_layer(n)`: one R_x rotation per qubit on |0...0> (Cerezo et al.'s
  warm-up example); `hardware_efficient(n, depth)`: R_y R_z on every qubit,
  then a CZ ladder, per layer; `random_rotations(n, depth)`: McClean et al.'s
  random circuit (R_y(pi/4) on every qubit, then per layer a rotation about a
  random axis on every qubit and a CZ ladder; `inputs` are the axes).
* Costs: `global_cost` = 1 - |<0...0|psi>|^2 and `local_cost` = 1 - mean_j
  p_j(0) (Cerezo et al. 2021).
* `reuploading_classifier(n, depth, features, classes)`: a data re-uploading
  classifier as a `models.Model` (apply(params, state, x, train) -> (logits,
  state)), so the library's training loop, indicators and scheduler take it
  unchanged: per layer, qubit q gets R_y(w_q . x + phi_q0) R_z(phi_q1), then a
  CZ ladder; logit c is scale x <Z_c>.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from trainability.quantum import statevector as sv


class Circuit(NamedTuple):
  init: Callable[[jax.Array], Any]
  apply: Callable[..., jax.Array]
  n_qubits: int


def layer_names(depth: int) -> list[str]:
  """layer_00, layer_01, ...: names that sort in circuit order."""
  digits = max(2, len(str(depth - 1)))
  return [f"layer_{l:0{digits}d}" for l in range(depth)]


def _check(n: int, depth: int, unroll: bool | int = 1) -> None:
  _check_unroll(unroll)
  if n < 1:
    raise ValueError(f"n_qubits: {n} is not accepted; give at least 1")
  if depth < 1:
    raise ValueError(f"depth: {depth} is not accepted; give at least 1 layer")


def _uniform_angles(key, shape):
  return jax.random.uniform(key, shape, minval=0.0, maxval=2 * jnp.pi)


def uniform_layers(depth: int, leaf: str, shape: tuple) -> Callable[[jax.Array], dict]:
  """init(key) -> {"layer_l": {leaf: angles of `shape`}}, angles uniform in [0, 2 pi)."""
  names = layer_names(depth)

  def init(key):
    return {name: {leaf: _uniform_angles(k, shape)}
            for name, k in zip(names, jax.random.split(key, depth))}

  return init


def cz_ladder(state: jax.Array) -> jax.Array:
  """CZ(q, q + 1) for q = 0 ... n - 2 (an open chain), as one diagonal of signs."""
  n = state.ndim
  return sv.apply_signs(state, sv.cz_signs(n, [(q, q + 1) for q in range(n - 1)]))


def run_layers(layer: Callable, carry, layers, unroll: bool | int):
  """`lax.scan(layer, carry, layers)`, returning the final carry; `unroll`: True (one
  straight-line program, fastest), False or 1 (a rolled loop: compile time independent
  of depth) or k (k layers per loop iteration)."""
  _check_unroll(unroll)
  return jax.lax.scan(layer, carry, layers, unroll=unroll)[0]


def _check_unroll(unroll) -> None:
  if not (isinstance(unroll, bool) or (isinstance(unroll, int) and unroll >= 1)):
    raise ValueError(f"unroll: {unroll!r} is not accepted; give True, False or a positive int")


def stacked(params: dict, leaf: str) -> jax.Array:
  """The layers' `leaf` arrays stacked in circuit order (the input of `lax.scan`)."""
  return jnp.stack([params[name][leaf] for name in sorted(params)])


def rx_layer(n: int) -> Circuit:
  """R_x(theta_q) on each qubit q of |0...0>; params {"layer_00": {"theta": (n,)}}."""
  _check(n, 1)
  name = layer_names(1)[0]

  def init(key):
    return {name: {"theta": _uniform_angles(key, (n,))}}

  def apply(params, inputs=None):
    state = sv.zero_state(n)
    for q, theta in enumerate(params[name]["theta"]):
      state = sv.rx(state, theta, q)
    return state

  return Circuit(init, apply, n)


def hardware_efficient(n: int, depth: int, unroll: bool | int = True) -> Circuit:
  """Per layer: R_y then R_z on every qubit, then a CZ ladder; from |0...0>.
  params {"layer_l": {"rotations": (n, 2)}}, angles uniform in [0, 2 pi)."""
  _check(n, depth, unroll)

  def layer(state, angles):
    for q in range(n):
      state = sv.rz(sv.ry(state, angles[q, 0], q), angles[q, 1], q)
    return cz_ladder(state), None

  def apply(params, inputs=None):
    return run_layers(layer, sv.zero_state(n), stacked(params, "rotations"), unroll)

  return Circuit(uniform_layers(depth, "rotations", (n, 2)), apply, n)


def random_rotations(n: int, depth: int, unroll: bool | int = True) -> Circuit:
  """McClean et al. (2018): R_y(pi/4) on every qubit of |0...0>, then per layer
  R_{axis}(theta) on every qubit and a CZ ladder. params {"layer_l": {"theta": (n,)}};
  inputs: the axes, int (depth, n) in {0, 1, 2} (`random_axes`)."""
  _check(n, depth, unroll)

  def layer(state, angles_and_axes):
    angles, axes = angles_and_axes
    for q in range(n):
      state = sv.rotation(state, axes[q], angles[q], q)
    return cz_ladder(state), None

  def apply(params, axes):
    state = sv.zero_state(n)
    for q in range(n):
      state = sv.ry(state, jnp.pi / 4, q)
    return run_layers(layer, state, (stacked(params, "theta"), axes), unroll)

  return Circuit(uniform_layers(depth, "theta", (n,)), apply, n)


def random_axes(key: jax.Array, n: int, depth: int) -> jax.Array:
  """Gate choices of `random_rotations`: each rotation's axis uniform over x, y, z."""
  return jax.random.randint(key, (depth, n), 0, 3)


def global_cost(state: jax.Array) -> jax.Array:
  """1 - |<0...0|psi>|^2."""
  return 1.0 - sv.overlap_zero(state)


def local_cost(state: jax.Array) -> jax.Array:
  """1 - (1/n) sum_j p_j(0): the mean over qubits of the probability of measuring 1."""
  n = state.ndim
  return 1.0 - sum(sv.probability_zero(state, q) for q in range(n)) / n


def reuploading_classifier(n: int, depth: int, features: int, classes: int,
                           scale: float = 5.0, unroll: bool | int = True):
  """A data re-uploading classifier (Perez-Salinas et al. 2020) as a `models.Model` on
  inputs (B, ...) flattened to `features` values. Per layer l and qubit q:
  R_y(w_lq . x + phi_lq0) then R_z(phi_lq1), the data entering every layer; then a
  CZ ladder; logits scale * <Z_c> for c < classes. params {"layer_l": {"encoding":
  (n, features), "rotations": (n, 2)}}: encoding weights start at N(0, 1 /
  features), angles uniform in [0, 2 pi)."""
  from trainability.models import Model

  _check(n, depth, unroll)
  if not 1 <= classes <= n:
    raise ValueError(f"classes: {classes} is not accepted; read out on the qubits, give 1 ... "
                     f"{n} for {n} qubits")
  names = layer_names(depth)
  readout = ["I" * c + "Z" + "I" * (n - c - 1) for c in range(classes)]

  def init(key):
    params = {}
    for name, k in zip(names, jax.random.split(key, depth)):
      k_w, k_r = jax.random.split(k)
      params[name] = {"encoding": jax.random.normal(k_w, (n, features)) / jnp.sqrt(features),
                      "rotations": _uniform_angles(k_r, (n, 2))}
    return params, {}

  def layer(state_and_x, layer_params):
    state, x = state_and_x
    angles = layer_params["encoding"] @ x + layer_params["rotations"][:, 0]
    for q in range(n):
      state = sv.rz(sv.ry(state, angles[q], q), layer_params["rotations"][q, 1], q)
    return (cz_ladder(state), x), None

  def one(params, x):
    layers = {leaf: stacked(params, leaf) for leaf in ("encoding", "rotations")}
    state, _ = run_layers(layer, (sv.zero_state(n), x), layers, unroll)
    return scale * jnp.stack([sv.expectation(state, p) for p in readout])

  def apply(params, model_state, x, train=False):
    flat = x.reshape(x.shape[0], -1)
    if flat.shape[1] != features:
      raise ValueError(f"x: {flat.shape[1]} features per example; the circuit takes {features}")
    return jax.vmap(one, in_axes=(None, 0))(params, flat), model_state

  return Model(init, apply)
