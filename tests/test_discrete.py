"""Discrete and mixed models in JarzynskiSMC: Gibbs moves at the current temperature.

Every number is checked against an exact answer (transfer matrix, enumeration × analytic
integrals); tolerances are 4 standard errors estimated from independent SMC runs (vectorised
chains, one compiled program per configuration), plus the known −Var/2 bias of log Ẑ.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax.flatten_util import ravel_pytree
from numpyro.infer import MCMC
from scipy.special import gammaln, logsumexp
from scipy.stats import multivariate_normal
from scipy.stats import t as student_t

from numpyro_jarzynski import MALA, ULA, Gibbs, JarzynskiSMC, gibbs_plan
from numpyro_jarzynski.distributions import IsingLattice
from numpyro_jarzynski.distributions.lattice import bond_sum
from numpyro_jarzynski.infer import model_bridge as bridge
from numpyro_jarzynski.infer.gibbs import make_discrete_move

K_C = 0.4406868
EXACT_LOG_Z = {4: 15.5219155, 8: 60.1417808}  # log Σ_s exp(K_c Σ_<ij> s_i s_j), n×n torus


def run_chains(model, args, num_chains, num_warmup, num_samples=1, seed=0, **kernel):
    mcmc = MCMC(
        JarzynskiSMC(model, **kernel), num_warmup=num_warmup, num_samples=num_samples,
        num_chains=num_chains, chain_method="vectorized", progress_bar=False,
    )
    mcmc.run(jax.random.key(seed), *args, extra_fields=("log_weights", "resampled"))
    return mcmc


def assert_log_z(estimates, exact):
    """Mean of independent log Ẑ within 4 standard errors (after the −Var/2 bias) of exact."""
    est = np.asarray(estimates, np.float64)
    se = est.std(ddof=1) / math.sqrt(est.size)
    bias = -0.5 * est.var(ddof=1)
    assert abs(est.mean() - bias - exact) < 4 * se + 1e-3, (est.mean(), bias, se, exact)


def assert_close_mc(per_chain, exact, floor=2e-3, family=1e-3):
    """Per-chain estimates (C, ...) against exact values, within the Student-t quantile of the
    standard error across chains that keeps the false-alarm rate of the whole array at
    ``family`` (Bonferroni over its m entries). With C = 8 chains the error of the se is
    itself 25 %: a fixed 4 se would fail one test in ~15 on a 15-entry array (t₇ beyond 4 has
    probability 0.5 %), and did when a change only re-drew the random stream."""
    per_chain = np.asarray(per_chain, np.float64)
    c, m = per_chain.shape[0], per_chain[0].size
    se = per_chain.std(axis=0, ddof=1) / math.sqrt(c)
    err = np.abs(per_chain.mean(axis=0) - exact)
    factor = student_t.ppf(1 - family / (2 * m), df=c - 1)
    assert np.all(err < factor * se + floor), (per_chain.mean(axis=0), exact, se, factor)


def weighted(log_w, values):
    """Weighted mean over the particle axis (axis 1 of (C, N, ...))."""
    w = jax.nn.softmax(jnp.asarray(log_w), axis=-1)
    w = w.reshape(w.shape + (1,) * (values.ndim - 2))
    return np.asarray(jnp.sum(w * values, axis=1))


# ---------------------------------------------------------------- exact Ising partition function
def torus_log_z(n, coupling):
    """Exact log Z of the n×n periodic Ising model by the row-to-row transfer matrix."""
    rows = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)  # (2^n, n) spins
    horizontal = np.sum(rows * np.roll(rows, 1, axis=1), axis=1)
    vertical = rows @ rows.T
    t = np.exp(coupling * (0.5 * horizontal[:, None] + vertical + 0.5 * horizontal[None, :]))
    lam = np.linalg.eigvalsh(t)
    top = np.max(np.abs(lam))
    return n * np.log(top) + np.log(np.sum((lam / top) ** n))


def test_exact_ising_constants():
    for n, value in EXACT_LOG_Z.items():
        assert abs(torus_log_z(n, K_C) - value) < 1e-6
    assert abs(torus_log_z(4, 0.0) - 16 * np.log(2)) < 1e-9
    # bond_sum counts each of the 2nm bonds once: brute force over all 4×4 states.
    states = 1.0 - 2.0 * ((np.arange(2**16)[:, None] >> np.arange(16)) & 1).reshape(-1, 4, 4)
    log_z = logsumexp(K_C * np.asarray(bond_sum(jnp.asarray(states, jnp.float32)), np.float64))
    assert abs(log_z - EXACT_LOG_Z[4]) < 1e-4


# ---------------------------------------------------------------- Ising with both sweeps
def ising_block(n, coupling):
    numpyro.sample("s", IsingLattice((n, n), coupling))


def ising_generic(n, coupling):
    b = numpyro.sample("b", dist.Bernoulli(0.5).expand([n, n]))
    numpyro.factor("coupling", coupling * bond_sum(2.0 * b - 1.0))


def two_lattices(sweep, coupling):
    """A 4×4 and an 8×8 lattice in one model (one compiled program per sweep type): the log
    evidence is log Z_4 + log Z_8 − (16 + 64) log 2."""
    for n in (4, 8):
        if sweep == "block":
            numpyro.sample(f"s{n}", IsingLattice((n, n), coupling))
        else:
            b = numpyro.sample(f"b{n}", dist.Bernoulli(0.5).expand([n, n]))
            numpyro.factor(f"coupling{n}", coupling * bond_sum(2.0 * b - 1.0))


@pytest.mark.parametrize("sweep", ["block", "generic"])
def test_ising_log_z_4x4_and_8x8(sweep):
    mcmc = run_chains(lambda k: two_lattices(sweep, k), (K_C,), num_chains=8, num_warmup=20,
                      num_particles=256, schedule="linear", num_moves=1)
    # Uniform base: the log evidence is log Z − nm log 2 for each lattice.
    exact = EXACT_LOG_Z[4] + EXACT_LOG_Z[8] - 80 * np.log(2.0)
    assert_log_z(mcmc.last_state.log_evidence, exact)


# ---------------------------------------------------------------- the move alone is exact
def _move_for(model, args, num_particles, **options):
    spec = bridge.inspect_model(model, args, {})
    unravel = ravel_pytree({})[1]
    move = make_discrete_move(model, args, {}, spec, unravel, **options)
    return jax.jit(move), jnp.zeros((num_particles, 0))


def potts3(coupling, field):
    s = numpyro.sample("s", dist.Categorical(jnp.array([0.2, 0.3, 0.5])).expand([3]))
    numpyro.factor("pairs", coupling * jnp.sum(s == jnp.roll(s, 1)) + field * jnp.sum(s))


@pytest.mark.parametrize("scan", ["systematic", "random"])
def test_generic_sweep_leaves_tempered_target_invariant(scan):
    """Exact draws from γ_β, one sweep at the same β: the histogram over all 27 states stays
    exact (binomial errors); a sweep at the wrong β (or with the wrong conditional) fails."""
    coupling, field, beta, n = 1.3, -0.4, 0.6, 20000
    states = np.array(list(itertools.product(range(3), repeat=3)))
    log_p = (np.log(np.array([0.2, 0.3, 0.5]))[states].sum(1)
             + beta * (coupling * (states == np.roll(states, 1, 1)).sum(1) + field * states.sum(1)))
    p = np.exp(log_p - logsumexp(log_p))
    idx = jax.random.categorical(jax.random.key(1), jnp.asarray(np.log(p)), shape=(n,))
    move, x = _move_for(potts3, (coupling, field), n, scan=scan, num_sweeps=1)
    out = move(jax.random.key(2), jnp.float32(beta), x, {"s": jnp.asarray(states)[idx]})
    codes = np.asarray(out["s"]) @ np.array([9, 3, 1])
    freq = np.bincount(codes, minlength=27) / n
    assert np.all(np.abs(freq - p) < 4 * np.sqrt(p * (1 - p) / n) + 1e-4)
    # Control: the same draws swept at β = 1 leave the β = 0.6 target (the test can fail).
    wrong = move(jax.random.key(2), jnp.float32(1.0), x, {"s": jnp.asarray(states)[idx]})
    freq_w = np.bincount(np.asarray(wrong["s"]) @ np.array([9, 3, 1]), minlength=27) / n
    assert np.max(np.abs(freq_w - p) / np.sqrt(p * (1 - p) / n)) > 6


def test_block_sweep_leaves_tempered_ising_invariant():
    """Exact 4×4 Ising draws at β·K (enumeration of 2^16 states), one checkerboard sweep:
    E[bond sum] and E[|magnetisation|] stay at their exact values."""
    beta, n = 0.8, 20000
    states = 1.0 - 2.0 * ((np.arange(2**16)[:, None] >> np.arange(16)) & 1).reshape(-1, 4, 4)
    bonds = np.asarray(bond_sum(jnp.asarray(states)), np.float64)
    log_p = beta * K_C * bonds
    p = np.exp(log_p - logsumexp(log_p))
    absm = np.abs(states.sum((1, 2)))
    exact = np.array([p @ bonds, p @ absm])
    idx = np.random.default_rng(3).choice(p.size, size=n, p=p)
    move, x = _move_for(ising_block, (4, K_C), n)
    out = np.asarray(move(jax.random.key(4), jnp.float32(beta), x,
                          {"s": jnp.asarray(states, jnp.float32)[idx]})["s"])
    stats = np.stack([np.asarray(bond_sum(jnp.asarray(out))), np.abs(out.sum((1, 2)))], 1)
    se = stats.std(0) / np.sqrt(n)
    assert np.all(np.abs(stats.mean(0) - exact) < 4 * se), (stats.mean(0), exact, se)
    # And the sweep mixes: from all spins up, 50 sweeps reach the same moments.
    up = jnp.ones((n, 4, 4))
    for k in jax.random.split(jax.random.key(5), 50):
        up = move(k, jnp.float32(beta), x, {"s": up})["s"]
    up = np.asarray(up)
    stats = np.stack([np.asarray(bond_sum(jnp.asarray(up))), np.abs(up.sum((1, 2)))], 1)
    assert np.all(np.abs(stats.mean(0) - exact) < 4 * stats.std(0) / np.sqrt(n))


# ---------------------------------------------------------------- Gaussian mixture (mixed model)
GMM_Y = np.array([-2.1, -1.4, 0.3, 1.7, 2.6])
GMM_W = np.array([0.3, 0.2, 0.5])
GMM_M = np.array([-2.0, 0.0, 2.0])
GMM_TAU, GMM_SIGMA = 1.0, 0.8


def gmm(y):
    mu = numpyro.sample("mu", dist.Normal(jnp.asarray(GMM_M), GMM_TAU).to_event(1))
    with numpyro.plate("data", y.shape[0]):
        z = numpyro.sample("z", dist.Categorical(jnp.asarray(GMM_W)))
        numpyro.sample("y", dist.Normal(mu[z], GMM_SIGMA), obs=y)


def gmm_exact():
    """Evidence and P(z_i = k | y) by enumerating 3^5 assignments, μ integrated analytically."""
    k, n = len(GMM_W), len(GMM_Y)
    log_terms, assignments = [], list(itertools.product(range(k), repeat=n))
    for z in assignments:
        z = np.array(z)
        lt = np.log(GMM_W[z]).sum()
        for c in range(k):
            yc = GMM_Y[z == c]
            if yc.size:
                cov = GMM_SIGMA**2 * np.eye(yc.size) + GMM_TAU**2
                lt += multivariate_normal(np.full(yc.size, GMM_M[c]), cov).logpdf(yc)
        log_terms.append(lt)
    log_terms = np.array(log_terms)
    post = np.exp(log_terms - logsumexp(log_terms))
    probs = np.zeros((n, k))
    for w, z in zip(post, assignments):
        probs[np.arange(n), z] += w
    return logsumexp(log_terms), probs


@pytest.fixture(scope="module", params=["collapsed", "joint"])
def gmm_run(request):
    """The assignments summed out of the path (default) or sampled along it."""
    gibbs = Gibbs(collapse=request.param == "collapsed")
    return run_chains(gmm, (jnp.asarray(GMM_Y),), num_chains=8, num_warmup=15, num_samples=3,
                      num_particles=256, schedule="linear", move=[MALA(), gibbs])


def test_gaussian_mixture_evidence_and_assignments(gmm_run):
    log_z, probs = gmm_exact()
    assert_log_z(gmm_run.last_state.log_evidence, log_z)
    s = gmm_run.get_samples(group_by_chain=True)
    lw = gmm_run.get_extra_fields(group_by_chain=True)["log_weights"]
    onehot = jax.nn.one_hot(s["z"][:, -1], 3)  # (C, N, n, K)
    assert_close_mc(weighted(lw[:, -1], onehot), probs)


def test_gibbs_and_moves_at_beta_one_add_no_weight(gmm_run):
    """At β = 1 the annealing work is zero and both the MALA moves and the Gibbs sweep are
    exact for ρ_1: the weights change only when the population is resampled."""
    extra = gmm_run.get_extra_fields(group_by_chain=True)
    lw, res = np.asarray(extra["log_weights"]), np.asarray(extra["resampled"])
    kept = ~res[:, 1:]
    assert kept.any()
    same = np.all(lw[:, 1:] == lw[:, :-1], axis=-1)
    assert np.all(same[kept])
    # The discrete sites did move at β = 1 (the check is not vacuous).
    z = np.asarray(gmm_run.get_samples(group_by_chain=True)["z"])
    assert np.mean(z[:, 1:] != z[:, :-1]) > 0.05


def test_plate_block_draws_each_element_from_its_conditional():
    """One plate-block update at fixed continuous state: P(z_i = k) ∝ w_k N(y_i; μ_k, σ)^β,
    exact per element, the same law as the coordinate sweep (elements are conditionally
    independent given the continuous sites), and every element moves at once. A collapsed
    block (summed out of the path) is drawn from its posterior conditional, β = 1."""
    y = jnp.asarray(GMM_Y)
    assert gibbs_plan(gmm, (y,)) == {"z": "collapsed"}
    assert gibbs_plan(gmm, (y,), collapse=False) == {"z": "plate"}
    spec = bridge.inspect_model(gmm, (y,), {})
    mu = jnp.array([-1.5, 0.2, 2.4])
    x0, unravel = ravel_pytree({"mu": mu})
    n, beta = 20000, 0.6
    x = jnp.tile(x0, (n, 1))
    d = {"z": jnp.zeros((n, y.size), jnp.int32)}
    for blocks, collapse, b in (("plate", False, beta), ("coordinate", False, beta),
                                ("plate", True, 1.0)):
        logits = np.log(GMM_W)[None] + b * np.asarray(
            dist.Normal(mu[None], GMM_SIGMA).log_prob(y[:, None]))
        exact = np.exp(logits - logsumexp(logits, axis=1, keepdims=True))  # (n_obs, K)
        move = jax.jit(make_discrete_move(gmm, (y,), {}, spec, unravel, blocks=blocks,
                                          collapse=collapse))
        z = np.asarray(move(jax.random.key(7), jnp.float32(beta), x, d)["z"])
        freq = np.stack([(z == k).mean(0) for k in range(3)], 1)
        se = np.sqrt(exact * (1 - exact) / n)
        assert np.all(np.abs(freq - exact) < 4 * se + 1e-4), (blocks, collapse, freq, exact)


def test_collapsed_block_sums_the_site_out_of_the_likelihood():
    """Collapsed: the likelihood part is Σ_i log Σ_k w_k N(y_i; μ_k, σ), whatever the
    particle's assignments, and the prior part is the continuous sites' alone; the
    coupled and the not-collapsible models keep the joint density."""
    y = jnp.asarray(GMM_Y)
    kernel = JarzynskiSMC(gmm, num_particles=64)
    state = kernel.init(jax.random.key(0), 5, None, (y,), {})
    mu = np.asarray(state.z["mu"])  # (N, K), unconstrained = constrained (real support)
    comp = np.log(GMM_W) + dist.Normal(mu[:, None, :], GMM_SIGMA).log_prob(
        np.asarray(y)[None, :, None])
    np.testing.assert_allclose(state.cache.log_lik, logsumexp(comp, axis=-1).sum(-1),
                               rtol=1e-5)
    np.testing.assert_allclose(
        state.cache.log_prior,
        dist.Normal(jnp.asarray(GMM_M), GMM_TAU).to_event(1).log_prob(mu), rtol=1e-5)
    joint = JarzynskiSMC(gmm, num_particles=64, move=[MALA(), Gibbs(collapse=False)])
    js = joint.init(jax.random.key(0), 5, None, (y,), {})
    zz = np.asarray(js.z["z"])
    own = np.log(GMM_W)[zz].sum(-1)
    np.testing.assert_allclose(js.cache.log_prior - own,
                               dist.Normal(jnp.asarray(GMM_M), GMM_TAU).to_event(1).log_prob(
                                   np.asarray(js.z["mu"])), rtol=1e-5)
    with pytest.raises(TypeError, match="collapse must be True"):
        Gibbs(collapse="yes")


def gmm_coupled(y):
    """The GMM with a prior term on the number of points in component 0: a term outside the
    data plate depends on every assignment, so the elements are no longer independent."""
    mu = numpyro.sample("mu", dist.Normal(jnp.asarray(GMM_M), GMM_TAU).to_event(1))
    with numpyro.plate("data", y.shape[0]):
        z = numpyro.sample("z", dist.Categorical(jnp.asarray(GMM_W)))
        numpyro.sample("y", dist.Normal(mu[z], GMM_SIGMA), obs=y)
    numpyro.factor("count", -0.5 * jnp.sum(z == 0))


def gmm_expanded(y):
    """Assignments drawn with .expand and no plate: no independence is declared."""
    mu = numpyro.sample("mu", dist.Normal(jnp.asarray(GMM_M), GMM_TAU).to_event(1))
    z = numpyro.sample("z", dist.Categorical(jnp.asarray(GMM_W)).expand([y.shape[0]]))
    numpyro.sample("y", dist.Normal(mu[z], GMM_SIGMA), obs=y)


def gmm_shifted(y):
    """The GMM with a discrete shift of every location: the observations read a second,
    non-plate discrete site, so the assignments cannot be summed out alone."""
    mu = numpyro.sample("mu", dist.Normal(jnp.asarray(GMM_M), GMM_TAU).to_event(1))
    shift = numpyro.sample("shift", dist.Bernoulli(0.5))
    with numpyro.plate("data", y.shape[0]):
        z = numpyro.sample("z", dist.Categorical(jnp.asarray(GMM_W)))
        numpyro.sample("y", dist.Normal(mu[z] + shift, GMM_SIGMA), obs=y)


def gmm_latent_location(y):
    """Per-point latent locations drawn given the assignment: a prior term reads z."""
    mu = numpyro.sample("mu", dist.Normal(jnp.asarray(GMM_M), GMM_TAU).to_event(1))
    with numpyro.plate("data", y.shape[0]):
        z = numpyro.sample("z", dist.Categorical(jnp.asarray(GMM_W)))
        m = numpyro.sample("m", dist.Normal(mu[z], 0.1))
        numpyro.sample("y", dist.Normal(m, GMM_SIGMA), obs=y)


def test_gibbs_plan_falls_back_where_plates_do_not_make_elements_independent():
    y = jnp.asarray(GMM_Y)
    # Collapsing needs the assignments to be read by their observations only.
    assert gibbs_plan(gmm_shifted, (y,)) == {"shift": "coordinate", "z": "plate"}
    assert gibbs_plan(gmm_latent_location, (y,)) == {"z": "plate"}
    assert gibbs_plan(gmm_coupled, (y,), prior_factors=("count",)) == {"z": "coordinate"}
    assert gibbs_plan(gmm_expanded, (y,)) == {"z": "coordinate"}
    assert gibbs_plan(gmm, (y,), blocks="coordinate") == {"z": "coordinate"}
    assert gibbs_plan(ising_block, (4, K_C)) == {"s": "protocol"}


# ---------------------------------------------------------------- change point (mixed model)
CP_Y = np.array([4, 5, 3, 6, 4, 5, 1, 0, 2, 1, 0, 1])
CP_A, CP_B = 2.0, 0.5


def change_point(y):
    t = y.shape[0]
    tau = numpyro.sample("tau", dist.DiscreteUniform(0, t))
    rates = numpyro.sample("rates", dist.Gamma(CP_A, CP_B).expand([2]).to_event(1))
    rate = jnp.where(jnp.arange(t) < tau, rates[0], rates[1])
    numpyro.sample("y", dist.Poisson(rate), obs=y)


def change_point_exact():
    """Sum over τ of the product of two Gamma–Poisson marginals; posterior of τ and rates."""
    t = CP_Y.size

    def marginal(seg):
        s, m = seg.sum(), seg.size
        return (CP_A * np.log(CP_B) - gammaln(CP_A) + gammaln(CP_A + s)
                - (CP_A + s) * np.log(CP_B + m) - gammaln(seg + 1).sum())

    log_terms = np.array([marginal(CP_Y[:k]) + marginal(CP_Y[k:]) for k in range(t + 1)])
    log_terms -= np.log(t + 1)
    post = np.exp(log_terms - logsumexp(log_terms))
    mean1 = np.array([(CP_A + CP_Y[:k].sum()) / (CP_B + k) for k in range(t + 1)])
    mean2 = np.array([(CP_A + CP_Y[k:].sum()) / (CP_B + t - k) for k in range(t + 1)])
    return logsumexp(log_terms), post, np.array([post @ mean1, post @ mean2])


def test_change_point_against_enumeration():
    log_z, post, rate_means = change_point_exact()
    mcmc = run_chains(change_point, (jnp.asarray(CP_Y),), num_chains=8, num_warmup=15,
                      num_particles=256, schedule="linear",
                      move=[Gibbs(num_sweeps=2, scan="random"), MALA()])
    assert_log_z(mcmc.last_state.log_evidence, log_z)
    s = mcmc.get_samples(group_by_chain=True)
    lw = mcmc.get_extra_fields(group_by_chain=True)["log_weights"][:, -1]
    onehot = jax.nn.one_hot(s["tau"][:, -1], CP_Y.size + 1)
    assert_close_mc(weighted(lw, onehot), post)
    assert_close_mc(weighted(lw, s["rates"][:, -1]), rate_means, floor=1e-2)


# ---------------------------------------------------------------- bad input
def poisson_latent():
    numpyro.sample("k", dist.Poisson(3.0))


def parallel_enum():
    numpyro.sample("z", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})


def ising_observed(y):
    s = numpyro.sample("s", IsingLattice((4, 4), K_C))
    numpyro.sample("y", dist.Normal(s, 1.0).to_event(2), obs=y)


def continuous_only():
    numpyro.sample("m", dist.Normal(0.0, 1.0))


def test_bad_inputs():
    def init(model, *args):
        MCMC(JarzynskiSMC(model, num_particles=8), num_warmup=2, num_samples=1,
             progress_bar=False).run(jax.random.key(0), *args)

    with pytest.raises(ValueError, match="'k'.*infinite.*truncate.*marginalise"):
        init(poisson_latent)
    with pytest.raises(ValueError, match="'z'.*enumerate"):
        init(parallel_enum)
    with pytest.raises(ValueError, match="num_sweeps"):
        Gibbs(num_sweeps=0)
    with pytest.raises(ValueError, match="scan"):
        Gibbs(scan="checkerboard")
    with pytest.raises(ValueError, match="blocks.*'plate'"):
        Gibbs(blocks="rows")
    with pytest.raises(TypeError, match=r"move=\[MALA\(\), Gibbs\(num_sweeps"):
        JarzynskiSMC(ising_block, num_sweeps=2)
    with pytest.raises(ValueError, match=r"before or after all of them.*move=\[MALA\(\), HMC"):
        JarzynskiSMC(gmm, move=[MALA(), Gibbs(), ULA()])
    with pytest.raises(ValueError, match="'auto'.*cannot be composed"):
        JarzynskiSMC(gmm, move=["auto", ULA()])
    assert JarzynskiSMC(gmm, move=[MALA(), ULA(), Gibbs()]).move.name == "mala+ula"
    with pytest.raises(ValueError, match="more than once"):
        JarzynskiSMC(gmm, move=[Gibbs(), Gibbs()])
    with pytest.raises(TypeError, match=r"instance: Gibbs\(\)"):
        JarzynskiSMC(gmm, move=[MALA(), Gibbs])

    def init_with(kernel, *args):
        MCMC(kernel, num_warmup=2, num_samples=1, progress_bar=False).run(
            jax.random.key(0), *args)

    with pytest.raises(ValueError, match="continuous latent sites.*mu.*never move"):
        init_with(JarzynskiSMC(gmm, move=Gibbs(), num_particles=8), jnp.asarray(GMM_Y))
    with pytest.raises(ValueError, match="no discrete latent sites"):
        init_with(JarzynskiSMC(continuous_only, move=[MALA(), Gibbs()], num_particles=8))
    with pytest.raises(ValueError, match="even side"):
        IsingLattice((3, 4), K_C)
    with pytest.raises(NotImplementedError, match="no exact sampler"):
        IsingLattice((4, 4), K_C).sample(jax.random.key(0))
    # gibbs_sweep is only the full conditional when nothing else depends on the site.
    move, x = _move_for(ising_observed, (jnp.zeros((4, 4)),), 4)
    with pytest.raises(ValueError, match="'s'.*other terms of the model"):
        move(jax.random.key(0), jnp.float32(0.5), x, {"s": jnp.ones((4, 4, 4))})


def test_inverse_cdf_categorical_draws_the_softmax_and_never_a_zero_probability_value():
    """``gibbs.categorical`` (one uniform per row, the moves' written-out hash): frequencies
    within 4 se of the softmax, a −inf candidate never drawn (also at the end of the row,
    where rounding of the CDF would otherwise land), the same key gives the same draws."""
    from numpyro_jarzynski.infer.gibbs import categorical

    logits = jnp.array([[0.0, jnp.log(3.0), -jnp.inf, 1.0],
                        [-jnp.inf, 2.0, 2.0, -jnp.inf]])
    n = 40000
    rows = jnp.tile(logits[None], (n, 1, 1))
    c = np.asarray(categorical(jax.random.key(3), rows))
    p = np.asarray(jax.nn.softmax(logits, axis=-1))
    freq = np.stack([(c == k).mean(0) for k in range(4)], -1)
    assert np.all(np.abs(freq - p) <= 4 * np.sqrt(p * (1 - p) / n) + 1e-12), (freq, p)
    assert not np.any(c[:, 0] == 2) and not np.any(np.isin(c[:, 1], [0, 3]))
    np.testing.assert_array_equal(c, np.asarray(categorical(jax.random.key(3), rows)))
