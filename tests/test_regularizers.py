"""Regularizer penalties against brute-force computations."""

import itertools

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from trainability import regularizers


def _params(seed):
  k = jax.random.split(jax.random.key(seed), 3)
  return {"a": {"kernel": jax.random.normal(k[0], (5, 3)), "bias": jax.random.normal(k[1], (3,))},
          "conv": {"kernel": jax.random.normal(k[2], (3, 3, 2, 4))}}


@pytest.mark.parametrize("kind", regularizers.REGULARIZERS[1:3])
def test_anchor_penalties_are_zero_at_init(kind):
  params = _params(0)
  anchor = regularizers.prepare_anchor(kind, params)
  assert float(regularizers.penalty_fn(kind)(params, anchor)) == 0.0


def test_l2_init_is_the_squared_distance_to_init():
  p, p0 = _params(0), _params(1)
  flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])
  assert float(regularizers.l2_init(p, p0)) == pytest.approx(np.sum((flat(p) - flat(p0)) ** 2),
                                                             rel=1e-5)


def _w2_brute_force(x, y):
  """min over matchings of sum (x_i - y_pi(i))^2, by trying every permutation."""
  return min(sum((a - b) ** 2 for a, b in zip(x, perm)) for perm in itertools.permutations(y))


def test_wasserstein_equals_a_brute_force_optimal_matching_per_tensor():
  rng = np.random.default_rng(0)
  p = {"k": jnp.asarray(rng.normal(size=(2, 3)), jnp.float32),
       "b": jnp.asarray(rng.normal(size=(4,)), jnp.float32)}
  p0 = {"k": jnp.asarray(rng.normal(size=(2, 3)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=(4,)), jnp.float32)}
  expected = sum(_w2_brute_force(np.ravel(p[n]), np.ravel(p0[n])) for n in p)
  got = regularizers.wasserstein(p, regularizers.prepare_anchor("wasserstein", p0))
  assert float(got) == pytest.approx(expected, rel=1e-5)
  # Permuting a tensor's values costs nothing: only their distribution counts.
  shuffled = {"k": p0["k"][:, ::-1], "b": p0["b"][::-1]}
  assert float(regularizers.wasserstein(
      shuffled, regularizers.prepare_anchor("wasserstein", p0))) == pytest.approx(0.0, abs=1e-10)


def test_spectral_penalty_and_its_gradient():
  params = _params(2)
  expected = sum((np.linalg.norm(np.asarray(k).reshape(-1, k.shape[-1]), 2) ** 2 - 1) ** 2
                 for k in (params["a"]["kernel"], params["conv"]["kernel"]))
  assert float(regularizers.spectral(params, iterations=200)) == pytest.approx(expected, rel=1e-4)
  # d sigma / dW = u v^T: compare with the gradient of the exact sigma (from the SVD).
  w = params["a"]["kernel"]
  ours = jax.grad(lambda m: regularizers.top_singular_value(m, 200))(w)
  exact = jax.grad(lambda m: jnp.linalg.svd(m, compute_uv=False)[0])(w)
  np.testing.assert_allclose(ours, exact, rtol=1e-3, atol=1e-5)


def test_orthogonal_penalty_is_zero_for_orthonormal_rows_and_matches_numpy():
  q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(4, 4)))
  assert float(regularizers.orthogonal({"k": jnp.asarray(q[:, :4], jnp.float32)})) == \
      pytest.approx(0.0, abs=1e-9)
  params = _params(3)
  expected = 0.0
  for k in (params["a"]["kernel"], params["conv"]["kernel"]):
    w = np.asarray(k).reshape(-1, k.shape[-1])
    expected += np.sum((w @ w.T - np.eye(w.shape[0])) ** 2)
  assert float(regularizers.orthogonal(params)) == pytest.approx(expected, rel=1e-5)


def test_penalties_run_under_jit_and_vmap():
  anchor = _params(0)

  def all_penalties(key):
    p = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(key, x.shape), anchor)
    return jnp.stack([regularizers.penalty_fn(k)(p, regularizers.prepare_anchor(k, anchor))
                      for k in regularizers.REGULARIZERS])

  out = jax.jit(jax.vmap(all_penalties))(jax.random.split(jax.random.key(0), 3))
  assert out.shape == (3, 5) and np.all(np.isfinite(out)) and np.all(out[:, 0] == 0)


def test_unknown_regularizer_is_a_one_line_error():
  with pytest.raises(ValueError, match="regularizer: 'l1' is not accepted; choose one of none"):
    regularizers.penalty_fn("l1")


def test_project_to_init_ball_is_the_nearest_point_of_each_layers_ball():
  """Per layer (top-level key): inside the ball, unchanged; outside, on the sphere
  along the same direction from the anchor, and no point of the ball is nearer
  (checked against random points of the ball); under jit."""
  anchor, params = _params(0), _params(1)
  project = jax.jit(regularizers.project_to_init_ball)
  flat = lambda tree: jax.flatten_util.ravel_pytree(tree)[0]
  for radius in (0.1, 0.5, 10.0):
    out = project(params, anchor, radius)
    for name in anchor:
      a, p, o = flat(anchor[name]), flat(params[name]), flat(out[name])
      allowed = radius * np.linalg.norm(a)
      if np.linalg.norm(p - a) <= allowed:
        np.testing.assert_allclose(o, p, rtol=1e-6)
        continue
      np.testing.assert_allclose(np.linalg.norm(o - a), allowed, rtol=1e-5)
      np.testing.assert_allclose((o - a) / allowed, (p - a) / np.linalg.norm(p - a), atol=1e-5)
      rng = np.random.default_rng(0)
      others = rng.normal(size=(2000, a.size))
      others = a + others / np.linalg.norm(others, axis=1, keepdims=True) * allowed * \
          rng.uniform(size=(2000, 1)) ** (1 / a.size)
      assert np.linalg.norm(p - o) <= np.linalg.norm(p - others, axis=1).min() + 1e-5
  assert any(not np.allclose(flat(project(params, anchor, 0.1)[n]), flat(params[n])) for n in anchor)
  assert all(np.allclose(flat(project(params, anchor, 10.0)[n]), flat(params[n])) for n in anchor)
