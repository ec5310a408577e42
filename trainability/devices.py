"""Spreading vmapped seeds over devices.

A vmapped run has a leading seed axis on every array. `shard_seeds` splits that
axis over the local devices (GPUs/TPUs, or CPU devices), and `jax.jit` then
runs each device's seeds in parallel with no change to the program.

On a CPU, JAX exposes a single device by default, and XLA runs the small
per-seed matmuls of a vmapped step on one thread; `use_cpu_cores()` asks for
one CPU device per core, so seeds spread over the cores (measured in
`benchmarks/throughput.py`). It must run before JAX's first computation.
"""

from __future__ import annotations

import math
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def cpu_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    return os.cpu_count() or 1


def use_cpu_cores(count: int | None = None) -> bool:
  """Asks JAX for `count` CPU devices (default: one per usable core).

  Returns False, changing nothing, when JAX's backends are already running (the
  device count is fixed then) or the user set JAX_NUM_CPU_DEVICES themselves.
  """
  if "JAX_NUM_CPU_DEVICES" in os.environ:
    return False
  try:
    jax.config.update("jax_num_cpu_devices", count or cpu_cores())
  except RuntimeError:  # backends already initialized
    return False
  return True


def shard_seeds(tree):
  """Places every leaf's leading (seed) axis across local devices.

  Uses the largest number of local devices that divides the seed count; with
  one device (or a seed count sharing no factor with the device count) the
  tree is returned as it is.
  """
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return tree
  seeds = leaves[0].shape[0]
  devices = jax.local_devices()
  count = math.gcd(seeds, len(devices))
  if count == 1:
    return tree
  mesh = Mesh(np.array(devices[:count]), ("seeds",))
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec("seeds")))
