"""Regularizers against loss of trainability (method.md section 6), as pure penalties.

Each `penalty(params, anchor)` returns a scalar without its coefficient; the
training loss adds `coefficient * penalty`. `anchor` is the initial
parameters (`prepare_anchor` turns them into what the penalty compares with).
Faithful to the reference code (sheeerio/continual, implicit_regularization.py):

* `l2_init` (Kumar et al.): sum over every parameter of (theta - theta_0)^2.
* `wasserstein` (Lewandowski et al.): for each parameter tensor (each kernel and
  each bias), ||sort(vec theta) - sort(vec theta_0)||^2: the squared
  2-Wasserstein distance between the empirical distributions of its current and
  initial values, which lets the weights move but keeps their distribution.
* `spectral`: for each kernel, (sigma_max(W)^k - 1)^2 (reference k = 2),
  sigma_max from `power_iterations` power-iteration steps on W^T W started from
  a fixed vector, the vector held constant for the gradient (d sigma = u v^T).
* `orthogonal`: for each kernel W (fan_in x fan_out; a conv kernel flattened to
  (kh kw c_in) x c_out), ||W W^T - I||_F^2, the reference's Frobenius form.
  (The reference's sigma_min variant is not offered.)

Kernels are the leaves with two or more dimensions; plain L2 (coupled and
decoupled) lives in the optimizer (`trainability.optim`). `as_component`
makes a regularizer a run component (`trainability.components`).

The hard-constraint counterpart of `l2_init`: `project_to_init_ball` keeps
each layer within a ball around its initial value, ||theta_l - theta_l,0|| <=
radius ||theta_l,0||, and `constraint_component` applies it after every
update (projected gradient descent). Zhang et al. (2021, "Fewer than n
neurons can work") train by projected gradient methods inside a region
around their mirrored init; their exact constraint set was not available
here, so this ball, its per-layer relative radius and its default are our
design, not theirs.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from trainability import estimators, indicators
from trainability.components import Component
from trainability.settings import Number, Setting

REGULARIZERS = ("none", "l2_init", "wasserstein", "spectral", "orthogonal")


def _kernels(params):
  return [p for p in jax.tree.leaves(params) if p.ndim >= 2]


def _as_matrix(kernel):
  """(fan_in, fan_out) view: flax kernels are (..., c_in, c_out)."""
  return kernel.reshape(-1, kernel.shape[-1])


def prepare_anchor(kind: str, init_params):
  """What `penalty` compares with: sorted values for wasserstein, else the params."""
  if kind == "wasserstein":
    return jax.tree.map(lambda p: jnp.sort(p.reshape(-1)), init_params)
  return init_params


def l2_init(params, anchor) -> jax.Array:
  return sum(jnp.sum((p - a) ** 2) for p, a in zip(jax.tree.leaves(params),
                                                   jax.tree.leaves(anchor)))


def wasserstein(params, sorted_anchor) -> jax.Array:
  """sum over tensors of ||sort(vec p) - sorted anchor||^2 (anchor from prepare_anchor)."""
  return sum(jnp.sum((jnp.sort(p.reshape(-1)) - a) ** 2)
             for p, a in zip(jax.tree.leaves(params), jax.tree.leaves(sorted_anchor)))


def top_singular_value(matrix, iterations: int = 20) -> jax.Array:
  """sigma_max by power iteration on M^T M from a fixed start; d sigma/dM = u v^T."""
  v = jnp.ones((matrix.shape[1],), matrix.dtype) / jnp.sqrt(matrix.shape[1])

  def body(_, v):
    w = matrix.T @ (matrix @ v)
    return w / jnp.maximum(jnp.linalg.norm(w), 1e-12)

  v = jax.lax.stop_gradient(jax.lax.fori_loop(0, iterations, body, v))
  return jnp.linalg.norm(matrix @ v)


def spectral(params, anchor=None, power: int = 2, iterations: int = 20) -> jax.Array:
  del anchor
  return sum((top_singular_value(_as_matrix(k), iterations) ** power - 1.0) ** 2
             for k in _kernels(params))


def orthogonal(params, anchor=None) -> jax.Array:
  del anchor
  total = 0.0
  for k in _kernels(params):
    w = _as_matrix(k)
    total = total + jnp.sum((w @ w.T - jnp.eye(w.shape[0], dtype=w.dtype)) ** 2)
  return total


def penalty_fn(kind: str) -> Callable:
  """`penalty(params, anchor) -> scalar` of a regularizer; one-line error otherwise."""
  table = {"none": lambda params, anchor: jnp.float32(0.0), "l2_init": l2_init,
           "wasserstein": wasserstein, "spectral": spectral, "orthogonal": orthogonal}
  if kind not in table:
    raise ValueError(f"regularizer: {kind!r} is not accepted; choose one of "
                     f"{', '.join(REGULARIZERS)}")
  return table[kind]


def as_component(kind: str, coefficient: float) -> Component:
  """The regularizer `kind` as a run component: its anchor (the initial
  parameters) is its state, and `reg_coef` (traced) weights its penalty."""
  penalty = penalty_fn(kind)
  anchor = lambda params, model_state, key: prepare_anchor(kind, params)
  return Component("regularizer", init=anchor,
                   hparams={"reg_coef": coefficient},
                   penalty=lambda params, anchor, hp: penalty(params, anchor), weight="reg_coef")


def project_to_init_ball(params, anchor, radius):
  """params with each layer (a top-level key) pulled back onto its ball around
  `anchor`, ||theta_l - anchor_l|| <= radius ||anchor_l||: the nearest point
  of the ball (Euclidean projection), the layer unchanged when inside it.

  A layer whose anchor is all zeros has a ball of radius 0: it stays at 0.
  Padding elements that are 0 in both stay 0 (a width sweep's embedded nets).
  """
  layers = estimators.layers_of(params)
  moved = jax.tree.map(jnp.subtract, params, anchor)
  distance = indicators.norms(layers, moved)
  allowed = radius * indicators.norms(layers, anchor)
  scale = jnp.where(distance > allowed, allowed / jnp.maximum(distance, 1e-30), 1.0)
  return jax.tree.map(lambda a, m, i: a + scale[i] * m, anchor, moved, layers.index)


def constraint_component(kind: str, radius: float) -> Component:
  """Projected training as a run component: after every update the params are
  projected onto the init ball (`project_to_init_ball`); its anchor, the
  initial params, is the state, and `constraint_radius` is traced."""
  if kind != "init_ball":
    raise ValueError(f"constraint: {kind!r} is not accepted; choose one of "
                     f"{', '.join(CONSTRAINTS[1:])}")

  def after_update(step, anchor, hp):
    params = project_to_init_ball(step.params, anchor, hp["constraint_radius"])
    return step._replace(params=params), anchor

  return Component("constraint", init=lambda params, model_state, key: params,
                   hparams={"constraint_radius": radius}, after_update=after_update)


CONSTRAINTS = ("none", "init_ball")

SETTINGS = (
    Setting("regularizer", "none", "penalty added to the loss (to the initial params for "
            "l2_init, wasserstein)", str, REGULARIZERS),
    Setting("reg_coef", 1e-3, "regularizer: its coefficient", float, check=Number(0.0),
            acts_with=("regularizer", REGULARIZERS[1:]), traced=True),
    Setting("constraint", "none", "projected training: after every update each layer is "
            "projected onto its ball around the initial params (init_ball)", str, CONSTRAINTS),
    Setting("constraint_radius", 1.0, "init_ball: the ball's radius, a multiple of the "
            "layer's initial norm", float, check=Number(0.0),
            acts_with=("constraint", CONSTRAINTS[1:]), traced=True),
)
