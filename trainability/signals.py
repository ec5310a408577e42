"""The noise-curvature signals of method.md section 3, per layer, as pure functions.

Shared by the scheduler (`trainability.scheduler`, which decides on them) and
the indicators (`trainability.indicators`, which record them):

* `layer_step`: each layer's effective step (Adam, SGD, or generic) and the
  sharpness normaliser alpha_agg;
* `observe`: one observation of sigma2_ps and ||g||^2, each layer's top
  Hessian-block eigenvalue (warm-started, `estimators.top_block_eigenvalues`),
  the window of the curvature signal, Vol, and the bounds alpha*_g,
  alpha*_vol and the threshold mode's alpha~* (`combined_threshold`);
* `SignalSettings`: how they are measured and combined, with the allowed
  values of each setting (docs/thresholds.md derives the three modes).

Needs nothing but jax and optax.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from trainability import estimators
from trainability.estimators import UNBOUNDED, safe_ratio
from trainability.settings import Integer, Number, Setting, by_name

# The allowed values of the signals' settings; config.py, the scheduler and
# the indicators take them from here.
THRESHOLDS = ("paper", "reference", "stability")
REFERENCE_PARAMS = ("sqm10", "sqm1", "scv10", "scv1", "svar10", "svar1", "ss10", "ss1",
                    "rqm10", "rqm1", "rcv10", "rcv1", "rvar10", "rvar1", "rs10", "rs1",
                    "s_tau", "r_tau")
CURVATURES = ("lanczos", "power")
VARIANCES = ("auto", "windowed", "instantaneous")
EFFECTIVE_STEPS = ("auto", "adam", "adam_elementwise", "sgd", "generic")

SETTINGS = (
    Setting("threshold", "reference", "noise_curvature: the threshold's form: paper (Eq. 2-3), "
            "reference (the reference code's --param) or stability (docs/thresholds.md)", str,
            THRESHOLDS),  # chosen from experiments/README.md (issue 10)
    Setting("beta", 1.0, "threshold paper: weight of the volatility term in the threshold",
            float, check=Number(0.0), acts_with=("threshold", ("paper",))),
    Setting("delta", 0.1, "threshold stability: Cantelli tail probability of the volatility "
            "margin, in (0, 1)", float, check=Number(0.0, 1.0, low_open=True, high_open=True),
            acts_with=("threshold", ("stability",))),
    Setting("reference_param", "sqm10", "threshold reference: the reference code's --param", str,
            REFERENCE_PARAMS, acts_with=("threshold", ("reference",))),
    Setting("kappa", 1.0, "noise_curvature: alpha_vol = 1 / (kappa * Vol)", float,
            check=Number(0.0, low_open=True)),
    Setting("window", 30, "noise_curvature: W, checks in the curvature window", int,
            check=Integer(1)),
    Setting("variance", "auto", "noise_curvature: window variance (paper), newest deviation "
            "(reference), or auto (instantaneous with threshold reference, else windowed)", str,
            VARIANCES),
    Setting("curvature", "lanczos", "noise_curvature: top Hessian-block eigenvalue by "
            "warm-started lanczos or power iteration", str, CURVATURES),
    Setting("curvature_steps", 8, "noise_curvature: HVPs per layer and check (lanczos: at "
            "most)", int, check=Integer(1)),  # 1.5x plain Adam at K = 40 (benchmarks)
    Setting("curvature_tol", 0.01, "noise_curvature: lanczos stops at this relative residual "
            "(0: always curvature_steps)", float, check=Number(0.0, 1.0, high_open=True),
            acts_with=("curvature", ("lanczos",))),
    Setting("effective_step", "auto", "noise_curvature: how a layer's step is measured (auto: "
            "adam if Adam, else generic)", str, EFFECTIVE_STEPS),
)
_SETTING = by_name(SETTINGS)
# The settings that act in one threshold mode only (None until set), and their defaults there.
MODE_SETTINGS = {s.name: s.acts_with[1][0] for s in SETTINGS
                 if s.acts_with and s.acts_with[0] == "threshold"}
MODE_DEFAULTS = {name: _SETTING[name].default for name in MODE_SETTINGS}
_DEFAULT = {s.name: None if s.name in MODE_SETTINGS else s.default for s in SETTINGS}


class SignalSettings(NamedTuple):
  """How the noise-curvature signals are measured and combined (`SETTINGS`).

  The scheduler, the CLI's Config and the indicators all take their defaults
  from here. Mode-specific settings are None until set: beta acts with
  threshold "paper", delta with "stability", reference_param with "reference";
  `resolved()` fills in their defaults (MODE_DEFAULTS).

  Attributes:
    threshold: "reference" (default), "paper" or "stability" (the
      scheduler's module docstring and docs/thresholds.md).
    window: W, observations of the curvature signal in the window (paper 30).
    beta: threshold "paper" only (default 1): weight of the volatility term
      (paper [0, 1]). With Adam, beta of order 1 leaves alpha_tilde near
      alpha_g ~ 1, far above Adam's effective step, so the rule only warms.
    delta: threshold "stability" only (default 0.1): the Cantelli tail
      probability; the margin is sqrt((1 - delta) / delta) window standard
      deviations above the window mean.
    reference_param: threshold "reference" only (default "sqm10"): the
      reference code's `--param` (REFERENCE_PARAMS).
    kappa: alpha_vol = 1 / (kappa * Vol) (recorded in every mode).
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
  """

  threshold: str = _DEFAULT["threshold"]
  beta: float | None = _DEFAULT["beta"]
  delta: float | None = _DEFAULT["delta"]
  reference_param: str | None = _DEFAULT["reference_param"]
  kappa: float = _DEFAULT["kappa"]
  window: int = _DEFAULT["window"]
  variance: str = _DEFAULT["variance"]
  curvature: str = _DEFAULT["curvature"]
  curvature_steps: int = _DEFAULT["curvature_steps"]
  curvature_tol: float = _DEFAULT["curvature_tol"]
  effective_step: str = _DEFAULT["effective_step"]

  def resolved(self) -> "SignalSettings":
    """Checked, with each mode's own defaults filled in; a one-line ValueError if not valid."""
    for name in self._fields:
      value = getattr(self, name)
      if not (name in MODE_SETTINGS and value is None) and not _traced(value):
        _SETTING[name].validate(value)
    for name, mode in MODE_SETTINGS.items():
      if getattr(self, name) is not None and self.threshold != mode:
        raise ValueError(f"{name}: has no effect with threshold {self.threshold!r}; it acts "
                         f"only with threshold {mode}")
    if self.curvature == "power" and self.curvature_tol != DEFAULT_CURVATURE_TOL:
      raise ValueError("curvature_tol: has no effect with curvature 'power'; it acts only "
                       "with curvature lanczos")
    filled = {name: MODE_DEFAULTS[name] for name, mode in MODE_SETTINGS.items()
              if mode == self.threshold and getattr(self, name) is None}
    if self.variance == "auto":
      filled["variance"] = "instantaneous" if self.threshold == "reference" else "windowed"
    return self._replace(**filled)


def _traced(value) -> bool:
  """An injected (traced or array) value: checked by the caller, not here."""
  return isinstance(value, jax.Array) or hasattr(value, "aval")


DEFAULT_CURVATURE_TOL = _SETTING["curvature_tol"].default
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


class Signals(NamedTuple):
  """What the noise-curvature signals carry from one observation to the next."""

  window: jax.Array        # (W, G) ring buffer of lam_bar; observation c writes row c % W
  eigenvectors: Any        # params-shaped, unit per layer: warm start of the curvature
  checks: jax.Array        # observations so far


def init_signals(params, layers: estimators.Layers, window: int, key) -> Signals:
  return Signals(jnp.zeros((window, layers.count), jnp.float32),
                 estimators.random_unit_vectors(key, params, layers), jnp.zeros((), jnp.int32))


def observe(signals: Signals, layers, params, grads, example_loss, batch, step, agg, key,
            settings: SignalSettings = DEFAULTS, gradient_noise=None,
            mask=None) -> tuple[Signals, Check]:
  """One observation of every per-layer noise-curvature quantity (no decision).

  `step`, `agg`: (G,) the layers' effective steps and sharpness normalisers
  (`layer_step`, with `normaliser_of(settings)`). Measures sigma2_ps and
  ||g||^2 (per-example gradients of `example_loss` on `batch`, or the
  `gradient_noise(params, grads)` callback), each layer's top Hessian-block
  eigenvalue (`estimators.top_block_eigenvalues`, warm-started), puts the
  mode's curvature signal (`curvature_signal`) in the window and forms Vol and
  the thresholds. The returned Check has step 0, multiplier 1 and no
  cool/warm decision; the scheduler fills those in. Shared with the
  diagnostics (`indicators`). `mask` (params-shaped, 0/1): the elements of
  the network, 0 for the padding of a narrower one embedded in it
  (`trainability.sweep`); the curvature directions stay on the elements
  marked 1. The noise statistics are sums, which padding (zero gradient)
  leaves unchanged.
  """
  settings = settings.resolved()
  if gradient_noise is None:
    noise = estimators.gradient_noise(example_loss, params, batch, layers, mean_grads=grads)
  else:
    noise = gradient_noise(params, grads)
  mean_loss = lambda p: jnp.mean(jax.vmap(example_loss, in_axes=(None, 0))(p, batch))
  eigen = estimators.top_block_eigenvalues(
      mean_loss, params, layers, signals.eigenvectors, settings.curvature,
      settings.curvature_steps, settings.curvature_tol, key=key, mask=mask)
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
               learning_rate=None, momentum=None, normaliser="layer", mask=None):
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
  `mask` (params-shaped, 0/1): Adam's means are taken over the elements
  marked 1 only (the network's own, when a narrower one runs embedded in a
  wider one); the SGD and generic steps need none (padding adds nothing to
  their sums).
  """
  if kind == "auto":
    kind = "adam" if find_state(opt_state, optax.ScaleByAdamState) is not None else "generic"
  hyper = find_state(opt_state, INJECTED_STATES)
  hparams = {} if hyper is None else hyper.hyperparams
  eta = hparams.get("learning_rate", learning_rate)
  if kind in ("adam", "adam_elementwise", "sgd") and eta is None:
    raise ValueError(
        f"learning_rate: effective_step {kind!r} needs the inner optimizer's learning "
        "rate; pass learning_rate= or wrap the optimizer in optax.inject_hyperparams")
  if kind in ("adam", "adam_elementwise"):
    adam = find_state(opt_state, optax.ScaleByAdamState)
    if adam is None:
      raise ValueError(f"effective_step: {kind!r} needs an Adam-like inner optimizer")
    b1, b2 = hparams.get("b1", 0.9), hparams.get("b2", 0.999)
    eps = hparams.get("eps", 1e-8)
    alpha, agg = adam_effective_step(layers, adam.nu, adam.count, eta * multiplier,
                                     b1, b2, eps, elementwise=kind == "adam_elementwise",
                                     mask=mask)
    if normaliser == "global":
      agg = jnp.full_like(agg, global_adam_normaliser(adam.nu, adam.count, eta * multiplier[0],
                                                      eps, mask))
    return alpha, agg
  if kind == "sgd":
    m = hparams.get("momentum", momentum)
    m = 0.0 if m is None else m
    t = jnp.asarray(count, jnp.float32)
    step = eta * multiplier * jnp.where(m > 0, (1 - m**t) / (1 - m + 1e-12), 1.0)
    return step, jnp.ones_like(step)
  step = generic_effective_step(layers, grads, updates)
  return step, jnp.ones_like(step)


def global_adam_normaliser(nu, count, eta, eps, mask=None):
  """The reference code's alpha_agg: eta / (sqrt(mean of all raw second moments) + eps).

  One mean over every element of every parameter (biases included), with no
  bias correction; eta is the first layer's rate (the reference's group 0:
  its input layer; here the first of `Layers.names`, which is the input layer
  for the library's models, hidden_0 or conv_0). Before the first update
  (no moments yet) it is eta, as in the reference code. `mask`: the mean is
  over the elements marked 1.
  """
  total = sum(jnp.sum(v) for v in jax.tree.leaves(estimators.apply_mask(nu, mask)))
  if mask is None:
    size = sum(v.size for v in jax.tree.leaves(nu))
  else:
    size = sum(jnp.sum(m) for m in jax.tree.leaves(mask))
  started = jnp.max(jnp.stack([jnp.max(c) for c in jax.tree.leaves(count)])) > 0
  return jnp.where(started, eta / (jnp.sqrt(total / size + 1e-16) + eps), eta)


# optax has two unrelated classes for the state of inject_hyperparams.
INJECTED_STATES = tuple(
    getattr(optax, name) for name in ("InjectHyperparamsState", "InjectStatefulHyperparamsState")
    if hasattr(optax, name))


def find_state(tree, kind):
  """The first node of type `kind` in an optimizer state, or None."""
  found = [n for n in jax.tree.leaves(tree, is_leaf=lambda n: isinstance(n, kind))
           if isinstance(n, kind)]
  return found[0] if found else None


def _per_leaf(f, tree, mask, *more):
  """jax.tree.map(f, tree, mask, *more), with `mask` None for every leaf when None."""
  if mask is None:
    return jax.tree.map(lambda x, *rest: f(x, None, *rest), tree, *more)
  return jax.tree.map(f, tree, mask, *more)


def adam_effective_step(layers, nu, count, eta, b1, b2, eps, elementwise=False, mask=None):
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
  `mask` (shaped like nu, 0/1): every mean over elements is taken over the
  elements marked 1 (`estimators.masked_mean`).
  """
  mean = estimators.masked_mean
  if jax.tree.structure(count) == jax.tree.structure(nu) and jax.tree.leaves(count)[0].ndim:
    return _adam_effective_step_per_element(layers, nu, count, eta, b1, b2, eps, elementwise,
                                            mask)
  t = jnp.asarray(count, jnp.float32)
  started = t > 0
  bc1 = jnp.where(started, 1 - b1**t, 1.0)
  bc2 = jnp.where(started, 1 - b2**t, 1.0)
  of_mean = _per_leaf(lambda v, m: 1.0 / (jnp.sqrt(mean(v, m) / bc2) + eps), nu, mask)
  agg = estimators.per_layer_mean(layers, of_mean, layers.is_weight)
  inverse_scale = agg
  if elementwise:
    per_element = _per_leaf(lambda v, m: mean(1.0 / (jnp.sqrt(v / bc2) + eps), m), nu, mask)
    inverse_scale = estimators.per_layer_mean(layers, per_element, layers.is_weight)
  alpha = jnp.where(started, eta * inverse_scale / bc1, 0.0)
  return alpha, jnp.where(started, eta * agg, 0.0)


def _adam_effective_step_per_element(layers, nu, counts, eta, b1, b2, eps, elementwise, mask):
  """adam_effective_step with one count per element (same values for equal counts)."""
  def corrections(t):
    t = t.astype(jnp.float32)
    started = t > 0
    return (started, jnp.where(started, 1 - b1**t, 1.0), jnp.where(started, 1 - b2**t, 1.0))

  mean = estimators.masked_mean

  def of_mean(v, m, t):
    _, _, bc2 = corrections(t)
    return 1.0 / (jnp.sqrt(mean(v / bc2, m)) + eps)

  def step(v, m, t):
    started, bc1, bc2 = corrections(t)
    inv_bc1 = jnp.where(started, 1.0 / bc1, 0.0)
    if elementwise:
      return mean(inv_bc1 / (jnp.sqrt(v / bc2) + eps), m)
    return mean(jnp.broadcast_to(inv_bc1, v.shape), m) * of_mean(v, m, t)

  agg = estimators.per_layer_mean(layers, _per_leaf(of_mean, nu, mask, counts), layers.is_weight)
  alpha = estimators.per_layer_mean(layers, _per_leaf(step, nu, mask, counts), layers.is_weight)
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


__all__ = [
    "THRESHOLDS", "REFERENCE_PARAMS", "CURVATURES", "VARIANCES", "EFFECTIVE_STEPS",
    "SETTINGS", "SignalSettings", "DEFAULTS", "MODE_SETTINGS", "MODE_DEFAULTS", "Check", "Signals",
    "init_signals", "observe", "curvature_signal", "normaliser_of", "layer_step",
    "global_adam_normaliser", "adam_effective_step", "generic_effective_step",
    "find_state", "INJECTED_STATES", "WindowStatistics", "window_statistics", "Thresholds",
    "reference_term",
    "combined_threshold", "UNBOUNDED",
]
