"""Optimizers from optax, with every numeric hyperparameter injectable.

Each optimizer is wrapped in `optax.inject_hyperparams`, so its hyperparameters
live in the optimizer state as arrays: a sweep passes them as traced (vmapped)
values and compiles once, and a reset of the optimizer state keeps them.

Every optimizer also takes `l2`, the coupled L2 penalty of PyTorch's
`weight_decay` argument (and of the paper's L2 arm): `l2 * params` is added to
the gradient before the optimizer sees it, so Adam normalizes it like the rest
of the gradient. AdamW's `weight_decay` is the decoupled kind, applied after.
"""

from __future__ import annotations

import inspect
from typing import Mapping

import jax.numpy as jnp
import optax

from trainability.config import ConfigError


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


_ADAM = {"learning_rate": "lr", "b1": "b1", "b2": "b2", "eps": "eps", "l2": "l2"}

# Optimizer name -> (factory, {hyperparameter: Config field}).
OPTIMIZERS = {
    "adam": (_with_coupled_l2(optax.adam), _ADAM),
    "adamw": (_with_coupled_l2(optax.adamw), {**_ADAM, "weight_decay": "weight_decay"}),
    "sgd": (_with_coupled_l2(optax.sgd), {"learning_rate": "lr", "momentum": "momentum",
                                          "l2": "l2"}),
}


def default_hparams(config) -> dict[str, jnp.ndarray]:
  """The optimizer's hyperparameters from a Config, as float32 scalars."""
  _, fields = _lookup(config.optimizer)
  return {name: jnp.float32(getattr(config, field)) for name, field in fields.items()}


def make_optimizer(name: str, hparams: Mapping[str, jnp.ndarray]) -> optax.GradientTransformation:
  """An injectable optax optimizer; `hparams` may be traced arrays."""
  factory, fields = _lookup(name)
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
  """The hyperparameters of `name` held in an injected optimizer's state."""
  _, fields = _lookup(name)
  return {k: opt_state.hyperparams[k] for k in fields}


def _lookup(name):
  if name not in OPTIMIZERS:
    raise ConfigError(f"optimizer: {name!r} is not accepted; choose one of {', '.join(OPTIMIZERS)}")
  return OPTIMIZERS[name]
