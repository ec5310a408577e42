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

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from trainability import estimators
from trainability.components import Component
from trainability.estimators import UNBOUNDED, safe_ratio

# The allowed values of the scheduler's and the signals' settings. config.py
# and the indicators take them from here.
THRESHOLDS = ("paper", "reference", "stability")
REFERENCE_PARAMS = ("sqm10", "sqm1", "scv10", "scv1", "svar10", "svar1", "ss10", "ss1",
                    "rqm10", "rqm1", "rcv10", "rcv1", "rvar10", "rvar1", "rs10", "rs1",
                    "s_tau", "r_tau")
CURVATURES = ("lanczos", "power")
VARIANCES = ("auto", "windowed", "instantaneous")
EFFECTIVE_STEPS = ("auto", "adam", "adam_elementwise", "sgd", "generic")

# Arguments that fix shapes, loop lengths or code paths; with
# optax.inject_hyperparams pass static_args=STATIC_ARGS (the float
# hyperparameters stay injectable).
STATIC_ARGS = ("check_every", "window", "curvature", "curvature_steps", "curvature_tol",
               "steps_per_task", "seed", "variance", "effective_step", "group_fn", "threshold",
               "reference_param")


class SignalSettings(NamedTuple):
  """How the noise-curvature signals are measured and combined: one place, one default each.

  The scheduler, the CLI's Config and the indicators all take their defaults
  from `SignalSettings()`. Mode-specific settings are None until set: beta
  acts with threshold "paper" (default 1), delta with "stability" (default
  0.1), reference_param with "reference" (default "sqm10").
  """

  threshold: str = "reference"                  # chosen from experiments/README.md (issue 10)
  beta: float | None = None
  delta: float | None = None
  reference_param: str | None = None
  kappa: float = 1.0
  window: int = 30
  variance: str = "auto"
  curvature: str = "lanczos"
  curvature_steps: int = 8                      # 1.5x plain Adam at K = 40 (benchmarks)
  curvature_tol: float = 0.01                   # lanczos only (DEFAULT_CURVATURE_TOL)
  effective_step: str = "auto"

  def resolved(self) -> "SignalSettings":
    """Checked, with each mode's own defaults filled in; a one-line ValueError if not valid."""
    for name, allowed in (("threshold", THRESHOLDS), ("curvature", CURVATURES),
                          ("variance", VARIANCES), ("effective_step", EFFECTIVE_STEPS)):
      if getattr(self, name) not in allowed:
        raise ValueError(f"{name}: {getattr(self, name)!r} is not accepted; choose one of "
                         f"{', '.join(allowed)}")
    for name in ("window", "curvature_steps"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: {value!r} is not accepted; give an integer >= 1")
    if not isinstance(self.curvature_tol, (int, float)) or not 0 <= self.curvature_tol < 1:
      raise ValueError(f"curvature_tol: {self.curvature_tol!r} is not accepted; give a number "
                       "in [0, 1)")
    for name, mode in MODE_SETTINGS.items():
      if getattr(self, name) is not None and self.threshold != mode:
        raise ValueError(f"{name}: has no effect with threshold {self.threshold!r}; it acts "
                         f"only with threshold {mode}")
    if self.curvature == "power" and self.curvature_tol != DEFAULT_CURVATURE_TOL:
      raise ValueError("curvature_tol: has no effect with curvature 'power'; it acts only "
                       "with curvature lanczos")
    for name, low, low_open, high in (("beta", 0.0, False, None), ("delta", 0.0, True, 1.0),
                                      ("kappa", 0.0, True, None)):
      value = getattr(self, name)
      if isinstance(value, (int, float)):  # concrete (an injected value is traced: unchecked)
        ok = (value > low if low_open else value >= low) and (high is None or value < high)
        if not ok:
          bounds = f"{'(' if low_open else '['}{low:g}, {'inf)' if high is None else f'{high:g})'}"
          raise ValueError(f"{name}: {value!r} is not accepted; give a number in {bounds}")
    if self.reference_param is not None and self.reference_param not in REFERENCE_PARAMS:
      raise ValueError(f"reference_param: {self.reference_param!r} is not accepted; choose "
                       f"one of {', '.join(REFERENCE_PARAMS)}")
    filled = {name: MODE_DEFAULTS[name] for name, mode in MODE_SETTINGS.items()
              if mode == self.threshold and getattr(self, name) is None}
    if self.variance == "auto":
      filled["variance"] = "instantaneous" if self.threshold == "reference" else "windowed"
    return self._replace(**filled)


DEFAULT_CURVATURE_TOL = SignalSettings._field_defaults["curvature_tol"]

# The settings that act in one threshold mode only, and their defaults there.
MODE_SETTINGS = {"beta": "paper", "delta": "stability", "reference_param": "reference"}
MODE_DEFAULTS = {"beta": 1.0, "delta": 0.1, "reference_param": "sqm10"}
DEFAULTS = SignalSettings()


class Check(NamedTuple):
  """Per-layer quantities of the last check, each (G,), plus its step."""

  step: jax.Array
  alpha: jax.Array          # effective step of the layer (after this check's decision)
  alpha_g: jax.Array        # gradient-noise bound B ||g||^2 / sigma2
  alpha_vol: jax.Array      # curvature-volatility bound 1 / (kappa * Vol)
  alpha_tilde: jax.Array    # combined threshold B ||g||^2 / (sigma2 + beta ||g||^2 Vol)
  lam: jax.Array            # top eigenvalue of the layer's Hessian block
  lam_bar: jax.Array        # the window's curvature signal (`curvature_signal`): normalized
                            # sharpness lam * alpha_agg, or raw lam (stability, reference r*)
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
  eigenvectors: Any         # params-shaped, unit per layer: warm start of the curvature
  window: jax.Array         # (W, G) ring buffer of lam_bar; check c writes row c % W
  checks: jax.Array         # checks so far
  key: jax.Array
  last: Check


def noise_curvature_scheduler(
    inner: optax.GradientTransformation,
    *,
    threshold: str = DEFAULTS.threshold,
    check_every: int = 40,
    window: int = DEFAULTS.window,
    safety: float = 0.8,
    cool: float = 0.99,
    warm: float = 1.01,
    beta: float | None = DEFAULTS.beta,
    delta: float | None = DEFAULTS.delta,
    reference_param: str | None = DEFAULTS.reference_param,
    kappa: float = DEFAULTS.kappa,
    warm_fraction: float = 0.3,
    steps_per_task: int | None = None,
    floor: float = 0.0,
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
    threshold: "reference" (default), "paper" or "stability" (module
      docstring and docs/thresholds.md). No mode meets both of the goals set
      for the defaults (beat every fixed Adam rate on the main benchmark,
      cost nothing where plain training stays trainable); "reference" costs
      least where training works (experiments/README.md, scheduler_modes).
    check_every: K, steps between checks (paper 40, reference code 400).
    window: W, observations of the curvature signal in the window (paper 30).
    safety: gamma; a layer cools when alpha > gamma * alpha_tilde (paper 0.8).
    cool, warm: multiplicative factors (paper 0.99, 1.01).
    beta: threshold "paper" only (default 1): weight of the volatility term
      (paper [0, 1]). With Adam, beta of order 1 leaves alpha_tilde near
      alpha_g ~ 1, far above Adam's effective step, so the rule only warms.
    delta: threshold "stability" only (default 0.1): the Cantelli tail
      probability; the margin is sqrt((1 - delta) / delta) window standard
      deviations above the window mean.
    reference_param: threshold "reference" only (default "sqm10"): the
      reference code's `--param` (REFERENCE_PARAMS).
    kappa: alpha_vol = 1 / (kappa * Vol) (recorded in every mode).
    warm_fraction: warming is allowed in the first warm_fraction of a task
      (paper 0.3; reference code 0.1), when alpha < 0.3 * gamma * alpha_tilde.
    steps_per_task: T_task, for the warm window (None: never warm).
    floor: cool only layers with alpha > floor. 0 (default) is off; 0.12 is
      Algorithm 1 as published (and the reference code's floor).
    curvature: "lanczos" (default: warm-started Lanczos, stopping when the
      residual bound is below curvature_tol of the value) or "power"
      (warm-started power iteration of exactly curvature_steps HVPs, the
      largest-magnitude eigenvalue; the reference code runs 100 from a fresh
      start).
    curvature_steps: HVPs per layer and check (lanczos: at most; default 8).
    curvature_tol: lanczos: relative residual at which it stops (default
      0.01; 0 always runs curvature_steps).
    variance: "windowed" (paper: variance of the window), "instantaneous"
      (reference code: (x - mu)^2 of the newest value), "auto" (instantaneous
      with threshold "reference", else windowed).
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
    seed: seeds the curvature estimator's first directions.
  """
  settings = SignalSettings(threshold, beta, delta, reference_param, kappa, window, variance,
                            curvature, curvature_steps, curvature_tol, effective_step).resolved()
  if not isinstance(check_every, int) or check_every < 1:
    raise ValueError(f"check_every: {check_every!r} is not accepted; give an integer >= 1")

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
    step, agg = layer_step(settings.effective_step, layers, state.inner, state.count,
                           state.multiplier, grads, scaled, learning_rate, momentum,
                           normaliser=normaliser_of(settings))
    signals, m = observe(
        Signals(state.window, state.eigenvectors, state.checks), layers, params, grads,
        example_loss, batch, step, agg, measure_key, settings, gradient_noise=gradient_noise)
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


def state_of(opt_state) -> NoiseCurvatureState | None:
  """The scheduler's state inside an optimizer state (None if there is none)."""
  return _find(opt_state, NoiseCurvatureState)


def multiplier_of(opt_state):
  """The scheduler's per-layer learning-rate multipliers in `opt_state`, or None."""
  state = state_of(opt_state)
  return None if state is None else state.multiplier


def as_component(check_every: int = 40, **settings) -> Component:
  """The scheduler as a run component: it wraps the run's optimizer
  (`noise_curvature_scheduler(tx, check_every=check_every, **settings)`) and
  records its last check (a `Check`) after each check step of a task."""
  wrap = lambda tx: noise_curvature_scheduler(tx, check_every=check_every, **settings)
  record = lambda step, state, hp: (state_of(step.opt_state).last, state)
  return Component("scheduler", wrap_optimizer=wrap, record=record, every=check_every)


class Signals(NamedTuple):
  """What the noise-curvature signals carry from one observation to the next."""

  window: jax.Array        # (W, G) ring buffer of lam_bar; observation c writes row c % W
  eigenvectors: Any        # params-shaped, unit per layer: warm start of the curvature
  checks: jax.Array        # observations so far


def init_signals(params, layers: estimators.Layers, window: int, key) -> Signals:
  return Signals(jnp.zeros((window, layers.count), jnp.float32),
                 estimators.random_unit_vectors(key, params, layers), jnp.zeros((), jnp.int32))


def observe(signals: Signals, layers, params, grads, example_loss, batch, step, agg, key,
            settings: SignalSettings = DEFAULTS, gradient_noise=None) -> tuple[Signals, Check]:
  """One observation of every per-layer noise-curvature quantity (no decision).

  `step`, `agg`: (G,) the layers' effective steps and sharpness normalisers
  (`layer_step`, with `normaliser_of(settings)`). Measures sigma2_ps and
  ||g||^2 (per-example gradients of `example_loss` on `batch`, or the
  `gradient_noise(params, grads)` callback), each layer's top Hessian-block
  eigenvalue (`estimators.top_block_eigenvalues`, warm-started), puts the
  mode's curvature signal (`curvature_signal`) in the window and forms Vol and
  the thresholds. The returned Check has step 0, multiplier 1 and no
  cool/warm decision; the scheduler fills those in. Shared with the
  diagnostics (`indicators`).
  """
  settings = settings.resolved()
  if gradient_noise is None:
    noise = estimators.gradient_noise(example_loss, params, batch, layers, mean_grads=grads)
  else:
    noise = gradient_noise(params, grads)
  mean_loss = lambda p: jnp.mean(jax.vmap(example_loss, in_axes=(None, 0))(p, batch))
  eigen = estimators.top_block_eigenvalues(
      mean_loss, params, layers, signals.eigenvectors, settings.curvature,
      settings.curvature_steps, settings.curvature_tol, key=key)
  lam = eigen.values
  value = curvature_signal(settings, lam, agg, step)
  size = signals.window.shape[0]
  newest = signals.checks % size
  window = signals.window.at[newest].set(value)
  filled = jnp.minimum(signals.checks + 1, size)
  stats = window_statistics(window, filled, newest, settings.variance)
  thresholds = combined_threshold(noise, stats, value, step, settings)
  no = jnp.zeros((layers.count,), bool)
  check = Check(
      step=jnp.zeros((), jnp.int32), alpha=step, alpha_g=thresholds.alpha_g,
      alpha_vol=thresholds.alpha_vol, alpha_tilde=thresholds.alpha_tilde, lam=lam,
      lam_bar=value, mu=stats.mu, vol=stats.vol, sigma2=noise.sigma2,
      grad_sq=noise.grad_sq, multiplier=jnp.ones((layers.count,), jnp.float32),
      crossed=step > thresholds.alpha_tilde, cooled=no, warmed=no)
  return Signals(window, eigen.vectors, signals.checks + 1), check


def curvature_signal(settings: SignalSettings, lam, agg, step):
  """The per-layer value that goes into the window (Check.lam_bar).

  paper: normalized sharpness max(lam * alpha_agg, 0) (negative curvature
  adds no instability); reference: lam * alpha_agg with the global
  normaliser, signed, or raw lam for its r* params; stability: max(lam, 0),
  the raw curvature (its bound is a step: 2 a / ((1 + a) lam), compared with
  the step the layer takes now, so a cooled layer stops cooling at once).
  """
  if settings.threshold == "reference":
    return lam if settings.reference_param.startswith("r") else lam * agg
  if settings.threshold == "stability":
    return jnp.maximum(lam, 0.0)
  return jnp.maximum(lam * agg, 0.0)


def normaliser_of(settings: SignalSettings) -> str:
  """The reference mode normalises sharpness with one global Adam normaliser."""
  return "global" if settings.resolved().threshold == "reference" else "layer"


def layer_step(kind, layers, opt_state, count, multiplier, grads, updates,
               learning_rate=None, momentum=None, normaliser="layer"):
  """(alpha (G,), alpha_agg (G,)): each layer's effective step, and the sharpness normaliser.

  kind: "adam", "adam_elementwise" (read from the Adam moments in
  `opt_state`), "sgd" (eta (1 - m^t) / (1 - m), t = `count`), "generic"
  (-<u, g> / ||g||^2 of the final `updates`) or "auto" (adam if `opt_state`
  holds Adam moments, else generic). eta is the learning rate in an
  `optax.inject_hyperparams` state, else `learning_rate`, times `multiplier`.
  alpha_agg is 1 except for Adam: per layer (normaliser "layer"), or, with
  normaliser "global", the reference code's one value for every layer, the
  first layer's rate over (sqrt(mean of the raw second moments of all
  parameters) + eps), no bias correction (`global_adam_normaliser`).
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
    alpha, agg = adam_effective_step(layers, adam.nu, adam.count, eta * multiplier,
                                     b1, b2, eps, elementwise=kind == "adam_elementwise")
    if normaliser == "global":
      agg = jnp.full_like(agg, global_adam_normaliser(adam.nu, adam.count, eta * multiplier[0],
                                                      eps))
    return alpha, agg
  if kind == "sgd":
    m = hparams.get("momentum", momentum)
    m = 0.0 if m is None else m
    t = jnp.asarray(count, jnp.float32)
    step = eta * multiplier * jnp.where(m > 0, (1 - m**t) / (1 - m + 1e-12), 1.0)
    return step, jnp.ones_like(step)
  step = generic_effective_step(layers, grads, updates)
  return step, jnp.ones_like(step)


def global_adam_normaliser(nu, count, eta, eps):
  """The reference code's alpha_agg: eta / (sqrt(mean of all raw second moments) + eps).

  One mean over every element of every parameter (biases included), with no
  bias correction; eta is the first layer's rate (the reference's group 0:
  its input layer; here the first of `Layers.names`, which is the input layer
  for the library's models, hidden_0 or conv_0). Before the first update
  (no moments yet) it is eta, as in the reference code.
  """
  total = sum(jnp.sum(v) for v in jax.tree.leaves(nu))
  size = sum(v.size for v in jax.tree.leaves(nu))
  started = jnp.max(jnp.stack([jnp.max(c) for c in jax.tree.leaves(count)])) > 0
  return jnp.where(started, eta / (jnp.sqrt(total / size + 1e-16) + eps), eta)


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


def reference_term(param: str) -> tuple[str, float]:
  """(kind, coefficient) of a reference `--param`: qm, cv, var, s or tau.

  The reference code's suffix is not the coefficient: "10" means 20 and "1"
  means 10, except sqm1 / rqm1, which use 75.
  """
  kind = param[1:].rstrip("0123456789").strip("_")
  suffix = param[len(param.rstrip("0123456789")):]
  if kind == "tau":
    return kind, 0.0
  if suffix == "1" and kind == "qm":
    return kind, 75.0
  return kind, 20.0 if suffix == "10" else 10.0


def combined_threshold(noise: estimators.GradientNoise, stats: WindowStatistics, value, step,
                       settings: SignalSettings = DEFAULTS) -> Thresholds:
  """alpha*_g, alpha*_vol and the mode's combined threshold alpha~* (G,).

  value: the newest window value (`curvature_signal`); step: the layers'
  effective steps. paper: B ||g||^2 / (sigma2 + beta ||g||^2 Vol). reference:
  B ||g||^2 / max(sigma2 + c ||g||^2 term, 1e-12), term by `reference_param`
  (qm: (value^2 / mu)^2, 0 where mu <= 0; var: s2; cv: s2 / (mu + 1e-12); s:
  value), or for *_tau 2 mu / (s2 + mu^2 + 1e-12). stability (the window holds
  raw curvature): 2 a / ((1 + a) L), L = mu + sqrt((1 - delta) / delta)
  sqrt(s2) the window's curvature plus its Cantelli margin, a = alpha*_g =
  B ||g||^2 / sigma2 (the paper's descent bound before it drops ||g||^2 from
  its denominator); UNBOUNDED for a layer with no gradient or no curvature.
  `step` is unused since the thresholds are steps themselves.
  """
  settings = settings.resolved()
  alpha_g = estimators.critical_step(noise)
  alpha_vol = safe_ratio(jnp.ones_like(stats.vol), settings.kappa * stats.vol)
  signal = noise.batch_size * noise.grad_sq
  if settings.threshold == "paper":
    alpha_tilde = safe_ratio(signal, noise.sigma2 + settings.beta * noise.grad_sq * stats.vol)
  elif settings.threshold == "reference":
    kind, c = reference_term(settings.reference_param)
    mu, s2 = stats.mu, stats.s2
    if kind == "tau":
      alpha_tilde = 2 * mu / (s2 + mu**2 + 1e-12)
    else:
      term = {"qm": lambda: jnp.where(mu > 0, (value**2 / jnp.where(mu > 0, mu, 1.0))**2, 0.0),
              "var": lambda: s2, "cv": lambda: s2 / (mu + 1e-12), "s": lambda: value}[kind]()
      alpha_tilde = signal / jnp.maximum(noise.sigma2 + c * noise.grad_sq * term, 1e-12)
    alpha_tilde = jnp.minimum(alpha_tilde, UNBOUNDED)
  else:
    # The paper's bound kept whole: alpha L < 2 a / (1 + a), a = alpha*_g, with L
    # the window's curvature plus its Cantelli margin.
    del step
    share = jnp.where(alpha_g >= UNBOUNDED, 1.0, alpha_g / (1.0 + alpha_g))
    margin = jnp.sqrt((1.0 - settings.delta) / settings.delta)
    curvature = stats.mu + margin * jnp.sqrt(stats.s2)
    alpha_tilde = jnp.where(signal > 0, safe_ratio(2.0 * share, curvature), UNBOUNDED)
  return Thresholds(alpha_g, alpha_vol, alpha_tilde)


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
    "THRESHOLDS", "REFERENCE_PARAMS", "CURVATURES", "VARIANCES", "EFFECTIVE_STEPS",
    "SignalSettings", "DEFAULTS", "curvature_signal", "normaliser_of", "reference_term",
    "global_adam_normaliser", "STATIC_ARGS", "Check", "NoiseCurvatureState", "noise_curvature_scheduler", "adam_effective_step",
    "Signals", "init_signals", "observe", "layer_step",
    "generic_effective_step", "window_statistics", "combined_threshold", "decide",
    "UNBOUNDED",
]
