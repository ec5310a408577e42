"""Sweeps: grid parsing, programs per shape, width embedding equal to separate narrow
runs, the tidy table and figures, and resuming an interrupted sweep."""

import csv
import json

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from trainability import Config, cli, data, devices, make_trainer, results, seed_keys, sweep
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
  # The scheduler and the indicators average over the narrow net's own elements: embedded.
  scheduled = sweep.make_grid(Config(**SMALL, scheduler="noise_curvature", check_every=5,
                                     indicators="all"), {"lr": [1e-3, 1e-2], "width": [8, 16]})
  assert [(p.config.width, p.widths) for p in sweep.plan(scheduled)] == [(16, (8, 16, 8, 16))]
  # A norm layer averages over every unit, padding included: one program per width.
  normed = sweep.make_grid(Config(**SMALL, norm="layernorm"), {"width": [8, 16]})
  assert [(p.config.width, p.widths) for p in sweep.plan(normed)] == [(8, None), (16, None)]
  assert "norm 'layernorm'" in sweep.not_embeddable(normed.base)


@pytest.mark.parametrize("indicators", ["all", "crossed", "weight_norm,crossed"])
def test_the_table_has_rho_hat_whenever_a_run_measures_it(indicators):
  grid = sweep.make_grid(Config(**SMALL, indicators=indicators, indicator_every=5),
                         {"lr": [1e-3, 1e-2]})
  assert sweep._columns(grid, sweep.plan(grid))[-1] == "rho_hat"
  plain = sweep.make_grid(Config(**SMALL, indicators="weight_norm", indicator_every=5),
                          {"lr": [1e-3]})
  assert "rho_hat" not in sweep._columns(plain, sweep.plan(plain))


def _block(wide, narrow, width, widest=16):
  """The narrow net's entries of a wide array (runs, ...), copy-major where crelu doubles."""
  index = []
  for n, total in zip(narrow.shape, wide.shape):
    copies = n // width if n != total else 0
    index.append(np.arange(n) if not copies else
                 (np.arange(copies)[:, None] * widest + np.arange(width)).ravel())
  return wide[np.ix_(*index)]


def test_masked_widths_equal_separate_narrow_runs():
  """A run embedded in a wider net is the separate narrow run: the same init
  draws and scales, Adam moments, L2-init anchor and metrics; the scheduler's
  checks and decisions (Adam's means and the Lanczos directions count its own
  elements only) and indicators averaged over its own units (each indicator is
  checked in tests/test_indicators.py); padding that stays exactly zero.

  Fourier features test both hard cases of the layout at once: cos(0) = 1, so
  padding units would be active without their mask, and the two copies
  [sin h, cos h] double the next layer's fan-in, copy-major."""
  base = Config(subset=100, tasks=2, epochs=2, batch_size=10, depth=2, seeds=1, width=8,
                activation="fourier", regularizer="l2_init", reg_coef=1e-3,
                scheduler="noise_curvature", check_every=5,
                indicators="grad_param_ratio,unit_sign_entropy,dormant_fraction",
                indicator_every=5, indicator_examples=20)
  grid = sweep.make_grid(base, {"width": [8, 16], "lr": [1e-3, 1e-2]})
  (program,) = sweep.plan(grid)
  assert program.widths == (8, 8, 16, 16)
  dataset = data.load(base.dataset, base.data_dir, base.subset, base.normalize)
  keys = jax.vmap(jax.random.key)(np.arange(4) % 2)
  hparams = sweep._hparams(program, base.seeds)
  start = sweep.embedded_init(program.config, dataset, program.widths, keys, hparams)
  wide = make_trainer(program.config, dataset, unit_masks=True)
  end, metrics = jax.jit(jax.vmap(wide.run_tasks, in_axes=(0, None)))(start, np.arange(2))
  runs = np.arange(2)  # width 8, both learning rates
  masks = jax.tree.leaves(start.model_state[ACTIVE_UNITS])
  assert all(np.array_equal(np.asarray(m[runs]), np.tile(np.arange(16) < 8, (2, 1)))
             for m in masks)
  narrow = make_trainer(base, dataset)
  initial = jax.jit(jax.vmap(narrow.init))(
      keys[runs], {"learning_rate": hparams["learning_rate"][runs]})
  final, expected = jax.jit(jax.vmap(narrow.run_tasks, in_axes=(0, None)))(initial, np.arange(2))
  for field in ("online_accuracy", "loss", "final_accuracy"):
    np.testing.assert_allclose(getattr(metrics, field)[runs], getattr(expected, field),
                               atol=2e-6, err_msg=field)
  assert np.asarray(expected.checks.warmed).any()  # the rule acts, and acts the same
  for name, value in metrics.checks._asdict().items():
    np.testing.assert_allclose(np.asarray(value[runs], np.float64),
                               np.asarray(getattr(expected.checks, name), np.float64),
                               rtol=1e-4, atol=1e-7, err_msg=f"scheduler check {name}")
  for name, value in metrics.indicators.items():
    np.testing.assert_allclose(np.asarray(value[runs], np.float64),
                               np.asarray(expected.indicators[name], np.float64),
                               rtol=1e-4, atol=1e-7, err_msg=f"indicator {name}")
  # The same init draws and scales, exactly.
  for w, n in zip(jax.tree.leaves(start.params), jax.tree.leaves(initial.params)):
    np.testing.assert_array_equal(_block(np.asarray(w[runs]), np.asarray(n), 8), n)
  # Params, the L2-init anchor, Adam moments and the curvature directions after
  # training: the narrow run's; the padding is exactly zero.
  _assert_narrow_state(end, final, runs, 8)


def _assert_narrow_state(end, final, runs, width, widest=16):
  """The embedded runs' `runs` of a wide RunState `end` hold the narrow runs'
  `final` (params, optimizer and component states) in their first `width`
  units, and exactly zero padding."""
  numbers = lambda x: jax.random.key_data(x) if devices.is_key(x) else x
  for w, n in zip(jax.tree.leaves((end.params, end.opt_state, end.components)),
                  jax.tree.leaves((final.params, final.opt_state, final.components))):
    w, n = np.asarray(numbers(w)[runs]), np.asarray(numbers(n))
    if w.shape == n.shape:  # counts, multipliers, the window, keys: one per run
      np.testing.assert_allclose(w, n, rtol=1e-4, atol=1e-7)
      continue
    np.testing.assert_allclose(_block(w, n, width, widest), n, rtol=1e-4, atol=1e-6)
    assert np.abs(w).sum(dtype=np.float64) == np.abs(_block(w, n, width, widest)).sum(
        dtype=np.float64), "padding moved"


def test_mirrored_init_and_the_init_ball_embed_in_a_width_sweep():
  """The mirrored init and the projection onto the init ball (per layer, a
  radius that binds here) of a net embedded in a wider one are the narrow
  net's: its pairs are (j, j + m/2) of its own width m, copy-major for Fourier
  features, and the padding adds nothing to a layer's norms."""
  base = Config(subset=100, tasks=1, epochs=3, batch_size=10, depth=1, seeds=1, width=4,
                activation="fourier", init="mirrored_lecun", constraint="init_ball",
                constraint_radius=0.05, lr=1e-2)
  grid = sweep.make_grid(base, {"width": [4, 8]})
  (program,) = sweep.plan(grid)
  dataset = data.load(base.dataset, base.data_dir, base.subset, base.normalize)
  keys = jax.vmap(jax.random.key)(np.zeros(2, int))
  start = sweep.embedded_init(program.config, dataset, program.widths, keys,
                              sweep._hparams(program, base.seeds))
  wide = make_trainer(program.config, dataset, unit_masks=True)
  end, metrics = jax.jit(jax.vmap(wide.run_tasks, in_axes=(0, None)))(start, np.arange(1))
  narrow = make_trainer(base, dataset)
  initial = jax.jit(narrow.init)(keys[0])
  final, expected = jax.jit(narrow.run_tasks)(initial, np.arange(1))
  np.testing.assert_allclose(metrics.loss[0], expected.loss, atol=2e-6)
  flat = lambda layer: jax.flatten_util.ravel_pytree(layer)[0]
  moved = {name: float(jnp.linalg.norm(flat(final.params[name]) - flat(layer)))
           for name, layer in initial.params.items()}
  size = {name: float(jnp.linalg.norm(flat(layer))) for name, layer in initial.params.items()}
  assert all(moved[n] <= 0.05 * size[n] * 1.0001 for n in size), (moved, size)
  assert any(moved[n] >= 0.05 * size[n] * 0.9999 for n in size)  # the ball binds
  _assert_narrow_state(end, jax.tree.map(lambda x: x[None], final), np.arange(1), 4, 8)


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


def test_interrupted_sweep_resumes_to_the_same_table(tmp_path, monkeypatch, capsys):
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
  capsys.readouterr()
  for flags, flag in ((["--lr", "0.1"], "--lr"), (["--grid", "width=8"], "--grid")):
    assert cli.main(["sweep", "--resume", str(broken), *flags]) == 2
    assert f"do not give {flag} with --resume" in capsys.readouterr().err
