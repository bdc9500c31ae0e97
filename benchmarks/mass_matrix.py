"""Diagonal, dense and low-rank mass matrices on a strongly correlated Gaussian, at one budget.

Target: ``z ~ N(0, 3² I_d)`` a priori, observed through ``N(μ; z, Σ)`` with ``Σ`` unit variances
and correlation ``ρ`` between every pair (``--corr equi``, one dominant direction: eigenvalues
``1 + (d − 1)ρ`` and ``1 − ρ``) or ``ρ^{|i − j|}`` (``--corr ar1``, a spread spectrum). The
posterior is Gaussian, ``log Z = log N(μ; 0, 9I + Σ)`` exactly.

For each mass (``JarzynskiSMC`` default, ``dense_mass=True``, ``mass_rank=k``) and each move it
runs ``--runs`` independent SMC runs (vectorised chains) at the same N, stages and moves per
stage, and prints the log-Z error and sd over the runs, the acceptance and step size of the
last stages, and the error of the weighted posterior mean (in posterior sds, RMS over
coordinates and runs), with the process CPU time and the wall time of each configuration.

    .venv/bin/python benchmarks/mass_matrix.py            # d = 20, ρ = 0.95, MALA and HMC
"""

import argparse
import time
import warnings

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC
from scipy.stats import multivariate_normal

from numpyro_jarzynski import HMC, MALA, JarzynskiSMC


def problem(d, rho, corr):
    idx = np.arange(d)
    sigma = (rho ** np.abs(idx[:, None] - idx[None, :]) if corr == "ar1"
             else np.full((d, d), rho) + (1 - rho) * np.eye(d))
    mu = np.random.default_rng(0).normal(0.0, 1.0, d)
    exact = multivariate_normal(np.zeros(d), 9.0 * np.eye(d) + sigma).logpdf(mu)
    post_cov = np.linalg.inv(np.linalg.inv(sigma) + np.eye(d) / 9.0)
    post_mean = post_cov @ np.linalg.solve(sigma, mu)
    sig32, mu32 = sigma.astype(np.float32), mu.astype(np.float32)

    def model():
        z = numpyro.sample("z", dist.Normal(0.0, 3.0).expand([d]).to_event(1))
        numpyro.sample("obs", dist.MultivariateNormal(z, covariance_matrix=sig32), obs=mu32)

    return model, exact, post_mean, np.sqrt(np.diag(post_cov))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=20)
    p.add_argument("--rho", type=float, default=0.95)
    p.add_argument("--corr", choices=("equi", "ar1"), default="equi")
    p.add_argument("--rank", type=int, default=2)
    p.add_argument("--particles", type=int, default=1000)
    p.add_argument("--stages", type=int, default=40)
    p.add_argument("--moves", type=int, default=2)
    p.add_argument("--runs", type=int, default=16)
    p.add_argument("--masses", default="diagonal,dense,low_rank", help="comma-separated subset")
    p.add_argument("--moves-list", default="mala,hmc", help="comma-separated subset")
    a = p.parse_args()
    model, exact, post_mean, post_sd = problem(a.dim, a.rho, a.corr)
    print(f"d={a.dim} rho={a.rho} corr={a.corr} N={a.particles} stages={a.stages} "
          f"moves/stage={a.moves} runs={a.runs}; exact log Z = {exact:.4f}")
    print("| move | mass | log-Z error | log-Z sd | acceptance | step | posterior-mean error "
          "(sd) | CPU s | wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    masses = {"diagonal": ("diagonal", {}), "dense": ("dense", {"dense_mass": True}),
              "low_rank": (f"low rank {a.rank}", {"mass_rank": a.rank})}
    moves = {"mala": MALA(), "hmc": HMC(num_steps=5)}
    for move in (moves[m] for m in a.moves_list.split(",")):
        for label, kw in (masses[m] for m in a.masses.split(",")):
            c0, t0 = time.process_time(), time.time()
            kernel = JarzynskiSMC(model, num_particles=a.particles, move=move,
                                  num_moves=a.moves, **kw)
            mcmc = MCMC(kernel, num_warmup=a.stages, num_samples=1, num_chains=a.runs,
                        chain_method="vectorized", progress_bar=False)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                mcmc.run(jax.random.key(0), extra_fields=("log_weights",))
            s = mcmc.last_state
            lz = np.asarray(s.log_evidence, np.float64)
            z = np.asarray(s.z["z"], np.float64)  # (runs, N, d), unconstrained = constrained
            lw = np.asarray(s.log_weights, np.float64)
            w = np.exp(lw - lw.max(1, keepdims=True))
            w /= w.sum(1, keepdims=True)
            mean = np.einsum("rn,rnd->rd", w, z)
            err = np.sqrt(np.mean(((mean - post_mean) / post_sd) ** 2))
            acc = np.asarray(s.history.acceptance_rate)[:, -10:].mean()
            step = float(np.mean(s.step_size))
            print(f"| {move.name} | {label} | {lz.mean() - exact:+.3f} | {lz.std(ddof=1):.3f} | "
                  f"{acc:.2f} | {step:.3f} | {err:.3f} | {time.process_time() - c0:.0f} | "
                  f"{time.time() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
