import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from trainability import models
from trainability.config import Config
from trainability.models import ACTIVATIONS

KEY = jax.random.key(0)


def build(input_shape=(8, 8, 1), **changes):
  config = Config(**{"width": 32, "depth": 2, **changes})
  model = models.make_model(config, input_shape, 10)
  params, state = model.init(KEY)
  return model, params, state


def test_mlp_layers_are_top_level_keys_with_expected_shapes():
  model, params, state = build()
  assert list(params) == ["hidden_0", "hidden_1", "output"]
  assert params["hidden_0"]["dense"]["kernel"].shape == (64, 32)
  assert params["hidden_1"]["dense"]["kernel"].shape == (32, 32)
  assert params["output"]["kernel"].shape == (32, 10)
  assert state == {}
  logits, _ = model.apply(params, state, jnp.ones((5, 8, 8, 1)))
  assert logits.shape == (5, 10)


def test_crelu_doubles_the_output_width_and_the_next_fan_in():
  model, params, _ = build(activation="crelu")
  assert params["hidden_0"]["dense"]["kernel"].shape == (64, 32)
  assert params["hidden_1"]["dense"]["kernel"].shape == (64, 32)
  assert params["output"]["kernel"].shape == (64, 10)
  h = jnp.array([[-2.0, 0.5, 3.0]])
  np.testing.assert_array_equal(models.activation_fn("crelu")(h),
                                [[0.0, 0.5, 3.0, 2.0, 0.0, 0.0]])


def test_fourier_features_are_sin_and_cos_and_double_the_width():
  model, params, _ = build(activation="fourier")
  assert params["hidden_1"]["dense"]["kernel"].shape == (64, 32)
  assert model.copies == 2 and models.activation_copies("relu") == 1
  h = jnp.array([[0.0, jnp.pi / 2]])
  np.testing.assert_allclose(models.activation_fn("fourier")(h), [[0.0, 1.0, 1.0, 0.0]],
                             atol=1e-7)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_activation_runs_and_is_finite(activation):
  model, params, state = build(activation=activation)
  logits, _ = model.apply(params, state, jax.random.normal(KEY, (4, 8, 8, 1)))
  assert logits.shape == (4, 10) and bool(jnp.all(jnp.isfinite(logits)))


@pytest.mark.parametrize("init, activation, slope, gain", [
    ("kaiming", "relu", 0.01, 2.0),
    ("kaiming", "crelu", 0.01, 2.0),
    ("kaiming", "leaky_relu", 0.3, 2.0 / 1.09),
    ("kaiming", "tanh", 0.01, 25.0 / 9.0),
    ("kaiming", "identity", 0.01, 1.0),
    ("lecun", "relu", 0.01, 1.0),
    ("mirrored_lecun", "tanh", 0.01, 1.0),
])
def test_init_scales(init, activation, slope, gain):
  config = Config(width=512, depth=2, init=init, activation=activation, leaky_slope=slope)
  params, _ = models.make_model(config, (20, 20, 1), 10).init(KEY)
  fan_in = params["hidden_1"]["dense"]["kernel"].shape[0]
  std = float(jnp.std(params["hidden_1"]["dense"]["kernel"]))
  assert abs(std / np.sqrt(gain / fan_in) - 1) < 0.03
  out_fan_in = params["output"]["kernel"].shape[0]
  assert abs(float(jnp.std(params["output"]["kernel"])) * np.sqrt(out_fan_in) - 1) < 0.1
  assert float(jnp.abs(params["hidden_0"]["dense"]["bias"]).max()) == 0.0


@pytest.mark.parametrize("activation", ["relu", "crelu"])
def test_kaiming_uniform_is_torchs_kaiming_uniform_on_every_layer(activation):
  """The reference code's init: U(-b, b), b = sqrt(6 / fan_in) (relu gain), on the
  hidden and the output kernels alike; biases 0."""
  config = Config(width=512, depth=2, init="kaiming_uniform", activation=activation)
  params, _ = models.make_model(config, (20, 20, 1), 10).init(KEY)
  kernels = [params["hidden_0"]["dense"]["kernel"], params["hidden_1"]["dense"]["kernel"],
             params["output"]["kernel"]]
  for kernel in kernels:
    bound = np.sqrt(6.0 / kernel.shape[0])
    assert float(jnp.abs(kernel).max()) <= bound
    assert float(jnp.abs(kernel).max()) > 0.99 * bound  # uniform: it reaches the bound
    assert abs(float(jnp.var(kernel)) / (bound**2 / 3) - 1) < 0.1
  assert float(jnp.abs(params["output"]["bias"]).max()) == 0.0


def test_identity_activation_gives_a_deep_linear_network():
  model, params, state = build(activation="identity", depth=3)
  params = jax.tree.map(lambda p: p if p.ndim > 1 else jnp.zeros_like(p), params)
  x = jax.random.normal(KEY, (3, 8, 8, 1))
  a, _ = model.apply(params, state, x)
  b, _ = model.apply(params, state, 2.5 * x)
  np.testing.assert_allclose(2.5 * a, b, rtol=1e-5, atol=1e-5)


def test_layernorm_normalizes_pre_activations():
  model, params, state = build(norm="layernorm", activation="identity", depth=1)
  assert set(params["hidden_0"]) == {"dense", "norm"}
  x = 100.0 * jax.random.normal(KEY, (4, 8, 8, 1))
  h = x.reshape(4, -1) @ params["hidden_0"]["dense"]["kernel"]
  assert float(jnp.std(h)) > 10.0
  # Scale invariance of the normalized block: the logits do not see the input scale.
  a, _ = model.apply(params, state, x)
  b, _ = model.apply(params, state, 3.0 * x)
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_batchnorm_uses_batch_statistics_in_training_and_running_ones_in_eval():
  model, params, state = build(norm="batchnorm")
  assert "batch_stats" in state and set(params["hidden_0"]) == {"dense", "norm"}
  x = 5.0 + jax.random.normal(KEY, (16, 8, 8, 1))
  _, new_state = model.apply(params, state, x, train=True)
  old_mean = state["batch_stats"]["hidden_0"]["norm"]["mean"]
  new_mean = new_state["batch_stats"]["hidden_0"]["norm"]["mean"]
  assert float(jnp.abs(new_mean - old_mean).max()) > 0
  _, same_state = model.apply(params, new_state, x, train=False)
  assert same_state is new_state
  train_logits, _ = model.apply(params, state, x, train=True)
  eval_logits, _ = model.apply(params, state, x, train=False)
  assert float(jnp.abs(train_logits - eval_logits).max()) > 1e-3


@pytest.mark.parametrize("shape, norm", [((8, 8, 1), "none"), ((32, 32, 3), "batchnorm"),
                                         ((28, 28, 1), "layernorm")])
def test_cnn_shapes(shape, norm):
  model, params, state = build(input_shape=shape, model="cnn", channels=(4, 8), norm=norm)
  assert list(params) == ["conv_0", "conv_1", "hidden_0", "output"]
  assert params["conv_1"]["conv"]["kernel"].shape == (3, 3, 4, 8)
  pooled = (shape[0] // 4) * (shape[1] // 4) * 8
  assert params["hidden_0"]["dense"]["kernel"].shape == (pooled, 32)
  logits, _ = model.apply(params, state, jnp.ones((2, *shape)), train=True)
  assert logits.shape == (2, 10)


def test_bad_names_are_refused():
  with pytest.raises(ValueError, match="^activation: 'gelu' is not accepted"):
    models.activation_fn("gelu")
  with pytest.raises(ValueError, match="^init: 'xavier' is not accepted"):
    models.init_variance_gain("xavier", "relu")


def test_conv3x3_equals_a_same_padded_convolution():
  x = jax.random.normal(KEY, (2, 7, 6, 3))
  conv = models.Conv3x3(5)
  params = conv.init(jax.random.key(1), x)
  params = jax.tree.map(lambda p: p + 0.1, params)  # a nonzero bias too
  expected = jax.lax.conv_general_dilated(
      x, params["params"]["kernel"], (1, 1), "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC")) + params["params"]["bias"]
  np.testing.assert_allclose(conv.apply(params, x), expected, rtol=1e-5, atol=1e-5)


def test_max_pool_2x2_equals_flax_max_pool_with_odd_sizes():
  import flax.linen as nn

  x = jax.random.normal(KEY, (2, 7, 9, 3))
  np.testing.assert_array_equal(models.max_pool_2x2(x), nn.max_pool(x, (2, 2), strides=(2, 2)))


@pytest.mark.parametrize("changes, shapes", [
    ({}, {"hidden_0": ((5, 16), (5, 16)), "hidden_1": ((5, 16), (5, 16))}),
    ({"activation": "crelu"}, {"hidden_0": ((5, 16), (5, 32)), "hidden_1": ((5, 16), (5, 32))}),
    ({"norm": "layernorm", "depth": 1}, {"hidden_0": ((5, 16), (5, 16))}),
    ({"model": "cnn", "channels": (4,)}, {"conv_0": ((5, 8, 8, 4), (5, 8, 8, 4)),
                                          "hidden_0": ((5, 16), (5, 16))}),
])
def test_features_are_each_hidden_layers_pre_and_post_activation(changes, shapes):
  config = Config(width=16, **changes)
  model = models.make_model(config, (8, 8, 1), 10)
  params, state = model.init(jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (5, 8, 8, 1))
  feats = model.features(params, state, x)
  assert {k: (f.pre.shape, f.post.shape) for k, f in feats.items()} == shapes
  # Independently: the first layer's pre-activation from its own parameters.
  if config.model == "mlp":
    first = params["hidden_0"]["dense"]
    pre = x.reshape(5, -1) @ first["kernel"] + first["bias"]
    if config.norm == "layernorm":
      pre = (pre - pre.mean(-1, keepdims=True)) / jnp.sqrt(pre.var(-1, keepdims=True) + 1e-6)
      pre = pre * params["hidden_0"]["norm"]["scale"] + params["hidden_0"]["norm"]["bias"]
    np.testing.assert_allclose(feats["hidden_0"].pre, pre, rtol=1e-4, atol=1e-5)
    act = models.activation_fn(config.activation)
    np.testing.assert_allclose(feats["hidden_0"].post, act(pre), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("changes", [dict(activation="tanh", depth=1),
                                     dict(activation="crelu", depth=2),
                                     dict(model="cnn", channels=(4,), activation="softplus")])
def test_mirrored_lecun_pairs_units_so_the_network_is_zero_at_init(changes):
  """Units j and j + m/2 of the last hidden layer: the same incoming weights,
  negated outgoing ones (each activation copy), so f(x; theta_0) = 0 for any
  x; everything else is LeCun normal (variance 1 / fan_in)."""
  model, params, state = build(init="mirrored_lecun", width=64, **changes)
  x = jax.random.normal(jax.random.key(1), (16, 8, 8, 1))
  assert np.abs(np.asarray(model.apply(params, state, x)[0])).max() < 1e-5
  lecun, _, _ = build(init="lecun", width=64, **changes)
  assert np.abs(np.asarray(lecun.apply(lecun.init(KEY)[0], {}, x)[0])).max() > 0.1
  last = [n for n in params if n.startswith("hidden_")][-1]
  kernel = np.asarray(params[last]["dense"]["kernel"])
  np.testing.assert_array_equal(kernel[:, :32], kernel[:, 32:])
  out = np.asarray(params["output"]["kernel"])
  copies = out.shape[0] // 64
  rows = out.reshape(copies, 64, 10)
  np.testing.assert_array_equal(rows[:, :32], -rows[:, 32:])
  assert abs(kernel.std() * np.sqrt(kernel.shape[0]) - 1) < 0.1
  assert abs(out.std() * np.sqrt(out.shape[0]) - 1) < 0.1


def test_mirrored_lecun_caps_the_hidden_jacobian_rank_at_half_the_width():
  """At a mirrored init a pair's gradients are negatives of each other, so the
  Jacobian of the logits with respect to the hidden layer (kernel and bias) has
  rank (m/2)(d + 1) where LeCun's has m (d + 1): full row rank n C needs
  m >= 2 n C / (d + 1), the 2n/d of Zhang et al. 2021 for one output."""
  d, m, classes, n = 4, 6, 3, 12  # rows n C = 36 > m (d + 1) = 30 > (m/2)(d + 1) = 15
  x = jax.random.normal(jax.random.key(2), (n, 2, 2, 1))

  def rank(init):
    model = models.make_model(Config(width=m, depth=1, activation="tanh", init=init),
                              (2, 2, 1), classes)
    params, state = model.init(KEY)
    flat, unravel = jax.flatten_util.ravel_pytree(params["hidden_0"])
    logits = lambda v: model.apply({**params, "hidden_0": unravel(v)}, state, x)[0].reshape(-1)
    return np.linalg.matrix_rank(np.asarray(jax.jacrev(logits)(flat), np.float64), tol=1e-5)

  assert d == 2 * 2 * 1
  assert rank("lecun") == m * (d + 1)
  assert rank("mirrored_lecun") == m // 2 * (d + 1)


def test_mirrored_lecun_needs_an_even_last_width():
  with pytest.raises(ValueError, match="init: mirrored_lecun .* even width"):
    Config(init="mirrored_lecun", width=7)
  with pytest.raises(ValueError, match="init: mirrored_lecun"):
    Config(init="mirrored_lecun", depth=0)


@pytest.mark.parametrize("init, width, rank", [("lecun", 8, 200 - 2 * 11), ("lecun", 12, 200),
                                               ("mirrored_lecun", 16, 200 - 2 * 11),
                                               ("mirrored_lecun", 24, 200)])
def test_a_last_hidden_layer_narrower_than_the_classes_leaves_the_jacobian_singular(
    init, width, rank):
  """n = 20 points in d = 20, C = 10 classes, so n C = 200 rows and P >= 258 columns:
  with m < C (m/2 < C mirrored) J's rank is short of n C by (C - m)(n - m - 1),
  computed in float64 (README, "Narrow networks")."""
  with jax.enable_x64(True):
    model = models.make_model(Config(width=width, depth=1, activation="tanh", init=init),
                              (20, 1, 1), 10)
    params, state = model.init(KEY)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    x = jax.random.normal(jax.random.key(3), (20, 20, 1, 1), jnp.float64)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    jacobian = jax.jacrev(lambda v: model.apply(unravel(v), state, x)[0].reshape(-1))(flat)
    assert jacobian.shape[1] >= 200
    assert np.linalg.matrix_rank(np.asarray(jacobian)) == rank
