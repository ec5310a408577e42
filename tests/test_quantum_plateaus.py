"""Gradient and expectation variances against closed forms, within Monte Carlo error.

Each check's closed form, derived here:
* Haar state, non-identity Pauli P: E<P> = 0 and E<P>^2 = (Tr(P)^2 + Tr(P^2)) /
  (d (d + 1)) = 1 / (d + 1), d = 2^n.
* R_x(theta_j) on each qubit of |0...0>, theta uniform: p_j(0) = cos^2(theta_j / 2),
  whose derivative is -sin(theta_j) / 2. Global cost 1 - prod_j cos^2(theta_j/2):
  dC/dtheta_1 = sin(theta_1)/2 prod_{j>1} cos^2(theta_j/2), with E[sin^2 / 4] = 1/8
  and E[cos^4(theta/2)] = 3/8, so Var = (1/8)(3/8)^(n-1). Local cost
  1 - (1/n) sum_j cos^2(theta_j/2): dC/dtheta_1 = sin(theta_1) / (2n), Var = 1/(8 n^2).
* Deep random circuits of the algebra so(2n) of {X_i, Z_i Z_{i+1}}: the Ragone
  value (n - 1) / (n (2n - 1)) of test_quantum_dla, 2/15 at n = 3 and 3/28 at n = 4.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainability.quantum import circuits, dla, plateaus, statevector as sv


def within_monte_carlo_error(samples, variance, sigmas=4.0):
  """|sample variance - variance| < sigmas x its standard error (from the 4th moment)."""
  estimate, error = plateaus.variance_and_error(samples)
  assert abs(estimate - variance) < sigmas * error, (estimate, variance, error)
  return estimate, error


@pytest.mark.parametrize("n", [2, 4, 6])
def test_warm_up_example_global_and_local_gradient_variance(n):
  circuit = circuits.rx_layer(n)
  for cost, exact in ((circuits.global_cost, (1 / 8) * (3 / 8) ** (n - 1)),
                      (circuits.local_cost, 1 / (8 * n ** 2))):
    grads = plateaus.gradient_draws(cost, circuit, jax.random.key(n), 4000)
    first = jax.tree.leaves(grads)[0][:, 0]
    within_monte_carlo_error(first, exact)
    # every parameter has the same law, so the per-parameter variances average to it too.
    # That mean is sum_i z_i / (N - 1), z_i = the draw's squared deviations averaged over
    # parameters: its standard error is the z's, whatever the parameters' correlations.
    g = np.concatenate([np.asarray(x).reshape(x.shape[0], -1) for x in jax.tree.leaves(grads)],
                       axis=1)
    z = ((g - g.mean(0)) ** 2).mean(1)
    mean_variance = float(plateaus.gradient_variance(grads).mean())
    assert mean_variance == pytest.approx(z.sum() / (len(z) - 1), rel=1e-4)
    error = z.std(ddof=1) * np.sqrt(len(z)) / (len(z) - 1)
    assert abs(mean_variance - exact) < 4 * error, (mean_variance, exact, error)


@pytest.mark.parametrize("n", [1, 3, 5])
def test_haar_random_state_pauli_variance(n):
  states = jax.vmap(lambda k: plateaus.haar_state(k, n))(jax.random.split(jax.random.key(0),
                                                                          4000))
  label = "X" + "Z" * (n - 1)
  values = jax.vmap(lambda s: sv.expectation(s, label))(states)
  within_monte_carlo_error(values, 1 / (2 ** n + 1))
  assert abs(float(values.mean())) < 4 * np.sqrt(1 / (2 ** n + 1) / 4000)


@pytest.mark.parametrize("n, layers", [(3, 30), (4, 40)])
def test_deep_ising_circuits_reach_the_ragone_variance(n, layers):
  """Measured Var <X_1> over deep random circuits of {X_i, Z_i Z_{i+1}} from |0...0>
  against the prediction computed from the Lie closure (2/15 and 3/28)."""
  generators = dla.chain_generators(n, ["X", "ZZ"])
  basis = dla.lie_closure(generators)
  rho = np.zeros((2 ** n, 2 ** n))
  rho[0, 0] = 1
  observable = "X" + "I" * (n - 1)
  predicted = dla.predicted_variance(basis, rho, dla.pauli_matrix(observable))
  assert predicted == pytest.approx((n - 1) / (n * (2 * n - 1)))
  circuit = plateaus.generated_circuit(generators, layers)
  values = jax.jit(jax.vmap(lambda k: sv.expectation(circuit.apply(circuit.init(k)),
                                                      observable)))(
      jax.random.split(jax.random.key(n), 3000))
  within_monte_carlo_error(values, predicted)


def test_random_rotation_circuits_take_one_gate_structure_per_draw():
  n, depth, draws = 3, 4, 16
  circuit = circuits.random_rotations(n, depth)
  axes = jax.vmap(lambda k: circuits.random_axes(k, n, depth))(
      jax.random.split(jax.random.key(1), draws))
  cost = lambda state: sv.expectation(state, "ZZI")
  grads = plateaus.gradient_draws(cost, circuit, jax.random.key(2), draws, axes)
  assert jax.tree.leaves(grads)[0].shape == (draws, n)
  assert plateaus.gradient_variance(grads).shape == (n * depth,)
  # one draw by hand: the gradient of that draw's own structure and angles
  params = circuit.init(jax.random.split(jax.random.key(2), draws)[5])
  one = jax.grad(lambda p: cost(circuit.apply(p, axes[5])))(params)
  np.testing.assert_allclose(jax.tree.leaves(one)[0], jax.tree.leaves(grads)[0][5], atol=1e-5)


def test_decay_fit_recovers_an_exponential():
  ns = np.arange(2, 9)
  slope, intercept = plateaus.decay_fit(ns, 3.0 * 2.0 ** (-1.5 * ns))
  assert slope == pytest.approx(-1.5) and intercept == pytest.approx(np.log2(3.0))


def test_bad_input_is_a_one_line_error():
  with pytest.raises(ValueError, match="draws: 1 is not accepted"):
    plateaus.gradient_draws(circuits.global_cost, circuits.rx_layer(2), jax.random.key(0), 1)
  with pytest.raises(ValueError, match="layers: 0 is not accepted"):
    plateaus.generated_circuit(["XI"], 0)
  with pytest.raises(ValueError, match="pauli: 'XII' has 3 letters"):
    plateaus.generated_circuit(["XI", "XII"], 1)


def test_variance_and_error_against_direct_formulas():
  x = np.array([-1.0, 1.0] * 50)  # variance 1 (ddof 1: 100/99), fourth moment 1
  variance, error = plateaus.variance_and_error(x)
  assert variance == pytest.approx(100 / 99)
  assert error == pytest.approx(np.sqrt(max(1 - (100 / 99) ** 2, 0.0) / 100), abs=1e-12)
  rng = np.random.default_rng(0)
  y = rng.exponential(size=20000)  # Var 1, E(y - 1)^4 = 9: standard error sqrt(8 / N)
  variance, error = plateaus.variance_and_error(y)
  assert variance == pytest.approx(np.var(y, ddof=1))
  assert error == pytest.approx(np.sqrt(8 / 20000), rel=0.15)
