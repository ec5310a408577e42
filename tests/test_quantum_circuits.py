"""Circuits against dense matrix products; the library's scheduler and indicators on a circuit."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trainability import indicators
from trainability.quantum import circuits, dla
from trainability.scheduler import noise_curvature_scheduler

SIGMA = [dla.pauli_matrix(p) for p in "XYZ"]


def rotation(axis, theta, q, n):
  single = np.cos(theta / 2) * np.eye(2) - 1j * np.sin(theta / 2) * SIGMA[axis]
  return functools.reduce(np.kron, [single if k == q else np.eye(2) for k in range(n)])


def cz_ladder(n):
  out = np.eye(2 ** n, dtype=complex)
  for q in range(n - 1):
    out = np.diag([-1.0 if (i >> (n - 1 - q)) & 1 and (i >> (n - 2 - q)) & 1 else 1.0
                   for i in range(2 ** n)]) @ out
  return out


@pytest.mark.parametrize("unroll", [True, 1])
def test_hardware_efficient_ansatz_is_the_dense_product(unroll):
  n, depth = 3, 2
  circuit = circuits.hardware_efficient(n, depth, unroll=unroll)
  params = circuit.init(jax.random.key(0))
  psi = np.zeros(2 ** n, complex)
  psi[0] = 1
  for name in sorted(params):
    angles = np.asarray(params[name]["rotations"], float)
    for q in range(n):
      psi = rotation(2, angles[q, 1], q, n) @ rotation(1, angles[q, 0], q, n) @ psi
    psi = cz_ladder(n) @ psi
  np.testing.assert_allclose(np.asarray(circuit.apply(params)).reshape(-1), psi, atol=1e-5)


@pytest.mark.parametrize("unroll", [True, 1])
def test_random_rotation_circuit_is_the_dense_product(unroll):
  n, depth = 3, 3
  circuit = circuits.random_rotations(n, depth, unroll=unroll)
  params = circuit.init(jax.random.key(1))
  axes = circuits.random_axes(jax.random.key(2), n, depth)
  psi = np.zeros(2 ** n, complex)
  psi[0] = 1
  for q in range(n):
    psi = rotation(1, np.pi / 4, q, n) @ psi
  for l, name in enumerate(sorted(params)):
    for q in range(n):
      psi = rotation(int(axes[l, q]), float(params[name]["theta"][q]), q, n) @ psi
    psi = cz_ladder(n) @ psi
  np.testing.assert_allclose(np.asarray(circuit.apply(params, axes)).reshape(-1), psi, atol=1e-5)


def blobs(key, count=64):
  """Two classes of 2-feature points: centred at (+1, +1) and (-1, -1)."""
  k1, k2 = jax.random.split(key)
  y = jax.random.bernoulli(k1, 0.5, (count,)).astype(jnp.int32)
  x = (2.0 * y[:, None] - 1.0) + 0.3 * jax.random.normal(k2, (count, 2))
  return x, y


def test_noise_curvature_scheduler_trains_a_reuploading_classifier_under_jit():
  """The optax scheduler, unchanged, on a circuit's parameters: one multiplier per
  circuit layer, finite signals, and the training loss falls."""
  model = circuits.reuploading_classifier(n=2, depth=3, features=2, classes=2)
  params, model_state = model.init(jax.random.key(0))
  x, y = blobs(jax.random.key(1))

  def example_loss(p, example):
    xi, yi = example
    logits, _ = model.apply(p, model_state, xi[None])
    return optax.softmax_cross_entropy_with_integer_labels(logits[0], yi)

  mean_loss = lambda p, batch: jax.vmap(example_loss, in_axes=(None, 0))(p, batch).mean()
  tx = noise_curvature_scheduler(optax.adam(0.05), learning_rate=0.05, steps_per_task=60,
                                 check_every=5, curvature="power", curvature_steps=1)

  @jax.jit
  def step(p, state, t):
    grads = jax.grad(mean_loss)(p, (x, y))
    updates, state = tx.update(grads, state, p, example_loss=example_loss, batch=(x, y),
                               task_step=t, step=t)
    return optax.apply_updates(p, updates), state

  state = tx.init(params)
  before = float(mean_loss(params, (x, y)))
  for t in range(60):
    params, state = step(params, state, t)
  after = float(mean_loss(params, (x, y)))
  assert after < 0.5 * before
  assert state.last.multiplier.shape == (3,)  # layer_00, layer_01, layer_02
  for value in (state.last.multiplier, state.last.lam, state.last.alpha):
    assert np.all(np.isfinite(np.asarray(value)))


def test_indicator_suite_runs_on_a_circuit_and_matches_direct_computations():
  model = circuits.reuploading_classifier(n=2, depth=2, features=2, classes=2)
  params, model_state = model.init(jax.random.key(3))
  x, y = blobs(jax.random.key(4), 16)

  def example_loss(p, s, example):
    logits, _ = model.apply(p, s, example[0][None])
    return optax.softmax_cross_entropy_with_integer_labels(logits[0], example[1])

  names = ("gradient_norm", "jacobian_sigma_min", "alpha_g", "alpha_tilde")
  signals = indicators.SIGNAL_DEFAULTS._replace(curvature="power", curvature_steps=1)
  suite = indicators.make_suite(model, example_loss, x, names=names,
                                options=indicators.Options(jacobian_examples=4, signals=signals),
                                learning_rate=0.01)
  assert suite.labels["gradient_norm"] == ("network", "layer_00", "layer_01")
  mean_loss = lambda p, xs, ys: jnp.mean(
      jax.vmap(lambda e0, e1: example_loss(p, model_state, (e0, e1)))(xs, ys))
  # at the random init, and after 1000 steps of Adam on (x, y) on a fresh batch (a trained
  # state, not the batch it was trained on)
  adam = optax.adam(0.05)
  step = jax.jit(lambda p, s: (lambda u, s: (optax.apply_updates(p, u), s))(
      *adam.update(jax.grad(mean_loss)(p, x, y), s, p)))
  trained, opt_state = params, adam.init(params)
  for _ in range(1000):
    trained, opt_state = step(trained, opt_state)
  assert float(mean_loss(trained, x, y)) < 0.5 * float(mean_loss(params, x, y))
  fresh = blobs(jax.random.key(6), 16)
  compute = jax.jit(suite.compute)
  norm = lambda tree: np.sqrt(sum(float(jnp.sum(g ** 2)) for g in jax.tree.leaves(tree)))
  for at, (xs, ys) in ((params, (x, y)), (trained, fresh)):
    values, _ = compute(suite.init(at, jax.random.key(5)), at, model_state, (xs, ys))
    assert all(np.all(np.isfinite(np.asarray(v))) for v in values.values())
    grads = jax.grad(mean_loss)(at, xs, ys)
    np.testing.assert_allclose(values["gradient_norm"],
                               [norm(grads), norm(grads["layer_00"]), norm(grads["layer_01"])],
                               rtol=1e-4)
    # alpha_g = B ||g_l||^2 / sigma2_l, sigma2_l = mean_i ||g_i,l - g_l||^2, from the
    # per-example gradients directly
    per_example = jax.vmap(jax.grad(lambda p, e0, e1: example_loss(p, model_state, (e0, e1))),
                           in_axes=(None, 0, 0))(at, xs, ys)
    expected = []
    for layer in ("layer_00", "layer_01"):
      g_i = np.concatenate([np.asarray(v).reshape(len(xs), -1)
                            for v in jax.tree.leaves(per_example[layer])], axis=1)
      g = g_i.mean(0)
      expected.append(len(xs) * np.sum(g ** 2) / np.mean(np.sum((g_i - g) ** 2, axis=1)))
    np.testing.assert_allclose(values["alpha_g"], expected, rtol=2e-3)
    # sigma_min of the 4 x 2 logits' Jacobian against a dense SVD
    flat, unravel = jax.flatten_util.ravel_pytree(at)
    jac = jax.jacfwd(lambda v: model.apply(unravel(v), model_state, xs[:4])[0].reshape(-1))(flat)
    assert float(values["jacobian_sigma_min"][0]) == pytest.approx(
        float(np.linalg.svd(np.asarray(jac), compute_uv=False)[-1]), rel=1e-3)


@pytest.mark.parametrize("call, message", [
    (lambda: circuits.hardware_efficient(0, 2), "n_qubits: 0 is not accepted"),
    (lambda: circuits.random_rotations(2, 0), "depth: 0 is not accepted"),
    (lambda: circuits.reuploading_classifier(2, 1, 4, 3), "classes: 3 is not accepted"),
    (lambda: circuits.hardware_efficient(2, 1, unroll=0), "unroll: 0 is not accepted"),
    (lambda: circuits.random_rotations(2, 1, unroll=1.5), "unroll: 1.5 is not accepted"),
])
def test_bad_input_is_a_one_line_error(call, message):
  with pytest.raises(ValueError, match=message):
    call()
