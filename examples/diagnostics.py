"""Diagnostics of a JarzynskiSMC run: ArviZ DataTree, weighted summary and plots.

Runs four independent SMC runs on a conjugate model with plates (exact posterior known),
prints the converted tree and the weighted summary, and writes the figures used by
docs/diagnostics.md to examples/figures/. Run with

    MPLBACKEND=Agg python examples/diagnostics.py
"""

import pathlib

import arviz_plots as azp
import arviz_stats as azs
import jax
import matplotlib.pyplot as plt
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC
from scipy import stats

from numpyro_jarzynski import JarzynskiSMC
from numpyro_jarzynski import diagnostics as D

FIGURES = pathlib.Path(__file__).resolve().parent / "figures"
PRIOR_SD, NOISE_SD = 2.0, 1.0


def model(y):
    with numpyro.plate("group", y.shape[1]):
        mu = numpyro.sample("mu", dist.Normal(0.0, PRIOR_SD))
    with numpyro.plate("obs", y.shape[0], dim=-2), numpyro.plate("group", y.shape[1]):
        numpyro.sample("y", dist.Normal(mu, NOISE_SD), obs=y)


def main():
    FIGURES.mkdir(parents=True, exist_ok=True)
    y = np.random.default_rng(0).normal(size=(5, 3)) + np.array([0.0, 1.0, -1.0])
    mcmc = MCMC(
        JarzynskiSMC(model, num_particles=1000, resample_threshold=0.3),
        num_warmup=20, num_samples=1, num_chains=4, chain_method="vectorized",
        progress_bar=False,
    )
    mcmc.run(jax.random.key(0), y)

    tree = D.to_datatree(mcmc, log_likelihood=True, coords={"group": ["a", "b", "c"]})
    print(tree)

    result = D.print_summary(mcmc)  # instead of mcmc.print_summary(): one row per quantity

    prec = 1 / PRIOR_SD**2 + y.shape[0] / NOISE_SD**2
    mean, sd = y.sum(0) / NOISE_SD**2 / prec, prec**-0.5
    print("\nexact posterior mean", np.round(mean, 4), "sd", round(sd, 4))
    n = y.shape[0]
    cov = NOISE_SD**2 * np.eye(n) + PRIOR_SD**2 * np.ones((n, n))
    exact = sum(stats.multivariate_normal(np.zeros(n), cov).logpdf(y[:, g]) for g in range(3))
    print(f"exact log evidence {exact:.4f}; SMC {result.log_evidence:.4f} "
          f"± {result.log_evidence_se:.4f}")

    # any ArviZ function is correct on the equally weighted (resampled) view
    eq = D.to_datatree(mcmc, resampled=True, coords={"group": ["a", "b", "c"]})
    print("\nArviZ summary of the equal-weight view:")
    print(azs.summary(eq))

    reference = {f"mu[{g}]": stats.norm(mean[g], sd).pdf for g in range(3)}
    figs = [
        D.plot_stages(tree, FIGURES / "diagnostics_stages.png"),
        D.plot_log_weights(tree, FIGURES / "diagnostics_log_weights.png"),
        D.plot_weighted_marginals(mcmc, path=FIGURES / "diagnostics_marginals.png",
                                  reference=reference),
    ]
    # EBM training curves take a plain dict of arrays (here a synthetic example)
    it = np.arange(200)
    history = {
        "iteration": it,
        "cross_entropy": 2.0 + 1.5 * np.exp(-it / 40),
        "log_z": 3.0 * (1 - np.exp(-it / 50)),
        "ess": 0.6 + 0.3 * np.cos(it / 15) ** 2,
    }
    figs.append(D.plot_training_history(history, FIGURES / "diagnostics_training.png"))
    pc = azp.plot_dist(eq, var_names=["mu"])
    pc.savefig(FIGURES / "diagnostics_arviz_plot_dist.png")
    for fig in figs:
        plt.close(fig)
    print("\nfigures written to", FIGURES)


if __name__ == "__main__":
    main()
