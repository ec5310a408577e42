"""colab/*.ipynb: valid nbformat-4 JSON, no stored outputs, and each runs.

quickstart.ipynb (the library's loop) and scheduler.ipynb (the optax
transform in a user's own flax/optax loop). A notebook is executed cell by cell in one namespace, from its colab/ folder,
with TRAINABILITY_QUICK=1 (3 tasks of 2 epochs) and the Agg backend. IPython
lines (`%pip ...`, `!cmd ...`) are replaced by `pass`, keeping the indentation,
so a guarded magic inside an `if` stays valid Python. No nbformat dependency.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys

import numpy as np
import pytest

COLAB_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "colab")
NOTEBOOK = os.path.join(COLAB_DIR, "quickstart.ipynb")
SCHEDULER_NOTEBOOK = os.path.join(COLAB_DIR, "scheduler.ipynb")
SWEEPS_NOTEBOOK = os.path.join(COLAB_DIR, "sweeps.ipynb")
NARROW_NOTEBOOK = os.path.join(COLAB_DIR, "narrow.ipynb")
BARREN_NOTEBOOK = os.path.join(COLAB_DIR, "barren_plateaus.ipynb")

CELL_KEYS = {
    "code": {"id", "cell_type", "metadata", "source", "outputs", "execution_count"},
    "markdown": {"id", "cell_type", "metadata", "source", "attachments"},
    "raw": {"id", "cell_type", "metadata", "source", "attachments"},
}
REQUIRED_KEYS = {
    "code": {"cell_type", "metadata", "source", "outputs", "execution_count"},
    "markdown": {"cell_type", "metadata", "source"},
    "raw": {"cell_type", "metadata", "source"},
}


def _load(path=NOTEBOOK):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _source(cell) -> str:
  source = cell["source"]
  return source if isinstance(source, str) else "".join(source)


def _code_cells(notebook) -> list[str]:
  return [_source(c) for c in notebook["cells"] if c["cell_type"] == "code"]


def _without_magics(source: str) -> str:
  out = []
  for line in source.splitlines():
    stripped = line.lstrip()
    if stripped.startswith(("%", "!")):
      line = line[: len(line) - len(stripped)] + "pass"
    out.append(line)
  return "\n".join(out) + "\n"


@pytest.mark.parametrize("path", [NOTEBOOK, SCHEDULER_NOTEBOOK, SWEEPS_NOTEBOOK, NARROW_NOTEBOOK,
                                  BARREN_NOTEBOOK], ids=os.path.basename)
def test_notebook_is_valid_nbformat4_without_outputs(path):
  nb = _load(path)
  assert set(nb) == {"nbformat", "nbformat_minor", "metadata", "cells"}
  assert nb["nbformat"] == 4
  assert isinstance(nb["nbformat_minor"], int) and nb["nbformat_minor"] >= 0
  assert isinstance(nb["metadata"], dict)
  assert nb["metadata"].get("kernelspec", {}).get("language") == "python"
  assert isinstance(nb["cells"], list) and nb["cells"]
  ids = []
  for i, cell in enumerate(nb["cells"]):
    kind = cell.get("cell_type")
    assert kind in CELL_KEYS, f"cell {i}: cell_type {kind!r}"
    assert REQUIRED_KEYS[kind] <= set(cell) <= CELL_KEYS[kind], f"cell {i}: keys {sorted(cell)}"
    assert isinstance(cell["metadata"], dict)
    source = cell["source"]
    assert isinstance(source, str) or (
        isinstance(source, list) and all(isinstance(s, str) for s in source)
    ), f"cell {i}: source must be a string or a list of strings"
    if isinstance(source, list):
      assert all(s.endswith("\n") for s in source[:-1]), f"cell {i}: source lines lack newlines"
    assert _source(cell).strip(), f"cell {i} is empty"
    if kind == "code":
      assert cell["outputs"] == [], f"cell {i} stores outputs"
      assert cell["execution_count"] is None, f"cell {i} stores an execution count"
    if nb["nbformat_minor"] >= 5:
      assert re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", cell.get("id", "")), f"cell {i}: id"
      ids.append(cell["id"])
  assert len(ids) == len(set(ids)), "cell ids must be unique"


def test_notebook_has_the_promised_parts():
  nb = _load()
  assert nb["cells"][0]["cell_type"] == "markdown"
  code = "\n".join(_code_cells(nb))
  markdown = "\n".join(_source(c) for c in nb["cells"] if c["cell_type"] == "markdown")
  first_code = _code_cells(nb)[0]
  assert 'os.environ.get("TRAINABILITY_QUICK") == "1"' in first_code
  assert "%pip install -q -e .." in first_code
  assert "make_train(" in code and "jax.vmap(train)" in code
  assert "in_axes=(0, 0)" in code and '"learning_rate"' in code
  assert "trainability run --help" in markdown
  assert "trainability.cli" in code  # the CLI pointer runs `run --help`
  assert "clone this repository" in markdown.lower()
  assert "http" not in markdown + code  # no invented repository URL
  for source in _code_cells(nb):  # every cell, magics removed, is valid Python
    compile(_without_magics(source), "<cell>", "exec")


def _run_quick(monkeypatch, path) -> dict:
  """Executes the notebook's code cells in quick mode; returns their namespace."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  monkeypatch.setenv("TRAINABILITY_QUICK", "1")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  monkeypatch.chdir(COLAB_DIR)  # as when opened from a checkout's colab/ folder
  monkeypatch.setattr(sys, "path", list(sys.path))  # the setup cell may prepend the checkout

  namespace = {"__name__": "__main__"}
  try:
    for i, source in enumerate(_code_cells(_load(path))):
      exec(compile(_without_magics(source), f"<{os.path.basename(path)} code cell {i}>", "exec"),
           namespace)
  finally:
    plt.close("all")
  return namespace


@pytest.mark.filterwarnings("ignore:.*non-interactive.*:UserWarning")
def test_notebook_runs_in_quick_mode(monkeypatch):
  namespace = _run_quick(monkeypatch, NOTEBOOK)

  assert namespace["QUICK"] is True
  assert "--lr" in namespace["help_text"]
  config = namespace["config"]
  assert (config.tasks, config.epochs) == (3, 2)
  seeds, tasks = config.seeds, config.tasks

  metrics = namespace["metrics"]
  for name in ("online_accuracy", "loss", "final_accuracy"):
    values = np.asarray(getattr(metrics, name))
    assert values.shape == (seeds, tasks), name
    assert np.all(np.isfinite(values)), name
  assert np.asarray(metrics.heldout_accuracy).shape == (seeds, tasks)  # NaN: not measured

  n_lr = len(namespace["learning_rates"])
  assert n_lr >= 2
  sweep = namespace["sweep"]
  for name in ("online_accuracy", "loss", "final_accuracy"):
    values = np.asarray(getattr(sweep, name))
    assert values.shape == (n_lr, seeds, tasks), name
    assert np.all(np.isfinite(values)), name
  for values in (np.asarray(metrics.online_accuracy), np.asarray(sweep.online_accuracy)):
    assert np.all((values >= 0) & (values <= 1))
  # The sweep's first learning rate is the config's, on the same seeds: the same runs
  # as part 1, up to float differences between the two compiled programs.
  assert math.isclose(float(namespace["learning_rates"][0]), config.lr, rel_tol=1e-6)
  np.testing.assert_allclose(np.asarray(sweep.online_accuracy[0]),
                             np.asarray(metrics.online_accuracy), atol=0.01)


def test_scheduler_notebook_has_the_promised_parts():
  nb = _load(SCHEDULER_NOTEBOOK)
  code = "\n".join(_code_cells(nb))
  assert "from trainability.scheduler import noise_curvature_scheduler" in code
  assert "nn.Module" in code and "optax.adam" in code   # the user's own flax/optax loop
  assert "make_train" not in code and "Config" not in code  # not the library's loop
  assert "Fig. 3" in code and "Fig. 6" in code
  assert "http" not in code + "\n".join(_source(c) for c in nb["cells"])
  for source in _code_cells(nb):
    compile(_without_magics(source), "<cell>", "exec")


@pytest.mark.filterwarnings("ignore:.*non-interactive.*:UserWarning")
def test_scheduler_notebook_runs_in_quick_mode(monkeypatch):
  namespace = _run_quick(monkeypatch, SCHEDULER_NOTEBOOK)
  assert namespace["QUICK"] is True
  tasks, steps = namespace["TASKS"], namespace["steps_per_task"]
  assert np.asarray(namespace["online"]).shape == (tasks,)
  checks = namespace["checks"]
  per_task = steps // namespace["K"]
  assert checks.alpha.shape == (tasks * per_task, 3)
  for name in ("alpha", "alpha_g", "alpha_tilde", "lam", "multiplier"):
    assert np.all(np.isfinite(getattr(checks, name))), name
  assert np.all(checks.lam > 0)  # the curvature was measured at every check
  every = np.arange(1, per_task + 1) * namespace["K"]
  np.testing.assert_array_equal(checks.step, np.tile(every, tasks))


@pytest.mark.filterwarnings("ignore:.*non-interactive.*:UserWarning")
def test_sweeps_notebook_runs_one_program_in_quick_mode(monkeypatch):
  code = "\n".join(_code_cells(_load(SWEEPS_NOTEBOOK)))
  assert "sweep.plan(" in code and "sweep.run(" in code and "http" not in code
  namespace = _run_quick(monkeypatch, SWEEPS_NOTEBOOK)
  assert namespace["QUICK"] is True
  base, axes = namespace["base"], namespace["axes"]
  (program,) = namespace["programs"]  # width x lr x seed: one compiled program
  assert sorted(set(program.widths)) == axes["width"] and program.traced == ("lr",)
  assert len(namespace["rows"]) == 4 * base.seeds * base.tasks
  late = namespace["late"]
  assert late.shape == (2, 2) and np.all((late >= 0) & (late <= 1))
  assert namespace["difference"] < 1e-5  # the masked narrow run is the narrow run


@pytest.mark.filterwarnings("ignore:.*non-interactive.*:UserWarning")
def test_narrow_notebook_runs_in_quick_mode(monkeypatch):
  """colab/narrow.ipynb: the mirrored net is 0, sigma_min(J) at init is 0 below
  n x 10 parameters and positive above for LeCun, and the width sweep trains
  both arms."""
  namespace = _run_quick(monkeypatch, NARROW_NOTEBOOK)
  assert namespace["QUICK"] is True
  widths, at_init = namespace["widths"], namespace["at_init"]
  n, d = namespace["n"], namespace["d"]
  for width, value in zip(widths, at_init["lecun"]):
    parameters = width * (d + 1) + 10 * (width + 1)
    if parameters < 10 * n or width < 10:
      assert value < 1e-8, (width, value)
    else:
      assert value > 1e-3, (width, value)
  for arm in ("adam", "projected"):
    losses = namespace["losses"][arm]
    assert len(losses) == len(widths) and all(np.isfinite(losses))


@pytest.mark.filterwarnings("ignore:.*non-interactive.*:UserWarning")
def test_barren_plateaus_notebook_runs_in_quick_mode(monkeypatch):
  """colab/barren_plateaus.ipynb: the closed forms hold to Monte Carlo accuracy (400
  draws: within 25%), the DLA dimensions are exact, the measured Ising variance is
  near 2/15, the global cost decays faster than the local one, and the scheduler
  trains the re-uploading circuit."""
  namespace = _run_quick(monkeypatch, BARREN_NOTEBOOK)
  assert namespace["QUICK"] is True
  for n, value in namespace["haar"].items():
    assert value == pytest.approx(1 / (2 ** n + 1), rel=0.25)
  for (name, n), value in namespace["warm_up"].items():
    exact = (1 / 8) * (3 / 8) ** (n - 1) if name == "global" else 1 / (8 * n * n)
    assert value == pytest.approx(exact, rel=0.25), (name, n)
  assert list(namespace["dims"].values()) == [63, 15, 3]
  assert namespace["predicted"] == pytest.approx(2 / 15)
  assert namespace["measured"] == pytest.approx(2 / 15, rel=0.25)
  assert namespace["slopes"]["global"] < namespace["slopes"]["local"] < 0
  assert namespace["losses"][-1] < namespace["losses"][0]
