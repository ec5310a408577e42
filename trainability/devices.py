"""Spreading vmapped runs over devices and hosts with `jax.sharding`.

A vmapped run has a leading axis over its runs (seeds, or grid point x seed)
on every array. `shard_runs` places that axis on a one-axis `Mesh` ("runs")
over every device of every process, as a `NamedSharding`; `jax.jit` then runs
each device's runs in parallel with no change to the program, and nothing
crosses devices during training. The run count is padded to a multiple of
the device count (`pad_runs`, repeating the last run) and the padding is
dropped from what `gather` returns.

The same code runs on one CPU core, several CPU devices, one or more GPUs or
TPUs, and several hosts: `initialize` starts `jax.distributed` (cluster auto-
detection on SLURM, GKE/Kubernetes and Cloud TPU, or an explicit coordinator),
after which `jax.devices()` spans all processes. Each process then computes
its own runs; `gather` collects every run's results on every process, and
only the main process (`is_main`) writes files.

On a CPU, JAX exposes a single device by default, and XLA runs the small
per-seed matmuls of a vmapped step on one thread; `use_cpu_cores()` asks for
one CPU device per core, so runs spread over the cores (measured in
`benchmarks/throughput.py`). It must run before JAX's first computation.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

RUNS = "runs"  # the mesh axis of the vmapped runs


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


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Starts jax.distributed: one call per process, before JAX's first computation.

  With no arguments the cluster is detected (SLURM, GKE/Kubernetes, Cloud
  TPU); otherwise give all three. On CPUs, cross-process collectives use gloo.
  """
  given = [v is not None for v in (coordinator, num_processes, process_id)]
  if any(given) and not all(given):
    from trainability.settings import ConfigError
    raise ConfigError("coordinator: give --coordinator, --num-processes and --process-id "
                      "together, or none of them to detect the cluster")
  try:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except (AttributeError, ValueError):  # a JAX without the option: its default
    pass
  jax.distributed.initialize(coordinator, num_processes, process_id)


def is_main() -> bool:
  """Whether this process writes the outputs (process 0)."""
  return jax.process_index() == 0


def mesh() -> Mesh:
  """A one-axis mesh ("runs") over every device of every process."""
  return Mesh(np.array(jax.devices()), (RUNS,))


def padded_count(runs: int) -> int:
  """The run count rounded up to a multiple of the device count."""
  count = jax.device_count()
  return -(-runs // count) * count


def pad_runs(tree, count: int):
  """Every leaf's leading axis padded to `count` by repeating its last entry."""
  def pad(x):
    extra = count - x.shape[0]
    if extra < 0:
      raise ValueError(f"cannot pad {x.shape[0]} runs to {count}")
    if not extra:
      return x
    xp = jax.numpy if isinstance(x, jax.Array) else np
    return xp.concatenate([x, xp.repeat(x[-1:], extra, axis=0)])
  return jax.tree.map(pad, tree)


def is_key(x) -> bool:
  """Whether an array (or ShapeDtypeStruct) holds typed PRNG keys."""
  return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def runs_sharding() -> NamedSharding:
  """Every run's share on its device: the leading axis over `mesh()`."""
  return NamedSharding(mesh(), PartitionSpec(RUNS))


def jit_runs(fn, **jit_kwargs):
  """`jax.jit(fn)` with every output placed by `runs_sharding()`.

  For the vmapped `init` and `run_tasks` of a run, whose every output has the
  runs axis first. Left to itself, jit replicates some small outputs (a
  per-run count, say) and shards others, and chooses differently for `init`
  and `run_tasks`; the state that a chunk returns then reaches the next chunk
  placed differently from the state `init` gave the first one, and the
  program compiles a second time. With one placement for every output, a run
  of any number of chunks compiles `run_tasks` once.
  """
  return jax.jit(fn, out_shardings=runs_sharding(), **jit_kwargs)


def shard_runs(tree):
  """Places every leaf's leading (runs) axis across `mesh()`, as NamedSharding(P("runs")).

  The runs are first padded to a multiple of the device count (`pad_runs`);
  `gather(outputs, runs)` drops the padding again. Leaves may be numpy or jax
  arrays (PRNG keys included) holding every run; in a multi-process job each
  process gives the same values and keeps its devices' share.
  """
  sharding = runs_sharding()
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return tree
  tree = pad_runs(tree, padded_count(leaves[0].shape[0]))

  def put(x):
    if is_key(x):
      impl = jax.random.key_impl(x)
      return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=impl)
    if isinstance(x, jax.Array) and x.is_fully_addressable and jax.process_count() == 1:
      return jax.device_put(x, sharding)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  return jax.tree.map(put, tree)


def barrier(name: str) -> None:
  """Waits for every process (a no-op with one)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def gather(tree, runs: int):
  """The first `runs` entries of every leaf, as numpy arrays on every process."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    tree = multihost_utils.process_allgather(tree, tiled=True)
  return jax.tree.map(lambda x: x[:runs] if is_key(x) else np.asarray(x)[:runs], tree)
