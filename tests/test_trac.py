import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.special

from trainability import trac


def test_erfi_matches_scipy_over_the_range_the_tuner_uses():
  x = np.array([0.0, 1e-4, 0.05, 0.5, 1 / math.sqrt(2), 1.0, 2.0, 3.5, 5.0, 7.0, 9.0, -0.3,
                -4.0], np.float32)
  ours = np.asarray(jax.jit(trac.erfi)(jnp.asarray(x)))
  np.testing.assert_allclose(ours, scipy.special.erfi(x.astype(np.float64)), rtol=2e-5)
  assert ours[0] == 0.0


def _paper_loop(theta0, grad, lr, steps, betas, s_init, eps):
  """The paper's recursion written out in float64 NumPy: the base iterate
  (SGD) runs on its own, the parameters are theta_ref + S (theta_base - theta_ref)."""
  theta_ref = theta0.copy()
  base = theta0.copy()
  theta = theta0.copy()
  v = np.zeros(len(betas))
  sigma = np.zeros(len(betas))
  betas = np.asarray(betas)
  out = []
  for _ in range(steps):
    g = grad(theta)
    h = float(g @ (base - theta_ref))
    v = betas**2 * v + h**2
    sigma = betas * sigma - h
    s = s_init / scipy.special.erfi(1 / math.sqrt(2)) * scipy.special.erfi(
        sigma / (np.sqrt(2 * v) + eps))
    scale = max(0.0, s.sum())
    base = base - lr * g
    theta = theta_ref + scale * (base - theta_ref)
    out.append((theta.copy(), scale, v.copy(), sigma.copy()))
  return out


@pytest.mark.parametrize("s_init", [1e-8, 0.1])
def test_trac_follows_the_papers_recursion_on_a_hand_computed_case(s_init):
  """A quadratic 0.5 |A theta - b|^2 under SGD: parameters, S, v and sigma step by
  step against the recursion written out independently (absolute form, float64)."""
  a = np.array([[2.0, 0.5], [0.0, 1.0], [1.0, -1.0]])
  b = np.array([1.0, -2.0, 0.5])
  grad = lambda th: a.T @ (a @ th - b)
  theta0 = np.array([0.3, -0.7])
  betas, lr, steps = (0.9, 0.99, 0.999), 0.05, 12
  expected = _paper_loop(theta0, grad, lr, steps, betas, s_init, 1e-8)

  tx = trac.trac(optax.sgd(lr), betas=betas, s_init=s_init)
  params = {"w": jnp.asarray(theta0, jnp.float32)}
  state = tx.init(params)
  loss = lambda p: 0.5 * jnp.sum((jnp.asarray(a, jnp.float32) @ p["w"] - b) ** 2)

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  # S starts at 0: the first update leaves theta at theta_ref; from the
  # second, the tuners have a displacement to measure.
  for t, (theta, scale, v, sigma) in enumerate(expected):
    params, state = step(params, state)
    np.testing.assert_allclose(float(state.scale), scale, rtol=1e-4, atol=1e-12,
                               err_msg=f"S at step {t}")
    np.testing.assert_allclose(np.asarray(state.v), v, rtol=1e-4, atol=1e-12)
    np.testing.assert_allclose(np.asarray(state.sigma), sigma, rtol=1e-4, atol=1e-12)
    np.testing.assert_allclose(np.asarray(params["w"]), theta, rtol=1e-5, atol=1e-6,
                               err_msg=f"theta at step {t}")
  assert expected[0][1] == 0.0 and expected[1][1] > 0.0
  # A consistent descent grows S (20x from 1e-8, 4x from 0.1 in a dozen steps).
  assert expected[-1][1] > 3 * expected[1][1]


def test_trac_scale_shrinks_back_when_the_base_overshoots():
  """On a quadratic where the base step oscillates (lr above 2 / curvature), the
  inner products turn positive and TRAC holds S below the consistent-descent
  growth: the parameters stay near theta_ref instead of diverging."""
  tx = trac.trac(optax.sgd(1.5), s_init=0.1)
  params = {"w": jnp.array([1.0, -1.0])}
  loss = lambda p: jnp.sum(p["w"] ** 2)  # curvature 2: sgd at 1.5 diverges
  state = tx.init(params)
  step = jax.jit(lambda p, s: tx.update(jax.grad(loss)(p), s, p))
  for _ in range(60):
    updates, state = step(params, state)
    params = optax.apply_updates(params, updates)
  assert bool(jnp.all(jnp.isfinite(params["w"])))
  assert float(loss(params)) < 10 * 2.0  # plain sgd at 1.5 would be 4**60 times larger


def test_trac_forwards_extra_args_and_runs_under_vmap():
  inner = optax.chain(optax.adam(1e-2), optax.contrib.reduce_on_plateau(patience=1,
                                                                          factor=0.5))
  tx = trac.trac(inner)
  loss = lambda p, x: jnp.sum((p["w"] - x) ** 2)

  def run(x):
    params = {"w": jnp.zeros(3)}
    state = tx.init(params)

    def body(carry, _):
      params, state = carry
      value, grads = jax.value_and_grad(loss)(params, x)
      updates, state = tx.update(grads, state, params, value=value)
      return (optax.apply_updates(params, updates), state), value

    (params, state), values = jax.lax.scan(body, (params, state), None, length=200)
    return params, state, values

  xs = jnp.array([[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]])
  params, state, values = jax.jit(jax.vmap(run))(xs)
  assert state.scale.shape == (2,)
  # reduce_on_plateau saw the values (its state counts them) and the runs learned.
  plateau = jax.tree.leaves(state.inner, is_leaf=lambda n: hasattr(n, "plateau_count"))
  assert any(hasattr(n, "plateau_count") for n in plateau)
  assert bool(jnp.all(values[:, -1] < 0.5 * values[:, 1]))


def test_trac_refuses_bad_settings_with_one_line():
  with pytest.raises(ValueError, match=r"^betas: \(\) is not accepted; give one or more values "
                                       r"in \(0, 1\]$"):
    trac.trac(optax.sgd(0.1), betas=())
  with pytest.raises(ValueError, match="^betas: .* in \\(0, 1\\]$"):
    trac.trac(optax.sgd(0.1), betas=(0.9, 1.5))
  with pytest.raises(ValueError, match="^s_init: 0.0 is not accepted; give a value > 0$"):
    trac.trac(optax.sgd(0.1), s_init=0.0)
  with pytest.raises(ValueError, match="^eps: -1.0 is not accepted; give a value > 0$"):
    trac.trac(optax.sgd(0.1), eps=-1.0)


def test_trac_imports_nothing_but_jax_and_optax():
  import subprocess
  import sys
  code = ("import sys; import trainability.trac; "
          "bad = [m for m in ('flax', 'sklearn', 'matplotlib', 'orbax') if m in sys.modules]; "
          "print(','.join(bad))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == ""


def test_a_unit_reset_zeroes_tracs_displacement_on_the_replaced_weights():
  from trainability import interventions, optim
  params = {"a": {"kernel": jnp.ones((2, 3))}, "b": {"kernel": jnp.ones((3, 1))}}
  hparams = {k: jnp.float32(v) for k, v in dict(learning_rate=1e-2, b1=0.9, b2=0.999,
                                                eps=1e-8, l2=0.0).items()}
  tx = trac.trac(optim.make_optimizer("adam", hparams, element_counts=True))
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  for _ in range(3):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  touched = {"a": {"kernel": jnp.array([[True, False, False]] * 2)},
             "b": {"kernel": jnp.array([[True], [False], [False]])}}
  reset = interventions.reset_base_optimizer_state("adam", state, params, touched)
  for t, before, after in zip(jax.tree.leaves(touched), jax.tree.leaves(state.displacement),
                              jax.tree.leaves(reset.displacement)):
    assert bool(jnp.all(before != 0))
    np.testing.assert_array_equal(np.asarray(after), np.where(t, 0.0, np.asarray(before)))
  assert float(reset.scale) == float(state.scale)
  # The base Adam state was reset on the same elements (its per-element count).
  counts = jax.tree.leaves(optim.base_state(reset).inner_state[1][0].count)
  assert all(bool(jnp.all(jnp.where(t, c == 0, c == 3))) for t, c in
             zip(jax.tree.leaves(touched), counts))


def test_layer_scale_is_s_for_every_layer_and_none_without_trac():
  params = {"a": {"kernel": jnp.ones((2, 2))}, "b": {"bias": jnp.ones(2)}}
  tx = trac.trac(optax.sgd(0.1))
  state = tx.init(params)
  for _ in range(3):
    updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
    params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(trac.layer_scale(state), [state.scale] * 2)
  assert trac.layer_scale(optax.sgd(0.1).init(params)) is None


def test_trac_with_a_model_reset_alone_is_refused():
  from trainability.config import Config, ConfigError
  with pytest.raises(ConfigError, match="^reset: 'model' with scheduler 'trac' would carry"):
    Config(scheduler="trac", reset="model")
  Config(scheduler="trac", reset="both")
