from numpyro_jarzynski.infer.functional import SMCAlgorithm, smc
from numpyro_jarzynski.infer.jarzynski_smc import JarzynskiSMC
from numpyro_jarzynski.infer.tempering import SMCState, StageHistory

__all__ = ["JarzynskiSMC", "SMCAlgorithm", "SMCState", "StageHistory", "smc"]
