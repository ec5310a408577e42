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
* Curvature indicators, of a loss: whole-network `sharpness` (power iteration
  on Hessian-vector products; per layer blocks are
  `estimators.power_iteration`), `top_eigenvalues` (Lanczos), `hessian_trace`
  (Hutchinson, per layer and total), `hessian_rank_proxy` (the reference
  code's: k single-example gradients, 99% of the spectrum mass of G G^T) and
  `exact_hessian_rank` (from the dense `jax.hessian`, small nets only).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from trainability import estimators

_TINY = 1e-30


def _units(x):
  """(examples, units) view of (N, ..., units) features."""
  return x.reshape(-1, x.shape[-1]).astype(jnp.float32)


def binary_entropy(p):
  """H(p) in bits; 0 at p = 0 and p = 1."""
  safe = jnp.clip(p, _TINY, 1 - 1e-7)
  h = -(safe * jnp.log2(safe) + (1 - safe) * jnp.log2(1 - safe))
  return jnp.where((p <= 0) | (p >= 1), 0.0, h)


def unit_sign_entropy(pre) -> jax.Array:
  """Mean over units of H(fraction of examples with a positive pre-activation)."""
  p = jnp.mean(_units(pre) > 0, axis=0)
  return jnp.mean(binary_entropy(p))


def dormant_fraction(post, tau: float = 0.0) -> jax.Array:
  """Fraction of units whose normalized mean |activation| is <= tau.

  s_i = E|h_i| / mean_k E|h_k|. With every activation zero, all units are dormant.
  """
  score = jnp.mean(jnp.abs(_units(post)), axis=0)
  mean = jnp.mean(score)
  normalized = jnp.where(mean > _TINY, score / jnp.maximum(mean, _TINY), 0.0)
  return jnp.mean(normalized <= tau)


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
  return jnp.linalg.svd(_units(features), compute_uv=False)


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


def ratio_of_means(layers: estimators.Layers, numerator, denominator) -> jax.Array:
  """(G,) mean|numerator| / mean|denominator| over each layer's elements.

  The reference code's gradient-to-parameter ratio (numerator = gradient,
  denominator = parameters). UNBOUNDED where the layer's parameters are all 0.
  """
  size = estimators.per_layer_sum(layers, jax.tree.map(lambda x: jnp.float32(x.size), numerator))
  top = estimators.per_layer_sum(layers, jax.tree.map(lambda x: jnp.sum(jnp.abs(x)), numerator))
  bottom = estimators.per_layer_sum(
      layers, jax.tree.map(lambda x: jnp.sum(jnp.abs(x)), denominator))
  return estimators.safe_ratio(top / size, bottom / size)


def whole_network(params) -> estimators.Layers:
  """A grouping with every leaf in one layer, "network"."""
  return estimators.layers_of(params, lambda p: jax.tree.map(lambda _: "network", p))


def sharpness(loss, params, start, iterations: int, key=None) -> estimators.Eigen:
  """Top (largest-magnitude) eigenvalue of the whole Hessian of `loss` at `params`.

  Power iteration on Hessian-vector products, warm-started from `start` (a
  params-shaped direction, e.g. the previous call's `vectors`); per-layer
  blocks: `estimators.power_iteration` with the layer grouping. values: (1,).
  """
  return estimators.power_iteration(loss, params, whole_network(params), start, iterations,
                                    key=key)


def _flat_hvp(loss, params):
  flat, unravel = ravel_pytree(params)
  grad = lambda x: ravel_pytree(jax.grad(loss)(unravel(x)))[0]
  return flat, lambda v: jax.jvp(grad, (flat,), (v,))[1]


def top_eigenvalues(loss, params, k: int, steps: int, key) -> jax.Array:
  """The k largest (algebraic) Hessian eigenvalues, from `steps` Lanczos steps.

  Lanczos with full reorthogonalization from a random start: `steps` HVPs,
  the Ritz values of the (steps x steps) tridiagonal matrix approximate the
  extreme eigenvalues (exact once steps >= the number of distinct
  eigenvalues). Returned in descending order, shape (k,); k <= steps.
  """
  if not 1 <= k <= steps:
    raise ValueError(f"k: {k!r} is not accepted; give 1 <= k <= steps ({steps})")
  flat, hvp = _flat_hvp(loss, params)
  d = flat.shape[0]
  v0 = jax.random.normal(key, (d,), jnp.float32)
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
  ritz = jnp.linalg.eigvalsh(tridiagonal)
  return ritz[::-1][:k]


class Trace(NamedTuple):
  total: jax.Array      # () trace of the whole Hessian
  per_layer: jax.Array  # (G,) trace of each layer's diagonal block


def hessian_trace(loss, params, layers: estimators.Layers, samples: int, key) -> Trace:
  """Hutchinson's estimate E[v^T H v], v Rademacher, from `samples` HVPs.

  Per layer: E[v_l^T (H v)_l] = tr(H_ll), the cross terms vanishing in
  expectation, so the same HVPs give every block's trace.
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
  spectrum = jnp.linalg.eigvalsh(g @ g.T)
  return mass_rank(jnp.maximum(spectrum, 0.0), mass) / k


class ExactRank(NamedTuple):
  fraction: jax.Array   # mass_rank of |eigenvalues| at `mass`, divided by d
  numerical: jax.Array  # eigenvalues above tol * the largest |eigenvalue|
  size: int             # d, the number of parameters


def exact_hessian_rank(loss, params, mass: float = 0.99, tol: float = 1e-6) -> ExactRank:
  """Rank of the dense Hessian of `loss` (jax.hessian: d x d; small nets only)."""
  flat, unravel = ravel_pytree(params)
  h = jax.hessian(lambda x: loss(unravel(x)))(flat)
  eig = jnp.abs(jnp.linalg.eigvalsh((h + h.T) / 2))
  d = flat.shape[0]
  numerical = jnp.sum(eig > tol * jnp.max(eig)).astype(jnp.int32)
  return ExactRank(mass_rank(eig, mass) / d, numerical, d)
