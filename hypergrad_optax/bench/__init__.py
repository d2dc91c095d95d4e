"""``hypergrad-bench``: reproduces the paper's experiments and compares peers.

Tasks (the paper's logistic regression and MLP on MNIST, a small CNN on
Fashion-MNIST or CIFAR-10, and the same models on sklearn's embedded digits),
optimizers (the paper's HD variants, their bases, the generic wrapper and the
learning-rate-free optimizers of ``optax.contrib``), a JIT-compiled training
loop that logs every iteration, and plots like the paper's figures. The
command line is :func:`hypergrad_optax.bench.cli.main`.
"""
