"""Importance-sampling check of the stochastic-volatility log Z (``smc_vs_blackjax.py``'s ``sv``).

Student-t(5) proposal fitted (mean, 1.2² × covariance) to a NUTS run in the unconstrained space
``[log ν, s_1..s_100, log σ]``, float64; prints log Z, its standard error, the ESS and the
Pareto k-hat of the importance weights (k > 0.7: the estimate is not to be trusted).

Run: ``nice -n 10 .venv/bin/python benchmarks/sv_is_check.py [num_draws] [nuts_seed]``.
"""

import sys

import jax
import numpy as np

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
import peer_references as PR
import smc_vs_blackjax as B

if __name__ == "__main__":
    num = int(sys.argv[1]) if len(sys.argv) > 1 else 4_000_000
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    p = B.sv_problem()
    draws, diag = PR.nuts(p.model, p.model_args, 1000, 2000, seed=seed)
    u = np.column_stack([np.log(draws["nu"]), draws["s"], np.log(draws["sigma"])])
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpyro.distributions as dist

    r64 = jnp.asarray(np.asarray(p.model_args[0]), jnp.float64)
    t = r64.shape[0]

    def log_joint(u):
        log_nu, s, log_sigma = u[0], u[1:t + 1], u[t + 1]
        nu, sigma = jnp.exp(log_nu), jnp.exp(log_sigma)
        return (dist.Exponential(0.1).log_prob(nu) + log_nu + dist.Exponential(50.0).log_prob(
            sigma) + log_sigma + dist.GaussianRandomWalk(scale=sigma, num_steps=t).log_prob(s)
            + jnp.sum(dist.StudentT(nu, 0.0, jnp.exp(s)).log_prob(r64)))

    log_z, se, ess, khat = PR.t_importance(log_joint, u, num, seed=seed, khat=True)
    print(f"IS t5 (NUTS seed {seed}, {num:.0e} draws): log Z {log_z:.4f} ± {se:.4f}, "
          f"ESS {ess:.0f}, k-hat {khat:.2f}", flush=True)
