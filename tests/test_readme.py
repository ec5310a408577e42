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


def block(text):
  """The README's python block that contains `text`."""
  return next(b for b in blocks("python") if text in b)


def test_ci_runs_the_readme_test_command():
  commands = [b.strip() for b in blocks("bash")]
  test_command = next(c for c in commands if "pytest" in c)
  ci_lines = [line.strip() for line in read(".ci/run").splitlines()]
  assert test_command in ci_lines
  main_command = next(c for c in commands if "trainability run" in c)
  assert main_command.startswith("python3 -m venv .venv && .venv/bin/pip install -e .")


def test_scheduler_example_runs_with_a_real_model():
  import jax
  import optax

  from trainability import models
  from trainability.config import Config

  snippet = block("noise_curvature_scheduler(")
  model = models.make_model(Config(width=8, depth=1), (2, 2, 1), 3)
  params, _ = model.init(jax.random.key(0))
  batch = (jax.random.normal(jax.random.key(1), (6, 2, 2, 1)), np.arange(6) % 3)

  def example_loss(p, example):
    logits, _ = model.apply(p, {}, example[0][None])
    return optax.softmax_cross_entropy_with_integer_labels(logits, example[1][None])[0]

  grads = jax.grad(lambda p: sum(example_loss(p, (x, y)) for x, y in zip(*batch)) / 6)(params)
  # task_step 39: the 40th step of the task, a check.
  namespace = dict(params=params, grads=grads, example_loss=example_loss, batch=batch,
                   task_step=39)
  exec(compile(snippet, "README.md", "exec"), namespace)
  state = namespace["state"]
  assert int(state.checks) == 1 and float(state.last.sigma2.min()) > 0
  assert set(namespace["params"]) == {"hidden_0", "output"}


def test_python_example_runs_as_written(capsys):
  example = block("make_train(config)")
  namespace = {}
  exec(compile(example, "README.md", "exec"), namespace)
  metrics, sweep = namespace["metrics"], namespace["sweep"]
  assert metrics.online_accuracy.shape == (4, 8)
  assert sweep.online_accuracy.shape == (3, 8)
  assert np.all(np.isfinite(np.asarray(sweep.online_accuracy)))
  # Seed 0 at lr 1e-3 is the same run in both programs.
  np.testing.assert_allclose(sweep.online_accuracy[0], metrics.online_accuracy[0], atol=1e-5)


def test_custom_component_example_runs_under_jit_and_vmap():
  namespace = {}
  exec(compile(block("Component("), "README.md", "exec"), namespace)
  metrics, sweep = namespace["metrics"], namespace["sweep"]
  clipped = np.asarray(metrics.records["clip"]["clipped"])
  assert clipped.shape == (4, 4, 20)  # seeds, tasks, records: 400 steps per task / every 20
  assert 0 < clipped.mean() < 1
  shares = np.asarray(sweep.records["clip"]["clipped"]).mean((1, 2))
  assert np.all(np.diff(shares) < 0)  # a looser bound clips less
