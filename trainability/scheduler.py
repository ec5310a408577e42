"""The noise-curvature per-layer step-size scheduler (method.md sections 3-4).

`noise_curvature_scheduler(inner, ...)` wraps any optax optimizer and scales
each layer's updates by a multiplier that it cools when the layer's effective
step exceeds its threshold and warms early in a task when the step is far
below it (paper Algorithm 1). It is an `optax.GradientTransformationExtraArgs`:

    tx = noise_curvature_scheduler(optax.adam(1e-3), steps_per_task=2000)
    state = tx.init(params)
    grads = jax.grad(mean_loss)(params, batch)
    updates, state = tx.update(grads, state, params,
                               example_loss=example_loss, batch=batch,
                               task_step=task_step)

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

Every per-layer quantity of the last check is in `state.last` (a `Check`).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from trainability import estimators
from trainability.config import EFFECTIVE_STEPS, VARIANCES
from trainability.estimators import UNBOUNDED, safe_ratio

# Arguments that fix shapes or loop lengths; with optax.inject_hyperparams pass
# static_args=STATIC_ARGS (the float hyperparameters stay injectable).
STATIC_ARGS = ("check_every", "window", "power_iterations", "steps_per_task", "seed",
               "variance", "effective_step", "group_fn")


class Check(NamedTuple):
  """Per-layer quantities of the last check, each (G,), plus its step."""

  step: jax.Array
  alpha: jax.Array          # effective step of the layer (after this check's decision)
  alpha_g: jax.Array        # gradient-noise bound B ||g||^2 / sigma2
  alpha_vol: jax.Array      # curvature-volatility bound 1 / (kappa * Vol)
  alpha_tilde: jax.Array    # combined threshold B ||g||^2 / (sigma2 + beta ||g||^2 Vol)
  lam: jax.Array            # top eigenvalue of the layer's Hessian block
  lam_bar: jax.Array        # normalized sharpness (lam * alpha_agg for Adam)
  mu: jax.Array             # window mean of lam_bar
  vol: jax.Array            # s2 / mu
  sigma2: jax.Array         # per-example gradient variance
  grad_sq: jax.Array        # ||g||^2 of the minibatch gradient
  multiplier: jax.Array     # the layer's learning-rate multiplier
  crossed: jax.Array        # alpha > alpha_tilde (before the decision), for rho_hat
  cooled: jax.Array
  warmed: jax.Array


class NoiseCurvatureState(NamedTuple):
  inner: Any
  count: jax.Array          # updates so far
  multiplier: jax.Array     # (G,)
  eigenvectors: Any         # params-shaped, unit per layer: warm start of power iteration
  window: jax.Array         # (W, G) ring buffer of lam_bar; check c writes row c % W
  checks: jax.Array         # checks so far
  key: jax.Array
  last: Check


def noise_curvature_scheduler(
    inner: optax.GradientTransformation,
    *,
    check_every: int = 40,
    window: int = 30,
    safety: float = 0.8,
    cool: float = 0.99,
    warm: float = 1.01,
    beta: float = 1.0,
    kappa: float = 1.0,
    warm_fraction: float = 0.3,
    steps_per_task: int | None = None,
    floor: float = 0.0,
    power_iterations: int = 1,
    variance: str = "windowed",
    effective_step: str = "auto",
    learning_rate: float | None = None,
    momentum: float | None = None,
    group_fn: Callable[[Any], Any] | None = None,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  """Per-layer learning-rate multipliers kept below the noise-curvature threshold.

  Args:
    inner: the optimizer whose updates are scaled (adam, sgd, any optax chain).
    check_every: K, steps between checks (paper 40); checks only then.
    window: W, observations of normalized sharpness in the window (paper 30).
    safety: gamma; a layer cools when alpha > gamma * alpha_tilde (paper 0.8).
    cool, warm: multiplicative factors (paper 0.99, 1.01).
    beta: weight of the volatility term in the combined threshold (paper
      [0, 1]; the reference code's variants use 10 or 20). With Adam, beta
      of order 1 leaves alpha_tilde near alpha_g ~ 1, far above Adam's
      effective step, so the rule mostly warms; on the library's main
      benchmark 1e5 (with cool 0.9, warm_fraction 0.1) is the value that
      works (experiments/README.md). Find it per setting.
    kappa: alpha_vol = 1 / (kappa * Vol).
    warm_fraction: warming is allowed in the first warm_fraction of a task
      (paper 0.3; reference code 0.1), when alpha < 0.3 * gamma * alpha_tilde.
    steps_per_task: T_task, for the warm window (None: never warm).
    floor: cool only layers with alpha > floor (default 0: off; the reference
      code's hard floor is 0.12, which can stop the controller from firing).
    power_iterations: HVP iterations per check and layer, warm-started from
      the previous check's eigenvectors (default 1: a power iteration that
      runs across checks, one step per check).
    variance: "windowed" (paper: variance of the window) or "instantaneous"
      (reference code: (lam_bar - mu)^2 of the newest value).
    effective_step: how a layer's step is measured, weights only:
      "adam" (reference: eta / ((1 - b1^t) (sqrt(mean v / (1 - b2^t)) + eps))
      per kernel, averaged over the layer's kernels); "adam_elementwise"
      (paper: the mean of the elementwise multiplier); "sgd"
      (eta (1 - m^t) / (1 - m)); "generic" (-<u, g> / ||g||^2, the step along
      the gradient that the final update u makes, for any optimizer); "auto":
      adam if the inner state holds Adam moments, else generic.
    learning_rate, momentum: the inner optimizer's base learning rate (and sgd
      momentum) for the adam/sgd effective steps; read from an
      `optax.inject_hyperparams` state when there is one, which takes
      precedence.
    group_fn: params -> a tree of layer labels; default: top-level keys.
    seed: seeds the power iteration's first directions.
  """
  if variance not in VARIANCES:
    raise ValueError(f"variance: {variance!r} is not accepted; choose one of {', '.join(VARIANCES)}")
  if effective_step not in EFFECTIVE_STEPS:
    raise ValueError(
        f"effective_step: {effective_step!r} is not accepted; choose one of "
        f"{', '.join(EFFECTIVE_STEPS)}")
  for name, value in (("check_every", check_every), ("window", window),
                      ("power_iterations", power_iterations)):
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"{name}: {value!r} is not accepted; give an integer >= 1")

  def init(params) -> NoiseCurvatureState:
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

  def update(updates, state, params=None, *, example_loss=None, batch=None,
             task_step=None, step=None, gradient_noise=None, **extra):
    del extra  # arguments for other transforms of a chain
    if params is None:
      raise ValueError("params: noise_curvature_scheduler needs params in update()")
    if example_loss is None or batch is None:
      raise ValueError("example_loss, batch: noise_curvature_scheduler needs both in update()")
    layers = estimators.layers_of(params, group_fn)
    grads = updates
    inner_updates, inner_state = inner.update(grads, state.inner, params)
    count = state.count + 1
    scaled = _scale(layers, inner_updates, state.multiplier)
    state = state._replace(inner=inner_state, count=count)
    at = count if step is None else jnp.asarray(step) + 1
    due = (at % check_every) == 0

    def run_check(state):
      return _check(state, layers, grads, scaled, params, example_loss, batch, task_step, at,
                    gradient_noise)

    state = jax.lax.cond(due, run_check, lambda s: s, state)
    return scaled, state

  def _check(state, layers, grads, scaled, params, example_loss, batch, task_step, at,
             gradient_noise):
    key, measure_key = jax.random.split(state.key)
    step, agg = layer_step(effective_step, layers, state.inner, state.count, state.multiplier,
                           grads, scaled, learning_rate, momentum)
    signals, m = observe(
        Signals(state.window, state.eigenvectors, state.checks), layers, params, grads,
        example_loss, batch, step, agg, measure_key, beta=beta, kappa=kappa,
        variance=variance, power_iterations=power_iterations, gradient_noise=gradient_noise)
    in_warm_window = (
        jnp.bool_(False) if task_step is None or steps_per_task is None
        else jnp.asarray(task_step) < warm_fraction * steps_per_task)
    decision = decide(step, m.alpha_tilde, safety, floor, in_warm_window,
                      ready=signals.checks >= 2)
    factor = jnp.where(decision.cool, cool, jnp.where(decision.warm, warm, 1.0))
    multiplier = state.multiplier * factor
    last = m._replace(step=jnp.asarray(at, jnp.int32), alpha=step * factor,
                      multiplier=multiplier, cooled=decision.cool, warmed=decision.warm)
    return state._replace(multiplier=multiplier, eigenvectors=signals.eigenvectors,
                          window=signals.window, checks=signals.checks, key=key, last=last)

  return optax.GradientTransformationExtraArgs(init, update)



class Signals(NamedTuple):
  """What the noise-curvature signals carry from one observation to the next."""

  window: jax.Array        # (W, G) ring buffer of lam_bar; observation c writes row c % W
  eigenvectors: Any        # params-shaped, unit per layer: warm start of power iteration
  checks: jax.Array        # observations so far


def init_signals(params, layers: estimators.Layers, window: int, key) -> Signals:
  return Signals(jnp.zeros((window, layers.count), jnp.float32),
                 estimators.random_unit_vectors(key, params, layers), jnp.zeros((), jnp.int32))


def observe(signals: Signals, layers, params, grads, example_loss, batch, step, agg, key, *,
            beta, kappa=1.0, variance="windowed", power_iterations=1,
            gradient_noise=None) -> tuple[Signals, Check]:
  """One observation of every per-layer noise-curvature quantity (no decision).

  `step`, `agg`: (G,) the layers' effective steps and sharpness normalisers
  (`layer_step`). Measures sigma2_ps and ||g||^2 (per-example gradients of
  `example_loss` on `batch`, or the `gradient_noise(params, grads)`
  callback), each layer's top Hessian-block eigenvalue (warm-started power
  iteration), puts lam_bar in the window and forms Vol and the thresholds.
  The returned Check has step 0, multiplier 1 and no cool/warm decision; the
  scheduler fills those in. Shared with the diagnostics (`indicators`).
  """
  if gradient_noise is None:
    noise = estimators.gradient_noise(example_loss, params, batch, layers, mean_grads=grads)
  else:
    noise = gradient_noise(params, grads)
  mean_loss = lambda p: jnp.mean(jax.vmap(example_loss, in_axes=(None, 0))(p, batch))
  eigen = estimators.power_iteration(mean_loss, params, layers, signals.eigenvectors,
                                     power_iterations, key=key)
  lam = eigen.values
  lam_bar = jnp.maximum(lam * agg, 0.0)  # negative curvature adds no instability
  size = signals.window.shape[0]
  newest = signals.checks % size
  window = signals.window.at[newest].set(lam_bar)
  filled = jnp.minimum(signals.checks + 1, size)
  stats = window_statistics(window, filled, newest, variance)
  thresholds = combined_threshold(noise, stats.vol, beta, kappa)
  no = jnp.zeros((layers.count,), bool)
  check = Check(
      step=jnp.zeros((), jnp.int32), alpha=step, alpha_g=thresholds.alpha_g,
      alpha_vol=thresholds.alpha_vol, alpha_tilde=thresholds.alpha_tilde, lam=lam,
      lam_bar=lam_bar, mu=stats.mu, vol=stats.vol, sigma2=noise.sigma2,
      grad_sq=noise.grad_sq, multiplier=jnp.ones((layers.count,), jnp.float32),
      crossed=step > thresholds.alpha_tilde, cooled=no, warmed=no)
  return Signals(window, eigen.vectors, signals.checks + 1), check


def layer_step(kind, layers, opt_state, count, multiplier, grads, updates,
               learning_rate=None, momentum=None):
  """(alpha (G,), alpha_agg (G,)): each layer's effective step, and the sharpness normaliser.

  kind: "adam", "adam_elementwise" (read from the Adam moments in
  `opt_state`), "sgd" (eta (1 - m^t) / (1 - m), t = `count`), "generic"
  (-<u, g> / ||g||^2 of the final `updates`) or "auto" (adam if `opt_state`
  holds Adam moments, else generic). eta is the learning rate in an
  `optax.inject_hyperparams` state, else `learning_rate`, times `multiplier`.
  alpha_agg is 1 except for Adam.
  """
  if kind == "auto":
    kind = "adam" if _find(opt_state, optax.ScaleByAdamState) is not None else "generic"
  hyper = _find(opt_state, _INJECTED_STATES)
  hparams = {} if hyper is None else hyper.hyperparams
  eta = hparams.get("learning_rate", learning_rate)
  if kind in ("adam", "adam_elementwise", "sgd") and eta is None:
    raise ValueError(
        f"learning_rate: effective_step {kind!r} needs the inner optimizer's learning "
        "rate; pass learning_rate= or wrap the optimizer in optax.inject_hyperparams")
  if kind in ("adam", "adam_elementwise"):
    adam = _find(opt_state, optax.ScaleByAdamState)
    if adam is None:
      raise ValueError(f"effective_step: {kind!r} needs an Adam-like inner optimizer")
    b1, b2 = hparams.get("b1", 0.9), hparams.get("b2", 0.999)
    eps = hparams.get("eps", 1e-8)
    return adam_effective_step(layers, adam.nu, adam.count, eta * multiplier,
                               b1, b2, eps, elementwise=kind == "adam_elementwise")
  if kind == "sgd":
    m = hparams.get("momentum", momentum)
    m = 0.0 if m is None else m
    t = jnp.asarray(count, jnp.float32)
    step = eta * multiplier * jnp.where(m > 0, (1 - m**t) / (1 - m + 1e-12), 1.0)
    return step, jnp.ones_like(step)
  step = generic_effective_step(layers, grads, updates)
  return step, jnp.ones_like(step)


def _scale(layers, updates, multiplier):
  return jax.tree.map(lambda u, i: u * multiplier[i].astype(u.dtype), updates, layers.index)


# optax has two unrelated classes for the state of inject_hyperparams.
_INJECTED_STATES = tuple(
    getattr(optax, name) for name in ("InjectHyperparamsState", "InjectStatefulHyperparamsState")
    if hasattr(optax, name))


def _find(tree, kind):
  """The first node of type `kind` in an optimizer state, or None."""
  found = [n for n in jax.tree.leaves(tree, is_leaf=lambda n: isinstance(n, kind))
           if isinstance(n, kind)]
  return found[0] if found else None


def adam_effective_step(layers, nu, count, eta, b1, b2, eps, elementwise=False):
  """Adam's per-layer effective step over the layer's kernels, and alpha_agg.

  eta: (G,) the layer's learning rate (base rate times multiplier).
  Reference form: per kernel eta / ((1 - b1^t) (sqrt(mean(nu) / (1 - b2^t)) + eps)),
  averaged over the layer's kernels; elementwise (paper's wording): the mean
  over the kernel's elements of eta / ((1 - b1^t) (sqrt(nu_i / (1 - b2^t)) + eps)).
  alpha_agg = eta / (sqrt(mean v_hat) + eps), the normaliser of the sharpness.
  Before the first update (t = 0) the step is defined as 0.
  `count` is Adam's step count, or a tree of per-element counts shaped like
  `nu` (`optim.scale_by_adam_per_element`): then the bias corrections are per
  element and an element that has not been updated since its reset counts 0.
  """
  if jax.tree.structure(count) == jax.tree.structure(nu) and jax.tree.leaves(count)[0].ndim:
    return _adam_effective_step_per_element(layers, nu, count, eta, b1, b2, eps, elementwise)
  t = jnp.asarray(count, jnp.float32)
  started = t > 0
  bc1 = jnp.where(started, 1 - b1**t, 1.0)
  bc2 = jnp.where(started, 1 - b2**t, 1.0)
  of_mean = jax.tree.map(lambda v: 1.0 / (jnp.sqrt(jnp.mean(v) / bc2) + eps), nu)
  agg = estimators.per_layer_mean(layers, of_mean, layers.is_weight)
  inverse_scale = agg
  if elementwise:
    per_element = jax.tree.map(lambda v: jnp.mean(1.0 / (jnp.sqrt(v / bc2) + eps)), nu)
    inverse_scale = estimators.per_layer_mean(layers, per_element, layers.is_weight)
  alpha = jnp.where(started, eta * inverse_scale / bc1, 0.0)
  return alpha, jnp.where(started, eta * agg, 0.0)


def _adam_effective_step_per_element(layers, nu, counts, eta, b1, b2, eps, elementwise):
  """adam_effective_step with one count per element (same values for equal counts)."""
  def corrections(t):
    t = t.astype(jnp.float32)
    started = t > 0
    return (started, jnp.where(started, 1 - b1**t, 1.0), jnp.where(started, 1 - b2**t, 1.0))

  def of_mean(v, t):
    _, _, bc2 = corrections(t)
    return 1.0 / (jnp.sqrt(jnp.mean(v / bc2)) + eps)

  def step(v, t):
    started, bc1, bc2 = corrections(t)
    inv_bc1 = jnp.where(started, 1.0 / bc1, 0.0)
    if elementwise:
      return jnp.mean(inv_bc1 / (jnp.sqrt(v / bc2) + eps))
    return jnp.mean(inv_bc1) * of_mean(v, t)

  agg = estimators.per_layer_mean(layers, jax.tree.map(of_mean, nu, counts), layers.is_weight)
  alpha = estimators.per_layer_mean(layers, jax.tree.map(step, nu, counts), layers.is_weight)
  started = estimators.per_layer_sum(
      layers, jax.tree.map(lambda t: jnp.max(t).astype(jnp.float32), counts)) > 0
  return eta * alpha, jnp.where(started, eta * agg, 0.0)


def generic_effective_step(layers, grads, updates):
  """-<u_l, g_l> / ||g_l||^2 over each layer's kernels; 0 where g_l = 0."""
  weights = layers.is_weight
  dot = jax.tree.map(lambda u, g, w: jnp.where(w, -jnp.vdot(u, g), 0.0), updates, grads, weights)
  norm = jax.tree.map(lambda g, w: jnp.where(w, jnp.vdot(g, g), 0.0), grads, weights)
  dot, norm = estimators.per_layer_sum(layers, dot), estimators.per_layer_sum(layers, norm)
  return jnp.where(norm > 0, dot / jnp.where(norm > 0, norm, 1.0), 0.0)


class WindowStatistics(NamedTuple):
  mu: jax.Array
  s2: jax.Array
  vol: jax.Array


def window_statistics(values, filled, newest, variance="windowed") -> WindowStatistics:
  """mu, s2 and Vol = s2 / mu of the first `filled` rows of a (W, G) window.

  `newest` is the row just written. "windowed": s2 is the window's
  (population) variance; "instantaneous": s2 = (newest value - mu)^2. Vol is 0
  where mu is 0 (no curvature, no volatility) and while fewer than 2 values exist.
  """
  w = values.shape[0]
  present = (jnp.arange(w) < filled)[:, None]
  n = jnp.maximum(filled, 1).astype(jnp.float32)
  mu = jnp.sum(jnp.where(present, values, 0.0), 0) / n
  if variance == "windowed":
    s2 = jnp.sum(jnp.where(present, (values - mu) ** 2, 0.0), 0) / n
  else:
    s2 = (values[newest] - mu) ** 2
  s2 = jnp.where(filled >= 2, s2, 0.0)
  vol = jnp.where(mu > 1e-12, s2 / jnp.where(mu > 1e-12, mu, 1.0), 0.0)
  return WindowStatistics(mu, s2, vol)


class Thresholds(NamedTuple):
  alpha_g: jax.Array
  alpha_vol: jax.Array
  alpha_tilde: jax.Array


def combined_threshold(noise: estimators.GradientNoise, vol, beta, kappa=1.0) -> Thresholds:
  """alpha*_g, alpha*_vol and alpha~* = B ||g||^2 / (sigma2 + beta ||g||^2 Vol)."""
  alpha_g = estimators.critical_step(noise)
  alpha_vol = safe_ratio(jnp.ones_like(vol), kappa * vol)
  s2_tilde = noise.sigma2 + beta * noise.grad_sq * vol
  alpha_tilde = safe_ratio(noise.batch_size * noise.grad_sq, s2_tilde)
  return Thresholds(alpha_g, alpha_vol, alpha_tilde)


class Decision(NamedTuple):
  cool: jax.Array
  warm: jax.Array


def decide(alpha, alpha_tilde, safety, floor, in_warm_window, ready=True) -> Decision:
  """Algorithm 1's rule per layer.

  cool if alpha > safety * alpha_tilde and alpha > floor; else warm if in the
  task's warm window and alpha < 0.3 * safety * alpha_tilde. Nothing fires
  until `ready` (the window holds at least two values).
  """
  cool = ready & (alpha > safety * alpha_tilde) & (alpha > floor)
  warm = ready & ~cool & in_warm_window & (alpha < 0.3 * safety * alpha_tilde)
  return Decision(cool, warm)


__all__ = [
    "STATIC_ARGS", "Check", "NoiseCurvatureState", "noise_curvature_scheduler", "adam_effective_step",
    "Signals", "init_signals", "observe", "layer_step",
    "generic_effective_step", "window_statistics", "combined_threshold", "decide",
    "UNBOUNDED",
]
