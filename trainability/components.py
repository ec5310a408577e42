"""One interface for everything that acts in a run besides the optimizer.

A `Component` is a name, its traced hyperparameters and up to six pure
hooks; the training loop (`train.run_task`, `train.train_step`) calls every
component's hook at each point of the run, in the order the components are
given, with no knowledge of what any of them does (as `optax.chain` does for
transforms):

* `init(params, model_state, key) -> state`: the component's state at the
  run's start (None if it needs none). The state is carried through the run
  as part of `train.RunState.components`, so it must be a pytree of arrays:
  it is vmapped over seeds like everything else.
* `penalty(params, state, hp) -> scalar`: added to the training loss, times
  `hp[weight]` when `weight` names one of the component's hyperparameters.
  The optimizer sees the loss's gradient plus `hp[weight] * grad(penalty)`;
  the gradient-noise and curvature signals are measured on the data loss alone.
* `task_start(boundary, state, hp) -> (boundary, state)`: at the start of
  every task (including the first; `boundary.task.index` tells which), may
  replace `boundary.params`, `.model_state` or `.opt_state` (resets).
* `after_update(step, state, hp) -> (step, state)`: after every update, may
  replace `step.params`, `.model_state` or `.opt_state` (shrink & perturb,
  continual backprop, ReDo, a projection or clipping of your own).
* `record(step, state, hp) -> (values, state)`: after the task steps
  `every - 1`, `2 every - 1`, ... (under a `lax.cond` on the unbatched step
  counter, so a vmapped run evaluates it on schedule only), on the state the
  run holds after the step. `values` is a pytree of arrays with the same
  shapes at every call; `train.TaskMetrics.records[name]` stacks them,
  (evaluations, ...) per task.

* `update_args(pending, state, hp) -> {keyword: value}`: before every
  update, the extra keyword arguments that the component's optimizer wrapper
  needs in `tx.update` (optax's extra-args contract); `pending` is a
  `Pending`, the step before its update. The loop merges every component's
  arguments and passes them on; an optimizer that takes none ignores them
  (`optax.with_extra_args_support`).

`hparams` ({name: default}) are the component's traced run hyperparameters:
`train(key, hparams)` may override them with (vmapped) arrays, so a sweep
over them compiles once; every hook receives them as `hp`, float32 scalars.
`wrap_optimizer(tx) -> tx` lets a component wrap the optimizer (the
noise-curvature scheduler), and `multiplier(opt_state) -> (layers,) or None`
tells the run the per-layer learning-rate multipliers it applies: `Step`
carries their product at record time (`step.multiplier`, None when no
component has one), so an indicator of the effective step reads it there.
`element_counts` asks for Adam state with one step count per parameter
element (`optim.scale_by_adam_per_element`), for components that reset part
of the optimizer state.

Keys: `init`, `task_start` and `after_update` receive the run's key for that
occasion, the same for every component; a component that draws randomness
beside another one should `jax.random.fold_in` a constant of its own.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

class TaskData(NamedTuple):
  """The current task, as the hooks see it."""

  index: jax.Array            # task t (0-based), a scalar
  weight: jax.Array           # (n,) 1.0 for the task's active training examples, else 0
  examples: Callable          # idx -> (inputs, labels) of those training examples, task applied


class Boundary(NamedTuple):
  """What a task's start can change (`task_start`), and what it may use."""

  params: Any
  model_state: Any
  opt_state: Any
  task: TaskData
  key: jax.Array              # the task's key
  init_key: jax.Array         # the run's init key (the model's first init used it)
  init_optimizer: Callable    # params -> a fresh optimizer state, same hyperparameters


class Pending(NamedTuple):
  """One training step before its update (`update_args`)."""

  params: Any                 # the parameters of this step's forward pass
  model_state: Any            # the model state of this step's forward pass
  batch: Any                  # (inputs, labels) of this step
  grads: Any                  # the data loss's gradient at `params` (no penalties)
  task: TaskData
  task_step: jax.Array        # steps of the task before this one (an unbatched counter)


class Step(NamedTuple):
  """One training step, after the update (`after_update`, `record`)."""

  params: Any                 # after the update (and earlier components' changes)
  model_state: Any
  opt_state: Any
  updates: Any                # the optimizer's update of this step
  grads: Any                  # the data loss's gradient at `previous_params`
  previous_params: Any        # the parameters of this step's forward pass
  previous_model_state: Any
  batch: Any                  # (inputs, labels) of this step
  task: TaskData
  task_step: jax.Array        # steps of the task before this one (an unbatched counter)
  count: jax.Array            # updates of the run so far, this one included
  key: jax.Array              # this step's key
  multiplier: Any = None      # at record time: the components' per-layer lr multipliers


class Component(NamedTuple):
  name: str
  init: Callable | None = None
  hparams: Mapping[str, float] = {}
  penalty: Callable | None = None
  weight: str | None = None
  task_start: Callable | None = None
  after_update: Callable | None = None
  record: Callable | None = None
  every: int = 1
  wrap_optimizer: Callable | None = None
  element_counts: bool = False
  update_args: Callable | None = None
  multiplier: Callable | None = None


def select(pred, on_true, on_false):
  """on_true where `pred` (a scalar), else on_false, leaf by leaf: a switch that a
  hook can apply under vmap, e.g. `select(boundary.task.index > 0, fresh, old)`."""
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def check_components(components) -> tuple[Component, ...]:
  """The components as a tuple; one-line errors for clashing names or a bad schedule."""
  components = tuple(components)
  names, hparams = set(), {}
  for c in components:
    if not isinstance(c, Component):
      raise ValueError(f"components: {c!r} is not a trainability.components.Component")
    if c.name in names:
      raise ValueError(f"components: two components are named {c.name!r}; names must differ")
    names.add(c.name)
    for h in c.hparams:
      if h in hparams:
        raise ValueError(f"components: hyperparameter {h!r} of {c.name!r} is also one of "
                         f"{hparams[h]!r}; names must differ")
      hparams[h] = c.name
    if c.weight is not None and c.weight not in c.hparams:
      raise ValueError(f"components: {c.name!r} weight {c.weight!r} is not one of its hparams "
                       f"({', '.join(c.hparams) or 'none'})")
    if c.record is not None and (isinstance(c.every, bool) or not isinstance(c.every, int)
                                 or c.every < 1):
      raise ValueError(f"components: {c.name!r} every: {c.every!r} is not accepted; give an "
                       "integer >= 1")
  return components


def own_hparams(component: Component, hparams: Mapping[str, jax.Array]) -> dict:
  return {h: hparams[h] for h in component.hparams}


def penalty_gradients(components, states, hparams, params, grads):
  """grads plus each component's weight times its penalty's gradient, in order."""
  for c, s in zip(components, states):
    if c.penalty is None:
      continue
    hp = own_hparams(c, hparams)
    extra = jax.grad(lambda p, c=c, s=s, hp=hp: c.penalty(p, s, hp))(params)
    weight = hp[c.weight] if c.weight is not None else jnp.float32(1.0)
    grads = jax.tree.map(lambda g, r, w=weight: g + w * r, grads, extra)
  return grads


def _through(hook: str, components, states, hparams, view):
  """`view` passed through every component's `hook`, in order; (view, new states)."""
  states = list(states)
  for i, c in enumerate(components):
    fn = getattr(c, hook)
    if fn is not None:
      view, states[i] = fn(view, states[i], own_hparams(c, hparams))
  return view, tuple(states)


def start_task(components, states, hparams, boundary: Boundary):
  return _through("task_start", components, states, hparams, boundary)


def after_update(components, states, hparams, step: Step):
  return _through("after_update", components, states, hparams, step)


def update_args(components, states, hparams, pending: Pending) -> dict:
  """Every component's extra arguments for `tx.update`, merged; one name from two
  components is an error."""
  merged, owner = {}, {}
  for c, s in zip(components, states):
    if c.update_args is None:
      continue
    for name, value in c.update_args(pending, s, own_hparams(c, hparams)).items():
      if name in merged:
        raise ValueError(f"components: {c.name!r} and {owner[name]!r} both supply the update "
                         f"argument {name!r}; names must differ")
      merged[name], owner[name] = value, c.name
  return merged


def multiplier(components, opt_state):
  """The product of the components' per-layer learning-rate multipliers in
  `opt_state`, or None when no component has one."""
  found = [m for m in (c.multiplier(opt_state) for c in components if c.multiplier) if
           m is not None]
  if not found:
    return None
  out = found[0]
  for m in found[1:]:
    out = out * m
  return out


def record(components, states, hparams, step: Step):
  """({name: values} of the components whose record is due, zeros for the others, states)."""
  states, values = list(states), {}
  for i, c in enumerate(components):
    if c.record is None:
      continue
    hp = own_hparams(c, hparams)
    evaluate = lambda s, c=c, hp=hp: c.record(step, s, hp)
    shapes = jax.eval_shape(evaluate, states[i])[0]
    skip = lambda s, shapes=shapes: (jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes),
                                     s)
    values[c.name], states[i] = jax.lax.cond((step.task_step + 1) % c.every == 0, evaluate,
                                             skip, states[i])
  return values, tuple(states)
