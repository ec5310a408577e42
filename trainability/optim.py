"""Optimizers from optax, with every numeric hyperparameter injectable.

Each optimizer is wrapped in `optax.inject_hyperparams`, so its hyperparameters
live in the optimizer state as arrays: a sweep passes them as traced (vmapped)
values and compiles once, and a reset of the optimizer state keeps them.
"""

from __future__ import annotations

from typing import Mapping

import jax.numpy as jnp
import optax

from trainability.config import ConfigError

# Optimizer name -> (optax factory, {hyperparameter: Config field}).
OPTIMIZERS = {
    "adam": (optax.adam, {"learning_rate": "lr", "b1": "b1", "b2": "b2", "eps": "eps"}),
    "adamw": (optax.adamw, {"learning_rate": "lr", "b1": "b1", "b2": "b2", "eps": "eps",
                            "weight_decay": "weight_decay"}),
    "sgd": (optax.sgd, {"learning_rate": "lr", "momentum": "momentum"}),
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
