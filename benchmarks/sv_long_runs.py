"""Long SMC runs on NumPyro's stochastic-volatility model (T = 100) against the settled
reference log Z (``sv_reference.py``: −76.1007) and NUTS' posterior marginals
(``peer_references.json``): issue 10's SV targets, log Z within 1 nat and every marginal within
0.2 posterior sd.

Configuration: ``JarzynskiSMC(move=HMC(num_steps=10), num_moves=2, target_ess=0.99)``,
N = 2000, 200 stages, ``--chains`` vectorised chains. The first step is tuned by the pilot
unless ``--step-size`` is given. ``--no-cap`` removes the quarter-period cap of the
Hamiltonian step, to measure what it changes.

Run: ``MPLBACKEND=Agg python benchmarks/sv_long_runs.py --chains 8`` (about 80 CPU s on 2 cores).
Process CPU time includes compilation.
"""

import argparse
import dataclasses
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import MCMC

from numpyro_jarzynski import JarzynskiSMC
from numpyro_jarzynski.engine.kernels import HMC

HERE = pathlib.Path(__file__).parent


@dataclasses.dataclass(frozen=True)
class UncappedHMC(HMC):
    """HMC without the quarter-period cap (the step follows the acceptance rule alone)."""

    def trajectory_cap(self, step_size, jump, moved):
        return jnp.inf

    def default_step(self, dim):
        return max(dim, 1) ** (-0.25)


def main(argv=None):
    import sys

    sys.path.insert(0, str(HERE))
    from smc_vs_blackjax import flatten_sites, load_references, sv_problem

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--chains", type=int, default=8)
    p.add_argument("--particles", type=int, default=2000)
    p.add_argument("--stages", type=int, default=200)
    p.add_argument("--step-size", type=float, default=None, help="first step (default: pilot)")
    p.add_argument("--no-cap", action="store_true", help="HMC without the quarter-period cap")
    a = p.parse_args(argv)
    prob = sv_problem(load_references())
    ref = json.loads((HERE / "peer_references.json").read_text())["sv"]
    mean, sd = np.asarray(ref["mean"]), np.asarray(ref["sd"])
    move = (UncappedHMC if a.no_cap else HMC)(num_steps=10)
    kw = {} if a.step_size is None else {"step_size": a.step_size}
    c0, w0 = time.process_time(), time.perf_counter()
    kernel = JarzynskiSMC(prob.model, num_particles=a.particles, move=move, num_moves=2,
                          target_ess=0.99, **kw)
    mcmc = MCMC(kernel, num_warmup=a.stages, num_samples=1, num_chains=a.chains,
                chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.key(0), *prob.model_args)
    state = mcmc.last_state
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    lz = np.asarray(state.log_evidence, np.float64).reshape(-1)
    z = np.asarray(jax.vmap(jax.vmap(prob.constrain))(flatten_sites(state.z)), np.float64)
    lw = np.asarray(state.log_weights, np.float64)
    w = np.exp(lw - lw.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    err = np.abs(np.einsum("cn,cnd->cd", w, z) - mean) / sd
    print(f"# sv long runs: N={a.particles}, stages={a.stages}, chains={a.chains}, "
          f"first step {'pilot' if a.step_size is None else a.step_size}, "
          f"cap {'off' if a.no_cap else 'on'}; reference log Z {ref['log_z']:.4f}")
    print("log Z per chain:", np.round(lz, 3).tolist())
    print(f"mean {lz.mean():.3f} ± {lz.std(ddof=1) / np.sqrt(lz.size):.3f} (sd {lz.std(ddof=1):.2f}),"
          f" error {lz.mean() - ref['log_z']:+.3f} nat")
    print("max marginal error per chain (NUTS sds):", np.round(err.max(-1), 3).tolist())
    print("first step per chain:", np.round(np.asarray(state.history.step_size)[:, 0], 4).tolist())
    print(f"cpu {cpu:.1f} s, wall {wall:.1f} s (compilation included)")


if __name__ == "__main__":
    main()
