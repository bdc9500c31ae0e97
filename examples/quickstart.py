"""Quickstart: Bayesian linear regression with JarzynskiSMC.

The model is conjugate (Gaussian prior on the coefficients, known noise), so the posterior
and the log marginal likelihood are known exactly and printed next to the estimates.
Run with ``make demo``; the figure goes to ``examples/figures/quickstart.png``.
"""

import pathlib

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC

from numpyro_jarzynski import JarzynskiSMC, print_summary

PRIOR_SD, NOISE_SD = 2.0, 0.5


def regression(x, y=None):
    coef = numpyro.sample("coef", dist.Normal(0.0, PRIOR_SD).expand([x.shape[1]]).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(x @ coef, NOISE_SD), obs=y)


def exact_answers(x, y):
    """Evidence: y ~ N(0, σ² I + τ² X Xᵀ). Posterior: N(m, S), S = (XᵀX/σ² + I/τ²)⁻¹."""
    n, d = x.shape
    cov = NOISE_SD**2 * np.eye(n) + PRIOR_SD**2 * x @ x.T
    _, logdet = np.linalg.slogdet(cov)
    log_z = -0.5 * (y @ np.linalg.solve(cov, y) + logdet + n * np.log(2 * np.pi))
    post_cov = np.linalg.inv(x.T @ x / NOISE_SD**2 + np.eye(d) / PRIOR_SD**2)
    return log_z, post_cov @ x.T @ y / NOISE_SD**2, np.sqrt(np.diag(post_cov))


def main():
    rng = np.random.default_rng(0)
    n = 50
    x = np.column_stack([np.ones(n), rng.uniform(-2, 2, n), rng.normal(size=n)]).astype(np.float32)
    y = (x @ np.array([1.0, -0.7, 0.3]) + NOISE_SD * rng.normal(size=n)).astype(np.float32)

    kernel = JarzynskiSMC(regression, num_particles=2000, move="mala")
    mcmc = MCMC(kernel, num_warmup=100, num_samples=1, num_chains=4, chain_method="vectorized")
    mcmc.run(jax.random.key(0), x, y, extra_fields=("beta", "ess"))

    coef = np.asarray(mcmc.get_samples(group_by_chain=True)["coef"][:, -1])  # (runs, N, 3)
    log_w = np.asarray(mcmc.get_extra_fields(group_by_chain=True)["log_weights"][:, -1])
    w = np.asarray(jax.nn.softmax(jnp.asarray(log_w), axis=-1))[..., None]
    mean = (w * coef).sum(1).mean(0)
    sd = np.sqrt((w * (coef - mean) ** 2).sum(1).mean(0))
    log_z_runs = np.asarray(mcmc.last_state.log_evidence)
    log_z, post_mean, post_sd = exact_answers(x, y)

    print_summary(mcmc)  # weighted: one row per quantity, not one per particle
    print("\nWeighted posterior (4 independent SMC runs × 2000 particles) vs exact:")
    print(f"{'':>8} {'mean':>8} {'exact':>8} {'sd':>8} {'exact':>8}")
    for j in range(3):
        print(f"coef[{j}] {mean[j]:8.4f} {post_mean[j]:8.4f} {sd[j]:8.4f} {post_sd[j]:8.4f}")
    print(
        f"\nlog marginal likelihood: {log_z_runs.mean():.4f} ± "
        f"{log_z_runs.std(ddof=1) / 2:.4f} (runs: {np.round(log_z_runs, 3)}), exact {log_z:.4f}"
    )
    # Each run's own error bar, from its particles' genealogy (docs/trust.md).
    own = np.asarray(mcmc.last_state.log_evidence_se)
    print(f"each run's own error bar: {np.round(own, 3)} (the runs' sd: "
          f"{log_z_runs.std(ddof=1):.3f})")
    hist = mcmc.last_state.history
    stages = int(np.argmax(np.asarray(hist.beta[0]) >= 1.0)) + 1
    print(f"adaptive schedule reached beta = 1 after {stages} of 100 stages")

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    grid = np.linspace(-1, 1, 400)
    for j, ax in enumerate(axes):
        vals, wj = coef[..., j].ravel(), (w[..., 0] / 4).ravel()
        ax.hist(vals, bins=60, weights=wj, density=True, alpha=0.6, label="weighted particles")
        g = post_mean[j] + 5 * post_sd[j] * grid
        dens = np.exp(-0.5 * ((g - post_mean[j]) / post_sd[j]) ** 2) / (post_sd[j] * np.sqrt(2 * np.pi))
        ax.plot(g, dens, "k", label="exact posterior")
        ax.set_title(f"coef[{j}]")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"JarzynskiSMC: log Z = {log_z_runs.mean():.3f} (exact {log_z:.3f})")
    fig.tight_layout()
    out = pathlib.Path(__file__).parent / "figures" / "quickstart.png"
    out.parent.mkdir(exist_ok=True)
    fig.savefig(out, dpi=100)
    print(f"figure saved to {out}")


if __name__ == "__main__":
    main()
