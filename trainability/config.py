"""The run configuration: one frozen dataclass, validated on construction.

Every field carries its help text and, where it has a closed set of values, the
accepted values, so the CLI flags (`cli.py`) and the error messages are derived
from this one place. A bad value raises `ConfigError` with a one-line message
that names the field and what it accepts.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from trainability.signals import (
    CURVATURES, DEFAULTS as SIGNALS, EFFECTIVE_STEPS, MODE_DEFAULTS, REFERENCE_PARAMS, THRESHOLDS,
    VARIANCES)

DATASETS = ("digits", "mnist1d", "fashion_mnist", "mnist", "cifar10")
STREAMS = ("random_labels", "permuted_inputs", "shuffled_labels", "class_incremental")
MODELS = ("mlp", "cnn")
ACTIVATIONS = ("relu", "leaky_relu", "tanh", "identity", "crelu", "swish", "softplus",
               "fourier")
NORMS = ("none", "layernorm", "batchnorm")
INITS = ("kaiming", "lecun")
NORMALIZATIONS = ("standardize", "per_feature", "unit", "none")
OPTIMIZERS = ("adam", "adamw", "sgd")
RESETS = ("none", "model", "optimizer", "both")
SCHEDULERS = ("none", "noise_curvature")
REGULARIZERS = ("none", "l2_init", "wasserstein", "spectral", "orthogonal")
SHRINK_PERTURB = ("none", "step", "task")
PERTURB_NOISES = ("gaussian", "init")
UNIT_RESETS = ("none", "cbp", "redo")

# Fields that only act when another field selects them: (switch, values that
# use them, fields). A field given without its switch is an error, not ignored;
# the numeric ones are traced run hyperparameters (`train.Trainer.init`'s
# hparams), so a sweep over them compiles once.
SWITCHED_FIELDS = (
    ("regularizer", REGULARIZERS[1:], ("reg_coef",)),
    ("shrink_perturb", SHRINK_PERTURB[1:], ("shrink", "perturb", "perturb_noise")),
    ("unit_reset", ("cbp",), ("replacement_rate", "maturity", "utility_decay")),
    ("unit_reset", ("redo",), ("redo_every", "redo_tau")),
    ("threshold", ("paper",), ("beta",)),
    ("threshold", ("stability",), ("delta",)),
    ("threshold", ("reference",), ("reference_param",)),
    ("curvature", ("lanczos",), ("curvature_tol",)),
)

# Fields of earlier versions, as read from a run's config.json: old name ->
# the fields that now say the same.
RENAMED_FIELDS = {
    # one power iteration per check and layer, warm-started: the estimator of the time
    "power_iterations": lambda n: {"curvature": "power", "curvature_steps": n},
}
TRACED_FIELDS = ("reg_coef", "shrink", "perturb", "replacement_rate", "maturity",
                 "utility_decay", "redo_tau")


class ConfigError(ValueError):
  """A configuration value is invalid; the message is one line naming the field."""


# The trainability indicators (trainability/indicators.py), in recording order.
INDICATORS = (
    "weight_norm", "gradient_norm", "update_norm", "grad_param_ratio",         # parameters
    "unit_sign_entropy", "dormant_fraction", "srank", "effective_rank",        # features
    "sharpness", "hessian_trace", "top_eigenvalues", "hessian_rank",           # curvature
    "effective_step", "alpha_g", "lam_bar", "vol", "alpha_vol", "alpha_tilde",  # noise-curvature
    "crossed")


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


def _field(default, help_text, choices=None):
  return dataclasses.field(
      default=default, metadata={"help": help_text, "choices": choices}
  )


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything that defines a run. Defaults are the main command's benchmark.

  The defaults show plain Adam losing trainability on the embedded digits data:
  random labels on the first 1,000 images, 100 epochs per task (see README).
  """

  # Data.
  dataset: str = _field("digits", "data set", DATASETS)
  data_dir: str | None = _field(
      None, "directory holding the data files (default: per data set, see README)"
  )
  subset: int | None = _field(
      1000, "train on the first N training images only (0 or none: all)"
  )
  normalize: str = _field(
      "standardize",
      "input scaling: standardize (global mean/std of the training set), "
      "per_feature (per-pixel mean/std), unit ([0, 1]), none",
      NORMALIZATIONS,
  )
  heldout: bool = _field(
      False, "also report held-out accuracy on the test split at each task's end"
  )

  # Task stream.
  stream: str = _field("random_labels", "task stream", STREAMS)
  ns: float = _field(
      1.0, "random_labels: fraction of training labels redrawn per task, in (0, 1]"
  )
  classes_per_task: int = _field(
      2, "class_incremental: classes added per task"
  )
  tasks: int = _field(20, "number of tasks")
  epochs: int = _field(100, "epochs per task")
  batch_size: int = _field(50, "minibatch size")

  # Model.
  model: str = _field("mlp", "model family", MODELS)
  width: int = _field(256, "hidden units per layer (mlp) / of the dense layer (cnn)")
  depth: int = _field(2, "number of hidden layers (mlp)")
  channels: tuple[int, ...] = _field(
      (16, 32), "cnn: channels of each 3x3 conv layer, comma separated"
  )
  activation: str = _field("relu", "hidden activation", ACTIVATIONS)
  leaky_slope: float = _field(0.01, "leaky_relu: negative slope")
  norm: str = _field("none", "normalization layer after each hidden layer", NORMS)
  init: str = _field(
      "kaiming", "weight init of hidden layers (output layer: lecun)", INITS
  )

  # Optimizer.
  optimizer: str = _field("adam", "optimizer", OPTIMIZERS)
  lr: float = _field(1e-3, "base learning rate")
  momentum: float = _field(0.9, "sgd: momentum (0 for plain sgd)")
  b1: float = _field(0.9, "adam/adamw: beta1")
  b2: float = _field(0.999, "adam/adamw: beta2")
  eps: float = _field(1e-8, "adam/adamw: epsilon")
  weight_decay: float = _field(1e-4, "adamw: decoupled weight decay")
  l2: float = _field(
      0.0, "coupled L2: l2 * params added to the gradient (torch weight_decay; paper 1e-3)")
  reset: str = _field(
      "none", "what to re-initialize at each task boundary", RESETS
  )

  # Baselines against loss of trainability (regularizers.py, interventions.py).
  regularizer: str = _field(
      "none", "penalty added to the loss (to the initial params for l2_init, wasserstein)",
      REGULARIZERS)
  reg_coef: float = _field(1e-3, "regularizer: its coefficient")
  shrink_perturb: str = _field(
      "none", "shrink & perturb theta <- (1 - shrink) theta + perturb eps: every step, "
      "at each task boundary, or none", SHRINK_PERTURB)
  shrink: float = _field(1e-4, "shrink_perturb: shrink, in [0, 1]")
  perturb: float = _field(1e-4, "shrink_perturb: perturb, the noise scale")
  perturb_noise: str = _field(
      "gaussian", "shrink_perturb: eps is standard normal, or a fresh init (Ash & Adams)",
      PERTURB_NOISES)
  unit_reset: str = _field(
      "none", "re-initialize hidden units: cbp (continual backprop, every step) or redo "
      "(dormant units, every redo_every steps)", UNIT_RESETS)
  replacement_rate: float = _field(1e-4, "cbp: units replaced per eligible unit and step")
  maturity: int = _field(100, "cbp: steps before a unit may be replaced")
  utility_decay: float = _field(0.99, "cbp: decay of the running contribution utility")
  redo_every: int = _field(1000, "redo: steps of a task between resets of dormant units")
  redo_tau: float = _field(
      0.1, "redo: a unit is dormant when its mean |activation| / the layer's mean <= tau")

  # The noise-curvature per-layer step-size scheduler (method.md section 4).
  scheduler: str = _field(
      "none", "per-layer step-size scheduler wrapped around the optimizer", SCHEDULERS)
  threshold: str = _field(
      SIGNALS.threshold, "noise_curvature: the threshold's form: paper (Eq. 2-3), reference "
      "(the reference code's --param) or stability (docs/thresholds.md)", THRESHOLDS)
  check_every: int = _field(40, "noise_curvature: K, steps of a task between checks")
  window: int = _field(SIGNALS.window, "noise_curvature: W, checks in the curvature window")
  safety: float = _field(0.8, "noise_curvature: gamma; cool when step > gamma * threshold")
  cool: float = _field(0.99, "noise_curvature: factor applied when cooling, in (0, 1]")
  warm: float = _field(1.01, "noise_curvature: factor applied when warming, >= 1")
  beta: float = _field(
      MODE_DEFAULTS["beta"], "threshold paper: weight of the volatility term in the threshold")
  delta: float = _field(
      MODE_DEFAULTS["delta"], "threshold stability: Cantelli tail probability of the "
      "volatility margin, in (0, 1)")
  reference_param: str = _field(
      MODE_DEFAULTS["reference_param"], "threshold reference: the reference code's --param",
      REFERENCE_PARAMS)
  kappa: float = _field(SIGNALS.kappa, "noise_curvature: alpha_vol = 1 / (kappa * Vol)")
  warm_fraction: float = _field(
      0.3, "noise_curvature: warming allowed in this first fraction of a task, in [0, 1]")
  floor: float = _field(
      0.0, "noise_curvature: cool only when the step exceeds this (Algorithm 1 as "
      "published and the reference code: 0.12)")
  curvature: str = _field(
      SIGNALS.curvature, "noise_curvature: top Hessian-block eigenvalue by warm-started "
      "lanczos or power iteration", CURVATURES)
  curvature_steps: int = _field(
      SIGNALS.curvature_steps, "noise_curvature: HVPs per layer and check (lanczos: at most)")
  curvature_tol: float = _field(
      SIGNALS.curvature_tol, "noise_curvature: lanczos stops at this relative residual "
      "(0: always curvature_steps)")
  variance: str = _field(
      SIGNALS.variance, "noise_curvature: window variance (paper), newest deviation "
      "(reference), or auto (instantaneous with threshold reference, else windowed)",
      VARIANCES)
  effective_step: str = _field(
      SIGNALS.effective_step,
      "noise_curvature: how a layer's step is measured (auto: adam if Adam, else generic)",
      EFFECTIVE_STEPS)

  # Trainability indicators (trainability/indicators.py), recorded inside the run.
  indicators: str = _field(
      "none", "indicators to record: all, none, or a comma list (see trainability.indicators)")
  indicator_every: int = _field(40, "steps of a task between indicator evaluations")
  indicator_examples: int = _field(
      256, "probe batch of the indicators: the first N training examples of the task")
  dormant_tau: float = _field(0.0, "a unit is dormant when its normalized activity <= tau")

  # Run.
  seeds: int = _field(4, "number of seeds, run in parallel with vmap")
  seed: int = _field(0, "first seed; seeds are seed, seed+1, ...")
  chunk_tasks: int = _field(
      1, "tasks per compiled chunk; results are written after every chunk"
  )

  def __post_init__(self):
    for f in dataclasses.fields(self):
      choices = f.metadata.get("choices")
      value = getattr(self, f.name)
      if choices is not None and value not in choices:
        raise ConfigError(
            f"{f.name}: {value!r} is not accepted; choose one of {', '.join(choices)}"
        )
    _positive_int(self, "tasks", "epochs", "batch_size", "width", "seeds",
                  "chunk_tasks", "classes_per_task", "check_every", "window",
                  "curvature_steps", "indicator_every", "indicator_examples", "redo_every")
    if isinstance(self.maturity, bool) or not isinstance(self.maturity, int) or self.maturity < 0:
      raise ConfigError(f"maturity: {self.maturity!r} is not accepted; give an integer >= 0")
    if not isinstance(self.depth, int) or self.depth < 0:
      raise ConfigError(f"depth: {self.depth!r} is not accepted; give an integer >= 0")
    if self.subset is not None and (not isinstance(self.subset, int) or self.subset < 0):
      raise ConfigError(f"subset: {self.subset!r} is not accepted; give an integer >= 0 or none")
    if not self.channels or any(not isinstance(c, int) or c < 1 for c in self.channels):
      raise ConfigError(
          f"channels: {self.channels!r} is not accepted; give positive integers, e.g. 16,32"
      )
    _in_range(self, "ns", 0.0, 1.0, low_open=True)
    _in_range(self, "momentum", 0.0, 1.0, high_open=True)
    _in_range(self, "b1", 0.0, 1.0, high_open=True)
    _in_range(self, "b2", 0.0, 1.0, high_open=True)
    _in_range(self, "leaky_slope", 0.0, 1.0)
    for name in ("lr", "eps"):
      _in_range(self, name, 0.0, math.inf, low_open=True)
    _in_range(self, "weight_decay", 0.0, math.inf)
    _in_range(self, "l2", 0.0, math.inf)
    _in_range(self, "safety", 0.0, math.inf, low_open=True)
    _in_range(self, "cool", 0.0, 1.0, low_open=True)
    _in_range(self, "warm", 1.0, math.inf)
    _in_range(self, "beta", 0.0, math.inf)
    _in_range(self, "kappa", 0.0, math.inf, low_open=True)
    _in_range(self, "delta", 0.0, 1.0, low_open=True, high_open=True)
    _in_range(self, "curvature_tol", 0.0, 1.0, high_open=True)
    _in_range(self, "warm_fraction", 0.0, 1.0)
    _in_range(self, "floor", 0.0, math.inf)
    _in_range(self, "dormant_tau", 0.0, math.inf)
    _in_range(self, "reg_coef", 0.0, math.inf)
    _in_range(self, "shrink", 0.0, 1.0)
    _in_range(self, "perturb", 0.0, math.inf)
    _in_range(self, "replacement_rate", 0.0, 1.0)
    _in_range(self, "utility_decay", 0.0, 1.0, high_open=True)
    _in_range(self, "redo_tau", 0.0, math.inf)
    defaults = {f.name: f.default for f in dataclasses.fields(self)}
    for _, _, names in SWITCHED_FIELDS:
      for name in names:
        unused = self.unused_because(name)
        if unused and getattr(self, name) != defaults[name]:
          raise ConfigError(f"{name}: {unused}")
    indicator_names(self.indicators)
    if self.model == "cnn" and self.dataset == "mnist1d":
      raise ConfigError(
          "model: 'cnn' needs an image data set; accepted with cnn: "
          "digits, fashion_mnist, mnist, cifar10"
      )
    if self.heldout and self.stream == "random_labels":
      raise ConfigError(
          "heldout: random labels have no held-out labels; accepted streams "
          "with heldout: permuted_inputs, shuffled_labels, class_incremental"
      )

  def signal_settings(self):
    """The signals.SignalSettings of this config (mode-specific ones only in their mode)."""
    mode = lambda name: getattr(self, name) if self.unused_because(name) is None else None
    return SIGNALS._replace(
        threshold=self.threshold, beta=mode("beta"), delta=mode("delta"),
        reference_param=mode("reference_param"), kappa=self.kappa, window=self.window,
        variance=self.variance, curvature=self.curvature,
        curvature_steps=self.curvature_steps, curvature_tol=self.curvature_tol,
        effective_step=self.effective_step).resolved()

  def unused_because(self, name: str) -> str | None:
    """Why the switched field `name` (SWITCHED_FIELDS) has no effect here; None if it acts."""
    switch, used_with = next((s, u) for s, u, names in SWITCHED_FIELDS if name in names)
    value = getattr(self, switch)
    if value in used_with:
      return None
    return f"has no effect with {switch} {value!r}; it acts only with {switch} " \
           f"{' or '.join(used_with)}"

  def traced_fields(self) -> tuple[str, ...]:
    """The TRACED_FIELDS that act in this config: the run's traced hyperparameters."""
    return tuple(n for n in TRACED_FIELDS if self.unused_because(n) is None)

  def replace(self, **changes) -> "Config":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> "Config":
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names - set(RENAMED_FIELDS))
    if unknown:
      raise ConfigError(
          f"{unknown[0]}: unknown config field; accepted fields: {', '.join(sorted(names))}"
      )
    values = dict(values)
    for old, new in RENAMED_FIELDS.items():
      if old in values:
        values.update(new(values.pop(old)))
    if "channels" in values:
      values["channels"] = tuple(values["channels"])
    return cls(**values)


def _positive_int(config, *names):
  for name in names:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ConfigError(f"{name}: {value!r} is not accepted; give an integer >= 1")


def _in_range(config, name, low, high, low_open=False, high_open=False):
  value = getattr(config, name)
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
  if ok:
    ok = (value > low if low_open else value >= low) and (
        value < high if high_open else value <= high
    )
  if not ok:
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    raise ConfigError(f"{name}: {value!r} is not accepted; give a number in {interval}")
