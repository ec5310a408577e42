"""Pure-function models: `init(key) -> (params, state)`, `apply(...) -> (logits, state)`.

`params` is a dict whose top-level keys name the layers, in order:
MLP: hidden_0 ... hidden_{depth-1}, output; CNN: conv_0 ..., hidden_0, output.
Each hidden block holds `dense` (or `conv`) and, with a norm layer, `norm`.
`state` holds BatchNorm running statistics ({} without BatchNorm).

Hidden kernels use Kaiming (He) normal init with the gain of the activation
(relu, crelu, swish, softplus: 2; leaky_relu: 2 / (1 + slope^2); tanh: 25/9;
identity: 1; fourier: 1; variance = gain / fan_in, untruncated normal as torch's
kaiming_normal_) or LeCun normal (variance 1 / fan_in). The output layer is
LeCun normal; biases start at zero. `kaiming_uniform` is PyTorch's
`kaiming_uniform_` (uniform, the same variance gain / fan_in) on every layer,
the output layer included, as the reference code (sheeerio/continual)
initializes its networks. `mirrored_lecun` is LeCun normal
with the last hidden layer's units in pairs: unit j + m/2 has unit j's
incoming weights and the negated outgoing weights, so the network's output
is 0 for every input at init (our reading of the "mirrored LeCun"
initialization of Zhang et al. 2021, "When Expressivity Meets Trainability:
Fewer than n Neurons Can Work"; see `mirrored_kernel_init`). CReLU concatenates relu(h) and
relu(-h), and the Fourier-feature activation (Lewandowski et al. 2024, "deep
Fourier features") concatenates sin(h) and cos(h): for both, a layer's output
width doubles and the next fan-in doubles (`activation_copies`). `identity`
makes the MLP a deep linear network.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from trainability.settings import ConfigError, Integer, Number, Predicate, Setting

Params = Any


class Features(NamedTuple):
  """One hidden layer's features on a batch, (B, ..., units) each."""

  pre: jax.Array   # pre-activation: after the dense/conv layer and its norm layer
  post: jax.Array  # activation output (CReLU: twice the units of `pre`)


class Model(NamedTuple):
  """A pure model. `apply(params, state, x, train)` returns (logits, new_state).

  `features(params, state, x)` returns {hidden layer: Features} (eval mode),
  for the feature indicators (unit-sign entropy, dormant units, feature rank)
  and the unit resets; None for a model built with `from_module` alone.
  `hidden` names the hidden layers in order (the keys of `features`), and
  `copies` is `activation_copies` of their activation.
  `dense_inputs(params, state, x)`, for models made only of dense layers (an
  MLP without norm layers; None otherwise), returns {layer: (B, fan_in)
  input of that layer's kernel}, for per-example gradient norms without
  per-example gradients (estimators.dense_gradient_noise).
  """

  init: Callable[[jax.Array], tuple[Params, dict]]
  apply: Callable[..., tuple[jax.Array, dict]]
  dense_inputs: Callable[..., dict] | None = None
  features: Callable[..., dict] | None = None
  hidden: tuple[str, ...] = ()
  copies: int = 1


def activation_fn(name: str, leaky_slope: float = 0.01) -> Callable[[jax.Array], jax.Array]:
  fns = {
      "relu": nn.relu,
      "leaky_relu": lambda h: nn.leaky_relu(h, leaky_slope),
      "tanh": jnp.tanh,
      "identity": lambda h: h,
      "crelu": lambda h: jnp.concatenate([nn.relu(h), nn.relu(-h)], axis=-1),
      "swish": nn.swish,
      "softplus": nn.softplus,
      "fourier": lambda h: jnp.concatenate([jnp.sin(h), jnp.cos(h)], axis=-1),
  }
  if name not in fns:
    raise ValueError(f"activation: {name!r} is not accepted; choose one of {', '.join(fns)}")
  return fns[name]


def activation_copies(name: str) -> int:
  """How many outputs an activation makes per unit: 2 for crelu and fourier, else 1.

  The copies are concatenated on the last axis, copy-major: output index
  copy * units + unit.
  """
  return 2 if name in ("crelu", "fourier") else 1


def init_variance_gain(init: str, activation: str, leaky_slope: float = 0.01) -> float:
  """The factor g in Var(w) = g / fan_in for hidden kernels."""
  if init in ("lecun", "mirrored_lecun"):
    return 1.0
  if init not in ("kaiming", "kaiming_uniform"):
    raise ValueError(f"init: {init!r} is not accepted; choose one of {', '.join(INITS)}")
  return {
      "leaky_relu": 2.0 / (1.0 + leaky_slope**2),
      "tanh": 25.0 / 9.0,
      "identity": 1.0,
      "fourier": 1.0,
  }.get(activation, 2.0)


def init_problem(init: str, widths: Sequence[int]) -> str | None:
  """Why `init` cannot initialize dense hidden layers of `widths`; None if it can."""
  if init == "mirrored_lecun" and (not widths or widths[-1] % 2):
    return ("init: mirrored_lecun pairs the last hidden layer's units; it needs a hidden "
            f"layer of even width (got widths {tuple(widths)})")
  return None


def _kernel_init(gain: float, distribution: str = "normal"):
  return nn.initializers.variance_scaling(gain, "fan_in", distribution)


def mirrored_kernel_init(copies: int = 1, negate: bool = False):
  """LeCun normal with the layer's m units (negate=False: kernel columns) or the
  next layer's rows fed by them (negate=True, `copies` activation copies,
  copy-major) repeated in two halves: the second half is the first
  (incoming weights w_{j + m/2} = w_j) or its negation (outgoing
  v_{j + m/2} = -v_j). The variance is 1 / fan_in of the full layer.

  With both, units j and j + m/2 compute the same activation and their
  contributions to the output cancel: f(x; theta_0) = 0. Their gradients
  then are negatives of each other too, so at init the Jacobian of the
  pair's incoming weights has the rank of one unit's: the hidden layer's
  Jacobian has rank at most (m / 2) (d + 1) for inputs of dimension d.
  """
  lecun = _kernel_init(1.0)

  def init(key, shape, dtype=jnp.float32):
    full = lecun(key, shape, dtype)
    if negate:
      units = shape[0] // copies
      rows = full.reshape(copies, units, *shape[1:])[:, : units // 2]
      return jnp.concatenate([rows, -rows], axis=1).reshape(shape)
    half = full[..., : shape[-1] // 2]
    return jnp.concatenate([half, half], axis=-1)

  return init


class _Block(nn.Module):
  """Dense or 3x3 conv, optional norm, activation."""

  features: int
  conv: bool
  activation: str
  leaky_slope: float
  norm: str
  gain: float
  masked: bool = False
  mirrored: bool = False  # incoming weights in two equal halves (mirrored_kernel_init)
  distribution: str = "normal"  # of the kernel init: normal, or uniform (kaiming_uniform)

  @nn.compact
  def __call__(self, x, train: bool):
    if self.conv:
      h = Conv3x3(self.features, kernel_init=_kernel_init(self.gain, self.distribution),
                  name="conv")(x)
    else:
      kernel_init = (mirrored_kernel_init() if self.mirrored
                     else _kernel_init(self.gain, self.distribution))
      h = nn.Dense(self.features, kernel_init=kernel_init, name="dense")(x)
    if self.norm == "layernorm":
      axes = (-3, -2, -1) if self.conv else (-1,)
      h = nn.LayerNorm(reduction_axes=axes, feature_axes=-1, name="norm")(h)
    elif self.norm == "batchnorm":
      h = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                       name="norm")(h)
    out = activation_fn(self.activation, self.leaky_slope)(h)
    if self.masked:
      # 1 for a real unit, 0 for a padding unit of a narrower net embedded in this one.
      active = self.variable(ACTIVE_UNITS, "units", jnp.ones, (self.features,), jnp.float32)
      out = out * jnp.tile(active.value, activation_copies(self.activation))
    return out


class Conv3x3(nn.Module):
  """3x3 convolution, stride 1, SAME padding, NHWC; params as `nn.Conv`'s.

  Computed as nine shifted slices and one matmul (im2col), with the same
  result as `lax.conv_general_dilated`. XLA:CPU runs a convolution inside a
  loop body (our `lax.scan` over steps) over 20x slower than outside it
  (jax-ml/jax#12868), and vmapping a convolution over seeds turns it into a
  grouped convolution, slower still; slices and a batched matmul have neither
  problem.
  """

  features: int
  kernel_init: Callable = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x):
    cin = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (3, 3, cin, self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    h, w = x.shape[-3], x.shape[-2]
    padded = jnp.pad(x, [(0, 0)] * (x.ndim - 3) + [(1, 1), (1, 1), (0, 0)])
    patches = jnp.concatenate(
        [padded[..., i:i + h, j:j + w, :] for i in range(3) for j in range(3)], axis=-1)
    return patches @ kernel.reshape(9 * cin, self.features) + bias


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max pooling, stride 2, VALID (an odd last row/column is dropped).

  Equal to `nn.max_pool(x, (2, 2), strides=(2, 2))`, written as reshape + max:
  XLA lowers the gradient of `max_pool` to select-and-scatter, which is about
  5x slower on a CPU (more under vmap) than the gradient of a plain max.
  """
  *lead, h, w, c = x.shape
  x = x[..., : h // 2 * 2, : w // 2 * 2, :]
  return x.reshape(*lead, h // 2, 2, w // 2, 2, c).max(axis=(-4, -2))


class Network(nn.Module):
  """3x3 conv blocks (each followed by 2x2 max pooling), dense blocks, output.

  With no `channels` this is the MLP; the CNN has conv blocks and one dense
  block. Parameter names: conv_0 ..., hidden_0 ..., output.
  """

  widths: Sequence[int]
  num_classes: int
  channels: Sequence[int] = ()
  activation: str = "relu"
  leaky_slope: float = 0.01
  norm: str = "none"
  init_scheme: str = "kaiming"
  masked: bool = False  # dense blocks carry an ACTIVE_UNITS mask in the model state

  @nn.compact
  def __call__(self, x, train: bool = False):
    gain = init_variance_gain(self.init_scheme, self.activation, self.leaky_slope)
    mirrored = self.init_scheme == "mirrored_lecun"
    uniform = self.init_scheme == "kaiming_uniform"
    distribution = "uniform" if uniform else "normal"
    problem = init_problem(self.init_scheme, self.widths)
    if problem:
      raise ConfigError(problem)
    block = lambda features, conv, name, last=False: _Block(
        features, conv, self.activation, self.leaky_slope, self.norm, gain,
        masked=self.masked and not conv, mirrored=mirrored and last,
        distribution=distribution, name=name)
    for i, c in enumerate(self.channels):
      x = block(c, True, f"conv_{i}")(x, train)
      if x.shape[-3] >= 2 and x.shape[-2] >= 2:
        x = max_pool_2x2(x)
    x = x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.widths):
      x = block(width, False, f"hidden_{i}", last=i == len(self.widths) - 1)(x, train)
    if mirrored:
      output_init = mirrored_kernel_init(activation_copies(self.activation), negate=True)
    else:  # LeCun normal; kaiming_uniform: the hidden layers' init, as torch's
      output_init = _kernel_init(gain, "uniform") if uniform else _kernel_init(1.0)
    return nn.Dense(self.num_classes, kernel_init=output_init, name="output")(x)


def make_model(config, input_shape: Sequence[int], num_classes: int,
               unit_masks: bool = False) -> Model:
  """Builds the model a `Config` names, for inputs of shape (H, W, C).

  unit_masks: the dense hidden layers multiply their outputs by a 0/1 mask
  per unit held in the model state (`state[ACTIVE_UNITS]`, all ones at init),
  so that a narrower net can run embedded in this one (`trainability.sweep`).
  Needs norm "none": a norm layer would mix the padding units in.
  """
  if unit_masks and config.norm != "none":
    raise ValueError(f"norm: {config.norm!r} mixes all units; unit masks need norm 'none'")
  common = dict(num_classes=num_classes, activation=config.activation,
                leaky_slope=config.leaky_slope, norm=config.norm, init_scheme=config.init,
                masked=unit_masks)
  if config.model == "mlp":
    module = Network(widths=(config.width,) * config.depth, **common)
    hidden = [f"hidden_{i}" for i in range(config.depth)]
  elif config.model == "cnn":
    module = Network(widths=(config.width,), channels=tuple(config.channels), **common)
    hidden = [f"conv_{i}" for i in range(len(config.channels))] + ["hidden_0"]
  else:
    raise ValueError(f"model: {config.model!r} is not accepted; choose one of {', '.join(MODELS)}")
  model = from_module(module, input_shape)

  def captured(params, state, x):
    _, found = module.apply({"params": params, **state}, x, train=False,
                            capture_intermediates=True, mutable=["intermediates"])
    return found["intermediates"]

  def features(params, state, x):
    blocks, out = captured(params, state, x), {}
    for name in hidden:
      layer = blocks[name]
      inner = "norm" if "norm" in layer else ("conv" if "conv" in layer else "dense")
      out[name] = Features(layer[inner]["__call__"][0], layer["__call__"][0])
    return out

  model = model._replace(features=features, hidden=tuple(hidden),
                         copies=activation_copies(config.activation))
  if config.model == "mlp" and config.norm == "none":
    def dense_inputs(params, state, x):
      blocks = captured(params, state, x)
      outputs = [blocks[n]["__call__"][0] for n in hidden]
      return dict(zip(hidden + ["output"], [x.reshape(x.shape[0], -1)] + outputs))

    model = model._replace(dense_inputs=dense_inputs)
  return model


def from_module(module: nn.Module, input_shape: Sequence[int]) -> Model:
  """Wraps a linen module with signature `(x, train)` as a pure Model."""
  dummy = jnp.zeros((1, *input_shape), jnp.float32)

  def init(key):
    variables = module.init(key, dummy, train=False)
    params = variables["params"]
    state = {k: v for k, v in variables.items() if k != "params"}
    return params, state

  def apply(params, state, x, train: bool = False):
    variables = {"params": params, **state}
    if train and state:
      logits, new_state = module.apply(variables, x, train=True, mutable=list(state))
      return logits, dict(new_state)
    return module.apply(variables, x, train=train), state

  return Model(init, apply)


ACTIVE_UNITS = "active_units"  # the model-state collection of unit masks
MODELS = ("mlp", "cnn")
ACTIVATIONS = ("relu", "leaky_relu", "tanh", "identity", "crelu", "swish", "softplus",
               "fourier")
NORMS = ("none", "layernorm", "batchnorm")
INITS = ("kaiming", "lecun", "mirrored_lecun", "kaiming_uniform")


def _channels_problem(value):
  if not value or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in value):
    return "give positive integers, e.g. 16,32"
  return None


SETTINGS = (
    Setting("model", "mlp", "model family", str, MODELS),
    Setting("width", 256, "hidden units per layer (mlp) / of the dense layer (cnn)", int,
            check=Integer(1)),
    Setting("depth", 2, "number of hidden layers (mlp)", int, check=Integer(0)),
    Setting("channels", (16, 32), "cnn: channels of each 3x3 conv layer, comma separated",
            tuple, check=Predicate(_channels_problem)),
    Setting("activation", "relu", "hidden activation", str, ACTIVATIONS),
    Setting("leaky_slope", 0.01, "leaky_relu: negative slope", float, check=Number(0.0, 1.0)),
    Setting("norm", "none", "normalization layer after each hidden layer", str, NORMS),
    Setting("init", "kaiming", "weight init of hidden layers (output layer: lecun); "
            "mirrored_lecun: lecun, the last hidden layer's units in pairs (w, v), (w, -v), "
            "so the network is 0 at init (needs an even width); kaiming_uniform: torch's "
            "kaiming_uniform_ on every layer, the output layer included (the reference "
            "code's init)", str, INITS),
)
