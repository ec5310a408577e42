"""Optimizers: injectable hyperparameters and the coupled L2 penalty."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trainability import Config, optim
from trainability.config import ConfigError

PARAMS = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([0.25, -1.0])}
GRADS = {"w": jnp.array([[0.1, 0.2], [-0.3, 0.05]]), "b": jnp.array([-0.2, 0.4])}


def _updates(tx, grads=GRADS, steps=3):
  state, params, out = tx.init(PARAMS), PARAMS, []
  for _ in range(steps):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    out.append(updates)
  return out


@pytest.mark.parametrize("name, plain", [
    ("adam", lambda: optax.adam(1e-3)),
    ("adamw", lambda: optax.adamw(1e-3, weight_decay=1e-4)),
    ("sgd", lambda: optax.sgd(1e-3, momentum=0.9)),
])
def test_without_l2_the_optimizer_is_optax_own(name, plain):
  hparams = optim.default_hparams(Config(optimizer=name))
  assert float(hparams["l2"]) == 0.0
  for ours, theirs in zip(_updates(optim.make_optimizer(name, hparams)), _updates(plain())):
    chex.assert_trees_all_close(ours, theirs, rtol=1e-5, atol=1e-9)  # f32 vs Python floats


def test_coupled_l2_adds_l2_times_params_to_the_gradient_before_adam():
  l2 = 1e-2
  hparams = {**optim.default_hparams(Config()), "l2": jnp.float32(l2)}
  tx = optim.make_optimizer("adam", hparams)
  state = tx.init(PARAMS)
  updates, _ = tx.update(GRADS, state, PARAMS)
  # Adam's first step is -lr * g_hat / (|g_hat| + eps) with g_hat = g + l2 * params.
  for k in PARAMS:
    g_hat = np.asarray(GRADS[k]) + l2 * np.asarray(PARAMS[k])
    np.testing.assert_allclose(updates[k], -1e-3 * g_hat / (np.abs(g_hat) + 1e-8), rtol=1e-5)
  # It differs from decoupled weight decay, which Adam does not normalize.
  decoupled, _ = optax.adamw(1e-3, weight_decay=l2).update(
      GRADS, optax.adamw(1e-3, weight_decay=l2).init(PARAMS), PARAMS)
  assert not np.allclose(updates["w"], decoupled["w"])


def test_l2_is_a_traced_hyperparameter_a_sweep_compiles_once():
  traces = []

  def first_update(l2):
    traces.append(None)
    hparams = {**optim.default_hparams(Config()), "l2": l2}
    tx = optim.make_optimizer("adam", hparams)
    state = tx.init(PARAMS)
    return tx.update(GRADS, state, PARAMS)[0]["w"]

  out = jax.jit(jax.vmap(first_update))(jnp.array([0.0, 1e-2, 1.0]))
  assert len(traces) == 1
  assert out.shape == (3, 2, 2) and np.all(np.isfinite(out))
  assert not np.allclose(out[0], out[2])


def test_hparams_of_reads_l2_back_from_the_state():
  hparams = {**optim.default_hparams(Config(optimizer="sgd")), "l2": jnp.float32(0.5)}
  state = optim.make_optimizer("sgd", hparams).init(PARAMS)
  assert float(optim.hparams_of("sgd", state)["l2"]) == 0.5


def test_unknown_and_missing_hyperparameters_are_refused():
  with pytest.raises(ConfigError, match="'l3' is not a hyperparameter of adam"):
    optim.make_optimizer("adam", {**optim.default_hparams(Config()), "l3": 1.0})
  hparams = optim.default_hparams(Config())
  del hparams["l2"]
  with pytest.raises(ConfigError, match="adam needs l2"):
    optim.make_optimizer("adam", hparams)
  with pytest.raises(ConfigError, match="optimizer: 'rmsprop' is not accepted"):
    optim.make_optimizer("rmsprop", hparams)


@pytest.mark.parametrize("name, plain", [
    ("adam", lambda: optax.adam(1e-3)),
    ("adamw", lambda: optax.adamw(1e-3, weight_decay=1e-4)),
])
def test_element_counts_are_the_same_optimizer_without_resets(name, plain):
  tx = optim.make_optimizer(name, optim.default_hparams(Config(optimizer=name)),
                            element_counts=True)
  for ours, theirs in zip(_updates(tx, steps=5), _updates(plain(), steps=5)):
    chex.assert_trees_all_close(ours, theirs, rtol=1e-5, atol=1e-10)
  counts = tx.update(GRADS, tx.init(PARAMS), PARAMS)[1].inner_state[1][0].count
  chex.assert_trees_all_equal(counts, jax.tree.map(lambda p: jnp.ones(p.shape, jnp.int32), PARAMS))


def test_element_counts_leave_sgd_unchanged():
  hparams = optim.default_hparams(Config(optimizer="sgd"))
  ours = _updates(optim.make_optimizer("sgd", hparams, element_counts=True))
  chex.assert_trees_all_equal(ours, _updates(optim.make_optimizer("sgd", hparams)))
