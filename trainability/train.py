"""Pure, vmappable continual-learning runs.

`make_train(config)` returns `train(key, hparams=None) -> TaskMetrics` (one row
per task). Everything inside is `lax.scan`, so

    jax.jit(jax.vmap(make_train(config)))(jax.random.split(key, 32))

runs 32 seeds in one compiled program, and a vmap over `hparams` (for example
`{"learning_rate": jnp.array([1e-3, 3e-4])}`, broadcast with in_axes) sweeps
hyperparameters without recompiling.

The same run is available in pieces, for long runs that must report as they go:
`trainer.init(key, hparams) -> RunState` and
`trainer.run_tasks(state, task_ids) -> (state, TaskMetrics)`; `train` is exactly
`run_tasks(init(key, hparams), arange(tasks))`.

Per task t (E epochs of N // B minibatches, reshuffled every epoch):
* online_accuracy: accuracy on each training minibatch measured before the
  update, averaged over the task's steps (the paper's headline metric);
* loss: the minibatch loss, averaged the same way;
* final_accuracy: accuracy on the task's whole training data at its end;
* heldout_accuracy: accuracy on the test split under the task's transform at
  its end (NaN unless `config.heldout`).
For class_incremental, training, final and held-out accuracies use only the
examples of the task's active classes; steps past the active examples of an
epoch are skipped (parameters untouched, not counted).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from trainability import data as data_lib
from trainability import estimators, indicators, interventions, models, optim, regularizers
from trainability import scheduler, tasks
from trainability.config import TRACED_FIELDS, Config, ConfigError
from trainability.config import indicator_names

EVAL_CHUNK = 1024  # examples per forward pass when measuring whole-split accuracy.


class RunState(NamedTuple):
  params: Any
  model_state: Any
  opt_state: Any
  init_key: jax.Array
  stream_key: jax.Array
  shuffle_key: jax.Array
  indicator_state: Any = None  # indicators.SuiteState when indicators are recorded
  # The baselines' run hyperparameters (run_hparams), traced: {name: scalar}.
  hparams: Any = None
  anchor: Any = None      # regularizer l2_init/wasserstein: regularizers.prepare_anchor(init)
  unit_state: Any = None  # unit_reset cbp: interventions.UnitState
  intervention_key: Any = None  # randomness of shrink & perturb and unit resets


class TaskMetrics(NamedTuple):
  online_accuracy: jax.Array
  loss: jax.Array
  final_accuracy: jax.Array
  heldout_accuracy: jax.Array
  # With the noise-curvature scheduler: the task's checks, each field
  # (checks, layers) (see scheduler.Check); None without it.
  checks: Any = None
  # With indicators: {name: (evaluations, columns)}, evaluated after task
  # steps N, 2N, ... (N = indicator_every) on the task's probe batch; the
  # columns are Trainer.indicator_labels[name].
  indicators: Any = None


class Trainer(NamedTuple):
  init: Callable[[jax.Array, Mapping[str, jax.Array] | None], RunState]
  run_tasks: Callable[[RunState, jax.Array], tuple[RunState, TaskMetrics]]
  train: Callable[..., TaskMetrics]
  model: models.Model
  stream: tasks.TaskStream
  steps_per_epoch: int
  layer_names: tuple[str, ...]
  indicator_labels: dict = {}  # {indicator: column labels} of TaskMetrics.indicators


def make_train(config: Config, dataset: data_lib.Dataset | None = None):
  """Returns the pure `train(key, hparams=None) -> TaskMetrics` of a config."""
  return make_trainer(config, dataset).train


def make_trainer(config: Config, dataset: data_lib.Dataset | None = None) -> Trainer:
  """Builds the run's pure functions; loads the config's data set if none given."""
  if dataset is None:
    dataset = data_lib.load(config.dataset, config.data_dir, config.subset, config.normalize)
  n, batch = len(dataset.y_train), config.batch_size
  if batch > n:
    raise ConfigError(f"batch_size: {batch} is more than the {n} training examples")
  steps_per_epoch = n // batch
  if config.stream == "class_incremental":
    # The first task may draw the smallest classes; each task needs one batch.
    counts = np.sort(np.bincount(dataset.y_train, minlength=dataset.num_classes))
    fewest = int(counts[: config.classes_per_task].sum())
    if batch > fewest:
      raise ConfigError(
          f"batch_size: {batch} is more than the {fewest} examples a first task of "
          f"{config.classes_per_task} classes may have; lower it or raise classes_per_task"
      )
  image_shape = dataset.x_train.shape[1:]
  model = models.make_model(config, image_shape, dataset.num_classes)
  stream = tasks.make_stream(
      config.stream, dataset.y_train, dataset.num_classes,
      image_shape[0] * image_shape[1], config.ns, config.classes_per_task,
  )
  x_train, y_train = jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train)
  x_test, y_test = jnp.asarray(dataset.x_test), jnp.asarray(dataset.y_test)
  reset_model = config.reset in ("model", "both")
  reset_optimizer = config.reset in ("optimizer", "both")
  steps_per_task = config.epochs * steps_per_epoch
  scheduled = config.scheduler == "noise_curvature"
  recorded = indicator_names(config.indicators)
  # Schedules counted in steps of a task must fit in one, or they never fire.
  for used, field, never in ((scheduled, "check_every", "the scheduler would never check"),
                             (recorded, "indicator_every", "no indicator would be recorded"),
                             (config.unit_reset == "redo", "redo_every", "no unit would be reset")):
    if used and getattr(config, field) > steps_per_task:
      raise ConfigError(
          f"{field}: {getattr(config, field)} is more than the {steps_per_task} steps of a "
          f"task (epochs x (examples // batch_size)), so {never}; give {field} <= "
          f"{steps_per_task} or more epochs")
  probe_size = min(config.indicator_examples, n)
  regularized = config.regularizer != "none"
  penalty = regularizers.penalty_fn(config.regularizer)
  unit_reset = config.unit_reset != "none"
  if unit_reset and not model.hidden:
    raise ConfigError("unit_reset: needs hidden units; give depth >= 1 (mlp) or model cnn")
  per_step_sp = config.shrink_perturb == "step"

  def example_loss(p, model_state, example):
    """One example's loss in eval mode (BatchNorm uses its running statistics)."""
    xi, yi = example
    logits_i, _ = model.apply(p, model_state, xi[None], train=False)
    return optax.softmax_cross_entropy_with_integer_labels(logits_i, yi[None])[0]

  suite = None
  if recorded:
    suite = indicators.make_suite(
        model, example_loss, jax.ShapeDtypeStruct((probe_size, *image_shape), jnp.float32),
        recorded, indicators.options_of(config), learning_rate=config.lr,
        momentum=config.momentum)

  def make_tx(hparams):
    # With unit resets, Adam counts steps per element, so a reset weight's
    # state can be truly fresh (optim.scale_by_adam_per_element).
    tx = optim.make_optimizer(config.optimizer, hparams, element_counts=unit_reset)
    if not scheduled:
      return tx
    signals = config.signal_settings()
    return scheduler.noise_curvature_scheduler(
        tx, threshold=signals.threshold, check_every=config.check_every, window=signals.window,
        safety=config.safety, cool=config.cool, warm=config.warm, beta=signals.beta,
        delta=signals.delta, reference_param=signals.reference_param, kappa=signals.kappa,
        warm_fraction=config.warm_fraction, steps_per_task=steps_per_task, floor=config.floor,
        curvature=signals.curvature, curvature_steps=signals.curvature_steps,
        curvature_tol=signals.curvature_tol, variance=signals.variance,
        effective_step=signals.effective_step)

  def hparams_of(opt_state):
    return optim.hparams_of(config.optimizer, opt_state.inner if scheduled else opt_state)

  def init(key, hparams=None) -> RunState:
    hparams = {k: jnp.asarray(v, jnp.float32) for k, v in (hparams or {}).items()}
    values = optim.default_hparams(config)
    run_values = run_hparams(config)
    for name, value in hparams.items():
      if name in run_values:
        run_values[name] = value
      elif name in TRACED_FIELDS:
        raise ConfigError(f"hparams: {name!r} {config.unused_because(name)}")
      else:
        values[name] = value  # make_optimizer refuses what is not the optimizer's
    init_key, stream_key, shuffle_key = jax.random.split(key, 3)
    params, model_state = model.init(init_key)
    opt_state = make_tx(values).init(params)
    indicator_state = None if suite is None else suite.init(
        params, jax.random.fold_in(init_key, 1))
    anchor = regularizers.prepare_anchor(config.regularizer, params) if regularized else None
    unit_state = (interventions.init_unit_state(model, params)
                  if config.unit_reset == "cbp" else None)
    return RunState(params, model_state, opt_state, init_key, stream_key, shuffle_key,
                    indicator_state, run_values, anchor, unit_state,
                    jax.random.fold_in(key, 1))

  def loss_fn(params, model_state, x, y):
    logits, new_state = model.apply(params, model_state, x, train=True)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, (logits, new_state)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def task_inputs(x, task):
    if stream.permutes_inputs:
      return tasks.apply_pixel_permutation(x, task.pixel_permutation)
    return x

  def accuracy(params, model_state, x, y, weight, task):
    """Weighted accuracy over a whole split, in chunks of EVAL_CHUNK examples."""
    count = y.shape[0]
    chunks = -(-count // EVAL_CHUNK)
    size = -(-count // chunks)
    pad = chunks * size - count
    idx = jnp.pad(jnp.arange(count), (0, pad)).reshape(chunks, size)
    w = jnp.pad(weight, (0, pad)).reshape(chunks, size)

    def chunk_hits(args):
      i, wi = args
      logits, _ = model.apply(params, model_state, task_inputs(x[i], task), train=False)
      return jnp.sum(wi * (jnp.argmax(logits, -1) == y[i]))

    hits = jax.lax.map(chunk_hits, (idx, w))
    return hits.sum() / jnp.maximum(w.sum(), 1.0)

  def reset_units(params, model_state, new_params, new_model_state, opt_state, unit_state, x,
                  task_step, key, hp):
    """Continual backprop (every step) or ReDo (every redo_every steps) after an update.

    The units' activity is measured on this step's minibatch with the
    parameters of its forward pass; CBP's outgoing weights are the updated ones.
    """
    def activity():
      return interventions.unit_activity(model.features(params, model_state, x), model.copies)

    if config.unit_reset == "cbp":
      unit_state, replace = interventions.continual_backprop(
          unit_state, activity(), interventions.outgoing_mass(model, new_params),
          hp["replacement_rate"], hp["maturity"], hp["utility_decay"])
    else:  # redo: measured on schedule only, under a cond on the unbatched step counter
      units = interventions.units_of(model, params)
      replace = jax.lax.cond(
          (task_step + 1) % config.redo_every == 0,
          lambda: interventions.dormant_units(activity(), hp["redo_tau"]),
          lambda: {n: jnp.zeros((u,), bool) for n, u in units.items()})
    fresh_params, fresh_model_state = model.init(key)
    new_params, new_model_state, masks = interventions.reset_units(
        model, new_params, new_model_state, fresh_params, fresh_model_state, replace)
    inner = opt_state.inner if scheduled else opt_state
    fresh = optim.make_optimizer(config.optimizer, hparams_of(opt_state), element_counts=True)
    inner = interventions.reset_optimizer_state(inner, fresh.init(new_params), masks.touched)
    opt_state = opt_state._replace(inner=inner) if scheduled else inner
    return new_params, new_model_state, opt_state, unit_state

  def run_task(state: RunState, t) -> tuple[RunState, TaskMetrics]:
    tx = make_tx(hparams_of(state.opt_state))
    task = stream.task(state.stream_key, t)
    params, model_state, opt_state = state.params, state.model_state, state.opt_state
    if reset_model:
      fresh_params, fresh_model_state = model.init(jax.random.fold_in(state.init_key, t))
      params = _select(t > 0, fresh_params, params)
      model_state = _select(t > 0, fresh_model_state, model_state)
    if reset_optimizer:
      opt_state = _select(t > 0, tx.init(params), opt_state)
    unit_state, hp = state.unit_state, state.hparams
    if reset_model and unit_state is not None:
      unit_state = _select(t > 0, interventions.init_unit_state(model, params), unit_state)
    task_noise_key, steps_key = jax.random.split(jax.random.fold_in(state.intervention_key, t))
    if config.shrink_perturb == "task":
      params = _select(t > 0, interventions.shrink_perturb(
          params, task_noise_key, hp["shrink"], hp["perturb"], config.perturb_noise,
          model.init), params)

    example_weight = task.active_classes[y_train].astype(jnp.float32)
    valid_steps = jnp.sum(example_weight).astype(jnp.int32) // batch
    task_key = jax.random.fold_in(state.shuffle_key, t)

    def epoch(carry, e):
      # Active examples first, in a fresh random order every epoch.
      u = jax.random.uniform(jax.random.fold_in(task_key, e), (n,))
      order = jnp.argsort(jnp.where(example_weight > 0, u, u + 2.0))
      order = order[: steps_per_epoch * batch].reshape(steps_per_epoch, batch)
      steps = jnp.arange(steps_per_epoch)
      return jax.lax.scan(step, carry, (order, steps, e * steps_per_epoch + steps))

    # The indicators' probe batch: the task's first probe_size active examples.
    probe_idx = jnp.argsort(1.0 - example_weight, stable=True)[:probe_size]
    probe = (task_inputs(x_train[probe_idx], task), task.train_labels[probe_idx])

    def step(carry, inputs):
      # j: step of the epoch; task_step: step of the task. Both are loop
      # counters, the same for every vmapped seed.
      idx, j, task_step = inputs
      params, model_state, opt_state, indicator_state, unit_state = carry
      x, y = task_inputs(x_train[idx], task), task.train_labels[idx]
      (loss, (logits, new_model_state)), grads = grad_fn(params, model_state, x, y)
      hit_rate = jnp.mean(jnp.argmax(logits, -1) == y)
      data_grads = grads
      if regularized:
        penalty_grads = jax.grad(penalty)(params, state.anchor)
        grads = jax.tree.map(lambda g, r: g + hp["reg_coef"] * r, grads, penalty_grads)
      if scheduled:
        loss_i = lambda p, example: example_loss(p, model_state, example)
        noise_fn = estimators.dense_noise_fn(loss_i, (x, y), model.dense_inputs, model_state)
        if regularized:  # the bounds measure the data loss's gradient noise, not the penalty's
          noise_fn = _data_noise_fn(noise_fn, loss_i, (x, y), data_grads)
        updates, new_opt_state = tx.update(
            grads, opt_state, params, example_loss=loss_i, batch=(x, y),
            task_step=task_step, step=task_step, gradient_noise=noise_fn)
      else:
        updates, new_opt_state = tx.update(grads, opt_state, params)
      new_params = optax.apply_updates(params, updates)
      step_key = jax.random.fold_in(steps_key, task_step)
      if per_step_sp:
        new_params = interventions.shrink_perturb(
            new_params, step_key, hp["shrink"], hp["perturb"], config.perturb_noise, model.init)
      if unit_reset:
        new_params, new_model_state, new_opt_state, unit_state = reset_units(
            params, model_state, new_params, new_model_state, new_opt_state, unit_state, x,
            task_step, step_key, hp)
      values = None
      if suite is not None:  # on schedule only: a cond on the unbatched step counter
        def evaluate(s):
          return suite.compute(
              s, new_params, new_model_state, probe, updates=updates, opt_state=new_opt_state,
              count=t * steps_per_task + task_step + 1,
              multiplier=new_opt_state.multiplier if scheduled else None)

        def skip(s):
          return {n: jnp.zeros((len(suite.labels[n]),), jnp.float32) for n in suite.names}, s

        values, indicator_state = jax.lax.cond(
            (task_step + 1) % config.indicator_every == 0, evaluate, skip, indicator_state)
      new = (new_params, new_model_state, new_opt_state, indicator_state, unit_state)
      record = (loss, hit_rate, jnp.float32(1.0))
      if stream.masks_examples:
        valid = j < valid_steps
        new = _select(valid, new, carry)
        record = (valid * loss, valid * hit_rate, valid.astype(jnp.float32))
      return new, record + (new[2].last if scheduled else None, values)

    carry = (params, model_state, opt_state, state.indicator_state, unit_state)
    (params, model_state, opt_state, indicator_state, unit_state), \
        (losses, hits, counted, lasts, values) = jax.lax.scan(epoch, carry,
                                                              jnp.arange(config.epochs))

    def every(k, tree):  # the records after task steps k - 1, 2k - 1, ...
      return jax.tree.map(lambda a: a.reshape(steps_per_task, *a.shape[2:])[k - 1::k], tree)

    checks = every(config.check_every, lasts) if scheduled else None
    recorded_values = every(config.indicator_every, values) if suite is not None else None
    steps = jnp.maximum(counted.sum(), 1.0)
    final = accuracy(params, model_state, x_train, task.train_labels, example_weight, task)
    if config.heldout:
      heldout = accuracy(params, model_state, x_test, task.label_map[y_test],
                         task.active_classes[y_test].astype(jnp.float32), task)
    else:
      heldout = jnp.float32(jnp.nan)
    metrics = TaskMetrics(hits.sum() / steps, losses.sum() / steps, final, heldout, checks,
                          recorded_values)
    return state._replace(params=params, model_state=model_state, opt_state=opt_state,
                          indicator_state=indicator_state, unit_state=unit_state), metrics

  def run_tasks(state: RunState, task_ids) -> tuple[RunState, TaskMetrics]:
    return jax.lax.scan(run_task, state, jnp.asarray(task_ids, jnp.int32))

  def train(key, hparams=None) -> TaskMetrics:
    return run_tasks(init(key, hparams), jnp.arange(config.tasks))[1]

  layer_names = estimators.layers_of(jax.eval_shape(model.init, jax.random.key(0))[0]).names
  return Trainer(init, run_tasks, train, model, stream, steps_per_epoch, layer_names,
                 {} if suite is None else dict(suite.labels))


def run_hparams(config: Config) -> dict[str, jax.Array]:
  """The traced hyperparameters of the config's baselines (Config.traced_fields)."""
  return {n: jnp.float32(getattr(config, n)) for n in config.traced_fields()}


def _data_noise_fn(noise_fn, example_loss, batch, data_grads):
  """A gradient_noise callback that centres on the data loss's mean gradient."""
  def noise(params, grads):
    del grads  # the loss + penalty gradient the optimizer sees
    if noise_fn is not None:
      return noise_fn(params, data_grads)
    return estimators.gradient_noise(example_loss, params, batch, estimators.layers_of(params),
                                     mean_grads=data_grads)
  return noise


def _select(pred, on_true, on_false):
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def seed_keys(config: Config) -> jax.Array:
  """One key per seed: seeds config.seed, config.seed + 1, ..."""
  return jax.vmap(jax.random.key)(np.arange(config.seed, config.seed + config.seeds))
