"""Writes the notebooks in this folder, without outputs.

The notebooks are generated, not edited by hand: change the cells here and
run ``python notebooks/make_notebooks.py``. tests/test_notebooks.py checks that
the committed files match this script, carry no outputs, and run top to
bottom (with ``HGO_SMALL=1``).
"""

from __future__ import annotations

import pathlib
import sys
import textwrap

import nbformat
from nbformat import v4

HERE = pathlib.Path(__file__).resolve().parent


def md(text: str):
  return v4.new_markdown_cell(textwrap.dedent(text).strip("\n"))


def code(text: str):
  return v4.new_code_cell(textwrap.dedent(text).strip("\n"))


SETUP = code('''
    # Setup, for Colab or a local Jupyter: install hypergrad_optax when it is
    # missing, then report the accelerator JAX sees.
    import importlib.util, os, pathlib, subprocess, sys

    def _pip_install(*args):
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", *args])

    def _local_checkout():
        """The repository root when this notebook runs inside a clone."""
        for d in [pathlib.Path.cwd(), *pathlib.Path.cwd().parents]:
            if (d / "pyproject.toml").is_file() and (d / "hypergrad_optax" / "__init__.py").is_file():
                return d
        return None

    if importlib.util.find_spec("hypergrad_optax") is None:
        checkout = _local_checkout()
        # Outside a clone (Colab), set HGO_REPO_URL to the repository's git URL
        # first, e.g. in a cell above: %env HGO_REPO_URL=https://github.com/OWNER/hypergrad_optax
        repo_url = os.environ.get("HGO_REPO_URL", "")
        if checkout is not None:
            _pip_install(str(checkout))
        elif repo_url:
            _pip_install(f"hypergrad-optax @ git+{repo_url}")
        else:
            raise RuntimeError(
                "hypergrad_optax is not installed and this notebook is not inside a "
                "clone of the repository: set HGO_REPO_URL to the repository's URL "
                "(see the comment above) or `pip install` the package.")
    _missing = [m for m, pkg in (("flax", "flax"), ("sklearn", "scikit-learn"),
                                 ("matplotlib", "matplotlib"), ("tqdm", "tqdm"))
                if importlib.util.find_spec(m) is None]
    if _missing:
        _pip_install(*[{"sklearn": "scikit-learn"}.get(m, m) for m in _missing])

    import jax
    BACKEND = jax.default_backend()  # "cpu", "gpu" or "tpu"
    print(f"JAX {jax.__version__}, backend {BACKEND!r}: {jax.devices()}")
    # HGO_SMALL=1 (CI) shrinks every run so the notebook finishes in about a minute on CPU.
    SMALL = os.environ.get("HGO_SMALL", "0") == "1"
    print("small (CI) size" if SMALL else "full size")
''')


# --------------------------------------------------------------------------
# quickstart.ipynb
# --------------------------------------------------------------------------

QUICKSTART = [
    md('''
        # hypergrad_optax quickstart

        Hypergradient descent (Baydin et al., ICLR 2018) adapts the learning rate online, from one
        dot product per step: `h_t = g_t · u_{t-1}`, the derivative of the loss with respect to the
        previous step's rate. `hgo.hypergradient(inner)` wraps **any** Optax optimizer and scales its
        update by a factor learnt this way.

        This notebook trains a small [Flax NNX](https://flax.readthedocs.io/) MLP on scikit-learn's
        digits (8x8 images, shipped with scikit-learn, no download) twice, from a deliberately bad
        learning rate:

        * `optax.adam(lr)`, and
        * `hgo.hypergradient(optax.adam(lr))`, the same optimizer with an adapted step size,

        then plots the loss and the adapted rate, and shows how to read the rate for logging.
    '''),
    SETUP,
    code('''
        import time

        import jax.numpy as jnp
        import matplotlib.pyplot as plt
        import numpy as np
        import optax
        from flax import nnx

        import hypergrad_optax as hgo
        from hypergrad_optax.bench.demo import load_digits_split

        (x_train, y_train), (x_valid, y_valid) = load_digits_split(seed=0)
        print("train", x_train.shape, "validation", x_valid.shape)

        EPOCHS = 6 if SMALL else 30
        BATCH = 32
        BAD_LR = 1e-5   # about 100x smaller than a good Adam rate on this problem
    '''),
    md('''
        ## The model and the training loop

        Plain NNX: `nnx.Optimizer(model, tx, wrt=nnx.Param)` and `optimizer.update(model, grads)`.
        Nothing in the loop is specific to hypergradients; only `tx` changes.
    '''),
    code('''
        class MLP(nnx.Module):
            def __init__(self, din, dhidden, dout, *, rngs):
                self.hidden1 = nnx.Linear(din, dhidden, rngs=rngs)
                self.hidden2 = nnx.Linear(dhidden, dhidden, rngs=rngs)
                self.out = nnx.Linear(dhidden, dout, rngs=rngs)

            def __call__(self, x):
                x = jax.nn.relu(self.hidden1(x))
                x = jax.nn.relu(self.hidden2(x))
                return self.out(x)


        def loss_fn(model, x, y):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


        @nnx.jit
        def train_step(model, optimizer, x, y):
            loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
            optimizer.update(model, grads)
            return loss


        def train(tx, read_rate, epochs=EPOCHS, seed=0):
            """Trains a fresh model; returns per-step losses and rates, and the validation loss."""
            model = MLP(64, 128, 10, rngs=nnx.Rngs(seed))
            optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
            rng = np.random.default_rng(seed)
            losses, rates = [], []
            for _ in range(epochs):
                order = rng.permutation(len(x_train))
                for start in range(0, len(order) - BATCH + 1, BATCH):
                    idx = order[start:start + BATCH]
                    losses.append(float(train_step(model, optimizer, x_train[idx], y_train[idx])))
                    rates.append(float(read_rate(optimizer.opt_state)))
            return np.array(losses), np.array(rates), float(loss_fn(model, x_valid, y_valid))
    '''),
    md('''
        ## Adam from a learning rate 100x too small

        `hgo.hypergradient` uses its untuned defaults: the multiplicative rule with `hyper_lr=0.1`
        (the factor changes by at most 10% per step) and the overshoot guard.
        `hgo.get_learning_rate(state, base_learning_rate=BAD_LR)` returns the effective rate,
        the adapted factor times the inner optimizer's rate.
    '''),
    code('''
        runs = {}
        for name, tx, read_rate in [
            ("optax.adam", optax.adam(BAD_LR), lambda state: BAD_LR),
            ("hgo.hypergradient(optax.adam)", hgo.hypergradient(optax.adam(BAD_LR)),
             lambda state: hgo.get_learning_rate(state, base_learning_rate=BAD_LR)),
            ("... overshoot_guard=False",
             hgo.hypergradient(optax.adam(BAD_LR), overshoot_guard=False),
             lambda state: hgo.get_learning_rate(state, base_learning_rate=BAD_LR)),
        ]:
            start = time.perf_counter()
            runs[name] = train(tx, read_rate)
            losses, rates, valid = runs[name]
            print(f"{name:32s} final train loss {losses[-20:].mean():.4f}  "
                  f"validation loss {valid:.4f}  ({time.perf_counter() - start:.1f}s)")
    '''),
    code('''
        def smooth(x, width=20):
            width = min(width, len(x))
            return np.convolve(x, np.ones(width) / width, mode="valid")

        fig, (ax_loss, ax_rate) = plt.subplots(1, 2, figsize=(11, 3.8))
        for name, (losses, rates, _) in runs.items():
            ax_loss.plot(smooth(losses), label=name)
            ax_rate.plot(rates, label=name)
        ax_loss.set(xlabel="step", ylabel="training loss (moving average)", yscale="log",
                    title="Loss")
        ax_rate.set(xlabel="step", ylabel="learning rate", yscale="log",
                    title="Effective learning rate")
        ax_loss.legend(); ax_rate.legend()
        plt.tight_layout(); plt.show()
    '''),
    md('''
        From a rate 100x too small, plain Adam barely moves; the adapted rate first grows
        geometrically (up to 10% per step) while successive gradients agree, then falls once the loss
        flattens and consecutive minibatch gradients disagree.

        What to look for in the full-size run: both hypergradient runs reach a training loss
        about 100x below plain Adam's (about 0.022 with the default overshoot guard, 0.013
        without, after 30 epochs). The guard exists for deterministic, far-too-large steps
        (`hypergradient(optax.sgd(0.1))` on the Rosenbrock function) and acts only when the new
        gradient's component along the last step exceeds three times the old gradient's norm;
        minibatch noise on a plateau sometimes does that, which costs the guarded run a little
        here. In minibatch training from a small rate, `overshoot_guard=False` or a `min_rate`
        keeps the rate higher.

        ## Reading the rate for logging

        * **Wrapper** (`hgo.hypergradient`): the state holds the factor `state.scale`, not the rate.
          `hgo.get_learning_rate(state, base_learning_rate=lr)` multiplies it by the inner rate
          (a number, or the schedule itself). Build the inner optimizer with
          `optax.inject_hyperparams` and the inner rate is found in the state.
        * **Aliases** (`hgo.sgd_hd`, `hgo.adam_hd`, `hgo.adamw_hd`): the state's `learning_rate` field.

        `get_learning_rate` looks inside `optax.chain`, `MultiSteps`, `inject_hyperparams` and
        `apply_if_finite` states. `optax.tree_utils.tree_get(state, "learning_rate")` is not a
        substitute: around a wrapped `inject_hyperparams` optimizer it finds the inner, unadapted
        rate, and around an `inject_hyperparams`-built alias it raises `KeyError` (two fields
        carry that name).
    '''),
    code('''
        params = {"w": jnp.zeros((3, 2))}
        grads = {"w": jnp.ones((3, 2))}

        def three_steps(tx):
            state = tx.init(params)
            for _ in range(3):
                _, state = tx.update(grads, state, params)
            return state

        state = three_steps(hgo.hypergradient(optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)))
        print("wrapper: get_learning_rate", hgo.get_learning_rate(state),
              "| factor state.scale", state.scale,
              "| tree_get (inner rate only)", optax.tree_utils.tree_get(state, "learning_rate"))

        state = three_steps(optax.inject_hyperparams(hgo.adam_hd)(learning_rate=1e-3, hyper_lr=1e-4))
        print("alias:   get_learning_rate", hgo.get_learning_rate(state))
        try:
            optax.tree_utils.tree_get(state, "learning_rate")
        except KeyError:
            print("         tree_get raised KeyError (two 'learning_rate' fields)")
    '''),
    md('''
        Inside a jitted step, return the rate with the loss and log it outside (here it is a float32
        scalar; with `granularity="per-tensor"` or `"per-element"` it is a pytree of rates):
    '''),
    code('''
        @nnx.jit
        def train_step_with_rate(model, optimizer, x, y):
            loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
            optimizer.update(model, grads)
            rate = hgo.get_learning_rate(optimizer.opt_state, base_learning_rate=BAD_LR)
            return loss, jnp.asarray(rate)

        model = MLP(64, 128, 10, rngs=nnx.Rngs(0))
        optimizer = nnx.Optimizer(model, hgo.hypergradient(optax.adam(BAD_LR)), wrt=nnx.Param)
        for step in range(1, 31):
            idx = np.arange(step * BATCH, (step + 1) * BATCH) % len(x_train)
            loss, rate = train_step_with_rate(model, optimizer, x_train[idx], y_train[idx])
            if step % 10 == 0:
                print(f"step {step:3d}  loss {float(loss):.4f}  learning rate {float(rate):.3g}")
    '''),
    md('''
        ## Next

        * `paper_reproduction.ipynb`: the paper's SGD-HD / SGDN-HD / Adam-HD curves and the
          robustness to the initial rate.
        * The documentation (`docs/`): how it works, choosing `hyper_lr`, recipes (Flax linen
          `TrainState`, `inject_hyperparams`, checkpointing with Orbax) and the API reference.
    '''),
]

# --------------------------------------------------------------------------
# paper_reproduction.ipynb
# --------------------------------------------------------------------------

PAPER = [
    md('''
        # Reproducing the paper's figures, at digits scale

        Baydin et al., *Online Learning Rate Adaptation with Hypergradient Descent* (ICLR 2018)
        compare SGD, SGD with Nesterov momentum (SGDN) and Adam with their hypergradient versions
        (SGD-HD, SGDN-HD, Adam-HD) on logistic regression and a 784-1000-1000-10 MLP on MNIST, and
        show (i) training-loss and learning-rate curves from `α0 = 1e-3`, (ii) robustness to the
        initial rate `α0 ∈ {1e-1, …, 1e-6}`, and (iii) a grid over `α0 × β`.

        This notebook redoes the three figures with `hypergrad_optax` on scikit-learn's digits
        (1437 training images of 8x8 pixels, no download), so it runs anywhere; the paper's settings
        are kept where they make sense: batch 128, coupled weight decay `1e-4`, Nesterov momentum
        0.9, PyTorch-default initialisation, `β = 1e-3` for SGD-HD/SGDN-HD and `1e-7` for Adam-HD.
        Digits gives 11 steps per epoch where MNIST gives 469, so the rates move far less per
        epoch than in the paper. For the MNIST-scale runs and their CSVs, use the benchmark
        command `hypergrad-bench` (last section).

        Differences from the authors' code: one global hypergradient per step (the paper's
        algorithm, not the reference code's per-tensor in-loop update), and the rate is kept
        `>= 0` (`min_rate=0`, the library default; the authors' runs went slightly negative).
    '''),
    SETUP,
    code('''
        import functools
        import glob
        import time

        import jax.numpy as jnp
        import matplotlib.pyplot as plt
        import numpy as np
        import optax

        import hypergrad_optax as hgo
        from hypergrad_optax.bench.demo import init_mlp, load_digits_split, mlp_loss

        (x_train, y_train), (x_valid, y_valid) = load_digits_split(seed=0)
        mean, std = x_train.mean(), x_train.std()      # the paper normalises its inputs
        X, Y = jnp.asarray((x_train - mean) / std), jnp.asarray(y_train)
        XV, YV = jnp.asarray((x_valid - mean) / std), jnp.asarray(y_valid)

        BATCH, WEIGHT_DECAY = 128, 1e-4
        STEPS_PER_EPOCH = len(X) // BATCH
        MODELS = {"logreg": [64, 10], "mlp": [64, 100, 100, 10] if SMALL else [64, 1000, 1000, 10]}
        EPOCHS = {"logreg": 10 if SMALL else 30, "mlp": 8 if SMALL else 100}
        print(f"{len(X)} training images, {STEPS_PER_EPOCH} steps per epoch; models {MODELS}")
    '''),
    md('''
        ## The six methods

        The baselines add the coupled weight decay to the gradient, as `torch.optim` does; the HD
        aliases take it as `weight_decay=`.
    '''),
    code('''
        METHODS = ("SGD", "SGD-HD", "SGDN", "SGDN-HD", "Adam", "Adam-HD")
        PAPER_BETA = {"SGD-HD": 1e-3, "SGDN-HD": 1e-3, "Adam-HD": 1e-7}


        def make_optimizer(method, lr, beta):
            """lr and beta may be traced: one compilation serves a whole grid (jax.vmap)."""
            decay = optax.add_decayed_weights(WEIGHT_DECAY)
            if method == "SGD":
                return optax.chain(decay, optax.sgd(lr))
            if method == "SGDN":
                return optax.chain(decay, optax.sgd(lr, momentum=0.9, nesterov=True))
            if method == "Adam":
                return optax.chain(decay, optax.adam(lr))
            if method == "SGD-HD":
                return hgo.sgd_hd(lr, beta, weight_decay=WEIGHT_DECAY)
            if method == "SGDN-HD":
                return hgo.sgd_hd(lr, beta, momentum=0.9, nesterov=True, weight_decay=WEIGHT_DECAY)
            if method == "Adam-HD":
                return hgo.adam_hd(lr, beta, weight_decay=WEIGHT_DECAY)
            raise ValueError(method)


        @functools.partial(jax.jit, static_argnames="method")
        @functools.partial(jax.vmap, in_axes=(None, None, None, 0, 0))
        def train(method, params, batches, lr, beta):
            """One run per (lr, beta) pair, all in one jit; batches: (epochs, steps, BATCH) indices.

            Returns per-step training loss and rate (epochs, steps) and per-epoch validation loss.
            """
            tx = make_optimizer(method, lr, beta)
            state = tx.init(params)

            def step(carry, idx):
                params, state = carry
                loss, grads = jax.value_and_grad(mlp_loss)(params, X[idx], Y[idx])
                updates, state = tx.update(grads, state, params)
                rate = hgo.get_learning_rate(state) if method.endswith("-HD") else lr
                return (optax.apply_updates(params, updates), state), (loss, rate)

            def epoch(carry, idx):
                carry, (loss, rate) = jax.lax.scan(step, carry, idx)
                return carry, (loss, rate, mlp_loss(carry[0], XV, YV))

            _, (loss, rate, valid) = jax.lax.scan(epoch, (params, state), batches)
            return loss, rate, valid


        def run(method, model, lrs, betas, epochs=None, seed=0):
            """Same initialisation and minibatch order for every method and (lr, beta)."""
            rng = np.random.default_rng(seed)
            batches = np.stack([rng.permutation(len(X))[:STEPS_PER_EPOCH * BATCH]
                                .reshape(STEPS_PER_EPOCH, BATCH)
                                for _ in range(epochs or EPOCHS[model])])
            params = init_mlp(jax.random.key(seed), MODELS[model])
            lrs, betas = np.broadcast_arrays(np.asarray(lrs, np.float32), np.asarray(betas, np.float32))
            out = train(method, params, batches, lrs, betas)
            return jax.tree.map(np.asarray, out)
    '''),
    md('''
        ## Figure 1: training loss and learning rate from `α0 = 1e-3`

        The paper's Figure 2: per-epoch training loss (top), validation loss (middle) and the
        adapted rate per iteration (bottom), for logistic regression and the MLP.

        Each method is compiled once per model and run, vmapped, on seven `(α0, β)` pairs: the
        paper's `(1e-3, β)` for this figure and `(α0, 1e-4)` for `α0 ∈ {1e-1, …, 1e-6}` for the
        next one.
    '''),
    code('''
        ALPHA0 = 1e-3
        ALPHAS = np.array([1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6])
        curves, final = {}, {}
        start = time.perf_counter()
        for model in MODELS:
            for method in METHODS:
                hd = method.endswith("-HD")
                loss, rate, valid = run(method, model, [ALPHA0, *ALPHAS],
                                        [PAPER_BETA.get(method, 0.0)] + [1e-4 if hd else 0.0] * 6)
                curves[model, method] = loss[:1], rate[:1], valid[:1]
                final[model, method] = loss[1:, -1].mean(axis=-1)   # for Figure 2
        print(f"{len(curves)} compilations, {7 * len(curves)} runs in "
              f"{time.perf_counter() - start:.0f}s")

        colors = dict(zip(METHODS, plt.cm.tab10.colors))
        fig, axes = plt.subplots(3, 2, figsize=(11, 9))
        for col, model in enumerate(MODELS):
            for method in METHODS:
                loss, rate, valid = (a[0] for a in curves[model, method])
                style = dict(color=colors[method], ls="-" if method.endswith("-HD") else "--",
                             label=method)
                epochs = np.arange(1, len(valid) + 1)
                axes[0, col].plot(epochs, loss.mean(axis=1), **style)
                axes[1, col].plot(epochs, valid, **style)
                if method.endswith("-HD"):
                    axes[2, col].plot(rate.reshape(-1), **style)
            axes[0, col].set(title=model, ylabel="training loss", yscale="log", xlabel="epoch")
            axes[1, col].set(ylabel="validation loss", yscale="log", xlabel="epoch")
            axes[2, col].set(ylabel="learning rate α_t", xlabel="iteration")
        axes[0, 0].legend(ncol=2, fontsize=8); axes[2, 0].legend(fontsize=8)
        plt.tight_layout(); plt.show()

        print(f"final-epoch mean training loss (alpha0={ALPHA0:g}):")
        for method in METHODS:
            print(f"  {method:8s}" + "".join(f"  {m}: {curves[m, method][0][0, -1].mean():.4f}"
                                              for m in MODELS))
    '''),
    md('''
        As in the paper, the HD variants of SGD and SGDN raise their rate early on and reach a lower
        loss than their base optimizers from the same `α0`. Adam-HD's `β = 1e-7` is tuned for
        MNIST's ~470 steps per epoch: over a few hundred digits steps its rate barely moves, so it
        tracks Adam.

        ## Figure 2: robustness to the initial learning rate

        The paper's Figure 4: final training loss for `α0 ∈ {1e-1, …, 1e-6}` with `β = 1e-4`
        for every HD variant (the runs above), for both models.
    '''),
    code('''
        fig, axes = plt.subplots(len(MODELS), 3, figsize=(12, 3.3 * len(MODELS)), squeeze=False)
        for row, model in enumerate(MODELS):
            for ax, base in zip(axes[row], ("SGD", "SGDN", "Adam")):
                for method in (base, base + "-HD"):
                    ax.plot(ALPHAS, final[model, method], "o-" if method.endswith("-HD") else "s--",
                            color=colors[method], label=method)
                ax.set(xscale="log", yscale="log", xlabel="initial learning rate α0",
                       title=f"{model}: {base}")
                ax.invert_xaxis(); ax.legend(fontsize=8)
            axes[row, 0].set_ylabel("final-epoch training loss")
        plt.tight_layout(); plt.show()

        for model in MODELS:
            print(f"{model}, {EPOCHS[model]} epochs; alpha0  " + "".join(f"{m:>9s}" for m in METHODS))
            for i, a in enumerate(ALPHAS):
                print(f"{a:30.0e}  " + "".join(f"{final[model, m][i]:9.4f}" for m in METHODS))
    '''),
    md('''
        As in the paper, the HD curves are flat on the small-`α0` side: from `α0 = 1e-3` down to
        `1e-6`, SGDN-HD and Adam-HD end at about the same loss, where their base optimizers stall.
        With `β = 1e-4` and a few hundred steps, SGD-HD on the MLP hardly moves its rate; the
        paper's runs have 50 epochs of 469 steps.

        ## Figure 3: the `α0 × β` grid

        The paper's Figure 5 counts iterations to convergence of logistic regression over a grid of
        `α0` and `β`. Here: the final training loss of SGD-HD on logistic regression, one vmapped
        run for the whole grid. The `β = 0` row is plain SGD; the right panel shows SGD-HD's loss
        relative to it (below 1: hypergradients helped).
    '''),
    code('''
        BETAS = np.array([0.0, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1])
        grid_alphas, grid_betas = np.meshgrid(ALPHAS, BETAS)
        start = time.perf_counter()
        loss, _, _ = run("SGD-HD", "logreg", grid_alphas.ravel(), grid_betas.ravel(),
                         epochs=10 if SMALL else 30)
        grid = loss[:, -1].mean(axis=-1).reshape(grid_alphas.shape)
        grid = np.where(np.isfinite(grid), grid, np.nan)
        print(f"{grid.size} runs in one jit, {time.perf_counter() - start:.0f}s")

        fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 3.8))
        for ax, values, title, cmap in [
            (ax0, np.log10(grid), "log10 final training loss (SGD-HD; β=0: SGD)", "viridis"),
            (ax1, np.log10(grid / grid[:1]), "log10 (SGD-HD loss / SGD loss)", "RdBu_r")]:
            lim = np.nanmax(np.abs(values)) if cmap == "RdBu_r" else None
            im = ax.imshow(values, cmap=cmap, aspect="auto",
                           vmin=-lim if lim else None, vmax=lim)
            ax.set_xticks(range(len(ALPHAS)), [f"{a:.0e}" for a in ALPHAS])
            ax.set_yticks(range(len(BETAS)), ["0 (SGD)"] + [f"{b:.0e}" for b in BETAS[1:]])
            ax.set(xlabel="α0", ylabel="β", title=title)
            for (i, j), v in np.ndenumerate(values):
                ax.text(j, i, "nan" if np.isnan(v) else f"{v:.1f}", ha="center", va="center",
                        fontsize=7, color="k" if cmap == "RdBu_r" else "w")
            fig.colorbar(im, ax=ax)
        plt.tight_layout(); plt.show()
    '''),
    md('''
        ## At MNIST scale: the benchmark's CSVs

        The benchmark command `hypergrad-bench` (installed with the package; see
        `hypergrad-bench --help`) runs the paper's tasks (MNIST, CIFAR-10, or digits offline) and
        writes one CSV per run, with per-iteration columns
        `epoch, iteration, time, loss, loss_epoch, valid_loss_epoch, alpha`. Run, for example,
        `hypergrad-bench --out results/digits`, point `HGO_BENCH_DIR` at the output folder, and
        this cell plots the loss and rate of every run found there (by default, the CSVs committed
        under `docs/results/`, if any).
    '''),
    code('''
        import csv

        def read_run(path):
            """Per-iteration loss and rate of one run (None for other CSVs, e.g. summaries)."""
            with open(path, newline="") as f:
                rows = [{k.lower(): v for k, v in row.items()} for row in csv.DictReader(f)]
            if not rows or not {"loss", "alpha"} <= set(rows[0]):
                return None
            col = lambda name: np.array([float(r[name]) if r.get(name) not in ("", None)
                                         else np.nan for r in rows])
            return col("loss"), col("alpha")

        # HGO_BENCH_DIR, else the CSVs committed under docs/results/ when run inside a clone.
        bench_dir = os.environ.get("HGO_BENCH_DIR") or next(
            (d for d in ("../docs/results", "docs/results") if os.path.isdir(d)), "")
        runs = {}
        if bench_dir:
            for path in sorted(glob.glob(os.path.join(bench_dir, "**", "*.csv"), recursive=True)):
                run_ = read_run(path)
                if run_ is not None:
                    runs[os.path.relpath(path, bench_dir)] = run_
        if not runs:
            print(f"No benchmark CSVs in {bench_dir or '(none)'!r}; set HGO_BENCH_DIR to a "
                  "`hypergrad-bench --out` folder.")
        else:
            fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4))
            for name, (loss, alpha) in list(runs.items())[:12]:
                width = max(1, len(loss) // 100)
                ax0.plot(np.convolve(loss, np.ones(width) / width, mode="valid"), label=name)
                ax1.plot(alpha, label=name)
            ax0.set(xlabel="iteration", ylabel="training loss", yscale="log")
            ax1.set(xlabel="iteration", ylabel="learning rate", yscale="log")
            ax0.legend(fontsize=7); plt.tight_layout(); plt.show()
    '''),
    md('''
        Each `--out` folder also has a `summary.csv` (one row per run: `task, method, alpha0, beta,
        loss_epoch, …`). For the `--alpha0 grid` runs, this cell draws the robustness figure from it:
        with the committed `docs/results/`, the MNIST logistic-regression grid of the benchmark.
    '''),
    code('''
        PAPER_METHODS = ("sgd", "sgd_hd", "sgdn", "sgdn_hd", "adam", "adam_hd", "hypergradient")
        grids = {}
        summary_paths = (glob.glob(os.path.join(bench_dir, "**", "summary.csv"), recursive=True)
                         if bench_dir else [])
        for path in sorted(summary_paths):
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("status", "ok") == "ok"
                        and r.get("alpha0", "-").replace(".", "", 1).replace("e-", "", 1).isdigit()]
            if rows and {"method", "alpha0", "loss_epoch"} <= set(rows[0]) \\
                    and len({r["alpha0"] for r in rows}) >= 3:
                grids[os.path.relpath(os.path.dirname(path), bench_dir)] = rows
        if not grids:
            print("No alpha0-grid summaries found.")
        for name, rows in sorted(grids.items(), key=lambda kv: -len(kv[1]))[:2]:
            methods = [m for m in PAPER_METHODS if any(r["method"] == m for r in rows)] or \\
                sorted({r["method"] for r in rows})
            fig, ax = plt.subplots(figsize=(7, 4))
            for m in methods:
                points = sorted((float(r["alpha0"]), float(r["loss_epoch"]))
                                for r in rows if r["method"] == m)
                a, l = np.array(points).T
                ax.plot(a, l, "o-" if ("hd" in m or m == "hypergradient") else "s--", label=m)
            ax.set(xscale="log", yscale="log", xlabel="initial learning rate α0",
                   ylabel="final-epoch training loss", title=f"{name} ({rows[0]['task']})")
            ax.invert_xaxis(); ax.legend(fontsize=8, ncol=2); plt.tight_layout(); plt.show()
    '''),
]

# --------------------------------------------------------------------------
# beyond.ipynb
# --------------------------------------------------------------------------

BEYOND = [
    md('''
        # Beyond the paper: hyper-optimizers, stacking, adapting `b1` and `b2`

        The paper moves the learning rate by plain SGD on its hypergradient
        `h_t = ∂f(θ_{t-1})/∂α_{t-1}`. Three generalisations, all in `hypergrad_optax`:

        1. **Hyper-optimizers**: `hyper_optimizer=` takes any Optax transform, fed `h_t` as the
           gradient of the rate (e.g. Adam on `α`).
        2. **Stacking** (Chandra et al., *Gradient Descent: The Ultimate Optimizer*, NeurIPS
           2022): the hyper-optimizer can itself be a hypergradient optimizer, which then adapts
           the hyper learning rate `β` with hypergradient `-h_t h_{t-1}`.
        3. **Any hyperparameter**: `hgo.adapt_hyperparams` adapts Adam's `b1`, `b2`, `eps`, a
           momentum or a weight decay, from `∂f/∂λ = g_t · ∂u_{t-1}/∂λ` (a forward-mode JVP of
           the update), through a logit or log reparametrisation.

        All runs: the MLP 64-128-128-10 on scikit-learn's digits, batch 32, the same
        initialisation and minibatch order.
    '''),
    SETUP,
    code('''
        import time

        import jax.numpy as jnp
        import matplotlib.pyplot as plt
        import numpy as np
        import optax

        import hypergrad_optax as hgo
        from hypergrad_optax.bench.demo import init_mlp, load_digits_split, mlp_loss

        (x_train, y_train), (x_valid, y_valid) = load_digits_split(seed=0)
        X, Y = jnp.asarray(x_train), jnp.asarray(y_train)
        BATCH, EPOCHS = 32, (10 if SMALL else 20)
        STEPS = len(X) // BATCH
        rng = np.random.default_rng(0)
        BATCHES = np.stack([rng.permutation(len(X))[:STEPS * BATCH].reshape(STEPS, BATCH)
                            for _ in range(EPOCHS)]).reshape(-1, BATCH)
        PARAMS0 = init_mlp(jax.random.key(0), [64, 128, 128, 10])


        def train(tx, probe=lambda state: {}):
            """Trains from PARAMS0; returns per-step losses and per-step probe(state) values."""
            @jax.jit
            def run(params):
                def step(carry, idx):
                    params, state = carry
                    loss, grads = jax.value_and_grad(mlp_loss)(params, X[idx], Y[idx])
                    updates, state = tx.update(grads, state, params)
                    return (optax.apply_updates(params, updates), state), (loss, probe(state))
                _, out = jax.lax.scan(step, (params, tx.init(params)), BATCHES)
                return out
            losses, probes = jax.device_get(run(PARAMS0))
            return np.asarray(losses), {k: np.asarray(v) for k, v in probes.items()}


        def smooth(x, width=44):
            width = min(width, len(x))
            return np.convolve(x, np.ones(width) / width, mode="valid")


        def report(runs):
            for name, (losses, _) in runs.items():
                print(f"{name:48s} last-epoch training loss {losses[-STEPS:].mean():.4f}")
    '''),
    md('''
        ## 1. A hyper-optimizer: Adam on the learning rate

        SGD from `α0 = 1e-3` (about 100 times too small here). The paper's SGD-HD with
        `β = 1e-3` is tuned for MNIST's 469 steps per epoch and moves the rate slowly; Adam on `α`
        (`hyper_optimizer=optax.adam(1e-3)`) normalises the hypergradient, so its steps are
        about `1e-3` in rate units whatever the scale of `h_t`.
    '''),
    code('''
        rate = lambda state: {"alpha": state.learning_rate}
        runs = {
            "optax.sgd(1e-3)": train(optax.sgd(1e-3)),
            "sgd_hd(1e-3, hyper_lr=1e-3)  (the paper)": train(hgo.sgd_hd(1e-3, hyper_lr=1e-3), rate),
            "sgd_hd(1e-3, hyper_optimizer=optax.adam(1e-3))":
                train(hgo.sgd_hd(1e-3, hyper_optimizer=optax.adam(1e-3)), rate),
        }
        report(runs)

        fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 3.6))
        for name, (losses, probes) in runs.items():
            ax0.plot(smooth(losses), label=name)
            ax1.plot(probes.get("alpha", np.full(len(losses), 1e-3)), label=name)
        ax0.set(xlabel="step", ylabel="training loss", yscale="log")
        ax1.set(xlabel="step", ylabel="learning rate α", yscale="log")
        ax0.legend(fontsize=8); plt.tight_layout(); plt.show()
    '''),
    md('''
        ## 2. Stacking: adapting the hyper learning rate too

        `sgd_hd(α0, hyper_optimizer=sgd_hd(β0, hyper_lr=γ))`: the outer level adapts `α` with
        `β`, the second level adapts `β` by SGD-HD with the hyper-hyper learning rate `γ`. The
        state nests: `state.learning_rate` is `α_t`, `state.hyper_state.learning_rate` is `β_t`.
        From the paper's `β0 = 1e-3`, the second level raises `β`, the rate climbs faster and the
        loss drops hundreds of steps earlier (full-size run). With `γ = 1e-2`, `β` later turns
        noisy and often sits at its lower bound 0 (the rate then pauses): the second level has its
        own step size to respect, but a wrong `γ` costs less than a wrong `β`.

        The second level here uses the paper's additive rule. At an upper level the rate is one
        scalar, so the multiplicative rule's cosine is always ±1 and it moves by ±`β` every step;
        `docs/beyond.md` measures stacks of `hgo.hypergradient` levels on MNIST (less sensitive to
        `β`, but the upper rates decay to 0 and freeze `α` early). On this run, from `α0 = 1e-3`,
        `hyper_optimizer=hgo.hypergradient(optax.sgd(1e-3))` froze `α` before it had grown.
    '''),
    code('''
        both = lambda state: {"alpha": state.learning_rate,
                              "beta": state.hyper_state.learning_rate}
        stacks = {"sgd_hd(1e-3, hyper_lr=1e-3)": train(hgo.sgd_hd(1e-3, hyper_lr=1e-3), rate)}
        for gamma in (1e-3, 1e-2):
            tx = hgo.sgd_hd(1e-3, hyper_optimizer=hgo.sgd_hd(1e-3, hyper_lr=gamma))
            stacks[f"stack: beta0=1e-3, gamma={gamma:g}"] = train(tx, both)
        report(stacks)

        fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
        for name, (losses, probes) in stacks.items():
            axes[0].plot(smooth(losses), label=name)
            axes[1].plot(probes["alpha"], label=name)
            axes[2].plot(probes.get("beta", np.full(len(losses), 1e-3)), label=name)
        axes[0].set(xlabel="step", ylabel="training loss", yscale="log")
        axes[1].set(xlabel="step", ylabel="α (level 1)", yscale="log")
        axes[2].set(xlabel="step", ylabel="β (level 2)", yscale="log")
        axes[0].legend(fontsize=8); plt.tight_layout(); plt.show()
    '''),
    md('''
        ## 3. Adapting Adam's `b1` and `b2`

        `hgo.adapt_hyperparams(optax.adam, ("b1", "b2"), ...)` builds Adam with
        `optax.inject_hyperparams`, keeps `logit(b1)` and `logit(b2)` as unconstrained parameters
        (so they stay in (0, 1)), and moves them by their hypergradients: one JVP of Adam's update
        per step, batched over the names, and one parameter-sized tangent per name. With
        `hyper_optimizer=optax.adam(...)` the step on each logit is unit-free. The values used by
        the last update are in `state.inner_state.hyperparams`.

        Below: from deliberately poor `b1 = 0.5, b2 = 0.9`, and (last run) adapting the learning
        rate as well, from `1e-5`. What the full-size run shows: the learning rate climbs from
        `1e-5` to a few `1e-3` within about 150 steps, as with `hgo.hypergradient`; `b1` and `b2`
        move steadily but not to better values. From 0.5/0.9 the one-step hypergradient lowers
        both further (a shorter memory helps the next step) without improving the loss; adapted
        together with the rate, `b1` is pushed towards 1 and the run ends with a loss spike.
    '''),
    code('''
        hyper = lambda state: {k: state.inner_state.hyperparams[k]
                               for k in ("learning_rate", "b1", "b2")}
        adapt = {
            "adam(1e-3, b1=0.5, b2=0.9)": train(optax.adam(1e-3, b1=0.5, b2=0.9)),
            "adapt b1, b2 from 0.5, 0.9": train(hgo.adapt_hyperparams(
                optax.adam, ("b1", "b2"), hyper_optimizer=optax.adam(3e-2),
                hyperparams=dict(learning_rate=1e-3, b1=0.5, b2=0.9)), hyper),
            "adam(1e-5)": train(optax.adam(1e-5)),
            "adapt learning_rate, b1, b2 from 1e-5, 0.9, 0.999": train(hgo.adapt_hyperparams(
                optax.adam, ("learning_rate", "b1", "b2"), hyper_optimizer=optax.adam(3e-2),
                hyperparams=dict(learning_rate=1e-5)), hyper),
        }
        report(adapt)

        fig, axes = plt.subplots(1, 4, figsize=(15, 3.3))
        for name, (losses, probes) in adapt.items():
            axes[0].plot(smooth(losses), label=name)
            for ax, key in zip(axes[1:], ("learning_rate", "b1", "b2")):
                if key in probes:
                    ax.plot(probes[key], label=name)
        axes[0].set(xlabel="step", ylabel="training loss", yscale="log")
        for ax, key in zip(axes[1:], ("learning_rate", "b1", "b2")):
            ax.set(xlabel="step", title=key)
        axes[1].set_yscale("log")
        axes[0].legend(fontsize=7); plt.tight_layout(); plt.show()
    '''),
    md('''
        ## Notes

        * `adapt_hyperparams(inner, ("learning_rate",))` adapts the log of the rate, a
          multiplicative rule for the learning rate; `hgo.hypergradient(inner)` does the same job
          for any optimizer without `inject_hyperparams`, at the cost of one buffer instead of one
          JVP.
        * The hypergradient is greedy (one step ahead): it sees only the effect of the
          hyperparameter on the next loss. For `b1` and `b2`, whose effect builds up over many
          steps, that is a poor guide (above: no gain from 0.5/0.9, `b1` driven towards 1 when
          adapted with the rate). Adapting the learning rate is where hypergradients pay off;
          adapt decay rates with a small hyper learning rate, and watch them.
        * Each adapted name costs one parameter-sized tangent (`tangent_dtype=jnp.bfloat16`
          halves it) and a JVP of the update.
        * More: the API reference (`docs/`) and, where present, `docs/beyond.md`.
    '''),
]

NOTEBOOKS = {
    "quickstart.ipynb": QUICKSTART,
    "paper_reproduction.ipynb": PAPER,
    "beyond.ipynb": BEYOND,
}


def build(cells) -> nbformat.NotebookNode:
  nb = v4.new_notebook()
  nb.cells = cells
  nb.metadata = {
      "kernelspec": {"name": "python3", "display_name": "Python 3",
                     "language": "python"},
      "language_info": {"name": "python"},
      "colab": {"provenance": []},
  }
  # Stable cell ids, so that regenerating gives identical files.
  for i, cell in enumerate(nb.cells):
    cell["id"] = f"cell-{i}"
  return nb


def render(name: str) -> str:
  return nbformat.writes(build(NOTEBOOKS[name])) + "\n"


def main() -> None:
  for name in NOTEBOOKS:
    (HERE / name).write_text(render(name), encoding="utf-8")
    print("wrote", HERE / name, file=sys.stderr)


if __name__ == "__main__":
  main()
