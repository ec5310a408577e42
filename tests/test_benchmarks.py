"""Smoke test of benchmarks/throughput.py: runs, prints its lines (no timing checks)."""

import importlib.util
import pathlib
import sys

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.py"
TINY = ["--quick", "--seeds", "2", "--paper-examples", "256", "--small-subset", "100",
        "--peak-size", "64"]


@pytest.fixture(scope="module")
def throughput():
  spec = importlib.util.spec_from_file_location("benchmarks_throughput", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up there.
  try:
    spec.loader.exec_module(module)
    yield module
  finally:
    sys.modules.pop(spec.name, None)


def test_quick_run_prints_throughput_ratios_and_targets(throughput, capsys, monkeypatch):
  # Targets a 2-seed run always passes / always fails, to check both verdicts print.
  monkeypatch.setattr(throughput, "TARGETS",
                      {"paper": {2: 0.0, 8: 0.9}, "small": {2: float("inf")}})
  assert throughput.main(TINY) == 0
  out = capsys.readouterr().out
  lines = out.splitlines()
  assert lines[0].startswith("device: ") and "jax.devices()" in lines[0]
  assert any(l.startswith("matmul peak: 64x64 float32") and "GFLOP/s" in l for l in lines)
  assert "FLOP convention:" in out and "3x forward" in out
  assert "== paper: paper MLP 784-256-256-10, batch 256" in out
  assert "inputs are SYNTHETIC: 256 Gaussian 28x28x1 images" in out
  assert "== small: main command's default model" in out
  assert "dense layers 784-256-256-10" in out and "dense layers 64-256-256-10" in out
  rows = [l.split() for l in lines if l.strip()[:1].isdigit()]
  # (seeds, devices): 1 seed, 2 vmapped seeds on one device, 2 split over the
  # 2 CPU devices the tests run with; paper model, then small.
  assert [(r[0], r[1]) for r in rows] == [("1", "1"), ("2", "1"), ("2", "2")] * 2
  for r in rows:
    assert len(r) == 10 and r[5].endswith("x") and r[7].endswith("%")
    assert float(r[4]) > 0  # seed-steps/s
  assert [r[5] for r in rows if r[0] == "1"] == ["1.00x", "1.00x"]
  assert "TARGET paper: 2 vmapped seeds on 2 device(s) / sequential" in out
  assert "(need >= 0.00x): PASS; on 1 device: " in out
  assert "TARGET paper: 8 vmapped seeds / sequential (need >= 0.90x): SKIP" in out
  assert "TARGET small: 2 vmapped seeds on 2 device(s) / sequential" in out
  assert "(need >= infx): FAIL" in out
  assert lines[-1].startswith("total time: ")


@pytest.mark.parametrize("argv", [["--seeds", "0"], ["--seeds", "a,b"], ["--models", "cnn"],
                                  ["--repeats", "0"]])
def test_bad_flags_exit_with_usage_error(throughput, argv, capsys):
  with pytest.raises(SystemExit) as exc:
    throughput.parse_args(argv)
  assert exc.value.code == 2
  assert "error:" in capsys.readouterr().err


def _benchmark(name):
  """benchmarks/NAME.py as a module."""
  spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", SCRIPT.parent / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_scheduler_overhead_quick_run_prints_ratio_and_split(capsys):
  assert _benchmark("scheduler_overhead").main(["--quick"]) == 0
  out = capsys.readouterr().out
  assert "8 steps, 4 checks (K = 2; curvature lanczos, 8 steps, tol 0.01)" in out
  assert "ratio scheduled / plain:" in out and "(target <= 1.5x)" in out
  for part in ("per-example norms (dense path)", "per-example gradients (generic)",
               "curvature (cold start)", "whole check"):
    assert part in out


def test_curvature_accuracy_quick_run_prints_every_estimator(capsys):
  assert _benchmark("curvature_accuracy").main(["--quick"]) == 0
  out = capsys.readouterr().out
  for name in ("power, 1 iteration (before)", "lanczos, tol 0.01, <= 8 steps"):
    line = next(l for l in out.splitlines() if l.startswith(name))
    assert "%" in line
  assert "reference: Lanczos" in out


def test_indicator_cost_quick_run_prints_every_indicator(capsys, monkeypatch):
  monkeypatch.syspath_prepend(str(SCRIPT.parent))  # it imports scheduler_overhead's timer
  spec = importlib.util.spec_from_file_location("benchmarks_indicator_cost",
                                                SCRIPT.parent / "indicator_cost.py")
  module = importlib.util.module_from_spec(spec)
  monkeypatch.setitem(sys.modules, spec.name, module)
  spec.loader.exec_module(module)
  assert module.main(["--quick", "--alone", "srank,sharpness"]) == 0
  out = capsys.readouterr().out
  assert "one full indicator pass (all 20)" in out
  assert "  srank " in out and "  sharpness " in out and "  weight_norm " not in out
  assert "run-time ratio with indicators / without: " in out


def test_quantum_benchmark_quick_run_times_ours_and_reports_a_missing_tensorcircuit(capsys,
                                                                                   monkeypatch):
  """benchmarks/quantum.py at 3 qubits: our gradient std is the one computed circuit by
  circuit; without tensorcircuit installed it says so instead of a ratio."""
  path = SCRIPT.parent / "quantum.py"
  spec = importlib.util.spec_from_file_location("benchmarks_quantum", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  monkeypatch.setitem(sys.modules, "tensorcircuit", None)  # import fails: not installed
  assert module.main(["--qubits", "3", "--depth", "2", "--circuits", "8", "--repeats", "2"]) == 0
  out = capsys.readouterr().out
  assert "3 qubits, depth 2, 8 circuits" in out
  assert "ours: first call" in out and "ours_rolled: first call" in out
  assert "tensorcircuit: not installed" in out
  assert "ratio" not in out
  import jax
  import jax.numpy as jnp
  from trainability.quantum import circuits, statevector as sv
  std = float(module.ours(3, 2, 8)(jax.random.key(5)))
  assert float(module.ours(3, 2, 8, unroll=1)(jax.random.key(5))) == pytest.approx(std, rel=1e-5)
  k_axes, k_params = jax.random.split(jax.random.key(5))
  axes = jax.vmap(lambda k: circuits.random_axes(k, 3, 2))(jax.random.split(k_axes, 8))
  circuit = circuits.random_rotations(3, 2)
  by_hand = []
  for i, key in enumerate(jax.random.split(k_params, 8)):
    params = circuit.init(key)
    grads = jax.grad(lambda p: sv.expectation(circuit.apply(p, axes[i]), "ZZI"))(params)
    by_hand.append(float(grads["layer_00"]["theta"][0]))
  assert std == pytest.approx(float(jnp.std(jnp.array(by_hand))), rel=1e-4)
  with pytest.raises(SystemExit, match="--qubits, --depth, --circuits: give at least 2 qubits"):
    module.main(["--qubits", "1"])
