"""The one engine: weights, resampling, populations, moves with their increments, schedules."""

from numpyro_jarzynski.engine import kernels, moves, population, resampling, schedules, weights
from numpyro_jarzynski.engine.kernels import HMC, MALA, UHMC, ULA

__all__ = ["HMC", "MALA", "UHMC", "ULA", "kernels", "moves", "population", "resampling",
           "schedules", "weights"]
