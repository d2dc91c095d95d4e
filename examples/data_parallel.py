"""Data-parallel training of a Flax (nnx) MLP with a hypergradient optimizer.

The batch is split over all local devices, the model and optimizer state are
replicated, and ``jax.jit`` inserts the gradient all-reduce: each device then
computes the same hypergradient from the same (global) gradient, so the
adapted rate stays identical everywhere with no ``axis_name`` needed. The
adapted learning rate is logged with ``hgo.get_learning_rate``.

On a CPU, fake 8 devices (must be set before JAX starts)::

  XLA_FLAGS=--xla_force_host_platform_device_count=8 \\
      python examples/data_parallel.py

The task is a synthetic one (labels from a random teacher network), so the
script needs nothing beyond this package and Flax.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

import hypergrad_optax as hgo


class MLP(nnx.Module):
  """A two-hidden-layer ReLU classifier."""

  def __init__(self, din, dhidden, dout, *, rngs):
    self.layer1 = nnx.Linear(din, dhidden, rngs=rngs)
    self.layer2 = nnx.Linear(dhidden, dhidden, rngs=rngs)
    self.head = nnx.Linear(dhidden, dout, rngs=rngs)

  def __call__(self, x):
    x = jax.nn.relu(self.layer1(x))
    return self.head(jax.nn.relu(self.layer2(x)))


def teacher_data(key, n, din, classes):
  """Inputs and the labels a random teacher network gives them."""
  key_x, key_teacher = jax.random.split(key)
  x = jax.random.normal(key_x, (n, din))
  teacher = MLP(din, 64, classes, rngs=nnx.Rngs(key_teacher))
  return x, jnp.argmax(teacher(x), axis=-1)


def loss_fn(model, x, y):
  logits = model(x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@nnx.jit
def train_step(model, optimizer, x, y):
  loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
  optimizer.update(model, grads)
  return loss


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--batch-size", type=int, default=256,
                      help="global batch, split over the devices")
  parser.add_argument("--learning-rate", type=float, default=1e-4,
                      help="Adam's rate; deliberately small, adapted upward")
  parser.add_argument("--hyper-lr", type=float, default=0.1)
  parser.add_argument("--log-every", type=int, default=50)
  args = parser.parse_args(argv)

  devices = jax.local_devices()
  if args.batch_size % len(devices):
    parser.error(f"--batch-size must be a multiple of {len(devices)} devices")
  mesh = jax.make_mesh((len(devices),), ("data",), devices=devices)
  replicated = NamedSharding(mesh, P())
  split = NamedSharding(mesh, P("data"))

  din, classes = 32, 10
  x_all, y_all = teacher_data(jax.random.key(0), 64 * args.batch_size, din,
                              classes)
  model = MLP(din, 256, classes, rngs=nnx.Rngs(1))
  optimizer = nnx.Optimizer(
      model, hgo.hypergradient(optax.adam(args.learning_rate), args.hyper_lr),
      wrt=nnx.Param)
  # Replicate the model and the optimizer state (rate included) on every
  # device; the jitted step keeps them so.
  state = jax.device_put(nnx.state((model, optimizer)), replicated)
  nnx.update((model, optimizer), state)

  print(f"{len(devices)} devices, global batch {args.batch_size} "
        f"({args.batch_size // len(devices)} per device)")
  start = time.perf_counter()
  batches = len(x_all) // args.batch_size
  for step in range(1, args.steps + 1):
    i = (step - 1) % batches * args.batch_size
    x, y = (jax.device_put(a[i:i + args.batch_size], split)
            for a in (x_all, y_all))
    loss = train_step(model, optimizer, x, y)
    if step == 1 or step % args.log_every == 0 or step == args.steps:
      rate = hgo.get_learning_rate(optimizer.opt_state,
                                   base_learning_rate=args.learning_rate)
      print(f"step {step:5d}  loss {float(loss):.4f}  "
            f"learning rate {float(rate[...]):.3e}")
  print(f"done in {time.perf_counter() - start:.1f}s; parameters on "
        f"{len(model.head.kernel[...].sharding.device_set)} devices")


if __name__ == "__main__":
  main()
