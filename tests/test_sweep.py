"""Sweeps: grid parsing, programs per shape, width embedding equal to separate narrow
runs, the tidy table and figures, and resuming an interrupted sweep."""

import csv
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainability import Config, cli, data, make_trainer, results, seed_keys, sweep
from trainability.models import ACTIVE_UNITS
from trainability.settings import ConfigError

SMALL = dict(subset=200, tasks=3, epochs=2, batch_size=20, depth=2, seeds=2, width=16)


def test_axes_are_typed_as_their_settings():
  assert sweep.parse_axis("lr=1e-3,1e-2") == ("lr", (1e-3, 1e-2))
  assert sweep.parse_axis("width=8,16") == ("width", (8, 16))
  assert sweep.parse_axis("activation=relu,tanh") == ("activation", ("relu", "tanh"))
  assert sweep.parse_axis("heldout=true,false") == ("heldout", (True, False))
  assert sweep.parse_axis("reg-coef=0.1") == ("reg_coef", (0.1,))


@pytest.mark.parametrize("make, fragment", [
    (lambda: sweep.parse_axis("lr"), "give SETTING=V1,V2"),
    (lambda: sweep.parse_axis("width=8,wide"), "width='wide' is not accepted; give a int"),
    (lambda: sweep.make_grid(Config(), {"widht": [8]}), "'widht' is not a setting"),
    (lambda: sweep.make_grid(Config(), {"seeds": [1, 2]}), "setting of the whole sweep"),
    (lambda: sweep.make_grid(Config(), {"lr": [0.1, 0.1]}), "repeats a value"),
    (lambda: sweep.make_grid(Config(), {}), "at least one axis"),
    (lambda: sweep.points(sweep.make_grid(Config(), {"width": [0, 8]})), "width: 0 is not"),
    (lambda: sweep.points(sweep.make_grid(Config(), {"activation": ["gelu"]})), "activation"),
])
def test_bad_grids_are_one_line_errors(make, fragment):
  with pytest.raises(ConfigError) as error:
    make()
  assert fragment in str(error.value) and "\n" not in str(error.value)


def test_grid_files_in_json_and_yaml(tmp_path):
  spec = {"base": {"tasks": 2, "width": 8}, "grid": {"lr": [0.001, 0.01], "depth": [1, 2]}}
  (tmp_path / "g.json").write_text(json.dumps(spec))
  (tmp_path / "g.yaml").write_text("base:\n  tasks: 2\n  width: 8\ngrid:\n  lr: [0.001, 0.01]\n"
                                   "  depth: [1, 2]\n")
  for name in ("g.json", "g.yaml"):
    assert sweep.read_grid_file(str(tmp_path / name)) == (spec["base"], spec["grid"])
  (tmp_path / "bad.json").write_text('{"axes": {}}')
  with pytest.raises(ConfigError, match="grid_file: .* must hold a mapping with `grid`"):
    sweep.read_grid_file(str(tmp_path / "bad.json"))


def test_points_share_a_program_unless_their_shapes_differ():
  grid = sweep.make_grid(Config(**SMALL), {"lr": [1e-3, 1e-2], "width": [8, 16],
                                           "depth": [1, 2]})
  programs = sweep.plan(grid)
  # lr is traced and widths are embedded: one program per depth.
  assert [(p.config.depth, p.config.width, p.widths, p.traced) for p in programs] == [
      (1, 16, (8, 16, 8, 16), ("lr",)), (2, 16, (8, 16, 8, 16), ("lr",))]
  scheduled = sweep.make_grid(Config(**SMALL, scheduler="noise_curvature", check_every=5),
                              {"lr": [1e-3, 1e-2], "width": [8, 16]})
  # The scheduler averages over a layer's parameters: one program per width.
  assert [(p.config.width, p.widths) for p in sweep.plan(scheduled)] == [(8, None), (16, None)]
  assert "scheduler" in sweep.not_embeddable(scheduled.base)


@pytest.mark.parametrize("indicators", ["all", "crossed", "weight_norm,crossed"])
def test_the_table_has_rho_hat_whenever_a_run_measures_it(indicators):
  grid = sweep.make_grid(Config(**SMALL, indicators=indicators, indicator_every=5),
                         {"lr": [1e-3, 1e-2]})
  assert sweep._columns(grid, sweep.plan(grid))[-1] == "rho_hat"
  plain = sweep.make_grid(Config(**SMALL, indicators="weight_norm", indicator_every=5),
                          {"lr": [1e-3]})
  assert "rho_hat" not in sweep._columns(plain, sweep.plan(plain))


def _block(wide, narrow, width, widest=32):
  """The narrow net's entries of a wide array (runs, ...), copy-major where crelu doubles."""
  index = []
  for n, total in zip(narrow.shape, wide.shape):
    copies = n // width if n != total else 0
    index.append(np.arange(n) if not copies else
                 (np.arange(copies)[:, None] * widest + np.arange(width)).ravel())
  return wide[np.ix_(*index)]


def test_masked_widths_equal_separate_narrow_runs():
  """Init draws and scales, Adam moments and every metric of a run embedded in a
  wider net equal those of the separate narrow run; its padding stays exactly zero.

  Fourier features test both hard cases at once: cos(0) = 1, so padding units
  would be active without their mask, and the two copies [sin h, cos h] double
  the next layer's fan-in, copy-major."""
  activation = "fourier"
  base = Config(**SMALL, activation=activation, regularizer="l2_init", reg_coef=1e-3)
  grid = sweep.make_grid(base, {"width": [8, 32], "lr": [1e-3, 1e-2]})
  (program,) = sweep.plan(grid)
  dataset = data.load(base.dataset, base.data_dir, base.subset, base.normalize)
  keys = jax.vmap(jax.random.key)(np.tile(np.arange(base.seeds), len(program.points)))
  hparams = sweep._hparams(program, base.seeds)
  widths = np.repeat(program.widths, base.seeds)
  start = sweep.embedded_init(program.config, dataset, widths, keys, hparams)
  wide = make_trainer(program.config, dataset, unit_masks=True)
  end, metrics = jax.jit(jax.vmap(wide.run_tasks, in_axes=(0, None)))(start, np.arange(3))
  for width in (8, 32):
    # The separate runs of this width (both learning rates, as traced hparams).
    runs = np.flatnonzero(widths == width)
    masks = jax.tree.leaves(start.model_state[ACTIVE_UNITS])
    assert all(np.array_equal(np.asarray(m[runs]), np.tile(np.arange(32) < width, (4, 1)))
               for m in masks)
    narrow = make_trainer(base.replace(width=width), dataset)
    initial = jax.jit(jax.vmap(narrow.init))(
        keys[runs], {"learning_rate": hparams["learning_rate"][runs]})
    final, expected = jax.jit(jax.vmap(narrow.run_tasks, in_axes=(0, None)))(
        initial, np.arange(3))
    for field in ("online_accuracy", "loss", "final_accuracy"):
      np.testing.assert_allclose(getattr(metrics, field)[runs], getattr(expected, field),
                                 atol=2e-6, err_msg=f"width {width}: {field}")
    # The same init draws and scales, exactly.
    for w, n in zip(jax.tree.leaves(start.params), jax.tree.leaves(initial.params)):
      np.testing.assert_array_equal(_block(np.asarray(w[runs]), np.asarray(n), width), n)
    # Params, the L2-init anchor and Adam moments after training: the narrow run's.
    for w, n in zip(jax.tree.leaves((end.params, end.opt_state, end.components)),
                    jax.tree.leaves((final.params, final.opt_state, final.components))):
      w, n = np.asarray(w[runs]), np.asarray(n)
      if w.ndim == 1:  # a count: one per run
        np.testing.assert_array_equal(w, n)
        continue
      np.testing.assert_allclose(_block(w, n, width), n, rtol=1e-4, atol=1e-6)
      # The padding is exactly zero: the real entries hold all of the mass.
      assert np.abs(w).sum(dtype=np.float64) == np.abs(_block(w, n, width)).sum(
          dtype=np.float64), f"width {width}: padding moved"


def _read(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


TINY = ["--subset", "200", "--tasks", "3", "--epochs", "2", "--batch-size", "20", "--depth", "1",
        "--seeds", "2", "--no-progress"]


def test_sweep_command_writes_one_tidy_table_equal_to_separate_runs(tmp_path, capsys):
  out = tmp_path / "sweep"
  assert cli.main(["sweep", *TINY, "--activation", "tanh", "--grid", "width=8,16",
                   "--grid", "lr=1e-3,1e-2", "--out", str(out)]) == 0
  rows = _read(out / "sweep.csv")
  assert list(rows[0]) == ["point", "width", "lr", "seed", "task",
                           "online_accuracy", "loss", "final_accuracy"]
  assert len(rows) == 4 * 2 * 3  # points x seeds x tasks
  assert {(r["point"], r["seed"], r["task"]) for r in rows} == {
      (str(p), str(s), str(t)) for p in range(4) for s in range(2) for t in range(3)}
  summary = _read(out / "summary.csv")
  assert len(summary) == 4 and all(0 <= float(r["mean_online_accuracy"]) <= 1 for r in summary)
  for axis in ("width", "lr"):
    assert (out / f"sweep_{axis}.png").read_bytes()[:4] == b"\x89PNG"
  assert "1 program(s)" in capsys.readouterr().err  # width x lr x seed: one program
  # A point of the sweep is the run of its settings.
  single = tmp_path / "single"
  assert cli.main(["run", *TINY, "--width", "8", "--lr", "1e-2", "--activation", "tanh",
                   "--out", str(single)]) == 0
  alone = results.read_rows(str(single / "results.csv"))
  mine = [r for r in rows if (r["width"], r["lr"]) == ("8", "0.01")]
  alone = sorted(alone, key=lambda r: (r["seed"], r["task"]))
  assert len(mine) == len(alone) == 6
  for a, b in zip(sorted(mine, key=lambda r: (int(r["seed"]), int(r["task"]))), alone):
    assert (int(a["seed"]), int(a["task"])) == (b["seed"], b["task"])
    assert float(a["online_accuracy"]) == pytest.approx(b["online_accuracy"], abs=1e-6)
    assert float(a["loss"]) == pytest.approx(b["loss"], abs=1e-5)


def test_interrupted_sweep_resumes_to_the_same_table(tmp_path, monkeypatch):
  args = [*TINY, "--grid", "depth=1,2", "--grid", "lr=1e-3,1e-2", "--checkpoint-every", "1"]
  whole, broken = tmp_path / "whole", tmp_path / "broken"
  assert cli.main(["sweep", *args, "--out", str(whole)]) == 0
  original = results.ResultsWriter.write
  written = []

  def crash_in_second_program(self, rows):
    if len(written) == 4:  # program 1 wrote 3 chunks, program 2 one
      raise RuntimeError("simulated crash")
    written.append(1)
    original(self, rows)

  monkeypatch.setattr(results.ResultsWriter, "write", crash_in_second_program)
  with pytest.raises(RuntimeError, match="simulated crash"):
    cli.main(["sweep", *args, "--out", str(broken)])
  monkeypatch.setattr(results.ResultsWriter, "write", original)
  assert len(_read(broken / "sweep.csv")) == (3 + 1) * 2 * 2
  assert cli.main(["sweep", "--resume", str(broken), "--no-progress"]) == 0
  assert (whole / "sweep.csv").read_bytes() == (broken / "sweep.csv").read_bytes()
  assert cli.main(["sweep", "--resume", str(broken), "--lr", "0.1"]) == 2
