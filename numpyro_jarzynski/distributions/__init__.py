"""Distributions with structure the SMC kernel can use (tempered-site and Gibbs-sweep protocols)."""

from numpyro_jarzynski.distributions.lattice import IsingLattice, UniformSpins

__all__ = ["IsingLattice", "UniformSpins"]
