"""Optimizers from optax, with every numeric hyperparameter injectable.

Each optimizer is wrapped in `optax.inject_hyperparams`, so its hyperparameters
live in the optimizer state as arrays: a sweep passes them as traced (vmapped)
values and compiles once, and a reset of the optimizer state keeps them.

Every optimizer also takes `l2`, the coupled L2 penalty of PyTorch's
`weight_decay` argument (and of the paper's L2 arm): `l2 * params` is added to
the gradient before the optimizer sees it, so Adam normalizes it like the rest
of the gradient. AdamW's `weight_decay` is the decoupled kind, applied after.

`make_optimizer(..., element_counts=True)` gives Adam and AdamW one step count
per parameter element instead of one per optimizer (`scale_by_adam_per_element`),
so that a unit reset (continual backprop, ReDo) can hand the replaced weights
a truly fresh Adam state: zero moments *and* a zero count, so their bias
correction starts over. With one shared count, zeroed moments of a reset weight
would be "corrected" as if they had hundreds of steps behind them, and its first
updates would be several times too large. Without resets the two are the same
optimizer (tested).

`adam_betas="reference"` (`--adam-betas reference`) reproduces what the
reference code (sheeerio/continual, branch `sept`) does to every Adam run,
vanilla ones included, without saying so: after each update it overwrites the
betas of its first parameter group (the input layer, weights and bias) with
`get_betas(cfg, epoch)`, a ramp over the epoch of the current task,

    b1(e) = b1 + (0.99 - b1) e / (2 E),   b2(e) = b2 + (0.75 - b2) e / (2 E),

E the epochs per task, e = 0..E-1 the epoch the update fell in, restarting at
every task (about (0.943, 0.879) at a task's end with the defaults). So update
number c (0-based, over the run) uses the betas of the epoch of update c - 1:
the first update of each epoch still runs with the previous epoch's betas, the
first of a task with the last epoch's of the task before. PyTorch's Adam
corrects the bias with the current betas and the run's step count, as
`optax.scale_by_adam` does (`scale_by_adam_beta_ramp`). The paper does not
mention this schedule; the default, "constant", does not apply it.
"""

from __future__ import annotations

import inspect
from typing import Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

from trainability.settings import ConfigError, Number, Setting
from trainability.signals import INJECTED_STATES, find_state


def _with_coupled_l2(factory):
  """factory(**kw) preceded by `l2 * params` added to the gradient."""

  def make(l2=0.0, **hyperparams):
    return optax.chain(optax.add_decayed_weights(l2), factory(**hyperparams))

  # inject_hyperparams reads the signature to see which arguments are numeric.
  own = inspect.signature(factory).parameters.values()
  l2 = inspect.Parameter("l2", inspect.Parameter.KEYWORD_ONLY, default=0.0)
  make.__signature__ = inspect.Signature(
      [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + [l2])
  return make


def scale_by_adam_per_element(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
  """`optax.scale_by_adam` with a step count per element (state.count is a tree like params).

  The state is an `optax.ScaleByAdamState`, so code that reads Adam's moments
  (the scheduler's effective step) finds it; its `count` is an int32 tree.
  """

  def init(params):
    zeros = lambda p: jnp.zeros_like(p)
    return optax.ScaleByAdamState(
        count=jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.int32), params),
        mu=jax.tree.map(zeros, params), nu=jax.tree.map(zeros, params))

  def update(updates, state, params=None):
    del params
    mu = jax.tree.map(lambda g, m: b1 * m + (1 - b1) * g, updates, state.mu)
    nu = jax.tree.map(lambda g, v: b2 * v + (1 - b2) * g * g, updates, state.nu)
    count = jax.tree.map(optax.safe_increment, state.count)

    def scaled(m, v, t):
      t = t.astype(m.dtype)
      return (m / (1 - b1**t)) / (jnp.sqrt(v / (1 - b2**t)) + eps)

    return jax.tree.map(scaled, mu, nu, count), optax.ScaleByAdamState(count, mu, nu)

  return optax.GradientTransformation(init, update)


def reference_betas(count, b1, b2, steps_per_epoch: int, epochs: int):
  """(b1, b2) of the reference code's first parameter group at update `count` (0-based).

  The betas were set after update count - 1 from the within-task epoch it fell
  in (module doc); update 0 runs with (b1, b2).
  """
  previous = jnp.maximum(jnp.asarray(count, jnp.int32) - 1, 0)
  epoch = (previous // steps_per_epoch) % epochs
  fraction = epoch.astype(jnp.float32) / (2.0 * epochs)
  return b1 + (0.99 - b1) * fraction, b2 + (0.75 - b2) * fraction


def scale_by_adam_beta_ramp(b1: float, b2: float, eps: float, ramped: Callable,
                            steps_per_epoch: int, epochs: int):
  """`optax.scale_by_adam` whose leaves marked by `ramped` use `reference_betas`.

  ramped(tree) -> a tree of Python bools like `tree` (True: the reference's
  first parameter group). The state is an `optax.ScaleByAdamState` over every
  parameter, so code that reads Adam's moments finds them all in one place.
  """

  def init(params):
    zeros = lambda p: jnp.zeros_like(p)
    return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32),
                                  mu=jax.tree.map(zeros, params), nu=jax.tree.map(zeros, params))

  def update(updates, state, params=None):
    del params
    ramp1, ramp2 = reference_betas(state.count, b1, b2, steps_per_epoch, epochs)
    marks = ramped(updates)
    beta1 = jax.tree.map(lambda r: ramp1 if r else b1, marks)
    beta2 = jax.tree.map(lambda r: ramp2 if r else b2, marks)
    mu = jax.tree.map(lambda g, m, b: b * m + (1 - b) * g, updates, state.mu, beta1)
    nu = jax.tree.map(lambda g, v, b: b * v + (1 - b) * g * g, updates, state.nu, beta2)
    count = optax.safe_increment(state.count)
    t = count.astype(jnp.float32)
    scaled = jax.tree.map(
        lambda m, v, c1, c2: (m / (1 - c1**t)) / (jnp.sqrt(v / (1 - c2**t)) + eps),
        mu, nu, beta1, beta2)
    return scaled, optax.ScaleByAdamState(count, mu, nu)

  return optax.GradientTransformation(init, update)


class BetaRamp(NamedTuple):
  """The reference code's beta ramp on one layer (module doc)."""

  layer: str            # the top-level params key it acts on (the input layer)
  steps_per_epoch: int
  epochs: int           # epochs per task

  def marks(self, tree):
    return {k: jax.tree.map(lambda _: k == self.layer, v) for k, v in tree.items()}


def _ramped(factory_of_scale, ramp: BetaRamp):
  """An Adam-family factory whose scaling is `scale_by_adam_beta_ramp` under `ramp`."""
  def scale(b1, b2, eps):
    return scale_by_adam_beta_ramp(b1, b2, eps, ramp.marks, ramp.steps_per_epoch, ramp.epochs)
  return factory_of_scale(scale)


def _adam_with(scale):
  def adam(learning_rate, b1=0.9, b2=0.999, eps=1e-8):
    return optax.chain(scale(b1, b2, eps), optax.scale_by_learning_rate(learning_rate))
  return adam


def _adamw_with(scale):
  def adamw(learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-4):
    return optax.chain(scale(b1, b2, eps), optax.add_decayed_weights(weight_decay),
                       optax.scale_by_learning_rate(learning_rate))
  return adamw


_ADAM = {"learning_rate": "lr", "b1": "b1", "b2": "b2", "eps": "eps", "l2": "l2"}

# Optimizer name -> (factory, {hyperparameter: Config field}).
OPTIMIZERS = {
    "adam": (_with_coupled_l2(optax.adam), _ADAM),
    "adamw": (_with_coupled_l2(optax.adamw), {**_ADAM, "weight_decay": "weight_decay"}),
    "sgd": (_with_coupled_l2(optax.sgd), {"learning_rate": "lr", "momentum": "momentum",
                                          "l2": "l2"}),
}

# The Adam family, each built from its scaling: fn(scale) -> factory.
ADAM_FAMILY = {"adam": _adam_with, "adamw": _adamw_with}
# The same optimizers with a step count per element (only Adam's count is per step).
ELEMENT_COUNT_FACTORIES = {name: _with_coupled_l2(build(scale_by_adam_per_element))
                           for name, build in ADAM_FAMILY.items()}


def default_hparams(config) -> dict[str, jnp.ndarray]:
  """The optimizer's hyperparameters from a Config, as float32 scalars."""
  _, fields = _lookup(config.optimizer)
  return {name: jnp.float32(getattr(config, field)) for name, field in fields.items()}


def make_optimizer(name: str, hparams: Mapping[str, jnp.ndarray],
                   element_counts: bool = False,
                   beta_ramp: BetaRamp | None = None) -> optax.GradientTransformation:
  """An injectable optax optimizer; `hparams` may be traced arrays.

  element_counts: Adam/AdamW keep a step count per element (see the module
  doc); SGD has no count, so it is unchanged.
  beta_ramp: Adam/AdamW with the reference code's beta ramp on one layer
  (`adam_betas="reference"`, module doc).
  """
  factory, fields = _lookup(name)
  if beta_ramp is not None:
    if name not in ADAM_FAMILY:
      raise ConfigError(f"adam_betas: 'reference' needs optimizer adam or adamw, not {name!r}")
    if element_counts:
      raise ConfigError("adam_betas: 'reference' is not accepted with a unit reset (cbp, "
                        "redo), whose Adam keeps a step count per element; use 'constant'")
    factory = _with_coupled_l2(_ramped(ADAM_FAMILY[name], beta_ramp))
  elif element_counts:
    factory = ELEMENT_COUNT_FACTORIES.get(name, factory)
  unknown = sorted(set(hparams) - set(fields))
  if unknown:
    raise ConfigError(
        f"hparams: {unknown[0]!r} is not a hyperparameter of {name}; "
        f"accepted: {', '.join(fields)}"
    )
  missing = sorted(set(fields) - set(hparams))
  if missing:
    raise ConfigError(f"hparams: {name} needs {', '.join(missing)}")
  return optax.inject_hyperparams(factory)(**hparams)


def hparams_of(name: str, opt_state) -> dict[str, jnp.ndarray]:
  """The hyperparameters of `name` held in an optimizer state: the injected
  (base) optimizer's, also when a wrapper (the scheduler) holds it."""
  _, fields = _lookup(name)
  base = base_state(opt_state)
  return {k: base.hyperparams[k] for k in fields}


def _is_injected(node) -> bool:
  return isinstance(node, INJECTED_STATES)


def base_state(opt_state):
  """The base (injected) optimizer's state inside `opt_state`, wrapped or not."""
  found = find_state(opt_state, INJECTED_STATES)
  if found is None:
    raise ValueError("opt_state: holds no optax.inject_hyperparams state (optim.make_optimizer)")
  return found


def map_base_state(opt_state, fn):
  """`opt_state` with its base (injected) optimizer's state replaced by fn(that state)."""
  return jax.tree.map(lambda n: fn(n) if _is_injected(n) else n, opt_state, is_leaf=_is_injected)


def hparam_name(optimizer: str, field: str) -> str | None:
  """The name under which `optimizer`'s state holds Config field `field` (lr ->
  learning_rate), or None when the field is not one of its hyperparameters."""
  _, fields = _lookup(optimizer)
  return next((name for name, f in fields.items() if f == field), None)


def _lookup(name):
  if name not in OPTIMIZERS:
    raise ConfigError(f"optimizer: {name!r} is not accepted; choose one of {', '.join(OPTIMIZERS)}")
  return OPTIMIZERS[name]


SETTINGS = (
    Setting("optimizer", "adam", "optimizer", str, tuple(OPTIMIZERS)),
    Setting("lr", 1e-3, "base learning rate", float, check=Number(0.0, low_open=True)),
    Setting("momentum", 0.9, "sgd: momentum (0 for plain sgd)", float,
            check=Number(0.0, 1.0, high_open=True)),
    Setting("b1", 0.9, "adam/adamw: beta1", float, check=Number(0.0, 1.0, high_open=True)),
    Setting("b2", 0.999, "adam/adamw: beta2", float, check=Number(0.0, 1.0, high_open=True)),
    Setting("adam_betas", "constant", "adam/adamw: constant (b1, b2), or reference: the "
            "reference code's per-task ramp of the first layer's betas towards (0.99, 0.75) "
            "(see optim.py)", str, ("constant", "reference"),
            acts_with=("optimizer", ("adam", "adamw"))),
    Setting("eps", 1e-8, "adam/adamw: epsilon", float, check=Number(0.0, low_open=True)),
    Setting("weight_decay", 1e-4, "adamw: decoupled weight decay", float, check=Number(0.0)),
    Setting("l2", 0.0, "coupled L2: l2 * params added to the gradient (torch weight_decay; "
            "paper 1e-3)", float, check=Number(0.0)),
)
