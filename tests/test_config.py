import dataclasses
import json

import pytest

from trainability.config import Config, ConfigError


def test_defaults_are_valid_and_round_trip_through_json():
  config = Config()
  again = Config.from_dict(json.loads(config.to_json()))
  assert again == config


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(Config)
                                   if f.metadata.get("choices")])
def test_closed_fields_name_the_field_and_the_accepted_values(field):
  choices = Config.__dataclass_fields__[field].metadata["choices"]
  with pytest.raises(ConfigError) as err:
    Config(**{field: "no-such-value"})
  message = str(err.value)
  assert message.startswith(f"{field}:") and "\n" not in message
  assert all(choice in message for choice in choices)


@pytest.mark.parametrize("changes, field", [
    ({"tasks": 0}, "tasks"),
    ({"epochs": -1}, "epochs"),
    ({"batch_size": 2.5}, "batch_size"),
    ({"seeds": True}, "seeds"),
    ({"depth": -1}, "depth"),
    ({"subset": -5}, "subset"),
    ({"ns": 0.0}, "ns"),
    ({"ns": 1.5}, "ns"),
    ({"lr": 0.0}, "lr"),
    ({"lr": float("nan")}, "lr"),
    ({"momentum": 1.0}, "momentum"),
    ({"b2": -0.1}, "b2"),
    ({"weight_decay": -1e-3}, "weight_decay"),
    ({"l2": -1e-3}, "l2"),
    ({"regularizer": "l2_init", "reg_coef": -1.0}, "reg_coef"),
    ({"shrink_perturb": "step", "shrink": 1.5}, "shrink"),
    ({"shrink_perturb": "task", "perturb": -0.1}, "perturb"),
    ({"unit_reset": "cbp", "replacement_rate": 2.0}, "replacement_rate"),
    ({"unit_reset": "cbp", "maturity": -1}, "maturity"),
    ({"unit_reset": "cbp", "maturity": 2.5}, "maturity"),
    ({"unit_reset": "cbp", "utility_decay": 1.0}, "utility_decay"),
    ({"unit_reset": "redo", "redo_every": 0}, "redo_every"),
    ({"unit_reset": "redo", "redo_tau": -0.1}, "redo_tau"),
    ({"channels": ()}, "channels"),
    ({"channels": (16, 0)}, "channels"),
    ({"model": "cnn", "dataset": "mnist1d"}, "model"),
    ({"check_every": 0}, "check_every"),
    ({"window": -3}, "window"),
    ({"curvature_steps": 0}, "curvature_steps"),
    ({"curvature": "exact"}, "curvature"),
    ({"curvature_tol": 1.0}, "curvature_tol"),
    ({"threshold": "mine"}, "threshold"),
    ({"threshold": "stability", "delta": 1.0}, "delta"),
    ({"threshold": "stability", "beta": 2.0}, "beta"),
    ({"delta": 0.2}, "delta"),
    ({"threshold": "paper", "reference_param": "sqm1"}, "reference_param"),
    ({"threshold": "reference", "reference_param": "sq"}, "reference_param"),
    ({"safety": 0.0}, "safety"),
    ({"cool": 0.0}, "cool"),
    ({"warm": 0.5}, "warm"),
    ({"threshold": "paper", "beta": -1.0}, "beta"),
    ({"beta": 2.0}, "beta"),  # the default threshold, reference, has no beta
    ({"kappa": 0.0}, "kappa"),
    ({"warm_fraction": 1.5}, "warm_fraction"),
    ({"floor": -0.1}, "floor"),
    ({"indicators": "srank,nope"}, "indicators"),
    ({"indicator_every": 0}, "indicator_every"),
    ({"indicator_examples": -1}, "indicator_examples"),
    ({"dormant_tau": -0.5}, "dormant_tau"),
    ({"heldout": True}, "heldout"),
])
def test_bad_values_give_one_line_naming_the_field(changes, field):
  with pytest.raises(ConfigError) as err:
    Config(**changes)
  assert str(err.value).startswith(f"{field}:")
  assert "\n" not in str(err.value)


def test_heldout_is_accepted_where_test_labels_exist():
  for stream in ("permuted_inputs", "shuffled_labels", "class_incremental"):
    assert Config(stream=stream, heldout=True).heldout


def test_from_dict_rejects_unknown_fields():
  with pytest.raises(ConfigError, match="^learning_rate: unknown config field; accepted fields: "):
    Config.from_dict({"learning_rate": 0.1})


@pytest.mark.parametrize("changes, message", [
    ({"reg_coef": 0.1},
     "reg_coef: has no effect with regularizer 'none'; it acts only with regularizer "
     "l2_init or wasserstein or spectral or orthogonal"),
    ({"shrink": 0.1}, "shrink: has no effect with shrink_perturb 'none'; it acts only with "
                      "shrink_perturb step or task"),
    ({"perturb_noise": "init"}, "perturb_noise: has no effect with shrink_perturb 'none'"),
    ({"maturity": 5, "unit_reset": "redo"},
     "maturity: has no effect with unit_reset 'redo'; it acts only with unit_reset cbp"),
    ({"redo_every": 5}, "redo_every: has no effect with unit_reset 'none'"),
])
def test_a_baseline_setting_without_its_baseline_is_refused_not_ignored(changes, message):
  with pytest.raises(ConfigError, match="^" + message):
    Config(**changes)
  switches = {"reg_coef": {"regularizer": "wasserstein"}, "shrink": {"shrink_perturb": "step"},
              "perturb_noise": {"shrink_perturb": "task"}, "maturity": {"unit_reset": "cbp"},
              "redo_every": {"unit_reset": "redo"}}
  name = next(iter(changes))
  Config(**{**changes, **switches[name]})
