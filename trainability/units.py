"""Hidden units and the parameters they own: one home for the unit and element masks.

A unit is a channel of a hidden dense or conv layer of `models.make_model`.
What belongs to it: its incoming parameters (kernel column, bias, norm-layer
scale and shift) and the next layer's kernel rows it feeds (all its copies
and positions, for CReLU, Fourier features and conv layers).

* `units_of(model, params)`: each hidden layer's width.
* `unit_masks(model, params, replace)`: the param-shaped boolean trees a
  reset of some units touches (`interventions.reset_units`, continual
  backprop, ReDo).
* `real_elements(model, params, model_state)`: the network's own parameters
  when a narrower net is run embedded in a wider one with zero padding units
  (`trainability.sweep`), for means over them (`estimators.masked_mean`): the
  train step's scheduler arguments and the indicators use it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from trainability import models


def next_layer(model: models.Model, name: str) -> str:
  chain = model.hidden + ("output",)
  return chain[chain.index(name) + 1]


def kernel_path(params, name):
  """Path of a layer's dense or conv kernel: (name, 'dense'|'conv', 'kernel') or (name, 'kernel')."""
  block = params[name]
  for inner in ("conv", "dense"):
    if inner in block:
      return (name, inner, "kernel")
  return (name, "kernel")


def get_path(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def set_path(tree, path, value):
  """A copy of nested dicts `tree` with `value` at `path`."""
  if not path:
    return value
  out = dict(tree)
  out[path[0]] = set_path(tree[path[0]], path[1:], value)
  return out


def units_of(model: models.Model, params) -> dict[str, int]:
  """{hidden layer: number of units}."""
  if not model.hidden:
    raise ValueError("model: unit resets need a model with hidden layers "
                     "(models.make_model with depth >= 1 or a cnn)")
  return {name: get_path(params, kernel_path(params, name)).shape[-1] for name in model.hidden}


def outgoing_rows(kernel, copies: int, units: int):
  """The next layer's kernel as (groups, copies, units, fan_out): rows fed by each unit."""
  return kernel.reshape(-1, copies, units, kernel.shape[-1])


class UnitMasks(NamedTuple):
  """Param-shaped boolean trees of what a unit reset touches."""

  incoming: Any  # the replaced units' own parameters (kernel columns, biases, norm)
  outgoing: Any  # the next layers' kernel rows fed by the replaced units

  @property
  def touched(self):
    return jax.tree.map(jnp.logical_or, self.incoming, self.outgoing)


def unit_masks(model: models.Model, params, replace: dict) -> UnitMasks:
  """Where a reset of the units in `replace` ({layer: (units,) bool}) acts."""
  incoming = jax.tree.map(lambda p: jnp.zeros(p.shape, bool), params)
  outgoing = incoming
  for name, mask in replace.items():
    incoming = set_path(incoming, (name,),
                    jax.tree.map(lambda p, m=mask: jnp.broadcast_to(m, p.shape), params[name]))
    path = kernel_path(params, next_layer(model, name))
    kernel = get_path(params, path)
    rows = jnp.broadcast_to(mask[None, None, :, None],
                            outgoing_rows(kernel, model.copies, mask.shape[0]).shape)
    outgoing = set_path(outgoing, path, get_path(outgoing, path) | rows.reshape(kernel.shape))
  return UnitMasks(incoming, outgoing)


def real_elements(model: models.Model, params, model_state):
  """The network's own parameters under unit masks, or None for a model without them.

  A params-shaped float32 tree: 0 for every parameter of a padding unit (its
  mask in `model_state[models.ACTIVE_UNITS]` is 0: its incoming weights and
  bias, and the next layer's kernel rows it feeds), 1 elsewhere. The
  elements a narrower network embedded in this one has (`trainability.sweep`),
  for means over them (`estimators.masked_mean`).
  """
  active = model_state.get(models.ACTIVE_UNITS) if model_state else None
  if not active:
    return None
  padding = {name: active[name]["units"] == 0 for name in active}
  return jax.tree.map(lambda t: 1.0 - t.astype(jnp.float32),
                      unit_masks(model, params, padding).touched)
