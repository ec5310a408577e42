"""TRAC, a parameter-free scale tuner around any optimizer (Muppidi, Zhang & Yang,
"Fast TRAC: A Parameter-Free Optimizer for Lifelong Reinforcement Learning",
NeurIPS 2024, arXiv 2405.16642).

`trac(inner)` is an optax transformation, written from the paper's
description and its project page (not from the authors' code); its module
imports jax, optax and none of the package's heavier modules (no flax):

    tx = trac(optax.adam(1e-3))
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)

The inner optimizer ("Base") runs as usual, but its iterate is not used
directly. With theta_ref the parameters at `init` and Delta_t = theta^Base_t -
theta_ref the base iterate's displacement, the parameters are

    theta_t = theta_ref + S_t Delta_t,

the displacement scaled by S_t >= 0, which a sum of one-dimensional
discounted "erfi" tuners learns online, one per discount factor beta_j (the
paper's direction-magnitude decomposition and additive aggregation). Per
step, with g_t the gradient at theta_t and u_t the inner optimizer's update:

    h_t          = <g_t, Delta_t>                    (over every parameter)
    v_j          <- beta_j^2 v_j + h_t^2
    sigma_j      <- beta_j sigma_j - h_t
    s_j          = s_init / erfi(1/sqrt 2) * erfi(sigma_j / (sqrt(2 v_j) + eps))
    S_{t+1}      = max(0, sum_j s_j)
    Delta_{t+1}  = Delta_t + u_t

and the transformation returns theta_{t+1} - theta_t = S_{t+1} Delta_{t+1} -
S_t Delta_t. A tuner whose history agrees in sign (sigma_j = sqrt(v_j)) has
s_j = s_init; consistent progress along Delta (h < 0) grows S, overshoot
(h > 0) shrinks it, towards theta_ref: the "regularization towards the
initialization" that the paper credits for keeping a network trainable.

Choices where the sources leave room, stated so they can be checked:
* sigma_j and v_j start at 0, S at 0: the first update leaves theta at
  theta_ref and the tuners start from the second step, when Delta is the
  first base update (the authors' code seeds sigma with 1e-8, one step sooner).
* Delta is carried in the state (one copy of the parameters), exactly as the
  paper's recursion, rather than recovered as (theta - theta_ref) / S, which
  loses the base displacement in float32 while S is of order 1e-8.
* The update is an increment, so a change that something else makes to the
  parameters between updates (a remedy's shrink-and-perturb or unit reset)
  stays as it is: TRAC scales only its base displacement.
* erfi is evaluated by its power series, with the argument clipped to
  |x| <= 9 (erfi(9) ~ 1e34): beyond it float32 overflows and S would be inf.
* The inner optimizer sees g_t at theta_t, as in the authors' description;
  so a coupled L2 term or AdamW's decay inside it acts on theta_t, and h_t
  is the inner product with the gradient the transformation is given.
* S has no ceiling but the erfi clip (S <= n s_init erfi(9) / erfi(1/sqrt 2),
  about 6e26 at the defaults), as in the paper: a long run of gradients that
  agree in sign grows it quickly.
* A unit reset (continual backprop, ReDo) zeroes Delta on the weights it
  replaces (`TracState.restart_elements`), so TRAC does not carry the old
  displacement into the fresh ones.

Defaults are the paper's: beta_j in {0.9, 0.99, ..., 0.999999}, s_init =
eps = 1e-8.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from trainability.components import Component
from trainability.settings import Number, Setting
from trainability.signals import find_state

BETAS = (0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999)
S_INIT = 1e-8
EPS = 1e-8
ERFI_CLIP = 9.0  # |argument| of erfi; erfi(9) ~ 1e34, erfi(9.5) overflows float32
_SERIES_TERMS = 160  # enough for |x| <= 9 (the terms peak near n = x^2 = 81)


class TracState(NamedTuple):
  inner: Any
  displacement: Any   # Delta_t = theta^Base_t - theta_ref, params-shaped
  v: jax.Array        # (n,) discounted sums of h^2
  sigma: jax.Array    # (n,) discounted sums of -h
  scale: jax.Array    # S_t, a scalar

  def restart_elements(self, touched) -> "TracState":
    """This state with Delta zeroed where `touched` (a params-shaped bool tree):
    the weights a unit reset replaced start again from their new values."""
    return self._replace(displacement=jax.tree.map(
        lambda t, d: jnp.where(t, jnp.zeros_like(d), d), touched, self.displacement))


def erfi(x):
  """The imaginary error function, 2/sqrt(pi) int_0^x exp(t^2) dt, in float32.

  Its power series 2/sqrt(pi) sum_n x^(2n+1) / (n! (2n+1)) has positive terms
  for x > 0, so it sums without cancellation; valid for |x| <= 9.5.
  """
  x = jnp.asarray(x, jnp.float32)
  a = jnp.abs(x)
  n = jnp.arange(_SERIES_TERMS, dtype=jnp.float32)
  log_terms = ((2 * n + 1) * jnp.log(a[..., None]) - jax.scipy.special.gammaln(n + 1)
               - jnp.log(2 * n + 1))
  total = jnp.sum(jnp.exp(log_terms), axis=-1)
  return jnp.sign(x) * 2.0 / math.sqrt(math.pi) * total


def trac(inner: optax.GradientTransformation, betas: Sequence[float] = BETAS,
         s_init: float = S_INIT, eps: float = EPS) -> optax.GradientTransformationExtraArgs:
  """TRAC around `inner` (module doc): the inner optimizer's displacement from
  the initial parameters, scaled by a learned S >= 0.

  betas: the tuners' discount factors, each in (0, 1]. s_init: each tuner's
  scale when its history agrees in sign (paper 1e-8). eps: keeps the erfi
  argument finite when v = 0. Extra keyword arguments of `update` go on to
  `inner` (optax's extra-args contract).
  """
  betas = tuple(float(b) for b in betas)
  if not betas or any(not 0.0 < b <= 1.0 for b in betas):
    raise ValueError(f"betas: {betas!r} is not accepted; give one or more values in (0, 1]")
  if not s_init > 0.0:
    raise ValueError(f"s_init: {s_init!r} is not accepted; give a value > 0")
  if not eps > 0.0:
    raise ValueError(f"eps: {eps!r} is not accepted; give a value > 0")
  inner = optax.with_extra_args_support(inner)
  beta = jnp.asarray(betas, jnp.float32)
  # erfi(1/sqrt 2) in Python floats (the factory may run under a jit trace).
  half = 0.5  # x^2 at x = 1/sqrt 2
  series = sum(half**n / (math.factorial(n) * (2 * n + 1)) for n in range(30))
  unit = s_init / (2.0 / math.sqrt(math.pi) * math.sqrt(half) * series)

  def init(params) -> TracState:
    zeros = jnp.zeros((len(betas),), jnp.float32)
    return TracState(inner.init(params), jax.tree.map(jnp.zeros_like, params), zeros, zeros,
                     jnp.zeros([], jnp.float32))

  def update(updates, state, params=None, **extra):
    grads = updates
    inner_updates, inner_state = inner.update(grads, state.inner, params, **extra)
    h = sum(jnp.vdot(g, d).astype(jnp.float32) for g, d in
            zip(jax.tree.leaves(grads), jax.tree.leaves(state.displacement)))
    v = beta**2 * state.v + h**2
    sigma = beta * state.sigma - h
    x = jnp.clip(sigma / (jnp.sqrt(2.0 * v) + eps), -ERFI_CLIP, ERFI_CLIP)
    scale = jnp.maximum(jnp.sum(unit * erfi(x)), 0.0)
    displacement = jax.tree.map(lambda d, u: d + u.astype(d.dtype), state.displacement,
                                inner_updates)
    # S' (Delta + u) - S Delta, without the cancellation of two large terms.
    step = jax.tree.map(
        lambda u, d: (scale * u + (scale - state.scale) * d).astype(d.dtype),
        inner_updates, state.displacement)
    return step, TracState(inner_state, displacement, v, sigma, scale)

  return optax.GradientTransformationExtraArgs(init, update)


def state_of(opt_state) -> TracState | None:
  """The TRAC state inside an optimizer state (None if there is none)."""
  return find_state(opt_state, TracState)


def layer_scale(opt_state):
  """S for every layer, (layers,) (top-level keys of the params), or None without TRAC.

  The factor TRAC puts on the inner optimizer's update (the term along the
  old displacement aside): what the indicators of the effective step read
  (`components.Step.multiplier`).
  """
  state = state_of(opt_state)
  if state is None:
    return None
  return jnp.full((len(state.displacement),), state.scale, jnp.float32)


def as_component(s_init: float = S_INIT) -> Component:
  """TRAC as a run component: it wraps the run's optimizer (`trac(tx, s_init=...)`,
  the paper's betas and eps). A reset of the optimizer state (`--reset
  optimizer` or `both`) restarts it from the parameters it finds: a new
  theta_ref, S = 0."""
  return Component("trac", wrap_optimizer=lambda tx: trac(tx, s_init=s_init),
                   multiplier=layer_scale)


SETTINGS = (
    Setting("trac_s_init", S_INIT, "trac: each tuner's scale when its history agrees in sign "
            "(paper 1e-8)", float, check=Number(0.0, low_open=True),
            acts_with=("scheduler", ("trac",))),
)

__all__ = ["BETAS", "S_INIT", "EPS", "TracState", "erfi", "trac", "state_of", "layer_scale",
           "as_component", "SETTINGS"]
