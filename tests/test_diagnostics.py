"""ArviZ diagnostics of weighted populations, checked against a conjugate model's exact answers.

Two compiled runs in all (module fixtures): six independent runs (vectorized chains) of the
plated normal-normal model, and one single-run case (no chain axis in the kernel's state).
Tolerances are 5 standard errors, the errors estimated from the spread across the six runs.
"""


import arviz_stats as azs
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import MCMC
from scipy import stats as sps

from numpyro_jarzynski import JarzynskiSMC
from numpyro_jarzynski import diagnostics as D
from numpyro_jarzynski.diagnostics.summary import normalized_weights
from numpyro_jarzynski.engine.weights import pareto_khat as engine_khat

matplotlib.use("Agg")

PRIOR_SD, NOISE_SD = 2.0, 1.0
NUM_RUNS, NUM_PARTICLES = 6, 400
Y = np.random.default_rng(0).normal(size=(5, 3)) + np.array([0.0, 1.0, -1.0])


def model(y):
    with numpyro.plate("group", y.shape[1]):
        mu = numpyro.sample("mu", dist.Normal(0.0, PRIOR_SD))
    with numpyro.plate("obs", y.shape[0], dim=-2), numpyro.plate("group", y.shape[1]):
        numpyro.sample("y", dist.Normal(mu, NOISE_SD), obs=y)


def exact_posterior(y):
    prec = 1 / PRIOR_SD**2 + y.shape[0] / NOISE_SD**2
    return y.sum(0) / NOISE_SD**2 / prec, np.full(y.shape[1], prec**-0.5)


def exact_log_evidence(y):
    n = y.shape[0]
    cov = NOISE_SD**2 * np.eye(n) + PRIOR_SD**2 * np.ones((n, n))
    return sum(sps.multivariate_normal(np.zeros(n), cov).logpdf(y[:, g]) for g in range(y.shape[1]))


@pytest.fixture(scope="module")
def run():
    kernel = JarzynskiSMC(model, num_particles=NUM_PARTICLES, resample_threshold=0.3)
    mcmc = MCMC(kernel, num_warmup=10, num_samples=2, num_chains=NUM_RUNS,
                chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.key(0), Y, extra_fields=("log_evidence",))
    return mcmc


@pytest.fixture(scope="module")
def single_run():
    mcmc = MCMC(JarzynskiSMC(model, num_particles=100), num_warmup=4, num_samples=1,
                progress_bar=False)
    mcmc.run(jax.random.key(1), Y)
    return mcmc


@pytest.fixture(scope="module")
def tree(run):
    return D.to_datatree(run, log_likelihood=True, coords={"group": ["a", "b", "c"]})


@pytest.fixture(scope="module")
def weighted(run):
    return D.summary(run, warn=False)


def test_tree_dims_coords_and_alignment(run, tree):
    post = tree["posterior"]["mu"]
    assert post.dims == ("chain", "draw", "group")
    assert post.shape == (NUM_RUNS, NUM_PARTICLES, 3)
    assert list(tree["posterior"]["group"].values) == ["a", "b", "c"]
    samples = run.get_samples(group_by_chain=True)["mu"]
    log_w = run.get_extra_fields(group_by_chain=True)["log_weights"]
    np.testing.assert_array_equal(post.values, np.asarray(samples[:, -1]))
    np.testing.assert_array_equal(tree["sample_stats"]["log_weights"].values, log_w[:, -1])
    assert tree["sample_stats"]["log_weights"].dims == ("chain", "draw")

    first = D.to_datatree(run, step=0)
    np.testing.assert_array_equal(first["posterior"]["mu"].values, np.asarray(samples[:, 0]))
    np.testing.assert_array_equal(first["sample_stats"]["log_weights"].values, log_w[:, 0])

    ll = tree["log_likelihood"]["y"]
    assert ll.dims == ("chain", "draw", "obs", "group")
    c, i = 2, 17  # pointwise log-likelihood of one particle, recomputed by hand
    expect = sps.norm(post.values[c, i], NOISE_SD).logpdf(Y)
    np.testing.assert_allclose(ll.values[c, i], expect, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(tree["observed_data"]["y"].values, Y)
    assert tree["observed_data"]["y"].dims == ("obs", "group")

    stages = tree["smc_stages"]
    assert stages["beta"].dims == ("chain", "stage") and stages["beta"].shape == (NUM_RUNS, 10)
    np.testing.assert_allclose(stages["beta"].values[:, -1], 1.0)
    np.testing.assert_array_equal(stages["beta"].values, run.last_state.history.beta)
    for field in ("ess", "cess", "acceptance_rate", "step_size", "resampled", "pareto_khat"):
        assert field in stages


def test_log_marginal_likelihood_is_kernel_log_evidence(run, tree):
    lml = tree["sample_stats"]["log_marginal_likelihood"]
    assert lml.dims == ("chain",)
    np.testing.assert_array_equal(lml.values, run.last_state.log_evidence)
    # the stage increments add up to the same estimate (prior draws start at log Z_0 = 0)
    np.testing.assert_allclose(tree["smc_stages"]["log_evidence"].values[:, -1], lml.values,
                               atol=1e-4)
    se = lml.values.std(ddof=1) / np.sqrt(NUM_RUNS)
    assert abs(lml.values.mean() - exact_log_evidence(Y)) < 5 * se


def test_weighted_summary_matches_analytic_posterior(run, weighted):
    mean, sd = exact_posterior(Y)
    table = weighted.table
    rows = [f"mu[{g}]" for g in range(3)]
    assert list(table.index) == rows  # one row per quantity, never one per particle
    samples, log_w, _ = D.population(run)
    w = normalized_weights(log_w)
    x = samples["mu"].astype(np.float64)  # (run, N, group)
    run_mean = np.einsum("cn,cng->cg", w, x)
    run_sd = np.sqrt(np.einsum("cn,cng->cg", w, (x - run_mean[:, None]) ** 2))
    se_mean = run_mean.std(0, ddof=1) / np.sqrt(NUM_RUNS)
    se_sd = run_sd.std(0, ddof=1) / np.sqrt(NUM_RUNS)
    np.testing.assert_allclose(table["mean"].values.astype(float), run_mean.mean(0), rtol=1e-6)
    np.testing.assert_allclose(table["mcse_mean"].values.astype(float), se_mean, rtol=1e-5)
    assert np.all(np.abs(table["mean"].values.astype(float) - mean) < 5 * se_mean)
    assert np.all(np.abs(table["sd"].values.astype(float) - sd) < 5 * se_sd + 1e-3 * sd)

    lo = table["eti89_lb"].values.astype(float)
    hi = table["eti89_ub"].values.astype(float)
    q = sps.norm(mean, sd)
    run_q = np.stack([D.weighted_quantile(x[c].T, w[c], [0.055, 0.945]) for c in range(NUM_RUNS)])
    se_q = run_q.std(0, ddof=1) / np.sqrt(NUM_RUNS)  # (2, group)
    assert np.all(np.abs(lo - q.ppf(0.055)) < 5 * se_q[0])
    assert np.all(np.abs(hi - q.ppf(0.945)) < 5 * se_q[1])

    np.testing.assert_allclose(weighted.runs["ess_kish"].values, 1 / np.sum(w**2, 1), rtol=1e-4)
    total = (1 / np.sum(w**2, 1)).sum()
    assert weighted.table["ess_kish"].values[0] == pytest.approx(total, rel=1e-4)
    assert np.all(np.abs(table["r_hat"].values.astype(float) - 1) < 0.05)
    lml = np.asarray(run.last_state.log_evidence, np.float64)
    assert weighted.log_evidence == pytest.approx(lml.mean(), rel=1e-6)
    assert weighted.log_evidence_se == pytest.approx(lml.std(ddof=1) / np.sqrt(NUM_RUNS), rel=1e-5)


def test_equal_weight_view_agrees_with_weighted_summary(run, weighted):
    eq = D.to_datatree(run, resampled=True, rng_key=jax.random.key(3))
    assert np.all(eq["sample_stats"]["log_weights"].values == 0)
    np.testing.assert_array_equal(eq["sample_stats"]["log_marginal_likelihood"].values,
                                  run.last_state.log_evidence)
    az = azs.summary(eq, fmt="xarray", round_to="none", ci_kind="eti", ci_prob=0.89)["mu"]
    sd = weighted.table["sd"].values.astype(float)
    # resampling N of N draws per run adds at most multinomial noise: var ≈ sd² / (C N)
    tol = 5 * sd / np.sqrt(NUM_RUNS * NUM_PARTICLES)
    mean = weighted.table["mean"].values.astype(float)
    assert np.all(np.abs(az.sel(summary="mean").values - mean) < tol)
    assert np.all(np.abs(az.sel(summary="sd").values - sd) < tol)
    assert np.all(np.abs(az.sel(summary="r_hat").values - 1) < 0.05)


def test_summary_rhat_is_arviz_rhat_of_the_equal_weight_view(run, weighted):
    eq = D.to_datatree(run, resampled=True, rng_key=jax.random.key(0))
    expect = azs.rhat(eq)["mu"].values
    # float64 here, float32 inside ArviZ: R-hat − 1 is about 1e-3 here, and float32 variances
    # here carry a relative error of about 1e-5 of R-hat (measured up to 1.6e-5 on one
    # machine); 1e-4 stays a tenth of R-hat − 1.
    np.testing.assert_allclose(weighted.table["r_hat"].values.astype(float), expect, rtol=1e-4)


def test_pareto_khat_heavy_matched_uniform():
    rng = np.random.default_rng(1)
    heavy = np.log1p(rng.pareto(0.5, size=(2, 1000)))  # tail index 0.5: true k = 2
    matched = rng.normal(0.0, 0.2, size=(2, 1000))  # near-constant weights
    assert np.all(D.pareto_khat(heavy) > 0.7)
    assert np.all(D.pareto_khat(matched) < 0.5)
    assert np.all(D.pareto_khat(np.zeros((2, 1000))) == -np.inf)  # right after resampling
    assert np.isnan(D.pareto_khat(np.zeros(10)))  # too few particles for a tail fit


def test_summary_warns_on_heavy_tailed_weights(tree):
    bad = tree.copy()
    stats = bad["sample_stats"].to_dataset()
    rng = np.random.default_rng(2)
    stats["log_weights"] = (("chain", "draw"), np.log1p(rng.pareto(0.5, (NUM_RUNS, NUM_PARTICLES))))
    bad["sample_stats"] = stats
    with pytest.warns(UserWarning, match="k-hat of the weights is above 0.7"):
        result = D.summary(bad)
    assert np.all(result.runs["pareto_k"] > 0.7) and result.warnings


def test_engine_khat_matches_arviz():
    rng = np.random.default_rng(4)
    sets = [np.log1p(rng.pareto(a, 1000)) for a in (0.5, 1.25, 5.0)]
    sets += [rng.normal(0, 2.0, 1000), rng.normal(0, 1.0, 100)]
    for lw in sets:
        ours = float(engine_khat(jnp.asarray(lw, jnp.float32)))
        assert ours == pytest.approx(float(D.pareto_khat(lw)), abs=2e-3)


def test_run_khat_is_fitted_from_the_recorded_tail(run):
    """The state's k-hat (fitted after the run from its recorded weight tail) is ArviZ's fit
    of the run's own final weights, chain by chain."""
    state = run.last_state
    lw = np.asarray(state.log_weights, np.float64)
    ours, theirs = np.asarray(state.pareto_khat), D.pareto_khat(lw)
    assert ours.shape == theirs.shape == (NUM_RUNS,)
    finite = np.isfinite(theirs)
    np.testing.assert_allclose(ours[finite], theirs[finite], atol=2e-3)
    np.testing.assert_array_equal(ours[~finite], theirs[~finite])
    assert np.asarray(state.history.pareto_khat).shape == state.history.beta.shape


def test_weighted_quantile_inverted_cdf():
    x, w = np.array([3.0, 1.0, 4.0, 2.0]), np.array([0.3, 0.1, 0.4, 0.2])
    got = D.weighted_quantile(x, w, [0.05, 0.1, 0.3, 0.31, 0.6, 0.61, 1.0])
    np.testing.assert_array_equal(got, [1, 1, 2, 3, 3, 4, 4])


def test_single_run_without_chain_axis(single_run, capsys):
    tree = D.to_datatree(single_run)
    assert tree["posterior"]["mu"].shape == (1, 100, 3)
    assert tree["smc_stages"]["beta"].shape == (1, 4)
    np.testing.assert_array_equal(tree["sample_stats"]["log_marginal_likelihood"].values,
                                  np.atleast_1d(single_run.last_state.log_evidence))
    result = D.print_summary(single_run)
    out = capsys.readouterr().out
    assert "mu[2]" in out and "mu[3]" not in out and len(result.table) == 3
    # One run: its own error bar (the genealogy's), not a spread over runs.
    own = float(np.atleast_1d(single_run.last_state.log_evidence_se)[0])
    assert np.isfinite(own) and own > 0 and result.log_evidence_se == pytest.approx(own)
    assert "one run: its error bar from the particles' genealogy" in out


def test_bad_inputs(run):
    with pytest.raises(IndexError, match="num_samples"):
        D.to_datatree(run, step=2)
    with pytest.raises(ValueError, match="call mcmc.run"):
        D.to_datatree(MCMC(JarzynskiSMC(model), num_warmup=2, num_samples=1))
    with pytest.raises(TypeError, match="DataTree"):
        D.summary({"mu": np.zeros(3)})
    with pytest.raises(KeyError, match="not in the posterior"):
        D.summary(run, var_names=["sigma"])
    with pytest.raises(ValueError, match="equal lengths"):
        D.plot_training_history({"log_z": np.zeros(3), "ess": np.zeros(4)})


def test_plots_write_files(run, tree, tmp_path):
    import matplotlib.pyplot as plt

    mean, sd = exact_posterior(Y)
    ref = {f"mu[{g}]": sps.norm(mean[g], sd[g]).pdf for g in range(3)}
    figs = {
        "stages.png": D.plot_stages(tree, tmp_path / "stages.png"),
        "weights.png": D.plot_log_weights(tree, tmp_path / "weights.png"),
        "marginals.png": D.plot_weighted_marginals(run, path=tmp_path / "marginals.png",
                                                   reference=ref),
        "training.png": D.plot_training_history(
            {"cross_entropy": np.linspace(3, 1, 20), "log_z": np.linspace(0, 2, 20),
             "ess": np.full(20, 0.8)}, tmp_path / "training.png"),
    }
    for name, fig in figs.items():
        assert (tmp_path / name).stat().st_size > 5000
        plt.close(fig)
