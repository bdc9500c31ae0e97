"""Energy-based models: distributions (:class:`EnergyDistribution`, RBMs) and the
Jarzynski-weighted trainer :class:`EBMTrainer` (also PCD and CD under the same API)."""

from numpyro_jarzynski.ebm.energy import EnergyBasedDistribution, EnergyDistribution
from numpyro_jarzynski.ebm.rbm import (
    BernoulliRBM,
    GaussianBernoulliRBM,
    GibbsCache,
    bernoulli_rbm_model,
)
from numpyro_jarzynski.ebm.trainer import EBMTrainer, TrainResult, TrainState

__all__ = [
    "BernoulliRBM", "EBMTrainer", "EnergyBasedDistribution", "EnergyDistribution",
    "GaussianBernoulliRBM", "GibbsCache", "TrainResult", "TrainState", "bernoulli_rbm_model",
]
