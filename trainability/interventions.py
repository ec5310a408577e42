"""Parameter interventions against loss of trainability (method.md section 6).

Pure functions of parameters, optimizer state and a key, with static shapes:
a replaced unit is chosen by a boolean mask of the layer's width, never by an
index list whose length changes, so every intervention runs under `jit` and
`vmap` (one seed's replacements do not depend on another's).

* `shrink_perturb` (Ash & Adams 2020): theta <- (1 - shrink) theta + perturb eps,
  eps standard normal per element (method.md) or a fresh initialization
  (Ash & Adams' choice: the noise has each layer's init scale).
* `continual_backprop` (Dohare et al., Nature 2024): every step each hidden
  unit's contribution utility u <- decay u + (1 - decay) |h| sum_k |w_out,k|
  is updated; units older than `maturity` steps are eligible;
  replacement_rate * (number eligible) units accumulate per step, and when
  the sum reaches 1 its integer part of the eligible units with the lowest
  bias-corrected utility u / (1 - decay^age) are replaced.
* `dormant_units` (ReDo, Sokar et al. 2023): a unit is dormant when its mean
  |activation| divided by the layer's mean is <= tau.
* `reset_units`: a replaced unit gets fresh incoming weights (its kernel column,
  bias and norm-layer scale/shift, its BatchNorm statistics), zero outgoing
  weights (so the network's function does not change at the reset), and
  `reset_optimizer_state` gives exactly those weights (incoming and outgoing)
  the optimizer's initial state. With `optim.make_optimizer(...,
  element_counts=True)` that includes Adam's step count, per element, so the
  replaced weights' bias correction starts over, as for a new network.

`reset_component`, `shrink_perturb_component` and `unit_reset_component` make
them run components (`trainability.components`).

For units the hidden layers of `models.make_model` are used: a unit is a
channel of the dense or conv layer. |h| is the mean over the batch (and the
spatial positions of a conv layer) of the activation's absolute value, summed
over the activation's copies (CReLU, Fourier features give two outputs per
unit); sum_k |w_out,k| runs over every weight of the next layer fed by the
unit (all its copies and positions). For a ReLU MLP this is Dohare et al.'s
formula exactly.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from trainability import models, optim, units
from trainability.components import Component, select
from trainability.settings import ConfigError, Integer, Number, Setting

RESETS = ("none", "model", "optimizer", "both", "timestep")
SHRINK_PERTURB = ("none", "step", "task")
PERTURB_NOISES = ("gaussian", "init")
UNIT_RESETS = ("none", "cbp", "redo")


def shrink_perturb(params, key, shrink, perturb, noise: str = "gaussian", init_fn=None):
  """(1 - shrink) params + perturb eps; eps ~ N(0, 1), or init_fn(key)[0] for noise="init"."""
  if noise == "init":
    if init_fn is None:
      raise ValueError("init_fn: perturb_noise 'init' needs the model's init function")
    eps = init_fn(key)[0]
  elif noise == "gaussian":
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    eps = jax.tree.unflatten(
        treedef, [jax.random.normal(k, p.shape, p.dtype) for k, p in zip(keys, leaves)])
  else:
    raise ValueError(f"perturb_noise: {noise!r} is not accepted; choose one of "
                     f"{', '.join(PERTURB_NOISES)}")
  return jax.tree.map(lambda p, e: (1 - shrink) * p + perturb * e, params, eps)


class UnitState(NamedTuple):
  """Continual backprop's bookkeeping, {hidden layer: array} each."""

  utility: dict  # (units,) running contribution utility
  age: dict      # (units,) int32 steps since the unit was initialized
  pending: dict  # () replacements accumulated and not yet made (fractional)


def init_unit_state(model: models.Model, params) -> UnitState:
  widths = units.units_of(model, params)
  return UnitState({n: jnp.zeros((u,), jnp.float32) for n, u in widths.items()},
                   {n: jnp.zeros((u,), jnp.int32) for n, u in widths.items()},
                   {n: jnp.float32(0.0) for n in widths})


def unit_activity(features: dict, copies: int) -> dict[str, jax.Array]:
  """{layer: (units,)} mean over batch (and positions) of |activation|, summed over copies."""
  out = {}
  for name, f in features.items():
    post = jnp.abs(f.post)
    width = post.shape[-1] // copies
    post = post.reshape(-1, copies, width)
    out[name] = post.sum(axis=1).mean(axis=0)
  return out


def outgoing_mass(model: models.Model, params) -> dict[str, jax.Array]:
  """{layer: (units,)} sum of |w| over every next-layer weight each unit feeds."""
  out = {}
  for name, width in units.units_of(model, params).items():
    kernel = units.get_path(params, units.kernel_path(params, units.next_layer(model, name)))
    out[name] = jnp.abs(units.outgoing_rows(kernel, model.copies, width)).sum(axis=(0, 1, 3))
  return out


def continual_backprop(state: UnitState, activity: dict, mass: dict, replacement_rate,
                       maturity, decay) -> tuple[UnitState, dict]:
  """One step of continual backprop's generate-and-test: (new state, {layer: replace mask}).

  activity: `unit_activity` of this step's forward pass; mass: `outgoing_mass`
  of the current weights. Replaced units restart with utility 0 and age 0.
  """
  new, replace = UnitState({}, {}, {}), {}
  for name, util in state.utility.items():
    age = state.age[name] + 1
    util = decay * util + (1 - decay) * activity[name] * mass[name]
    corrected = util / (1 - decay ** age.astype(jnp.float32))
    eligible = age > maturity
    pending = state.pending[name] + replacement_rate * jnp.sum(eligible)
    count = jnp.floor(pending)
    pending = pending - count
    score = jnp.where(eligible, corrected, jnp.inf)
    rank = jnp.argsort(jnp.argsort(score, stable=True), stable=True)
    chosen = eligible & (rank < count)
    replace[name] = chosen
    new.utility[name] = jnp.where(chosen, 0.0, util)
    new.age[name] = jnp.where(chosen, 0, age)
    new.pending[name] = pending
  return new, replace


def dormant_units(activity: dict, tau) -> dict[str, jax.Array]:
  """ReDo: {layer: mask} of units whose activity / the layer's mean activity <= tau."""
  return {name: a / jnp.maximum(jnp.mean(a), 1e-30) <= tau for name, a in activity.items()}


def reset_units(model: models.Model, params, model_state, fresh_params, fresh_model_state,
                replace: dict):
  """(params, model_state, masks): the units in `replace` re-initialized, outgoing weights 0.

  fresh_params, fresh_model_state: a new initialization (`model.init(key)`),
  from which the replaced units' incoming parameters and statistics are taken.
  """
  masks = units.unit_masks(model, params, replace)
  params = jax.tree.map(lambda p, f, i, o: jnp.where(o, 0.0, jnp.where(i, f, p)),
                        params, fresh_params, masks.incoming, masks.outgoing)
  new_state = {}
  for collection, layers in model_state.items():
    new_state[collection] = dict(layers)
    for name, mask in replace.items():
      if name in layers:
        new_state[collection][name] = jax.tree.map(
            lambda s, f, m=mask: jnp.where(jnp.broadcast_to(m, s.shape), f, s),
            layers[name], fresh_model_state[collection][name])
  return params, new_state, masks


def reset_optimizer_state(opt_state, fresh_opt_state, touched):
  """Every params-shaped part of `opt_state` (moments, per-element counts) takes
  `fresh_opt_state`'s values where `touched`; scalars (a shared count, the
  hyperparameters) are kept.
  """
  treedef = jax.tree.structure(touched)
  params_like = lambda node: jax.tree.structure(node) == treedef

  def merge(fresh, old):
    if not params_like(old):
      return old
    return jax.tree.map(jnp.where, touched, fresh, old)

  return jax.tree.map(merge, fresh_opt_state, opt_state, is_leaf=params_like)


def reset_base_optimizer_state(optimizer: str, opt_state, params, touched):
  """`reset_optimizer_state` applied to the base optimizer's state inside `opt_state`.

  The base optimizer is the injected one (`optim.make_optimizer`, with one
  step count per element); a wrapper's state around it (the scheduler's
  multipliers, its curvature directions) is kept whole, except where it has
  a `restart_elements(touched)` method (TRAC's displacement), which is called.
  """
  def reset(state):
    fresh = optim.make_optimizer(optimizer, state.hyperparams, element_counts=True)
    return reset_optimizer_state(state, fresh.init(params), touched)

  # A wrapper whose state follows the weights element by element (TRAC's
  # displacement) restarts them itself.
  follows = lambda n: hasattr(n, "restart_elements")
  opt_state = jax.tree.map(lambda n: n.restart_elements(touched) if follows(n) else n,
                           opt_state, is_leaf=follows)
  return optim.map_base_state(opt_state, reset)


def restart_adam_timestep(opt_state):
  """`opt_state` with every Adam step count set to 0 and the moments kept.

  Adam-Rel (Ellis et al., NeurIPS 2024): Adam on the time since the task
  began. With the count back at 0 the bias corrections start over, so the
  first steps of a task are normalized as a fresh Adam's are, but from the
  moments the last task left. Per-element counts (`optim.scale_by_adam_per_element`)
  are all set to 0.
  """
  adam = lambda n: isinstance(n, optax.ScaleByAdamState)
  restart = lambda n: n._replace(count=jax.tree.map(jnp.zeros_like, n.count)) if adam(n) else n
  return jax.tree.map(restart, opt_state, is_leaf=adam)


def reset_component(what: str, model: models.Model) -> Component:
  """Re-initialize the model ("model"), the optimizer state ("optimizer"), both
  ("both"), or only Adam's step count ("timestep", Adam-Rel:
  `restart_adam_timestep`) at the start of every task after the first. The
  model's new init uses the run's init key folded with the task index.
  "optimizer" re-initializes the whole optimizer state: Adam's moments and
  count, and a wrapper's (the scheduler's multipliers) with them."""
  if what not in RESETS[1:]:
    raise ValueError(f"reset: {what!r} is not accepted; choose one of {', '.join(RESETS[1:])}")

  def task_start(boundary, state, hp):
    del hp
    later = boundary.task.index > 0
    params, model_state = boundary.params, boundary.model_state
    if what in ("model", "both"):
      fresh_params, fresh_state = model.init(jax.random.fold_in(boundary.init_key,
                                                                boundary.task.index))
      params = select(later, fresh_params, params)
      model_state = select(later, fresh_state, model_state)
    opt_state = boundary.opt_state
    if what in ("optimizer", "both"):
      opt_state = select(later, boundary.init_optimizer(params), opt_state)
    if what == "timestep":
      opt_state = select(later, restart_adam_timestep(opt_state), opt_state)
    return boundary._replace(params=params, model_state=model_state, opt_state=opt_state), state

  return Component("reset", task_start=task_start)


def shrink_perturb_component(when: str, shrink: float, perturb: float,
                             noise: str = "gaussian", init_fn=None) -> Component:
  """Shrink & perturb after every update (`when` "step") or at the start of
  every task after the first ("task"); `shrink` and `perturb` are traced."""
  hparams = {"shrink": shrink, "perturb": perturb}
  apply = lambda params, key, hp: shrink_perturb(params, key, hp["shrink"], hp["perturb"], noise,
                                                 init_fn)
  if when == "step":
    def after_update(step, state, hp):
      return step._replace(params=apply(step.params, step.key, hp)), state

    return Component("shrink_perturb", hparams=hparams, after_update=after_update)
  if when != "task":
    raise ValueError(f"shrink_perturb: {when!r} is not accepted; choose one of "
                     f"{', '.join(SHRINK_PERTURB[1:])}")

  def task_start(boundary, state, hp):
    params = select(boundary.task.index > 0, apply(boundary.params, boundary.key, hp),
                     boundary.params)
    return boundary._replace(params=params), state

  return Component("shrink_perturb", hparams=hparams, task_start=task_start)


def unit_reset_component(kind: str, model: models.Model, optimizer: str, *,
                         replacement_rate: float = 1e-4, maturity: int = 100,
                         utility_decay: float = 0.99, redo_every: int = 1000,
                         redo_tau: float = 0.1, restart_each_task: bool = False) -> Component:
  """Continual backprop (`kind` "cbp", every step) or ReDo ("redo", every
  `redo_every` steps of a task) after each update.

  The units' activity is measured on the step's minibatch with the
  parameters of its forward pass; CBP's outgoing weights are the updated
  ones. A replaced unit's weights get a fresh state of the base optimizer
  `optimizer` (which must keep one step count per element: the component
  asks for it). restart_each_task: CBP's utilities and ages start over with
  each task (when the whole network is re-initialized there).
  """
  if not model.hidden:
    raise ConfigError("unit_reset: needs hidden units; give depth >= 1 (mlp) or model cnn")

  def replaced(step, state, hp):
    def activity():
      return unit_activity(model.features(step.previous_params, step.previous_model_state,
                                          step.batch[0]), model.copies)

    if kind == "cbp":
      return continual_backprop(state, activity(), outgoing_mass(model, step.params),
                                hp["replacement_rate"], hp["maturity"], hp["utility_decay"])
    widths = units.units_of(model, step.previous_params)
    # measured on schedule only, under a cond on the unbatched step counter
    replace = jax.lax.cond(
        (step.task_step + 1) % redo_every == 0,
        lambda: dormant_units(activity(), hp["redo_tau"]),
        lambda: {n: jnp.zeros((u,), bool) for n, u in widths.items()})
    return state, replace

  def after_update(step, state, hp):
    state, replace = replaced(step, state, hp)
    fresh_params, fresh_model_state = model.init(step.key)
    params, model_state, masks = reset_units(model, step.params, step.model_state, fresh_params,
                                             fresh_model_state, replace)
    opt_state = reset_base_optimizer_state(optimizer, step.opt_state, params, masks.touched)
    return step._replace(params=params, model_state=model_state, opt_state=opt_state), state

  if kind == "cbp":
    def task_start(boundary, state, hp):
      del hp
      if restart_each_task:
        state = select(boundary.task.index > 0, init_unit_state(model, boundary.params), state)
      return boundary, state

    return Component(
        "unit_reset", init=lambda params, model_state, key: init_unit_state(model, params),
        hparams={"replacement_rate": replacement_rate, "maturity": maturity,
                 "utility_decay": utility_decay},
        task_start=task_start, after_update=after_update, element_counts=True)
  if kind != "redo":
    raise ValueError(f"unit_reset: {kind!r} is not accepted; choose one of "
                     f"{', '.join(UNIT_RESETS[1:])}")
  return Component("unit_reset", hparams={"redo_tau": redo_tau}, after_update=after_update,
                   element_counts=True)


SETTINGS = (
    Setting("reset", "none", "what to re-initialize at each task boundary (timestep: Adam's "
            "step count only, its moments kept: Adam-Rel)", str, RESETS),
    Setting("shrink_perturb", "none", "shrink & perturb theta <- (1 - shrink) theta + perturb "
            "eps: every step, at each task boundary, or none", str, SHRINK_PERTURB),
    Setting("shrink", 1e-4, "shrink_perturb: shrink, in [0, 1]", float, check=Number(0.0, 1.0),
            acts_with=("shrink_perturb", SHRINK_PERTURB[1:]), traced=True),
    Setting("perturb", 1e-4, "shrink_perturb: perturb, the noise scale", float,
            check=Number(0.0), acts_with=("shrink_perturb", SHRINK_PERTURB[1:]), traced=True),
    Setting("perturb_noise", "gaussian", "shrink_perturb: eps is standard normal, or a fresh "
            "init (Ash & Adams)", str, PERTURB_NOISES,
            acts_with=("shrink_perturb", SHRINK_PERTURB[1:])),
    Setting("unit_reset", "none", "re-initialize hidden units: cbp (continual backprop, every "
            "step) or redo (dormant units, every redo_every steps)", str, UNIT_RESETS),
    Setting("replacement_rate", 1e-4, "cbp: units replaced per eligible unit and step", float,
            check=Number(0.0, 1.0), acts_with=("unit_reset", ("cbp",)), traced=True),
    Setting("maturity", 100, "cbp: steps before a unit may be replaced", int,
            check=Integer(0), acts_with=("unit_reset", ("cbp",)), traced=True),
    Setting("utility_decay", 0.99, "cbp: decay of the running contribution utility", float,
            check=Number(0.0, 1.0, high_open=True), acts_with=("unit_reset", ("cbp",)),
            traced=True),
    Setting("redo_every", 1000, "redo: steps of a task between resets of dormant units", int,
            check=Integer(1), acts_with=("unit_reset", ("redo",))),
    Setting("redo_tau", 0.1, "redo: a unit is dormant when its mean |activation| / the layer's "
            "mean <= tau", float, check=Number(0.0), acts_with=("unit_reset", ("redo",)),
            traced=True),
)
