"""Trainability indicators of the field (method.md section 2), as pure functions.

Every function here is pure and jit/vmap-friendly: arrays in, arrays out, no
host round trips. Three kinds:

* Feature indicators, of one hidden layer's features on a batch. `pre` is the
  pre-activation (after the norm layer, if any), `post` the activation output;
  both (N, ..., units): every axis but the last counts as an example axis
  (for a conv layer, each spatial position of each image is one example of
  each channel).
  - `unit_sign_entropy(pre)`: p_j = fraction of examples with pre_j > 0;
    mean over units of the binary entropy H(p_j), in bits (0: every unit
    has a fixed sign, 1: every unit is positive half of the time).
  - `dormant_fraction(post, tau)` (Sokar et al. 2023): s_i = E|h_i| /
    mean_k E|h_k|; the fraction of units with s_i <= tau.
  - `srank(features, delta)` (Kumar et al. 2021): the smallest k whose top-k
    singular values hold a 1 - delta share of their sum.
  - `effective_rank(features)` (Roy & Vetterli 2007): exp of the entropy of
    the normalized singular values.
* Parameter indicators, per layer (all of the layer's leaves, weights and
  biases): `norms` (L2 norm of a params-shaped tree per layer),
  `ratio_of_means` (mean|a| / mean|b| per layer: the reference code's
  gradient-to-parameter ratio with a = gradient, b = parameters).
* Curvature indicators, of a loss: whole-network `sharpness` (warm-started
  Lanczos on Hessian-vector products, or power iteration; per layer blocks are
  `estimators.top_block_eigenvalues`), `top_eigenvalues` (Lanczos), `hessian_trace`
  (Hutchinson, per layer and total), `hessian_rank_proxy` (the reference
  code's: k single-example gradients, 99% of the spectrum mass of G G^T) and
  `exact_hessian_rank` (from the dense `jax.hessian`, small nets only).
* Jacobian conditioning: `jacobian_sigma_min`, the smallest singular value of the Jacobian J of the
  network's outputs (N probe examples x C logits) with respect to its
  parameters, sqrt(lambda_min(J J^T)), the empirical
  NTK's smallest eigenvalue; for the whole network and each layer's own
  parameters. 0 whenever a layer has fewer parameters than N C: its NTK is
  singular (Zhang et al. 2021, "fewer than n neurons can work").
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from trainability import estimators, models, signals as signals_lib, units
from trainability.components import Component
from trainability.settings import ConfigError, Integer, Number, Predicate, Setting, by_name
from trainability.signals import DEFAULTS as SIGNAL_DEFAULTS, SignalSettings

# The trainability indicators by kind; INDICATORS is their recording order.
PARAMETER = ("weight_norm", "gradient_norm", "update_norm", "grad_param_ratio")
FEATURE = ("unit_sign_entropy", "dormant_fraction", "srank", "effective_rank")
CURVATURE = ("sharpness", "hessian_trace", "top_eigenvalues", "hessian_rank")
JACOBIAN = ("jacobian_sigma_min",)
# The noise-curvature signals of method.md section 3 (signals_lib.observe).
SIGNALS = ("effective_step", "alpha_g", "lam_bar", "vol", "alpha_vol", "alpha_tilde", "crossed")
INDICATORS = PARAMETER + FEATURE + CURVATURE + JACOBIAN + SIGNALS


def indicator_names(text: str) -> tuple[str, ...]:
  """"all", "none" or a comma list of INDICATORS, in INDICATORS order."""
  if text in ("none", ""):
    return ()
  if text == "all":
    return INDICATORS
  chosen = [n.strip() for n in text.split(",")]
  for n in chosen:
    if n not in INDICATORS:
      raise ConfigError(f"indicators: {n!r} is not accepted; choose all, none or any of "
                        f"{', '.join(INDICATORS)}")
  return tuple(n for n in INDICATORS if n in chosen)


def _indicators_problem(value):
  indicator_names(value)  # its own one-line error lists the accepted names
  return None


SETTINGS = (
    Setting("indicators", "none", "indicators to record: all, none, or a comma list (see "
            "trainability.indicators)", str, check=Predicate(_indicators_problem)),
    Setting("indicator_every", 40, "steps of a task between indicator evaluations", int,
            check=Integer(1)),
    Setting("indicator_examples", 256, "probe batch of the indicators: the first N training "
            "examples of the task", int, check=Integer(1)),
    Setting("dormant_tau", 0.0, "a unit is dormant when its normalized activity <= tau", float,
            check=Number(0.0)),
)

_TINY = 1e-30


def _units(x):
  """(examples, units) view of (N, ..., units) features."""
  return x.reshape(-1, x.shape[-1]).astype(jnp.float32)


def binary_entropy(p):
  """H(p) in bits; 0 at p = 0 and p = 1."""
  safe = jnp.clip(p, _TINY, 1 - 1e-7)
  h = -(safe * jnp.log2(safe) + (1 - safe) * jnp.log2(1 - safe))
  return jnp.where((p <= 0) | (p >= 1), 0.0, h)


def unit_sign_entropy(pre, units=None) -> jax.Array:
  """Mean over units of H(fraction of examples with a positive pre-activation).

  units: (units,) 0/1, the units that count (the network's own, when a
  narrower one runs embedded in this one); None: all.
  """
  p = jnp.mean(_units(pre) > 0, axis=0)
  return estimators.masked_mean(binary_entropy(p), units)


def dormant_fraction(post, tau: float = 0.0, units=None) -> jax.Array:
  """Fraction of units whose normalized mean |activation| is <= tau.

  s_i = E|h_i| / mean_k E|h_k|. With every activation zero, all units are
  dormant. units: (outputs,) 0/1, the outputs that count, in both means; None: all.
  """
  score = jnp.mean(jnp.abs(_units(post)), axis=0)
  mean = estimators.masked_mean(score, units)
  normalized = jnp.where(mean > _TINY, score / jnp.maximum(mean, _TINY), 0.0)
  return estimators.masked_mean((normalized <= tau).astype(jnp.float32), units)


def mass_rank(values, mass) -> jax.Array:
  """The smallest k whose k largest `values` (>= 0) hold a `mass` share of their sum.

  0 when every value is 0. A relative tolerance of 1e-6 keeps a share that
  reaches `mass` exactly from being lost to rounding.
  """
  v = jnp.sort(jnp.abs(values))[::-1]
  total = jnp.sum(v)
  share = jnp.cumsum(v) / jnp.maximum(total, _TINY)
  k = jnp.sum(share < mass - 1e-6) + 1
  return jnp.where(total > _TINY, k, 0).astype(jnp.int32)


def singular_values(features) -> jax.Array:
  return estimators.singular_values(_units(features))


def srank(features, delta: float = 0.01) -> jax.Array:
  """Kumar et al.'s feature rank: mass_rank of the singular values at 1 - delta."""
  return mass_rank(singular_values(features), 1.0 - delta)


def effective_rank(features) -> jax.Array:
  """exp(-sum_i p_i log p_i), p_i = sigma_i / sum_j sigma_j; 0 for all-zero features."""
  s = singular_values(features)
  total = jnp.sum(s)
  p = s / jnp.maximum(total, _TINY)
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
  return jnp.where(total > _TINY, jnp.exp(entropy), 0.0)


def norms(layers: estimators.Layers, tree) -> jax.Array:
  """(G,) L2 norm of each layer's part of a params-shaped tree."""
  return jnp.sqrt(estimators.per_layer_sum(layers, jax.tree.map(lambda x: jnp.sum(x**2), tree)))


def ratio_of_means(layers: estimators.Layers, numerator, denominator, mask=None) -> jax.Array:
  """(G,) mean|numerator| / mean|denominator| over each layer's elements.

  The reference code's gradient-to-parameter ratio (numerator = gradient,
  denominator = parameters). UNBOUNDED where the layer's parameters are all 0.
  mask: params-shaped 0/1, the elements that count; None: all.
  """
  ones = jax.tree.map(lambda x: jnp.ones((), jnp.float32), numerator) if mask is None else mask
  size = estimators.per_layer_sum(
      layers, jax.tree.map(lambda x, m: jnp.sum(jnp.broadcast_to(m, x.shape)), numerator, ones))
  absolute_sum = lambda x, m: jnp.sum(jnp.abs(x) * m)
  top = estimators.per_layer_sum(layers, jax.tree.map(absolute_sum, numerator, ones))
  bottom = estimators.per_layer_sum(layers, jax.tree.map(absolute_sum, denominator, ones))
  return estimators.safe_ratio(top / size, bottom / size)


def whole_network(params) -> estimators.Layers:
  """A grouping with every leaf in one layer, "network"."""
  return estimators.layers_of(params, lambda p: jax.tree.map(lambda _: "network", p))


def sharpness(loss, params, start, steps: int = SIGNAL_DEFAULTS.curvature_steps, key=None,
              method: str = SIGNAL_DEFAULTS.curvature, tol: float | None = None, mask=None
              ) -> estimators.Eigen:
  """Top eigenvalue of the whole Hessian of `loss` at `params`, values of shape (1,).

  `estimators.top_block_eigenvalues` with every leaf in one block: Lanczos
  (the largest algebraic eigenvalue; at most `steps` HVPs, stopping at
  relative residual `tol`, default the scheduler's) or power iteration
  (`method` "power": the largest-magnitude one, exactly `steps` HVPs; no
  `tol`), warm-started from `start` (a params-shaped direction, e.g. the
  previous call's `vectors`). mask: params-shaped 0/1, the elements of the
  network (0: the padding of a narrower one embedded in it).
  """
  settings = SIGNAL_DEFAULTS._replace(curvature=method, curvature_steps=steps)
  if tol is not None:
    settings = settings._replace(curvature_tol=tol)
  settings = settings.resolved()  # one-line errors for a bad method, steps or tol
  return estimators.top_block_eigenvalues(loss, params, whole_network(params), start, method,
                                          steps, settings.curvature_tol, key=key, mask=mask)


def smallest_singular_value(gram) -> jax.Array:
  """sigma_min(J) = sqrt(lambda_min(J J^T)) from the Gram matrix J J^T (..., k, k).

  The smallest singular value over J's k rows: 0 when J has fewer columns
  than rows. From a float32 Gram, values below about
  sqrt(1e-7 lambda_max) are rounding noise (the Gram squares J's condition
  number); compute in float64 (jax_enable_x64) to resolve smaller ones.
  """
  eigenvalues = estimators.eigvalsh((gram + jnp.swapaxes(gram, -1, -2)) / 2)
  return jnp.sqrt(jnp.maximum(eigenvalues[..., 0], 0.0))


def jacobian_sigma_min(logits_fn, params, x, layers: estimators.Layers,
                       dense_inputs=None) -> jax.Array:
  """(1 + G,) sigma_min of the output Jacobian: whole network, then each layer.

  logits_fn(params, x) -> (N, C). J has N C rows; the layers' NTKs
  (`estimators.output_jacobian_grams`, by the dense path when `dense_inputs`
  is given) sum to the network's. Cost: the Grams (generic: N C
  vector-Jacobian products and N C x P numbers; dense: N^2 fan_in +
  (N C)^2 units per layer) and G + 1 symmetric eigendecompositions of
  N C x N C, O((N C)^3) each.
  """
  grams = estimators.output_jacobian_grams(logits_fn, params, x, layers, dense_inputs)
  return smallest_singular_value(jnp.concatenate([jnp.sum(grams, 0, keepdims=True), grams]))


def model_jacobian_sigma_min(model, params, model_state, x) -> jax.Array:
  """`jacobian_sigma_min` of a `models.Model`'s logits on inputs `x` (layers: the
  top-level keys of params), by the dense path when the model has one."""
  logits_fn = lambda p, inputs: model.apply(p, model_state, inputs)[0]
  inputs = None if model.dense_inputs is None else model.dense_inputs(params, model_state, x)
  return jacobian_sigma_min(logits_fn, params, x, estimators.layers_of(params), inputs)


def _flat_hvp(loss, params):
  flat, unravel = ravel_pytree(params)
  grad = lambda x: ravel_pytree(jax.grad(loss)(unravel(x)))[0]
  return flat, lambda v: jax.jvp(grad, (flat,), (v,))[1]


def top_eigenvalues(loss, params, k: int, steps: int, key, mask=None) -> jax.Array:
  """The k largest (algebraic) Hessian eigenvalues, from `steps` Lanczos steps.

  Lanczos with full reorthogonalization from a random start: `steps` HVPs,
  the Ritz values of the (steps x steps) tridiagonal matrix approximate the
  extreme eigenvalues (exact once steps >= the number of distinct
  eigenvalues). Returned in descending order, shape (k,); k <= steps.
  mask: params-shaped 0/1; the start (and so the Krylov space, the padding's
  Hessian rows being zero) stays on the elements marked 1.
  """
  if not 1 <= k <= steps:
    raise ValueError(f"k: {k!r} is not accepted; give 1 <= k <= steps ({steps})")
  flat, hvp = _flat_hvp(loss, params)
  d = flat.shape[0]
  v0 = jax.random.normal(key, (d,), jnp.float32)
  if mask is not None:
    v0 = v0 * ravel_pytree(mask)[0]
  basis = jnp.zeros((steps + 1, d), jnp.float32).at[0].set(v0 / jnp.linalg.norm(v0))

  def body(i, carry):
    basis, alphas, betas = carry
    w = hvp(basis[i])
    alpha = jnp.vdot(w, basis[i])
    # Full reorthogonalization against every basis vector so far (twice, for stability).
    used = (jnp.arange(steps + 1) <= i)[:, None]
    for _ in range(2):
      w = w - basis.T @ jnp.where(used, basis @ w[:, None], 0.0)[:, 0]
    beta = jnp.linalg.norm(w)
    nxt = jnp.where(beta > 1e-10, w / jnp.maximum(beta, 1e-10), 0.0)
    return basis.at[i + 1].set(nxt), alphas.at[i].set(alpha), betas.at[i].set(beta)

  _, alphas, betas = jax.lax.fori_loop(
      0, steps, body, (basis, jnp.zeros(steps), jnp.zeros(steps)))
  # An invariant subspace found early (beta ~ 0) leaves zero rows; they give
  # spurious Ritz values of 0 only when 0 is not an eigenvalue of the block anyway.
  tridiagonal = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
  ritz = estimators.eigvalsh(tridiagonal)
  return ritz[::-1][:k]


class Trace(NamedTuple):
  total: jax.Array      # () trace of the whole Hessian
  per_layer: jax.Array  # (G,) trace of each layer's diagonal block


def hessian_trace(loss, params, layers: estimators.Layers, samples: int, key) -> Trace:
  """Hutchinson's estimate E[v^T H v], v Rademacher, from `samples` HVPs.

  Per layer: E[v_l^T (H v)_l] = tr(H_ll), the cross terms vanishing in
  expectation, so the same HVPs give every block's trace. The padding of a
  narrower network embedded in this one adds nothing (its Hessian rows are
  zero): the estimate is of the narrow network's trace, from other draws.
  """
  grad = jax.grad(loss)
  leaves, treedef = jax.tree.flatten(params)

  def one(k):
    keys = jax.random.split(k, len(leaves))
    v = jax.tree.unflatten(treedef, [
        jax.random.rademacher(kk, p.shape, jnp.float32) for kk, p in zip(keys, leaves)])
    hv = jax.jvp(grad, (params,), (v,))[1]
    return estimators.per_layer_sum(layers, jax.tree.map(lambda a, b: jnp.vdot(a, b), v, hv))

  per_layer = jnp.mean(jax.lax.map(one, jax.random.split(key, samples)), axis=0)
  return Trace(jnp.sum(per_layer), per_layer)


def hessian_rank_proxy(example_grads, mass: float = 0.99) -> jax.Array:
  """The reference code's Hessian-rank proxy from k single-example gradients.

  `example_grads`: a params-shaped tree with a leading axis of k examples
  (e.g. `estimators.per_example_gradients`), or a (k, d) matrix G. The
  singular values of G G^T (the squared singular values of G, the spectrum
  of the k-example empirical Fisher) give mass_rank at `mass`, divided by k:
  a fraction in [0, 1].
  """
  leaves = jax.tree.leaves(example_grads)
  k = leaves[0].shape[0]
  g = jnp.concatenate([x.reshape(k, -1).astype(jnp.float32) for x in leaves], axis=1)
  return gram_rank(g @ g.T, mass)


def gram_rank(gram, mass: float = 0.99) -> jax.Array:
  """hessian_rank_proxy from the (k, k) Gram matrix G G^T itself (e.g.
  `estimators.dense_gradient_gram`, which needs no per-example gradients)."""
  spectrum = estimators.eigvalsh((gram + gram.T) / 2)
  return mass_rank(jnp.maximum(spectrum, 0.0), mass) / gram.shape[0]


class ExactRank(NamedTuple):
  fraction: jax.Array   # mass_rank of |eigenvalues| at `mass`, divided by d
  numerical: jax.Array  # eigenvalues above tol * the largest |eigenvalue|
  size: int             # d, the number of parameters


def exact_hessian_rank(loss, params, mass: float = 0.99, tol: float = 1e-6) -> ExactRank:
  """Rank of the dense Hessian of `loss` (jax.hessian: d x d; small nets only)."""
  flat, unravel = ravel_pytree(params)
  h = jax.hessian(lambda x: loss(unravel(x)))(flat)
  eig = jnp.abs(estimators.eigvalsh((h + h.T) / 2))
  d = flat.shape[0]
  numerical = jnp.sum(eig > tol * jnp.max(eig)).astype(jnp.int32)
  return ExactRank(mass_rank(eig, mass) / d, numerical, d)


# ---------------------------------------------------------------------------
# All indicators at once, for one model: `make_suite` (inside training, with
# state carried from one evaluation to the next) and `indicators` (one shot).

NAMES = INDICATORS


class Options(NamedTuple):
  """How the indicators are computed (all static: they fix shapes and loops)."""

  tau: float = by_name(SETTINGS)["dormant_tau"].default  # dormant: s_i <= tau
  delta: float = 0.01             # srank keeps a 1 - delta share of the singular values
  top_k: int = 5                  # top_eigenvalues: how many
  lanczos_steps: int = 20         # top_eigenvalues: Lanczos steps (HVPs)
  trace_samples: int = 10         # hessian_trace: Hutchinson samples (HVPs)
  rank_examples: int = 32         # hessian_rank: single-example gradients k
  jacobian_examples: int = 16     # jacobian_sigma_min: probe examples N (J has N C rows)
  # The noise-curvature signals and the sharpness estimator: the scheduler's
  # settings (window, threshold mode, curvature estimator, effective step).
  signals: SignalSettings = SIGNAL_DEFAULTS


def options_of(config) -> Options:
  """The Options a run of `config` records its indicators with."""
  return Options(tau=config.dormant_tau, signals=config.signal_settings())


class SuiteState(NamedTuple):
  signals: Any                    # signals.Signals (per layer)
  network_vector: Any             # warm start of the whole-network sharpness
  key: jax.Array


class Suite(NamedTuple):
  """`init(params, key) -> SuiteState`; `compute(state, ...) -> (values, state)`.

  values: {name: (columns,) float32 array}; `labels[name]` names the columns
  (layer names, "network", hidden-layer names, or "top_1".."top_k").
  """

  names: tuple
  labels: dict
  init: Any
  compute: Any


class _Spec(NamedTuple):
  """What a suite's `compute` reads besides its arguments (static)."""

  model: Any
  example_loss: Any
  names: tuple
  wanted: frozenset
  options: Options
  layers: Any                     # estimators.Layers of the params
  network: Any                    # the whole network as one group
  hidden: tuple                   # hidden-layer names of the feature indicators
  learning_rate: Any
  momentum: Any


def make_suite(model, example_loss, inputs, names=NAMES, options: Options = Options(),
               learning_rate=None, momentum=None) -> Suite:
  """The indicators `names` of `model` (a models.Model; feature indicators need `features`).

  example_loss(params, model_state, example) -> scalar, example = (x_i, y_i).
  `inputs`: a batch of model inputs (or a jax.ShapeDtypeStruct), to read the
  layer names. learning_rate, momentum: for the adam/sgd effective steps when
  the optimizer state is not an `optax.inject_hyperparams` one.
  """
  names = tuple(names)
  indicator_names(",".join(names))  # a one-line ConfigError for an unknown name
  if any(n in FEATURE for n in names) and model.features is None:
    raise ValueError("indicators: feature indicators need a model with `features`")
  params_shape, state_shape = jax.eval_shape(model.init, jax.random.key(0))
  layers = estimators.layers_of(params_shape)
  hidden = ()
  if any(n in FEATURE for n in names):
    hidden = tuple(jax.eval_shape(model.features, params_shape, state_shape, inputs))
  per_layer = ("network",) + layers.names
  labels = {}
  for n in names:
    if n in FEATURE:
      labels[n] = hidden
    elif n == "top_eigenvalues":
      labels[n] = tuple(f"top_{i + 1}" for i in range(options.top_k))
    elif n == "hessian_rank":
      labels[n] = ("network",)
    elif n in SIGNALS:
      labels[n] = layers.names
    else:
      labels[n] = per_layer
  spec = _Spec(model, example_loss, names, frozenset(names), options, layers,
               whole_network(params_shape), hidden, learning_rate, momentum)

  def init(params, key) -> SuiteState:
    k1, k2, k3 = jax.random.split(key, 3)
    layers_ = estimators.layers_of(params)
    return SuiteState(signals_lib.init_signals(params, layers_, options.signals.window, k1),
                      estimators.random_unit_vectors(k2, params, whole_network(params)), k3)

  def compute(state: SuiteState, params, model_state, batch, *, updates=None, opt_state=None,
              count=None, multiplier=None):
    """Indicators at `params` on `batch` = (x, y).

    updates: the last optimizer update (for update_norm; zeros if None).
    opt_state, count, multiplier: the optimizer's state, update count and
    per-layer multipliers (scheduler; default 1), for the effective step.
    """
    return _compute(spec, state, params, model_state, batch, updates, opt_state, count,
                    multiplier)

  return Suite(names, labels, init, compute)


class _At(NamedTuple):
  """Where a suite's indicators are measured (traced)."""

  params: Any
  model_state: Any
  batch: Any
  grads: Any                      # of the batch's mean loss
  mean_loss: Any                  # params -> the batch's mean loss
  loss_i: Any                     # (params, example) -> one example's loss
  mask: Any                       # the network's own elements (units.real_elements) or None


def _compute(spec: _Spec, state: SuiteState, params, model_state, batch, updates, opt_state,
             count, multiplier):
  key, *keys = jax.random.split(state.key, 5)
  loss_i = lambda p, example: spec.example_loss(p, model_state, example)
  mean_loss = lambda p: jnp.mean(jax.vmap(loss_i, in_axes=(None, 0))(p, batch))
  grads = jax.grad(mean_loss)(params)
  # A narrower net embedded in this one (unit masks): its own elements and units.
  at = _At(params, model_state, batch, grads, mean_loss, loss_i,
           units.real_elements(spec.model, params, model_state))
  if updates is None:
    updates = jax.tree.map(jnp.zeros_like, params)
  out = {**_norm_values(spec, at, updates), **_feature_values(spec, at)}
  curvature = spec.options.signals.resolved()
  top = lambda groups, start, key: estimators.top_block_eigenvalues(
      mean_loss, params, groups, start, curvature.curvature, curvature.curvature_steps,
      curvature.curvature_tol, key=key, mask=at.mask)
  network_vector = state.network_vector
  if "sharpness" in spec.wanted:
    whole = top(spec.network, network_vector, keys[0])
    network_vector = whole.vectors
  out.update(_hessian_values(spec, at, keys[1], keys[2]))
  signals = state.signals
  if "sharpness" in spec.wanted and not spec.wanted & set(SIGNALS):
    blocks = top(spec.layers, signals.eigenvectors, keys[3])
    signals = signals._replace(eigenvectors=blocks.vectors)
    out["sharpness"] = _both(whole.values[0], blocks.values)
  if spec.wanted & set(SIGNALS):
    signals, values = _signal_values(spec, at, signals, updates, opt_state, count, multiplier,
                                     curvature, keys[3])
    if "sharpness" in spec.wanted:
      out["sharpness"] = _both(whole.values[0], values.pop("lam"))
    out.update(values)
  return {n: out[n] for n in spec.names}, SuiteState(signals, network_vector, key)


def _both(network_value, layer_values):
  """The network's value, then each layer's, as one float32 row."""
  return jnp.concatenate([jnp.atleast_1d(network_value), layer_values]).astype(jnp.float32)


def _norm_values(spec: _Spec, at: _At, updates) -> dict:
  total_norm = lambda tree: jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(tree)))
  out, layers = {}, spec.layers
  if "weight_norm" in spec.wanted:
    out["weight_norm"] = _both(total_norm(at.params), norms(layers, at.params))
  if "gradient_norm" in spec.wanted:
    out["gradient_norm"] = _both(total_norm(at.grads), norms(layers, at.grads))
  if "update_norm" in spec.wanted:
    out["update_norm"] = _both(total_norm(updates), norms(layers, updates))
  if "grad_param_ratio" in spec.wanted:
    out["grad_param_ratio"] = _both(ratio_of_means(spec.network, at.grads, at.params, at.mask)[0],
                                    ratio_of_means(layers, at.grads, at.params, at.mask))
  return out


def _feature_values(spec: _Spec, at: _At) -> dict:
  if not spec.wanted & set(FEATURE):
    return {}
  model, options = spec.model, spec.options
  active = (at.model_state or {}).get(models.ACTIVE_UNITS, {})
  feats = model.features(at.params, at.model_state, at.batch[0])
  # srank and effective rank need no mask: zero columns add no singular value.
  pick = {"unit_sign_entropy": lambda f, u: unit_sign_entropy(f.pre, u),
          "dormant_fraction": lambda f, u: dormant_fraction(
              f.post, options.tau, None if u is None else jnp.tile(u, model.copies)),
          "srank": lambda f, u: srank(f.post, options.delta),
          "effective_rank": lambda f, u: effective_rank(f.post)}
  active_of = {h: active[h]["units"] if h in active else None for h in spec.hidden}
  return {n: jnp.stack([pick[n](feats[h], active_of[h]) for h in spec.hidden]).astype(
      jnp.float32) for n in FEATURE if n in spec.wanted}


def _hessian_values(spec: _Spec, at: _At, trace_key, top_key) -> dict:
  out, options, wanted = {}, spec.options, spec.wanted
  if "hessian_trace" in wanted:
    trace = hessian_trace(at.mean_loss, at.params, spec.layers, options.trace_samples, trace_key)
    out["hessian_trace"] = _both(trace.total, trace.per_layer)
  if "top_eigenvalues" in wanted:
    out["top_eigenvalues"] = top_eigenvalues(at.mean_loss, at.params, options.top_k,
                                             options.lanczos_steps, top_key, at.mask)
  if "hessian_rank" in wanted:
    k = min(options.rank_examples, jax.tree.leaves(at.batch)[0].shape[0])
    few = jax.tree.map(lambda a: a[:k], at.batch)
    if spec.model.dense_inputs is not None:
      gram = estimators.dense_gradient_gram(
          at.loss_i, at.params, few, spec.model.dense_inputs(at.params, at.model_state, few[0]))
      out["hessian_rank"] = jnp.atleast_1d(gram_rank(gram))
    else:
      out["hessian_rank"] = jnp.atleast_1d(
          hessian_rank_proxy(estimators.per_example_gradients(at.loss_i, at.params, few)))
  if "jacobian_sigma_min" in wanted:
    out["jacobian_sigma_min"] = model_jacobian_sigma_min(
        spec.model, at.params, at.model_state, at.batch[0][:options.jacobian_examples])
  return out


def _signal_values(spec: _Spec, at: _At, signals, updates, opt_state, count, multiplier,
                   curvature, key):
  """(signals, {signal indicator: per-layer values, "lam": the layers' curvature})."""
  layers = spec.layers
  m = jnp.ones((layers.count,), jnp.float32) if multiplier is None else multiplier
  step, agg = signals_lib.layer_step(curvature.effective_step, layers, opt_state, count, m,
                                     at.grads, updates, spec.learning_rate, spec.momentum,
                                     normaliser=signals_lib.normaliser_of(curvature),
                                     mask=at.mask)
  noise_fn = estimators.dense_noise_fn(at.loss_i, at.batch, spec.model.dense_inputs,
                                       at.model_state)
  signals, check = signals_lib.observe(
      signals, layers, at.params, at.grads, at.loss_i, at.batch, step, agg, key, curvature,
      gradient_noise=noise_fn, mask=at.mask)
  values = {"effective_step": check.alpha, "alpha_g": check.alpha_g,
            "lam_bar": check.lam_bar, "vol": check.vol, "alpha_vol": check.alpha_vol,
            "alpha_tilde": check.alpha_tilde, "crossed": check.crossed}
  out = {n: values[n].astype(jnp.float32) for n in SIGNALS if n in spec.wanted}
  return signals, {**out, "lam": check.lam}


def as_component(suite: Suite, every: int, probe_size: int) -> Component:
  """The suite as a run component: recorded after every `every` steps of a
  task, on the task's probe batch (its first `probe_size` active training
  examples). The effective step reads the per-layer learning-rate
  multipliers that the run's components apply (`Step.multiplier`; a
  scheduler's), 1 where there are none."""
  def record(step, state, hp):
    del hp
    idx = jnp.argsort(1.0 - step.task.weight, stable=True)[:probe_size]
    return suite.compute(state, step.params, step.model_state, step.task.examples(idx),
                         updates=step.updates, opt_state=step.opt_state, count=step.count,
                         multiplier=step.multiplier)

  return Component("indicators",
                   init=lambda params, model_state, key: suite.init(params,
                                                                    jax.random.fold_in(key, 1)),
                   record=record, every=every)


def indicators(params, batch, model, example_loss, *, model_state=None, names=NAMES,
               options: Options = Options(), updates=None, opt_state=None,
               key=None) -> dict:
  """Every indicator in `names` at `params` on `batch` = (x, y), in one call.

  Returns {name: {column label: scalar}}. One shot: the windowed signals (Vol
  and with it alpha_vol, alpha_tilde) need a history, so they are 0 / the
  noise bound here; inside training use `make_suite`, which carries the window
  and warm-starts the curvature estimates. Jittable with `model`, `example_loss`,
  `names` and `options` static.
  """
  suite = make_suite(model, example_loss, batch[0], names, options)
  key = jax.random.key(0) if key is None else key
  state = suite.init(params, key)
  values, _ = suite.compute(state, params, {} if model_state is None else model_state, batch,
                            updates=updates, opt_state=opt_state)
  return {n: dict(zip(suite.labels[n], values[n])) for n in suite.names}
