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


def _reference_adam_with_beta_ramp(grads_seq, lr, epochs, steps_per_epoch, tasks, ramped):
  """The reference code's loop, written out in NumPy (PyTorch's Adam algorithm): after
  every update, the first group's betas become get_betas(cfg, epoch) of the epoch that
  update fell in; bias corrections use the current betas and the run's step count."""
  betas = {k: (0.9, 0.999) for k in ramped}
  m = {k: np.zeros_like(g) for k, g in grads_seq[0].items()}
  v = {k: np.zeros_like(g) for k, g in grads_seq[0].items()}
  out, t = [], 0
  for _ in range(tasks):
    for epoch in range(epochs):
      for _ in range(steps_per_epoch):
        g = grads_seq[t]
        t += 1
        update = {}
        for k in g:
          b1, b2 = betas[k]
          m[k] = b1 * m[k] + (1 - b1) * g[k]
          v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
          update[k] = -lr * (m[k] / (1 - b1**t)) / (np.sqrt(v[k]) / np.sqrt(1 - b2**t) + 1e-8)
        out.append(update)
        end = 2 * epochs  # utils/optimizers.py get_betas
        for k in g:
          if ramped[k]:
            betas[k] = (0.9 + (0.99 - 0.9) * epoch / end, 0.999 + (0.75 - 0.999) * epoch / end)
  return out


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_reference_beta_ramp_matches_the_reference_loop_over_tasks(name):
  epochs, steps_per_epoch, tasks = 4, 3, 3
  steps = epochs * steps_per_epoch * tasks
  rng = np.random.default_rng(0)
  grads = [{"hidden_0": rng.normal(size=3).astype(np.float32),
            "output": rng.normal(size=2).astype(np.float32)} for _ in range(steps)]
  hparams = optim.default_hparams(Config(optimizer=name))
  if name == "adamw":
    hparams["weight_decay"] = jnp.float32(0.0)
  tx = optim.make_optimizer(name, hparams,
                            beta_ramp=optim.BetaRamp("hidden_0", steps_per_epoch, epochs))
  params = {"hidden_0": jnp.zeros(3), "output": jnp.zeros(2)}
  state = jax.jit(tx.init)(params)
  update = jax.jit(tx.update)
  expected = _reference_adam_with_beta_ramp(grads, 1e-3, epochs, steps_per_epoch, tasks,
                                            {"hidden_0": True, "output": False})
  plain_tx = optim.make_optimizer(name, hparams)
  plain_state = plain_tx.init(params)
  for g, want in zip(grads, expected):
    got, state = update(g, state, params)
    chex.assert_trees_all_close(got, want, rtol=2e-4, atol=1e-9)
    plain, plain_state = plain_tx.update(g, plain_state, params)
  # Only the first layer is ramped: the output layer's updates are plain Adam's, the
  # first layer's are not.
  np.testing.assert_allclose(got["output"], plain["output"], rtol=1e-5)
  assert np.max(np.abs(got["hidden_0"] / plain["hidden_0"] - 1)) > 0.01
  # The last update (epoch 3 of task 3) ran with the betas set after epoch 3's second.
  b1, b2 = optim.reference_betas(steps - 1, 0.9, 0.999, steps_per_epoch, epochs)
  np.testing.assert_allclose([b1, b2], [0.9 + 0.09 * 3 / 8, 0.999 - 0.249 * 3 / 8], rtol=1e-6)


def test_reference_betas_follow_get_betas_epoch_by_epoch():
  # update c runs with the betas set after update c - 1: epoch of c - 1 within its task.
  steps_per_epoch, epochs = 5, 10
  counts = np.arange(0, 3 * steps_per_epoch * epochs)
  b1, b2 = jax.vmap(lambda c: optim.reference_betas(c, 0.9, 0.999, steps_per_epoch, epochs))(
      counts)
  previous = np.maximum(counts - 1, 0)
  epoch = (previous // steps_per_epoch) % epochs
  np.testing.assert_allclose(b1, 0.9 + 0.09 * epoch / 20, rtol=1e-6)
  np.testing.assert_allclose(b2, 0.999 - 0.249 * epoch / 20, rtol=1e-6)
  # A task's last update runs with (0.9405, 0.886...); the next task's second restarts.
  assert float(b1[steps_per_epoch * epochs]) == pytest.approx(0.9 + 0.09 * 9 / 20)
  assert float(b1[steps_per_epoch * epochs + 1]) == pytest.approx(0.9)


def test_reference_beta_ramp_is_refused_where_it_cannot_act():
  with pytest.raises(ConfigError, match="adam_betas: .* acts only with optimizer adam or adamw"):
    Config(optimizer="sgd", adam_betas="reference")
  with pytest.raises(ConfigError, match="adam_betas: 'reference' is not accepted with "
                     "unit_reset 'cbp'"):
    Config(adam_betas="reference", unit_reset="cbp")
  ramp = optim.BetaRamp("hidden_0", 3, 4)
  with pytest.raises(ConfigError, match="adam_betas: 'reference' needs optimizer adam"):
    optim.make_optimizer("sgd", optim.default_hparams(Config(optimizer="sgd")), beta_ramp=ramp)
  with pytest.raises(ConfigError, match="adam_betas: 'reference' is not accepted with a unit"):
    optim.make_optimizer("adam", optim.default_hparams(Config()), element_counts=True,
                         beta_ramp=ramp)
