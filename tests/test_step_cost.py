"""The compiled optimizer step reads parameter-sized buffers no more often
than its design needs.

Counted from XLA's cost analysis of the compiled step (bytes accessed over the
bytes of one parameter-sized buffer), not from timing: deterministic, and
blind to the machine's load. A hypergradient step adds to its base optimizer's
passes the reads of the hypergradient's reduction (``g`` and ``D_{t-1}``, or
the moments ``D_{t-1}`` is recomputed from) and, where ``D_{t-1}`` is stored,
its write. Anything more (a buffer copied before an in-place overwrite, a
reduction that XLA could not share, a direction materialised twice) shows up
here as an extra pass.

The counts are XLA's CPU backend's (jax 0.10.2): other backends fuse
differently, and a new XLA may too (then re-derive them with
``hypergrad-bench cost --no-time --what update``, whose MiB/step column is
these passes times the parameters' MiB).
"""

import jax
import jax.numpy as jnp
import optax
import pytest

import hypergrad_optax as hgo

_ADAM = pytest.mark.standard_promotion  # optax's Adam is not strict-clean

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu",
                                reason="counts of XLA's CPU fusions")

# Moderately sized: the scalars' bytes stay far below one pass. Two leaves of
# one shape, as in a transformer's layers: XLA then shares what it computes
# for one with the other, which once materialised Adam-HD's scalars as
# parameter-sized arrays.
_PARAMS = {"w0": jnp.zeros((256, 512)), "b0": jnp.zeros(512),
           "w1": jnp.zeros((512, 384)), "b1": jnp.zeros(384),
           "w2": jnp.zeros((512, 384)), "b2": jnp.zeros(384)}


def passes(tx: optax.GradientTransformation) -> float:
  """Bytes one compiled, donated update + apply moves, in parameter sizes."""
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = jax.eval_shape(tx.init, _PARAMS)
  analysis = jax.jit(step, donate_argnums=(0, 1)).lower(
      _PARAMS, state, _PARAMS).compile().cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  size = sum(p.size * p.dtype.itemsize for p in jax.tree.leaves(_PARAMS))
  return analysis["bytes accessed"] / size


# Base: Adam reads g, m, v, θ and writes m, v, θ, in three fusions on CPU
# (m and v are re-read by the θ update): 10; SGD: 3; momentum SGD: 6.
@pytest.mark.parametrize("make_base,base_passes", [
    pytest.param(lambda: optax.adam(1e-3), 10, id="adam", marks=_ADAM),
    pytest.param(lambda: optax.sgd(1e-3), 3, id="sgd"),
    pytest.param(lambda: optax.sgd(1e-3, momentum=0.9), 6, id="sgdm"),
])
def test_base_passes(make_base, base_passes):
  # The yardstick of the counts below.
  assert passes(make_base()) == pytest.approx(base_passes, abs=0.1)


_CASES = [
    pytest.param(lambda: hgo.adam_hd(1e-3, 1e-7), 13,
                 id="adam_hd: + g, m, v read by g·d_{t-1}", marks=_ADAM),
    pytest.param(lambda: hgo.adam_hd(1e-3, 1e-7, delayed=True), 13,
                 id="adam_hd-delayed: the same reads", marks=_ADAM),
    pytest.param(lambda: hgo.sgd_hd(1e-3, 1e-3), 7,
                 id="sgd_hd: + g, d_{t-1} read by g·d_{t-1}; g copied to d_t"),
    pytest.param(lambda: hgo.sgd_hd(1e-3, 1e-3, delayed=True), 7,
                 id="sgd_hd-delayed"),
    pytest.param(lambda: hgo.sgd_hd(1e-3, 1e-3, momentum=0.9), 8,
                 id="sgdm_hd: + g, v read"),
    # The wrapper's rule (multiplicative, guarded) reads g·ũ, ‖g‖ and ‖ũ‖:
    # one variadic reduction per leaf, 2 reads (as three reductions XLA's CPU
    # backend read g and ũ once each per sum: 4). Adam's direction, fused
    # into the θ pass in optax.adam, is materialised (read m, v, write) and
    # read by the θ pass and by the copy into ũ_t (read, write): XLA
    # recomputes the cheap -lr scaling in both readers rather than write ũ
    # once (no multi-output fusion on CPU). 10 + 2 + 4 = 16. The relative
    # step bound (the default max_relative_step) reads θ and ũ_t for their
    # norms, one more variadic reduction: 2 more, 18.
    pytest.param(lambda: hgo.hypergradient(optax.adam(1e-3), horizon=1,
                                           max_relative_step=None), 16,
                 id="hypergradient(adam, horizon=1, no bound)", marks=_ADAM),
    pytest.param(lambda: hgo.hypergradient(optax.adam(1e-3), horizon=1), 18,
                 id="hypergradient(adam, horizon=1)", marks=_ADAM),
    pytest.param(lambda: hgo.hypergradient(optax.adam(1e-3), horizon=1,
                                           delayed=True), 18,
                 id="hypergradient(adam, horizon=1)-delayed", marks=_ADAM),
    # A longer horizon (the default 'run', or a fixed one): the rule reads
    # g·Z, ‖Z‖ and ‖g‖ along the tangent and the guard g·d and ‖d‖ along the
    # last update: the same one reduction now reads Z too (1 more; as five
    # reductions: 7 reads); the tangent's update reads Z_{t-1} and ũ_t and
    # writes Z_t (3 more). 16 + 1 + 3 = 20; with the bound 22.
    pytest.param(lambda: hgo.hypergradient(optax.adam(1e-3),
                                           max_relative_step=None), 20,
                 id="hypergradient(adam, no bound)", marks=_ADAM),
    pytest.param(lambda: hgo.hypergradient(optax.adam(1e-3)), 22,
                 id="hypergradient(adam)", marks=_ADAM),
    pytest.param(lambda: hgo.hypergradient(optax.adam(1e-3), delayed=True),
                 22, id="hypergradient(adam)-delayed", marks=_ADAM),
    pytest.param(lambda: hgo.hypergradient(optax.adam(1e-3), horizon=300), 22,
                 id="hypergradient(adam, horizon=300)", marks=_ADAM),
]


@pytest.mark.parametrize("make_hd,hd_passes", _CASES)
def test_parameter_sized_passes(make_hd, hd_passes):
  assert passes(make_hd()) == pytest.approx(hd_passes, abs=0.1), (
      "the compiled step moves more (or fewer) parameter-sized buffers than "
      "its design needs; see this module's docstring")
