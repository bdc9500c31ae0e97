"""numpyro_jarzynski: sequential Monte Carlo with Jarzynski-corrected weights for NumPyro.

One engine (:mod:`numpyro_jarzynski.engine`) and thin front-ends: :class:`JarzynskiSMC`
(posterior inference and log evidence), energy-based models (:mod:`numpyro_jarzynski.ebm`),
corrected diffusion generation (:mod:`numpyro_jarzynski.interpolants`) and ArviZ
diagnostics (:mod:`numpyro_jarzynski.diagnostics`).
"""

# NumPyro must be fully imported before ArviZ: importing arviz_base first leaves
# `numpyro.distributions` without its `distribution` submodule attribute, which breaks
# `numpyro.factor` (seen with numpyro 0.22 / arviz-base 1.3).
import numpyro.distributions.distribution  # noqa: F401

from numpyro_jarzynski import _numpyro_hooks, diagnostics, engine  # noqa: F401
from numpyro_jarzynski.diagnostics import (
    posterior_samples,
    print_summary,
    summary,
    to_datatree,
)
from numpyro_jarzynski.distributions import IsingLattice, PottsLattice, UniformSpins
from numpyro_jarzynski.ebm import (
    BernoulliRBM,
    EBMTrainer,
    EnergyBasedDistribution,
    EnergyDistribution,
    GaussianBernoulliRBM,
    TrainResult,
    TrainState,
)
from numpyro_jarzynski.engine.kernels import HMC, MALA, UHMC, ULA, Auto, Composite
from numpyro_jarzynski.infer import JarzynskiSMC, SMCAlgorithm, SMCInfo, SMCState, smc
from numpyro_jarzynski.infer.gibbs import Gibbs, gibbs_plan
from numpyro_jarzynski.interpolants import (
    GaussianMixtureInterpolant,
    GenerationResult,
    InterpolantSampler,
)

__version__ = "0.1.0"
__all__ = [
    "HMC",
    "MALA",
    "UHMC",
    "ULA",
    "Auto",
    "BernoulliRBM",
    "Composite",
    "EBMTrainer",
    "EnergyBasedDistribution",
    "EnergyDistribution",
    "GaussianBernoulliRBM",
    "GaussianMixtureInterpolant",
    "GenerationResult",
    "Gibbs",
    "InterpolantSampler",
    "IsingLattice",
    "JarzynskiSMC",
    "PottsLattice",
    "SMCAlgorithm",
    "SMCInfo",
    "SMCState",
    "TrainResult",
    "TrainState",
    "UniformSpins",
    "__version__",
    "diagnostics",
    "engine",
    "gibbs_plan",
    "posterior_samples",
    "print_summary",
    "smc",
    "summary",
    "to_datatree",
]
