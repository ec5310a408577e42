import os

# Tests run on the CPU; keep JAX from grabbing an accelerator's memory if present.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import pytest  # noqa: E402

from trainability.config import Config  # noqa: E402


@pytest.fixture
def tiny_config():
  """A config that compiles and runs in a couple of seconds on a CPU."""
  return Config(subset=200, tasks=3, epochs=2, batch_size=20, width=32, depth=1, seeds=2)
