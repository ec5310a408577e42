"""The noise-curvature per-layer step-size scheduler (method.md sections 3-4).

`noise_curvature_scheduler(inner, ...)` wraps any optax optimizer and scales
each layer's updates by a multiplier that it cools when the layer's effective
step exceeds its threshold and warms early in a task when the step is far
below it (paper Algorithm 1). It is an `optax.GradientTransformationExtraArgs`
and needs nothing but jax and optax:

    import jax, jax.numpy as jnp, optax
    from trainability.scheduler import noise_curvature_scheduler

    params = {"hidden": {"kernel": jnp.ones((4, 8)) * 0.3, "bias": jnp.zeros(8)},
              "output": {"kernel": jnp.ones((8, 3)) * 0.1, "bias": jnp.zeros(3)}}

    def example_loss(params, example):              # one example's loss
      x, y = example
      h = jax.nn.relu(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])
      logits = h @ params["output"]["kernel"] + params["output"]["bias"]
      return optax.softmax_cross_entropy_with_integer_labels(logits, y)

    def mean_loss(params, batch):
      return jax.vmap(example_loss, in_axes=(None, 0))(params, batch).mean()

    tx = noise_curvature_scheduler(optax.adam(1e-3), learning_rate=1e-3,
                                   steps_per_task=200, check_every=10)

    @jax.jit
    def train_step(params, state, batch, task_step):
      grads = jax.grad(mean_loss)(params, batch)
      updates, state = tx.update(grads, state, params, example_loss=example_loss,
                                 batch=batch, task_step=task_step, step=task_step)
      return optax.apply_updates(params, updates), state

    state = tx.init(params)
    batch = (jax.random.normal(jax.random.key(0), (32, 4)), jnp.arange(32) % 3)
    for task_step in range(20):
      params, state = train_step(params, state, batch, task_step)
    print(state.last.lam, state.last.multiplier)    # the last check, per layer

Extra arguments of `update` (keywords):
* `example_loss(params, example) -> scalar` and `batch` (a pytree of arrays
  with a leading batch axis): the per-example loss and the minibatch of this
  step. Used on check steps only: per-example gradients (vmap) give sigma2_ps
  and ||g||^2, and Hessian-vector products of the batch's mean loss give each
  layer's top eigenvalue.
* `task_step`: steps since the current task began (0 at its first step). It
  tells the transform about task boundaries: warming is allowed only while
  task_step < warm_fraction * steps_per_task. Without it (None), nothing warms.
* `gradient_noise(params, grads) -> estimators.GradientNoise`: optional, a
  cheaper way to the per-example statistics that the caller knows for its
  model (e.g. `estimators.dense_gradient_noise` for dense networks); called on
  check steps only. Without it, per-example gradients of `example_loss` are used.
* `step`: the global step, if the caller has one that is the same for every
  vmapped seed (a scan counter). Checks run when step % check_every == 0. Under
  `vmap` over seeds, a check schedule read from the (batched) state would turn
  `lax.cond` into a select that runs the check on every step; pass `step` from
  an unbatched loop counter to keep checks on schedule. Without it the
  transform counts steps itself (fine under jit without vmap).
* `element_mask`: optional, a params-shaped tree of 0/1 marking the
  network's own parameters, 0 for padding: a narrower network run embedded in
  a wider one with zero padding units (`trainability.sweep`). Adam's means
  in the effective step are taken over the marked elements only and the
  curvature directions stay on them, so the checks measure the narrow
  network. Without it, every element counts.

* any other keyword goes on to `inner.update` (optax's extra-args contract):
  `value=loss` for an inner `optax.contrib.reduce_on_plateau`, say.

Every per-layer quantity of the last check is in `state.last` (a `Check`).

The threshold a layer's step is held below has three modes (`threshold`),
derived in docs/thresholds.md:
* "paper": Eq. (2)-(3), alpha~* = B ||g||^2 / (sigma2 + beta ||g||^2 Vol).
* "reference" (the default): the reference code's (sheeerio/continual, branch sept) noise
  proxies, named as its `--param` (`REFERENCE_PARAMS`; its default sqm10 is
  sigma2 + 20 ||g||^2 (lam_bar^2 / mu)^2), with its one global Adam normaliser.
* "stability": the paper's descent condition kept whole, in like units: the
  layer's step times its curvature (the window's mean plus a Cantelli margin
  for its volatility) must stay below 2 a / (1 + a), a = alpha*_g, where the
  paper relaxes it to alpha < 2 a / lam and then to alpha < a.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from trainability import estimators
from trainability.components import Component
from trainability.settings import Integer, Number, Setting
# The signals the scheduler decides on (re-exported: the names of earlier versions).
from trainability.signals import (  # noqa: F401
    CURVATURES, DEFAULTS, EFFECTIVE_STEPS, MODE_DEFAULTS, MODE_SETTINGS, REFERENCE_PARAMS,
    THRESHOLDS, UNBOUNDED, VARIANCES, Check, SignalSettings, Signals, WindowStatistics,
    Thresholds, adam_effective_step, combined_threshold, curvature_signal, find_state,
    generic_effective_step, global_adam_normaliser, init_signals, layer_step, normaliser_of,
    observe, reference_term, window_statistics)

SCHEDULERS = ("none", "noise_curvature", "trac")
WARM_WINDOWS = ("task", "run")
# The rule's settings (the signals' are signals.SETTINGS).
SETTINGS = (
    Setting("scheduler", "none", "step-size scheduler wrapped around the optimizer: "
            "noise_curvature (per layer, this library's method) or trac (TRAC, Muppidi et al. "
            "2024: a parameter-free scale of the displacement from the initialization; "
            "trainability/trac.py)", str, SCHEDULERS),
    Setting("check_every", 40, "noise_curvature: K, steps of a task between checks", int,
            check=Integer(1)),
    Setting("safety", 0.8, "noise_curvature: gamma; cool when step > gamma * threshold", float,
            check=Number(0.0, low_open=True)),
    Setting("cool", 0.99, "noise_curvature: factor applied when cooling, in (0, 1]", float,
            check=Number(0.0, 1.0, low_open=True)),
    Setting("warm", 1.01, "noise_curvature: factor applied when warming, >= 1", float,
            check=Number(1.0)),
    Setting("warm_fraction", 0.3, "noise_curvature: warming allowed in this first fraction of "
            "a task, in [0, 1]", float, check=Number(0.0, 1.0)),
    Setting("warm_window", "task", "noise_curvature: what warm_fraction is a fraction of: "
            "task (paper: the first steps of every task) or run (reference code: the run's "
            "update count against one task's length, so only early in the first task)", str,
            WARM_WINDOWS),
    Setting("max_multiplier", math.inf, "noise_curvature: ceiling on each layer's "
            "learning-rate multiplier (inf: none); a multiplier held at it is flagged in "
            "checks.csv (at_ceiling) and the run's summary", float, check=Number(1.0)),
    Setting("floor", 0.0, "noise_curvature: cool only when the step exceeds this (Algorithm 1 "
            "as published and the reference code: 0.12)", float, check=Number(0.0)),
)
RULE = {s.name: s.default for s in SETTINGS}

# Arguments that fix shapes, loop lengths or code paths; with
# optax.inject_hyperparams pass static_args=STATIC_ARGS (the float
# hyperparameters stay injectable).
STATIC_ARGS = ("check_every", "window", "warm_window", "curvature", "curvature_steps",
               "curvature_tol", "steps_per_task", "seed", "variance", "effective_step",
               "group_fn", "threshold", "reference_param")


class NoiseCurvatureState(NamedTuple):
  inner: Any
  count: jax.Array          # updates so far
  multiplier: jax.Array     # (G,)
  eigenvectors: Any         # params-shaped, unit per layer: warm start of the curvature
  window: jax.Array         # (W, G) ring buffer of lam_bar; check c writes row c % W
  checks: jax.Array         # checks so far
  key: jax.Array
  last: Check


def noise_curvature_scheduler(
    inner: optax.GradientTransformation,
    *,
    threshold: str = DEFAULTS.threshold,
    check_every: int = RULE["check_every"],
    window: int = DEFAULTS.window,
    safety: float = RULE["safety"],
    cool: float = RULE["cool"],
    warm: float = RULE["warm"],
    beta: float | None = DEFAULTS.beta,
    delta: float | None = DEFAULTS.delta,
    reference_param: str | None = DEFAULTS.reference_param,
    kappa: float = DEFAULTS.kappa,
    warm_fraction: float = RULE["warm_fraction"],
    warm_window: str = RULE["warm_window"],
    max_multiplier: float = RULE["max_multiplier"],
    steps_per_task: int | None = None,
    floor: float = RULE["floor"],
    curvature: str = DEFAULTS.curvature,
    curvature_steps: int = DEFAULTS.curvature_steps,
    curvature_tol: float = DEFAULTS.curvature_tol,
    variance: str = DEFAULTS.variance,
    effective_step: str = DEFAULTS.effective_step,
    learning_rate: float | None = None,
    momentum: float | None = None,
    group_fn: Callable[[Any], Any] | None = None,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  """Per-layer learning-rate multipliers kept below the noise-curvature threshold.

  Args:
    inner: the optimizer whose updates are scaled (adam, sgd, any optax chain).
    threshold, beta, delta, reference_param, kappa, window, variance, curvature,
      curvature_steps, curvature_tol, effective_step: how the signals are
      measured and combined, documented on `signals.SignalSettings` (the
      threshold's modes in the module docstring and docs/thresholds.md).
      No mode meets both of the goals set for the defaults (beat every fixed
      Adam rate on the main benchmark, cost nothing where plain training
      stays trainable); "reference" costs least where training works
      (experiments/README.md, scheduler_modes).
    check_every: K, steps between checks (paper 40, reference code 400).
    safety: gamma; a layer cools when alpha > gamma * alpha_tilde (paper 0.8).
    cool, warm: multiplicative factors (paper 0.99, 1.01).
    warm_fraction: warming is allowed in the first warm_fraction of a task
      (paper 0.3; reference code 0.1), when alpha < 0.3 * gamma * alpha_tilde.
    warm_window: "task" (default, Algorithm 1): warm while task_step <
      warm_fraction * steps_per_task, early in every task; "run" (reference
      code): while the run's updates before this one are fewer, so only early
      in the first task.
    max_multiplier: a ceiling on each layer's multiplier (default inf: none;
      Algorithm 1 has none, and the paper100 CReLU run warmed to 1e8x).
    steps_per_task: T_task, for the warm window (None: never warm).
    floor: cool only layers with alpha > floor. 0 (default) is off; 0.12 is
      Algorithm 1 as published (and the reference code's floor).
    learning_rate, momentum: the inner optimizer's base learning rate (and sgd
      momentum) for the adam/sgd effective steps; read from an
      `optax.inject_hyperparams` state when there is one, which takes
      precedence.
    group_fn: params -> a tree of layer labels; default: top-level keys.
    seed: seeds the curvature estimator's first directions.
  """
  settings = SignalSettings(threshold, beta, delta, reference_param, kappa, window, variance,
                            curvature, curvature_steps, curvature_tol, effective_step).resolved()
  if not isinstance(check_every, int) or check_every < 1:
    raise ValueError(f"check_every: {check_every!r} is not accepted; give an integer >= 1")
  inner = optax.with_extra_args_support(inner)  # forwards what the scheduler does not use
  if warm_window not in WARM_WINDOWS:
    raise ValueError(f"warm_window: {warm_window!r} is not accepted; choose one of "
                     f"{', '.join(WARM_WINDOWS)}")
  rule = _Rule(settings, safety, cool, warm, warm_fraction, warm_window, max_multiplier,
               steps_per_task, floor, learning_rate, momentum)

  def init(params) -> NoiseCurvatureState:
    return _init_state(inner, params, group_fn, window, seed)

  def update(updates, state, params=None, *, example_loss=None, batch=None,
             task_step=None, step=None, gradient_noise=None, element_mask=None, **extra):
    if params is None:
      raise ValueError("params: noise_curvature_scheduler needs params in update()")
    if example_loss is None or batch is None:
      raise ValueError("example_loss, batch: noise_curvature_scheduler needs both in update()")
    layers = estimators.layers_of(params, group_fn)
    grads = updates
    # Arguments the scheduler does not take go on to the inner transform (optax's
    # extra-args contract: e.g. `value=` for optax.contrib.reduce_on_plateau).
    inner_updates, inner_state = inner.update(grads, state.inner, params, **extra)
    count = state.count + 1
    scaled = _scale(layers, inner_updates, state.multiplier)
    state = state._replace(inner=inner_state, count=count)
    at = count if step is None else jnp.asarray(step) + 1
    due = (at % check_every) == 0

    def run_check(state):
      return _check(rule, state, layers, grads, scaled, params, example_loss, batch, task_step,
                    at, gradient_noise, element_mask)

    state = jax.lax.cond(due, run_check, lambda s: s, state)
    return scaled, state

  return optax.GradientTransformationExtraArgs(init, update)


class _Rule(NamedTuple):
  """The scheduler's static settings, as `_check` reads them."""

  settings: SignalSettings
  safety: float
  cool: float
  warm: float
  warm_fraction: float
  warm_window: str
  max_multiplier: float
  steps_per_task: int | None
  floor: float
  learning_rate: float | None
  momentum: float | None


def _init_state(inner, params, group_fn, window: int, seed: int) -> NoiseCurvatureState:
  layers = estimators.layers_of(params, group_fn)
  g = layers.count
  zeros = jnp.zeros((g,), jnp.float32)
  key = jax.random.key(seed)
  last = Check(jnp.zeros((), jnp.int32), *([zeros] * 11), *([jnp.zeros((g,), bool)] * 3))
  return NoiseCurvatureState(
      inner=inner.init(params),
      count=jnp.zeros((), jnp.int32),
      multiplier=jnp.ones((g,), jnp.float32),
      eigenvectors=estimators.random_unit_vectors(key, params, layers),
      window=jnp.zeros((window, g), jnp.float32),
      checks=jnp.zeros((), jnp.int32),
      key=key,
      last=last,
  )


def _check(rule: _Rule, state, layers, grads, scaled, params, example_loss, batch, task_step,
           at, gradient_noise, element_mask) -> NoiseCurvatureState:
  """One check: measure each layer's signals, then cool, warm or keep its multiplier."""
  key, measure_key = jax.random.split(state.key)
  step, agg = layer_step(rule.settings.effective_step, layers, state.inner, state.count,
                         state.multiplier, grads, scaled, rule.learning_rate, rule.momentum,
                         normaliser=normaliser_of(rule.settings), mask=element_mask)
  signals, m = observe(
      Signals(state.window, state.eigenvectors, state.checks), layers, params, grads,
      example_loss, batch, step, agg, measure_key, rule.settings, gradient_noise=gradient_noise,
      mask=element_mask)
  # Updates before this one, of the task or of the run (state.count includes this one).
  before = task_step if rule.warm_window == "task" else state.count - 1
  in_warm_window = (
      jnp.bool_(False) if before is None or rule.steps_per_task is None
      else jnp.asarray(before) < rule.warm_fraction * rule.steps_per_task)
  decision = decide(step, m.alpha_tilde, rule.safety, rule.floor, in_warm_window,
                    ready=signals.checks >= 2)
  factor = jnp.where(decision.cool, rule.cool, jnp.where(decision.warm, rule.warm, 1.0))
  multiplier = jnp.minimum(state.multiplier * factor, rule.max_multiplier)
  last = m._replace(step=jnp.asarray(at, jnp.int32), alpha=step * factor,
                    multiplier=multiplier, cooled=decision.cool, warmed=decision.warm)
  return state._replace(multiplier=multiplier, eigenvectors=signals.eigenvectors,
                        window=signals.window, checks=signals.checks, key=key, last=last)


def state_of(opt_state) -> NoiseCurvatureState | None:
  """The scheduler's state inside an optimizer state (None if there is none)."""
  return find_state(opt_state, NoiseCurvatureState)


def multiplier_of(opt_state):
  """The scheduler's per-layer learning-rate multipliers in `opt_state`, or None."""
  state = state_of(opt_state)
  return None if state is None else state.multiplier


def as_component(check_every: int = RULE["check_every"], *, example_loss=None,
                 dense_inputs=None, element_mask=None, **settings) -> Component:
  """The scheduler as a run component: it wraps the run's optimizer
  (`noise_curvature_scheduler(tx, check_every=check_every, **settings)`),
  supplies the extra arguments of its `update` (`update_args`), and records
  its last check (a `Check`) after each check step of a task.

  example_loss(params, model_state, example): one example's loss (eval mode).
  dense_inputs(params, model_state, x): the model's dense-layer inputs, for
  the cheaper dense noise statistics (None: per-example gradients).
  element_mask(params, model_state): the network's own elements, or None
  (`units.real_elements`, for a narrower net embedded in a wider one).
  The noise is the data loss's, centred on its gradient (`Pending.grads`),
  not the penalised gradient the optimizer sees.
  """
  if example_loss is None:
    raise ValueError("example_loss: the scheduler component needs the run's per-example loss")
  wrap = lambda tx: noise_curvature_scheduler(tx, check_every=check_every, **settings)

  def update_args(pending, state, hp):
    del state, hp
    loss_i = lambda p, example: example_loss(p, pending.model_state, example)
    noise = estimators.data_noise_fn(loss_i, pending.batch, dense_inputs, pending.model_state,
                                     pending.grads)
    args = dict(example_loss=loss_i, batch=pending.batch, task_step=pending.task_step,
                step=pending.task_step, gradient_noise=noise)
    mask = None if element_mask is None else element_mask(pending.params, pending.model_state)
    return args if mask is None else {**args, "element_mask": mask}

  record = lambda step, state, hp: (state_of(step.opt_state).last, state)
  return Component("scheduler", wrap_optimizer=wrap, record=record, every=check_every,
                   update_args=update_args, multiplier=multiplier_of)


def _scale(layers, updates, multiplier):
  return jax.tree.map(lambda u, i: u * multiplier[i].astype(u.dtype), updates, layers.index)


class Decision(NamedTuple):
  cool: jax.Array
  warm: jax.Array


def decide(alpha, alpha_tilde, safety, floor, in_warm_window, ready=True) -> Decision:
  """Algorithm 1's rule per layer.

  cool if alpha > safety * alpha_tilde and alpha > floor; else warm if in the
  task's warm window and alpha < 0.3 * safety * alpha_tilde. Nothing fires
  until `ready` (the window holds at least two values), nor where
  alpha_tilde is 0 (a layer without gradient signal: as in the reference
  code, a zero target decides nothing).
  """
  ready = ready & (alpha_tilde > 0)
  cool = ready & (alpha > safety * alpha_tilde) & (alpha > floor)
  warm = ready & ~cool & in_warm_window & (alpha < 0.3 * safety * alpha_tilde)
  return Decision(cool, warm)


__all__ = [
    "SCHEDULERS", "SETTINGS", "STATIC_ARGS", "NoiseCurvatureState", "noise_curvature_scheduler",
    "state_of",
    "multiplier_of", "as_component", "Decision", "decide",
]
