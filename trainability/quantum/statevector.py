"""A statevector simulator in pure JAX: gates as tensor contractions on a (2,)*n state.

A state of n qubits is a complex array of shape (2,) * n; axis q is qubit q and
qubit 0 is the most significant bit of the basis index (|q0 q1 ... q_{n-1}>).
Every function is pure, so circuits built from them jit, differentiate
(`jax.grad` of a real expectation) and vmap over parameter draws and inputs.

* states: `zero_state`; gates: `apply` (any k-qubit matrix on the listed
  qubits), `rx` / `ry` / `rz` / `rotation` (single-qubit rotations, angle
  traced; `rotation` picks the axis by a traced index), `cz`, `cnot`,
  `cz_signs` (many CZs as one diagonal);
* Pauli strings: labels such as "XIZY" (letter q acts on qubit q);
  `apply_pauli`, `pauli_rotation` (exp(-i theta P / 2), for any string),
  `expectation` (<psi|P|psi>, real), `probability_zero` and `overlap_zero`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

PAULIS = "IXYZ"
PAULI_MATRICES = np.array([[[1, 0], [0, 1]], [[0, 1], [1, 0]], [[0, -1j], [1j, 0]],
                           [[1, 0], [0, -1]]], dtype=np.complex64)  # I, X, Y, Z


def zero_state(n: int, dtype=jnp.complex64) -> jax.Array:
  """|0...0> on n qubits."""
  if n < 1:
    raise ValueError(f"n: {n} qubits is not accepted; give at least 1")
  return jnp.zeros((2,) * n, dtype).at[(0,) * n].set(1)


def apply(state: jax.Array, gate: jax.Array, *qubits: int) -> jax.Array:
  """Applies a (2^k, 2^k) matrix to the k listed qubits (the first listed is the
  most significant bit of the gate's index)."""
  k = len(qubits)
  n = state.ndim
  if len(set(qubits)) != k or not all(0 <= q < n for q in qubits):
    raise ValueError(f"qubits: {qubits} is not accepted; give distinct qubits in 0 ... {n - 1}")
  if k == 1:
    return _apply_single(state, gate.astype(state.dtype), qubits[0])
  tensor = gate.astype(state.dtype).reshape((2,) * (2 * k))
  moved = jnp.tensordot(tensor, state, axes=(list(range(k, 2 * k)), list(qubits)))
  return jnp.moveaxis(moved, list(range(k)), list(qubits))


def _apply_single(state: jax.Array, gate: jax.Array, qubit: int) -> jax.Array:
  """A 2 x 2 gate as elementwise arithmetic on the two halves of the state along
  `qubit` (no transposes: XLA fuses a whole layer of these)."""
  halves = state.reshape(2 ** qubit, 2, -1)
  low, high = halves[:, 0], halves[:, 1]
  new = jnp.stack([gate[0, 0] * low + gate[0, 1] * high, gate[1, 0] * low + gate[1, 1] * high],
                  axis=1)
  return new.reshape(state.shape)


def rotation_matrix(axis: jax.Array | int, theta: jax.Array) -> jax.Array:
  """exp(-i theta sigma / 2) for sigma = X, Y, Z picked by `axis` (0, 1, 2; may be traced)."""
  theta = jnp.asarray(theta)
  sigma = jnp.asarray(PAULI_MATRICES[1:], jnp.result_type(theta, jnp.complex64))[axis]
  half = theta / 2
  return jnp.cos(half) * jnp.eye(2, dtype=sigma.dtype) - 1j * jnp.sin(half) * sigma


def rotation(state: jax.Array, axis: jax.Array | int, theta: jax.Array, qubit: int) -> jax.Array:
  return apply(state, rotation_matrix(axis, theta), qubit)


def rx(state, theta, qubit):
  return rotation(state, 0, theta, qubit)


def ry(state, theta, qubit):
  return rotation(state, 1, theta, qubit)


def rz(state, theta, qubit):
  return rotation(state, 2, theta, qubit)


def cz(state: jax.Array, control: int, target: int) -> jax.Array:
  """Controlled-Z: the sign of every amplitude with both qubits 1 flips (`cz_signs`)."""
  if control == target:
    raise ValueError(f"qubits: cz needs two distinct qubits (got {control} twice)")
  return apply_signs(state, cz_signs(state.ndim, [(control, target)]))


def cz_signs(n: int, pairs) -> np.ndarray:
  """The diagonal of a product of CZ gates on `pairs` of qubits: (-1)^(sum b_i b_j), shape
  (2,) * n; multiplying a state by it applies them all in one pass."""
  bits = np.indices((2,) * n)
  parity = sum(bits[i] * bits[j] for i, j in pairs) if pairs else np.zeros((2,) * n, int)
  return np.where(parity % 2, -1.0, 1.0).astype(np.float32)


def apply_signs(state: jax.Array, signs: np.ndarray) -> jax.Array:
  """Multiplies the state by a (2,) * n diagonal of signs (`cz_signs`)."""
  return state * jnp.asarray(signs, state.real.dtype)


_CNOT = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]], dtype=np.complex64)


def cnot(state: jax.Array, control: int, target: int) -> jax.Array:
  return apply(state, jnp.asarray(_CNOT), control, target)


def parse_pauli(label: str, n: int | None = None) -> tuple[int, ...]:
  """"XIZY" -> (1, 0, 3, 2); a one-line error for other letters or the wrong length."""
  bad = sorted(set(label) - set(PAULIS))
  if bad or not label:
    raise ValueError(f"pauli: {label!r} is not accepted; give a string of I, X, Y, Z")
  if n is not None and len(label) != n:
    raise ValueError(f"pauli: {label!r} has {len(label)} letters; the state has {n} qubits")
  return tuple(PAULIS.index(c) for c in label)


def apply_pauli(state: jax.Array, label: str) -> jax.Array:
  """P|psi> for the Pauli string `label`: X flips an axis, Z signs it, Y = i X Z does both."""
  for q, p in enumerate(parse_pauli(label, state.ndim)):
    if p == 0:
      continue
    shape = [1] * state.ndim
    shape[q] = 2
    if p in (1, 2):
      state = jnp.flip(state, axis=q)
    if p == 2:
      state = state * jnp.array([-1j, 1j], state.dtype).reshape(shape)
    if p == 3:
      state = state * jnp.array([1, -1], state.dtype).reshape(shape)
  return state


def pauli_rotation(state: jax.Array, label: str, theta: jax.Array) -> jax.Array:
  """exp(-i theta P / 2)|psi> = cos(theta/2)|psi> - i sin(theta/2) P|psi>, for any string P."""
  half = jnp.asarray(theta) / 2
  return jnp.cos(half) * state - 1j * jnp.sin(half) * apply_pauli(state, label)


def expectation(state: jax.Array, label: str) -> jax.Array:
  """<psi|P|psi> (real: P is Hermitian)."""
  return jnp.real(jnp.vdot(state, apply_pauli(state, label)))


def probability_zero(state: jax.Array, qubit: int) -> jax.Array:
  """The probability that measuring `qubit` gives 0."""
  return jnp.sum(jnp.abs(jnp.take(state, 0, axis=qubit)) ** 2)


def overlap_zero(state: jax.Array) -> jax.Array:
  """|<0...0|psi>|^2."""
  return jnp.abs(state[(0,) * state.ndim]) ** 2


def to_vector(state: jax.Array) -> jax.Array:
  """The 2^n amplitudes in basis order (qubit 0 most significant)."""
  return state.reshape(-1)
