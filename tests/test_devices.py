import jax
import numpy as np

from trainability import devices
from trainability.train import make_train, seed_keys


def test_tests_run_with_two_cpu_devices():
  assert len(jax.local_devices()) == 2  # set in conftest, as the CLI does


def test_runs_are_sharded_over_a_mesh_and_padded_to_the_device_count():
  tree = {"a": np.zeros((4, 3)), "b": np.arange(4)}
  sharded = devices.shard_runs(tree)
  for leaf in jax.tree.leaves(sharded):
    assert leaf.sharding.spec[0] == devices.RUNS and leaf.sharding.mesh.size == 2
    assert {s.data.shape[0] for s in leaf.addressable_shards} == {2}
  np.testing.assert_array_equal(sharded["b"], np.arange(4))
  odd = devices.shard_runs({"a": np.arange(3), "k": jax.vmap(jax.random.key)(np.arange(3))})
  np.testing.assert_array_equal(odd["a"], [0, 1, 2, 2])  # the last run repeated
  assert jax.dtypes.issubdtype(odd["k"].dtype, jax.dtypes.prng_key) and odd["k"].shape == (4,)
  np.testing.assert_array_equal(devices.gather(odd, 3)["a"], [0, 1, 2])


def test_sharded_runs_give_the_unsharded_results(tiny_config):
  train = jax.jit(jax.vmap(make_train(tiny_config)))
  keys = seed_keys(tiny_config)
  plain = train(keys)
  sharded = train(devices.shard_runs(keys))
  assert len(sharded.online_accuracy.sharding.device_set) == 2
  sharded = devices.gather(sharded, tiny_config.seeds)
  for name in ("online_accuracy", "loss", "final_accuracy"):
    np.testing.assert_allclose(np.asarray(getattr(plain, name)), getattr(sharded, name),
                               rtol=1e-4, atol=1e-4)


def test_device_count_cannot_change_once_jax_runs(monkeypatch):
  monkeypatch.delenv("JAX_NUM_CPU_DEVICES", raising=False)
  assert devices.use_cpu_cores(4) is False
  assert len(jax.local_devices()) == 2
