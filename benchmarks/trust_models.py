"""Issue 9 measurements: does JarzynskiSMC give the right log evidence on ordinary models, or say so?

Every row is one setting, run as independent chains (``chain_method="vectorized"``) with fixed
seeds. Each row prints the log evidence of every run, their mean and spread, the reference value,
and what the package told the user (the warnings raised by ``mcmc.run``). A row is "ok" when the
mean is within 3 standard errors (plus 0.05 nat of float32 slack) of the reference, "warned" when
it is off but the run warned, and "SILENT" when it is off and nothing was said: the class of
result that issue 9 forbids.

Models (the reproducers of ``TRUST.md``):

* eight schools, centred and non-centred (``tau ~ HalfCauchy(5)``), every move (MALA, ULA,
  HMC, unadjusted HMC), at 8 / 100 / 300 stages: the stage budget in both directions, and ULA on a funnel-shaped posterior. The exact
  log Z is computed by quadrature over (mu, tau) with the school effects integrated analytically.
* logistic regression on scikit-learn's breast-cancer data (d = 31, standardised, N(0, 1)
  prior), ULA with 2 and 8 moves per stage: more moves must not be worse. Reference: MALA with
  many stages.
* a Poisson GLM with 11 coefficients on 5000 simulated counts (the published reproducer used
  real counts we do not ship), at 10 / 25 / 150 stages: a budget that is too small must warn.
  Reference: MALA with 300 stages.

Run: ``MPLBACKEND=Agg .venv/bin/python benchmarks/trust_models.py`` (about 20 minutes of CPU on
2 cores); ``--only schools|logistic|poisson`` runs one block.
"""

import argparse
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC
from scipy import integrate, stats

from numpyro_jarzynski import JarzynskiSMC

# ---------------------------------------------------------------- models
Y8 = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0], np.float32)
S8 = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0], np.float32)


def schools_centred(sigma, y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("J", sigma.shape[0]):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def schools_noncentred(sigma, y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("J", sigma.shape[0]):
        eta = numpyro.sample("eta", dist.Normal(0.0, 1.0))
        numpyro.sample("obs", dist.Normal(mu + tau * eta, sigma), obs=y)


def schools_exact():
    def integrand(tau, mu):
        like = stats.norm.logpdf(Y8, mu, np.sqrt(S8.astype(float) ** 2 + tau**2)).sum()
        return np.exp(like + 31.0) * stats.norm.pdf(mu, 0, 5) * 2 * stats.cauchy.pdf(tau, 0, 5)

    val, _ = integrate.dblquad(integrand, -60, 60, 0, np.inf, epsabs=1e-12, epsrel=1e-10)
    return np.log(val) - 31.0


def logistic(x, y=None):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=x @ w), obs=y)


def breast_cancer():
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x = (data.data - data.data.mean(0)) / data.data.std(0)
    x = np.column_stack([np.ones(len(x)), x]).astype(np.float32)
    return x, data.target.astype(np.float32)


def poisson_glm(x, y=None):
    b = numpyro.sample("b", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Poisson(jnp.exp(x @ b)), obs=y)


def poisson_data(n=5000, seed=0):
    rng = np.random.default_rng(seed)
    x = np.column_stack([np.ones(n), rng.normal(size=(n, 10))]).astype(np.float32)
    beta = np.concatenate([[1.5], rng.normal(0, 0.3, 10)])
    return x, rng.poisson(np.exp(x @ beta)).astype(np.float32)


# ---------------------------------------------------------------- runner
def run(model, args, *, move, warmup, chains=4, particles=1000, seed=0, **kw):
    kernel = JarzynskiSMC(model, num_particles=particles, move=move, **kw)
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=1, num_chains=chains,
                chain_method="vectorized", progress_bar=False)
    t0, c0 = time.perf_counter(), time.process_time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            mcmc.run(jax.random.key(seed), *args)
            log_z = np.asarray(mcmc.last_state.log_evidence, np.float64)
            error = None
        except FloatingPointError as err:  # SMCFailure: every particle died
            log_z, error = np.full(chains, np.nan), str(err).splitlines()[0]
    said = [str(w.message).splitlines()[0][:90] for w in caught
            if issubclass(w.category, UserWarning)]
    if error:
        said.insert(0, "raised: " + error[:90])
    return log_z, said, time.perf_counter() - t0, time.process_time() - c0


def report(name, log_z, said, ref, wall, cpu):
    mean = np.nanmean(log_z)
    se = np.nanstd(log_z, ddof=1) / np.sqrt(np.sum(np.isfinite(log_z))) if np.isfinite(
        log_z).sum() > 1 else np.nan
    # "ok" needs a usable estimate: within 3 se (+0.05 nat) of the reference, with se < 0.5 nat
    ok = np.isfinite(mean) and se < 0.5 and abs(mean - ref) <= 3 * se + 0.05
    verdict = "ok" if ok else ("warned" if said else "SILENT")
    runs = " ".join(f"{v:.2f}" for v in log_z)
    print(f"{name:<34} {mean:10.3f} {se:7.3f} {ref:10.3f} {mean - ref:+8.3f}  {verdict:<7}"
          f" {wall:6.1f}s wall {cpu:6.1f}s cpu | runs: {runs}")
    for s in dict.fromkeys(said):
        print(f"{'':<36}-> {s}")
    return verdict


def header(title):
    print(f"\n## {title}")
    print(f"{'setting':<34} {'mean':>10} {'se':>7} {'ref':>10} {'diff':>8}  verdict")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["schools", "logistic", "poisson"])
    parser.add_argument("--particles", type=int, default=1000)
    opts = parser.parse_args()
    n_p = opts.particles
    print(f"jax {jax.__version__}, numpyro {numpyro.__version__}, {jax.devices()[0].platform}, "
          f"N = {n_p}, float32")
    verdicts = []

    if opts.only in (None, "schools"):
        ref = schools_exact()
        header(f"eight schools (exact log Z {ref:.3f})")
        for model, label in ((schools_noncentred, "non-centred"), (schools_centred, "centred")):
            for move in ("mala", "ula", "hmc", "uhmc"):
                for warmup in (8, 100, 300):
                    out = run(model, (S8, Y8), move=move, warmup=warmup, particles=n_p)
                    verdicts.append(report(f"{label} {move} {warmup} stages", out[0], out[1],
                                           ref, *out[2:]))

    if opts.only in (None, "logistic"):
        x, y = breast_cancer()
        ref_z, *_ = run(logistic, (x, y), move="mala", warmup=200, particles=2 * n_p,
                        num_moves=5, seed=99)
        ref = float(np.mean(ref_z))
        header(f"logistic regression, breast cancer d = 31 (reference: MALA 200 stages, "
               f"{ref:.3f} ± {np.std(ref_z, ddof=1) / 2:.3f})")
        for moves in (2, 8):
            out = run(logistic, (x, y), move="ula", warmup=100, chains=8, particles=n_p,
                      num_moves=moves)
            verdicts.append(report(f"ula {moves} moves/stage, 100 stages", out[0], out[1], ref,
                                   *out[2:]))

    if opts.only in (None, "poisson"):
        x, y = poisson_data()
        ref_z, *_ = run(poisson_glm, (x, y), move="mala", warmup=300, particles=2 * n_p,
                        num_moves=4, seed=99)
        ref = float(np.mean(ref_z))
        header(f"Poisson GLM, 11 coefficients, n = 5000 (reference: MALA 300 stages, "
               f"{ref:.3f} ± {np.std(ref_z, ddof=1) / 2:.3f})")
        for warmup in (10, 25, 150):
            out = run(poisson_glm, (x, y), move="mala", warmup=warmup, particles=n_p)
            verdicts.append(report(f"mala {warmup} stages", out[0], out[1], ref, *out[2:]))

    print(f"\nverdicts: {', '.join(f'{v} {verdicts.count(v)}' for v in dict.fromkeys(verdicts))}")


if __name__ == "__main__":
    main()
