import csv
import json
import os
import subprocess
import sys

import pytest

from trainability import cli, report, results

TINY = ["--subset", "200", "--tasks", "3", "--epochs", "2", "--batch-size", "20",
        "--width", "16", "--depth", "1", "--seeds", "2", "--no-progress"]


def read_csv(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def test_run_writes_results_config_and_plot(tmp_path, capsys):
  out = tmp_path / "run"
  assert cli.main(["run", *TINY, "--out", str(out)]) == 0
  rows = read_csv(out / "results.csv")
  assert len(rows) == 6
  assert list(rows[0]) == ["seed", "task", "online_accuracy", "loss", "final_accuracy"]
  assert {(r["seed"], r["task"]) for r in rows} == {(s, t) for s in "01" for t in "012"}
  assert all(0.0 <= float(r["online_accuracy"]) <= 1.0 for r in rows)
  saved = json.loads((out / "config.json").read_text())
  assert saved["config"]["tasks"] == 3 and saved["steps_per_task"] == 20
  assert (out / "online_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  printed = capsys.readouterr().out
  assert "3 of 3 tasks" in printed and "average online accuracy" in printed


def test_heldout_column_and_chunks(tmp_path):
  out = tmp_path / "run"
  args = ["run", *TINY, "--stream", "permuted_inputs", "--heldout", "--chunk-tasks", "2"]
  assert cli.main(args + ["--out", str(out)]) == 0
  rows = read_csv(out / "results.csv")
  assert len(rows) == 6 and all(0.0 <= float(r["heldout_accuracy"]) <= 1.0 for r in rows)


def test_interrupted_run_keeps_finished_tasks(tmp_path, monkeypatch, capsys):
  original = results.ResultsWriter.write
  calls = []

  def interrupt_after_first_chunk(self, rows):
    if calls:
      raise KeyboardInterrupt
    calls.append(1)
    original(self, rows)

  monkeypatch.setattr(results.ResultsWriter, "write", interrupt_after_first_chunk)
  out = tmp_path / "run"
  assert cli.main(["run", *TINY, "--out", str(out)]) == 130
  rows = read_csv(out / "results.csv")
  assert [(r["seed"], r["task"]) for r in rows] == [("0", "0"), ("1", "0")]
  assert (out / "online_accuracy.png").exists()
  assert "interrupted after 1 finished tasks" in capsys.readouterr().err


def test_scheduler_run_writes_checks_rho_hat_and_its_plot(tmp_path):
  out = tmp_path / "run"
  args = ["run", *TINY, "--tasks", "2", "--scheduler", "noise_curvature", "--check-every", "5",
          "--threshold", "paper", "--beta", "10", "--variance", "instantaneous"]
  assert cli.main(args + ["--out", str(out)]) == 0
  rows = read_csv(out / "results.csv")
  assert all(0.0 <= float(r["rho_hat"]) <= 1.0 for r in rows)
  checks = read_csv(out / "checks.csv")
  # 2 seeds x 2 tasks x 4 checks (20 steps per task) x 2 layers
  assert len(checks) == 32 and {r["layer"] for r in checks} == {"hidden_0", "output"}
  assert [int(r["step"]) for r in checks[:8:2]] == [5, 10, 15, 20]
  for key in ("alpha", "alpha_g", "alpha_vol", "alpha_tilde", "lam", "lam_bar", "mu", "vol",
              "sigma2", "grad_sq", "multiplier", "crossed"):
    assert key in checks[0]
  assert (out / "scheduler.png").read_bytes()[:4] == b"\x89PNG"
  saved = json.loads((out / "config.json").read_text())
  assert saved["config"]["beta"] == 10.0 and saved["config"]["variance"] == "instantaneous"


def test_plot_command_redraws_a_run(tmp_path, capsys):
  out = tmp_path / "run"
  cli.main(["run", *TINY, "--tasks", "2", "--out", str(out)])
  os.remove(out / "online_accuracy.png")
  capsys.readouterr()
  assert cli.main(["plot", str(out)]) == 0
  assert (out / "online_accuracy.png").exists()
  assert "last task 2" in capsys.readouterr().out


@pytest.mark.parametrize("args, fragments", [
    (["--dataset", "svhn"], ["--dataset", "invalid choice", "digits", "cifar10"]),
    (["--activation", "gelu"], ["--activation", "relu", "crelu"]),
    (["--ns", "2"], ["ns: 2.0 is not accepted", "(0, 1]"]),
    (["--batch-size", "0"], ["batch_size: 0", "integer >= 1"]),
    (["--lr", "abc"], ["--lr", "invalid float value"]),
    (["--channels", "a,b"], ["--channels", "comma-separated list of integers"]),
    (["--heldout"], ["heldout:", "permuted_inputs"]),
    (["--model", "cnn", "--dataset", "mnist1d"], ["model: 'cnn'", "digits"]),
    (["--dataset", "mnist", "--data-dir", "/nonexistent"], ["/nonexistent/train-images-idx3-ubyte",
                                                            "--data-dir"]),
    (["--subset", "100000"], ["subset: 100000"]),
    (["--scheduler", "lyapunov"], ["--scheduler", "noise_curvature"]),
    (["--cool", "1.5"], ["cool: 1.5 is not accepted", "(0, 1]"]),
    (["--variance", "ema"], ["--variance", "windowed", "instantaneous"]),
    (["--batch-size", "500", "--subset", "100"], ["batch_size: 500 is more than the 100"]),
    (["--shrink", "0.1"], ["shrink: has no effect with shrink_perturb 'none'", "step or task"]),
    (["--unit-reset", "dropout"], ["--unit-reset", "cbp", "redo"]),
    (["--unit-reset", "redo", "--redo-every", "5000"], ["redo_every: 5000 is more than the"]),
    (["--regularizer", "l1"], ["--regularizer", "wasserstein", "orthogonal"]),
])
def test_bad_input_gives_one_line_naming_the_field(tmp_path, capsys, args, fragments):
  try:
    code = cli.main(["run", *args, "--out", str(tmp_path / "x")])
  except SystemExit as e:
    code = e.code
  assert code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1, err
  for fragment in fragments:
    assert fragment in err, err
  assert not (tmp_path / "x" / "results.csv").exists()


def test_existing_results_are_never_overwritten(tmp_path, capsys):
  out = tmp_path / "run"
  out.mkdir()
  (out / "results.csv").write_text("seed,task\n")
  assert cli.main(["run", *TINY, "--out", str(out)]) == 2
  assert "already holds results.csv" in capsys.readouterr().err
  assert (out / "results.csv").read_text() == "seed,task\n"


def test_console_script_help():
  done = subprocess.run([sys.executable, "-m", "trainability.cli", "run", "--help"],
                        capture_output=True, text=True, check=True)
  for flag in ("--dataset", "--stream", "--ns", "--reset", "--seeds", "--out"):
    assert flag in done.stdout


def test_run_records_indicators_and_report_ranks_them(tmp_path, capsys):
  out = tmp_path / "run"
  assert cli.main(["run", "--subset", "200", "--tasks", "3", "--epochs", "2", "--batch-size",
                   "20", "--width", "16", "--depth", "1", "--seeds", "2", "--indicators",
                   "weight_norm,srank,crossed", "--indicator-every", "10", "--no-progress",
                   "--out", str(out)]) == 0
  rows = report.read_indicator_rows(str(out / report.INDICATORS_FILE))
  assert {r["indicator"] for r in rows} == {"weight_norm", "srank", "crossed"}
  assert len(rows) == 2 * 3 * 2 * (3 + 1 + 2)  # seeds x tasks x evaluations x columns
  assert (out / report.INDICATORS_PLOT_FILE).stat().st_size > 10_000
  results_rows = results.read_rows(str(out / results.RESULTS_FILE))
  assert all(0.0 <= r["rho_hat"] <= 1.0 for r in results_rows)
  capsys.readouterr()
  assert cli.main(["report", str(out), str(out)]) == 0
  printed = capsys.readouterr().out
  assert "| weight_norm | network |" in printed and "| rho_hat | any layer |" in printed
  assert (out / report.REPORT_FILE).exists()
  (out / report.INDICATORS_PLOT_FILE).unlink()
  assert cli.main(["plot", str(out)]) == 0
  assert (out / report.INDICATORS_PLOT_FILE).exists()


def test_report_without_indicators_is_a_one_line_error(tmp_path, capsys):
  (tmp_path / "results.csv").write_text("seed,task,online_accuracy\n0,0,0.5\n")
  assert cli.main(["report", str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "run_dir: no indicators.csv in" in err


def test_unknown_indicator_flag_is_a_one_line_error(capsys):
  assert cli.main(["run", "--indicators", "sharpnes"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "indicators: 'sharpnes' is not accepted" in err


def test_baseline_flags_reach_the_config():
  args = cli.build_parser().parse_args(
      ["run", "--unit-reset", "cbp", "--replacement-rate", "0.01", "--maturity", "50",
       "--regularizer", "wasserstein", "--reg-coef", "0.01", "--shrink-perturb", "task",
       "--perturb-noise", "init", "--activation", "fourier"])
  assert (args.unit_reset, args.replacement_rate, args.maturity) == ("cbp", 0.01, 50)
  assert (args.regularizer, args.reg_coef) == ("wasserstein", 0.01)
  assert (args.shrink_perturb, args.perturb_noise, args.activation) == ("task", "init", "fourier")


def test_matrix_indicators_finish_with_two_seeds_on_each_of_two_cpu_devices(tmp_path):
  """A batched LAPACK call (eigvalsh, svd) inside a run sharded over several CPU
  devices never returned (jax 0.10.2: `estimators._one_matrix_at_a_time`). Here
  the 160 x 160 Jacobian Grams, the Hessian-rank Gram, the Lanczos tridiagonal and
  srank's SVD run with 2 seeds per device, in a subprocess that a hang cannot stall."""
  env = dict(os.environ, JAX_NUM_CPU_DEVICES="2", JAX_PLATFORMS="cpu")
  command = [sys.executable, "-m", "trainability.cli", "run", "--subset", "100", "--tasks", "2",
             "--epochs", "1", "--batch-size", "20", "--width", "16", "--depth", "1",
             "--seeds", "4", "--indicators", "srank,sharpness,hessian_rank,jacobian_sigma_min",
             "--indicator-every", "5", "--no-progress", "--out", str(tmp_path / "run")]
  try:
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
  except subprocess.TimeoutExpired:
    pytest.fail("the run hung (LAPACK inside a sharded program)")
  assert done.returncode == 0, done.stderr[-2000:]
  rows = report.read_indicator_rows(str(tmp_path / "run" / report.INDICATORS_FILE))
  sigma = [r for r in rows if r["indicator"] == "jacobian_sigma_min"]
  assert {r["seed"] for r in sigma} == {0, 1, 2, 3}
  assert {r["column"] for r in sigma} == {"network", "hidden_0", "output"}


@pytest.mark.parametrize("argv, field, reason", [
    (["run", "--out", "/proc/x"], "out", "No such file or directory"),
    (["run", "--out", "{file}/sub"], "out", "Not a directory"),
    (["sweep", "--grid", "lr=1e-3,1e-4", "--out", "/proc/x"], "out",
     "No such file or directory"),
    (["run", "--resume", "{empty}"], "resume", "holds no run (no config.json)"),
    (["run", "--resume", "{file}"], "resume", "is not a directory"),
    (["sweep", "--resume", "{empty}"], "resume", "holds no sweep (no sweep.json)"),
])
def test_unwritable_or_impossible_output_paths_are_one_line_errors(
    tmp_path, capsys, argv, field, reason):
  (tmp_path / "empty").mkdir()
  (tmp_path / "file").write_text("")
  argv = [a.format(file=tmp_path / "file", empty=tmp_path / "empty") for a in argv]
  assert cli.main(argv + ["--tasks", "1", "--epochs", "1"] * (argv[1] == "--out")) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith(f"trainability: error: {field}: ")
  assert reason in err and "Traceback" not in err
  path = next(a for a in argv if a.startswith("/") or str(tmp_path) in a)
  assert path in err


def test_a_run_and_a_sweep_compile_their_training_program_once(tmp_path, caplog):
  """Three chunks, then a resume from a checkpoint: run_tasks compiles once per
  process (the state that init, a chunk and a restore give is placed the same)."""
  import jax
  import logging

  def compiles(argv):
    caplog.clear()
    with jax.log_compiles(), caplog.at_level(logging.WARNING):
      assert cli.main(argv) == 0
    return sum("Finished XLA compilation of jit(run_tasks)" in r.getMessage()
               for r in caplog.records)

  run = ["run", "--tasks", "3", "--epochs", "1", "--seeds", "2", "--no-progress",
         "--checkpoint-every", "1", "--out", str(tmp_path / "run")]
  assert compiles(run) == 1
  results_path = tmp_path / "run" / "results.csv"
  results_path.write_text("".join(results_path.read_text().splitlines(True)[:3]))  # task 1
  assert compiles(["run", "--resume", str(tmp_path / "run"), "--no-progress"]) == 1
  assert compiles(["sweep", "--tasks", "3", "--epochs", "1", "--seeds", "2", "--no-progress",
                   "--grid", "lr=1e-3,1e-4", "--out", str(tmp_path / "sweep")]) == 1


def test_a_multiplier_at_its_ceiling_is_flagged_in_checks_and_the_summary(tmp_path, capsys):
  """The paper threshold warms every layer early in every task (its threshold is
  near alpha*_g ~ 1): with a ceiling of 1.02 the multipliers stop there."""
  out = tmp_path / "run"
  argv = ["run", "--subset", "200", "--batch-size", "20", "--width", "32", "--depth", "1",
          "--tasks", "2", "--epochs", "4", "--seeds", "2", "--scheduler", "noise_curvature",
          "--threshold", "paper", "--check-every", "2", "--max-multiplier", "1.02",
          "--no-progress", "--out", str(out)]
  assert cli.main(argv) == 0
  rows = list(csv.DictReader(open(out / results.CHECKS_FILE)))
  assert all(float(r["multiplier"]) <= 1.02 * (1 + 1e-6) for r in rows)
  held = [r for r in rows if r["at_ceiling"] == "True"]
  assert held and all(abs(float(r["multiplier"]) - 1.02) < 1e-6 for r in held)
  printed = capsys.readouterr().out
  assert "held at the ceiling (max_multiplier 1.02)" in printed
  assert json.load(open(out / "config.json"))["config"]["max_multiplier"] == 1.02
  assert cli.main(argv[:-1] + [str(tmp_path / "bad"), "--max-multiplier", "0.5"]) == 2
  assert "max_multiplier: 0.5 is not accepted" in capsys.readouterr().err
