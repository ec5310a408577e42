import os

# Tests run on the CPU; keep JAX from grabbing an accelerator's memory if present.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import pytest  # noqa: E402

from trainability import devices  # noqa: E402
from trainability.config import Config  # noqa: E402

# Two CPU devices, as the CLI sets up on a 2-core machine, so the tests run the
# seed-sharded path too (CI has 2 cores). Must happen before JAX computes.
devices.use_cpu_cores(2)


@pytest.fixture
def tiny_config():
  """A config that compiles and runs in a couple of seconds on a CPU."""
  return Config(subset=200, tasks=3, epochs=2, batch_size=20, width=32, depth=1, seeds=2)
