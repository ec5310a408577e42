import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trainability import estimators, models
from trainability.config import Config
from trainability.scheduler import STATIC_ARGS, decide, noise_curvature_scheduler
from trainability.signals import SignalSettings

KEY = jax.random.key(0)


def problem(seed=0, batch=16):
  model = models.make_model(Config(width=8, depth=1), (2, 2, 1), 3)
  params, state = model.init(jax.random.key(seed))
  x = jax.random.normal(jax.random.key(seed + 1), (batch, 2, 2, 1))
  y = jax.random.randint(jax.random.key(seed + 2), (batch,), 0, 3)

  def example_loss(p, example):
    xi, yi = example
    logits, _ = model.apply(p, state, xi[None])
    return optax.softmax_cross_entropy_with_integer_labels(logits, yi[None])[0]

  return params, (x, y), example_loss


def mean_loss(example_loss, params, batch):
  return jnp.mean(jax.vmap(example_loss, in_axes=(None, 0))(params, batch))


def run(tx, params, batch, example_loss, steps, **extra):
  state = tx.init(params)

  def body(carry, i):
    params, state = carry
    grads = jax.grad(mean_loss, argnums=1)(example_loss, params, batch)
    updates, state = tx.update(grads, state, params, example_loss=example_loss,
                               batch=batch, task_step=i, **extra)
    return (optax.apply_updates(params, updates), state), None

  (params, state), _ = jax.lax.scan(body, (params, state), jnp.arange(steps))
  return params, state


def test_mode_settings_are_refused_outside_their_mode():
  for kwargs, field in (({"beta": 2.0, "threshold": "stability"}, "beta"),
                        ({"delta": 0.2}, "delta"),
                        ({"reference_param": "sqm1", "threshold": "paper"}, "reference_param"),
                        ({"beta": 2.0}, "beta"),  # the default threshold is reference
                        ({"threshold": "reference", "reference_param": "nope"}, "reference_param"),
                        ({"threshold": "mine"}, "threshold"),
                        ({"curvature": "exact"}, "curvature"),
                        ({"curvature_steps": 0}, "curvature_steps"),
                        ({"curvature": "power", "curvature_tol": 0.1}, "curvature_tol"),
                        ({"threshold": "stability", "delta": 1.5}, "delta"),
                        ({"threshold": "paper", "beta": -1.0}, "beta"),
                        ({"kappa": 0.0}, "kappa")):
    with pytest.raises(ValueError, match=f"^{field}: "):
      noise_curvature_scheduler(optax.adam(1e-3), **kwargs)
  resolved = SignalSettings(threshold="reference").resolved()
  assert (resolved.reference_param, resolved.variance, resolved.beta) == (
      "sqm10", "instantaneous", None)


@pytest.mark.parametrize("alpha, floor, in_window, ready, cool, warm", [
    (1.0, 0.0, False, True, True, False),     # above safety * threshold: cools
    (1.0, 2.0, False, True, False, False),    # ... unless at or below the floor
    (0.5, 0.0, True, True, False, False),     # between the bands: nothing
    (0.1, 0.0, True, True, False, True),      # far below, early in the task: warms
    (0.1, 0.0, False, True, False, False),    # ... not outside the warm window
    (1.0, 0.0, False, False, False, False),   # window not ready: nothing fires
])
def test_cool_warm_rule(alpha, floor, in_window, ready, cool, warm):
  # threshold 1.0, safety 0.8: cool above 0.8, warm below 0.24.
  d = decide(jnp.array([alpha]), jnp.array([1.0]), 0.8, floor, jnp.bool_(in_window),
             ready=jnp.bool_(ready))
  assert (bool(d.cool[0]), bool(d.warm[0])) == (cool, warm)
  # A zero threshold (no gradient signal) decides nothing, whatever the step.
  zero = decide(jnp.array([alpha]), jnp.array([0.0]), 0.8, floor, jnp.bool_(in_window),
                ready=jnp.bool_(ready))
  assert not bool(zero.cool[0]) and not bool(zero.warm[0])


def test_never_firing_equals_the_inner_optimizer_exactly():
  params, batch, example_loss = problem()
  inner = optax.adam(1e-2)
  # (power iteration: op by op, a Lanczos loop is slow, and the curvature is not tested here)
  tx = noise_curvature_scheduler(inner, check_every=3, safety=1e30, warm_fraction=0.0,
                                 learning_rate=1e-2, curvature="power", curvature_steps=2)
  # Op by op (no XLA fusion, which may round a fused expression differently):
  # every update, check steps included, is the inner optimizer's bit for bit.
  with jax.disable_jit():
    state = tx.init(params)
    p = params
    for i in range(7):
      grads = jax.grad(mean_loss, argnums=1)(example_loss, p, batch)
      expected, _ = inner.update(grads, state.inner, p)
      updates, state = tx.update(grads, state, p, example_loss=example_loss, batch=batch,
                                 task_step=i)
      for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(a, b)
      p = optax.apply_updates(p, updates)
  assert int(state.checks) == 2 and int(state.last.step) == 6  # checks at 3 and 6
  np.testing.assert_array_equal(state.multiplier, np.ones(2))
  assert float(state.last.lam.max()) > 0 and float(state.last.sigma2.min()) > 0
  # Compiled, over a longer run: the same trajectory up to float32 rounding.
  scheduled, _ = jax.jit(lambda q: run(tx, q, batch, example_loss, 23))(params)
  plain, _ = jax.jit(lambda q: run(inner, q, batch, example_loss, 23))(params)
  for a, b in zip(jax.tree.leaves(scheduled), jax.tree.leaves(plain)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_it_cools_every_check_when_the_threshold_is_tiny():
  params, batch, example_loss = problem()
  tx = noise_curvature_scheduler(optax.adam(1e-2), check_every=4, safety=1e-12,
                                 learning_rate=1e-2)
  _, state = jax.jit(lambda p: run(tx, p, batch, example_loss, 20))(params)
  # 5 checks; the first only fills the window (one value: not ready).
  np.testing.assert_allclose(state.multiplier, [0.99**4] * 2, rtol=1e-6)
  last = state.last
  assert bool(jnp.all(last.cooled)) and not bool(jnp.any(last.warmed))
  # `alpha` is reported after the decision; `crossed` compares the step before it.
  np.testing.assert_array_equal(last.crossed, last.alpha / 0.99 > last.alpha_tilde)


def test_warms_only_in_the_warm_window():
  params, batch, example_loss = problem()
  make = lambda fraction: noise_curvature_scheduler(
      optax.sgd(1e-6), check_every=2, safety=1e6, steps_per_task=100, warm_fraction=fraction,
      effective_step="sgd", learning_rate=1e-6)
  _, early = jax.jit(lambda p: run(make(0.3), p, batch, example_loss, 20))(params)
  # Checks at task steps 1, 3, ..., 19; the first only fills the window.
  np.testing.assert_allclose(early.multiplier, [1.01**9] * 2, rtol=1e-5)
  _, late = jax.jit(lambda p: run(make(0.05), p, batch, example_loss, 20))(params)
  np.testing.assert_allclose(late.multiplier, [1.01] * 2, rtol=1e-5)  # task step 3 < 5 only


def test_run_warm_window_warms_only_early_in_the_run_as_the_reference_code():
  params, batch, example_loss = problem()
  make = lambda window: noise_curvature_scheduler(
      optax.sgd(1e-6), check_every=2, safety=1e6, steps_per_task=10, warm_fraction=0.5,
      warm_window=window, effective_step="sgd", learning_rate=1e-6)

  def tasks(tx, p):  # three tasks of 10 steps: task_step restarts, the run's count does not
    state = tx.init(p)
    for _ in range(3):
      state = jax.jit(lambda p, s: run_from(tx, p, s, batch, example_loss, 10))(p, state)
    return state

  # Checks at task steps 1, 3, 5, 7, 9; the run's first check only fills the window.
  # task: steps 3 (task 1) and 1, 3 (tasks 2, 3) are < 5; run: step 3 of task 1 only.
  np.testing.assert_allclose(tasks(make("task"), params).multiplier, [1.01**5] * 2, rtol=1e-5)
  np.testing.assert_allclose(tasks(make("run"), params).multiplier, [1.01] * 2, rtol=1e-5)
  with pytest.raises(ValueError, match="warm_window: 'global' is not accepted; choose one of "
                     "task, run"):
    make("global")


def run_from(tx, params, state, batch, example_loss, steps):
  """`steps` updates of one task (task_step 0..steps-1) from an existing state."""
  def body(state, i):
    grads = jax.grad(mean_loss, argnums=1)(example_loss, params, batch)
    _, state = tx.update(grads, state, params, example_loss=example_loss, batch=batch,
                         task_step=i)
    return state, None

  return jax.lax.scan(body, state, jnp.arange(steps))[0]


def test_vmap_over_seeds_keeps_each_seed_its_own_multipliers_and_checks_on_schedule():
  params, batch, example_loss = problem()
  tx = noise_curvature_scheduler(optax.adam(1e-2), check_every=3, safety=0.8, threshold="paper",
                                 beta=1.0,
                                 learning_rate=1e-2)
  keys = jax.random.split(KEY, 3)
  seeds = jax.vmap(lambda k: jax.tree.map(
      lambda p: p + 0.5 * jax.random.normal(k, p.shape), params))(keys)

  def one(p):
    state = tx.init(p)

    def body(carry, i):
      p, state = carry
      grads = jax.grad(mean_loss, argnums=1)(example_loss, p, batch)
      updates, state = tx.update(grads, state, p, example_loss=example_loss, batch=batch,
                                 task_step=i, step=i)
      return (optax.apply_updates(p, updates), state), None

    return jax.lax.scan(body, (p, state), jnp.arange(12))[0]

  out_params, states = jax.jit(jax.vmap(one))(seeds)
  np.testing.assert_array_equal(states.checks, [4, 4, 4])
  for leaf in jax.tree.leaves((out_params, states.last)):
    assert bool(jnp.all(jnp.isfinite(leaf)))
  single_params, single_state = jax.jit(one)(jax.tree.map(lambda a: a[1], seeds))
  np.testing.assert_allclose(states.last.alpha_tilde[1], single_state.last.alpha_tilde, rtol=1e-4)
  assert not np.allclose(states.last.lam[0], states.last.lam[1])


def test_chain_and_inject_hyperparams():
  params, batch, example_loss = problem()
  chained = optax.chain(optax.clip_by_global_norm(1.0),
                        noise_curvature_scheduler(optax.adam(1e-2), check_every=2,
                                                  learning_rate=1e-2))
  out, _ = jax.jit(lambda p: run(chained, p, batch, example_loss, 6))(params)
  assert all(bool(jnp.all(jnp.isfinite(l))) for l in jax.tree.leaves(out))
  injected = optax.inject_hyperparams(noise_curvature_scheduler, static_args=STATIC_ARGS)(
      inner=optax.inject_hyperparams(optax.adam)(learning_rate=1e-2), check_every=2,
      safety=1e-12)
  _, state = jax.jit(lambda p: run(injected, p, batch, example_loss, 6))(params)
  assert float(state.hyperparams["safety"]) == pytest.approx(1e-12)
  np.testing.assert_allclose(state.inner_state.multiplier, [0.99**2] * 2, rtol=1e-6)


def test_extra_arguments_reach_the_inner_transform_in_a_hand_written_loop():
  """optax's contract: what the scheduler does not take goes on to `inner.update`.
  reduce_on_plateau needs `value=`; fed a loss that never improves it must cut the
  scale, exactly as it does alone. An injected Adam inside keeps its hyperparameters."""
  params, batch, example_loss = problem()
  plateau = lambda: optax.contrib.reduce_on_plateau(factor=0.5, patience=2, cooldown=0,
                                                    accumulation_size=1)
  inner = optax.chain(optax.inject_hyperparams(optax.adam)(learning_rate=1e-2), plateau())
  tx = noise_curvature_scheduler(inner, check_every=4, safety=1e6, learning_rate=1e-2)
  alone = optax.chain(optax.inject_hyperparams(optax.adam)(learning_rate=1e-2), plateau())

  @jax.jit
  def step(p, state, alone_state, i):
    grads = jax.grad(mean_loss, argnums=1)(example_loss, p, batch)
    updates, state = tx.update(grads, state, p, example_loss=example_loss, batch=batch,
                               task_step=i, step=i, value=jnp.float32(1.0))
    expected, alone_state = alone.update(grads, alone_state, p, value=jnp.float32(1.0))
    return optax.apply_updates(p, updates), state, alone_state, updates, expected

  state, alone_state, p = tx.init(params), alone.init(params), params
  for i in range(10):
    p, state, alone_state, updates, expected = step(p, state, alone_state, i)
    # safety 1e6: the scheduler never cools, and its warming is off (no steps_per_task).
    for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(expected)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)
  plateau_state = state.inner[1]
  assert float(plateau_state.scale) < 1.0  # the plateau was seen through the scheduler
  assert float(state.inner[0].hyperparams["learning_rate"]) == pytest.approx(1e-2)
  assert int(state.checks) == 2


def test_zero_gradients_give_no_nan():
  params, batch, _ = problem()
  dead_loss = lambda p, example: 0.0 * jnp.sum(p["output"]["bias"])
  tx = noise_curvature_scheduler(optax.adam(1e-2), check_every=1, learning_rate=1e-2)
  out, state = jax.jit(lambda p: run(tx, p, batch, dead_loss, 5))(params)
  for leaf in jax.tree.leaves((out, state.last, state.multiplier, state.eigenvectors)):
    assert bool(jnp.all(jnp.isfinite(leaf)))
  np.testing.assert_array_equal(state.multiplier, [1.0, 1.0])


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="^variance: 'ema' is not accepted"):
    noise_curvature_scheduler(optax.adam(1e-3), variance="ema")
  with pytest.raises(ValueError, match="^effective_step: 'rms' is not accepted"):
    noise_curvature_scheduler(optax.adam(1e-3), effective_step="rms")
  with pytest.raises(ValueError, match="^check_every: 0 is not accepted"):
    noise_curvature_scheduler(optax.adam(1e-3), check_every=0)
  params, batch, example_loss = problem()
  tx = noise_curvature_scheduler(optax.adam(1e-3), check_every=1)
  with pytest.raises(ValueError, match="^learning_rate: effective_step 'adam' needs"):
    run(tx, params, batch, example_loss, 1)


def test_precomputed_gradient_noise_is_used_on_checks():
  params, batch, example_loss = problem()
  tx = noise_curvature_scheduler(optax.adam(1e-2), check_every=2, learning_rate=1e-2)
  fixed = estimators.GradientNoise(jnp.array([2.0, 3.0]), jnp.array([8.0, 6.0]), 16)
  _, state = jax.jit(lambda p: run(tx, p, batch, example_loss, 4,
                                   gradient_noise=lambda p, g: fixed))(params)
  np.testing.assert_array_equal(state.last.sigma2, [8.0, 6.0])
  np.testing.assert_allclose(state.last.alpha_g, [16 * 2 / 8, 16 * 3 / 6])


def _trained_digits_net(width=24, steps=2000):
  """A random-label digits MLP after `steps` Adam steps: a realistic mid-training state."""
  from trainability import data
  dataset = data.load("digits", subset=1000)
  model = models.make_model(Config(width=width, depth=2), dataset.x_train.shape[1:], 10)
  params, state = model.init(jax.random.key(0))
  x = jnp.asarray(dataset.x_train)
  y = jax.random.randint(jax.random.key(1), (x.shape[0],), 0, 10)

  def example_loss(p, example):
    logits, _ = model.apply(p, state, example[0][None])
    return optax.softmax_cross_entropy_with_integer_labels(logits, example[1][None])[0]

  def batch_at(i):
    idx = jax.random.choice(jax.random.fold_in(jax.random.key(2), i), x.shape[0], (50,), False)
    return x[idx], y[idx]

  tx = optax.adam(1e-3)

  @jax.jit
  def train(params):
    def body(carry, i):
      p, o = carry
      grads = jax.grad(mean_loss, argnums=1)(example_loss, p, batch_at(i))
      u, o = tx.update(grads, o, p)
      return (optax.apply_updates(p, u), o), None
    return jax.lax.scan(body, (params, tx.init(params)), jnp.arange(steps))[0]

  params, opt_state = train(params)
  return params, opt_state, example_loss, batch_at


def _dense_top(example_loss, params, batch, name):
  """Top eigenvalue of the dense Hessian block of layer `name` (float64 eigvalsh)."""
  flat, unravel = jax.flatten_util.ravel_pytree(params[name])
  block = jax.jit(jax.hessian(
      lambda f, p, b: mean_loss(example_loss, {**p, name: unravel(f)}, b)))(flat, params, batch)
  return float(np.linalg.eigvalsh(np.asarray(block, np.float64)).max())


def test_curvature_is_within_5_percent_at_every_check_after_the_second_mid_training():
  """state.last.lam against the dense Hessian block at each check of a trained net.

  Both schedulers never fire (huge safety, no warm window), so they see the
  same trajectory; the one-iteration power estimator that preceded Lanczos
  (curvature "power", 1 step) is far off at the same checks.
  """
  import jax.flatten_util  # noqa: F401
  params, opt_state, example_loss, batch_at = _trained_digits_net()
  k = 10
  make = lambda **kw: noise_curvature_scheduler(
      optax.adam(1e-3), check_every=k, safety=1e30, warm_fraction=0.0, learning_rate=1e-3, **kw)
  accurate, before = make(), make(curvature="power", curvature_steps=1)
  states = [accurate.init(params), before.init(params)]
  states = [s._replace(inner=(opt_state[0], optax.EmptyState())) for s in states]

  @jax.jit
  def step(params, states, i):
    batch = batch_at(10_000 + i)
    grads = jax.grad(mean_loss, argnums=1)(example_loss, params, batch)
    out = [tx.update(grads, s, params, example_loss=example_loss, batch=batch, task_step=i,
                     step=i) for tx, s in zip((accurate, before), states)]
    return optax.apply_updates(params, out[0][0]), [o[1] for o in out]

  errors, before_errors = [], []
  for i in range(8 * k):
    at_check, batch = params, batch_at(10_000 + i)
    params, states = step(params, states, i)
    if (i + 1) % k == 0 and (i + 1) // k >= 3:
      for l, name in enumerate(("hidden_0", "hidden_1", "output")):
        top = _dense_top(example_loss, at_check, batch, name)
        errors.append(abs(float(states[0].last.lam[l]) - top) / top)
        before_errors.append(abs(float(states[1].last.lam[l]) - top) / top)
  assert len(errors) == 18
  print(f"max relative error: {max(errors):.2e} (power, 1 step: {max(before_errors):.2f})")
  assert max(errors) < 0.05, errors
  assert max(before_errors) > 0.05  # the test tells the two apart


def test_the_transform_imports_with_jax_and_optax_only():
  import subprocess
  import sys
  code = ("import sys\n"
          "from trainability.scheduler import noise_curvature_scheduler\n"
          "import trainability.signals, trainability.components\n"
          "heavy = ('flax', 'sklearn', 'matplotlib', 'tqdm', 'trainability.config')\n"
          "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m in heavy))\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]"


def test_the_docstring_example_runs_as_written():
  from trainability import scheduler
  doc = scheduler.__doc__
  block = doc[doc.index("    import jax"):doc.index("Extra arguments")]
  code = "\n".join(line[4:] for line in block.splitlines())
  namespace = {}
  exec(compile(code, "scheduler docstring", "exec"), namespace)  # noqa: S102
  state = namespace["state"]
  assert int(state.checks) == 2 and float(state.last.lam.min()) > 0


def _user_loop(params, example_loss, batch, steps, k):
  """A user's own training loop: optax.adam chained as the docs say, jitted."""
  tx = noise_curvature_scheduler(optax.adam(1e-3), learning_rate=1e-3, check_every=k,
                                 steps_per_task=steps)

  @jax.jit
  def train_step(params, state, i):
    grads = jax.grad(mean_loss, argnums=1)(example_loss, params, batch)
    updates, state = tx.update(grads, state, params, example_loss=example_loss, batch=batch,
                               task_step=i, step=i)
    return optax.apply_updates(params, updates), state, params

  state = tx.init(params)
  for i in range(steps):
    params, state, checked = train_step(params, state, i)
  return state, checked  # the params the last check (at the last step) measured


def test_a_user_loop_with_plain_dict_params():
  import jax.flatten_util  # noqa: F401
  x = jax.random.normal(jax.random.key(0), (24, 5))
  y = jnp.arange(24) % 3
  keys = jax.random.split(jax.random.key(1), 2)
  params = {"dense": {"w": jax.random.normal(keys[0], (5, 6)) / 2, "b": jnp.zeros(6)},
            "head": {"w": jax.random.normal(keys[1], (6, 3)) / 2, "b": jnp.zeros(3)}}

  def example_loss(p, example):
    h = jnp.tanh(example[0] @ p["dense"]["w"] + p["dense"]["b"])
    return optax.softmax_cross_entropy_with_integer_labels(h @ p["head"]["w"] + p["head"]["b"],
                                                           example[1])

  state, checked = _user_loop(params, example_loss, (x, y), 30, 5)
  assert int(state.checks) == 6
  for l, name in enumerate(("dense", "head")):
    np.testing.assert_allclose(state.last.lam[l], _dense_top(example_loss, checked, (x, y), name),
                               rtol=1e-3)


def test_a_user_loop_with_a_flax_module():
  import flax.linen as nn
  import jax.flatten_util  # noqa: F401

  class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(3)(nn.relu(nn.Dense(8)(x)))

  model = MLP()
  x = jax.random.normal(jax.random.key(0), (24, 5))
  y = jnp.arange(24) % 3
  params = model.init(jax.random.key(1), x)["params"]

  def example_loss(p, example):
    logits = model.apply({"params": p}, example[0][None])[0]
    return optax.softmax_cross_entropy_with_integer_labels(logits, example[1])

  state, checked = _user_loop(params, example_loss, (x, y), 30, 5)
  assert int(state.checks) == 6
  names = estimators.layers_of(params).names
  assert names == ("Dense_0", "Dense_1")
  for l, name in enumerate(names):
    np.testing.assert_allclose(state.last.lam[l], _dense_top(example_loss, checked, (x, y), name),
                               rtol=1e-3)


def test_max_multiplier_holds_a_layer_that_would_warm_without_bound_at_the_ceiling():
  params, batch, example_loss = problem()
  make = lambda ceiling: noise_curvature_scheduler(
      optax.sgd(1e-6), check_every=2, safety=1e6, steps_per_task=1000, warm_fraction=1.0,
      effective_step="sgd", learning_rate=1e-6, max_multiplier=ceiling)
  _, free = jax.jit(lambda p: run(make(float("inf")), p, batch, example_loss, 40))(params)
  np.testing.assert_allclose(free.multiplier, [1.01**19] * 2, rtol=1e-5)  # 19 warm checks
  _, held = jax.jit(lambda p: run(make(1.1), p, batch, example_loss, 40))(params)
  np.testing.assert_allclose(held.multiplier, [1.1] * 2, rtol=1e-6)
  assert bool(jnp.all(held.last.warmed))  # it still decides to warm; the ceiling holds it
