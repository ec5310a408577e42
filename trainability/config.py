"""The run configuration: the modules' settings composed into one frozen dataclass.

Each module declares its own settings, with their defaults, help texts and
accepted values (`data.SETTINGS`, `tasks.SETTINGS`, `train.SETTINGS`,
`models.SETTINGS`, `optim.SETTINGS`, `interventions.SETTINGS`,
`regularizers.SETTINGS`, `scheduler.SETTINGS`, `trac.SETTINGS`, `signals.SETTINGS`,
`indicators.SETTINGS`, `train.RUN_SETTINGS`; see `trainability.settings`).
`Config` has one field per setting, so the CLI flags (`cli.py`), the config
file and the Python API agree. A bad value raises `ConfigError` with a
one-line message that names the field and what it accepts.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional

from trainability import data, indicators, interventions, models, optim, regularizers
from trainability import scheduler, signals, tasks, trac, train
from trainability.indicators import INDICATORS, indicator_names  # noqa: F401 (re-exported)
from trainability.settings import ConfigError, Setting  # noqa: F401 (ConfigError re-exported)

# Every setting, in the order of the CLI's flags.
SETTINGS: tuple[Setting, ...] = (
    data.SETTINGS + tasks.SETTINGS + train.SETTINGS + models.SETTINGS + optim.SETTINGS
    + interventions.SETTINGS[:1] + regularizers.SETTINGS + interventions.SETTINGS[1:]
    + scheduler.SETTINGS + trac.SETTINGS + signals.SETTINGS + indicators.SETTINGS + train.RUN_SETTINGS)
_BY_NAME = {s.name: s for s in SETTINGS}
assert len(_BY_NAME) == len(SETTINGS), "a setting is declared twice"

# Settings that act only when another selects them: (switch, values that use them,
# settings). Given without their switch they are refused, not ignored.
SWITCHED_FIELDS = tuple((s.acts_with[0], s.acts_with[1], (s.name,)) for s in SETTINGS
                        if s.acts_with)
# The run hyperparameters that are traced arrays (`train.Trainer.init`'s hparams).
TRACED_FIELDS = tuple(s.name for s in SETTINGS if s.traced)

# Fields of earlier versions, as read from a run's config.json: old name ->
# the fields that now say the same.
RENAMED_FIELDS = {
    # one power iteration per check and layer, warm-started: the estimator of the time
    "power_iterations": lambda n: {"curvature": "power", "curvature_steps": n},
}


class _Methods:
  """The methods of Config (the fields come from SETTINGS)."""

  def __post_init__(self):
    for s in SETTINGS:
      s.validate(getattr(self, s.name))
    for name in (n for _, _, names in SWITCHED_FIELDS for n in names):
      unused = self.unused_because(name)
      if unused and getattr(self, name) != _BY_NAME[name].default:
        raise ConfigError(f"{name}: {unused}")
    if self.checkpoint_every % self.chunk_tasks:
      raise ConfigError(
          f"checkpoint_every: {self.checkpoint_every} is not accepted; give 0 or a multiple "
          f"of chunk_tasks ({self.chunk_tasks}), so that checkpoints fall between chunks")
    if self.model == "cnn" and self.dataset in ("mnist1d", "gaussian"):
      raise ConfigError(
          "model: 'cnn' needs an image data set; accepted with cnn: "
          "digits, fashion_mnist, mnist, cifar10"
      )
    widths = (self.width,) * (self.depth if self.model == "mlp" else 1)
    problem = models.init_problem(self.init, widths)
    if problem:
      raise ConfigError(problem)
    if self.reset == "timestep" and self.optimizer not in ("adam", "adamw"):
      raise ConfigError(f"reset: 'timestep' restarts Adam's step count; it needs optimizer adam "
                        f"or adamw, not {self.optimizer!r}")
    if self.scheduler == "trac" and self.reset == "model":
      raise ConfigError("reset: 'model' with scheduler 'trac' would carry TRAC's displacement "
                        "from the old weights into the new ones; use 'both', which restarts "
                        "TRAC at the new weights")
    if self.adam_betas == "reference" and self.unit_reset != "none":
      raise ConfigError(
          f"adam_betas: 'reference' is not accepted with unit_reset {self.unit_reset!r}, whose "
          "Adam keeps a step count per element; use 'constant' or unit_reset none")
    if self.heldout and self.stream == "random_labels":
      raise ConfigError(
          "heldout: random labels have no held-out labels; accepted streams "
          "with heldout: permuted_inputs, shuffled_labels, class_incremental"
      )

  def signal_settings(self):
    """The signals.SignalSettings of this config (mode-specific ones only in their mode)."""
    mode = lambda name: getattr(self, name) if self.unused_because(name) is None else None
    values = {name: getattr(self, name) for name in signals.SignalSettings._fields}
    values.update({name: mode(name) for name in signals.MODE_SETTINGS})
    return signals.SignalSettings(**values).resolved()

  def unused_because(self, name: str) -> str | None:
    """Why the switched field `name` (SWITCHED_FIELDS) has no effect here; None if it acts."""
    switch, used_with = _BY_NAME[name].acts_with
    value = getattr(self, switch)
    if value in used_with:
      return None
    return f"has no effect with {switch} {value!r}; it acts only with {switch} " \
           f"{' or '.join(used_with)}"

  def unused_hparam(self, name: str) -> str | None:
    """Why traced hyperparameter `name` cannot be given to this run (it does not
    act here), or None: not a traced field of any setting, or one that acts."""
    return self.unused_because(name) if name in TRACED_FIELDS else None

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


def _field(s: Setting):
  kind = tuple[int, ...] if s.kind is tuple else s.kind
  if s.default is None:
    kind = Optional[kind]
  return (s.name, kind, dataclasses.field(
      default=s.default, metadata={"help": s.help, "choices": s.choices}))


Config = dataclasses.make_dataclass(
    "Config", [_field(s) for s in SETTINGS], bases=(_Methods,), frozen=True)
Config.__module__ = __name__
Config.__doc__ = """Everything that defines a run: one field per setting of SETTINGS.

Defaults are the main command's benchmark: plain Adam losing trainability on
the embedded digits data, random labels on the first 1,000 images, 100 epochs
per task (see README).
"""
