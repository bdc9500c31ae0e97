"""Distributions with structure the SMC kernel can use (tempered-site and Gibbs-sweep protocols)."""

from numpyro_jarzynski.distributions.lattice import (
    IsingLattice,
    PottsLattice,
    UniformSpins,
    UniformStates,
)

__all__ = ["IsingLattice", "PottsLattice", "UniformSpins", "UniformStates"]
