"""The statevector simulator against dense 2^n x 2^n matrices built with np.kron."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainability.quantum import dla, statevector as sv

I2 = np.eye(2)
X = np.array([[0, 1], [1, 0]])
Y = np.array([[0, -1j], [1j, 0]])
Z = np.diag([1, -1])


def dense(single: np.ndarray, qubit: int, n: int) -> np.ndarray:
  return functools.reduce(np.kron, [single if q == qubit else I2 for q in range(n)])


def dense_rotation(sigma, theta):
  return np.cos(theta / 2) * I2 - 1j * np.sin(theta / 2) * sigma


def random_state(key, n):
  re, im = np.asarray(jax.random.normal(key, (2, 2 ** n)))
  v = re + 1j * im
  return v / np.linalg.norm(v)


@pytest.mark.parametrize("axis, sigma", [(0, X), (1, Y), (2, Z)])
def test_rotations_match_the_dense_kron_matrix_on_every_qubit(axis, sigma):
  n, theta = 3, 0.7
  psi = random_state(jax.random.key(axis), n)
  for q in range(n):
    got = sv.rotation(jnp.asarray(psi, jnp.complex64).reshape((2,) * n), axis, theta, q)
    want = dense(dense_rotation(sigma, theta), q, n) @ psi
    np.testing.assert_allclose(np.asarray(sv.to_vector(got)), want, atol=1e-6)


def test_two_qubit_gates_match_dense_matrices_in_both_orders():
  n = 3
  psi = random_state(jax.random.key(1), n)
  state = jnp.asarray(psi, jnp.complex64).reshape((2,) * n)
  p0, p1 = np.diag([1, 0]), np.diag([0, 1])
  for control, target in [(0, 2), (2, 0), (1, 2)]:
    cnot = dense(p0, control, n) + dense(p1, control, n) @ dense(X, target, n)
    cz = dense(p0, control, n) + dense(p1, control, n) @ dense(Z, target, n)
    np.testing.assert_allclose(sv.to_vector(sv.cnot(state, control, target)), cnot @ psi,
                               atol=1e-6)
    np.testing.assert_allclose(sv.to_vector(sv.cz(state, control, target)), cz @ psi, atol=1e-6)


@pytest.mark.parametrize("label", ["XYZ", "IZI", "YYX", "ZIZ"])
def test_pauli_strings_expectations_and_rotations_match_dense(label):
  n, theta = 3, 1.3
  psi = random_state(jax.random.key(2), n)
  state = jnp.asarray(psi, jnp.complex64).reshape((2,) * n)
  p = dla.pauli_matrix(label)
  np.testing.assert_allclose(sv.to_vector(sv.apply_pauli(state, label)), p @ psi, atol=1e-6)
  assert float(sv.expectation(state, label)) == pytest.approx(np.real(psi.conj() @ p @ psi),
                                                              abs=1e-6)
  rotated = np.cos(theta / 2) * psi - 1j * np.sin(theta / 2) * (p @ psi)  # exp(-i theta P/2)
  np.testing.assert_allclose(sv.to_vector(sv.pauli_rotation(state, label, theta)), rotated,
                             atol=1e-6)


def test_probabilities_and_overlap():
  n = 3
  psi = random_state(jax.random.key(3), n)
  state = jnp.asarray(psi, jnp.complex64).reshape((2,) * n)
  probs = np.abs(psi.reshape((2,) * n)) ** 2
  assert float(sv.overlap_zero(state)) == pytest.approx(probs[0, 0, 0], rel=1e-5)
  for q in range(n):
    assert float(sv.probability_zero(state, q)) == pytest.approx(
        np.take(probs, 0, axis=q).sum(), rel=1e-5)


def test_a_circuit_jits_differentiates_and_vmaps():
  """d<Z>/dtheta of R_y(theta)|0> is -sin(theta), under jit, grad and vmap."""
  f = lambda theta: sv.expectation(sv.ry(sv.zero_state(2), theta, 1), "IZ")
  thetas = jnp.linspace(0.0, 3.0, 7)
  np.testing.assert_allclose(jax.jit(jax.vmap(jax.grad(f)))(thetas), -np.sin(thetas),
                             atol=1e-6)
  np.testing.assert_allclose(jax.vmap(f)(thetas), np.cos(thetas), atol=1e-6)


def test_rotation_axis_may_be_traced():
  state = sv.zero_state(1)
  pick = jax.jit(lambda axis: sv.to_vector(sv.rotation(state, axis, jnp.pi, 0)))
  np.testing.assert_allclose(pick(0), [0, -1j], atol=1e-6)   # R_x(pi)|0> = -i|1>
  np.testing.assert_allclose(pick(1), [0, 1], atol=1e-6)     # R_y(pi)|0> = |1>


@pytest.mark.parametrize("call, message", [
    (lambda: sv.zero_state(0), "n: 0 qubits is not accepted"),
    (lambda: sv.apply(sv.zero_state(2), jnp.eye(4), 0, 0), "qubits: (0, 0) is not accepted"),
    (lambda: sv.apply_pauli(sv.zero_state(2), "XQ"), "pauli: 'XQ' is not accepted"),
    (lambda: sv.expectation(sv.zero_state(2), "XYZ"), "pauli: 'XYZ' has 3 letters"),
    (lambda: sv.cz(sv.zero_state(2), 1, 1), "qubits: cz needs two distinct qubits"),
])
def test_bad_input_is_a_one_line_error(call, message):
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
    call()
