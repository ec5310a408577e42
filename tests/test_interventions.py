"""Shrink & perturb, continual backprop, ReDo and the unit resets they share."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trainability import interventions, models, optim, units
from trainability.config import Config

KEY = jax.random.key(0)


def build(input_shape=(6, 6, 1), **changes):
  config = Config(**{"width": 8, "depth": 2, **changes})
  model = models.make_model(config, input_shape, 5)
  params, state = model.init(KEY)
  return model, params, state


def test_shrink_perturb_moves_params_by_the_expected_amount():
  _, params, _ = build(width=64)
  key = jax.random.key(3)
  shrunk = interventions.shrink_perturb(params, key, 0.25, 0.0)
  chex.assert_trees_all_close(shrunk, jax.tree.map(lambda p: 0.75 * p, params))
  moved = interventions.shrink_perturb(params, key, 0.25, 0.01)
  noise = jax.tree.leaves(jax.tree.map(lambda m, s: (m - s) / 0.01, moved, shrunk))
  noise = np.concatenate([np.ravel(n) for n in noise])
  assert noise.size > 5000 and abs(noise.mean()) < 0.05 and abs(noise.std() - 1.0) < 0.05
  # Fresh keys give fresh noise.
  other = interventions.shrink_perturb(params, jax.random.key(4), 0.25, 0.01)
  assert not np.allclose(other["output"]["kernel"], moved["output"]["kernel"])


def test_shrink_perturb_with_init_noise_adds_a_scaled_fresh_initialization():
  model, params, _ = build()
  key = jax.random.key(5)
  moved = interventions.shrink_perturb(params, key, 0.6, 0.1, "init", model.init)
  expected = jax.tree.map(lambda p, f: 0.4 * p + 0.1 * f, params, model.init(key)[0])
  chex.assert_trees_all_close(moved, expected, rtol=1e-6)
  with pytest.raises(ValueError, match="^perturb_noise: 'uniform' is not accepted"):
    interventions.shrink_perturb(params, key, 0.1, 0.1, "uniform")


def _state(utility, age, pending=0.0):
  return interventions.UnitState({"h": jnp.asarray(utility, jnp.float32)},
                                 {"h": jnp.asarray(age, jnp.int32)},
                                 {"h": jnp.float32(pending)})


def test_continual_backprop_replaces_the_lowest_utility_mature_units_only():
  decay, maturity = 0.9, 10
  utility = np.array([0.5, 0.1, 0.9, 0.05, 0.3, 0.2], np.float32)
  age = np.array([50, 50, 50, 3, 50, 50])  # unit 3 is immature and has the lowest utility
  activity, mass = np.full(6, 2.0, np.float32), np.full(6, 0.5, np.float32)
  # 5 eligible units x 0.3 + 0.6 pending = 2.1: two replacements, 0.1 left.
  new, replace = interventions.continual_backprop(
      _state(utility, age, 0.6), {"h": activity}, {"h": mass}, 0.3, maturity, decay)
  updated = decay * utility + (1 - decay) * activity * mass
  corrected = updated / (1 - decay ** (age + 1.0))
  eligible = age + 1 > maturity
  expected = np.zeros(6, bool)
  expected[np.argsort(np.where(eligible, corrected, np.inf))[:2]] = True
  np.testing.assert_array_equal(replace["h"], expected)
  assert not replace["h"][3]
  np.testing.assert_allclose(new.pending["h"], 0.1, atol=1e-6)
  np.testing.assert_allclose(new.utility["h"], np.where(expected, 0.0, updated), rtol=1e-6)
  np.testing.assert_array_equal(new.age["h"], np.where(expected, 0, age + 1))


def test_continual_backprop_ranks_by_bias_corrected_utility():
  # Raw utility ranks the young unit 0 lowest; corrected for its age it is the highest.
  decay = 0.99
  state = _state([0.03, 0.1, 0.2], [11, 1000, 1000], 0.99)
  zero = {"h": jnp.zeros(3)}
  _, replace = interventions.continual_backprop(state, zero, zero, 0.01, 10, decay)
  assert float(0.03 * decay / (1 - decay**12)) > 0.2 * decay / (1 - decay**1001)
  np.testing.assert_array_equal(replace["h"], [False, True, False])


def test_continual_backprop_accumulates_fractional_replacements():
  state = _state(np.arange(4.0), [200] * 4)
  ones = {"h": jnp.ones(4)}
  counts = []
  for _ in range(6):
    state, replace = interventions.continual_backprop(state, ones, ones, 0.125, 100, 0.99)
    counts.append(int(replace["h"].sum()))
  # 4 eligible x 0.125: 0.5, 1.0 -> one unit replaced, which is then immature,
  # so 3 x 0.125: 0.375, 0.75, 1.125 -> one more, 2 x 0.125: 0.375.
  assert counts == [0, 1, 0, 0, 1, 0]
  np.testing.assert_allclose(state.pending["h"], 0.375)


def test_continual_backprop_runs_under_jit_and_vmap_per_seed():
  step = jax.jit(jax.vmap(interventions.continual_backprop, in_axes=(0, 0, 0, None, None, None)))
  utility = jnp.array([[0.3, 0.1, 0.2], [0.1, 0.3, 0.2]])
  state = interventions.UnitState({"h": utility}, {"h": jnp.full((2, 3), 500, jnp.int32)},
                                  {"h": jnp.array([0.9, 0.9])})
  zero = {"h": jnp.zeros((2, 3))}
  _, replace = step(state, zero, zero, 0.05, 100, 0.99)
  np.testing.assert_array_equal(replace["h"], [[False, True, False], [True, False, False]])


def test_dormant_units_are_those_at_or_below_tau_of_the_layer_mean():
  activity = {"h": jnp.array([0.0, 1.0, 2.0, 0.25, 1.75])}  # mean 1
  np.testing.assert_array_equal(interventions.dormant_units(activity, 0.25)["h"],
                                [True, False, False, True, False])
  np.testing.assert_array_equal(interventions.dormant_units(activity, 0.0)["h"],
                                [True, False, False, False, False])
  dead = {"h": jnp.zeros(3)}
  assert bool(interventions.dormant_units(dead, 0.0)["h"].all())


def test_unit_activity_sums_the_copies_and_averages_batch_and_positions():
  post = jnp.arange(2 * 3 * 4, dtype=jnp.float32).reshape(2, 3, 4) - 10.0  # 2 copies x 2 units
  activity = interventions.unit_activity({"h": models.Features(post, post)}, copies=2)
  expected = np.abs(np.asarray(post)).reshape(6, 2, 2).sum(1).mean(0)
  np.testing.assert_allclose(activity["h"], expected)


CASES = [
    {},
    {"activation": "crelu"},
    {"activation": "fourier"},
    {"norm": "layernorm"},
    {"model": "cnn", "channels": (3, 4), "norm": "batchnorm"},
    {"model": "cnn", "channels": (3,), "activation": "crelu"},
]


@pytest.mark.parametrize("changes", CASES)
def test_a_reset_unit_contributes_nothing_and_only_its_weights_change(changes):
  model, params, state = build(**changes)
  fresh, fresh_state = model.init(jax.random.key(9))
  replace = {n: jnp.arange(u) % 3 == 1 for n, u in units.units_of(model, params).items()}
  new, new_state, masks = interventions.reset_units(model, params, state, fresh, fresh_state,
                                                    replace)
  # Incoming parameters are the fresh ones, outgoing weights zero, the rest untouched.
  for leaf, old, f, i, o in zip(*map(jax.tree.leaves, (new, params, fresh, masks.incoming,
                                                       masks.outgoing))):
    np.testing.assert_array_equal(leaf, np.where(o, 0.0, np.where(i, f, old)))
  name = model.hidden[0]
  kernel = new[name]["conv" if "conv" in new[name] else "dense"]["kernel"]
  np.testing.assert_array_equal(kernel[..., 1], fresh[name]["conv" if "conv" in new[name]
                                                           else "dense"]["kernel"][..., 1])
  assert int(np.sum(masks.outgoing["output"]["kernel"])) > 0
  # The network computes what the old one computes with those units' outgoing
  # weights removed: a replaced unit has no effect until it learns. (Not with
  # LayerNorm, whose statistics over the layer see the new unit.)
  if changes.get("norm") != "layernorm":
    removed = jax.tree.map(lambda p, o: jnp.where(o, 0.0, p), params, masks.outgoing)
    x = jax.random.normal(jax.random.key(1), (7, 6, 6, 1))
    np.testing.assert_allclose(model.apply(new, new_state, x)[0],
                               model.apply(removed, state, x)[0], rtol=1e-5, atol=1e-5)
  # Every weight a replaced unit feeds is zero, and only those (via outgoing_mass).
  mass = interventions.outgoing_mass(model, new)
  for n in model.hidden:
    assert np.all(np.asarray(mass[n])[np.asarray(replace[n])] == 0)
    assert np.all(np.asarray(mass[n])[~np.asarray(replace[n])] > 0)
  if state:  # BatchNorm statistics of the replaced units are the fresh ones
    stats = new_state["batch_stats"][model.hidden[0]]["norm"]["var"]
    np.testing.assert_array_equal(
        stats, np.where(replace[model.hidden[0]], 1.0, state["batch_stats"][model.hidden[0]]
                        ["norm"]["var"]))


def test_reset_optimizer_state_resets_exactly_the_touched_moments_and_counts():
  model, params, _ = build()
  hparams = optim.default_hparams(Config())
  tx = optim.make_optimizer("adam", hparams, element_counts=True)
  opt_state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  for _ in range(3):
    _, opt_state = tx.update(grads, opt_state, params)
  replace = {n: jnp.arange(8) == 2 for n in model.hidden}
  masks = units.unit_masks(model, params, replace)
  reset = interventions.reset_optimizer_state(opt_state, tx.init(params), masks.touched)
  adam, old = reset.inner_state[1][0], opt_state.inner_state[1][0]
  touched = masks.touched
  for field, fresh_value in (("mu", 0.0), ("nu", 0.0), ("count", 0)):
    for new_leaf, old_leaf, t in zip(jax.tree.leaves(getattr(adam, field)),
                                     jax.tree.leaves(getattr(old, field)),
                                     jax.tree.leaves(touched)):
      np.testing.assert_array_equal(new_leaf, np.where(t, fresh_value, old_leaf))
  assert int(np.sum(jax.tree.leaves(touched)[0])) > 0
  chex.assert_trees_all_equal(reset.hyperparams, opt_state.hyperparams)


def _first_update_after_reset(element_counts):
  params = {"w": jnp.zeros((2, 3))}
  tx = optim.make_optimizer("adam", optim.default_hparams(Config()), element_counts)
  state = tx.init(params)
  for _ in range(200):
    _, state = tx.update({"w": jnp.full((2, 3), 0.5)}, state, params)
  touched = {"w": jnp.array([[True, False, False], [False, False, False]])}
  state = interventions.reset_optimizer_state(state, tx.init(params), touched)
  return tx.update({"w": jnp.full((2, 3), -4.0)}, state, params)[0]["w"]


def test_a_reset_weight_takes_a_fresh_adams_first_step():
  updates = _first_update_after_reset(element_counts=True)
  np.testing.assert_allclose(updates[0, 0], 1e-3, rtol=1e-4)  # fresh Adam: lr * sign(-g)
  assert abs(float(updates[0, 1])) < 0.2 * float(updates[0, 0])  # not reset: its momentum
  # With one shared count the zeroed moments are "bias-corrected" as if 201
  # steps old: the step is 1.35 times too large here, and tends to
  # (1 - b1) / sqrt(1 - b2) = 3.16 times as the count grows.
  shared = _first_update_after_reset(element_counts=False)
  t = 201
  expected = 1e-3 * (0.1 * 4 / (1 - 0.9**t)) / np.sqrt(0.001 * 16 / (1 - 0.999**t))
  np.testing.assert_allclose(shared[0, 0], expected, rtol=1e-3)
  assert shared[0, 0] > 1.3 * updates[0, 0]
