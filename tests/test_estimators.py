import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trainability import estimators, models
from trainability.config import Config

KEY = jax.random.key(0)


def tiny_problem(batch=12, activation="tanh"):
  config = Config(width=5, depth=2, activation=activation)
  model = models.make_model(config, (2, 2, 1), 3)
  params, state = model.init(KEY)
  x = jax.random.normal(jax.random.key(1), (batch, 2, 2, 1))
  y = jax.random.randint(jax.random.key(2), (batch,), 0, 3)

  def example_loss(p, example):
    xi, yi = example
    logits, _ = model.apply(p, state, xi[None])
    return optax.softmax_cross_entropy_with_integer_labels(logits, yi[None])[0]

  def loss(p):
    logits, _ = model.apply(p, state, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  return params, (x, y), example_loss, loss


def test_layers_default_to_top_level_keys_and_accept_a_grouping():
  params, *_ = tiny_problem()
  layers = estimators.layers_of(params)
  assert layers.names == ("hidden_0", "hidden_1", "output")
  assert jax.tree.leaves(layers.index) == [0, 0, 1, 1, 2, 2]  # bias, kernel per layer
  assert [bool(w) for w in jax.tree.leaves(layers.is_weight)] == [False, True] * 3
  merged = estimators.layers_of(
      params, lambda p: {k: jax.tree.map(lambda _: "out" if k == "output" else "body", v)
                         for k, v in p.items()})
  assert merged.names == ("body", "out")
  with pytest.raises(ValueError, match="^group_fn: the labels must be a tree shaped like params"):
    estimators.layers_of(params, lambda p: {"a": "b"})


def test_gradient_noise_and_critical_step_match_a_python_loop():
  params, batch, example_loss, _ = tiny_problem()
  layers = estimators.layers_of(params)
  noise = estimators.gradient_noise(example_loss, params, batch, layers)
  x, y = batch
  singles = [jax.grad(example_loss)(params, (x[i], y[i])) for i in range(len(y))]
  for l, name in enumerate(layers.names):
    flat = np.stack([np.concatenate([np.ravel(a) for a in jax.tree.leaves(g[name])])
                     for g in singles])
    mean = flat.mean(0)
    sigma2 = np.mean(np.sum((flat - mean) ** 2, axis=1))
    np.testing.assert_allclose(noise.grad_sq[l], np.sum(mean**2), rtol=1e-4)
    np.testing.assert_allclose(noise.sigma2[l], sigma2, rtol=1e-4)
    np.testing.assert_allclose(estimators.critical_step(noise)[l],
                               len(y) * np.sum(mean**2) / sigma2, rtol=1e-4)


def test_critical_step_without_noise_is_unbounded_and_finite():
  noise = estimators.GradientNoise(jnp.array([0.0, 1.0, 2.0]), jnp.array([0.0, 0.0, 4.0]), 8)
  step = estimators.critical_step(noise)
  unbounded = np.float32(estimators.UNBOUNDED)
  np.testing.assert_array_equal(step, np.array([unbounded, unbounded, 4.0], np.float32))
  assert bool(jnp.all(jnp.isfinite(step)))


def dense_block_eigenvalues(loss, params, name):
  flat, unravel = jax.flatten_util.ravel_pytree(params[name])
  block = jax.hessian(lambda f: loss({**params, name: unravel(f)}))(flat)
  return np.linalg.eigvalsh(np.asarray(block))


def test_power_iteration_finds_each_layer_block_top_eigenvalue():
  params, _, _, loss = tiny_problem()
  layers = estimators.layers_of(params)
  start = estimators.random_unit_vectors(jax.random.key(3), params, layers)
  eigen = jax.jit(lambda s: estimators.power_iteration(loss, params, layers, s, 200))(start)
  for l, name in enumerate(layers.names):
    eigs = dense_block_eigenvalues(loss, params, name)
    top = eigs[np.argmax(np.abs(eigs))]
    np.testing.assert_allclose(eigen.values[l], top, rtol=2e-3, atol=1e-6)


def test_lanczos_finds_each_layer_block_top_eigenvalue():
  params, _, _, loss = tiny_problem()
  layers = estimators.layers_of(params)
  start = estimators.random_unit_vectors(jax.random.key(3), params, layers)
  run = jax.jit(lambda s, steps, tol: estimators.lanczos(
      estimators.block_hvp(loss, params, layers), layers, s, steps, tol, min(3, steps)),
      static_argnums=(1, 2))
  exact = run(start, 40, 0.0)
  adaptive = run(start, 40, 1e-3)
  for l, name in enumerate(layers.names):
    top = dense_block_eigenvalues(loss, params, name).max()  # largest algebraic
    np.testing.assert_allclose(exact.values[l], top, rtol=1e-4, atol=1e-6)
    # the residual bound holds: the estimate is within it of the top eigenvalue
    assert abs(float(adaptive.values[l]) - top) <= float(adaptive.residuals[l]) + 1e-6
    assert abs(float(adaptive.values[l]) - top) <= 1e-3 * abs(top) + 1e-6
  assert 3 <= int(adaptive.steps) < 40  # stopped early once converged
  # the Ritz vector is a unit eigenvector: its Rayleigh quotient is the value
  hv = estimators.block_hvp(loss, params, layers)(exact.vectors)
  quotient = [float(jnp.vdot(jax.flatten_util.ravel_pytree(hv[n])[0],
                             jax.flatten_util.ravel_pytree(exact.vectors[n])[0]))
              for n in layers.names]
  np.testing.assert_allclose(quotient, exact.values, rtol=1e-3, atol=1e-6)


def test_lanczos_on_an_exhausted_krylov_space_is_exact_and_finite():
  # A 3-dim block with 2 distinct eigenvalues: the Krylov space ends after 2 steps.
  matrix = jnp.diag(jnp.array([2.0, 2.0, -5.0]))
  loss = lambda p: 0.5 * p["a"]["w"] @ matrix @ p["a"]["w"] + 0.0 * jnp.sum(p["b"]["w"])
  params = {"a": {"w": jnp.ones(3)}, "b": {"w": jnp.ones(2)}}  # b: no curvature at all
  layers = estimators.layers_of(params)
  start = estimators.random_unit_vectors(jax.random.key(1), params, layers)
  out = estimators.lanczos(estimators.block_hvp(loss, params, layers), layers, start, 10)
  np.testing.assert_allclose(out.values, [2.0, 0.0], atol=1e-5)
  assert np.all(np.isfinite(np.asarray(out.residuals)))
  # With a tolerance the loop ends as soon as every layer's space is exhausted.
  early = estimators.lanczos(estimators.block_hvp(loss, params, layers), layers, start, 10,
                             tol=1e-6)
  assert int(early.steps) == 2
  np.testing.assert_allclose(early.values, [2.0, 0.0], atol=1e-5)
  assert float(early.residuals.max()) < 1e-4
  bad = pytest.raises(ValueError, match="^min_steps: ")
  with bad:
    estimators.lanczos(estimators.block_hvp(loss, params, layers), layers, start, 2, 0.0, 3)


def assert_block_products(loss, params, layers, hv, v):
  """hv[l] == H_ll v_l for each layer, H_ll from the dense `jax.hessian` of that layer."""
  for name in layers.names:
    flat, unravel = jax.flatten_util.ravel_pytree(params[name])
    block = jax.hessian(lambda f: loss({**params, name: unravel(f)}))(flat)
    expected = block @ jax.flatten_util.ravel_pytree(v[name])[0]
    np.testing.assert_allclose(jax.flatten_util.ravel_pytree(hv[name])[0], expected,
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("linearization", ["per_layer", "shared", "auto"])
def test_block_hvp_is_the_diagonal_block_product(linearization):
  params, _, _, loss = tiny_problem()
  layers = estimators.layers_of(params)
  v = estimators.random_unit_vectors(jax.random.key(4), params, layers)
  hv = jax.jit(lambda p, v: estimators.block_hvp(loss, p, layers, linearization)(v))(params, v)
  assert_block_products(loss, params, layers, hv, v)


def test_deep_networks_take_the_shared_linearization_with_the_same_products():
  """10 layers (>= SHARED_LINEARIZATION_FROM): "auto" walks one linearization; checked
  against dense blocks after 2000 Adam steps on minibatches, on a batch not trained on."""
  config = Config(width=4, depth=9, activation="tanh")
  model = models.make_model(config, (2, 2, 1), 3)
  params, state = model.init(KEY)
  x = jax.random.normal(jax.random.key(1), (272, 2, 2, 1))
  y = jax.random.randint(jax.random.key(2), (272,), 0, 3)

  def batch_loss(p, xb, yb):
    logits, _ = model.apply(p, state, xb)
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  optimizer = optax.adam(1e-2)

  def step(carry, t):
    p, s = carry
    idx = jax.random.randint(jax.random.fold_in(KEY, t), (16,), 0, 256)
    updates, s = optimizer.update(jax.grad(batch_loss)(p, x[idx], y[idx]), s, p)
    return (optax.apply_updates(p, updates), s), None

  (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), jnp.arange(2000))
  loss = lambda p: batch_loss(p, x[256:], y[256:])  # the 16 examples never trained on
  layers = estimators.layers_of(params)
  assert layers.count >= estimators.SHARED_LINEARIZATION_FROM
  v = estimators.random_unit_vectors(jax.random.key(4), params, layers)
  hvp = lambda kind: jax.jit(
      lambda p, v: estimators.block_hvp(loss, p, layers, kind)(v))(params, v)
  auto, per_layer = hvp("auto"), hvp("per_layer")
  assert_block_products(loss, params, layers, auto, v)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               auto, per_layer)
  with pytest.raises(ValueError, match="linearization: 'dense' is not accepted; choose one "
                     "of auto, per_layer, shared"):
    estimators.block_hvp(loss, params, layers, "dense")


def test_warm_start_converges_in_fewer_iterations():
  params, _, _, loss = tiny_problem(activation="relu")
  layers = estimators.layers_of(params)
  run = jax.jit(lambda p, s, k: estimators.power_iteration(loss, p, layers, s, k),
                static_argnums=2)
  cold_start = estimators.random_unit_vectors(jax.random.key(5), params, layers)
  previous = run(params, cold_start, 300)
  # A small training step later, the old eigenvectors are close to the new ones.
  moved = jax.tree.map(lambda p, g: p - 1e-2 * g, params, jax.grad(loss)(params))
  exact = run(moved, previous.vectors, 300).values
  cold = run(moved, cold_start, 3).values
  warm = run(moved, previous.vectors, 3).values
  cold_error = np.abs(cold - exact) / np.abs(exact)
  warm_error = np.abs(warm - exact) / np.abs(exact)
  assert np.all(warm_error <= cold_error + 1e-7) and warm_error.max() < 1e-2


def test_zero_curvature_gives_zero_not_nan():
  params, _, _, _ = tiny_problem()
  layers = estimators.layers_of(params)
  flat_loss = lambda p: jnp.sum(p["output"]["bias"])  # linear: zero Hessian everywhere
  start = estimators.random_unit_vectors(jax.random.key(6), params, layers)
  eigen = estimators.power_iteration(flat_loss, params, layers, start, 3,
                                     key=jax.random.key(7))
  np.testing.assert_array_equal(eigen.values, [0.0, 0.0, 0.0])
  for leaf in jax.tree.leaves(eigen.vectors):
    assert bool(jnp.all(jnp.isfinite(leaf)))


@pytest.mark.parametrize("activation", ["relu", "crelu"])
def test_dense_gradient_noise_equals_the_per_example_computation(activation):
  config = Config(width=6, depth=2, activation=activation)
  model = models.make_model(config, (3, 2, 1), 4)
  params, state = model.init(KEY)
  x = jax.random.normal(jax.random.key(1), (10, 3, 2, 1))
  y = jax.random.randint(jax.random.key(2), (10,), 0, 4)

  def example_loss(p, example):
    logits, _ = model.apply(p, state, example[0][None])
    return optax.softmax_cross_entropy_with_integer_labels(logits, example[1][None])[0]

  layers = estimators.layers_of(params)
  fast = estimators.dense_gradient_noise(example_loss, params, (x, y), layers,
                                         model.dense_inputs(params, state, x))
  slow = estimators.gradient_noise(example_loss, params, (x, y), layers)
  np.testing.assert_allclose(fast.sigma2, slow.sigma2, rtol=1e-4)
  np.testing.assert_allclose(fast.grad_sq, slow.grad_sq, rtol=1e-5)


def test_only_plain_mlps_offer_dense_inputs():
  assert models.make_model(Config(), (8, 8, 1), 10).dense_inputs is not None
  assert models.make_model(Config(norm="layernorm"), (8, 8, 1), 10).dense_inputs is None
  assert models.make_model(Config(model="cnn"), (8, 8, 1), 10).dense_inputs is None


def test_one_matrix_at_a_time_decompositions_equal_the_batched_ones():
  """estimators.eigh / eigvalsh / singular_values: LAPACK one matrix per call, for a
  stacked (2, 3, n, n) array and under vmap, equal to jnp.linalg's batched calls."""
  a = jax.random.normal(jax.random.key(0), (2, 3, 6, 6))
  sym = (a + jnp.swapaxes(a, -1, -2)) / 2
  values, vectors = estimators.eigh(sym)
  np.testing.assert_allclose(values, jnp.linalg.eigh(sym)[0], rtol=1e-5, atol=1e-5)
  # Eigenvectors up to sign: A V = V diag(w).
  np.testing.assert_allclose(sym @ vectors, vectors * values[..., None, :], atol=1e-4)
  np.testing.assert_allclose(jax.jit(jax.vmap(estimators.eigvalsh))(sym),
                             jnp.linalg.eigvalsh(sym), rtol=1e-5, atol=1e-5)
  rect = a[..., :4]
  np.testing.assert_allclose(jax.jit(jax.vmap(jax.vmap(estimators.singular_values)))(rect),
                             jnp.linalg.svd(rect, compute_uv=False), rtol=1e-5, atol=1e-5)
  assert estimators.eigvalsh(sym[0, 0]).shape == (6,)
