"""Declaring a module's settings: name, default, help, accepted values, in one place each.

Each module that has settings declares them as a tuple of `Setting`s next to
the code that uses them (`data.SETTINGS`, `models.SETTINGS`, ...);
`config.Config` composes them into the run configuration and the CLI flags.
A setting's check gives the one-line error of a bad value (`ConfigError`:
the field and what it accepts). Pure Python: the optax transform's module
can declare its settings without importing anything heavy.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple


class ConfigError(ValueError):
  """A configuration value is invalid; the message is one line naming the field."""


class Integer(NamedTuple):
  """An int >= low (bools refused)."""

  low: int = 1

  def problem(self, value) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < self.low:
      return f"give an integer >= {self.low}"
    return None


class Number(NamedTuple):
  """A real number in an interval; NaN and bools refused."""

  low: float = 0.0
  high: float = math.inf
  low_open: bool = False
  high_open: bool = False

  def problem(self, value) -> str | None:
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
          and not math.isnan(value))
    if ok:
      ok = ((value > self.low if self.low_open else value >= self.low)
            and (value < self.high if self.high_open else value <= self.high))
    if ok:
      return None
    return (f"give a number in {'(' if self.low_open else '['}{self.low:g}, "
            f"{self.high:g}{')' if self.high_open else ']'}")


class Predicate(NamedTuple):
  """A check by a function: problem(value) -> what is accepted (a phrase), or None if ok."""

  problem: Callable[[Any], str | None]


class Setting(NamedTuple):
  """One setting of a module.

  kind: its Python type (int, float, str, bool, tuple or an Optional one,
  for the CLI). choices: the accepted values of a closed set. check: an
  `Integer`, a `Number` or a `Predicate`.
  acts_with: (switch setting, values) for a setting that acts only when
  another selects it: given without it, it is refused, not ignored.
  traced: a run hyperparameter passed as a traced array (a sweep over it
  compiles once).
  """

  name: str
  default: Any
  help: str
  kind: Any = None
  choices: tuple | None = None
  check: Any = None
  acts_with: tuple[str, tuple] | None = None
  traced: bool = False

  def validate(self, value) -> None:
    if self.choices is not None and value not in self.choices:
      raise ConfigError(f"{self.name}: {value!r} is not accepted; choose one of "
                        f"{', '.join(map(str, self.choices))}")
    problem = None if self.check is None else self.check.problem(value)
    if problem:
      raise ConfigError(f"{self.name}: {value!r} is not accepted; {problem}")


def by_name(settings) -> dict[str, Setting]:
  return {s.name: s for s in settings}
