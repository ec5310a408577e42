"""The noise-curvature signals: effective steps, window statistics, thresholds, normalisers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trainability import estimators
from trainability.estimators import UNBOUNDED
from trainability.signals import (
    SignalSettings, WindowStatistics, adam_effective_step, combined_threshold,
    generic_effective_step, global_adam_normaliser, window_statistics)


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


def test_masked_adam_means_are_the_narrow_nets():
  """With an element mask, Adam's effective steps (per kernel, elementwise, per-element
  counts) and the global normaliser are those of the marked elements alone: a
  narrow net's moments zero-padded into a wider layer give the narrow values."""
  rng = np.random.default_rng(0)
  narrow = {"a": {"kernel": jnp.asarray(rng.uniform(1e-5, 1e-3, (3, 2)), jnp.float32),
                  "bias": jnp.asarray(rng.uniform(1e-5, 1e-3, 2), jnp.float32)},
            "b": {"kernel": jnp.asarray(rng.uniform(1e-5, 1e-3, (2, 1)), jnp.float32)}}
  pad = lambda x, axis: jnp.pad(x, [(0, 3) if i == axis else (0, 0) for i in range(x.ndim)])
  wide = {"a": {"kernel": pad(narrow["a"]["kernel"], 1), "bias": pad(narrow["a"]["bias"], 0)},
          "b": {"kernel": pad(narrow["b"]["kernel"], 0)}}
  mask = jax.tree.map(lambda w, n: pad(jnp.ones_like(n), w.ndim - 1 if w.shape[-1] != n.shape[-1]
                                       else 0), wide, narrow)
  assert [int(m.sum()) for m in jax.tree.leaves(mask)] == [2, 6, 2]
  eta, b1, b2, eps = jnp.array([1e-3, 2e-3]), 0.9, 0.999, 1e-8
  layers = estimators.layers_of(narrow)
  counts = lambda tree: jax.tree.map(lambda v: jnp.full(v.shape, 7, jnp.int32), tree)
  for count in ((7, 7), (counts(narrow), counts(wide))):
    for elementwise in (False, True):
      expected = adam_effective_step(layers, narrow, count[0], eta, b1, b2, eps, elementwise)
      got = jax.jit(lambda nu, t, m, e=elementwise: adam_effective_step(
          layers, nu, t, eta, b1, b2, eps, e, m))(wide, count[1], mask)
      np.testing.assert_allclose(got, expected, rtol=1e-6)
      unmasked = adam_effective_step(layers, wide, count[1], eta, b1, b2, eps, elementwise)
      assert not np.allclose(unmasked[0], expected[0], rtol=1e-3)  # the padding would count
  np.testing.assert_allclose(global_adam_normaliser(wide, 7, 1e-3, 1e-8, mask),
                             global_adam_normaliser(narrow, 7, 1e-3, 1e-8), rtol=1e-6)


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
  stats = WindowStatistics(mu=jnp.array([1.0, 0.0]), s2=jnp.array([0.5, 0.0]),
                           vol=jnp.array([0.5, 0.0]))
  settings = SignalSettings(threshold="paper", beta=2.0, kappa=4.0)
  out = combined_threshold(noise, stats, jnp.array([1.5, 0.0]), jnp.array([0.1, 0.1]), settings)
  np.testing.assert_allclose(out.alpha_g[0], 8 * 2 / 4)
  np.testing.assert_allclose(out.alpha_vol[0], 1 / (4 * 0.5))
  np.testing.assert_allclose(out.alpha_tilde[0], 8 * 2 / (4 + 2 * 2 * 0.5))
  assert bool(jnp.all(jnp.isfinite(jnp.stack(out))))  # the dead layer: unbounded, finite
  assert float(out.alpha_tilde[1]) == pytest.approx(UNBOUNDED)


@pytest.mark.parametrize("param, expected", [
    # B g2 = 16, sigma2 = 4, g2 = 2; value x = 1.5, mu = 1.0, s2 = D = 0.5
    ("sqm10", 16 / (4 + 20 * 2 * (1.5**2 / 1.0) ** 2)),
    ("sqm1", 16 / (4 + 75 * 2 * (1.5**2 / 1.0) ** 2)),
    ("rqm1", 16 / (4 + 75 * 2 * (1.5**2 / 1.0) ** 2)),
    ("svar10", 16 / (4 + 20 * 2 * 0.5)),
    ("rvar1", 16 / (4 + 10 * 2 * 0.5)),
    ("scv1", 16 / (4 + 10 * 2 * 0.5 / (1.0 + 1e-12))),
    ("ss10", 16 / (4 + 20 * 2 * 1.5)),
    ("rs1", 16 / (4 + 10 * 2 * 1.5)),
    ("s_tau", 2 * 1.0 / (0.5 + 1.0 + 1e-12)),
    ("r_tau", 2 * 1.0 / (0.5 + 1.0 + 1e-12)),
])
def test_reference_thresholds_match_the_reference_formulas(param, expected):
  noise = estimators.GradientNoise(jnp.array([2.0]), jnp.array([4.0]), 8)
  stats = WindowStatistics(mu=jnp.array([1.0]), s2=jnp.array([0.5]), vol=jnp.array([0.5]))
  settings = SignalSettings(threshold="reference", reference_param=param)
  out = combined_threshold(noise, stats, jnp.array([1.5]), jnp.array([0.1]), settings)
  np.testing.assert_allclose(out.alpha_tilde[0], expected, rtol=1e-6)


def test_stability_threshold_is_the_step_at_the_noise_scaled_edge():
  # a = alpha*_g = B g2 / sigma2; curvature = mu + sqrt((1 - delta) / delta) sqrt(s2)
  noise = estimators.GradientNoise(jnp.array([2.0, 2.0, 0.0]), jnp.array([4.0, 0.0, 0.0]), 8)
  stats = WindowStatistics(mu=jnp.array([1.0, 1.0, 1.0]), s2=jnp.array([0.25, 0.25, 0.25]),
                           vol=jnp.array([0.25, 0.25, 0.25]))
  step = jnp.array([0.1, 0.1, 0.1])
  settings = SignalSettings(threshold="stability", delta=0.2)
  out = combined_threshold(noise, stats, jnp.ones(3), step, settings)
  curvature, a = 1.0 + 2.0 * 0.5, 16 / 4
  np.testing.assert_allclose(out.alpha_tilde[0], 2 * a / (1 + a) / curvature, rtol=1e-6)
  np.testing.assert_allclose(out.alpha_tilde[1], 2 / curvature, rtol=1e-6)  # no noise: 2 / L
  assert float(out.alpha_tilde[2]) == pytest.approx(UNBOUNDED)  # no gradient: no bound
  # crossing the threshold is the same as step * curvature exceeding 2 a / (1 + a)
  for s in (0.1, 0.5, 0.9):
    assert bool(s > out.alpha_tilde[0]) == (s * curvature > 2 * a / (1 + a))


def test_reference_qm_term_vanishes_without_positive_mean_curvature():
  noise = estimators.GradientNoise(jnp.array([2.0]), jnp.array([4.0]), 8)
  stats = WindowStatistics(mu=jnp.array([-0.5]), s2=jnp.array([0.5]), vol=jnp.array([0.0]))
  out = combined_threshold(noise, stats, jnp.array([1.5]), jnp.array([0.1]),
                           SignalSettings(threshold="reference", reference_param="sqm10"))
  np.testing.assert_allclose(out.alpha_tilde, [16 / 4])


def test_reference_signal_is_normalised_globally_or_raw():
  from trainability.scheduler import curvature_signal, layer_step, normaliser_of
  lam, agg, step = jnp.array([2.0, -1.0]), jnp.array([0.1, 0.1]), jnp.array([0.3, 0.3])
  s_param = SignalSettings(threshold="reference", reference_param="sqm10").resolved()
  r_param = SignalSettings(threshold="reference", reference_param="rqm10").resolved()
  np.testing.assert_allclose(curvature_signal(s_param, lam, agg, step), [0.2, -0.1])  # signed
  np.testing.assert_allclose(curvature_signal(r_param, lam, agg, step), [2.0, -1.0])
  np.testing.assert_allclose(
      curvature_signal(SignalSettings(threshold="paper").resolved(), lam, agg, step), [0.2, 0.0])
  np.testing.assert_allclose(curvature_signal(
      SignalSettings(threshold="stability").resolved(), lam, agg, step), [2.0, 0.0])
  assert normaliser_of(s_param) == "global"
  assert normaliser_of(SignalSettings(threshold="paper")) == "layer"
  # layer_step with the global normaliser: one value for every layer, the first layer's rate.
  params = {"a": {"kernel": jnp.ones((2, 2))}, "b": {"kernel": jnp.ones((3, 1))}}
  layers = estimators.layers_of(params)
  tx = optax.adam(1e-3)
  state = tx.init(params)
  grads = jax.tree.map(lambda p: p * jnp.arange(p.size).reshape(p.shape), params)
  _, state = tx.update(grads, state, params)
  multiplier = jnp.array([0.5, 2.0])
  _, agg = layer_step("adam", layers, state, 1, multiplier, grads, grads, 1e-3,
                      normaliser="global")
  nu = np.concatenate([np.ravel(v) for v in jax.tree.leaves(state[0].nu)])
  np.testing.assert_allclose(agg, [0.5e-3 / (np.sqrt(nu.mean() + 1e-16) + 1e-8)] * 2, rtol=1e-5)


def test_global_adam_normaliser_is_the_reference_codes():
  nu = {"a": {"kernel": jnp.array([[1e-4, 4e-4]]), "bias": jnp.array([2e-4])},
        "b": {"kernel": jnp.array([[3e-4]])}}
  got = global_adam_normaliser(nu, jnp.int32(5), 1e-3, 1e-8)
  expected = 1e-3 / (np.sqrt(np.mean([1e-4, 4e-4, 2e-4, 3e-4]) + 1e-16) + 1e-8)
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  assert float(global_adam_normaliser(nu, jnp.int32(0), 1e-3, 1e-8)) == pytest.approx(1e-3)
  # per-element counts (unit resets), jitted: started once any element has a step
  counts = jax.tree.map(lambda v: jnp.zeros(v.shape, jnp.int32), nu)
  run = jax.jit(global_adam_normaliser)
  assert float(run(nu, counts, 1e-3, 1e-8)) == pytest.approx(1e-3)
  counts["b"]["kernel"] = jnp.ones((1, 1), jnp.int32)
  np.testing.assert_allclose(run(nu, counts, 1e-3, 1e-8), expected, rtol=1e-6)
