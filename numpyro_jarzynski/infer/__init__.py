from numpyro_jarzynski.infer.jarzynski_smc import JarzynskiSMC
from numpyro_jarzynski.infer.tempering import SMCState, StageHistory

__all__ = ["JarzynskiSMC", "SMCState", "StageHistory"]
