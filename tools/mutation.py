"""A small mutation run: plant plausible bugs one at a time, run tests, report.

Each mutant is a string replacement in one file of ``hypergrad_optax/`` (the
text to find must occur exactly once, so a refactor that moves it makes the
mutant *stale*, reported as such, rather than silently testing nothing). For
each mutant the file is patched, pytest is run in a subprocess on the chosen
selection, and the file is restored (also on Ctrl-C). A mutant is *caught*
when pytest fails, *missed* when it passes.

Usage (from the repository root, with the package importable)::

  python tools/mutation.py --list                 # the mutants
  python tools/mutation.py                        # each against its own tests
  python tools/mutation.py --full                 # each against the default suite
  python tools/mutation.py -k clamp -k structure  # mutants whose name matches
  python tools/mutation.py --tests tests/test_rules.py   # a given selection

Never collected by pytest (it lives outside ``tests/``). Run it on a clean
working tree: it edits the package in place for the duration of each run.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "hypergrad_optax"


@dataclasses.dataclass(frozen=True)
class Mutant:
  name: str
  path: str  # relative to hypergrad_optax/
  old: str
  new: str
  tests: tuple[str, ...]  # the tests expected to catch it (fast selection)


M = Mutant
MUTANTS = (
    # --- the six survivors of issue 13's run
    M("wrapper ignores initial_scale", "_wrapper.py",
      "initial_rate=initial_scale,", "initial_rate=1.0,",
      ("tests/test_state_arguments.py",)),
    M("adam previous direction without the count clamp", "_aliases.py",
      "count = jnp.maximum(adam_state.count, 1)", "count = adam_state.count",
      ("tests/test_state_arguments.py",)),
    M("adapt_hyperparams drops extra args", "_hyperparams.py",
      "params, **extra_args)\n\n  def jvp", "params)\n\n  def jvp",
      ("tests/test_state_arguments.py",)),
    M("adapt_hyperparams ignores tangent_dtype", "_hyperparams.py",
      "optax.tree.zeros_like(params, dtype=tangent_dtype)",
      "optax.tree.zeros_like(params)",
      ("tests/test_state_arguments.py",)),
    M("check_same_structure disabled", "_validation.py",
      "  if got != expected:\n    raise ValueError(",
      "  if False:\n    raise ValueError(",
      ("tests/test_state_arguments.py",)),
    M("wrapper drops hyper_optimizer", "_wrapper.py",
      "overshoot_guard=overshoot_guard, hyper_optimizer=hyper_optimizer)",
      "overshoot_guard=overshoot_guard, hyper_optimizer=None)",
      ("tests/test_state_arguments.py",)),
    M("wrapper: a custom rule skips the guard and bounds", "_wrapper.py",
      "return rules_lib.guarded(rule, overshoot_guard=overshoot_guard,\n"
      "                           min_rate=min_scale, max_rate=max_scale)",
      "return rule", ("tests/test_rules.py",)),
    M("wrapper ignores horizon", "_wrapper.py",
      "tangent_decay=1.0 - 1.0 / horizon,", "tangent_decay=0.0,",
      ("tests/test_rules.py",)),
    M("overshoot cap active at beta = 0", "rules.py",
      "jnp.asarray(hyper_lr) > 0)", "jnp.asarray(True))",
      ("tests/test_rules.py",)),
    # --- rules
    M("overshoot cap at A, not 3A", "rules.py",
      "(h > OVERSHOOT_RATIO * bound_before)", "(h > bound_before)",
      ("tests/test_core_numerics.py", "tests/test_rules.py")),
    M("overshoot cap never acts", "rules.py",
      "return jnp.where(overshoot, jnp.minimum(p, secant), p)",
      "return p", ("tests/test_core_numerics.py", "tests/test_rules.py")),
    M("overshoot cap at the full secant r A / h", "rules.py",
      "jnp.where(overshoot, bound_before + h, 1)",
      "jnp.where(overshoot, h, 1)",
      ("tests/test_core_numerics.py", "tests/test_rules.py")),
    M("multiplicative feedback without r", "rules.py",
      "lambda r, c: r * c, rate, cosine(signals)",
      "lambda r, c: c, rate, cosine(signals)",
      ("tests/test_rules.py",)),
    M("cosine without the norm", "rules.py",
      "h / jnp.where(norm > 0, norm, 1), 0)", "h, 0)",
      ("tests/test_rules.py",)),
    M("sgd step ascends", "rules.py",
      "-jnp.asarray(hyper_lr, g.dtype) * g", "jnp.asarray(hyper_lr, g.dtype) * g",
      ("tests/test_rules.py",)),
    M("keep_finite keeps NaN", "rules.py",
      "jnp.where(jnp.isfinite(new), new, old)", "new",
      ("tests/test_rules.py",)),
    M("bounds ignore max", "rules.py",
      "new = jnp.minimum(new, jnp.asarray(max_rate, new.dtype))", "pass",
      ("tests/test_rules.py",)),
    M("log-rate step without bias correction", "rules.py",
      "mu_hat = optax.tree.bias_correction(mu, b1, count)", "mu_hat = mu",
      ("tests/test_rules.py",)),
    M("log-rate step exp instead of expm1", "rules.py",
      "return r * jnp.expm1(-step.astype(dtype))",
      "return r * jnp.exp(-step.astype(dtype))",
      ("tests/test_rules.py",)),
    M("stateful hyper step not skipped on NaN", "rules.py",
      "  if per_entry:\n    return proposed, new_state\n  finite",
      "  if True:\n    return proposed, new_state\n  finite",
      ("tests/test_rules.py", "tests/test_hyper_optimizer.py")),
    # --- core
    M("tangent decay without the rate ratio", "_core.py",
      "jnp.where(new > 0, old / jnp.where(new > 0, new, 1), 0) * decay",
      "jnp.where(new > 0, 1.0, 0) * decay",
      ("tests/test_rules.py",)),
    M("curvature correction dropped", "_core.py",
      "                                tangent_decay, granularity, correction)",
      "                                tangent_decay, granularity, None)",
      ("tests/test_rules.py",)),
    M("curvature correction without the rate", "_core.py",
      "correction = scale_by_rate(rate, jhz, sign=sign",
      "correction = scale_by_rate(1.0, jhz, sign=sign",
      ("tests/test_rules.py",)),
    M("rate moved after use", "_core.py",
      "new_updates = scale_by_rate(rate, new_direction",
      "new_updates = scale_by_rate(old_rate, new_direction",
      ("tests/test_core_numerics.py",)),
    M("hypergradient sign flipped", "_core.py",
      "hypergradient=jax.tree.map(lambda x: sign * x, h)",
      "hypergradient=jax.tree.map(lambda x: -sign * x, h)",
      ("tests/test_core_numerics.py",)),
    M("previous grad norm not kept", "_core.py",
      "      grad_norm = signals.grad_norm\n", "      pass\n",
      ("tests/test_core_numerics.py",)),
    M("buffer dtype ignored", "_core.py",
      "optax.tree.zeros_like(params, dtype=buffer_dtype)",
      "optax.tree.zeros_like(params)", ("tests/test_core_numerics.py",)),
    M("weight decay not applied", "_core.py",
      "lambda g, p: g + (weight_decay * p).astype(g.dtype)",
      "lambda g, p: g", ("tests/test_core_numerics.py",)),
    M("psum dropped", "_tree.py",
      "return jax.lax.psum(per_leaf, axis_name)", "return per_leaf",
      ("tests/test_state_arguments.py",)),
    # --- aliases
    M("adam direction without eps", "_aliases.py",
      "return m_hat / (jnp.sqrt(v_hat) + eps_now.astype(v.dtype))",
      "return m_hat / jnp.sqrt(v_hat)", ("tests/test_core_numerics.py",)),
    M("momentum previous direction is the gradient", "_aliases.py",
      "previous_direction_fn = None if nesterov else _trace_direction",
      "previous_direction_fn = None if True else _trace_direction",
      ("tests/test_state_arguments.py",)),
    # --- adapt_hyperparams
    M("adapt_hyperparams ignores reparametrization", "_hyperparams.py",
      "kinds.update(overrides or {})", "pass",
      ("tests/test_hyperparams.py", "tests/test_state_arguments.py")),
    M("adapt_hyperparams one beta for all names", "_hyperparams.py",
      "-jnp.asarray(rates[n], h[n].dtype) * h[n]",
      "-jnp.asarray(rates[names[0]], h[n].dtype) * h[n]",
      ("tests/test_state_arguments.py",)),
    M("adapt_hyperparams psum dropped", "_hyperparams.py",
      "dtype, axis_name)\n          for n, tangent", "dtype)\n          for n, tangent",
      ("tests/test_state_arguments.py",)),
    M("adapt_hyperparams no clip", "_hyperparams.py",
      "return phi if limit is None else jnp.clip(phi, -limit, limit)",
      "return phi", ("tests/test_hyperparams.py",)),
    M("adapt_hyperparams keeps NaN tangents", "_hyperparams.py",
      "jnp.where(jnp.isfinite(d) | ~jnp.isfinite(u), d,",
      "jnp.where(True, d,", ("tests/test_adapt_zero_gradient.py",
                              "tests/test_hyperparams.py")),
    # --- logging
    M("get_learning_rate schedule at count, not count - 1", "_logging.py",
      "base_learning_rate(jnp.maximum(state.count - 1, 0))",
      "base_learning_rate(state.count)", ("tests/test_interop.py",)),
)


def _run_pytest(selection, extra):
  cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
         *extra, *selection]
  done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                        check=False)
  last = (done.stdout.strip().splitlines() or [""])[-1]
  return done.returncode, last


def run(mutants, selection=None, full=False, extra=()):
  """Plants each mutant, runs the tests; returns [(mutant, outcome, line)]."""
  results = []
  for mutant in mutants:
    path = PKG / mutant.path
    original = path.read_text()
    if original.count(mutant.old) != 1:
      results.append((mutant, "stale", f"found {original.count(mutant.old)}x"))
      continue
    tests = (["tests"] if full else list(selection or mutant.tests)
             or ["tests"])
    start = time.time()
    try:
      path.write_text(original.replace(mutant.old, mutant.new))
      code, line = _run_pytest(tests, extra)
    finally:
      path.write_text(original)
    outcome = {0: "MISSED", 5: "no tests"}.get(code, "caught")
    results.append((mutant, outcome, f"{line} ({time.time() - start:.0f}s)"))
    print(f"{outcome:8s} {mutant.name}: {line}", flush=True)
  return results


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("-k", action="append", default=[],
                      help="run only mutants whose name contains this")
  parser.add_argument("--tests", nargs="*", help="pytest selection for all")
  parser.add_argument("--full", action="store_true",
                      help="run the default suite against every mutant")
  parser.add_argument("--list", action="store_true")
  args, extra = parser.parse_known_args(argv)
  mutants = [m for m in MUTANTS
             if not args.k or any(k in m.name for k in args.k)]
  if args.list:
    for m in mutants:
      print(f"{m.path:16s} {m.name}")
    return 0
  results = run(mutants, args.tests, args.full, extra)
  missed = [m.name for m, outcome, _ in results if outcome != "caught"]
  print(f"\n{len(results) - len(missed)}/{len(results)} caught"
        + (f"; not caught: {missed}" if missed else ""))
  return 1 if missed else 0


if __name__ == "__main__":
  sys.exit(main())
