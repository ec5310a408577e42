"""Per-layer estimators shared by the scheduler and the diagnostics.

Layers are groups of parameter leaves: by default each top-level key of the
param tree is one layer (`hidden_0`, `output`, ...), or any grouping a
`group_fn(params) -> labels` gives (a pytree of strings shaped like params, as
`optax.multi_transform` takes). Per-layer results are arrays of shape (G,), in
the order of `Layers.names` (sorted labels).

* `gradient_noise`: the minibatch gradient's squared norm ||g_l||^2 and the
  per-example variance sigma2_ps_l = (1/B) sum_i ||g_i,l - g_l||^2, from real
  per-example gradients (`jax.vmap` of `jax.grad` over the batch).
* `critical_step`: alpha*_g = B ||g||^2 / sigma2_ps (method.md section 3).
* `top_block_eigenvalues`: the top eigenvalue of each layer's own diagonal
  Hessian block, from Hessian-vector products (`block_hvp`), by warm-started
  `lanczos` (stopping on its residual bound) or `power_iteration`, all layers
  together; the caller keeps the vectors to warm-start the next call.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

# Stands for "no bound" where a bound is infinite (zero noise, dead layer), so
# that no Inf leaves the estimators; far above any step size.
UNBOUNDED = 1e30
_TINY = 1e-30


class Layers(NamedTuple):
  """A grouping of parameter leaves into layers.

  names: the layer names, sorted; `index` holds, for each leaf of the param
  tree, the position of its layer in `names`; `is_weight` marks leaves with
  two or more dimensions (kernels), the ones an effective step is read from.
  """

  names: tuple[str, ...]
  index: Any
  is_weight: Any

  @property
  def count(self) -> int:
    return len(self.names)


def layers_of(params, group_fn: Callable[[Any], Any] | None = None) -> Layers:
  """Groups the leaves of `params` by top-level key, or by `group_fn`'s labels."""
  if group_fn is None:
    if not isinstance(params, dict):
      raise ValueError(
          "group_fn: params are not a dict of layers; pass group_fn(params) -> labels"
      )
    labels = {k: jax.tree.map(lambda _, k=k: k, v) for k, v in params.items()}
  else:
    labels = group_fn(params)
  label_leaves = jax.tree.leaves(labels)
  if len(label_leaves) != len(jax.tree.leaves(params)):
    raise ValueError("group_fn: the labels must be a tree shaped like params, one per leaf")
  names = tuple(sorted(set(label_leaves)))
  index = jax.tree.map(names.index, labels)
  is_weight = jax.tree.map(lambda p: p.ndim >= 2, params)
  return Layers(names, index, is_weight)


def per_layer_sum(layers: Layers, values) -> jax.Array:
  """Sums a tree of per-leaf scalars into a (G,) array, one entry per layer."""
  out = jnp.zeros((layers.count,), jnp.float32)
  for i, v in zip(jax.tree.leaves(layers.index), jax.tree.leaves(values)):
    out = out.at[i].add(v)
  return out


def masked_mean(x, mask=None) -> jax.Array:
  """Mean of `x` over its elements where `mask` is 1 (0/1, shaped like x); all if None.

  The mean over a narrower network's own elements when it runs embedded in a
  wider one (`trainability.sweep`); 0 where the mask has no element.
  """
  if mask is None:
    return jnp.mean(x)
  count = jnp.sum(mask)
  return jnp.where(count > 0, jnp.sum(x * mask) / jnp.maximum(count, 1.0), 0.0)


def per_layer_mean(layers: Layers, values, mask=None) -> jax.Array:
  """Averages per-leaf scalars over each layer's leaves (where `mask` is True)."""
  ones = jax.tree.map(lambda _: 1.0, values) if mask is None else jax.tree.map(float, mask)
  weighted = jax.tree.map(lambda v, w: v * w, values, ones)
  count = per_layer_sum(layers, ones)
  return jnp.where(count > 0, per_layer_sum(layers, weighted) / jnp.maximum(count, 1.0), 0.0)


class GradientNoise(NamedTuple):
  """Per layer: ||g||^2 of the minibatch gradient and the per-example variance."""

  grad_sq: jax.Array
  sigma2: jax.Array
  batch_size: int


def per_example_gradients(example_loss, params, batch):
  """Gradients of `example_loss(params, example)` for every example of `batch`.

  `batch` is a pytree whose leaves have a leading batch axis; the result is
  params-shaped with that axis in front. One vmapped computation, no loop.
  """
  return jax.vmap(jax.grad(example_loss), in_axes=(None, 0))(params, batch)


def gradient_noise(example_loss, params, batch, layers: Layers, chunk_size: int = 4,
                   mean_grads=None) -> GradientNoise:
  """||g_l||^2 and sigma2_ps_l = (1/B) sum_i ||g_i,l - g_l||^2 for each layer l.

  Uses sigma2 = (1/B) sum_i ||g_i||^2 - ||g||^2, so only the per-example squared
  norms are kept: `lax.map` over chunks of `chunk_size` examples computes each
  chunk's per-example gradients with vmap (small enough to stay in cache) and
  reduces them to squared norms at once; g is one ordinary batched gradient.
  On a 2-core CPU this is over 20x faster for the paper's MLP than
  materializing all B per-example gradients (a scan that also carried their
  sum was as slow as that); chunks of 4 measured fastest there (1: 18, 2: 17,
  4: 7, 32: 30 training steps per check, benchmarks/scheduler_overhead.py). A ragged last chunk is padded with copies of the
  first example, masked out. `mean_grads`, the minibatch gradient, saves
  recomputing it when the caller has it.
  """
  batch_size = jax.tree.leaves(batch)[0].shape[0]
  size = min(chunk_size, batch_size)
  chunks = -(-batch_size // size)
  pad = chunks * size - batch_size
  padded = jax.tree.map(
      lambda a: jnp.concatenate([a, jnp.repeat(a[:1], pad, axis=0)]).reshape(
          chunks, size, *a.shape[1:]), batch)

  def chunk_squares(examples):
    grads = per_example_gradients(example_loss, params, examples)
    return jax.tree.map(lambda g: jnp.sum(g.reshape(size, -1) ** 2, axis=1), grads)

  keep = (jnp.arange(chunks * size) < batch_size).reshape(chunks, size)
  squares = jax.lax.map(chunk_squares, padded)
  mean_square = per_layer_sum(
      layers, jax.tree.map(lambda q: jnp.sum(q * keep) / batch_size, squares))
  mean = mean_grads
  if mean is None:
    mean_loss = lambda p: jnp.mean(jax.vmap(example_loss, in_axes=(None, 0))(p, batch))
    mean = jax.grad(mean_loss)(params)
  grad_sq = per_layer_sum(layers, jax.tree.map(lambda m: jnp.sum(m**2), mean))
  return GradientNoise(grad_sq, jnp.maximum(mean_square - grad_sq, 0.0), batch_size)


def dense_gradient_noise(example_loss, params, batch, layers: Layers, inputs,
                         mean_grads=None) -> GradientNoise:
  """`gradient_noise` for a network of dense layers, without per-example gradients.

  For a dense layer z = a W + b, example i's gradients are a_i delta_i^T (kernel)
  and delta_i (bias), so ||g_i||^2 = (||a_i||^2 + 1) ||delta_i||^2. The deltas
  are the per-example bias gradients (vmap of grad with respect to the biases
  only: no kernel outer product is formed), `inputs` the layers' inputs
  {top-level key: (B, fan_in)} from one forward pass. Every top-level entry of
  params must be a dense layer holding one `kernel` and one `bias` (possibly
  nested one level, as in models.Network).
  """
  batch_size = jax.tree.leaves(batch)[0].shape[0]
  deltas = dense_deltas(example_loss, params, batch)
  per_layer = {}
  for name in params:
    delta_sq = jnp.sum(deltas[name] ** 2, axis=1)
    input_sq = jnp.sum(inputs[name].reshape(batch_size, -1) ** 2, axis=1)
    per_layer[name] = jnp.sum((input_sq + 1.0) * delta_sq) / batch_size
  mean = mean_grads
  if mean is None:
    mean_loss = lambda p: jnp.mean(jax.vmap(example_loss, in_axes=(None, 0))(p, batch))
    mean = jax.grad(mean_loss)(params)
  grad_sq = per_layer_sum(layers, jax.tree.map(lambda m: jnp.sum(m**2), mean))
  mean_square = jnp.stack([per_layer[n] for n in layers.names])
  return GradientNoise(grad_sq, jnp.maximum(mean_square - grad_sq, 0.0), batch_size)


def dense_noise_fn(example_loss, batch, dense_inputs, model_state):
  """A `gradient_noise(params, grads)` callback by the dense path, or None.

  dense_inputs(params, model_state, x) -> the layers' inputs (a model's
  `dense_inputs`; x = batch[0]), or None for a model that is not all dense
  layers: then this returns None and callers use per-example gradients.
  """
  if dense_inputs is None:
    return None

  def noise(params, grads):
    return dense_gradient_noise(example_loss, params, batch, layers_of(params),
                                dense_inputs(params, model_state, batch[0]), mean_grads=grads)

  return noise


def data_noise_fn(example_loss, batch, dense_inputs, model_state, mean_grads):
  """A `gradient_noise(params, grads)` callback centred on `mean_grads`, the data
  loss's mean gradient, whatever `grads` it is called with (the optimizer's,
  which may include penalties): the dense path when `dense_inputs` is given
  (`dense_noise_fn`), else per-example gradients of `example_loss`."""
  dense = dense_noise_fn(example_loss, batch, dense_inputs, model_state)

  def noise(params, grads):
    del grads
    if dense is not None:
      return dense(params, mean_grads)
    return gradient_noise(example_loss, params, batch, layers_of(params), mean_grads=mean_grads)

  return noise


def dense_deltas(example_loss, params, batch) -> dict:
  """{layer: (B, units)} per-example gradients of each dense layer's bias.

  One vmapped gradient with respect to the biases only; with the layers'
  inputs a_i they give every per-example kernel gradient a_i delta_i^T
  without forming it. params as in `dense_gradient_noise`.
  """
  biases, with_biases = _bias_view(params)
  return jax.vmap(jax.grad(lambda b, example: example_loss(with_biases(b), example)),
                  in_axes=(None, 0))(biases, batch)


def _bias_view(params):
  """({layer: bias}, biases -> params with those biases) of a dense network's params."""
  biases = {name: dict(_flatten_layer(layer))["bias"] for name, layer in params.items()}

  def with_biases(new):
    return {name: _replace_bias(params[name], new[name]) for name in params}

  return biases, with_biases


def dense_gradient_gram(example_loss, params, batch, inputs) -> jax.Array:
  """(B, B) Gram matrix <g_i, g_j> of the per-example gradients of a dense network.

  Per layer <a_i delta_i^T, a_j delta_j^T> + <delta_i, delta_j> =
  (a_i . a_j + 1)(delta_i . delta_j): B x B products, no per-example gradient.
  """
  deltas = dense_deltas(example_loss, params, batch)
  gram = 0.0
  for name in params:
    a = inputs[name].reshape(deltas[name].shape[0], -1)
    gram = gram + (a @ a.T + 1.0) * (deltas[name] @ deltas[name].T)
  return gram


def output_jacobian_grams(logits_fn, params, x, layers: Layers, dense_inputs=None) -> jax.Array:
  """(G, N C, N C): each layer's J_l J_l^T, J_l the Jacobian of the N x C outputs
  `logits_fn(params, x)` with respect to that layer's parameters.

  The empirical neural tangent kernel of each layer on the N examples of `x`
  (rows example-major: i C + c); their sum over layers is the whole network's
  J J^T. Generic path: the rows of J from one vmapped pullback of the N C unit
  cotangents, N C x P numbers in memory. Dense path (`dense_inputs`, the
  layers' inputs {layer: (N, fan_in)}, for a network of dense layers whose
  examples do not interact): row (i, c) of a dense layer's Jacobian is
  a_i (x) delta_ic and delta_ic for its bias, so J_l J_l^T =
  (a_i . a_j + 1)(delta_ic . delta_jc'), from the N x C x units output deltas
  (a vmapped Jacobian with respect to the biases only): N^2 fan_in + (N C)^2 units
  multiply-adds per layer and no N C x P array.
  """
  if dense_inputs is not None:
    deltas = dense_output_deltas(logits_fn, params, x)
    grams = []
    for name in layers.names:
      n, c, units = deltas[name].shape
      a = dense_inputs[name].reshape(n, -1)
      inputs = jnp.repeat(jnp.repeat(a @ a.T + 1.0, c, 0), c, 1)
      d = deltas[name].reshape(n * c, units)
      grams.append(inputs * (d @ d.T))
    return jnp.stack(grams)
  outputs, pullback = jax.vjp(lambda p: logits_fn(p, x).reshape(-1), params)
  rows = outputs.shape[0]
  (jacobian,) = jax.vmap(pullback)(jnp.eye(rows, dtype=outputs.dtype))
  products = jax.tree.map(lambda j: (lambda m: m @ m.T)(j.reshape(rows, -1)), jacobian)
  grams = jnp.zeros((layers.count, rows, rows), outputs.dtype)
  for i, product in zip(jax.tree.leaves(layers.index), jax.tree.leaves(products)):
    grams = grams.at[i].add(product)
  return grams


def dense_output_deltas(logits_fn, params, x) -> dict:
  """{layer: (N, C, units)} d output_c(x_i) / d bias of each dense layer.

  The per-example, per-output gradients of the biases, from one vmapped
  Jacobian with respect to the biases only; params as in `dense_gradient_noise`.
  """
  biases, with_biases = _bias_view(params)

  def outputs(b, xi):
    return logits_fn(with_biases(b), xi[None])[0]

  return jax.vmap(jax.jacrev(outputs), in_axes=(None, 0))(biases, x)


def _flatten_layer(layer):
  """(kind, leaf) for a dense layer's kernel and bias, possibly one level down."""
  for key, value in layer.items():
    if isinstance(value, dict):
      yield from _flatten_layer(value)
    else:
      yield key, value


def _replace_bias(layer, bias):
  return {k: (_replace_bias(v, bias) if isinstance(v, dict) else bias if k == "bias" else v)
          for k, v in layer.items()}


def _one_matrix_at_a_time(decomposition):
  """`decomposition` of a (..., n, m) stack as a loop over single matrices.

  XLA:CPU runs a batched LAPACK call (a leading batch axis, or one made by
  `jax.vmap`) on its intra-op thread pool, and inside a program sharded over
  several CPU devices (`devices.py`) that call never returned: every thread
  waited (jax/jaxlib 0.10.2, 2 devices on 2 cores, 2 seeds per device,
  eigvalsh of 80 x 80 and larger). Looping (`lax.map`, and
  `sequential_vmap` under vmap) gives LAPACK one matrix per call.
  """
  single = jax.custom_batching.sequential_vmap(decomposition)

  def stacked(a):
    if a.ndim == 2:
      return single(a)
    out = jax.lax.map(single, a.reshape((-1,) + a.shape[-2:]))
    return jax.tree.map(lambda o: o.reshape(a.shape[:-2] + o.shape[1:]), out)

  return stacked


# The LAPACK decompositions the estimators and indicators use, one matrix per call.
eigh = _one_matrix_at_a_time(lambda a: jnp.linalg.eigh(a))
eigvalsh = _one_matrix_at_a_time(lambda a: jnp.linalg.eigvalsh(a))
singular_values = _one_matrix_at_a_time(lambda a: jnp.linalg.svd(a, compute_uv=False))


def critical_step(noise: GradientNoise) -> jax.Array:
  """alpha*_g = B ||g||^2 / sigma2_ps per layer; UNBOUNDED where there is no noise."""
  return safe_ratio(noise.batch_size * noise.grad_sq, noise.sigma2)


def safe_ratio(numerator, denominator):
  """numerator / denominator, UNBOUNDED where the denominator is not positive."""
  positive = denominator > _TINY
  ratio = numerator / jnp.where(positive, denominator, 1.0)
  return jnp.where(positive, jnp.minimum(ratio, UNBOUNDED), UNBOUNDED)


# From this many layers on, `block_hvp` linearizes the whole gradient once and walks the
# layers in a loop: compile time and memory then grow with the network's size, not with
# layers x size (a deep circuit's or a deep MLP's G separate linearizations do).
SHARED_LINEARIZATION_FROM = 9
LINEARIZATIONS = ("auto", "per_layer", "shared")


def block_hvp(loss, params, layers: Layers, linearization: str = "auto"):
  """v -> each layer's diagonal Hessian block times that layer's part of v.

  Returns a function of a params-shaped tree whose layer-l leaves of the result
  hold H_ll v_l. Call it inside the same trace (a jitted function) as often as
  needed. Two ways to the same products (`linearization`):

  * "per_layer": each layer's block is `jax.linearize` of the gradient with
    respect to that layer's leaves only (forward over reverse). Its primal
    forward and backward passes run once per layer when this is built (G
    linearizations, each keeping its own residuals), and every call after that
    runs only the tangent part, restricted to what reaches and leaves that
    layer (the other layers are constants, so nothing is spent on their
    gradients). Fastest for a few layers, but the program and its memory hold
    G copies of the network: quadratic in depth.
  * "shared": one `jax.linearize` of the whole gradient; a call runs its
    tangent map once per layer in a `lax.fori_loop`, on v masked to layer l,
    and keeps layer l's part of H (0, ..., v_l, ..., 0). One copy of the
    network in the program and in memory, whatever the depth; each product
    costs a full tangent pass.
  * "auto" (default): "shared" from SHARED_LINEARIZATION_FROM layers on.
  """
  if linearization not in LINEARIZATIONS:
    raise ValueError(f"linearization: {linearization!r} is not accepted; choose one of "
                     f"{', '.join(LINEARIZATIONS)}")
  if linearization == "auto":
    shared = layers.count >= SHARED_LINEARIZATION_FROM
  else:
    shared = linearization == "shared"
  if shared:
    return _shared_block_hvp(loss, params, layers)
  leaves, treedef = jax.tree.flatten(params)
  labels = jax.tree.leaves(layers.index)
  blocks = []
  for layer in range(layers.count):
    idx = tuple(i for i, label in enumerate(labels) if label == layer)

    def block_loss(sub, idx=idx):
      full = list(leaves)
      for i, leaf in zip(idx, sub):
        full[i] = leaf
      return loss(jax.tree.unflatten(treedef, full))

    _, linear = jax.linearize(jax.grad(block_loss), tuple(leaves[i] for i in idx))
    blocks.append((idx, linear))

  def apply(vector):
    parts = jax.tree.leaves(vector)
    out = [None] * len(parts)
    for idx, linear in blocks:
      for i, product in zip(idx, linear(tuple(parts[i] for i in idx))):
        out[i] = product
    return jax.tree.unflatten(treedef, out)

  return apply


def _shared_block_hvp(loss, params, layers: Layers):
  """`block_hvp`'s "shared" form: one linearization, the layers walked in a loop."""
  _, linear = jax.linearize(jax.grad(loss), params)

  def apply(vector):
    def one_layer(layer, out):
      on_layer = lambda index, a, b: jnp.where(index == layer, a, b)
      tangent = jax.tree.map(lambda i, v: on_layer(i, v, jnp.zeros_like(v)), layers.index,
                             vector)
      return jax.tree.map(on_layer, layers.index, linear(tangent), out)

    return jax.lax.fori_loop(0, layers.count, one_layer, jax.tree.map(jnp.zeros_like, vector))

  return apply


def _per_layer_dot(layers, a, b):
  return per_layer_sum(layers, jax.tree.map(lambda x, y: jnp.vdot(x, y).real, a, b))


def normalize_per_layer(layers: Layers, vector, fallback_key=None, mask=None):
  """Scales each layer's part of `vector` to unit norm.

  A layer whose part is zero (a zero HVP: no curvature) gets a fresh random
  direction from `fallback_key` (on the elements where `mask` is 1, if given),
  or stays zero without one.
  """
  norms = jnp.sqrt(_per_layer_dot(layers, vector, vector))
  scale = jnp.where(norms > _TINY, 1.0 / jnp.maximum(norms, _TINY), 0.0)
  unit = jax.tree.map(lambda v, i: v * scale[i], vector, layers.index)
  if fallback_key is None:
    return unit
  fresh = random_unit_vectors(fallback_key, vector, layers, mask)
  return jax.tree.map(lambda u, z, i: jnp.where(norms[i] > _TINY, u, z),
                      unit, fresh, layers.index)


def random_unit_vectors(key, params, layers: Layers, mask=None):
  """A random direction per layer, unit norm within each layer (and zero where
  `mask`, a params-shaped 0/1 tree, is 0)."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  noise = jax.tree.unflatten(
      treedef, [jax.random.normal(k, p.shape, p.dtype) for k, p in zip(keys, leaves)])
  return normalize_per_layer(layers, apply_mask(noise, mask))


def apply_mask(tree, mask=None):
  """`tree` with the elements where `mask` (a 0/1 tree shaped like it) is 0 set to 0."""
  return tree if mask is None else jax.tree.map(lambda x, m: x * m.astype(x.dtype), tree, mask)


class Eigen(NamedTuple):
  """Per-layer top eigenvalues (G,) and their unit eigenvectors (params-shaped)."""

  values: jax.Array
  vectors: Any


def power_iteration(loss, params, layers: Layers, start, iterations: int, key=None,
                    mask=None) -> Eigen:
  """Top (largest-magnitude) eigenvalue of each layer's diagonal Hessian block.

  `start` is a params-shaped tree of per-layer directions: pass the previous
  result's `vectors` to warm-start. Each iteration is one block HVP per layer;
  its Rayleigh quotient v^T H_ll v (v of unit norm) is the estimate, so there
  is no extra HVP for it, and the returned vectors are the next iterates.
  Warm-started from check to check, one iteration per check runs a power
  iteration across the checks. The value is exact for an exact eigenvector,
  never NaN, and 0 for a layer with no curvature; `key` re-seeds a layer whose
  HVP vanished. `mask` (params-shaped, 0/1) keeps every direction on the
  elements marked 1: the Hessian of the network embedded there.
  """
  vector = normalize_per_layer(layers, apply_mask(start, mask))
  hvp = block_hvp(loss, params, layers)

  def body(_, carry):
    v, _ = carry
    product = hvp(v)
    return (normalize_per_layer(layers, product, key, mask),
            _per_layer_dot(layers, v, product))

  vector, values = jax.lax.fori_loop(
      0, iterations, body, (vector, jnp.zeros((layers.count,), jnp.float32)))
  return Eigen(values, vector)


class Lanczos(NamedTuple):
  """Per-layer top Ritz values (G,), unit Ritz vectors, steps taken and residual bounds.

  `residuals` (G,) is ||H_ll x_l - value_l x_l|| for the returned vector x_l:
  some eigenvalue of the block lies within it of `values` (Lanczos' own
  error estimate, beta_j |y_j|, no extra HVP).
  """

  values: jax.Array
  vectors: Any
  steps: jax.Array
  residuals: jax.Array


def _combine(layers: Layers, basis, coefficients):
  """sum_k coefficients[k, layer] * basis[k], per leaf (the leaf's own layer)."""
  return jax.tree.map(lambda b, i: jnp.tensordot(coefficients[:, i], b, axes=1),
                      basis, layers.index)


def lanczos(hvp, layers: Layers, start, max_steps: int, tol: float = 0.0, min_steps: int = 1,
            key=None, mask=None) -> Lanczos:
  """Top (largest algebraic) eigenvalue of every layer's Hessian block, by Lanczos.

  hvp: `block_hvp(loss, params, layers)`. All layers run together: each
  Krylov basis lives in its own layer's leaves, with per-layer inner products;
  each new direction is orthogonalized (twice) against the last two only, the
  three-term recurrence: few steps are taken, and lost orthogonality only
  repeats converged Ritz values, it does not move the top one. `start` (params-shaped) is the first
  basis vector of each layer: pass the previous result's `vectors` to
  warm-start. Stops after `max_steps` HVPs per layer, or earlier, once
  `min_steps` are done and every layer's residual is <= tol * |value| (tol 0:
  always `max_steps`). A layer whose Krylov space is exhausted (an invariant
  subspace: the new direction is below float precision) stops growing; its
  value is then exact. Under `vmap` the loop runs until every member is done.
  A layer whose block is 0 gets value 0; `key` re-seeds a zero start.
  `mask` (params-shaped, 0/1) keeps the start and any re-seeded direction on
  the elements marked 1: the Hessian of a narrower network embedded there
  (its padding has zero Hessian rows, so the Krylov space stays on it).
  """
  if not 1 <= min_steps <= max_steps:
    raise ValueError(f"min_steps: {min_steps!r} is not accepted; give 1 <= min_steps <= "
                     f"max_steps ({max_steps})")
  rows = max_steps + 1
  first = normalize_per_layer(layers, apply_mask(start, mask), key, mask)
  basis = jax.tree.map(lambda v: jnp.zeros((rows,) + v.shape, v.dtype).at[0].set(v), first)
  g = layers.count
  position = jnp.arange(max_steps)[:, None]                # (max_steps, 1)

  def ritz(alphas, betas, length):
    """Top eigenpair of each layer's tridiagonal matrix of its first `length` steps."""
    used = position < length[None, :]                      # (max_steps, G)
    low = -(jnp.max(jnp.abs(alphas), 0) + 2 * jnp.max(jnp.abs(betas), 0)) - 1.0
    diagonal = jnp.where(used, alphas, low[None, :])       # unused rows: below every value
    off = jnp.where(position + 1 < length[None, :], betas, 0.0)[:-1]
    matrix = (jax.vmap(jnp.diag)(diagonal.T) + jax.vmap(lambda o: jnp.diag(o, 1))(off.T)
              + jax.vmap(lambda o: jnp.diag(o, -1))(off.T))
    values, vectors = eigh(matrix)
    y = jnp.where(used.T, vectors[:, :, -1], 0.0)          # (G, max_steps)
    last = jnp.take_along_axis(y, jnp.maximum(length - 1, 0)[:, None], 1)[:, 0]
    return values[:, -1], y, last

  def step(j, basis, alphas, betas, length, active):
    """One Lanczos step of every layer: the three-term recurrence, orthogonalized twice."""
    q = jax.tree.map(lambda b: b[j], basis)
    previous = jax.tree.map(lambda b: b[jnp.maximum(j - 1, 0)], basis)
    w = hvp(q)
    alpha = _per_layer_dot(layers, q, w)
    size = jnp.sqrt(jnp.maximum(_per_layer_dot(layers, w, w), 0.0))
    for _ in range(2):  # against q_j and q_{j-1} (zero at j = 0)
      a = _per_layer_dot(layers, q, w)
      b = jnp.where(j > 0, _per_layer_dot(layers, previous, w), 0.0)
      w = jax.tree.map(lambda x, u, v, i: x - a[i] * u - b[i] * v, w, q, previous, layers.index)
    beta = jnp.sqrt(jnp.maximum(_per_layer_dot(layers, w, w), 0.0))
    length = length + active                                # this step counts where active
    alphas = alphas.at[j].set(jnp.where(active, alpha, 0.0))
    betas = betas.at[j].set(jnp.where(active, beta, 0.0))
    active = active & (beta > 1e-5 * size) & (beta > _TINY)  # else: an invariant subspace
    scale = jnp.where(active, 1.0 / jnp.maximum(beta, _TINY), 0.0)
    basis = jax.tree.map(lambda b, v, i: b.at[j + 1].set(v * scale[i]), basis, w, layers.index)
    return basis, alphas, betas, length, active

  def residual_of(betas, length, last):
    return jnp.take_along_axis(betas, jnp.maximum(length - 1, 0)[None, :], 0)[0] * jnp.abs(last)

  def body(carry):
    j, basis, alphas, betas, length, active, _ = carry
    basis, alphas, betas, length, active = step(j, basis, alphas, betas, length, active)
    value, _, last = ritz(alphas, betas, length)
    converged = jnp.all(residual_of(betas, length, last) <= tol * jnp.abs(value))
    done = ((j + 1 >= min_steps) & converged) | (j + 1 >= max_steps) | ~jnp.any(active)
    return j + 1, basis, alphas, betas, length, active, done

  zeros = jnp.zeros((max_steps, g), jnp.float32)
  carry = (jnp.zeros((), jnp.int32), basis, zeros, zeros, jnp.zeros((g,), jnp.int32),
           jnp.ones((g,), bool), jnp.bool_(False))
  if tol > 0:
    carry = jax.lax.while_loop(lambda c: ~c[-1], body, carry)
  else:  # a fixed number of steps: no convergence test inside the loop
    carry = (jnp.int32(max_steps),) + jax.lax.fori_loop(
        0, max_steps, lambda j, c: step(j, *c), carry[1:-1]) + (jnp.bool_(True),)
  steps, basis, alphas, betas, length, active, _ = carry
  value, y, last = ritz(alphas, betas, length)
  vector = _combine(layers, jax.tree.map(lambda b: b[:max_steps], basis), y.T)
  residual = residual_of(betas, length, last)
  return Lanczos(value, normalize_per_layer(layers, vector, key, mask), steps, residual)


LANCZOS_MIN_STEPS = 3  # before a warm-started Lanczos may stop on its residual


def top_block_eigenvalues(loss, params, layers: Layers, start, method: str, steps: int,
                          tol: float, key=None, mask=None) -> Eigen:
  """Each layer's top Hessian-block eigenvalue, warm-started from `start`.

  method "lanczos": `lanczos` with at most `steps` HVPs per layer, stopping
  at relative residual `tol` (after LANCZOS_MIN_STEPS at least); the largest algebraic
  eigenvalue. "power": `power_iteration`, exactly `steps` HVPs; the
  largest-magnitude eigenvalue. Pass the previous result's `vectors` as
  `start` to follow the eigenvector from one call to the next. `mask`: the
  elements of the network (0 for the padding of an embedded narrower one).
  """
  if method == "power":
    return power_iteration(loss, params, layers, start, steps, key=key, mask=mask)
  if method != "lanczos":
    raise ValueError(f"curvature: {method!r} is not accepted; choose one of lanczos, power")
  result = lanczos(block_hvp(loss, params, layers), layers, start, steps, tol,
                   min_steps=min(LANCZOS_MIN_STEPS, steps), key=key, mask=mask)
  return Eigen(result.values, result.vectors)
