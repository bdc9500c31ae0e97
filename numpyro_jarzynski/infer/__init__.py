from numpyro_jarzynski.infer.functional import SMCAlgorithm, smc
from numpyro_jarzynski.infer.jarzynski_smc import JarzynskiSMC
from numpyro_jarzynski.infer.tempering import SMCInfo, SMCState, StageHistory, record

__all__ = ["JarzynskiSMC", "SMCAlgorithm", "SMCInfo", "SMCState", "StageHistory", "record", "smc"]
