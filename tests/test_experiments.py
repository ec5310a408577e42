"""Smoke tests of the experiment scripts: tiny runs write their table and figures."""

import csv
import json
import importlib.util
import pathlib
import sys

import pytest

from trainability import Config

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"
TINY = ["--tasks", "2", "--epochs", "4", "--seeds", "2"]  # 80 steps per task: 2 checks


def _load(name, monkeypatch):
  monkeypatch.syspath_prepend(str(EXPERIMENTS))  # the scripts import experiments/arms.py
  spec = importlib.util.spec_from_file_location(f"experiments_{name}", EXPERIMENTS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  monkeypatch.setitem(sys.modules, spec.name, module)
  spec.loader.exec_module(module)
  return module


def _rows(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def test_scheduler_arms_writes_table_and_paper_figures(tmp_path, monkeypatch, capsys):
  script = _load("scheduler_arms", monkeypatch)
  script.main(TINY + ["--bases", "adam,l2", "--schedulers", "none,tuned",
                      "--steps-arm", "l2 + tuned", "--out", str(tmp_path), "--name", "t"])
  rows = _rows(tmp_path / "t.csv")
  assert [r["arm"] for r in rows[::4]] == ["adam", "adam + tuned", "l2", "l2 + tuned"]
  assert len(rows) == 4 * 2 * 2  # arms x seeds x tasks
  for r in rows:
    assert 0.0 <= float(r["online_accuracy"]) <= 1.0
    scheduled = r["arm"].endswith("tuned")
    assert (r["rho_hat"] != "") == scheduled
    assert len(r["lr_multiplier_per_layer"].split()) == (3 if scheduled else 0)
  for suffix in ("", "_lr", "_steps"):
    assert (tmp_path / f"t{suffix}.png").stat().st_size > 10_000
  assert "wrote" in capsys.readouterr().out


def test_scheduler_arms_configs_are_the_paper_arms(monkeypatch):
  script = _load("scheduler_arms", monkeypatch)
  runs = script.arm_configs(Config(), ["l2", "crelu"], ["none", "paper", "tuned"], 1e5, 0.9,
                             0.1)
  by_name = {name: config for name, _, _, config in runs}
  assert list(by_name) == ["l2", "l2 + paper", "l2 + tuned", "crelu", "crelu + paper",
                           "crelu + tuned"]
  assert by_name["l2"].l2 == 1e-3 and by_name["l2"].scheduler == "none"
  assert (by_name["l2 + paper"].beta, by_name["l2 + paper"].cool) == (1.0, 0.99)
  assert (by_name["l2 + paper"].warm_fraction, by_name["crelu + tuned"].warm_fraction) == (0.3, 0.1)
  assert (by_name["crelu + tuned"].beta, by_name["crelu + tuned"].cool) == (1e5, 0.9)
  assert by_name["crelu + tuned"].activation == "crelu"
  assert by_name["crelu + tuned"].scheduler == "noise_curvature"


@pytest.mark.parametrize("argv, message", [
    (["--bases", "adam,l1"], "--bases: 'l1' is not accepted; choose from adam, l2, crelu"),
    (["--schedulers", "fast"], "--schedulers: 'fast' is not accepted"),
    (["--steps-arm", "adam"], "--steps-arm: 'adam' is not accepted"),
])
def test_scheduler_arms_bad_flags_are_one_line_errors(argv, message, monkeypatch, tmp_path):
  script = _load("scheduler_arms", monkeypatch)
  with pytest.raises(SystemExit, match=message):
    script.main(TINY + argv + ["--out", str(tmp_path)])


def test_scheduler_beta_writes_one_arm_per_beta(tmp_path, monkeypatch):
  script = _load("scheduler_beta", monkeypatch)
  script.main(TINY + ["--betas", "1,1e5", "--out", str(tmp_path), "--name", "b"])
  rows = _rows(tmp_path / "b.csv")
  assert sorted({r["arm"] for r in rows}) == ["adam", "beta 1", "beta 100000"]
  assert (tmp_path / "b.png").exists()


def test_indicator_report_ranks_every_indicator_column(tmp_path, monkeypatch):
  script = _load("indicator_report", monkeypatch)
  monkeypatch.setattr(script, "ARMS", {"adam 1e-3": {}, "l2 1e-3": {"l2": 1e-3}})
  script.main(["--tasks", "3", "--epochs", "4", "--seeds", "1", "--every", "40",
               "--out", str(tmp_path), "--name", "r"])
  rows = _rows(tmp_path / "r.csv")
  indicators = {r["indicator"] for r in rows}
  assert "rho_hat" in indicators and "srank" in indicators and len(indicators) == 20
  assert all(int(r["n"]) == 2 * 3 and int(r["n_next"]) == 2 * 2 for r in rows)
  assert (tmp_path / "r.png").stat().st_size > 10_000
  assert (tmp_path / "r.md").read_text().count("\n| ") >= len(rows)


def test_baselines_writes_table_and_figure(tmp_path, monkeypatch, capsys):
  script = _load("baselines", monkeypatch)
  script.main(TINY + ["--baselines", "adam,shrink_perturb", "--schedulers", "none,tuned",
                      "--out", str(tmp_path), "--name", "b"])
  rows = _rows(tmp_path / "b.csv")
  assert [r["arm"] for r in rows[::4]] == ["adam", "adam + tuned", "shrink_perturb",
                                           "shrink_perturb + tuned"]
  table = _rows(tmp_path / "b_table.csv")
  assert [r["arm"] for r in table] == [r["arm"] for r in rows[::4]]
  for r in table:  # the table is the mean over seeds of the per-task rows
    per_seed = [float(x["online_accuracy"]) for x in rows if x["arm"] == r["arm"]
                and x["task"] == "1"]
    assert abs(float(r["task_2"]) - sum(per_seed) / 2) < 1e-3
  assert (tmp_path / "b.png").stat().st_size > 10_000
  assert "wrote" in capsys.readouterr().out


def test_every_baseline_is_a_valid_config(monkeypatch):
  script = _load("baselines", monkeypatch)
  runs = script.arm_configs(Config(), list(script.BASELINES), ["none", "tuned"])
  assert len(runs) == 2 * len(script.BASELINES)
  by_name = {name: config for name, _, _, config in runs}
  assert by_name["cbp + tuned"].unit_reset == "cbp"
  assert by_name["cbp + tuned"].scheduler == "noise_curvature"
  assert by_name["wasserstein"].regularizer == "wasserstein"
  assert by_name["fourier"].activation == "fourier"
  with pytest.raises(SystemExit, match="--baselines: 'sam' is not accepted"):
    script.main(["--baselines", "adam,sam"])


def test_scheduler_modes_runs_arms_writes_outputs_and_resumes(tmp_path, monkeypatch, capsys):
  script = _load("scheduler_modes", monkeypatch)
  argv = ["--suite", "main", "--arms", "adam,adam+stability", "--tasks", "2", "--epochs", "2",
          "--out", str(tmp_path)]
  assert script.main(argv) == 0
  table = {r["arm"]: r for r in script.read_csv(tmp_path / "modes_main_table.csv")}
  assert set(table) == {"adam", "adam+stability"} and table["adam"]["tasks"] == "2"
  rows = script.read_csv(tmp_path / "modes_main.csv")
  assert len(rows) == 2 * 2 * 2  # arms x seeds x tasks
  assert all(len(r["lr_multiplier_per_layer"].split()) == 3 for r in rows
             if r["arm"] == "adam+stability")
  checks = script.read_csv(tmp_path / "adam+stability" / "checks_seed0.csv")
  assert checks and {r["layer"] for r in checks} == {"hidden_0", "hidden_1", "output"}
  for name in ("modes_main.png", "modes_main_lr.png", "modes_main_steps.png"):
    assert (tmp_path / name).stat().st_size > 0
  # A second call skips the complete arms; a partial one runs again from its start.
  results = tmp_path / "adam" / "results.csv"
  results.write_text("".join(results.read_text().splitlines(True)[:2]))
  capsys.readouterr()
  assert script.main(argv) == 0
  out = capsys.readouterr().out
  assert "adam+stability: complete, skipped" in out and "adam: complete" not in out
  assert len(script.read_csv(results)) == 4


def test_scheduler_modes_resumes_an_interrupted_arm_from_its_checkpoint(tmp_path, monkeypatch):
  """An arm stopped with the same flags and a checkpoint resumes (`run --resume`);
  one with other flags starts again, with a checkpoint after every task."""
  script = _load("scheduler_modes", monkeypatch)
  commands = []

  class Done:
    returncode = 0

  monkeypatch.setattr(script.subprocess, "run", lambda command: commands.append(command) or Done)
  monkeypatch.setattr(script, "condense_checks", lambda out: None)
  out, flags = tmp_path / "arm", ["--tasks", "3", "--seeds", "1"]
  (out / "checkpoints" / "2").mkdir(parents=True)
  (out / "pending.json").write_text(json.dumps(flags))
  script.run_arm(str(out), flags)
  assert commands[-1][-3:] == ["--resume", str(out), "--no-progress"]
  assert json.loads((out / "flags.json").read_text()) == flags
  assert not (out / "pending.json").exists() and not (out / "checkpoints").exists()
  # Other flags: a fresh start that checkpoints every task.
  (out / "checkpoints" / "2").mkdir(parents=True)
  (out / "pending.json").write_text(json.dumps(["--tasks", "5"]))
  (out / "flags.json").unlink()
  script.run_arm(str(out), flags)
  assert "--resume" not in commands[-1]
  assert commands[-1][4:] == flags + ["--checkpoint-every", "1", "--keep-checkpoints", "1",
                                      "--out", str(out), "--no-progress"]


def test_trac_scale_writes_s_and_the_distance_from_init_per_task(tmp_path, monkeypatch):
  script = _load("trac_scale", monkeypatch)
  out = tmp_path / "trac_scale.csv"
  assert script.main(["--tasks", "2", "--seeds", "1", "--epochs", "2", "--out", str(out)]) == 0
  with open(out, newline="") as f:
    rows = list(csv.DictReader(f))
  assert [(r["arm"], r["task"]) for r in rows] == [("adam", "1"), ("adam", "2"),
                                                  ("adam+trac", "1"), ("adam+trac", "2")]
  trac_rows = [r for r in rows if r["arm"] == "adam+trac"]
  assert all(float(r["trac_scale"]) > 0 for r in trac_rows)
  assert all(r["trac_scale"] == "nan" for r in rows if r["arm"] == "adam")
  assert all(float(r["relative_distance"]) > 0 for r in rows)


def test_scheduler_modes_bad_arm_is_a_one_line_error(monkeypatch):
  script = _load("scheduler_modes", monkeypatch)
  with pytest.raises(SystemExit, match="--arms: 'nope' is not accepted"):
    script.main(["--suite", "main", "--arms", "nope"])


def test_scheduler_modes_paper100_is_the_paper_suite_at_100_epochs(monkeypatch):
  script = _load("scheduler_modes", monkeypatch)
  _, _, arms, _ = script.SUITES["paper100"]
  assert [a[0] for a in arms] == ["crelu", "crelu+reference", "l2", "l2+reference",
                                  "crelu+reference_rerun", "crelu+reference_max10"]
  by_name = {a[0]: a for a in arms}
  assert by_name["crelu+reference_rerun"][1:] == by_name["crelu+reference"][1:]
  assert by_name["crelu+reference_max10"][2] == script.MODES["reference"] + [
      "--max-multiplier", "10"]
  paper = script.arm_flags("paper", "crelu+reference", "crelu", script.MODES["reference"],
                           None, None)
  long = script.arm_flags("paper100", "crelu+reference", "crelu", script.MODES["reference"],
                          None, None)
  value = lambda flags, flag: flags[flags.index(flag) + 1]
  assert (value(paper, "--epochs"), value(long, "--epochs")) == ("25", "100")
  assert value(long, "--seeds") == "1"
  strip = lambda flags: [f for i, f in enumerate(flags) if "--epochs" not in flags[i - 1:i + 1]
                         and "--seeds" not in flags[i - 1:i + 1]]
  assert strip(paper) == strip(long)


def test_narrow_quick_run_fits_the_wide_net_and_resumes(tmp_path, monkeypatch, capsys):
  """experiments/narrow.py --quick: n = 20 Gaussian points, widths 2 and 8, Adam and
  the projected regime. The width-2 net (P = 72 < n C = 200 rows of J) has
  sigma_min(J) = 0; every run records its steps to fit or none; a rerun
  finds every arm finished and only rewrites the table and figure."""
  script = _load("narrow", monkeypatch)
  assert script.main(["--quick", "--out", str(tmp_path)]) == 0
  rows = _rows(tmp_path / "narrow.csv")
  assert [(r["arm"], r["width"]) for r in rows] == [
      ("adam", "2"), ("adam", "8"), ("projected", "2"), ("projected", "8")]
  for r in rows:
    assert 0.0 <= float(r["final_train_accuracy"]) <= 1.0
    if r["steps_to_fit"]:  # a check every 10 of the 40 steps
      assert int(r["steps_to_fit"]) in (10, 20, 30, 40)
    assert float(r["sigma_min_init"]) >= 0.0 and float(r["sigma_min_end"]) >= 0.0
  assert all(float(r["sigma_min_init"]) < 1e-6 for r in rows if r["width"] == "2")
  assert (tmp_path / "narrow.png").stat().st_size > 10_000
  assert "| tanh | projected | 8 |" in (tmp_path / "narrow_table.md").read_text()
  capsys.readouterr()
  assert script.main(["--quick", "--out", str(tmp_path)]) == 0
  assert "runs in" not in capsys.readouterr().out
  assert len(_rows(tmp_path / "narrow.csv")) == 4


def test_width_lot_finds_the_task_where_accuracy_halves(monkeypatch):
  script = _load("width_lot", monkeypatch)
  assert script.lost_at([0.9, 0.88, 0.4, 0.1], chance=0.1, fraction=0.5) == 2
  assert script.lost_at([0.5, 0.31, 0.29], chance=0.1, fraction=0.5) == 2  # below 0.3
  assert script.lost_at([0.3, 0.6, 0.5, 0.34], chance=0.1, fraction=0.5) == 3  # best so far
  assert script.lost_at([0.1, 0.1, 0.1], chance=0.1, fraction=0.5) is None  # never above chance
  results = [{"seed": s, "task": t, "online_accuracy": a}
             for s, accs in enumerate([[0.9, 0.2], [0.9, 0.8]]) for t, a in enumerate(accs)]
  sigma = [{"seed": s, "task": t, "evaluation": 0, "step": 1, "indicator": "jacobian_sigma_min",
            "column": "network", "value": v}
           for s, values in enumerate([[2.0, 0.0], [2.0, 0.5]]) for t, v in enumerate(values)]
  rows = script.width_rows(16, 123, results, sigma, chance=0.1, fraction=0.5)
  assert [(r["lost_at"], r["lost"], r["peak_task"], r["singular_from"]) for r in rows] == [
      (1, True, 0, 1), (2, False, 0, 2)]
  assert script.singular_from([5.0, 1.0, 4e-3, 0.0]) == 2 and script.singular_from([1, 1]) is None


def test_width_lot_early_warning_ranks_the_indicator_that_orders_the_runs(monkeypatch):
  """Over four (width, seed) runs, an indicator whose task-1 value falls as the
  lost-at task grows has Spearman -1; one unrelated to it ranks below."""
  script = _load("width_lot", monkeypatch)
  lost = {(8, 0): 3, (8, 1): 5, (16, 0): 2, (16, 1): 9}
  row = lambda seed, task, name, value: {"seed": seed, "task": task, "evaluation": 0,
                                         "step": 1, "indicator": name, "column": "network",
                                         "value": value}
  runs = {w: ([], [row(s, t, name, value) for s in (0, 1) for t in (0, 1)
                   for name, value in (("sigma", -lost[(w, s)] + 10 * t),
                                       ("noise", [1.0, 3.0, 2.0, 4.0][s + (w == 16) * 2]))])
          for w in (8, 16)}
  summary = [{"width": w, "seed": s, "lost_at": v} for (w, s), v in lost.items()]
  table = script.early_warning(runs, summary, task=1)
  assert [r["indicator"] for r in table] == ["sigma", "noise"]
  assert table[0]["spearman_lost_at"] == pytest.approx(-1.0) and table[0]["runs"] == 4
  assert abs(table[1]["spearman_lost_at"]) < 1


def test_width_lot_quick_run_writes_its_tables_and_skips_finished_widths(tmp_path, monkeypatch,
                                                                         capsys):
  script = _load("width_lot", monkeypatch)
  argv = ["--widths", "12", "--tasks", "2", "--epochs", "2", "--seeds", "2",
          "--indicators", "weight_norm,dormant_fraction", "--checkpoint-every", "1",
          "--out", str(tmp_path), "--name", "w"]
  assert script.main(argv) == 0
  rows = _rows(tmp_path / "w.csv")
  assert [(r["width"], r["seed"]) for r in rows] == [("12", "0"), ("12", "1")]
  assert rows[0]["params"] == str(65 * 12 + 13 * 12 + 13 * 10)
  run_dir = tmp_path / "w" / "width_12"
  assert {r["indicator"] for r in _rows(run_dir / "indicators.csv")} == {
      "weight_norm", "dormant_fraction", "jacobian_sigma_min"}
  assert not (run_dir / "checkpoints").exists()
  text = (tmp_path / "w.md").read_text()
  assert "| 12 | 1066 |" in text and "jacobian_sigma_min | network" in text
  assert (tmp_path / "w.png").stat().st_size > 10_000
  capsys.readouterr()
  assert script.main(argv) == 0
  assert "width 12: finished" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--widths", "8,x"], "--widths: '8,x' is not accepted"),
    (["--widths", "0"], "--widths: '0' is not accepted"),
    (["--lost-fraction", "1.5"], "--lost-fraction: 1.5 is not accepted"),
    (["--early-task", "20"], "--early-task: 20 is not accepted; give 0 ... 19"),
])
def test_width_lot_bad_flags_are_one_line_errors(argv, message, monkeypatch, tmp_path):
  script = _load("width_lot", monkeypatch)
  with pytest.raises(SystemExit, match=message):
    script.main(argv + ["--out", str(tmp_path)])


def test_barren_plateaus_quick_run_writes_slopes_and_resumes(tmp_path, monkeypatch, capsys):
  script = _load("barren_plateaus", monkeypatch)
  argv = ["--ns", "2,3", "--depths", "1", "--draws", "40", "--out", str(tmp_path), "--name", "b"]
  assert script.main(argv) == 0
  rows = _rows(tmp_path / "b.csv")
  assert [(r["cost"], r["n"]) for r in rows] == [("global", "2"), ("global", "3"),
                                                  ("local", "2"), ("local", "3")]
  assert all(float(r["var_mean"]) > 0 and float(r["se_first"]) > 0 for r in rows)
  table = (tmp_path / "b.md").read_text()
  assert "| global | 1 | 2-3 |" in table and "| local | 1 | 2-3 |" in table
  assert (tmp_path / "b.png").stat().st_size > 10_000
  capsys.readouterr()
  assert script.main(argv) == 0  # every row is there: nothing is measured again
  assert "Var first" not in capsys.readouterr().out
  assert len(_rows(tmp_path / "b.csv")) == 4
  with pytest.raises(SystemExit, match="--ns: '2,x' is not accepted"):
    script.main(["--ns", "2,x", "--out", str(tmp_path)])
  with pytest.raises(SystemExit, match="--depths: '0' is not accepted; give integers >= 1"):
    script.main(["--depths", "0", "--out", str(tmp_path)])
  with pytest.raises(SystemExit, match="--draws: 1 is not accepted"):
    script.main(["--draws", "1", "--out", str(tmp_path)])


def test_quantum_quick_run_records_indicators_per_layer_and_resumes(tmp_path, monkeypatch,
                                                                    capsys):
  script = _load("quantum", monkeypatch)
  argv = ["--depths", "2", "--arms", "scheduler", "--qubits", "4", "--seeds", "2", "--steps",
          "4", "--record-every", "2", "--out", str(tmp_path), "--name", "q"]
  assert script.main(argv) == 0
  runs, layers = _rows(tmp_path / "q.csv"), _rows(tmp_path / "q_layers.csv")
  assert [(r["seed"], r["step"]) for r in runs] == [
      ("0", "0"), ("0", "2"), ("0", "4"), ("1", "0"), ("1", "2"), ("1", "4")]
  assert len(layers) == 2 * len(runs)  # layer_00 and layer_01 of every record
  assert {r["layer"] for r in layers} == {"layer_00", "layer_01"}
  for r in layers:
    assert float(r["gradient_norm"]) > 0 and float(r["alpha_g"]) > 0
    assert float(r["effective_step"]) > 0 or r["step"] == "0"  # Adam has no step before one
  # the per-run means are the layers' means
  first = [r for r in layers if r["seed"] == "1" and r["step"] == "2"]
  row = next(r for r in runs if r["seed"] == "1" and r["step"] == "2")
  assert float(row["sharpness_mean"]) == pytest.approx(
      sum(float(r["sharpness"]) for r in first) / 2, rel=1e-5)
  assert "| 2 | scheduler |" in (tmp_path / "q.md").read_text()
  assert (tmp_path / "q.png").stat().st_size > 10_000
  # a cell cut off between its two files (layer rows written, run rows not): dropped on resume
  with open(tmp_path / "q_layers.csv", "a") as f:
    f.write("3,adam,0,0,layer_00,1,1,1,1,1,1\n")
  capsys.readouterr()
  assert script.main(argv) == 0  # done: nothing is trained again
  assert "test accuracy" not in capsys.readouterr().out
  assert len(_rows(tmp_path / "q.csv")) == len(runs)
  assert _rows(tmp_path / "q_layers.csv") == layers


@pytest.mark.parametrize("argv, message", [
    (["--arms", "adam,sgd"], "--arms: 'adam,sgd' is not accepted"),
    (["--qubits", "3"], "--qubits: 3 is not accepted"),
    (["--steps", "10", "--record-every", "3"], "--record-every: 3 is not accepted"),
    (["--lr", "0"], "--lr: 0.0 is not accepted"),
])
def test_quantum_bad_flags_are_one_line_errors(argv, message, monkeypatch, tmp_path):
  script = _load("quantum", monkeypatch)
  with pytest.raises(SystemExit, match=message):
    script.main(argv + ["--out", str(tmp_path)])


# paper_full.py on digits (500 images, batch 50, 40 epochs: 400 steps, one check at
# K = 400 per task), so the test needs no Fashion-MNIST.
PAPER_TINY = ["--subset", "500", "--batch-size", "50", "--epochs", "40", "--tasks", "2",
              "--seeds", "1"]


def test_paper_full_runs_arms_in_parallel_writes_outputs_and_skips_finished(
    tmp_path, monkeypatch, capsys):
  script = _load("paper_full", monkeypatch)
  monkeypatch.setattr(script, "PAPER", PAPER_TINY)
  monkeypatch.setattr(script.modes, "ensure_fashion_mnist", lambda: None)
  argv = ["--arms", "l2,l2+reference", "--seeds", "1", "--parallel", "2", "--out", str(tmp_path)]
  assert script.main(argv) == 0
  rows = script.modes.read_csv(tmp_path / "paper_full.csv")
  assert [(r["arm"], r["task"]) for r in rows] == [("l2", "0"), ("l2", "1"),
                                                   ("l2+reference", "0"), ("l2+reference", "1")]
  assert all(len(r["lr_multiplier_per_layer"].split()) == 3 for r in rows[2:])
  run = tmp_path / "paper_full" / "l2+reference" / "seed0"
  config = json.load(open(run / "config.json"))["config"]
  assert (config["check_every"], config["floor"], config["warm_window"], config["l2"]) == (
      400, 0.12, "run", 1e-3)
  assert not (run / "checkpoints").exists()  # a finished run's checkpoint is deleted
  assert [r["tasks"] for r in script.modes.read_csv(run / "timing.csv")] == ["2"]
  table = (tmp_path / "paper_full_table.md").read_text()
  assert "| l2+reference | 1 | 2 |" in table and "~0.49" in table
  for name in ("paper_full.png", "paper_full_lr.png"):
    assert (tmp_path / name).stat().st_size > 10_000
  capsys.readouterr()
  assert script.main(argv) == 0
  assert capsys.readouterr().out.count("complete, skipped") == 2


def test_paper_full_resumes_from_a_checkpoint_and_refuses_other_flags(tmp_path, monkeypatch):
  script = _load("paper_full", monkeypatch)
  flags = script.run_flags("l2", 0, None, None)
  assert flags[flags.index("--epochs") + 1] == "250" and flags[flags.index("--tasks") + 1] == "40"
  out = tmp_path / "l2" / "seed0"
  fresh = script.command(str(out), flags)
  assert fresh[-3:] == ["--out", str(out), "--no-progress"]
  assert json.load(open(out / "flags.json")) == flags
  # One task done and checkpointed: resume.
  (out / "results.csv").write_text("seed,task,online_accuracy\n0,0,0.5\n")
  (out / "checkpoints" / "1").mkdir(parents=True)
  assert script.command(str(out), flags)[-3:] == ["--resume", str(out), "--no-progress"]
  # All tasks done: nothing to run.
  (out / "results.csv").write_text("seed,task,online_accuracy\n" + "".join(
      f"0,{t},0.5\n" for t in range(40)))
  assert script.command(str(out), flags) is None
  with pytest.raises(SystemExit, match="was run with other flags"):
    script.command(str(out), script.run_flags("l2", 0, 100, None))
  with pytest.raises(SystemExit, match="--arms: 'adam' is not accepted"):
    script.main(["--arms", "adam"])
  with pytest.raises(SystemExit, match="--parallel: 0 is not accepted"):
    script.main(["--parallel", "0"])


def test_paper_full_condensed_checks_keep_tasks_of_an_earlier_machine(tmp_path, monkeypatch):
  """A run resumed on a new machine has a checks.csv of the later tasks only: the
  condensed files keep the earlier tasks' rows and add the new ones."""
  script = _load("paper_full", monkeypatch)
  columns = ["seed", "task", "check", "step", "layer", "alpha", "alpha_g", "alpha_vol",
             "alpha_tilde", "lam_bar", "multiplier"]

  def checks(tasks):
    with open(tmp_path / "checks.csv", "w") as f:
      f.write(",".join(columns) + "\n")
      for t in tasks:
        f.write(",".join(["0", str(t), "0", "399", "hidden_0"] + ["0.5"] * 5 + [str(1 + t)])
                + "\n")

  checks([0, 1])
  script.condense(str(tmp_path))
  checks([2])  # the new machine's checks.csv
  script.condense(str(tmp_path))
  rows = script.modes.read_csv(tmp_path / "multipliers.csv")
  assert [(r["task"], r["multiplier"]) for r in rows] == [("0", "1"), ("1", "2"), ("2", "3")]
  assert [r["task"] for r in script.modes.read_csv(tmp_path / "checks_seed0.csv")] == [
      "0", "1", "2"]


def test_reference_match_report_compares_per_task_within_seed_spread(tmp_path, monkeypatch):
  script = _load("reference_match", monkeypatch)
  root = tmp_path / "reference_match"
  (root / "reference").mkdir(parents=True)
  for seed, accs in enumerate([[0.50, 0.40], [0.52, 0.44]]):
    with open(root / "reference" / f"l2_seed{seed}.csv", "w") as f:
      f.write("task,online_accuracy,loss,seconds,lr_fc1,lr_fc2,lr_fc4\n")
      for t, a in enumerate(accs):
        f.write(f"{t},{a},1.0,1.0,0.001,0.001,0.001\n")
  library = root / "library" / "l2"
  library.mkdir(parents=True)
  (library / "results.csv").write_text(
      "seed,task,online_accuracy,loss,final_accuracy\n0,0,0.51,1,1\n0,1,0.30,1,1\n"
      "1,0,0.50,1,1\n1,1,0.31,1,1\n")
  (library / "config.json").write_text(json.dumps({"config": {"lr": 1e-3}}))
  assert script.main(["--report", "--out", str(tmp_path)]) == 0
  table = (tmp_path / "reference_match.md").read_text()
  # Task 1: means 0.510 and 0.505 (sd 0.010 and 0.005): agree. Task 2: 0.420 against
  # 0.305, sd 0.020: no.
  assert "| 1 | 0.510 ± 0.010 | 0.505 ± 0.005 | -0.005 | yes |" in table
  assert "| 2 | 0.420 ± 0.020 | 0.305 ± 0.005 | -0.115 | no |" in table
  assert "1 of 2 tasks agree." in table
  rows = script.modes.read_csv(tmp_path / "reference_match.csv")
  assert {r["source"] for r in rows} == {"reference", "library"} and len(rows) == 8
  with pytest.raises(SystemExit, match="--reference, --torch-python: both are needed"):
    script.main(["--out", str(tmp_path)])


def test_reference_harness_records_one_row_per_task_end(tmp_path, monkeypatch):
  monkeypatch.syspath_prepend(str(EXPERIMENTS / "reference"))
  import run_reference
  recorder = run_reference.Recorder(str(tmp_path / "r.csv"))
  wandb = recorder.module()
  wandb.log({"J": 2.0})  # a check's log: no row
  for task in range(2):
    wandb.log({"task_acc": 0.1 + task, "J": 2.0})
  rows = list(csv.DictReader(open(tmp_path / "r.csv")))
  assert [(r["task"], r["online_accuracy"]) for r in rows] == [("0", "0.1"), ("1", "1.1")]
  with pytest.raises(SystemExit, match="reference: no implicit_regularization.py"):
    run_reference.main(["--reference", str(tmp_path), "--out", str(tmp_path / "x.csv")])
