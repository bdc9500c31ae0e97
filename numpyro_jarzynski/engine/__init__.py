"""The one engine: weights, resampling, populations, moves with their increments, schedules."""

from numpyro_jarzynski.engine import moves, population, resampling, schedules, weights

__all__ = ["moves", "population", "resampling", "schedules", "weights"]
