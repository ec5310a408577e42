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

import functools
from typing import TYPE_CHECKING, Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from trainability import components as comp
from trainability import data as data_lib
from trainability import estimators, indicators, interventions, models, optim, regularizers
from trainability import scheduler, tasks, trac, units
from trainability.indicators import indicator_names
from trainability.settings import ConfigError, Integer, Setting

if TYPE_CHECKING:
  from trainability.config import Config

EVAL_CHUNK = 1024  # examples per forward pass when measuring whole-split accuracy.


# The run's own settings (the loop's; the modules own theirs).
SETTINGS = (
    Setting("tasks", 20, "number of tasks", int, check=Integer(1)),
    Setting("epochs", 100, "epochs per task", int, check=Integer(1)),
    Setting("batch_size", 50, "minibatch size", int, check=Integer(1)),
    Setting("heldout", False, "also report held-out accuracy on the test split at each task's "
            "end", bool),
)
RUN_SETTINGS = (
    Setting("seeds", 4, "number of seeds, run in parallel with vmap", int, check=Integer(1)),
    Setting("seed", 0, "first seed; seeds are seed, seed+1, ...", int, check=Integer(0)),
    Setting("chunk_tasks", 1, "tasks per compiled chunk; results are written after every chunk",
            int, check=Integer(1)),
    Setting("checkpoint_every", 0, "tasks between orbax checkpoints of the whole run state, a "
            "multiple of chunk_tasks (0: no checkpoints); `--resume DIR` continues from the "
            "newest", int, check=Integer(0)),
    Setting("keep_checkpoints", 2, "how many of the newest checkpoints are kept", int,
            check=Integer(1)),
)


class RunState(NamedTuple):
  params: Any
  model_state: Any
  opt_state: Any
  init_key: jax.Array
  stream_key: jax.Array
  shuffle_key: jax.Array
  # Each component's state, in the order of Trainer.components.
  components: tuple = ()
  # The components' traced hyperparameters: {name: scalar}.
  hparams: Any = None
  intervention_key: Any = None  # the components' task and step keys derive from it


class TaskMetrics(NamedTuple):
  online_accuracy: jax.Array
  loss: jax.Array
  final_accuracy: jax.Array
  heldout_accuracy: jax.Array
  # {component name: its records}, each leaf (evaluations, ...) per task, the
  # evaluations after task steps N - 1, 2N - 1, ... (N = the component's every).
  records: dict = {}

  @property
  def checks(self):
    """The scheduler's checks (signals.Check, each field (checks, layers)), or None."""
    return self.records.get("scheduler")

  @property
  def indicators(self):
    """{indicator: (evaluations, columns)} (Trainer.indicator_labels), or None."""
    return self.records.get("indicators")


class Trainer(NamedTuple):
  init: Callable[[jax.Array, Mapping[str, jax.Array] | None], RunState]
  run_tasks: Callable[[RunState, jax.Array], tuple[RunState, TaskMetrics]]
  train: Callable[..., TaskMetrics]
  model: models.Model
  stream: tasks.TaskStream
  steps_per_epoch: int
  layer_names: tuple[str, ...]
  indicator_labels: dict = {}  # {indicator: column labels} of TaskMetrics.indicators
  components: tuple = ()       # the run's components, built-in ones first

  def component_state(self, state: RunState, name: str):
    """The state of the component `name` in a RunState."""
    names = [c.name for c in self.components]
    if name not in names:
      raise ValueError(f"name: {name!r} is not a component of this run; its components: "
                       f"{', '.join(names) or 'none'}")
    return state.components[names.index(name)]


def make_train(config: Config, dataset: data_lib.Dataset | None = None, components=()):
  """Returns the pure `train(key, hparams=None) -> TaskMetrics` of a config.

  components: your own `trainability.components.Component`s, run after the
  config's built-in ones (see `make_trainer`).
  """
  return make_trainer(config, dataset, components).train


class Context(NamedTuple):
  """What is fixed for a run, built once by `make_trainer`: the first argument of
  `init`, `train_step`, `run_task`, `run_tasks` and `train`, closed over (its
  arrays are constants of the compiled program, not traced inputs)."""

  config: Any                 # the run's Config
  model: models.Model
  stream: tasks.TaskStream
  parts: tuple                # the run's components, built-in ones first
  data: tuple                 # (x_train, y_train, x_test, y_test), device arrays
  steps_per_epoch: int
  make_tx: Callable           # optimizer hyperparameters -> the run's optax transformation

  @property
  def steps_per_task(self) -> int:
    return self.config.epochs * self.steps_per_epoch


class TaskView(NamedTuple):
  """What the steps of one task share (traced values of `run_task`)."""

  tx: Any                     # the optimizer, with the state's hyperparameters
  task: comp.TaskData
  hparams: Any                # the components' traced hyperparameters
  steps_key: jax.Array
  valid_steps: jax.Array      # steps of an epoch with active examples


def make_trainer(config: Config, dataset: data_lib.Dataset | None = None,
                 components=(), unit_masks: bool = False) -> Trainer:
  """Builds the run's pure functions; loads the config's data set if none given.

  The run's components are the config's (`components_of`) followed by
  `components`; each acts through the hooks of `trainability.components`.
  unit_masks: the model's dense hidden layers carry 0/1 unit masks in the
  model state (`models.make_model`), for narrower nets embedded in this one.
  """
  if dataset is None:
    dataset = data_lib.load_for(config)
  _check_batch(config, dataset)
  n = len(dataset.y_train)
  steps_per_epoch = n // config.batch_size
  image_shape = dataset.x_train.shape[1:]
  model = models.make_model(config, image_shape, dataset.num_classes, unit_masks)
  stream = tasks.make_stream(
      config.stream, dataset.y_train, dataset.num_classes,
      image_shape[0] * image_shape[1], config.ns, config.classes_per_task,
  )
  data = tuple(jnp.asarray(a) for a in (dataset.x_train, dataset.y_train, dataset.x_test,
                                        dataset.y_test))
  built_in, suite = components_of(config, model, example_loss_of(model), image_shape, n,
                                  config.epochs * steps_per_epoch)
  parts = comp.check_components(built_in + tuple(components))
  element_counts = any(c.element_counts for c in parts)
  wrappers = [c.wrap_optimizer for c in parts if c.wrap_optimizer is not None]
  layer_names = estimators.layers_of(jax.eval_shape(model.init, jax.random.key(0))[0]).names
  beta_ramp = None
  if config.adam_betas == "reference":  # Config accepts it with adam and adamw only
    beta_ramp = optim.BetaRamp(layer_names[0], steps_per_epoch, config.epochs)

  def make_tx(hparams):
    tx = optim.make_optimizer(config.optimizer, hparams, element_counts=element_counts,
                              beta_ramp=beta_ramp)
    for wrap in wrappers:
      tx = wrap(tx)
    return optax.with_extra_args_support(tx)

  ctx = Context(config, model, stream, parts, data, steps_per_epoch, make_tx)

  # Named closures (not partials): jit names its programs after them.
  def init_run(key, hparams=None) -> RunState:
    return init(ctx, key, hparams)

  def run_tasks_of(state: RunState, task_ids) -> tuple[RunState, TaskMetrics]:
    return run_tasks(ctx, state, task_ids)

  def train_run(key, hparams=None) -> TaskMetrics:
    return train(ctx, key, hparams)

  init_run.__name__, run_tasks_of.__name__, train_run.__name__ = "init", "run_tasks", "train"
  return Trainer(init_run, run_tasks_of, train_run, model, stream, steps_per_epoch, layer_names,
                 {} if suite is None else dict(suite.labels), parts)


def _check_batch(config: Config, dataset: data_lib.Dataset):
  n, batch = len(dataset.y_train), config.batch_size
  if batch > n:
    raise ConfigError(f"batch_size: {batch} is more than the {n} training examples")
  if config.stream == "class_incremental":
    # The first task may draw the smallest classes; each task needs one batch.
    counts = np.sort(np.bincount(dataset.y_train, minlength=dataset.num_classes))
    fewest = int(counts[: config.classes_per_task].sum())
    if batch > fewest:
      raise ConfigError(
          f"batch_size: {batch} is more than the {fewest} examples a first task of "
          f"{config.classes_per_task} classes may have; lower it or raise classes_per_task"
      )


def example_loss_of(model: models.Model):
  """example_loss(params, model_state, example): one example's loss in eval mode
  (BatchNorm uses its running statistics)."""
  def example_loss(p, model_state, example):
    xi, yi = example
    logits_i, _ = model.apply(p, model_state, xi[None], train=False)
    return optax.softmax_cross_entropy_with_integer_labels(logits_i, yi[None])[0]
  return example_loss


def init(ctx: Context, key, hparams=None) -> RunState:
  """The run's state at its start; `hparams` override traced hyperparameters."""
  hparams = {k: jnp.asarray(v, jnp.float32) for k, v in (hparams or {}).items()}
  values = optim.default_hparams(ctx.config)
  run_values = {h: jnp.float32(v) for c in ctx.parts for h, v in c.hparams.items()}
  for name, value in hparams.items():
    if name in run_values:
      run_values[name] = value
    elif (unused := ctx.config.unused_hparam(name)):
      raise ConfigError(f"hparams: {name!r} {unused}")
    else:
      values[name] = value  # make_optimizer refuses what is not the optimizer's
  init_key, stream_key, shuffle_key = jax.random.split(key, 3)
  params, model_state = ctx.model.init(init_key)
  opt_state = ctx.make_tx(values).init(params)
  states = tuple(None if c.init is None else c.init(params, model_state, init_key)
                 for c in ctx.parts)
  return RunState(params, model_state, opt_state, init_key, stream_key, shuffle_key, states,
                  run_values, jax.random.fold_in(key, 1))


def _loss(model, params, model_state, x, y):
  logits, new_state = model.apply(params, model_state, x, train=True)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return loss, (logits, new_state)


def task_inputs(stream: tasks.TaskStream, x, task):
  """The inputs `x` under the task's transform (its pixel permutation, if any)."""
  if stream.permutes_inputs:
    return tasks.apply_pixel_permutation(x, task.pixel_permutation)
  return x


def accuracy(ctx: Context, params, model_state, x, y, weight, task):
  """Weighted accuracy over a whole split, in chunks of EVAL_CHUNK examples."""
  count = y.shape[0]
  chunks = -(-count // EVAL_CHUNK)
  size = -(-count // chunks)
  pad = chunks * size - count
  idx = jnp.pad(jnp.arange(count), (0, pad)).reshape(chunks, size)
  w = jnp.pad(weight, (0, pad)).reshape(chunks, size)

  def chunk_hits(args):
    i, wi = args
    logits, _ = ctx.model.apply(params, model_state, task_inputs(ctx.stream, x[i], task),
                                train=False)
    return jnp.sum(wi * (jnp.argmax(logits, -1) == y[i]))

  hits = jax.lax.map(chunk_hits, (idx, w))
  return hits.sum() / jnp.maximum(w.sum(), 1.0)


def train_step(ctx: Context, now: TaskView, carry, inputs):
  """One update and what the components do around it; (carry, (loss, hit rate,
  counted, records)). inputs: (minibatch indices, step of the epoch, step of the
  task), loop counters the same for every vmapped seed."""
  idx, j, task_step = inputs
  params, model_state, opt_state, states = carry
  parts, hp = ctx.parts, now.hparams
  x, y = now.task.examples(idx)
  loss_and_grads = jax.value_and_grad(functools.partial(_loss, ctx.model), has_aux=True)
  (loss, (logits, new_model_state)), data_grads = loss_and_grads(params, model_state, x, y)
  hit_rate = jnp.mean(jnp.argmax(logits, -1) == y)
  grads = comp.penalty_gradients(parts, states, hp, params, data_grads)
  extra = comp.update_args(parts, states, hp, comp.Pending(
      params, model_state, (x, y), data_grads, now.task, task_step))
  updates, new_opt_state = now.tx.update(grads, opt_state, params, **extra)
  after = comp.Step(
      optax.apply_updates(params, updates), new_model_state, new_opt_state, updates,
      data_grads, params, model_state, (x, y), now.task, task_step,
      now.task.index * ctx.steps_per_task + task_step + 1,
      jax.random.fold_in(now.steps_key, task_step))
  after, new_states = comp.after_update(parts, states, hp, after)
  new = (after.params, after.model_state, after.opt_state, new_states)
  record = (loss, hit_rate, jnp.float32(1.0))
  if ctx.stream.masks_examples:
    valid = j < now.valid_steps
    new = comp.select(valid, new, carry)
    record = (valid * loss, valid * hit_rate, valid.astype(jnp.float32))
  # Records see the state the run holds after the step.
  after = after._replace(params=new[0], model_state=new[1], opt_state=new[2],
                         multiplier=comp.multiplier(parts, new[2]))
  values, new_states = comp.record(parts, new[3], hp, after)
  return new[:3] + (new_states,), record + (values,)


def run_epoch(ctx: Context, now: TaskView, shuffle_key, carry, e):
  """The steps of epoch `e`: active examples first, in a fresh random order."""
  n, batch, steps_per_epoch = ctx.data[1].shape[0], ctx.config.batch_size, ctx.steps_per_epoch
  u = jax.random.uniform(jax.random.fold_in(shuffle_key, e), (n,))
  order = jnp.argsort(jnp.where(now.task.weight > 0, u, u + 2.0))
  order = order[: steps_per_epoch * batch].reshape(steps_per_epoch, batch)
  steps = jnp.arange(steps_per_epoch)
  step = lambda carry, inputs: train_step(ctx, now, carry, inputs)
  return jax.lax.scan(step, carry, (order, steps, e * steps_per_epoch + steps))


def run_task(ctx: Context, state: RunState, t) -> tuple[RunState, TaskMetrics]:
  """Task `t` from `state`: its start, its epochs, its metrics."""
  config, (x_train, y_train, x_test, y_test) = ctx.config, ctx.data
  tx = ctx.make_tx(optim.hparams_of(config.optimizer, state.opt_state))
  task = ctx.stream.task(state.stream_key, t)
  example_weight = task.active_classes[y_train].astype(jnp.float32)
  task_data = comp.TaskData(t, example_weight, lambda idx: (
      task_inputs(ctx.stream, x_train[idx], task), task.train_labels[idx]))
  task_key, steps_key = jax.random.split(jax.random.fold_in(state.intervention_key, t))
  boundary, states = comp.start_task(ctx.parts, state.components, state.hparams, comp.Boundary(
      state.params, state.model_state, state.opt_state, task_data, task_key, state.init_key,
      tx.init))
  valid_steps = jnp.sum(example_weight).astype(jnp.int32) // config.batch_size
  now = TaskView(tx, task_data, state.hparams, steps_key, valid_steps)
  shuffle_key = jax.random.fold_in(state.shuffle_key, t)
  epoch = lambda carry, e: run_epoch(ctx, now, shuffle_key, carry, e)
  carry = (boundary.params, boundary.model_state, boundary.opt_state, states)
  (params, model_state, opt_state, states), (losses, hits, counted, values) = jax.lax.scan(
      epoch, carry, jnp.arange(config.epochs))
  # Each component's records after task steps every - 1, 2 every - 1, ...
  every = {c.name: c.every for c in ctx.parts}
  records = {name: jax.tree.map(
      lambda a, k=every[name]: a.reshape(ctx.steps_per_task, *a.shape[2:])[k - 1::k], v)
      for name, v in values.items()}
  steps = jnp.maximum(counted.sum(), 1.0)
  final = accuracy(ctx, params, model_state, x_train, task.train_labels, example_weight, task)
  if config.heldout:
    heldout = accuracy(ctx, params, model_state, x_test, task.label_map[y_test],
                       task.active_classes[y_test].astype(jnp.float32), task)
  else:
    heldout = jnp.float32(jnp.nan)
  metrics = TaskMetrics(hits.sum() / steps, losses.sum() / steps, final, heldout, records)
  return state._replace(params=params, model_state=model_state, opt_state=opt_state,
                        components=states), metrics


def run_tasks(ctx: Context, state: RunState, task_ids) -> tuple[RunState, TaskMetrics]:
  """The tasks `task_ids` in order, from `state`; (state, metrics stacked per task)."""
  return jax.lax.scan(lambda s, t: run_task(ctx, s, t), state, jnp.asarray(task_ids, jnp.int32))


def train(ctx: Context, key, hparams=None) -> TaskMetrics:
  """The whole run: `run_tasks(init(key, hparams), arange(tasks))`'s metrics."""
  return run_tasks(ctx, init(ctx, key, hparams), jnp.arange(ctx.config.tasks))[1]


def components_of(config: Config, model: models.Model, example_loss, image_shape, n: int,
                  steps_per_task: int):
  """(the config's built-in components, in the order they act; the indicator suite or None).

  example_loss(params, model_state, example): one example's loss in eval mode.
  """
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
  out, suite = [], None
  if config.reset != "none":
    out.append(interventions.reset_component(config.reset, model))
  if config.regularizer != "none":
    out.append(regularizers.as_component(config.regularizer, config.reg_coef))
  if config.shrink_perturb != "none":
    out.append(interventions.shrink_perturb_component(
        config.shrink_perturb, config.shrink, config.perturb, config.perturb_noise, model.init))
  if config.unit_reset != "none":
    out.append(interventions.unit_reset_component(
        config.unit_reset, model, config.optimizer, replacement_rate=config.replacement_rate,
        maturity=config.maturity, utility_decay=config.utility_decay,
        redo_every=config.redo_every, redo_tau=config.redo_tau,
        restart_each_task=config.reset in ("model", "both")))
  if config.constraint != "none":  # after the other changes: the run's params stay in the ball
    out.append(regularizers.constraint_component(config.constraint, config.constraint_radius))
  if scheduled:
    rule = {name: getattr(config, name) for name in scheduler.RULE if name != "scheduler"}
    out.append(scheduler.as_component(
        **rule, **config.signal_settings()._asdict(), steps_per_task=steps_per_task,
        example_loss=example_loss, dense_inputs=model.dense_inputs,
        element_mask=functools.partial(units.real_elements, model)))
  if config.scheduler == "trac":
    out.append(trac.as_component(s_init=config.trac_s_init))
  if recorded:
    probe_size = min(config.indicator_examples, n)
    suite = indicators.make_suite(
        model, example_loss, jax.ShapeDtypeStruct((probe_size, *image_shape), jnp.float32),
        recorded, indicators.options_of(config), learning_rate=config.lr,
        momentum=config.momentum)
    out.append(indicators.as_component(suite, config.indicator_every, probe_size))
  return tuple(out), suite


def seed_keys(config: Config) -> jax.Array:
  """One key per seed: seeds config.seed, config.seed + 1, ..."""
  return jax.vmap(jax.random.key)(np.arange(config.seed, config.seed + config.seeds))
