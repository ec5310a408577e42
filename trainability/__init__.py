"""trainability: loss of trainability in continual learning, in JAX.

The continual-learning core: offline data sets (`data`), task streams
(`tasks`), pure models (`models`), optax optimizers (`optim`) and pure,
vmappable training runs (`train`); the noise-curvature step-size scheduler as
an optax transformation (`scheduler`) and its per-layer estimators
(`estimators`).
"""

from trainability.config import Config, ConfigError
from trainability.data import Dataset, DataError, load
from trainability.models import Model, make_model
from trainability.scheduler import noise_curvature_scheduler
from trainability.tasks import Task, TaskStream, make_stream
from trainability.train import RunState, TaskMetrics, Trainer, make_train, make_trainer, seed_keys

__version__ = "0.1.0"

__all__ = [
    "Config", "ConfigError", "Dataset", "DataError", "load", "Model", "make_model",
    "Task", "TaskStream", "make_stream", "RunState", "TaskMetrics", "Trainer",
    "make_train", "make_trainer", "seed_keys", "noise_curvature_scheduler",
]
