"""The component interface: hooks in order, under jit and vmap, with traced hyperparameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainability import components as comp
from trainability.train import make_trainer, seed_keys


def clip(bound):
  def after_update(step, state, hp):
    c = hp["bound"]
    return step._replace(params=jax.tree.map(lambda w: jnp.clip(w, -c, c), step.params)), state

  return comp.Component("clip", hparams={"bound": bound}, after_update=after_update)


def test_a_custom_component_acts_under_jit_and_vmap_with_a_traced_hyperparameter(tiny_config):
  trainer = make_trainer(tiny_config, components=[clip(0.05)])
  keys = seed_keys(tiny_config)
  state = jax.jit(jax.vmap(trainer.init))(keys, {"bound": jnp.array([0.05, 0.02])})
  final, metrics = jax.jit(jax.vmap(trainer.run_tasks, in_axes=(0, None)))(state, jnp.arange(2))
  largest = np.max(np.stack([np.abs(np.asarray(w)).reshape(2, -1).max(1)
                             for w in jax.tree.leaves(final.params)]), 0)
  assert largest[0] == pytest.approx(0.05) and largest[1] == pytest.approx(0.02)
  assert np.all(np.isfinite(np.asarray(metrics.loss)))


def test_hooks_run_in_order_and_records_follow_their_schedule(tiny_config):
  """task_start and after_update see earlier components' changes; records come every N steps."""
  calls = []

  def counter(name, every):
    def task_start(boundary, state, hp):
      return boundary, state.at[0].add(1)

    def after_update(step, state, hp):
      # The second component sees the first one's change of the params.
      seen = step.params["output"]["bias"][0]
      params = jax.tree.map(lambda w: w, step.params)
      params["output"]["bias"] = params["output"]["bias"].at[0].set(seen + 1.0)
      return step._replace(params=params), state.at[1].add(1)

    def record(step, state, hp):
      calls.append(name)  # traced once per jit
      return {"task_step": step.task_step, "bias": step.params["output"]["bias"][0],
              "starts": state[0]}, state

    return comp.Component(name, init=lambda p, s, k: jnp.zeros(2, jnp.int32),
                          task_start=task_start, after_update=after_update, record=record,
                          every=every)

  config = tiny_config.replace(seeds=1)
  trainer = make_trainer(config, components=[counter("a", 5), counter("b", 4)])
  state = trainer.init(jax.random.key(0))
  before = float(state.params["output"]["bias"][0])
  final, metrics = jax.jit(trainer.run_tasks)(state, jnp.arange(2))
  steps = 2 * (200 // 20)  # epochs x batches per epoch: 20 steps per task
  np.testing.assert_array_equal(metrics.records["a"]["task_step"], [[4, 9, 14, 19]] * 2)
  np.testing.assert_array_equal(metrics.records["b"]["task_step"], [[3, 7, 11, 15, 19]] * 2)
  np.testing.assert_array_equal(metrics.records["a"]["starts"], [[1] * 4, [2] * 4])
  np.testing.assert_array_equal(trainer.component_state(final, "b"), [2, 2 * steps])
  # After the 5th step of task 1: each step's two +1s on top of Adam's moves.
  assert float(metrics.records["a"]["bias"][0, 0]) > before + 2 * 5 - 1
  assert sorted(set(calls)) == ["a", "b"]


def test_a_penalty_times_its_weight_is_added_to_the_gradient(tiny_config):
  """A penalty that is w/2 ||theta||^2 with traced w equals coupled L2 of w under SGD."""
  config = tiny_config.replace(optimizer="sgd", momentum=0.0, lr=0.05, seeds=1)
  half_norm = comp.Component(
      "decay", hparams={"w": 0.1}, weight="w",
      penalty=lambda p, s, hp: 0.5 * sum(jnp.sum(x**2) for x in jax.tree.leaves(p)))
  mine = make_trainer(config, components=[half_norm])
  coupled = make_trainer(config.replace(l2=0.1))
  run = lambda t: jax.jit(t.run_tasks)(t.init(jax.random.key(0)), jnp.arange(1))[0].params
  for a, b in zip(jax.tree.leaves(run(mine)), jax.tree.leaves(run(coupled))):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("parts, message", [
    ([comp.Component("x"), comp.Component("x")], "two components are named 'x'"),
    ([comp.Component("x", hparams={"a": 1.0}), comp.Component("y", hparams={"a": 2.0})],
     "hyperparameter 'a' of 'y' is also one of 'x'"),
    ([comp.Component("x", weight="w")], "'x' weight 'w' is not one of its hparams"),
    ([comp.Component("x", record=lambda s, st, hp: ({}, st), every=0)], "'x' every: 0"),
    (["not a component"], "is not a trainability.components.Component"),
])
def test_bad_components_are_one_line_errors(parts, message):
  with pytest.raises(ValueError, match=message):
    comp.check_components(parts)


def test_a_component_name_clashing_with_a_built_in_one_is_refused(tiny_config):
  with pytest.raises(ValueError, match="two components are named 'regularizer'"):
    make_trainer(tiny_config.replace(regularizer="l2_init"),
                 components=[comp.Component("regularizer")])


def test_component_state_names_the_run_components(tiny_config):
  trainer = make_trainer(tiny_config.replace(unit_reset="cbp"))
  state = trainer.init(jax.random.key(0))
  assert set(trainer.component_state(state, "unit_reset").age) == {"hidden_0"}
  with pytest.raises(ValueError, match="'clip' is not a component of this run; its "
                                       "components: unit_reset"):
    trainer.component_state(state, "clip")


def _needs_task_step(inner):
  """An optimizer wrapper whose update needs a keyword `task_step` and keeps the largest seen."""
  import optax

  def init(params):
    return (inner.init(params), jnp.int32(-1))

  def update(updates, state, params=None, *, task_step, **extra):
    del extra
    updates, inner_state = inner.update(updates, state[0], params)
    return updates, (inner_state, jnp.maximum(state[1], task_step))

  return optax.GradientTransformationExtraArgs(init, update)


def test_a_component_supplies_the_extra_arguments_its_optimizer_wrapper_needs(tiny_config):
  """update_args: the loop passes what a component's wrapper needs to tx.update, and
  nothing else names it (the step has no component-specific argument)."""
  part = comp.Component("stepper", wrap_optimizer=_needs_task_step,
                        update_args=lambda pending, state, hp: {"task_step": pending.task_step})
  config = tiny_config.replace(seeds=1, tasks=1)
  trainer = make_trainer(config, components=[part])
  final, _ = jax.jit(trainer.run_tasks)(trainer.init(jax.random.key(0)), jnp.arange(1))
  steps = config.epochs * trainer.steps_per_epoch
  assert int(jax.tree.leaves(final.opt_state)[-1]) == steps - 1
  # Without the hook, the wrapper's update is missing its argument.
  bare = make_trainer(config, components=[part._replace(update_args=None)])
  with pytest.raises(TypeError, match="task_step"):
    jax.jit(bare.run_tasks)(bare.init(jax.random.key(0)), jnp.arange(1))


def test_two_components_supplying_one_update_argument_is_refused(tiny_config):
  args = lambda pending, state, hp: {"task_step": pending.task_step}
  parts = [comp.Component("one", update_args=args), comp.Component("two", update_args=args)]
  trainer = make_trainer(tiny_config.replace(seeds=1, tasks=1), components=parts)
  with pytest.raises(ValueError, match="^components: 'two' and 'one' both supply the update "
                                       "argument 'task_step'; names must differ"):
    jax.jit(trainer.run_tasks)(trainer.init(jax.random.key(0)), jnp.arange(1))


def test_records_see_the_product_of_the_components_multipliers():
  twice = comp.Component("twice", multiplier=lambda opt_state: jnp.full((3,), 2.0))
  thrice = comp.Component("thrice", multiplier=lambda opt_state: jnp.array([3.0, 1.0, 0.5]))
  silent = comp.Component("silent", multiplier=lambda opt_state: None)
  np.testing.assert_allclose(comp.multiplier((twice, silent, thrice), None), [6.0, 2.0, 1.0])
  assert comp.multiplier((silent, comp.Component("none")), None) is None
