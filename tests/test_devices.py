import jax
import numpy as np

from trainability import devices
from trainability.train import make_train, seed_keys


def test_tests_run_with_two_cpu_devices():
  assert len(jax.local_devices()) == 2  # set in conftest, as the CLI does


def test_seeds_are_split_over_the_devices_that_divide_them():
  tree = {"a": np.zeros((4, 3)), "b": np.arange(4)}
  sharded = devices.shard_seeds(tree)
  for leaf in jax.tree.leaves(sharded):
    shards = leaf.addressable_shards
    assert len(shards) == 2 and {s.data.shape[0] for s in shards} == {2}
  np.testing.assert_array_equal(sharded["b"], np.arange(4))
  odd = devices.shard_seeds({"a": np.zeros((3, 2))})
  assert isinstance(odd["a"], np.ndarray)  # 3 seeds share no factor with 2 devices


def test_sharded_seeds_give_the_unsharded_results(tiny_config):
  train = jax.jit(jax.vmap(make_train(tiny_config)))
  keys = seed_keys(tiny_config)
  plain, sharded = train(keys), train(devices.shard_seeds(keys))
  assert len(sharded.online_accuracy.sharding.device_set) == 2
  for name in ("online_accuracy", "loss", "final_accuracy"):
    np.testing.assert_allclose(np.asarray(getattr(plain, name)), np.asarray(getattr(sharded, name)),
                               rtol=1e-4, atol=1e-4)


def test_device_count_cannot_change_once_jax_runs(monkeypatch):
  monkeypatch.delenv("JAX_NUM_CPU_DEVICES", raising=False)
  assert devices.use_cpu_cores(4) is False
  assert len(jax.local_devices()) == 2
