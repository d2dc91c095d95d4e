"""The paper's models as pure functions with PyTorch-default initialisation.

``torch.nn.Linear`` and ``torch.nn.Conv2d`` draw weights and biases from
``U(-1/√fan_in, 1/√fan_in)`` (Kaiming-uniform with ``a=√5``); the
reference runs use that, so do we.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

Params = Any


class Model(NamedTuple):
  """``init(key, input_shape) -> params``; ``apply(params, x) -> logits``."""
  name: str
  init: Callable[[jax.Array, Sequence[int]], Params]
  apply: Callable[[Params, jax.Array], jax.Array]


def _uniform(key, shape, fan_in):
  bound = 1.0 / np.sqrt(fan_in)
  return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def init_linear(key, fan_in: int, fan_out: int) -> Params:
  kw, kb = jax.random.split(key)
  return {"w": _uniform(kw, (fan_in, fan_out), fan_in),
          "b": _uniform(kb, (fan_out,), fan_in)}


def init_conv(key, in_channels: int, out_channels: int, size: int) -> Params:
  kw, kb = jax.random.split(key)
  fan_in = in_channels * size * size
  return {"w": _uniform(kw, (size, size, in_channels, out_channels), fan_in),
          "b": _uniform(kb, (out_channels,), fan_in)}


_ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jnp.tanh}


def mlp(hidden: Sequence[int], num_classes: int = 10,
        activation: str = "relu") -> Model:
  """Flattened input, ReLU (or tanh) hidden layers.

  Args:
    hidden: the hidden layers' widths; ``()`` gives logistic regression.
    num_classes: the number of outputs (1 for a scalar regression).
    activation: ``'relu'`` or ``'tanh'``.

  Returns:
    The :class:`Model`.
  """
  if activation not in _ACTIVATIONS:
    raise ValueError(f"activation must be one of {', '.join(_ACTIVATIONS)}; "
                     f"got {activation!r}.")
  act = _ACTIVATIONS[activation]

  def init(key, input_shape):
    sizes = [int(np.prod(input_shape))] + list(hidden) + [num_classes]
    keys = jax.random.split(key, len(sizes) - 1)
    return [init_linear(k, a, b) for k, a, b in zip(keys, sizes, sizes[1:])]

  def apply(params, x):
    x = x.reshape(x.shape[0], -1)
    for layer in params[:-1]:
      x = act(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]

  name = "logreg" if not hidden else "mlp-" + "-".join(map(str, hidden))
  return Model(name, init, apply)


def _conv(layer, x):
  y = jax.lax.conv_general_dilated(
      x, layer["w"], window_strides=(1, 1), padding="SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return y + layer["b"]


def _max_pool(x):
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1),
                               (1, 2, 2, 1), "VALID")


def cnn(channels: Sequence[int] = (16, 32), hidden: int = 128,
        num_classes: int = 10) -> Model:
  """A small VGG-like stand-in: [3x3 conv, ReLU, 2x2 max-pool] x n, 2 dense."""

  def init(key, input_shape):
    height, width, in_channels = input_shape
    keys = jax.random.split(key, len(channels) + 2)
    convs = []
    for k, out_channels in zip(keys, channels):
      convs.append(init_conv(k, in_channels, out_channels, 3))
      in_channels = out_channels
      height, width = height // 2, width // 2
    flat = height * width * in_channels
    return {"convs": convs,
            "dense": [init_linear(keys[-2], flat, hidden),
                      init_linear(keys[-1], hidden, num_classes)]}

  def apply(params, x):
    for layer in params["convs"]:
      x = _max_pool(jax.nn.relu(_conv(layer, x)))
    x = x.reshape(x.shape[0], -1)
    first, last = params["dense"]
    x = jax.nn.relu(x @ first["w"] + first["b"])
    return x @ last["w"] + last["b"]

  return Model("cnn", init, apply)


def _group_norm(layer, x, groups=4, eps=1e-5):
  n, h, w, c = x.shape
  g = x.reshape(n, h, w, groups, c // groups)
  mean = g.mean(axis=(1, 2, 4), keepdims=True)
  var = g.var(axis=(1, 2, 4), keepdims=True)
  x = ((g - mean) * jax.lax.rsqrt(var + eps)).reshape(n, h, w, c)
  return x * layer["scale"] + layer["bias"]


def _init_norm(channels):
  return {"scale": jnp.ones((channels,), jnp.float32),
          "bias": jnp.zeros((channels,), jnp.float32)}


def resnet_cnn(channels: Sequence[int] = (16, 32), num_classes: int = 10,
               groups: int = 4) -> Model:
  """A small residual CNN with GroupNorm (no batch statistics to carry).

  A 3x3 stem, then per stage one pre-activation residual block
  ``x + conv(relu(norm(conv(relu(norm(x))))))`` and a 2x2 max-pool, a
  1x1 projection where the width grows, global average pooling and a dense
  classifier.

  Args:
    channels: the width of each stage.
    num_classes: the number of classes.
    groups: GroupNorm's number of groups (must divide every width).

  Returns:
    The :class:`Model`.
  """
  for c in channels:
    if c % groups:
      raise ValueError(f"channels: {c} is not a multiple of groups={groups}.")

  def init(key, input_shape):
    in_channels = input_shape[-1]
    keys = iter(jax.random.split(key, 3 * len(channels) + 2))
    params = {"stem": init_conv(next(keys), in_channels, channels[0], 3),
              "stages": []}
    width = channels[0]
    for out in channels:
      stage = {"proj": (init_conv(next(keys), width, out, 1)
                        if out != width else None),
               "norm1": _init_norm(out), "conv1": init_conv(next(keys), out,
                                                            out, 3),
               "norm2": _init_norm(out), "conv2": init_conv(next(keys), out,
                                                            out, 3)}
      if stage["proj"] is None:
        del stage["proj"]
        next(keys)
      params["stages"].append(stage)
      width = out
    params["norm"] = _init_norm(width)
    params["head"] = init_linear(next(keys), width, num_classes)
    return params

  def apply(params, x):
    x = _conv(params["stem"], x)
    for stage in params["stages"]:
      if "proj" in stage:
        x = _conv(stage["proj"], x)
      y = _conv(stage["conv1"],
                jax.nn.relu(_group_norm(stage["norm1"], x, groups)))
      y = _conv(stage["conv2"],
                jax.nn.relu(_group_norm(stage["norm2"], y, groups)))
      x = _max_pool(x + y)
    x = jax.nn.relu(_group_norm(params["norm"], x, groups)).mean(axis=(1, 2))
    return x @ params["head"]["w"] + params["head"]["b"]

  return Model("resnet-gn", init, apply)


def transformer(vocab_size: int = 128, context: int = 128, width: int = 128,
                depth: int = 4, heads: int = 4) -> Model:
  """A decoder-only, pre-LayerNorm, causal character transformer (Flax NNX).

  Token and learned position embeddings, ``depth`` blocks of
  ``x + attn(LN(x))`` and ``x + MLP(LN(x))`` (GELU, 4x width), a final
  LayerNorm and a linear read-out. The defaults have about 0.83M parameters.
  ``init`` and ``apply`` are pure functions of a plain nested dict of arrays
  (``nnx.split`` / ``nnx.merge`` inside), so the model vmaps and jits like
  the others.

  Args:
    vocab_size: the number of symbols (128: ASCII).
    context: the longest input sequence.
    width: the model width.
    depth: the number of blocks.
    heads: the attention heads (must divide ``width``).

  Returns:
    The :class:`Model`; ``apply(params, tokens[b, t])`` gives logits
    ``[b, t, vocab_size]``.
  """
  from flax import nnx  # pylint: disable=import-outside-toplevel

  if width % heads:
    raise ValueError(f"heads: {heads} does not divide width={width}.")

  class Block(nnx.Module):

    def __init__(self, rngs):
      self.ln1 = nnx.LayerNorm(width, rngs=rngs)
      self.attn = nnx.MultiHeadAttention(
          num_heads=heads, in_features=width, decode=False, rngs=rngs)
      self.ln2 = nnx.LayerNorm(width, rngs=rngs)
      self.fc1 = nnx.Linear(width, 4 * width, rngs=rngs)
      self.fc2 = nnx.Linear(4 * width, width, rngs=rngs)

    def __call__(self, x, mask):
      x = x + self.attn(self.ln1(x), mask=mask)
      return x + self.fc2(jax.nn.gelu(self.fc1(self.ln2(x))))

  class Transformer(nnx.Module):

    def __init__(self, rngs):
      self.embed = nnx.Embed(vocab_size, width, rngs=rngs)
      self.pos = nnx.Param(
          0.02 * jax.random.normal(rngs.params(), (context, width)))
      self.blocks = nnx.List([Block(rngs) for _ in range(depth)])
      self.ln = nnx.LayerNorm(width, rngs=rngs)
      self.head = nnx.Linear(width, vocab_size, rngs=rngs)

    def __call__(self, tokens):
      x = self.embed(tokens) + self.pos[:tokens.shape[1]]
      mask = nnx.make_causal_mask(tokens)
      for block in self.blocks:
        x = block(x, mask)
      return self.head(self.ln(x))

  graphdef, _ = nnx.split(nnx.eval_shape(
      lambda: Transformer(nnx.Rngs(0))))

  def init(key, input_shape):
    del input_shape
    return nnx.to_pure_dict(nnx.split(Transformer(nnx.Rngs(key)))[1])

  def apply(params, x):
    return nnx.merge(graphdef, nnx.State(params))(x)

  return Model(f"transformer-{depth}x{width}", init, apply)


def cross_entropy(model: Model) -> Callable[[Params, jax.Array, jax.Array],
                                            jax.Array]:
  """Mean softmax cross-entropy of ``model`` (the paper's training loss)."""
  def loss(params, x, y):
    logits = model.apply(params, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return loss


def squared_error(model: Model) -> Callable[[Params, jax.Array, jax.Array],
                                            jax.Array]:
  """Mean squared error of a one-output ``model`` against float targets."""
  def loss(params, x, y):
    return jnp.mean((model.apply(params, x)[:, 0] - y) ** 2)
  return loss


def next_char(model: Model) -> Callable[[Params, jax.Array, jax.Array],
                                        jax.Array]:
  """Mean next-symbol cross-entropy in nats per character.

  ``x`` is ``[b, t + 1]`` tokens: the model reads ``x[:, :-1]`` and predicts
  ``x[:, 1:]``; ``y`` is ignored.
  """
  def loss(params, x, y):
    del y
    logits = model.apply(params, x[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, x[:, 1:]).mean()
  return loss


LOSSES = {"xent": cross_entropy, "mse": squared_error, "lm": next_char}
