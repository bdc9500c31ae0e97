"""Generation front-end: Jarzynski-corrected sampling with stochastic-interpolant SDEs."""

from numpyro_jarzynski.engine.moves import em_log_increment, transport_log_increment
from numpyro_jarzynski.interpolants.gaussian_mixture import GaussianMixtureInterpolant
from numpyro_jarzynski.interpolants.sampler import GenerationResult, InterpolantSampler

__all__ = [
    "GaussianMixtureInterpolant",
    "GenerationResult",
    "InterpolantSampler",
    "em_log_increment",
    "transport_log_increment",
]
