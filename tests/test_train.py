import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trainability import data
from trainability.config import ConfigError
from trainability.train import make_train, make_trainer, seed_keys


def run(config, keys=None, hparams=None):
  keys = seed_keys(config) if keys is None else keys
  if hparams is None:
    return jax.jit(jax.vmap(make_train(config)))(keys)
  return jax.jit(jax.vmap(make_train(config)))(keys, hparams)


def as_numpy(metrics):
  return {k: np.asarray(v) for k, v in metrics._asdict().items()}


def test_loss_falls_on_one_task(tiny_config):
  config = tiny_config.replace(stream="shuffled_labels", tasks=1, epochs=15)
  trainer = make_trainer(config)
  ds = data.load(config.dataset, None, config.subset, config.normalize)
  x = jnp.asarray(ds.x_train)

  def loss(state):
    labels = trainer.stream.task(state.stream_key, 0).train_labels
    logits, _ = trainer.model.apply(state.params, state.model_state, x)
    return float(optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean())

  state = trainer.init(jax.random.key(0))
  trained, metrics = jax.jit(trainer.run_tasks)(state, jnp.arange(1))
  assert loss(trained) < 0.3 * loss(state)
  assert float(metrics.final_accuracy[0]) > 0.9
  assert 0.3 < float(metrics.online_accuracy[0]) < float(metrics.final_accuracy[0])


def test_same_seed_is_identical_and_different_seeds_differ(tiny_config):
  a, b = as_numpy(run(tiny_config)), as_numpy(run(tiny_config))
  for name in ("online_accuracy", "loss", "final_accuracy"):
    np.testing.assert_array_equal(a[name], b[name])
    assert a[name].shape == (2, 3)
    assert not np.array_equal(a[name][0], a[name][1])
  assert np.all(np.isnan(a["heldout_accuracy"]))


def test_vmapped_seeds_equal_seeds_run_one_by_one(tiny_config):
  vmapped = as_numpy(run(tiny_config))
  train = jax.jit(make_train(tiny_config))
  for s, key in enumerate(seed_keys(tiny_config)):
    single = as_numpy(train(key))
    for name in ("online_accuracy", "loss", "final_accuracy"):
      np.testing.assert_allclose(vmapped[name][s], single[name], rtol=1e-5, atol=1e-5)


def test_chunks_of_tasks_equal_the_whole_run(tiny_config):
  trainer = make_trainer(tiny_config)
  key = jax.random.key(3)
  whole = as_numpy(jax.jit(trainer.train)(key))
  run_tasks = jax.jit(trainer.run_tasks)
  state, first = run_tasks(trainer.init(key), np.arange(0, 2))
  _, second = run_tasks(state, np.arange(2, 3))
  for name in ("online_accuracy", "loss", "final_accuracy"):
    joined = np.concatenate([np.asarray(getattr(first, name)), np.asarray(getattr(second, name))])
    # Two compiled programs may fuse differently: allow float32 rounding only.
    np.testing.assert_allclose(joined, whole[name], rtol=1e-6, atol=1e-7)


def test_hyperparameter_sweep_compiles_once_and_matches_separate_runs(tiny_config):
  keys = jnp.stack([jax.random.key(0)] * 2)
  lrs = jnp.array([1e-2, 1e-4], jnp.float32)
  swept = as_numpy(run(tiny_config, keys, {"learning_rate": lrs}))
  for i, lr in enumerate([1e-2, 1e-4]):
    single = as_numpy(jax.jit(make_train(tiny_config.replace(lr=lr)))(keys[i]))
    np.testing.assert_allclose(swept["loss"][i], single["loss"], rtol=1e-5)
  assert not np.allclose(swept["loss"][0], swept["loss"][1])


def test_unknown_hyperparameter_is_refused(tiny_config):
  with pytest.raises(ConfigError, match="^hparams: 'momentum' is not a hyperparameter of adam"):
    make_train(tiny_config)(jax.random.key(0), {"momentum": 0.9})


def test_reset_both_makes_a_task_independent_of_the_past(tiny_config):
  config = tiny_config.replace(reset="both")
  trainer = make_trainer(config)
  run_tasks = jax.jit(trainer.run_tasks)
  fresh = trainer.init(jax.random.key(0))
  trained, _ = run_tasks(fresh, np.arange(1))
  _, from_trained = run_tasks(trained, np.arange(1, 2))
  _, from_fresh = run_tasks(fresh, np.arange(1, 2))
  np.testing.assert_array_equal(from_trained.online_accuracy, from_fresh.online_accuracy)
  np.testing.assert_array_equal(from_trained.loss, from_fresh.loss)


@pytest.mark.parametrize("reset, equal", [("optimizer", True), ("none", False)])
def test_reset_optimizer_discards_the_moments(tiny_config, reset, equal):
  trainer = make_trainer(tiny_config.replace(reset=reset))
  run_tasks = jax.jit(trainer.run_tasks)
  trained, _ = run_tasks(trainer.init(jax.random.key(0)), np.arange(1))
  tx_fresh = trainer.init(jax.random.key(0)).opt_state
  moments_fresh = trained._replace(opt_state=jax.tree.map(
      lambda a, b: b, trained.opt_state, tx_fresh))
  _, a = run_tasks(trained, np.arange(1, 2))
  _, b = run_tasks(moments_fresh, np.arange(1, 2))
  assert np.array_equal(np.asarray(a.loss), np.asarray(b.loss)) == equal


def test_reference_adam_betas_reach_the_run(tiny_config):
  """--adam-betas reference changes a run from the second epoch on (epoch 0's betas are
  the constant ones), through the first layer's Adam."""
  def losses(betas):
    trainer = make_trainer(tiny_config.replace(adam_betas=betas, tasks=1, epochs=3, seeds=1))
    return np.asarray(jax.jit(trainer.train)(jax.random.key(0)).loss)

  assert not np.array_equal(losses("reference"), losses("constant"))
  one_epoch = lambda betas: np.asarray(jax.jit(make_trainer(tiny_config.replace(
      adam_betas=betas, tasks=1, epochs=1, seeds=1)).train)(jax.random.key(0)).loss)
  np.testing.assert_array_equal(one_epoch("reference"), one_epoch("constant"))


def test_reset_timestep_restarts_adams_count_and_keeps_its_moments(tiny_config):
  """Adam-Rel: task 2 from a trained state equals task 2 from that state with every
  Adam count set to 0 by hand (moments untouched), and differs from no reset."""
  from trainability import interventions
  runs = {}
  for reset in ("timestep", "none"):
    trainer = make_trainer(tiny_config.replace(reset=reset))
    run_tasks = jax.jit(trainer.run_tasks)
    trained, _ = run_tasks(trainer.init(jax.random.key(0)), np.arange(1))
    runs[reset] = (run_tasks, trained)
  run_tasks, trained = runs["timestep"]
  adam = optax.ScaleByAdamState
  counts = [n.count for n in jax.tree.leaves(trained.opt_state, is_leaf=lambda n: isinstance(
      n, adam)) if isinstance(n, adam)]
  assert counts and int(counts[0]) > 0
  by_hand = trained._replace(opt_state=jax.tree.map(
      lambda n: n._replace(count=n.count * 0) if isinstance(n, adam) else n,
      trained.opt_state, is_leaf=lambda n: isinstance(n, adam)))
  restarted = interventions.restart_adam_timestep(trained.opt_state)
  for a, b in zip(jax.tree.leaves(restarted), jax.tree.leaves(by_hand.opt_state)):
    np.testing.assert_array_equal(a, b)
  _, a = run_tasks(trained, np.arange(1, 2))
  _, b = runs["none"][0](by_hand, np.arange(1, 2))  # no reset, count zeroed by hand
  _, c = runs["none"][0](trained, np.arange(1, 2))
  np.testing.assert_array_equal(a.loss, b.loss)
  assert not np.array_equal(np.asarray(a.loss), np.asarray(c.loss))
  with pytest.raises(ConfigError, match="reset: 'timestep' restarts Adam's step count"):
    tiny_config.replace(reset="timestep", optimizer="sgd")


def test_reset_model_only_keeps_optimizer_state(tiny_config):
  trainer = make_trainer(tiny_config.replace(reset="model"))
  state = trainer.init(jax.random.key(0))
  trained, _ = jax.jit(trainer.run_tasks)(state, np.arange(1))
  _, a = jax.jit(trainer.run_tasks)(trained, np.arange(1, 2))
  _, b = jax.jit(trainer.run_tasks)(trained._replace(params=state.params), np.arange(1, 2))
  np.testing.assert_array_equal(a.loss, b.loss)  # old params are replaced either way


def test_class_incremental_trains_on_the_active_classes_only(tiny_config):
  config = tiny_config.replace(stream="class_incremental", classes_per_task=2, tasks=2,
                               epochs=25, heldout=True)
  metrics = as_numpy(run(config))
  assert np.all(np.isfinite(metrics["heldout_accuracy"]))
  # Two classes are easy: a high online accuracy on task 1 means inactive examples stayed out.
  assert metrics["final_accuracy"][:, 0].min() > 0.9
  assert metrics["online_accuracy"][:, 0].min() > 0.7


def test_heldout_accuracy_of_permuted_inputs(tiny_config):
  config = tiny_config.replace(stream="permuted_inputs", heldout=True, epochs=10, tasks=2)
  metrics = as_numpy(run(config))
  assert np.all((metrics["heldout_accuracy"] > 0.5) & (metrics["heldout_accuracy"] <= 1))


@pytest.mark.parametrize("changes", [
    {"optimizer": "sgd", "lr": 0.05},
    {"optimizer": "adamw"},
    {"norm": "batchnorm"},
    {"norm": "layernorm", "activation": "crelu"},
    {"model": "cnn", "channels": (4,), "width": 16},
    {"dataset": "mnist1d", "subset": 200},
])
def test_variants_train_and_stay_finite(tiny_config, changes):
  metrics = as_numpy(run(tiny_config.replace(tasks=2, epochs=10, stream="shuffled_labels",
                                                **changes)))
  for name in ("online_accuracy", "loss", "final_accuracy"):
    assert np.all(np.isfinite(metrics[name]))
  assert metrics["final_accuracy"].mean() > 0.2  # better than chance (0.1)


def test_class_incremental_needs_a_batch_per_task(tiny_config):
  with pytest.raises(ConfigError, match="^batch_size: 20 is more than the 8 examples a first"):
    make_train(tiny_config.replace(stream="class_incremental", classes_per_task=1, subset=100))


def test_batch_larger_than_the_data_is_refused(tiny_config):
  with pytest.raises(ConfigError, match="^batch_size: 500 is more than the 200 training examples"):
    make_train(tiny_config.replace(batch_size=500))


def test_scheduler_runs_in_the_vmapped_loop_and_reports_its_checks(tiny_config):
  config = tiny_config.replace(scheduler="noise_curvature", check_every=5, epochs=5)
  metrics = run(config)  # 10 steps per epoch -> 50 steps per task -> 10 checks
  checks = metrics.checks
  assert checks.alpha.shape == (2, 3, 10, 2)  # seeds, tasks, checks, layers
  np.testing.assert_array_equal(checks.step[0, 0], np.arange(5, 55, 5))
  for leaf in jax.tree.leaves(checks):
    assert bool(jnp.all(jnp.isfinite(leaf)))
  assert float(jnp.min(checks.sigma2)) > 0 and float(jnp.max(checks.lam)) > 0


def test_a_scheduler_that_never_fires_leaves_training_unchanged(tiny_config):
  plain = as_numpy(run(tiny_config))
  config = tiny_config.replace(scheduler="noise_curvature", check_every=4, safety=1e30,
                               warm_fraction=0.0)
  scheduled = run(config)
  np.testing.assert_array_equal(np.asarray(scheduled.checks.multiplier), 1.0)
  for name in ("online_accuracy", "loss", "final_accuracy"):
    np.testing.assert_allclose(np.asarray(getattr(scheduled, name)), plain[name],
                               rtol=1e-5, atol=1e-6)


def test_a_scheduler_that_could_never_check_is_refused(tiny_config):
  config = tiny_config.replace(scheduler="noise_curvature", check_every=10_000)
  with pytest.raises(ConfigError, match="check_every: 10000 is more than the"):
    make_trainer(config)


def test_indicators_are_recorded_on_schedule_inside_the_vmapped_run(tiny_config):
  config = tiny_config.replace(indicators="weight_norm,srank,sharpness,alpha_tilde,crossed",
                               indicator_every=4, indicator_examples=64)
  trainer = make_trainer(config)
  metrics = jax.jit(jax.vmap(trainer.train))(seed_keys(config))
  evaluations = trainer.steps_per_epoch * config.epochs // 4
  labels = trainer.indicator_labels
  assert labels["srank"] == ("hidden_0",)
  assert labels["weight_norm"] == ("network", "hidden_0", "output")
  for name, columns in labels.items():
    values = np.asarray(metrics.indicators[name])
    assert values.shape == (config.seeds, config.tasks, evaluations, len(columns)), name
    assert np.all(np.isfinite(values)), name
  # Weight norms change between evaluations (it trains) and the seeds differ.
  w = np.asarray(metrics.indicators["weight_norm"])
  assert not np.allclose(w[:, :, 0], w[:, :, -1]) and not np.allclose(w[0], w[1])
  # Recording indicators does not change training.
  plain = jax.jit(jax.vmap(make_trainer(tiny_config).train))(seed_keys(config))
  np.testing.assert_array_equal(metrics.online_accuracy, plain.online_accuracy)


def test_probe_size_and_dormant_tau_reach_the_recorded_indicators(tiny_config):
  def recorded(**changes):
    config = tiny_config.replace(indicators="srank,dormant_fraction", indicator_every=10,
                                 **changes)
    return jax.jit(jax.vmap(make_trainer(config).train))(seed_keys(config)).indicators

  small, default = recorded(indicator_examples=6), recorded()
  assert np.max(small["srank"]) <= 6 < np.max(default["srank"])  # rank <= examples
  assert np.all(recorded(dormant_tau=1e9)["dormant_fraction"] == 1.0)
  assert np.all(default["dormant_fraction"] < 1.0)


def test_indicators_stay_a_conditional_under_vmap(tiny_config):
  """Off-schedule steps skip the indicators: one `cond` survives vmap over seeds
  (the schedule reads the unbatched step counter), none without indicators."""
  def conds(config):
    jaxpr = jax.make_jaxpr(jax.vmap(make_trainer(config).train))(seed_keys(config))
    return str(jaxpr).count(" cond[")

  assert conds(tiny_config) == 0
  assert conds(tiny_config.replace(indicators="srank,sharpness", indicator_every=4)) == 1


def test_indicator_schedule_longer_than_a_task_is_refused(tiny_config):
  with pytest.raises(ConfigError, match="indicator_every: 10000 is more than the"):
    make_trainer(tiny_config.replace(indicators="srank", indicator_every=10_000))


# Baselines (regularizers, shrink & perturb, unit resets) inside the run.

def _params_after(config, hparams=None, tasks=1):
  trainer = make_trainer(config)
  state = trainer.init(jax.random.key(0), hparams)
  return state, jax.jit(trainer.run_tasks)(state, jnp.arange(tasks))


@pytest.mark.parametrize("changes, name, value", [
    ({"regularizer": "l2_init"}, "reg_coef", 1.0),
    ({"regularizer": "wasserstein"}, "reg_coef", 1.0),
    ({"regularizer": "spectral"}, "reg_coef", 0.1),
    ({"regularizer": "orthogonal"}, "reg_coef", 0.1),
    ({"shrink_perturb": "step"}, "shrink", 0.01),
    ({"shrink_perturb": "step"}, "perturb", 0.01),
    ({"shrink_perturb": "task"}, "perturb", 0.1),
    ({"unit_reset": "cbp", "maturity": 5}, "replacement_rate", 0.05),
])
def test_a_baseline_at_zero_strength_is_plain_training_and_its_strength_is_traced(
    tiny_config, changes, name, value):
  plain = as_numpy(run(tiny_config, jnp.stack([jax.random.key(0)] * 2)))
  config = tiny_config.replace(**changes)
  zero = {k: 0.0 for k in ("reg_coef", "shrink", "perturb", "replacement_rate")
          if k in config.traced_fields()}
  hparams = {k: jnp.array([v, value if k == name else v]) for k, v in zero.items()}
  swept = as_numpy(run(config, jnp.stack([jax.random.key(0)] * 2), hparams))
  for metric in ("online_accuracy", "loss", "final_accuracy"):
    np.testing.assert_allclose(swept[metric][0], plain[metric][0], rtol=1e-5, atol=1e-6)
  assert not np.allclose(swept["loss"][1], plain["loss"][1], rtol=1e-4)


def test_l2_init_holds_the_params_near_their_initialization(tiny_config):
  config = tiny_config.replace(regularizer="l2_init", optimizer="sgd", lr=0.05)

  def distance(coef):
    state, (trained, _) = _params_after(config, {"reg_coef": coef}, tasks=2)
    return sum(float(jnp.sum((a - b) ** 2)) for a, b in zip(
        jax.tree.leaves(trained.params), jax.tree.leaves(state.params)))

  assert distance(2.0) < 0.5 * distance(0.0)


def test_redo_resets_the_dead_units_in_the_run(tiny_config):
  config = tiny_config.replace(unit_reset="redo", redo_every=20, redo_tau=0.0, epochs=2)
  trainer = make_trainer(config)  # 20 steps per task: one ReDo pass, after the last step
  state = trainer.init(jax.random.key(0))
  dead = np.arange(32) < 4  # units 0-3: no input weights, bias -10: never active
  layer = state.params["hidden_0"]["dense"]
  killed = {"kernel": jnp.where(dead, 0.0, layer["kernel"]), "bias": jnp.where(dead, -10.0, 0.0)}
  params = {**state.params, "hidden_0": {"dense": killed}}
  trained, _ = jax.jit(trainer.run_tasks)(state._replace(params=params), jnp.arange(1))
  fresh = trainer.model.init(jax.random.fold_in(
      jax.random.split(jax.random.fold_in(state.intervention_key, 0))[1], 19))[0]
  new = trained.params["hidden_0"]["dense"]
  np.testing.assert_allclose(new["kernel"][:, dead], fresh["hidden_0"]["dense"]["kernel"][:, dead],
                             rtol=1e-6)
  np.testing.assert_array_equal(new["bias"][dead], 0.0)
  np.testing.assert_array_equal(trained.params["output"]["kernel"][dead], 0.0)
  # Of the live units only the few that were silent on that step's batch were
  # reset (dormant_units and reset_units are tested exactly in test_interventions).
  reset = np.all(np.asarray(trained.params["output"]["kernel"]) == 0, axis=1)
  assert reset[dead].all() and reset[~dead].sum() <= 3
  np.testing.assert_array_equal(np.asarray(new["bias"])[reset], 0.0)
  assert np.all(np.asarray(new["bias"])[~reset] != 0)


def test_continual_backprop_replaces_units_at_its_rate_in_the_run(tiny_config):
  config = tiny_config.replace(unit_reset="cbp", maturity=30, replacement_rate=0.01)
  state, (trained, metrics) = _params_after(config, tasks=3)  # 60 steps
  age = np.asarray(make_trainer(config).component_state(trained, "unit_reset").age["hidden_0"])
  replaced = int(np.sum(age < 60))  # a replaced unit cannot mature again by step 60
  # Steps 31-60: 0.01 x (32 - units replaced so far) each, about 9 units in all.
  assert 8 <= replaced <= 10
  assert np.all(np.isfinite(np.asarray(metrics.loss)))
  np.testing.assert_array_equal(
      np.asarray(trained.params["output"]["kernel"])[age < 1], 0.0)


@pytest.mark.parametrize("changes", [
    {"regularizer": "wasserstein"},
    {"regularizer": "spectral"},
    {"shrink_perturb": "step"},
    {"shrink_perturb": "task", "perturb_noise": "init", "shrink": 0.5},
    {"unit_reset": "cbp", "maturity": 5, "replacement_rate": 0.01},
    {"unit_reset": "redo", "redo_every": 10},
    {"activation": "fourier"},
    {"activation": "identity", "depth": 3},
    {"unit_reset": "cbp", "maturity": 5, "model": "cnn", "channels": (4,), "width": 16},
])
def test_each_baseline_runs_with_the_scheduler_under_jit_and_vmap(tiny_config, changes):
  config = tiny_config.replace(scheduler="noise_curvature", check_every=5, **changes)
  metrics = run(config)
  for leaf in jax.tree.leaves((metrics.online_accuracy, metrics.loss, metrics.checks)):
    assert bool(jnp.all(jnp.isfinite(leaf)))
  assert metrics.checks.alpha.shape[:3] == (2, 3, 4)


def test_the_schedulers_noise_is_the_data_losss_under_a_penalty():
  from trainability import estimators
  params = {"a": {"kernel": jnp.array([[1.0, -2.0], [0.5, 1.0]])}}
  batch = (jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), jnp.array([0.5, -1.0, 2.0]))
  loss_i = lambda p, ex: (ex[0] @ p["a"]["kernel"]).sum() - ex[1]
  data_grads = jax.grad(lambda p: jnp.mean(jax.vmap(lambda *e: loss_i(p, e))(*batch)))(params)
  noisy = jax.tree.map(lambda g: g + 10.0, data_grads)  # loss + penalty gradient
  ours = estimators.data_noise_fn(loss_i, batch, None, {}, data_grads)(params, noisy)
  expected = estimators.gradient_noise(loss_i, params, batch, estimators.layers_of(params),
                                       mean_grads=data_grads)
  np.testing.assert_allclose(ours.grad_sq, expected.grad_sq)
  np.testing.assert_allclose(ours.sigma2, expected.sigma2)


def test_baseline_errors_name_the_field(tiny_config):
  with pytest.raises(ConfigError, match="^hparams: 'shrink' has no effect with shrink_perturb "
                                        "'none'; it acts only with shrink_perturb step or task"):
    make_trainer(tiny_config).init(jax.random.key(0), {"shrink": 0.1})
  with pytest.raises(ConfigError, match="^redo_every: 1000 is more than the 20 steps of a task"):
    make_trainer(tiny_config.replace(unit_reset="redo"))
  with pytest.raises(ConfigError, match="^unit_reset: needs hidden units"):
    make_trainer(tiny_config.replace(unit_reset="cbp", depth=0))


@pytest.mark.parametrize("changes", [
    {}, {"l2": 1e-3, "shrink_perturb": "step", "shrink": 1e-3, "perturb": 1e-3,
         "reset": "timestep"},
    {"unit_reset": "cbp", "maturity": 5},
])
def test_trac_runs_with_the_remedies_under_jit_and_vmap(tiny_config, changes):
  """--scheduler trac wraps the run's optimizer; its scale is learned per seed."""
  from trainability import trac
  config = tiny_config.replace(scheduler="trac", trac_s_init=1e-4, **changes)
  trainer = make_trainer(config)
  states, metrics = jax.jit(jax.vmap(lambda k: trainer.run_tasks(trainer.init(k),
                                                                 jnp.arange(3))))(
      seed_keys(config))
  found = trac.state_of(states.opt_state)
  assert found.scale.shape == (2,) and bool(jnp.all(found.scale > 0))
  for leaf in jax.tree.leaves((metrics.online_accuracy, metrics.loss, states.params)):
    assert bool(jnp.all(jnp.isfinite(leaf)))


def test_trac_restarts_from_the_parameters_at_an_optimizer_reset(tiny_config):
  """--reset optimizer gives TRAC a fresh state at each task: the task's
  starting parameters become its reference point and S restarts at 0, so the
  task's first update leaves them where they are. One step per task here."""
  from trainability import trac
  moved = {}
  for reset in ("optimizer", "none"):
    config = tiny_config.replace(scheduler="trac", reset=reset, tasks=2, seeds=1, epochs=1,
                                 subset=20, batch_size=20)
    trainer = make_trainer(config)
    start = trainer.init(jax.random.key(0))
    first, _ = trainer.run_tasks(start, jnp.arange(1))
    second, _ = trainer.run_tasks(first, jnp.arange(1, 2))
    # TRAC's first update of a run never moves the parameters (S starts at 0).
    assert all(bool(jnp.all(a == b)) for a, b in zip(jax.tree.leaves(start.params),
                                                     jax.tree.leaves(first.params)))
    moved[reset] = max(float(jnp.max(jnp.abs(a - b))) for a, b in
                       zip(jax.tree.leaves(first.params), jax.tree.leaves(second.params)))
    scale = float(trac.state_of(second.opt_state).scale)
    assert scale == 0.0 if reset == "optimizer" else scale > 0.0
  assert moved["optimizer"] == 0.0 and moved["none"] > 0.0


def test_the_train_step_is_short_and_no_library_function_is_long():
  """The step stays readable (at most 40 lines, nothing component-specific in it)
  and no function of the package passes 100 lines."""
  import ast
  import inspect
  import pathlib
  from trainability import train
  step = inspect.getsource(train.train_step)
  assert len(step.splitlines()) <= 40
  for word in ("scheduler", "example_loss", "gradient_noise", "element_mask", "multiplier_of"):
    assert word not in step
  root = pathlib.Path(train.__file__).parent
  long = []
  for path in sorted(root.rglob("*.py")):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        length = node.end_lineno - node.lineno + 1
        if length > 100:
          long.append(f"{path.relative_to(root)}:{node.name} ({length} lines)")
  assert not long, long
