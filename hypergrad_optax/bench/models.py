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


def mlp(hidden: Sequence[int], num_classes: int = 10) -> Model:
  """Flattened input, ReLU hidden layers; ``hidden=()``: logistic regression."""

  def init(key, input_shape):
    sizes = [int(np.prod(input_shape))] + list(hidden) + [num_classes]
    keys = jax.random.split(key, len(sizes) - 1)
    return [init_linear(k, a, b) for k, a, b in zip(keys, sizes, sizes[1:])]

  def apply(params, x):
    x = x.reshape(x.shape[0], -1)
    for layer in params[:-1]:
      x = jax.nn.relu(x @ layer["w"] + layer["b"])
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


def cross_entropy(model: Model) -> Callable[[Params, jax.Array, jax.Array],
                                            jax.Array]:
  """Mean softmax cross-entropy of ``model`` (the paper's training loss)."""
  def loss(params, x, y):
    logits = model.apply(params, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return loss
