"""Checkpoints: a whole RunState round-trips, old ones are pruned, and a run killed
with SIGKILL mid-run resumes to a results.csv byte-identical to an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from trainability import Config, cli, make_trainer, seed_keys
from trainability.checkpoints import Checkpoints, host_copy
from trainability.settings import ConfigError

SMALL = dict(subset=200, tasks=3, epochs=1, batch_size=20, width=16, depth=1, seeds=2)


def test_whole_run_state_round_trips_and_old_checkpoints_are_pruned(tmp_path):
  config = Config(**SMALL, scheduler="noise_curvature", check_every=5,
                  indicators="weight_norm,crossed", indicator_every=5, unit_reset="cbp")
  trainer = make_trainer(config)
  init = jax.jit(jax.vmap(trainer.init))
  state, _ = jax.jit(jax.vmap(trainer.run_tasks, in_axes=(0, None)))(
      init(seed_keys(config)), np.arange(1))
  checkpoints = Checkpoints(str(tmp_path), keep=2)
  assert checkpoints.latest() is None
  for done in (1, 2, 3):
    checkpoints.save(done, jax.tree.map(lambda x: x, state))
  assert checkpoints.all() == [2, 3] and checkpoints.latest() == 3
  restored = checkpoints.restore(jax.eval_shape(jax.vmap(trainer.init), seed_keys(config)))
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  same = jax.tree.map(np.array_equal, host_copy(restored), host_copy(state))
  assert all(jax.tree.leaves(same))
  # Keys come back as keys: the run continues from the restored state.
  assert jax.dtypes.issubdtype(restored.init_key.dtype, jax.dtypes.prng_key)


def test_restore_without_a_checkpoint_and_bad_keep_are_one_line_errors(tmp_path):
  with pytest.raises(ConfigError, match="resume: no checkpoint in"):
    Checkpoints(str(tmp_path)).restore({"a": np.zeros(2)})
  with pytest.raises(ConfigError, match="keep_checkpoints: 0"):
    Checkpoints(str(tmp_path), keep=0)


def test_checkpoint_every_must_fall_between_chunks():
  with pytest.raises(ConfigError, match="checkpoint_every: 3 .* multiple of chunk_tasks"):
    Config(chunk_tasks=2, checkpoint_every=3)


@pytest.mark.parametrize("argv, fragment", [
    (["--lr", "0.1"], "do not give --lr with --resume"),
    (["--out", "x"], "do not give --out with --resume"),
])
def test_resume_refuses_settings_it_would_ignore(tmp_path, capsys, argv, fragment):
  assert cli.main(["run", "--resume", str(tmp_path), *argv]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and fragment in err


def test_resume_needs_a_checkpointed_run(tmp_path, capsys):
  out = tmp_path / "run"
  tiny = ["--subset", "200", "--tasks", "1", "--epochs", "1", "--batch-size", "20",
          "--width", "8", "--depth", "1", "--seeds", "1", "--no-progress"]
  assert cli.main(["run", *tiny, "--out", str(out)]) == 0
  capsys.readouterr()
  assert cli.main(["run", "--resume", str(out)]) == 2
  assert "was run without --checkpoint-every" in capsys.readouterr().err


RUN = ["--subset", "400", "--tasks", "8", "--epochs", "4", "--batch-size", "20", "--width", "32",
       "--depth", "2", "--seeds", "2", "--scheduler", "noise_curvature", "--check-every", "10",
       "--checkpoint-every", "1", "--keep-checkpoints", "2", "--no-progress"]


def _trainability(*args, **kwargs):
  return subprocess.Popen([sys.executable, "-m", "trainability", "run", *args],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def _finished_checkpoints(run_dir) -> list[int]:
  folder = os.path.join(run_dir, "checkpoints")
  if not os.path.isdir(folder):
    return []
  return sorted(int(name) for name in os.listdir(folder) if name.isdigit())


def test_sigkill_mid_run_then_resume_gives_identical_results(tmp_path):
  whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
  reference = _trainability(*RUN, "--out", whole)
  victim = _trainability(*RUN, "--out", killed)
  # Kill as soon as two checkpoints exist: the run is inside task 3 (or later).
  deadline = time.time() + 600
  while len(_finished_checkpoints(killed)) < 2 and victim.poll() is None:
    assert time.time() < deadline, "no checkpoint appeared"
    time.sleep(0.05)
  victim.send_signal(signal.SIGKILL)
  victim.wait()
  assert victim.returncode == -signal.SIGKILL, "the run finished before it could be killed"
  with open(os.path.join(killed, "results.csv")) as f:
    tasks_before = len(f.readlines()) // 2
  assert 2 <= tasks_before < 8
  resumed = _trainability("--resume", killed)
  out, err = resumed.communicate(timeout=600)
  assert resumed.returncode == 0, err.decode()
  assert b"resuming after task" in err
  assert reference.wait(timeout=600) == 0
  for name in ("results.csv", "checks.csv"):
    with open(os.path.join(whole, name), "rb") as a, open(os.path.join(killed, name), "rb") as b:
      assert a.read() == b.read(), name
  assert len(_finished_checkpoints(killed)) <= 2  # older checkpoints pruned
