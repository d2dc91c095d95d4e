"""Fast end-to-end checks that every public optimizer trains."""

import jax
import jax.numpy as jnp
import optax
import pytest

import hypergrad_optax as hgo

_ADAM = pytest.mark.standard_promotion  # optax's Adam is not strict-clean

OPTIMIZERS = [
    pytest.param(lambda: hgo.hypergradient(optax.sgd(0.1)), id="wrap-sgd"),
    pytest.param(lambda: hgo.hypergradient(optax.adam(0.1)), id="wrap-adam",
                 marks=_ADAM),
    pytest.param(lambda: hgo.sgd_hd(0.01, hyper_lr=1e-4), id="sgd_hd"),
    pytest.param(lambda: hgo.sgd_hd(0.01, hyper_lr=1e-4, momentum=0.9,
                                    nesterov=True), id="sgdn_hd"),
    pytest.param(lambda: hgo.adam_hd(0.01, hyper_lr=1e-4), id="adam_hd",
                 marks=_ADAM),
    pytest.param(lambda: hgo.adamw_hd(0.01, hyper_lr=1e-4), id="adamw_hd",
                 marks=_ADAM),
]


@pytest.mark.parametrize("make_tx", OPTIMIZERS)
def test_quadratic_loss_decreases(make_tx):
  tx = make_tx()
  target = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
  loss = lambda p: optax.tree.norm(optax.tree.sub(p, target), squared=True)
  params = optax.tree.zeros_like(target)
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(500):
    params, state = step(params, state)
  assert loss(params) < 1e-2 * loss(optax.tree.zeros_like(target))
