"""trainability: loss of trainability in continual learning, in JAX.

The continual-learning core: offline data sets (`data`), task streams
(`tasks`), pure models (`models`), optax optimizers (`optim`) and pure,
vmappable training runs (`train`); the noise-curvature step-size scheduler as
an optax transformation (`scheduler`), the signals it decides on (`signals`)
and its per-layer estimators (`estimators`); the component interface through
which remedies, indicators and the scheduler act in a run (`components`).
Quantum circuits (`quantum`): a statevector simulator, barren-plateau
measurements and dynamical Lie algebras.

Imports are lazy: `from trainability.scheduler import noise_curvature_scheduler`
loads jax and optax only (no flax, scikit-learn or matplotlib), and each name
below is imported on first use.
"""

import importlib

__version__ = "0.1.0"

# name -> the module that defines it
_EXPORTS = {
    "Config": "config", "ConfigError": "config",
    "Dataset": "data", "DataError": "data", "load": "data",
    "Model": "models", "make_model": "models",
    "noise_curvature_scheduler": "scheduler",
    "Task": "tasks", "TaskStream": "tasks", "make_stream": "tasks",
    "RunState": "train", "TaskMetrics": "train", "Trainer": "train", "make_train": "train",
    "make_trainer": "train", "seed_keys": "train",
}
_MODULES = ("cli", "components", "config", "data", "devices", "estimators", "indicators",
            "interventions", "models", "optim", "quantum", "regularizers", "report", "results",
            "scheduler", "signals", "tasks", "train")

__all__ = list(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(f"trainability.{_EXPORTS[name]}"), name)
  if name in _MODULES:
    return importlib.import_module(f"trainability.{name}")
  raise AttributeError(f"module 'trainability' has no attribute {name!r}")


def __dir__():
  return sorted(list(_EXPORTS) + list(_MODULES) + ["__version__"])
