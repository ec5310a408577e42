"""Lie closures against known dimensions; commutators and purities against dense matrices."""

import itertools

import numpy as np
import pytest

from trainability.quantum import dla


def hopping(n):
  """X_i Y_{i+1} - Y_i X_{i+1} on every neighbouring pair."""
  pair = lambda a, b, i: "I" * i + a + b + "I" * (n - i - 2)
  return [{pair("X", "Y", i): 1.0, pair("Y", "X", i): -1.0} for i in range(n - 1)]


@pytest.mark.parametrize("n", [2, 3, 4])
def test_dimensions_of_the_four_chain_algebras(n):
  assert dla.dimension(dla.chain_generators(n, ["X", "Y", "ZZ"])) == 4 ** n - 1  # su(2^n)
  assert dla.dimension(dla.chain_generators(n, ["X", "ZZ"])) == n * (2 * n - 1)  # so(2n)
  assert dla.dimension(hopping(n)) == n * (n - 1) // 2                           # so(n)
  assert dla.dimension(dla.chain_generators(n, ["X"])) == n                      # abelian


def test_transverse_field_ising_algebra_at_five_qubits_and_its_pauli_basis():
  basis = dla.lie_closure(dla.chain_generators(5, ["X", "ZZ"]))
  assert len(basis) == 45
  labels = dla.pauli_basis_labels(basis)
  assert len(labels) == 45 and "ZZIII" in labels and "YXXXY" in labels and "ZIIII" not in labels
  np.testing.assert_allclose(basis @ basis.T, np.eye(45), atol=1e-10)


def test_commutator_matches_dense_matrices():
  """[iA, iB] = i C with C's coefficients from `commutator`, checked as matrices."""
  rng = np.random.default_rng(0)
  strings = ["".join(p) for p in itertools.product("IXYZ", repeat=3)]
  a = dla.operator({s: rng.normal() for s in rng.choice(strings, 5, replace=False)})
  b = dla.operator({s: rng.normal() for s in rng.choice(strings, 5, replace=False)})
  matrix = lambda op: sum(c * dla.pauli_matrix("".join("IXYZ"[d] for d in digits))
                          for digits, c in zip(op.digits, op.coefficients))
  ia, ib = 1j * matrix(a), 1j * matrix(b)
  c = dla.Operator.from_vector(dla.commutator(a, b), 3)
  np.testing.assert_allclose(ia @ ib - ib @ ia, 1j * matrix(c), atol=1e-12)


def test_pauli_coefficients_are_traces_with_every_string():
  rng = np.random.default_rng(1)
  h = rng.normal(size=(8, 8)) + 1j * rng.normal(size=(8, 8))
  strings = ["".join(p) for p in itertools.product("IXYZ", repeat=3)]
  want = [np.trace(dla.pauli_matrix(s) @ h) for s in strings]
  np.testing.assert_allclose(dla.pauli_coefficients(h), want, atol=1e-12)


@pytest.mark.parametrize("n, variance", [(3, 2 / 15), (4, 3 / 28)])
def test_ragone_prediction_for_x1_in_the_ising_algebra(n, variance):
  """g = so(2n) from {X_i, Z_i Z_{i+1}}, rho = |0...0>, O = X_1: the Z-type strings of
  g are the n - 1 Z_i Z_{i+1}, so P_g(rho) = (n - 1) / 2^n, P_g(O) = 2^n and
  Var = (n - 1) / (n (2n - 1))."""
  basis = dla.lie_closure(dla.chain_generators(n, ["X", "ZZ"]))
  rho = np.zeros((2 ** n, 2 ** n))
  rho[0, 0] = 1
  x1 = dla.pauli_matrix("X" + "I" * (n - 1))
  assert dla.purity(basis, rho) == pytest.approx((n - 1) / 2 ** n)
  assert dla.purity(basis, x1) == pytest.approx(2 ** n)
  assert dla.predicted_variance(basis, rho, x1) == pytest.approx(variance)


def test_full_algebra_prediction_is_the_haar_value():
  """For g = su(2^n) the prediction is the Haar variance 1 / (2^n + 1)."""
  n = 3
  basis = dla.lie_closure(dla.chain_generators(n, ["X", "Y", "ZZ"]))
  rho = np.zeros((8, 8))
  rho[0, 0] = 1
  assert dla.predicted_variance(basis, rho, dla.pauli_matrix("IZI")) == pytest.approx(1 / 9)


@pytest.mark.parametrize("call, message", [
    (lambda: dla.lie_closure([]), "generators: give at least one"),
    (lambda: dla.lie_closure(["XI", "XII"]), "generators: every generator must act on the same"),
    (lambda: dla.operator("XA"), "pauli: 'XA' is not accepted"),
    (lambda: dla.chain_generators(3, ["XYZ"]), "kinds: 'XYZ' is not accepted"),
    (lambda: dla.lie_closure(dla.chain_generators(3, ["X", "Y", "ZZ"]), max_dim=10),
     "max_dim: the algebra exceeds 10 dimensions"),
])
def test_bad_input_is_a_one_line_error(call, message):
  with pytest.raises(ValueError, match=message):
    call()
