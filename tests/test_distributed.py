"""Two local CPU processes (jax.distributed, one device each) run one sweep together:
the runs are sharded over both processes' devices, checkpoints are saved by both,
and the table equals the single-process sweep's."""

import csv
import os
import socket
import subprocess
import sys

import pytest

from trainability import cli

SWEEP = ["sweep", "--subset", "200", "--tasks", "3", "--epochs", "2", "--batch-size", "20",
         "--depth", "1", "--seeds", "3", "--no-progress", "--grid", "width=8,16",
         "--grid", "lr=1e-3,1e-2", "--checkpoint-every", "1"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _table(path):
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  return sorted(rows, key=lambda r: (int(r["point"]), int(r["seed"]), int(r["task"])))


def test_two_processes_run_one_sweep_and_match_one_process(tmp_path):
  out = str(tmp_path / "two")
  coordinator = f"127.0.0.1:{_free_port()}"
  env = {**os.environ, "JAX_NUM_CPU_DEVICES": "1"}
  procs = [subprocess.Popen(
      [sys.executable, "-m", "trainability", *SWEEP, "--out", out, "--coordinator", coordinator,
       "--num-processes", "2", "--process-id", str(i)],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err.decode()[-3000:]
  # Process 0 reports; process 1 prints nothing of its own (gloo may log a line).
  assert b"mean online accuracy" in outputs[0][0] and b"mean online" not in outputs[1][0]
  one = str(tmp_path / "one")
  assert cli.main([*SWEEP, "--out", one]) == 0
  two_rows, one_rows = _table(os.path.join(out, "sweep.csv")), _table(os.path.join(one,
                                                                                   "sweep.csv"))
  assert len(two_rows) == len(one_rows) == 4 * 3 * 3
  for a, b in zip(two_rows, one_rows):
    assert (a["point"], a["seed"], a["task"]) == (b["point"], b["seed"], b["task"])
    for metric in ("online_accuracy", "loss", "final_accuracy"):
      assert float(a[metric]) == pytest.approx(float(b[metric]), abs=1e-6)


def test_several_processes_need_an_explicit_output_directory(capsys):
  assert cli.main([*SWEEP, "--coordinator", "127.0.0.1:1", "--num-processes", "2",
                   "--process-id", "0"]) == 2
  assert "out: give --out" in capsys.readouterr().err


def test_a_partial_coordinator_is_a_one_line_error(tmp_path, capsys):
  assert cli.main([*SWEEP, "--out", str(tmp_path / "x"), "--coordinator", "127.0.0.1:1"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "give --coordinator, --num-processes and --process-id" in err
