import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trainability import estimators, models
from trainability.config import Config
from trainability.scheduler import (
    STATIC_ARGS, adam_effective_step, combined_threshold, decide, generic_effective_step,
    noise_curvature_scheduler, window_statistics)

KEY = jax.random.key(0)


def problem(seed=0, batch=16):
  model = models.make_model(Config(width=8, depth=1), (2, 2, 1), 3)
  params, state = model.init(jax.random.key(seed))
  x = jax.random.normal(jax.random.key(seed + 1), (batch, 2, 2, 1))
  y = jax.random.randint(jax.random.key(seed + 2), (batch,), 0, 3)

  def example_loss(p, example):
    xi, yi = example
    logits, _ = model.apply(p, state, xi[None])
    return optax.softmax_cross_entropy_with_integer_labels(logits, yi[None])[0]

  return params, (x, y), example_loss


def mean_loss(example_loss, params, batch):
  return jnp.mean(jax.vmap(example_loss, in_axes=(None, 0))(params, batch))


def run(tx, params, batch, example_loss, steps, **extra):
  state = tx.init(params)

  def body(carry, i):
    params, state = carry
    grads = jax.grad(mean_loss, argnums=1)(example_loss, params, batch)
    updates, state = tx.update(grads, state, params, example_loss=example_loss,
                               batch=batch, task_step=i, **extra)
    return (optax.apply_updates(params, updates), state), None

  (params, state), _ = jax.lax.scan(body, (params, state), jnp.arange(steps))
  return params, state


def test_adam_effective_step_matches_a_hand_computation():
  params = {"a": {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros(2)}, "b": {"kernel": jnp.zeros((3, 1))}}
  layers = estimators.layers_of(params)
  nu = {"a": {"kernel": jnp.array([[1e-4, 4e-4], [9e-4, 16e-4]]), "bias": jnp.array([5.0, 5.0])},
        "b": {"kernel": jnp.full((3, 1), 2.5e-5)}}
  t, b1, b2, eps = 10, 0.9, 0.999, 1e-8
  eta = jnp.array([1e-3, 2e-3])
  alpha, agg = adam_effective_step(layers, nu, t, eta, b1, b2, eps)
  bc1, bc2 = 1 - b1**t, 1 - b2**t
  mean_a = np.mean([1e-4, 4e-4, 9e-4, 16e-4])  # the bias is not a weight: excluded
  expected_a = 1e-3 / (bc1 * (np.sqrt(mean_a / bc2) + eps))
  expected_b = 2e-3 / (bc1 * (np.sqrt(2.5e-5 / bc2) + eps))
  np.testing.assert_allclose(alpha, [expected_a, expected_b], rtol=1e-5)
  np.testing.assert_allclose(agg, [expected_a * bc1, expected_b * bc1], rtol=1e-5)
  elementwise, _ = adam_effective_step(layers, nu, t, eta, b1, b2, eps, elementwise=True)
  values = np.array([1e-4, 4e-4, 9e-4, 16e-4])
  expected = np.mean(1e-3 / (bc1 * (np.sqrt(values / bc2) + eps)))
  np.testing.assert_allclose(elementwise[0], expected, rtol=1e-5)
  zero, _ = adam_effective_step(layers, nu, 0, eta, b1, b2, eps)
  np.testing.assert_array_equal(zero, [0.0, 0.0])


def test_adam_effective_step_with_per_element_counts():
  params = {"a": {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros(2)}, "b": {"kernel": jnp.zeros((3, 1))}}
  layers = estimators.layers_of(params)
  nu = {"a": {"kernel": jnp.array([[1e-4, 4e-4], [9e-4, 16e-4]]), "bias": jnp.array([5.0, 5.0])},
        "b": {"kernel": jnp.full((3, 1), 2.5e-5)}}
  eta, b1, b2, eps = jnp.array([1e-3, 2e-3]), 0.9, 0.999, 1e-8
  counts = lambda t: jax.tree.map(lambda v: jnp.full(v.shape, t, jnp.int32), nu)
  for elementwise in (False, True):  # equal counts: the shared-count values
    ours = adam_effective_step(layers, nu, counts(10), eta, b1, b2, eps, elementwise)
    shared = adam_effective_step(layers, nu, 10, eta, b1, b2, eps, elementwise)
    np.testing.assert_allclose(ours, shared, rtol=1e-5)
  np.testing.assert_array_equal(adam_effective_step(layers, nu, counts(0), eta, b1, b2, eps)[0],
                                [0.0, 0.0])
  # Two reset elements (count 0) take no step; the others are corrected by their own count.
  mixed = counts(10)
  mixed["a"]["kernel"] = jnp.array([[0, 0], [10, 10]], jnp.int32)
  alpha, _ = adam_effective_step(layers, nu, mixed, eta, b1, b2, eps, elementwise=True)
  values, bc1, bc2 = np.array([9e-4, 16e-4]), 1 - b1**10, 1 - b2**10
  expected = np.sum(1e-3 / (bc1 * (np.sqrt(values / bc2) + eps))) / 4
  np.testing.assert_allclose(alpha[0], expected, rtol=1e-5)


def test_generic_effective_step_of_plain_sgd_is_its_learning_rate():
  params = {"a": {"kernel": jnp.ones((2, 2))}, "b": {"kernel": jnp.ones((2,))[:, None]}}
  layers = estimators.layers_of(params)
  grads = {"a": {"kernel": jnp.array([[1.0, 2.0], [3.0, 4.0]])}, "b": {"kernel": jnp.zeros((2, 1))}}
  updates = jax.tree.map(lambda g: -0.05 * g, grads)
  np.testing.assert_allclose(generic_effective_step(layers, grads, updates), [0.05, 0.0])


def test_window_statistics_windowed_and_instantaneous_with_wrap_around():
  values = jnp.array([[1.0], [3.0], [5.0], [0.0]])  # W = 4, 3 filled
  stats = window_statistics(values, 3, 2, "windowed")
  np.testing.assert_allclose([stats.mu[0], stats.s2[0], stats.vol[0]], [3.0, 8 / 3, 8 / 9])
  inst = window_statistics(values, 3, 2, "instantaneous")
  np.testing.assert_allclose([inst.s2[0], inst.vol[0]], [4.0, 4 / 3])
  wrapped = jnp.array([[7.0], [3.0], [5.0], [1.0]])  # full; newest written at row 0
  np.testing.assert_allclose(window_statistics(wrapped, 4, 0, "instantaneous").s2, [9.0])
  single = window_statistics(values, 1, 0)
  np.testing.assert_array_equal([single.s2[0], single.vol[0]], [0.0, 0.0])
  flat = window_statistics(jnp.zeros((4, 2)), 4, 1)
  np.testing.assert_array_equal(flat.vol, [0.0, 0.0])  # no curvature: no volatility


def test_combined_threshold():
  noise = estimators.GradientNoise(jnp.array([2.0, 0.0]), jnp.array([4.0, 0.0]), 8)
  out = combined_threshold(noise, jnp.array([0.5, 0.0]), beta=2.0, kappa=4.0)
  np.testing.assert_allclose(out.alpha_g[0], 8 * 2 / 4)
  np.testing.assert_allclose(out.alpha_vol[0], 1 / (4 * 0.5))
  np.testing.assert_allclose(out.alpha_tilde[0], 8 * 2 / (4 + 2 * 2 * 0.5))
  assert bool(jnp.all(jnp.isfinite(jnp.stack(out))))  # the dead layer: unbounded, finite
  assert out.alpha_tilde[1] == np.float32(estimators.UNBOUNDED)


@pytest.mark.parametrize("alpha, floor, in_window, ready, cool, warm", [
    (1.0, 0.0, False, True, True, False),     # above safety * threshold: cools
    (1.0, 2.0, False, True, False, False),    # ... unless at or below the floor
    (0.5, 0.0, True, True, False, False),     # between the bands: nothing
    (0.1, 0.0, True, True, False, True),      # far below, early in the task: warms
    (0.1, 0.0, False, True, False, False),    # ... not outside the warm window
    (1.0, 0.0, False, False, False, False),   # window not ready: nothing fires
])
def test_cool_warm_rule(alpha, floor, in_window, ready, cool, warm):
  # threshold 1.0, safety 0.8: cool above 0.8, warm below 0.24.
  d = decide(jnp.array([alpha]), jnp.array([1.0]), 0.8, floor, jnp.bool_(in_window),
             ready=jnp.bool_(ready))
  assert (bool(d.cool[0]), bool(d.warm[0])) == (cool, warm)


def test_never_firing_equals_the_inner_optimizer_exactly():
  params, batch, example_loss = problem()
  inner = optax.adam(1e-2)
  tx = noise_curvature_scheduler(inner, check_every=3, safety=1e30, warm_fraction=0.0,
                                 learning_rate=1e-2)
  # Op by op (no XLA fusion, which may round a fused expression differently):
  # every update, check steps included, is the inner optimizer's bit for bit.
  with jax.disable_jit():
    state = tx.init(params)
    p = params
    for i in range(7):
      grads = jax.grad(mean_loss, argnums=1)(example_loss, p, batch)
      expected, _ = inner.update(grads, state.inner, p)
      updates, state = tx.update(grads, state, p, example_loss=example_loss, batch=batch,
                                 task_step=i)
      for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(a, b)
      p = optax.apply_updates(p, updates)
  assert int(state.checks) == 2 and int(state.last.step) == 6  # checks at 3 and 6
  np.testing.assert_array_equal(state.multiplier, np.ones(2))
  assert float(state.last.lam.max()) > 0 and float(state.last.sigma2.min()) > 0
  # Compiled, over a longer run: the same trajectory up to float32 rounding.
  scheduled, _ = jax.jit(lambda q: run(tx, q, batch, example_loss, 23))(params)
  plain, _ = jax.jit(lambda q: run(inner, q, batch, example_loss, 23))(params)
  for a, b in zip(jax.tree.leaves(scheduled), jax.tree.leaves(plain)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_it_cools_every_check_when_the_threshold_is_tiny():
  params, batch, example_loss = problem()
  tx = noise_curvature_scheduler(optax.adam(1e-2), check_every=4, safety=1e-12,
                                 learning_rate=1e-2)
  _, state = jax.jit(lambda p: run(tx, p, batch, example_loss, 20))(params)
  # 5 checks; the first only fills the window (one value: not ready).
  np.testing.assert_allclose(state.multiplier, [0.99**4] * 2, rtol=1e-6)
  last = state.last
  assert bool(jnp.all(last.cooled)) and not bool(jnp.any(last.warmed))
  # `alpha` is reported after the decision; `crossed` compares the step before it.
  np.testing.assert_array_equal(last.crossed, last.alpha / 0.99 > last.alpha_tilde)


def test_warms_only_in_the_warm_window():
  params, batch, example_loss = problem()
  make = lambda fraction: noise_curvature_scheduler(
      optax.sgd(1e-6), check_every=2, safety=1e6, steps_per_task=100, warm_fraction=fraction,
      effective_step="sgd", learning_rate=1e-6)
  _, early = jax.jit(lambda p: run(make(0.3), p, batch, example_loss, 20))(params)
  # Checks at task steps 1, 3, ..., 19; the first only fills the window.
  np.testing.assert_allclose(early.multiplier, [1.01**9] * 2, rtol=1e-5)
  _, late = jax.jit(lambda p: run(make(0.05), p, batch, example_loss, 20))(params)
  np.testing.assert_allclose(late.multiplier, [1.01] * 2, rtol=1e-5)  # task step 3 < 5 only


def test_vmap_over_seeds_keeps_each_seed_its_own_multipliers_and_checks_on_schedule():
  params, batch, example_loss = problem()
  tx = noise_curvature_scheduler(optax.adam(1e-2), check_every=3, safety=0.8, beta=1.0,
                                 learning_rate=1e-2)
  keys = jax.random.split(KEY, 3)
  seeds = jax.vmap(lambda k: jax.tree.map(
      lambda p: p + 0.5 * jax.random.normal(k, p.shape), params))(keys)

  def one(p):
    state = tx.init(p)

    def body(carry, i):
      p, state = carry
      grads = jax.grad(mean_loss, argnums=1)(example_loss, p, batch)
      updates, state = tx.update(grads, state, p, example_loss=example_loss, batch=batch,
                                 task_step=i, step=i)
      return (optax.apply_updates(p, updates), state), None

    return jax.lax.scan(body, (p, state), jnp.arange(12))[0]

  out_params, states = jax.jit(jax.vmap(one))(seeds)
  np.testing.assert_array_equal(states.checks, [4, 4, 4])
  for leaf in jax.tree.leaves((out_params, states.last)):
    assert bool(jnp.all(jnp.isfinite(leaf)))
  single_params, single_state = jax.jit(one)(jax.tree.map(lambda a: a[1], seeds))
  np.testing.assert_allclose(states.last.alpha_tilde[1], single_state.last.alpha_tilde, rtol=1e-4)
  assert not np.allclose(states.last.lam[0], states.last.lam[1])


def test_chain_and_inject_hyperparams():
  params, batch, example_loss = problem()
  chained = optax.chain(optax.clip_by_global_norm(1.0),
                        noise_curvature_scheduler(optax.adam(1e-2), check_every=2,
                                                  learning_rate=1e-2))
  out, _ = jax.jit(lambda p: run(chained, p, batch, example_loss, 6))(params)
  assert all(bool(jnp.all(jnp.isfinite(l))) for l in jax.tree.leaves(out))
  injected = optax.inject_hyperparams(noise_curvature_scheduler, static_args=STATIC_ARGS)(
      inner=optax.inject_hyperparams(optax.adam)(learning_rate=1e-2), check_every=2,
      safety=1e-12)
  _, state = jax.jit(lambda p: run(injected, p, batch, example_loss, 6))(params)
  assert float(state.hyperparams["safety"]) == pytest.approx(1e-12)
  np.testing.assert_allclose(state.inner_state.multiplier, [0.99**2] * 2, rtol=1e-6)


def test_zero_gradients_give_no_nan():
  params, batch, _ = problem()
  dead_loss = lambda p, example: 0.0 * jnp.sum(p["output"]["bias"])
  tx = noise_curvature_scheduler(optax.adam(1e-2), check_every=1, learning_rate=1e-2)
  out, state = jax.jit(lambda p: run(tx, p, batch, dead_loss, 5))(params)
  for leaf in jax.tree.leaves((out, state.last, state.multiplier, state.eigenvectors)):
    assert bool(jnp.all(jnp.isfinite(leaf)))
  np.testing.assert_array_equal(state.multiplier, [1.0, 1.0])


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="^variance: 'ema' is not accepted"):
    noise_curvature_scheduler(optax.adam(1e-3), variance="ema")
  with pytest.raises(ValueError, match="^effective_step: 'rms' is not accepted"):
    noise_curvature_scheduler(optax.adam(1e-3), effective_step="rms")
  with pytest.raises(ValueError, match="^check_every: 0 is not accepted"):
    noise_curvature_scheduler(optax.adam(1e-3), check_every=0)
  params, batch, example_loss = problem()
  tx = noise_curvature_scheduler(optax.adam(1e-3), check_every=1)
  with pytest.raises(ValueError, match="^learning_rate: effective_step 'adam' needs"):
    run(tx, params, batch, example_loss, 1)


def test_precomputed_gradient_noise_is_used_on_checks():
  params, batch, example_loss = problem()
  tx = noise_curvature_scheduler(optax.adam(1e-2), check_every=2, learning_rate=1e-2)
  fixed = estimators.GradientNoise(jnp.array([2.0, 3.0]), jnp.array([8.0, 6.0]), 16)
  _, state = jax.jit(lambda p: run(tx, p, batch, example_loss, 4,
                                   gradient_noise=lambda p, g: fixed))(params)
  np.testing.assert_array_equal(state.last.sigma2, [8.0, 6.0])
  np.testing.assert_allclose(state.last.alpha_g, [16 * 2 / 8, 16 * 3 / 6])
