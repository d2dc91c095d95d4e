"""hypergrad_optax: hypergradient descent for Optax.

Online learning-rate adaptation (Baydin et al., ICLR 2018) for any Optax
optimizer: ``hypergradient(optax.adam(1e-3))``, and the paper's SGD-HD,
SGDN-HD, Adam-HD and AdamW-HD.
"""

from hypergrad_optax._aliases import adam_hd
from hypergrad_optax._aliases import adamw_hd
from hypergrad_optax._aliases import sgd_hd
from hypergrad_optax._core import HypergradientState
from hypergrad_optax._core import RelativeStepBound
from hypergrad_optax._core import ScaleByHypergradientState
from hypergrad_optax._hyperparams import AdaptHyperparamsState
from hypergrad_optax._hyperparams import adapt_hyperparams
from hypergrad_optax._hyperparams import default_reparametrization
from hypergrad_optax import rules
from hypergrad_optax._logging import diagnose
from hypergrad_optax._logging import get_learning_rate
from hypergrad_optax._wrapper import hypergradient

__version__ = "0.16.0"

__all__ = (
    "AdaptHyperparamsState",
    "HypergradientState",
    "RelativeStepBound",
    "ScaleByHypergradientState",
    "adam_hd",
    "adamw_hd",
    "adapt_hyperparams",
    "default_reparametrization",
    "diagnose",
    "get_learning_rate",
    "hypergradient",
    "sgd_hd",
)
