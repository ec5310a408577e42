"""Each indicator against an independent computation on a case built for it."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trainability.scheduler import DEFAULTS as SIGNAL_DEFAULTS

from trainability import estimators, indicators, units
from trainability.config import ConfigError, indicator_names


def _with_spectrum(singular, shape, seed=0):
  """A matrix of `shape` whose singular values are `singular` (padded with 0)."""
  rng = np.random.default_rng(seed)
  u, _ = np.linalg.qr(rng.normal(size=(shape[0], shape[0])))
  v, _ = np.linalg.qr(rng.normal(size=(shape[1], shape[1])))
  s = np.zeros(shape)
  s[np.arange(len(singular)), np.arange(len(singular))] = singular
  return jnp.asarray(u @ s @ v.T, jnp.float32)


@pytest.mark.parametrize("singular, delta, expected", [
    ([1.0, 1.0, 1.0, 1.0], 0.01, 4),
    ([5.0, 3.0, 2.0], 0.01, 3),
    ([90.0, 9.0, 1.0], 0.01, 2),    # the top two hold exactly 99%
    ([90.0, 9.0, 1.0], 0.2, 1),
    ([1.0] + [0.0] * 5, 0.01, 1),
])
def test_srank_of_known_spectra(singular, delta, expected):
  features = _with_spectrum(singular, (12, 8))
  assert int(indicators.srank(features, delta)) == expected


def test_effective_rank_of_known_spectra():
  assert float(indicators.effective_rank(_with_spectrum([2.0] * 5, (10, 6)))) == \
      pytest.approx(5.0, rel=1e-4)
  s = np.array([3.0, 1.0])
  p = s / s.sum()
  expected = np.exp(-(p * np.log(p)).sum())
  assert float(indicators.effective_rank(_with_spectrum(s, (6, 4)))) == \
      pytest.approx(expected, rel=1e-4)
  assert float(indicators.effective_rank(jnp.zeros((5, 3)))) == 0.0
  assert int(indicators.srank(jnp.zeros((5, 3)))) == 0


def test_feature_indicators_treat_leading_axes_as_examples():
  x = jax.random.normal(jax.random.key(0), (4, 3, 3, 5))
  assert float(indicators.effective_rank(x)) == \
      pytest.approx(float(indicators.effective_rank(x.reshape(36, 5))), rel=1e-5)


def test_unit_sign_entropy_of_hand_made_activations():
  # Unit 0 positive on half the examples (1 bit), unit 1 always positive (0),
  # unit 2 positive on a quarter (H(1/4) = 0.8113 bits), unit 3 never (0).
  pre = jnp.array([[1.0, 2.0, 3.0, -1.0],
                   [-1.0, 1.0, -1.0, 0.0],
                   [2.0, 1.0, -2.0, -3.0],
                   [-2.0, 5.0, -0.5, -1.0]])
  h = -(0.25 * np.log2(0.25) + 0.75 * np.log2(0.75))
  assert float(indicators.unit_sign_entropy(pre)) == pytest.approx((1.0 + h) / 4, rel=1e-5)


def test_dormant_fraction_of_hand_made_activations():
  # Mean |h| per unit: 2, 0, 1, 0.1 -> mean 0.775; scores 2.58, 0, 1.29, 0.129.
  post = jnp.array([[2.0, 0.0, 1.0, 0.1], [2.0, 0.0, 1.0, 0.1]])
  assert float(indicators.dormant_fraction(post, 0.0)) == pytest.approx(0.25)
  assert float(indicators.dormant_fraction(post, 0.13)) == pytest.approx(0.5)
  assert float(indicators.dormant_fraction(post, 1.3)) == pytest.approx(0.75)
  assert float(indicators.dormant_fraction(jnp.zeros((3, 4)), 0.0)) == 1.0


def _layered(seed=0):
  k = jax.random.split(jax.random.key(seed), 4)
  return {"a": {"kernel": jax.random.normal(k[0], (3, 4)), "bias": jax.random.normal(k[1], (4,))},
          "b": {"kernel": jax.random.normal(k[2], (4, 2)), "bias": jax.random.normal(k[3], (2,))}}


def test_norms_and_gradient_to_parameter_ratio_per_layer():
  params, grads = _layered(0), _layered(1)
  layers = estimators.layers_of(params)
  flat = lambda t, name: np.concatenate([np.ravel(x) for x in jax.tree.leaves(t[name])])
  got = indicators.norms(layers, params)
  ratio = indicators.ratio_of_means(layers, grads, params)
  for i, name in enumerate(layers.names):
    assert float(got[i]) == pytest.approx(np.linalg.norm(flat(params, name)), rel=1e-5)
    expected = np.abs(flat(grads, name)).mean() / np.abs(flat(params, name)).mean()
    assert float(ratio[i]) == pytest.approx(expected, rel=1e-5)
  zero = jax.tree.map(jnp.zeros_like, params)
  assert np.all(np.asarray(indicators.ratio_of_means(layers, grads, zero)) == estimators.UNBOUNDED)


def _tiny_net_loss(seed=0, n=12):
  """A small tanh net's mean squared error, and its params."""
  k = jax.random.split(jax.random.key(seed), 4)
  params = {"h": {"kernel": 0.7 * jax.random.normal(k[0], (3, 4)), "bias": jnp.zeros(4)},
            "o": {"kernel": 0.7 * jax.random.normal(k[1], (4, 1)), "bias": jnp.zeros(1)}}
  x, y = jax.random.normal(k[2], (n, 3)), jax.random.normal(k[3], (n, 1))

  def example_loss(p, example):
    xi, yi = example
    out = jnp.tanh(xi @ p["h"]["kernel"] + p["h"]["bias"]) @ p["o"]["kernel"] + p["o"]["bias"]
    return jnp.sum((out - yi) ** 2)

  loss = lambda p: jnp.mean(jax.vmap(example_loss, in_axes=(None, 0))(p, (x, y)))
  return loss, example_loss, params, (x, y)


def _dense_eigenvalues(loss, params):
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  return np.linalg.eigvalsh(np.asarray(jax.hessian(lambda v: loss(unravel(v)))(flat)))


def test_sharpness_matches_the_dense_hessian():
  loss, _, params, _ = _tiny_net_loss()
  eig = _dense_eigenvalues(loss, params)
  top = eig[np.argmax(np.abs(eig))]
  start = jax.tree.map(jnp.ones_like, params)
  got = jax.jit(lambda p, s: indicators.sharpness(loss, p, s, 300, method="power").values)(
      params, start)
  assert got.shape == (1,)
  assert float(got[0]) == pytest.approx(top, rel=1e-3)
  lanczos = jax.jit(lambda p, s: indicators.sharpness(loss, p, s, 40, tol=0.0).values)(
      params, start)
  assert float(lanczos[0]) == pytest.approx(eig.max(), rel=1e-3)


def test_lanczos_top_eigenvalues_match_the_dense_hessian():
  loss, _, params, _ = _tiny_net_loss()
  eig = np.sort(_dense_eigenvalues(loss, params))[::-1]
  d = eig.size  # 21 parameters: d Lanczos steps are exact
  got = jax.jit(lambda p: indicators.top_eigenvalues(loss, p, 3, d, jax.random.key(1)))(params)
  np.testing.assert_allclose(np.asarray(got), eig[:3], rtol=1e-3, atol=1e-4)
  few = indicators.top_eigenvalues(loss, params, 1, 10, jax.random.key(1))
  assert float(few[0]) == pytest.approx(eig[0], rel=1e-2)  # extreme values converge first
  with pytest.raises(ValueError, match="k: 5 is not accepted"):
    indicators.top_eigenvalues(loss, params, 5, 4, jax.random.key(1))


def test_hutchinson_trace_is_exact_for_a_diagonal_hessian_and_close_otherwise():
  scale = {"a": jnp.array([1.0, 2.0, 3.0]), "b": jnp.array([[0.5, -4.0]])}
  quadratic = lambda p: 0.5 * sum(jnp.sum(s * x**2) for s, x in
                                  zip(jax.tree.leaves(scale), jax.tree.leaves(p)))
  params = jax.tree.map(jnp.ones_like, scale)
  layers = estimators.layers_of(params)
  trace = indicators.hessian_trace(quadratic, params, layers, 1, jax.random.key(0))
  np.testing.assert_allclose(np.asarray(trace.per_layer), [6.0, -3.5], rtol=1e-6)
  assert float(trace.total) == pytest.approx(2.5)
  loss, _, params, _ = _tiny_net_loss()
  exact = _dense_eigenvalues(loss, params).sum()
  estimate = indicators.hessian_trace(loss, params, estimators.layers_of(params), 4000,
                                      jax.random.key(2))
  assert float(estimate.total) == pytest.approx(exact, rel=0.05)
  assert float(estimate.total) == pytest.approx(float(estimate.per_layer.sum()), rel=1e-5)


def _low_rank_regression(rank, n=16, d=8, seed=0):
  """Least squares whose inputs span `rank` orthonormal directions, equal residuals."""
  rng = np.random.default_rng(seed)
  basis, _ = np.linalg.qr(rng.normal(size=(d, d)))
  x = np.stack([basis[:, i % rank] for i in range(n)]).astype(np.float32)
  w = np.zeros(d, np.float32)
  y = -np.ones(n, np.float32)  # residual w.x - y = 1 for every example

  def example_loss(p, example):
    xi, yi = example
    return 0.5 * (jnp.dot(p["w"], xi) - yi) ** 2

  loss = lambda p: jnp.mean(jax.vmap(example_loss, in_axes=(None, 0))(p, (x, y)))
  return loss, example_loss, {"w": jnp.asarray(w)}, (jnp.asarray(x), jnp.asarray(y))


@pytest.mark.parametrize("rank", [1, 3, 5])
def test_hessian_rank_proxy_and_exact_rank_on_a_problem_of_known_rank(rank):
  loss, example_loss, params, batch = _low_rank_regression(rank)
  grads = estimators.per_example_gradients(example_loss, params, batch)  # (16, 8)
  assert float(indicators.hessian_rank_proxy(grads)) == pytest.approx(rank / 16)
  assert float(indicators.hessian_rank_proxy(grads["w"])) == pytest.approx(rank / 16)
  exact = indicators.exact_hessian_rank(loss, params)
  assert int(exact.numerical) == rank and exact.size == 8
  assert float(exact.fraction) == pytest.approx(rank / 8)


def test_indicators_run_under_jit_and_vmap_over_seeds():
  loss, example_loss, params, batch = _tiny_net_loss()
  layers = estimators.layers_of(params)

  def all_of(key):
    p = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(key, x.shape), params)
    h = jnp.tanh(batch[0] @ p["h"]["kernel"])
    grads = estimators.per_example_gradients(example_loss, p, batch)
    return jnp.concatenate([
        jnp.stack([indicators.unit_sign_entropy(h), indicators.dormant_fraction(h, 0.1),
                   indicators.srank(h).astype(jnp.float32), indicators.effective_rank(h),
                   indicators.hessian_rank_proxy(grads)]),
        indicators.norms(layers, p), indicators.ratio_of_means(layers, p, p),
        indicators.sharpness(loss, p, p, 3).values,
        indicators.top_eigenvalues(loss, p, 2, 5, key),
        indicators.hessian_trace(loss, p, layers, 2, key).per_layer])

  out = jax.jit(jax.vmap(all_of))(jax.random.split(jax.random.key(0), 3))
  assert out.shape == (3, 5 + 2 + 2 + 1 + 2 + 2)
  assert np.all(np.isfinite(np.asarray(out)))


# --- The suite: every indicator of a model at once ----------------------------

def _small_model(**changes):
  from trainability import Config, models
  config = Config(**{"width": 12, "depth": 2, **changes})
  model = models.make_model(config, (8, 8, 1), 10)
  params, state = model.init(jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (24, 8, 8, 1))
  y = jax.random.randint(jax.random.key(2), (24,), 0, 10)

  def example_loss(p, model_state, example):
    xi, yi = example
    logits, _ = model.apply(p, model_state, xi[None])
    return optax.softmax_cross_entropy_with_integer_labels(logits, yi[None])[0]

  return model, example_loss, params, state, (x, y)


def test_suite_columns_and_values_agree_with_the_single_functions():
  model, example_loss, params, state, batch = _small_model()
  suite = indicators.make_suite(model, example_loss, batch[0])
  assert suite.names == indicators.NAMES
  assert suite.labels["weight_norm"] == ("network", "hidden_0", "hidden_1", "output")
  assert suite.labels["srank"] == ("hidden_0", "hidden_1")
  assert suite.labels["alpha_g"] == ("hidden_0", "hidden_1", "output")
  assert suite.labels["top_eigenvalues"] == tuple(f"top_{i}" for i in range(1, 6))
  tx = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
  opt_state = tx.init(params)
  grads = jax.grad(lambda p: jnp.mean(jax.vmap(example_loss, (None, None, 0))(p, state, batch)))(
      params)
  updates, opt_state = tx.update(grads, opt_state, params)
  values, new_state = jax.jit(suite.compute)(suite.init(params, jax.random.key(3)), params,
                                             state, batch, updates=updates, opt_state=opt_state)
  for name in suite.names:
    assert values[name].shape == (len(suite.labels[name]),), name
    assert np.all(np.isfinite(np.asarray(values[name]))), name
  layers = estimators.layers_of(params)
  np.testing.assert_allclose(values["weight_norm"][1:], indicators.norms(layers, params), rtol=1e-6)
  np.testing.assert_allclose(values["update_norm"][1:], indicators.norms(layers, updates),
                             rtol=1e-6)
  total = np.sqrt(sum(float(jnp.sum(g**2)) for g in jax.tree.leaves(grads)))
  assert float(values["gradient_norm"][0]) == pytest.approx(total, rel=1e-5)
  feats = model.features(params, state, batch[0])
  assert float(values["srank"][1]) == float(indicators.srank(feats["hidden_1"].post))
  assert float(values["unit_sign_entropy"][0]) == pytest.approx(
      float(indicators.unit_sign_entropy(feats["hidden_0"].pre)))
  from trainability import scheduler
  step, _ = scheduler.adam_effective_step(layers, opt_state.inner_state[0].nu, 1,
                                          jnp.full((3,), 1e-3), 0.9, 0.999, 1e-8)
  np.testing.assert_allclose(values["effective_step"], step, rtol=1e-6)
  assert int(new_state.signals.checks) == 1


def test_suite_sharpness_converges_to_the_dense_hessian_over_evaluations():
  model, example_loss, params, state, batch = _small_model(width=4, depth=1)
  suite = indicators.make_suite(model, example_loss, batch[0], ["sharpness"],
                                indicators.Options(signals=SIGNAL_DEFAULTS._replace(
                                    curvature="power", curvature_steps=50)))
  s = suite.init(params, jax.random.key(0))
  compute = jax.jit(suite.compute)
  for _ in range(6):  # warm-started: 300 iterations in all
    values, s = compute(s, params, state, batch)
  mean_loss = lambda p: jnp.mean(jax.vmap(example_loss, (None, None, 0))(p, state, batch))
  eig = _dense_eigenvalues(mean_loss, params)
  assert float(values["sharpness"][0]) == pytest.approx(eig[np.argmax(np.abs(eig))], rel=1e-3)


def test_suite_runs_under_vmap_over_seeds_and_one_shot_indicators():
  model, example_loss, params, state, batch = _small_model()
  suite = indicators.make_suite(model, example_loss, batch[0], ["srank", "sharpness", "alpha_g"])

  def one(key):
    p, s = model.init(key)
    return suite.compute(suite.init(p, key), p, s, batch, opt_state=optax.sgd(0.1).init(p))[0]

  out = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(0), 3))
  assert out["srank"].shape == (3, 2) and out["sharpness"].shape == (3, 4)
  assert not np.allclose(out["sharpness"][0], out["sharpness"][1])
  once = indicators.indicators(params, batch, model, example_loss, model_state=state,
                               names=("weight_norm", "dormant_fraction"))
  assert set(once) == {"weight_norm", "dormant_fraction"}
  assert set(once["weight_norm"]) == {"network", "hidden_0", "hidden_1", "output"}


@pytest.mark.parametrize("text, names", [
    ("all", indicators.NAMES), ("none", ()), ("srank,weight_norm", ("weight_norm", "srank"))])
def test_parse_names(text, names):
  assert indicator_names(text) == names


def test_unknown_indicator_is_a_one_line_error():
  with pytest.raises(ConfigError, match="indicators: .sharpnes. is not accepted; choose all"):
    indicator_names("srank,sharpnes")


def test_dense_gram_equals_the_gram_of_per_example_gradients():
  model, example_loss, params, state, batch = _small_model()
  loss_i = lambda p, example: example_loss(p, state, example)
  grads = estimators.per_example_gradients(loss_i, params, batch)
  g = jnp.concatenate([x.reshape(24, -1) for x in jax.tree.leaves(grads)], axis=1)
  gram = estimators.dense_gradient_gram(loss_i, params, batch,
                                        model.dense_inputs(params, state, batch[0]))
  np.testing.assert_allclose(gram, g @ g.T, rtol=1e-4, atol=1e-6)
  assert float(indicators.gram_rank(gram)) == float(indicators.hessian_rank_proxy(grads))


def test_suite_uses_the_dense_paths_and_the_generic_ones_agree():
  """The MLP suite (dense paths) equals the same model's values computed generically."""
  model, example_loss, params, state, batch = _small_model()
  names = ("alpha_g", "hessian_rank")
  generic_model = model._replace(dense_inputs=None)
  values = {}
  for m in (model, generic_model):
    suite = indicators.make_suite(m, example_loss, batch[0], names)
    values[m.dense_inputs is None] = suite.compute(
        suite.init(params, jax.random.key(0)), params, state, batch,
        opt_state=optax.sgd(0.1).init(params))[0]
  for n in names:
    np.testing.assert_allclose(values[False][n], values[True][n], rtol=2e-4)


# --- A narrower net embedded in a wider one (trainability.sweep) ---------------

def _embedded_pair(activation="crelu", narrow_width=6, wide_width=10, steps=2000):
  """A small MLP of `narrow_width` after `steps` Adam steps (minibatches of 24 of
  480 random-label examples), and the same net embedded in one of `wide_width`
  with unit masks: (narrow, wide), each (model, params, model_state,
  opt_state), plus a fresh batch of 24 (not trained on) and the loss."""
  from trainability import Config, models, sweep
  config = Config(width=narrow_width, depth=2, activation=activation)
  models_ = (models.make_model(config, (8, 8, 1), 10),
             models.make_model(config.replace(width=wide_width), (8, 8, 1), 10, unit_masks=True))
  x = jax.random.normal(jax.random.key(1), (480 + 24, 8, 8, 1))
  y = jax.random.randint(jax.random.key(2), (480 + 24,), 0, 10)

  def example_loss(model):
    def loss(p, model_state, example):
      xi, yi = example
      logits, _ = model.apply(p, model_state, xi[None])
      return optax.softmax_cross_entropy_with_integer_labels(logits, yi[None])[0]
    return loss

  narrow = models_[0]
  params, state = narrow.init(jax.random.key(0))
  tx = optax.inject_hyperparams(optax.adam)(learning_rate=1e-2)
  opt_state = tx.init(params)
  loss = example_loss(narrow)

  def step(i, carry):
    params, opt_state = carry
    start = (i * 24) % 480  # 20 minibatches; the last 24 examples stay unseen
    batch = (jax.lax.dynamic_slice_in_dim(x, start, 24),
             jax.lax.dynamic_slice_in_dim(y, start, 24))
    mean = lambda p: jnp.mean(jax.vmap(loss, (None, None, 0))(p, state, batch))
    updates, opt_state = tx.update(jax.grad(mean)(params), opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  # A trained state, not the initialization.
  params, opt_state = jax.jit(lambda c: jax.lax.fori_loop(0, steps, step, c))((params, opt_state))
  wide = models_[1]
  like = jax.eval_shape(lambda: (wide.init(jax.random.key(0))[0],
                                 tx.init(wide.init(jax.random.key(0))[0])))
  lay = lambda tree, like_tree: jax.tree.map(
      lambda a, b: sweep.embed(a[None], jax.ShapeDtypeStruct((1, *b.shape), b.dtype),
                               narrow_width, wide_width)[0], tree, like_tree)
  wide_params, wide_opt = lay((params, opt_state), like)
  wide_state = {models.ACTIVE_UNITS: {
      name: {"units": (jnp.arange(wide_width) < narrow_width).astype(jnp.float32)}
      for name in ("hidden_0", "hidden_1")}}
  return ((narrow, params, state, opt_state), (wide, wide_params, wide_state, wide_opt),
          (x[480:], y[480:]), example_loss, lay)


def test_indicators_of_an_embedded_net_are_the_narrow_nets():
  """Every indicator of a trained net embedded in a wider one (padding units
  masked) is the narrow net's: the means over elements and units, Adam's
  effective step and the Lanczos sharpness (from the same start) count its own
  elements only. With tau 0.5 some units count as dormant; crelu's two copies
  per unit double the next layer's rows, copy-major."""
  fresh = ("hessian_trace", "top_eigenvalues")  # fresh draws: tested below
  names = tuple(n for n in indicators.NAMES if n not in fresh)
  narrow, wide, batch, example_loss, lay = _embedded_pair("crelu")
  out = []
  for (model, params, state, opt_state), start in ((narrow, None), (wide, narrow)):
    suite = indicators.make_suite(model, example_loss(model), batch[0], names,
                                  indicators.Options(tau=0.5))
    suite_state = suite.init(params, jax.random.key(3))
    if start is not None:  # the narrow net's curvature directions, zero-padded
      suite_state = lay(indicators_state_of(start, names, example_loss, batch),
                        jax.eval_shape(lambda: suite_state))
    values, _ = jax.jit(suite.compute)(suite_state, params, state, batch, opt_state=opt_state)
    out.append(values)
  assert float(out[0]["dormant_fraction"].max()) > 0
  for name in names:
    if name != "jacobian_sigma_min":
      np.testing.assert_allclose(out[1][name], out[0][name], rtol=2e-5, atol=1e-7,
                                 err_msg=name)
  # sigma_min comes from a float32 Gram, whose rounding (other summation orders
  # in the wider matmuls) moves it by about eps kappa^2: 0.7% here. In float64
  # the padding's zero Jacobian columns leave it exactly the narrow net's.
  np.testing.assert_allclose(out[1]["jacobian_sigma_min"], out[0]["jacobian_sigma_min"],
                             rtol=2e-2, atol=1e-4)
  with jax.enable_x64(True):
    sigma = []
    for model, params, state, _ in (narrow, wide):
      params, state, x = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64),
                                      (params, state, batch[0][:16]))
      logits_fn = lambda p, inputs, model=model, state=state: model.apply(p, state, inputs)[0]
      sigma.append(indicators.jacobian_sigma_min(logits_fn, params, x,
                                                 estimators.layers_of(params)))
    assert float(sigma[0][0]) > 0.01
    np.testing.assert_allclose(sigma[1], sigma[0], rtol=1e-9, atol=1e-12)


def indicators_state_of(narrow, names, example_loss, batch):
  model, params, _, _ = narrow
  return indicators.make_suite(model, example_loss(model), batch[0], names).init(
      params, jax.random.key(3))


def test_fresh_draw_curvature_of_an_embedded_net_estimates_the_narrow_nets():
  """Hutchinson's trace and Lanczos' top eigenvalues draw new vectors at every
  evaluation: embedded, they estimate the narrow net's Hessian (its padding
  has zero Hessian rows; the Lanczos start is masked onto the real elements)."""
  (model, params, state, _), (wide, wide_params, wide_state, _), batch, example_loss, _ = \
      _embedded_pair("tanh", 4, 7)
  mean = lambda m, s: lambda p: jnp.mean(
      jax.vmap(example_loss(m), (None, None, 0))(p, s, batch))
  loss, wide_loss = mean(model, state), mean(wide, wide_state)
  mask = units.real_elements(wide, wide_params, wide_state)
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  hessian = np.asarray(jax.jit(jax.hessian(lambda v: loss(unravel(v))))(flat), np.float64)
  eig = np.linalg.eigvalsh(hessian)
  top = jax.jit(lambda p: indicators.top_eigenvalues(wide_loss, p, 3, 60, jax.random.key(5),
                                                     mask))(wide_params)
  np.testing.assert_allclose(top, eig[::-1][:3], rtol=1e-3)
  # The Lanczos directions never leave the real elements, whatever the start.
  start = jax.tree.map(jnp.ones_like, wide_params)
  vectors = jax.jit(lambda p, s, m: indicators.sharpness(wide_loss, p, s, mask=m).vectors)(
      wide_params, start, mask)
  for v, m in zip(jax.tree.leaves(vectors), jax.tree.leaves(mask)):
    assert not np.any(np.asarray(v)[np.asarray(m) == 0])
  # Hutchinson: the estimate's mean is the narrow trace, within 4 standard errors.
  samples = 400
  trace = jax.jit(lambda p: indicators.hessian_trace(
      wide_loss, p, estimators.layers_of(p), samples, jax.random.key(6)).total)(wide_params)
  off = hessian - np.diag(np.diag(hessian))
  error = np.sqrt(2 * np.sum(off**2) / samples)
  assert abs(float(trace) - np.trace(hessian)) < 4 * error + 1e-4


# --- Jacobian conditioning -----------------------------------------------------

def test_jacobian_sigma_min_matches_the_svd_of_the_dense_jacobian():
  """sigma_min of the output Jacobian, whole network and per layer, by the dense
  and the generic path, against numpy's SVD of the dense Jacobian (float64) at a
  trained state: in float32 to within eps kappa^2 where sigma_min is above the
  floor (1e-3 sigma_max: the Gram squares the condition number), and to 1e-6 in float64
  (jax_enable_x64). A layer with fewer parameters than rows has sigma_min 0."""
  (model, params, state, _), _, (x, _), _, _ = _embedded_pair("tanh", 12, 16)
  layers = estimators.layers_of(params)
  logits_fn = lambda p, inputs: model.apply(p, state, inputs)[0]
  sizes = {name: jax.flatten_util.ravel_pytree(params[name])[0].size for name in layers.names}
  assert sizes == {"hidden_0": 780, "hidden_1": 156, "output": 130}

  def svd(n):
    """(sigma_min, sigma_max) of the network's and each layer's Jacobian block."""
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    jacobian = np.asarray(jax.jacrev(lambda v: logits_fn(unravel(v), x[:n]).reshape(-1))(flat),
                          np.float64)
    blocks, start = [jacobian], 0
    for name in layers.names:  # ravel_pytree's order: sorted keys
      blocks.append(jacobian[:, start:start + sizes[name]])
      start += sizes[name]
    values = [np.linalg.svd(b, compute_uv=False) for b in blocks]
    # Over J's rows: 0 when there are fewer columns than rows.
    return (np.array([v[-1] if b.shape[1] >= b.shape[0] else 0.0
                      for v, b in zip(values, blocks)]), np.array([v[0] for v in values]))

  def both_paths(p, xs):
    dense = indicators.jacobian_sigma_min(logits_fn, p, xs, layers,
                                          model.dense_inputs(p, state, xs))
    return dense, indicators.jacobian_sigma_min(logits_fn, p, xs, layers)

  # 14 examples: 140 rows, more than the output layer's 130 parameters.
  for n, zero in ((3, [False] * 4), (14, [False, False, False, True])):
    low, high = svd(n)
    assert list(low == 0) == zero
    resolved = low > 1e-3 * high
    # float32 rounding of the Gram moves sigma_min by about eps kappa^2 of itself.
    tolerance = 1e-4 + 5e-7 * (high / np.where(resolved, low, 1.0)) ** 2
    for got in jax.jit(both_paths)(params, x[:n]):
      got = np.asarray(got)
      assert np.all(np.abs(got - low)[resolved] <= (tolerance * low)[resolved]), (got, low)
      assert np.all(got[~resolved] < 1e-3 * high[~resolved])
    with jax.enable_x64(True):
      wide = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
      for got in jax.jit(both_paths)(wide, jnp.asarray(x[:n], jnp.float64)):
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(got), low, rtol=1e-6, atol=1e-7 * high.max())
  assert not resolved.all()  # the float32 floor matters here: a layer below it


def test_suite_records_jacobian_sigma_min_for_the_network_and_each_layer():
  model, example_loss, params, state, batch = _small_model()
  suite = indicators.make_suite(model, example_loss, batch[0], ("jacobian_sigma_min",),
                                indicators.Options(jacobian_examples=4))
  assert suite.labels["jacobian_sigma_min"] == ("network", "hidden_0", "hidden_1", "output")
  values, _ = jax.jit(suite.compute)(suite.init(params, jax.random.key(0)), params, state, batch)
  logits_fn = lambda p, inputs: model.apply(p, state, inputs)[0]
  direct = indicators.jacobian_sigma_min(logits_fn, params, batch[0][:4],
                                         estimators.layers_of(params))
  np.testing.assert_allclose(values["jacobian_sigma_min"], direct, rtol=1e-4)
  # The network's NTK is the sum of the layers': its sigma_min is at least each layer's.
  assert float(values["jacobian_sigma_min"][0]) >= float(values["jacobian_sigma_min"][1:].max())
