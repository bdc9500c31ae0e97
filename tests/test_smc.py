"""JarzynskiSMC against exact answers: conjugate evidence and posterior, the ULA correction,
unequal modes, constrained supports; NumPyro integration; bad inputs.

Independent runs come from ``num_chains`` with ``chain_method="vectorized"`` (one compile)."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import MCMC
from scipy.special import gammaln

from numpyro_jarzynski import JarzynskiSMC

D, NOBS = 10, 5
RUNS = 10


def conjugate_model(y):
    z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([D]).to_event(1))
    numpyro.sample("y", dist.Normal(z, 1.0).to_event(1), obs=y)


def conjugate_truth(y):
    n = y.shape[0]
    cov = np.eye(n) + np.ones((n, n))
    _, logdet = np.linalg.slogdet(cov)
    prec = np.linalg.inv(cov)
    log_z = sum(
        -0.5 * (y[:, j] @ prec @ y[:, j]) - 0.5 * logdet - 0.5 * n * np.log(2 * np.pi)
        for j in range(y.shape[1])
    )
    post_var = 1.0 / (1.0 + n)
    return log_z, y.sum(0) * post_var, post_var


@pytest.fixture(scope="module")
def data():
    return np.random.default_rng(0).normal(1.0, 1.0, size=(NOBS, D)).astype(np.float32)


def run_smc(kernel, *args, warmup=100, samples=1, chains=RUNS, key=0, **kw):
    mcmc = MCMC(
        kernel, num_warmup=warmup, num_samples=samples, num_chains=chains,
        chain_method="vectorized", progress_bar=False,
    )
    mcmc.run(jax.random.key(key), *args, **kw)
    return mcmc


def weighted_moments(mcmc, site):
    z = np.asarray(mcmc.get_samples(group_by_chain=True)[site][:, -1], np.float64)
    lw = np.asarray(mcmc.get_extra_fields(group_by_chain=True)["log_weights"][:, -1], np.float64)
    w = np.exp(lw - lw.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    w = w.reshape(w.shape + (1,) * (z.ndim - 2))
    mean = (w * z).sum(1)
    var = (w * (z - mean[:, None]) ** 2).sum(1)
    return mean, var


# ["ula", "uhmc"]: two continuous moves in one list (a Composite: increments summed, both
# replaced by their adjusted twins once β = 1).
@pytest.mark.parametrize("move", ["mala", "ula", "hmc", "uhmc", ["ula", "uhmc"]], ids=str)
def test_conjugate_gaussian_evidence_and_posterior(data, move):
    log_z, post_mean, post_var = conjugate_truth(data)
    # The adaptive schedule reaches β = 1 at stage 17 here; 40 stages leave 23 of mixing.
    mcmc = run_smc(JarzynskiSMC(conjugate_model, num_particles=2000, move=move), data,
                   warmup=40)
    assert np.all(np.asarray(mcmc.last_state.history.beta)[:, -1] == 1.0)
    est = np.asarray(mcmc.last_state.log_evidence, np.float64)
    err = est - log_z
    se = est.std(ddof=1) / np.sqrt(RUNS)
    # Unbiased within Monte Carlo error (4 standard errors) and accurate in absolute terms.
    assert abs(err.mean()) < 4 * se + 0.02, (err, se)
    assert np.mean(np.abs(err)) < 0.1, err
    mean, var = weighted_moments(mcmc, "z")
    # Posterior sd 0.41, N = 2000, ESS >= 0.3 N: per-run SE of the mean <= 0.017.
    assert np.abs(mean.mean(0) - post_mean).max() < 4 * mean.std(0).max() / np.sqrt(RUNS) + 0.01
    assert np.abs(var.mean() - post_var) < 0.01
    assert mcmc.get_samples()["z"].shape == (RUNS, 2000, D)  # (chains·samples, N, D)


@pytest.mark.parametrize("move", ["hmc", "uhmc"])
def test_hamiltonian_trajectory_stops_at_a_quarter_period(move):
    """On a Gaussian whitened by the preconditioner a trajectory of length T = ε·L maps x to
    x cos T + p sin T. The acceptance rule alone grew HMC's step until T ≈ 3.6 (d = 50, L = 4):
    the move became the mirror x' ≈ −x whatever the momentum, resampled copies stayed copies,
    and log Z was 6× worse. The step is capped where the measured lag correlation
    1 − jump/acceptance reaches 0 (T = π/2): every stage's step stays near π/(2L), and the
    moves decorrelate (lag correlation near 0, not near −1)."""
    from numpyro_jarzynski.engine.kernels import HMC, UHMC

    d, leapfrog = 50, 4
    y = np.random.default_rng(1).normal(size=(4, d)).astype(np.float32)

    def model(y):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([d]).to_event(1))
        with numpyro.plate("obs", y.shape[0]):
            numpyro.sample("y", dist.Normal(z, 1.0).to_event(1), obs=y)

    kind = {"hmc": HMC, "uhmc": UHMC}[move]
    kernel = JarzynskiSMC(model, num_particles=512, move=kind(num_steps=leapfrog),
                          num_moves=1, target_accept=0.65 if move == "hmc" else None)
    mcmc = run_smc(kernel, y, warmup=30, chains=1)
    h = np.asarray(mcmc.last_state.history.step_size)
    h_quarter = (np.pi / 2) / leapfrog
    assert h.max() < 1.25 * h_quarter, h
    hist = mcmc.last_state.history
    acc = np.asarray(hist.acceptance_rate)
    moved = acc if move == "hmc" else 1.0
    lag = 1.0 - np.asarray(hist.jump) / moved
    assert np.all(lag[5:] > -0.45), lag


def test_ula_correction_is_exact_with_a_large_step(data):
    """h = 1.2 (preconditioned): plain ULA's stationary variance is 1/(1 − h/2) = 2.5 times
    the posterior's, yet the weighted variance and the log evidence are right. Checked on the
    last annealing stage (stages after β = 1 are Metropolis-adjusted and would fix the walkers
    themselves). The Crooks increments carry real weight (their conditional ESS is far from 1),
    so the weighted answer would be off without them: the resampling after each move is what
    brings the walkers back to the posterior."""
    y = data[:, :2]
    log_z, _, post_var = conjugate_truth(y)

    def model(y):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        numpyro.sample("y", dist.Normal(z, 1.0).to_event(1), obs=y)

    kernel = JarzynskiSMC(
        model, num_particles=4000, move="ula", step_size=1.2, adapt_step_size=False,
        num_moves=1, schedule="linear", resample_threshold=0.3,
    )
    mcmc = MCMC(kernel, num_warmup=20, num_samples=1, num_chains=8, chain_method="vectorized",
                progress_bar=False)
    mcmc.warmup(jax.random.key(1), y, collect_warmup=True, extra_fields=("log_weights",))
    move_cess = np.asarray(mcmc.last_state.history.move_cess)
    assert np.median(move_cess) < 0.7, np.median(move_cess)  # the increments do real work
    _, var = weighted_moments(mcmc, "z")
    assert abs(var.mean() - post_var) < 0.015
    est = np.asarray(mcmc.last_state.log_evidence, np.float64)
    assert abs(est.mean() - log_z) < 4 * est.std(ddof=1) / np.sqrt(8) + 0.02


def test_two_unequal_modes():
    """Prior N(0, 3² I); likelihood 0.25 N(z; −m, 0.5²) + 0.75 N(z; m, 0.5²) with m = 4 e1.
    The prior is symmetric so the posterior mode masses are exactly 0.25 / 0.75."""
    m = jnp.array([4.0, 0.0])

    def model():
        z = numpyro.sample("z", dist.Normal(0.0, 3.0).expand([2]).to_event(1))
        comp = jnp.stack(
            [dist.Normal(-m, 0.5).to_event(1).log_prob(z), dist.Normal(m, 0.5).to_event(1).log_prob(z)]
        )
        numpyro.factor("mix", jax.scipy.special.logsumexp(comp + jnp.log(jnp.array([0.25, 0.75]))))

    mcmc = run_smc(JarzynskiSMC(model, num_particles=4000), warmup=60, chains=4)
    z = np.asarray(mcmc.get_samples(group_by_chain=True)["z"][:, -1, :, 0])
    lw = np.asarray(mcmc.get_extra_fields(group_by_chain=True)["log_weights"][:, -1])
    w = np.exp(lw - lw.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    light = (w * (z < 0)).sum(1)
    # Once the modes separate, resampling noise fixes each run's mass (binomial-like,
    # SD ≈ 0.015 here): the average of the runs must be within 0.03 and 4 SE of the truth.
    se = light.std(ddof=1) / 2
    assert abs(light.mean() - 0.25) < min(0.03, 4 * se + 0.005), light
    assert np.all(np.abs(light - 0.25) < 0.06), light
    log_z = np.log(sum(p * np.exp(-16 / (2 * 9.25)) / (2 * np.pi * 9.25) for p in (0.25, 0.75)))
    est = np.asarray(mcmc.last_state.log_evidence)
    assert np.all(np.abs(est - log_z) < 0.1), (est, log_z)


def test_constrained_supports_positive_and_simplex():
    """Gamma precision with Normal data and a Dirichlet–multinomial: both conjugate, so the
    evidence and posterior means are exact."""
    y = np.array([0.3, -1.2, 0.8, 2.0, -0.4, 0.1], np.float32)
    counts = np.array([3.0, 7.0, 1.0], np.float32)
    a, b, alpha = 2.0, 1.0, np.array([1.0, 2.0, 1.5])

    def model(y, counts):
        lam = numpyro.sample("lam", dist.Gamma(a, b))
        p = numpyro.sample("p", dist.Dirichlet(jnp.asarray(alpha)))
        numpyro.deterministic("sd", 1 / jnp.sqrt(lam))
        with numpyro.plate("n", y.shape[0]):
            numpyro.sample("y", dist.Normal(0.0, 1 / jnp.sqrt(lam)), obs=y)
        numpyro.sample("c", dist.Multinomial(int(counts.sum()), p), obs=counts)

    n, ss = len(y), float((y**2).sum())
    log_z_normal = (
        a * np.log(b) - gammaln(a) + gammaln(a + n / 2) - (a + n / 2) * np.log(b + ss / 2)
        - n / 2 * np.log(2 * np.pi)
    )
    tot = counts.sum()
    log_z_multi = (
        gammaln(tot + 1) - gammaln(counts + 1).sum() + gammaln(alpha.sum()) - gammaln(alpha).sum()
        + gammaln(alpha + counts).sum() - gammaln(alpha.sum() + tot)
    )
    mcmc = run_smc(JarzynskiSMC(model, num_particles=2000), y, counts, warmup=40, chains=4)
    est = np.asarray(mcmc.last_state.log_evidence)
    assert np.all(np.abs(est - (log_z_normal + log_z_multi)) < 0.1), est
    samples = mcmc.get_samples(group_by_chain=True)
    assert set(samples) == {"lam", "p", "sd"}
    mean_lam, _ = weighted_moments(mcmc, "lam")
    assert np.allclose(mean_lam, (a + n / 2) / (b + ss / 2), rtol=0.05)
    mean_p, _ = weighted_moments(mcmc, "p")
    post = (alpha + counts) / (alpha + counts).sum()
    assert np.allclose(mean_p, post, atol=0.02)
    assert np.all(np.asarray(samples["lam"]) > 0)
    assert np.allclose(np.asarray(samples["p"]).sum(-1), 1.0, atol=1e-5)


def test_improper_prior_with_initial_distribution():
    """z ~ ImproperUniform(ℝ), y ~ N(z, 1): ∫ p(y | z) dz = 1, so log evidence = 0 exactly."""

    def model(y):
        z = numpyro.sample("z", dist.ImproperUniform(dist.constraints.real, (), ()))
        numpyro.sample("y", dist.Normal(z, 1.0), obs=y)

    with pytest.raises(ValueError, match="improper prior.*init_particles"):
        run_smc(JarzynskiSMC(model, num_particles=100), 0.7, warmup=5, chains=1)
    kernel = JarzynskiSMC(model, num_particles=2000, init_particles={"z": dist.Normal(0.0, 5.0)})
    mcmc = run_smc(kernel, 0.7, warmup=30, chains=4)
    est = np.asarray(mcmc.last_state.log_evidence, np.float64)
    # Weights 1/q at β = 0 make single runs noisy (SD ≈ 0.1): test the mean of the runs.
    assert abs(est.mean()) < 4 * est.std(ddof=1) / 2 + 0.01 and np.all(np.abs(est) < 0.4), est


def test_nan_density_gets_zero_weight_and_all_nan_is_an_error():
    def model(bad_everywhere=False):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        bad = True if bad_everywhere else z > 2.0
        numpyro.factor("f", jnp.where(bad, jnp.nan, 0.0))

    mcmc = run_smc(JarzynskiSMC(model, num_particles=4000), warmup=5, chains=1)
    # NaN region carries zero weight: evidence = P(z <= 2) = Φ(2).
    assert abs(float(mcmc.last_state.log_evidence) - np.log(0.9772499)) < 0.01
    z = np.asarray(mcmc.get_samples()["z"])
    lw = np.asarray(mcmc.get_extra_fields()["log_weights"])
    # Weights are finite or exactly -inf (never NaN); no live particle sits in the NaN region;
    # dead particles hold a live position, so every value stays finite.
    assert np.all(np.isfinite(lw) | np.isneginf(lw))
    assert not np.any(np.isfinite(lw) & (z > 2.0))
    assert np.isfinite(z).all()
    with pytest.raises(Exception, match="Every particle has zero weight"):
        run_smc(JarzynskiSMC(model, num_particles=100), warmup=5, chains=1, bad_everywhere=True)


def test_same_key_same_result_and_resume(data):
    kernel = JarzynskiSMC(conjugate_model, num_particles=200)
    a = run_smc(kernel, data, warmup=20, samples=2, chains=1, key=3)
    b = run_smc(kernel, data, warmup=20, samples=2, chains=1, key=3)
    assert np.array_equal(np.asarray(a.get_samples()["z"]), np.asarray(b.get_samples()["z"]))
    assert float(a.last_state.log_evidence) == float(b.last_state.log_evidence)
    # Resume at β = 1 from the last state: the stage counter continues, β stays 1.
    a.post_warmup_state = a.last_state
    a.run(a.last_state.rng_key, data)
    assert a.get_samples()["z"].shape == (2, 200, D)
    assert int(a.last_state.i) == 24 and float(a.last_state.beta) == 1.0


def test_jit_model_args_uses_new_data(data):
    """With jit_model_args=True the density is rebuilt from the arguments of each run."""
    kernel = JarzynskiSMC(conjugate_model, num_particles=1000)
    mcmc = MCMC(kernel, num_warmup=40, num_samples=1, jit_model_args=True, progress_bar=False)
    mcmc.run(jax.random.key(0), data)
    y2 = data - 2.0
    mcmc.run(jax.random.key(0), y2)
    assert abs(float(mcmc.last_state.log_evidence) - conjugate_truth(y2)[0]) < 0.15


def test_sequential_chains_shapes_and_extra_fields(data):
    kernel = JarzynskiSMC(conjugate_model, num_particles=100, schedule="geometric")
    mcmc = MCMC(kernel, num_warmup=10, num_samples=3, num_chains=2, chain_method="sequential",
                progress_bar=False)
    mcmc.run(jax.random.key(0), data, extra_fields=("beta", "ess", "log_evidence", "acceptance_rate"))
    assert mcmc.get_samples(group_by_chain=True)["z"].shape == (2, 3, 100, D)
    extra = mcmc.get_extra_fields(group_by_chain=True)
    assert extra["log_weights"].shape == (2, 3, 100)
    assert np.all(np.asarray(extra["beta"]) == 1.0)
    hist = mcmc.last_state.history
    assert hist.beta.shape == (2, 10) and np.allclose(np.asarray(hist.beta[:, -1]), 1.0)
    assert np.all(np.diff(np.asarray(hist.beta), axis=1) > 0)
    assert "beta 1.000" in kernel.get_diagnostics_str(jax.tree.map(lambda x: x[0], mcmc.last_state))


def _discrete_model():
    numpyro.sample("k", dist.Poisson(3.0))


def test_bad_inputs(data):
    def no_latent(y):
        numpyro.sample("y", dist.Normal(0.0, 1.0), obs=y)

    def enum_model():
        numpyro.sample("c", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})

    with pytest.raises(ValueError, match="no latent sample sites"):
        run_smc(JarzynskiSMC(no_latent, num_particles=10), 1.0, warmup=2, chains=1)
    with pytest.raises(ValueError, match="'c'.*enumerate"):
        run_smc(JarzynskiSMC(enum_model, num_particles=10), warmup=2, chains=1)
    with pytest.raises(ValueError, match="'k'.*infinite"):
        run_smc(JarzynskiSMC(_discrete_model, num_particles=10), warmup=2, chains=1)
    with pytest.raises(ValueError, match="num_warmup >= 1"):
        run_smc(JarzynskiSMC(conjugate_model, num_particles=10), data, warmup=0, chains=1)
    with pytest.raises(ValueError, match="entries but num_warmup"):
        run_smc(JarzynskiSMC(conjugate_model, num_particles=10, schedule=[0.5, 1.0]), data,
                warmup=3, chains=1)
    with pytest.raises(ValueError, match="move must be"):
        JarzynskiSMC(conjugate_model, move="nuts")
    with pytest.raises(ValueError, match="Unknown resampling"):
        JarzynskiSMC(conjugate_model, resampling="best")
    with pytest.raises(ValueError, match="prior_factors names"):
        run_smc(JarzynskiSMC(conjugate_model, num_particles=10, prior_factors=("nope",)), data,
                warmup=2, chains=1)


def test_ula_evidence_is_not_biased_by_its_preconditioner():
    """d = 50, N = 256: a preconditioner fitted to the particles it moves biased ULA's log Z
    upward by +0.85 ± 0.06 nat. With cross-fitted scales the error must be consistent with an
    unbiased Z: no upward bias, and downward only by about the Jensen term Var/2."""
    d, n = 50, 4
    y = np.random.default_rng(0).normal(1.0, 1.0, size=(n, d)).astype(np.float32)

    def model(y):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([d]).to_event(1))
        numpyro.sample("y", dist.Normal(z, 1.0).to_event(1), obs=y)

    log_z, _, _ = conjugate_truth(y)
    mcmc = run_smc(JarzynskiSMC(model, num_particles=256, move="ula"), y, warmup=40, chains=16)
    err = np.asarray(mcmc.last_state.log_evidence, np.float64) - log_z
    se, var = err.std(ddof=1) / 4, err.var(ddof=1)
    assert err.mean() < 4 * se, err
    assert err.mean() > -(4 * se + var / 2 + 0.05), err


def test_waste_free_is_exact_and_checks_its_chain_length(data):
    """Waste-free SMC (resample N/(m+1), keep every state of m-move chains): the log
    evidence and the posterior mean stay exact within their Monte Carlo error."""
    log_z, post_mean, _ = conjugate_truth(data)
    mcmc = run_smc(JarzynskiSMC(conjugate_model, num_particles=1000, num_moves=4,
                                waste_free=True), data, warmup=30)
    est = np.asarray(mcmc.last_state.log_evidence, np.float64)
    se = est.std(ddof=1) / np.sqrt(RUNS)
    assert abs(est.mean() - log_z) < 4 * se + 0.02, (est, log_z, se)
    assert np.all(np.asarray(mcmc.last_state.history.resampled)[:, :29] == 1)  # every stage
    mean, _ = weighted_moments(mcmc, "z")
    assert np.abs(mean.mean(0) - post_mean).max() < 4 * mean.std(0).max() / np.sqrt(RUNS) + 0.01
    with pytest.raises(ValueError, match="multiple of 5"):
        JarzynskiSMC(conjugate_model, num_particles=1001, num_moves=4, waste_free=True)
    with pytest.raises(ValueError, match="not available with move='auto'"):
        JarzynskiSMC(conjugate_model, num_particles=999, move="auto", waste_free=True)


# Neal's funnel, centred, d = 10 (as in benchmarks/smc_vs_blackjax.py): a prior whose neck a
# global preconditioner cannot resolve.
FUNNEL_DIM = 10
FUNNEL_Y = jnp.asarray(0.5 * (-1.0) ** np.arange(FUNNEL_DIM), jnp.float32)


def funnel(y):
    v = numpyro.sample("v", dist.Normal(0.0, 3.0))
    x = numpyro.sample("x", dist.Normal(0.0, jnp.exp(v / 2)).expand([FUNNEL_DIM]).to_event(1))
    numpyro.sample("y", dist.Normal(x, 1.0).to_event(1), obs=y)


def test_auto_trials_never_touch_the_population():
    """``move="auto"`` measures a candidate on a shadow copy of the stage. When the first trial
    of each candidate moved the population, ULA's first step on a centred funnel threw the
    walkers in the prior's neck away (exact in expectation, but their Crooks weights died) and
    the benchmark's d = 10 funnel ended 87 nats low, beyond repair by the later stages. Now
    the first stage is moved by the first invariant candidate, bit for bit as a fixed-MALA
    run with the same key, while ULA is measured beside it."""
    from numpyro_jarzynski.engine.kernels import MALA, ULA, Auto

    y = FUNNEL_Y

    auto = run_smc(JarzynskiSMC(funnel, num_particles=500, move=Auto((ULA(), MALA())),
                                num_moves=5), y, warmup=3, chains=2).last_state.history
    mala = run_smc(JarzynskiSMC(funnel, num_particles=500, move=MALA(), num_moves=5), y,
                   warmup=3, chains=2).last_state.history
    assert np.all(np.asarray(auto.move_index)[:, 0] == 1)  # MALA moved stage 0 ...
    assert np.all(np.asarray(auto.trial_index)[:, 0] == 0)  # ... while ULA was measured
    assert np.all(np.isfinite(np.asarray(auto.trial_score)[:, 0]))
    for f in ("beta", "log_evidence_increment", "jump", "acceptance_rate", "ess"):
        np.testing.assert_allclose(np.asarray(getattr(auto, f))[:, 0],
                                   np.asarray(getattr(mala, f))[:, 0], rtol=1e-5, err_msg=f)


def test_first_step_is_tuned_on_independent_prior_draws():
    """The default first step suits a Gaussian (``d^{-1/3}`` in units of the spread). On a
    prior with a funnel (a scale ``e^{v/2}`` under ``v ~ N(0, 3²)``) MALA rejected nearly every
    proposal of the first stage with it, and ULA's first step threw the walkers of the neck
    away. The first step is now tuned at β = 0 on prior draws independent of the population,
    so the first stage's acceptance is near its target; an explicit ``step_size`` is used as
    given (no pilot)."""
    from numpyro_jarzynski.engine.kernels import MALA

    d, y = FUNNEL_DIM, FUNNEL_Y

    default = MALA().default_step(d + 1)
    tuned = run_smc(JarzynskiSMC(funnel, num_particles=500), y, warmup=3, chains=2)
    fixed = run_smc(JarzynskiSMC(funnel, num_particles=500, step_size=default), y, warmup=3,
                    chains=2)
    acc_tuned = np.asarray(tuned.last_state.history.acceptance_rate)[:, 0]
    acc_fixed = np.asarray(fixed.last_state.history.acceptance_rate)[:, 0]
    assert np.all(acc_tuned > 0.45) and np.all(acc_tuned < 0.9), acc_tuned
    assert np.all(acc_fixed < 0.3), acc_fixed  # the defect, with the untuned step
    np.testing.assert_allclose(np.asarray(fixed.last_state.history.step_size)[:, 0], default,
                               rtol=1e-6)
    again = run_smc(JarzynskiSMC(funnel, num_particles=500), y, warmup=3, chains=2)
    np.testing.assert_array_equal(np.asarray(again.last_state.log_evidence),
                                  np.asarray(tuned.last_state.log_evidence))
