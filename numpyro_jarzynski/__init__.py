"""numpyro_jarzynski: sequential Monte Carlo with Jarzynski-corrected weights for NumPyro."""

from numpyro_jarzynski.infer import JarzynskiSMC, SMCState

__version__ = "0.1.0"
__all__ = ["JarzynskiSMC", "SMCState", "__version__"]
