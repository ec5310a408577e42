"""README.md stays true: its test command is what CI runs, and its example runs."""

import os
import re

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(path):
  with open(os.path.join(ROOT, path)) as f:
    return f.read()


def blocks(language):
  return re.findall(rf"```{language}\n(.*?)```", read("README.md"), re.S)


def test_ci_runs_the_readme_test_command():
  commands = [b.strip() for b in blocks("bash")]
  test_command = next(c for c in commands if "pytest" in c)
  ci_lines = [line.strip() for line in read(".ci/run").splitlines()]
  assert test_command in ci_lines
  main_command = next(c for c in commands if "trainability run" in c)
  assert main_command.startswith("python3 -m venv .venv && .venv/bin/pip install -e .")


def test_python_example_runs_as_written(capsys):
  (example,) = blocks("python")
  namespace = {}
  exec(compile(example, "README.md", "exec"), namespace)
  metrics, sweep = namespace["metrics"], namespace["sweep"]
  assert metrics.online_accuracy.shape == (4, 8)
  assert sweep.online_accuracy.shape == (3, 8)
  assert np.all(np.isfinite(np.asarray(sweep.online_accuracy)))
  # Seed 0 at lr 1e-3 is the same run in both programs.
  np.testing.assert_allclose(sweep.online_accuracy[0], metrics.online_accuracy[0], atol=1e-5)
