"""No silent failure (docs/trust.md): every failure class of the trust review gives either the
right answer (exact value, Monte Carlo tolerance) or the specific warning / error.

The conjugate model: ``mu ~ N(0, 10²)``, ``y_i ~ N(mu, 0.1²)``; exact log Z and posterior."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from conjugate import normal_mean_model, normal_mean_truth
from numpyro.infer import MCMC, Predictive

from numpyro_jarzynski import JarzynskiSMC, posterior_samples, summary, to_datatree
from numpyro_jarzynski.engine import schedules
from numpyro_jarzynski.engine import weights as W
from numpyro_jarzynski.infer.report import SMCFailure

TAU, SIG = 10.0, 0.1


conj_model = normal_mean_model(TAU, SIG)


def conj_truth(y):
    return normal_mean_truth(y, TAU, SIG)


def data(n):
    return jnp.asarray(1.3 + 0.1 * np.random.default_rng(0).normal(size=n), jnp.float32)


def run(kernel, *args, warmup=40, chains=1, key=1, **kw):
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=1, num_chains=chains,
                chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.key(key), *args, **kw)
    return mcmc


def run_recording(kernel, *args, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mcmc = run(kernel, *args, **kw)
    return mcmc, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def test_exact_values_of_the_shared_model():
    assert np.isclose(conj_truth(data(500))[0], 427.256, atol=2e-3)
    assert np.isclose(conj_truth(data(50))[0], 41.859, atol=2e-3)


# ---------------------------------------------------------------- 1. collapse hidden by resampling
def test_collapse_is_reported_with_stage_and_beta():
    """ULA + a 40-stage linear schedule on n = 500: the first step collapses the weights onto
    one particle (ESS before resampling 1 of 500). Today's answer is off by 1e14 nats while the
    final ESS reads 500; it must be flagged, in the run and in summary."""
    y = data(500)
    mcmc, msgs = run_recording(
        JarzynskiSMC(conj_model, num_particles=500, move="ula", schedule="linear"), y
    )
    assert any("Weight collapse in chain 0 at stage 0 (β = 0.025)" in m for m in msgs), msgs
    health = mcmc.sampler.last_health[0]
    assert health.min_ess_before_resampling * 500 < 10  # the report's COLLAPSE_PARTICLES
    assert health.min_unique_ancestors * 500 < 10
    s = summary(mcmc, warn=False)
    assert any("Weight collapse" in m for m in s.warnings)
    assert "this error bar may be far too small" in s.header()  # a warned run's ± is suspect
    tree = to_datatree(mcmc)
    stages = tree["smc_stages"].to_dataset()
    assert float(stages["ess_before_resampling"].isel(chain=0, stage=0)) < 10 / 500
    assert float(tree["sample_stats"]["min_unique_ancestors"].values[0]) < 10 / 500


@pytest.fixture(scope="module")
def healthy_500():
    """The default kernel on n = 500 with an ample budget (40 stages), 2 runs: one run (one
    compile) shared by the healthy check and the budget test's quiet counterpart."""
    return run_recording(JarzynskiSMC(conj_model, num_particles=500), data(500), chains=2)


@pytest.fixture(scope="module")
def healthy_50():
    """The default kernel (MALA, adapted step) on n = 50, 40 stages, 2 runs: shared by the
    barely-moving test's quiet counterpart and the predictive / print_summary test."""
    return run_recording(JarzynskiSMC(conj_model, num_particles=500, move="mala"), data(50),
                         chains=2)


def test_healthy_run_is_quiet_and_right(healthy_500):
    y = data(500)
    log_z, _mean, _sd = conj_truth(y)
    mcmc, msgs = healthy_500
    assert msgs == []
    est = np.asarray(mcmc.last_state.log_evidence, np.float64)
    assert np.all(np.abs(est - log_z) < 0.25), est
    quiet = summary(mcmc, warn=False)
    assert quiet.warnings == () and "far too small" not in quiet.header()


# ---------------------------------------------------------------- 2. forced jumps
def test_short_stage_budget_is_spread_and_reported():
    """num_warmup=3 cannot anneal n = 500 observations at target_ess 0.9 (about 13 stages are
    needed): β still reaches 1, but every short stage is checked and the run says how many
    stages it needs (today: a silent jump to β = 1 with conditional ESS 0.002)."""
    y = data(500)
    mcmc, msgs = run_recording(JarzynskiSMC(conj_model, num_particles=500), y, warmup=3)
    assert float(mcmc.last_state.history.beta[-1]) == 1.0
    budget = [m for m in msgs if "stage budget is too small" in m]
    assert budget, msgs
    needed = mcmc.sampler.last_health[0].suggested_num_warmup
    assert 8 <= needed <= 40
    assert f"num_warmup >= {needed}" in budget[0]


def test_budget_well_below_what_target_ess_needs_is_reported(healthy_500):
    """num_warmup=5 on n = 500: no step falls below CESS 0.1 (so the unsafe-step check is
    silent), but the steps are far coarser than target_ess asks (about 17 stages needed). On
    a Poisson GLM the same situation left runs 1.5 nat low with no warning
    (benchmarks/trust_models.py); the run must say the budget was short and how many stages."""
    y = data(500)
    mcmc, msgs = run_recording(JarzynskiSMC(conj_model, num_particles=500), y, warmup=5)
    h = mcmc.sampler.last_health[0]
    assert h.min_cess > 0.1 and h.num_unsafe_stages == 0
    short = [m for m in msgs if "stage budget was short" in m]
    assert short and f"num_warmup >= {h.suggested_num_warmup}" in short[0], msgs
    assert 12 <= h.suggested_num_warmup <= 25
    _, quiet = healthy_500  # the same model and data with warmup=40 (2 runs)
    assert not any("budget" in m for m in quiet), quiet


def test_default_schedule_spends_the_budget_on_the_path(healthy_500):
    """40 stages for a path that target_ess = 0.9 anneals in about 27: the schedule used to
    reach β = 1 at stage 26 and leave the other 13 to mix at β = 1, adding nothing to the
    evidence (with num_warmup=100 on an easy path, 85 of 100 stages). The default
    budget_fill=0.9 raises each stage's conditional-ESS target so that β reaches 1 at stage
    ceil(0.9 · 40) − 1 = 35, every annealing stage at or above target_ess."""
    mcmc, _ = healthy_500
    h = mcmc.last_state.history
    for c in range(2):
        betas, cess = np.asarray(h.beta[c]), np.asarray(h.cess[c])
        first_one = int(np.flatnonzero(betas >= 1.0)[0])
        assert first_one == 35, betas
        assert np.all(cess[:first_one + 1] >= 0.9 - 1e-3), cess
        # Early on the path left looks long (the spread of log lik barely decays yet), so the
        # first stages keep target_ess; the last ones, where the estimate is sharp, are raised.
        assert np.mean(cess[first_one - 10:first_one]) > 0.95, cess


def test_spreading_the_budget_does_not_add_up_crooks_noise():
    """An unadjusted move adds Crooks noise at every annealing stage, held per stage at
    target_accept. Spread over 90 % of 80 stages instead of the ~22 that target_ess needs, that
    noise added up (here 8.4 against 2.7 without spreading; UHMC on the funnel went from 0.044
    to 0.48 nat log-Z RMSE, benchmarks/budget_fill.py). Each stage's noise is now held to the
    share of target_ess's weight noise its annealing step was allowed, so the run's total stays
    near the old one (1.4)."""
    y = data(50)

    def total_noise(fill):
        mcmc = run(JarzynskiSMC(conj_model, num_particles=500, move="ula", budget_fill=fill), y,
                   warmup=80, chains=2)
        h = mcmc.last_state.history
        annealing = np.asarray(h.beta) < 1.0  # stages that end below β = 1
        return np.sum(-np.log(np.asarray(h.move_cess))[annealing]), annealing.sum()

    spread, n_spread = total_noise(0.9)
    fast, n_fast = total_noise(None)
    assert n_spread > 2 * n_fast, (n_spread, n_fast)
    assert spread < 1.5 * fast, (spread, fast)


def test_khat_advice_names_the_idle_budget(healthy_500):
    """Heavy-tailed weights with most of the budget left at β = 1 (those stages only mix and add
    nothing to the evidence) ask for a higher target_ess, not more stages: on the GMM tutorial
    model target_ess=0.99 at the same 100 stages took the log-Z sd from 0.35 to 0.22. The
    message used to say "more stages (num_warmup)" whatever the budget."""
    import dataclasses

    from numpyro_jarzynski.infer.report import messages

    mcmc, _ = healthy_500
    h = mcmc.sampler.last_health[0]
    betas = np.asarray(mcmc.last_state.history.beta[0])
    first_one = int(np.flatnonzero(betas >= 1.0)[0])
    assert h.anneal_stages == first_one + 1 and 5 <= first_one < h.num_stages - 3, betas
    # The same annealing inside a 100-stage budget, with a heavy tail just before β = 1.
    heavy = dataclasses.replace(h, num_stages=100, max_khat_before_resampling=0.9,
                                max_khat_stage=first_one - 1)
    (msg,) = [m for m in messages(heavy) if "k-hat" in m]
    idle = 100 - h.anneal_stages
    assert f"β reached 1 at stage {first_one} and the other {idle} stages" in msg, msg
    assert "budget_fill" in msg and "raise target_ess" in msg and "num_warmup" not in msg
    busy = dataclasses.replace(heavy, num_stages=h.anneal_stages + 3)  # the budget was used
    (msg,) = [m for m in messages(busy) if "k-hat" in m]
    assert "Use more stages (num_warmup)" in msg and "reached 1" not in msg


def test_bisection_resolves_increments_below_float32_resolution():
    """Log-likelihood spread 1e14 under the prior (prior sd 10, posterior sd 1e-6): the first
    step must be Δβ ≈ 1e-14 with CESS at target, not the old stall guard 1e-6 (CESS 1/N)."""
    ll = jnp.asarray(np.random.default_rng(0).normal(size=1000) * 1e14, jnp.float32)
    lw = jnp.zeros(1000, jnp.float32)
    beta = schedules.solve_next_beta(lambda b: W.conditional_ess(lw, b * ll), 0.0, 0.9)
    assert 1e-16 < float(beta) < 1e-13
    assert float(W.conditional_ess(lw, beta * ll)) >= 0.89


def test_budget_pace_reaches_one_geometrically():
    b = 1e-6
    for r in range(5, 0, -1):
        b = float(schedules.budget_pace(jnp.float32(b), r))
    assert b == 1.0
    assert np.isclose(float(schedules.budget_pace(jnp.float32(1e-4), 2)), 1e-2, rtol=1e-4)


def test_remaining_length_is_exact_at_both_ends_of_its_clip():
    """The thermodynamic length left, ``∫_β^1 sd_b(log lik) db``, from the population at β.
    Gaussian likelihood, flat prior: ``log lik = −χ²_d / (2b)`` under ``π_b``, so
    ``sd_b = √(d/2)/b`` (slope −1) and the length is ``√(d/2) log(1/β)``. At β = 0 the slope is
    0 and the length is the prior spread ``sd_0``. Exact draws, N = 2·10⁵: the estimate's
    error is the sample error of sd and κ₃ (≈ 1%)."""
    n, d, beta = 200_000, 10, 0.05
    chi2 = jax.random.chisquare(jax.random.key(0), d, (n,))
    flat = jnp.zeros(n, jnp.float32)
    exact = np.sqrt(d / 2) * np.log(1 / beta)
    got = float(schedules.remaining_length(flat, -chi2 / (2 * beta), jnp.float32(beta)))
    assert np.isclose(got, exact, rtol=0.03), (got, exact)
    # Non-uniform weights: draws at 1.25β reweighted to β (π_β/π_1.25β ∝ exp(−β/4·log lik);
    # finite-variance weights).
    ll2 = -chi2 / (2.5 * beta)
    got = float(schedules.remaining_length(-0.25 * beta * ll2, ll2, jnp.float32(beta)))
    assert np.isclose(got, exact, rtol=0.05), (got, exact)
    ll0 = 3.0 * jax.random.normal(jax.random.key(1), (n,))
    got = float(schedules.remaining_length(flat, ll0, jnp.float32(0.0)))
    assert np.isclose(got, 3.0, rtol=0.01), got
    # Dead particles do not count; the fill target spreads the length evenly, never below
    # target_ess: length 3 over 100 stages is δ = 0.03, CESS exp(−δ²).
    with_dead = jnp.concatenate([flat, jnp.full(5, -jnp.inf)])
    ll_dead = jnp.concatenate([ll0, jnp.full(5, jnp.nan)])
    assert np.isclose(float(schedules.remaining_length(with_dead, ll_dead, jnp.float32(0.0))),
                      got, rtol=1e-5)
    c = float(schedules.fill_target(flat, ll0, jnp.float32(0.0), 100, 0.9))
    assert np.isclose(c, np.exp(-(got / 100) ** 2), rtol=1e-6)
    assert float(schedules.fill_target(flat, ll0, jnp.float32(0.0), 2, 0.9)) == np.float32(0.9)


# ---------------------------------------------------------------- 3. unstable unadjusted moves
def test_unstable_unadjusted_moves_are_detected():
    """Two modes at ±4 (d = 10) and a fixed ULA step: the diagonal preconditioner spans both
    modes (spread ~4 against a within-mode scale 1), so h·s²·λ > 2 and the moves diverge.
    Today: log Z off by −30 nats with final k-hat 0.33 and no warning."""
    d = 10

    def bimodal():
        z = numpyro.sample("z", dist.Normal(0.0, 10.0).expand([d]).to_event(1))
        a = jnp.log(0.25) + dist.Normal(-4.0, 1.0).log_prob(z).sum(-1)
        b = jnp.log(0.75) + dist.Normal(4.0, 1.0).log_prob(z).sum(-1)
        numpyro.factor("f", jnp.logaddexp(a, b))

    _, msgs = run_recording(
        JarzynskiSMC(bimodal, num_particles=500, move="ula", adapt_step_size=False), warmup=40
    )
    assert any("unadjusted moves were unstable" in m for m in msgs), msgs


def test_moves_that_barely_move_are_reported(healthy_50):
    """A step far too small to renew the population after resampling (fixed h = 1e-3 in units
    of the spread, 2 moves per stage): every per-stage check passes, yet the copies made by
    resampling never separate. The squared jump between resamplings is about 2·h per stage,
    far below 0.4; the same run with the adapted step is quiet (previous test file: healthy)."""
    y = data(50)
    mcmc, msgs = run_recording(
        JarzynskiSMC(conj_model, num_particles=500, move="mala", step_size=1e-3,
                     adapt_step_size=False), y
    )
    assert any("moves barely renewed the population" in m for m in msgs), msgs
    assert mcmc.sampler.last_health[0].median_renewal < 0.05
    jump = np.asarray(mcmc.last_state.history.jump)
    assert np.allclose(jump[np.isfinite(jump)], 2e-3, rtol=0.3)
    _, quiet = healthy_50  # the same model and data with the adapted step (2 runs)
    assert not any("barely renewed" in m for m in quiet), quiet


# ---------------------------------------------------------------- 4. float32 weight arithmetic
@pytest.mark.parametrize("shift", [-1e6, -1e7, -1e8])
def test_weight_statistics_are_shift_invariant(shift):
    lw = jnp.full(200, shift, jnp.float32)
    assert np.isclose(float(W.ess(lw)), 1.0, atol=1e-5)
    assert np.isclose(float(W.conditional_ess(lw, lw)), 1.0, atol=1e-5)
    assert np.allclose(np.asarray(jnp.exp(W.log_normalize(lw))), 1 / 200, rtol=1e-4)


def test_pareto_khat_flags_tied_heavy_weights():
    """Ten tied heavy weights among 1024 (and one particle holding all the weight): ArviZ's fit
    is undefined (NaN) there; both k-hats must report +inf so the > 0.7 check fires."""
    from numpyro_jarzynski.diagnostics import pareto_khat

    tied = jnp.concatenate([jnp.zeros(1014), jnp.full(10, 5.0)])
    one = jnp.full(1000, -1e9).at[3].set(0.0)
    for lw in (tied, one):
        assert float(W.pareto_khat(lw)) == np.inf
        assert pareto_khat(np.asarray(lw)) == np.inf


def test_pareto_khat_of_a_few_weight_levels_is_undefined_not_heavy():
    """Lattice models give log-weights on a few levels (here 5 levels, ESS > 0.5): no
    generalised Pareto fit exists, and the fitted number is meaningless (it fired false
    k > 0.7 warnings on Ising/Potts runs whose log Z was exact). Both k-hats say NaN; a
    continuous log-normal tail of the same size is still fitted."""
    from numpyro_jarzynski.diagnostics import pareto_khat

    counts = (1866, 30, 34, 35, 35)
    lw = jnp.concatenate([jnp.full(c, 0.3 * v) for v, c in enumerate(counts)])
    assert 0.5 < float(W.ess(lw)) and np.isnan(float(W.pareto_khat(lw)))
    assert np.isnan(pareto_khat(np.asarray(lw)))
    # The same levels smeared by float rounding (sums of nearly equal β steps over a few
    # stages: ±1e-4 nat, as on examples/ising.py, where the fit read k ≈ 4 on weights within
    # 0.1 nat of each other and warned in every chain): still a few levels.
    jitter = 1e-4 * np.random.default_rng(1).uniform(-1, 1, lw.shape[0])
    smeared = lw + jnp.asarray(jitter, lw.dtype)
    assert np.isnan(float(W.pareto_khat(smeared)))
    assert np.isnan(pareto_khat(np.asarray(smeared)))
    normal = jnp.asarray(np.random.default_rng(0).normal(size=2000), jnp.float32)
    assert 0.0 < float(W.pareto_khat(normal)) < 0.5
    assert 0.0 < pareto_khat(np.asarray(normal)) < 0.5


def test_huge_log_density_keeps_ess_exact():
    """``factor(-1e7)``: every weight shifts by the same constant; stage ESS must be 1."""

    def model():
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        numpyro.factor("c", -1e7 + 0.0 * mu)

    mcmc = run(JarzynskiSMC(model, num_particles=200, schedule="geometric"), warmup=3)
    ess = np.asarray(mcmc.last_state.history.ess)
    assert np.allclose(ess, 1.0, atol=1e-4), ess


# ---------------------------------------------------------------- 6. failures mid-run
def test_proposals_that_all_diverge_keep_the_answer_exact_and_are_reported():
    """The likelihood's value is finite but its gradient is NaN everywhere (the classic
    ``where``-gradient trap), so every ULA proposal lands on NaN. Such a proposal is left in
    place with increment 0 (exact: docs/moves.md), so nothing dies and the answer stays right
    (the factor is 0: log Z = 0 and the posterior is the prior), and the run says that the
    moves did nothing. (Before: every particle died at stage 0.)"""

    def model():
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        numpyro.factor("f", jnp.where(mu > -1e9, 0.0, jnp.sqrt(-jnp.abs(mu) - 1.0)))

    mcmc, msgs = run_recording(JarzynskiSMC(model, num_particles=500, move="ula"), warmup=5)
    assert abs(float(mcmc.last_state.log_evidence)) < 1e-6
    mu = np.asarray(mcmc.get_samples()["mu"][0])
    assert abs(mu.mean()) < 4 / np.sqrt(500) and abs(mu.std() - 1) < 0.15
    assert any("100% of the moves' proposals diverged at stage 0" in m for m in msgs), msgs
    assert int(np.asarray(mcmc.last_state.history.num_divergent)[0]) == 500 * 2


def test_divergent_fraction_counts_the_moves_each_stage_ran():
    """``move="auto"`` gives every candidate its own moves per stage (equal gradients: at
    ``num_moves=2``, four MALA moves or two 2-step HMC trajectories), recorded per stage in
    ``history.num_moves``. The divergent fraction divides by them: with every proposal
    diverging it is 100 % (before, divided by ``num_moves``, MALA's stages read 200 %)."""
    from numpyro_jarzynski import HMC, MALA, Auto

    def model():
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        numpyro.factor("f", jnp.where(mu > -1e9, 0.0, jnp.sqrt(-jnp.abs(mu) - 1.0)))

    auto = Auto(candidates=(MALA(), HMC(num_steps=2)))
    mcmc, msgs = run_recording(JarzynskiSMC(model, num_particles=500, move=auto), warmup=5)
    h = mcmc.last_state.history
    moves = np.asarray(auto.moves_per_stage(2))[np.asarray(h.move_index)]
    np.testing.assert_array_equal(np.asarray(h.num_moves), moves)
    mala = np.asarray(h.move_index) == 0  # stage 0 at least: the first invariant candidate
    assert mala[0] and np.all(moves[mala] == 4)
    np.testing.assert_array_equal(np.asarray(h.num_divergent)[mala], 500 * 4)
    said = [m for m in msgs if "of the moves' proposals diverged" in m]
    assert said and all("100% of the moves' proposals" in m for m in said), msgs

def test_every_particle_dying_mid_run_freezes_the_state_and_raises_a_plain_error():
    """Moves no longer kill particles, so a whole population can only die mid-run when the
    model itself turns non-finite at the particles (here: a discrete update after which every
    evaluation is NaN). The stage is frozen at the last good state, the failure is recorded in
    it, and the report raises a plain FloatingPointError naming chain, stage and β."""
    from numpyro_jarzynski.infer import report
    from numpyro_jarzynski.infer import tempering as T

    n = 200
    x0 = jax.random.normal(jax.random.key(0), (n, 1))
    good = T.ParticleCache(-0.5 * x0[:, 0] ** 2, jnp.zeros(n), -x0, jnp.zeros_like(x0))

    def evaluate(x, disc):  # NaN once the discrete state has been "updated"
        bad = jnp.full(x.shape[:1], jnp.nan)
        return T.ParticleCache(bad, bad, jnp.zeros_like(x), jnp.zeros_like(x))

    codec = T.Codec(lambda z: (z["x"], z["d"]), lambda x, d: {"x": x, "d": d})
    z = {"x": x0, "d": jnp.zeros(n)}
    state = T.init_state(jax.random.key(1), z, jnp.zeros(n), good, 0.5, 5, codec)
    config = T.TemperingConfig(num_stages=5, discrete_move=lambda k, b, x, d: d + 1)
    step = jax.jit(lambda s: T.record(*T.smc_step(s, evaluate, codec, config)))
    after = step(step(state))
    assert bool(after.failed) and int(after.fail_stage) == 0 and int(after.i) == 2
    assert np.all(np.isfinite(np.asarray(after.log_weights)))  # the last good population
    np.testing.assert_array_equal(np.asarray(after.z["x"]), np.asarray(state.z["x"]))
    with pytest.raises(FloatingPointError, match=r"chain 0 at stage 0") as err:
        report.report_run(after, n, 0.9, num_chains=1)
    assert isinstance(err.value, SMCFailure) and err.value.stage == 0


def test_all_dead_initial_draws_raise_floating_point_error():
    def model():
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        numpyro.factor("f", jnp.where(mu > 100.0, 0.0, jnp.nan))

    mcmc = MCMC(JarzynskiSMC(model, num_particles=200), num_warmup=3, num_samples=1,
                progress_bar=False)
    with pytest.raises(FloatingPointError, match="initial"):
        mcmc.run(jax.random.key(0))


# ---------------------------------------------------------------- 7. dead particles
def test_dead_particles_are_counted_and_reported():
    """The likelihood is NaN for mu > 1.3129 (half of the posterior): the posterior is
    truncated there, which must be said with the number of particles and the stage."""
    y = data(50)

    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, TAU))
        numpyro.factor("nan_region", jnp.where(mu > 1.3129, jnp.nan, 0.0))
        with numpyro.plate("data", y.shape[0]):
            numpyro.sample("y", dist.Normal(mu, SIG), obs=y)

    mcmc, msgs = run_recording(JarzynskiSMC(model, num_particles=500), y, warmup=20)
    dead = [m for m in msgs if "particle(s) died" in m]
    assert dead and "died (density NaN or infinite), first among the initial" in dead[0], msgs
    assert int(mcmc.last_state.num_dead) > 0
    assert int(mcmc.last_state.num_failed) == int(mcmc.last_state.num_dead)
    assert any("died" in m for m in summary(mcmc, warn=False).warnings)


def test_negligible_weights_dropped_are_not_reported_as_deaths():
    """Eight schools (non-centred, τ ~ HalfCauchy(5)): prior draws far in the Cauchy tail have
    finite densities but weights more than e^-1000 below the largest at the first stage, and
    are dropped. That is exact (they carry no weight), so there is no "died" warning (there was
    one on every run of this textbook model); the count stays in the state, apart from the
    non-finite ones (none here), and log Z is the exact one (1-D quadrature over τ)."""
    from scipy.stats import multivariate_normal

    y = np.array([28.0, 8, -3, 7, -1, 1, 18, 12])
    s = np.array([15.0, 10, 16, 11, 9, 11, 10, 18])

    def schools(s, y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
        with numpyro.plate("J", 8):
            eta = numpyro.sample("eta", dist.Normal(0.0, 1.0))
            numpyro.sample("obs", dist.Normal(mu + tau * eta, s), obs=y)

    mcmc, msgs = run_recording(JarzynskiSMC(schools, num_particles=1000), s, y, warmup=30,
                               chains=4, key=0)
    assert not [m for m in msgs if "died" in m], msgs
    st = mcmc.last_state
    assert np.all(np.asarray(st.num_dead) > 0) and np.all(np.asarray(st.num_failed) == 0)
    # log Z = log ∫ N(y; 0, diag(s² + τ²) + 25·11ᵀ) HalfCauchy(τ; 5) dτ, with τ = 5 tan θ.
    theta = (np.arange(4000) + 0.5) / 4000 * np.pi / 2
    lp = np.array([multivariate_normal.logpdf(y, np.zeros(8), np.diag(s**2 + t**2) + 25.0)
                   for t in 5.0 * np.tan(theta)])
    exact = lp.max() + np.log(np.mean(np.exp(lp - lp.max())))  # -31.311
    lz = np.asarray(st.log_evidence, np.float64)
    # sd of one run about 0.03 (N = 1000, 30 stages): 4 se of the mean of 4 runs plus 0.02.
    assert abs(lz.mean() - exact) < 4 * max(lz.std(ddof=1), 0.03) / 2 + 0.02, (lz, exact)


# ---------------------------------------------------------------- 8. inputs that cannot be right
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"num_particles": 2.9}, TypeError, "num_particles must be an integer"),
        ({"num_particles": True}, TypeError, "num_particles must be an integer"),
        ({"min_increment": 2.0}, ValueError, "min_increment must be a number in"),
        ({"target_accept": 5.0}, ValueError, "target_accept must be a number in"),
        ({"step_size": 1e3}, ValueError, "stability limit"),
        ({"target_ess": 1e-9}, ValueError, "one-shot importance sampling"),
    ],
)
def test_bad_knobs_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        JarzynskiSMC(conj_model, **kwargs)


def test_few_particles_warn():
    with pytest.warns(UserWarning, match="very few"):
        JarzynskiSMC(conj_model, num_particles=3)


def test_nan_in_schedule_is_refused():
    kernel = JarzynskiSMC(conj_model, num_particles=200, schedule=[0.1, np.nan, 1.0])
    mcmc = MCMC(kernel, num_warmup=3, num_samples=1, progress_bar=False)
    with pytest.raises(ValueError, match="non-finite"):
        mcmc.run(jax.random.key(0), data(50))


def test_resume_with_other_data_is_refused():
    y = data(100)
    mcmc = run(JarzynskiSMC(conj_model, num_particles=200), y[:50], warmup=15)
    first = float(mcmc.last_state.log_evidence)
    mcmc.post_warmup_state = mcmc.last_state
    with pytest.raises(ValueError, match="annealed on different data"):
        mcmc.run(jax.random.key(2), y[50:])
    mcmc.run(jax.random.key(2), y[:50])  # the same data: a plain resume
    assert float(mcmc.last_state.log_evidence) == first  # stages at β = 1 add no increment


# ---------------------------------------------------------------- 10. NumPyro idioms
def test_unknown_extra_field_names_the_valid_ones():
    mcmc = MCMC(JarzynskiSMC(conj_model, num_particles=200), num_warmup=3, num_samples=1,
                progress_bar=False)
    with pytest.raises(ValueError, match="not a field of the JarzynskiSMC state.*log_evidence"):
        mcmc.run(jax.random.key(0), data(50), extra_fields=("nonexistent",))


def test_predictive_and_print_summary_work_on_smc_output(capsys, healthy_50):
    y = data(50)
    _, mean, sd = conj_truth(y)
    mcmc, _ = healthy_50  # 40 stages, 2 runs (was its own 20-stage run: one compile fewer)
    draws = posterior_samples(mcmc, 4000, rng_key=jax.random.key(3))
    assert draws["mu"].shape == (4000,)
    assert abs(draws["mu"].mean() - mean) < 4 * sd / np.sqrt(500)
    pred = Predictive(conj_model, posterior_samples=draws)(jax.random.key(4), y)["y"]
    assert pred.shape == (4000, 50)
    assert abs(float(pred.mean()) - mean) < 4 * np.hypot(sd, SIG / np.sqrt(50)) / np.sqrt(500)
    flat, lw = posterior_samples(mcmc, weighted=True)
    assert flat["mu"].shape == (1000,) and np.isclose(np.exp(lw).sum(), 1.0)
    mcmc.print_summary()
    out = capsys.readouterr().out
    assert "log evidence" in out and "ess_kish" in out
    import arviz_base

    with pytest.raises(ValueError, match="numpyro_jarzynski.to_datatree"):
        summary(arviz_base.from_numpyro(mcmc))


# ---------------------------------------------------------------- 11. the stage budget
def test_stages_after_beta_one_add_no_noise():
    """ULA with a budget far larger than needed: once β = 1 the stages only mix (Metropolis-
    adjusted), so the evidence stops moving (today every extra ULA stage adds Crooks noise and
    the estimate drifts with the number of stages). budget_fill=None: β reaches 1 as soon as
    target_ess allows, leaving most of the 60 stages at β = 1."""
    y = data(50)
    log_z, _, _ = conj_truth(y)
    mcmc, msgs = run_recording(JarzynskiSMC(conj_model, num_particles=500, move="ula",
                                            budget_fill=None), y, warmup=60, chains=2)
    h = mcmc.last_state.history
    beta = np.asarray(h.beta)
    at_one = np.concatenate([np.zeros((2, 1), bool), beta[:, :-1] >= 1.0], axis=1)
    assert at_one.sum() > 20
    assert np.all(np.asarray(h.log_evidence_increment)[at_one] == 0.0)
    est = np.asarray(mcmc.last_state.log_evidence, np.float64)
    assert np.all(np.abs(est - log_z) < 0.3), est
    assert msgs == []


# ---------------------------------------------------------------- 12. agreement is not accuracy
def test_summary_says_what_the_run_spread_covers():
    mcmc = run(JarzynskiSMC(conj_model, num_particles=200), data(50), warmup=15, chains=2)
    s = summary(mcmc, warn=False)
    assert "blind to a bias all runs share" in str(s)
    stats = to_datatree(mcmc)["sample_stats"]
    assert "max_khat_before_resampling" in stats and "suggested_num_warmup" in stats


# ---------------------------------------------------------------- 13. one run's error bar
def test_one_runs_error_bar_matches_the_spread_of_many_runs():
    """``state.log_evidence_se`` (Lee & Whiteley's estimator from the particles' genealogy,
    multinomial resampling, the default) against the real error of 64 runs on a conjugate
    Gaussian (d = 4, exact log Z): the root-mean-square error bar matches the RMSE within
    the Monte Carlo error of 64 runs (about 9 % on the RMSE; the bounds are ±4 of it). A
    genealogy not carried through resampling gives error bars about half as large (measured
    with systematic resampling, which breaks the estimator's assumption, 1.3×)."""
    from test_kernels import _conjugate_d4

    model, y, exact = _conjugate_d4()
    mcmc = MCMC(JarzynskiSMC(model, num_particles=256, move="mala", num_moves=1),
                num_warmup=20, num_samples=1, num_chains=64, chain_method="vectorized",
                progress_bar=False)
    mcmc.run(jax.random.key(3), y)
    st = mcmc.last_state
    log_z, se = np.asarray(st.log_evidence, np.float64), np.asarray(st.log_evidence_se)
    assert np.all(np.asarray(st.num_resamplings) >= 1)  # the genealogy has branched
    rmse, rms_se = np.sqrt(np.mean((log_z - exact) ** 2)), np.sqrt(np.mean(se**2))
    assert 0.7 < rmse / rms_se < 1.45, (rmse, rms_se)
    # The summary reports each run's error bar, and one run's as the evidence's.
    s = summary(mcmc, warn=False)
    np.testing.assert_allclose(s.runs["log_marginal_likelihood_se"], se, rtol=1e-6)


def test_runs_that_disagree_beyond_their_error_bars_are_reported():
    """The χ² test of the runs' agreement: four runs within their error bars pass; the same
    spread with error bars five times smaller is reported, with the numbers and the fix;
    runs without an error bar are left out."""
    from numpyro_jarzynski.infer.report import disagreement

    log_z = [-17.1, -16.8, -17.4, -17.0]  # sd 0.25
    assert disagreement(log_z, [0.2] * 4) is None
    msg = disagreement(log_z, [0.05] * 4)
    assert msg is not None and "disagree beyond their own error bars" in msg
    assert "sd 0.25 nat" in msg and "num_moves" in msg
    # χ² = 0.18/0.1² = 18 on 3 degrees of freedom: above the 0.999 quantile (16.3); at
    # 0.11, χ² = 14.9, below it.
    assert disagreement(log_z, [0.1] * 4) is not None
    assert disagreement(log_z, [0.11] * 4) is None
    assert disagreement(log_z[:1], [0.01]) is None  # one run: nothing to compare
    assert disagreement(log_z, [0.05, np.nan, np.nan, np.nan]) is None


def test_other_resampling_schemes_report_no_error_bar_once_they_resample():
    """The genealogy's estimate assumes multinomial resampling. With systematic resampling it
    was measured up to 3× too small (0 in some runs), so a run that resampled reports NaN, in
    the health record and in ``summary``'s header, which says what to do."""
    mcmc = run(JarzynskiSMC(conj_model, num_particles=200, resampling="systematic",
                            resample_threshold=0.9), data(50), warmup=15)
    assert int(mcmc.last_state.num_resamplings) > 0
    assert np.isfinite(float(mcmc.last_state.log_evidence_se))  # the raw estimate
    assert np.isnan(mcmc.sampler.last_health[0].log_evidence_se)
    header = summary(mcmc, warn=False).header()
    assert "no error bar" in header and "resampling='multinomial'" in header
