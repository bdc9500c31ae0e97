"""PottsLattice: the q-state Potts model with its checkerboard Gibbs sweep, against enumeration.

Every number is checked against an exact answer computed here in NumPy from the definition
(an explicit list of the 2nm bonds of the torus, all q^{nm} states). Tolerances are 4
standard errors (binomial errors for histograms, across independent SMC runs for log Ẑ and
weighted means, after the known −Var/2 bias of log Ẑ), plus a small floor.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import pytest
from numpyro.infer import MCMC
from scipy.special import logsumexp

from numpyro_jarzynski import JarzynskiSMC, PottsLattice
from numpyro_jarzynski.distributions import UniformStates
from numpyro_jarzynski.distributions.lattice import bond_sum

Q = 3
COUPLING = 1.0  # near K_c = log(1 + √3) ≈ 1.005 of the infinite 3-state lattice
FIELD = np.array([0.3, -0.2, 0.0])


# ---------------------------------------------------------------- exact answers (NumPy)
def all_states(shape, q):
    """Every configuration of an n×m lattice with q states: (q^{nm}, n, m) integers."""
    n, m = shape
    return np.array(list(itertools.product(range(q), repeat=n * m))).reshape(-1, n, m)


def torus_bonds(shape):
    """The 2nm bonds of the periodic lattice, each once: ((i, j), (i+1, j)) and ((i, j), (i, j+1))
    (on a side of length 2 the two bonds between a pair of sites are both listed)."""
    n, m = shape
    out = []
    for i, j in itertools.product(range(n), range(m)):
        out.append(((i, j), ((i + 1) % n, j)))
        out.append(((i, j), (i, (j + 1) % m)))
    return out


def exact_tilt(states, coupling, field):
    """K Σ_<ij> 1[s_i = s_j] + Σ_i h_{s_i} from the bond list, float64."""
    equal = sum((states[:, a[0], a[1]] == states[:, b[0], b[1]]).astype(float)
                for a, b in torus_bonds(states.shape[1:]))
    return coupling * equal + np.asarray(field, float)[states].sum((1, 2))


def equal_bonds(states):
    return exact_tilt(states, 1.0, np.zeros(int(states.max()) + 1))


def tempered_probs(states, coupling, field, beta):
    log_p = beta * exact_tilt(states, coupling, field)
    return np.exp(log_p - logsumexp(log_p))


# ---------------------------------------------------------------- the density itself
def test_tilt_and_log_prob_against_definition():
    rng = np.random.default_rng(0)
    for shape in [(2, 2), (2, 4), (4, 6)]:
        s = rng.integers(0, Q, size=(50,) + shape)
        d = PottsLattice(shape, Q, COUPLING, FIELD)
        tilt = np.asarray(d.tempering_log_tilt(jnp.asarray(s)), np.float64)
        np.testing.assert_allclose(tilt, exact_tilt(s, COUPLING, FIELD), rtol=1e-5, atol=1e-4)
        lp = np.asarray(d.log_prob(jnp.asarray(s)), np.float64)
        np.testing.assert_allclose(lp, tilt - math.prod(shape) * np.log(Q), rtol=1e-5)
    # Off the support (a state q, a negative state): log_prob is -inf.
    bad = np.zeros((2, 2, 4), np.int32)
    bad[0, 1, 2], bad[1, 0, 0] = Q, -1
    assert np.all(np.isneginf(np.asarray(PottsLattice((2, 4), Q, COUPLING).log_prob(bad))))
    # The uniform base normalises: Σ_s exp(base.log_prob(s)) = 1 over all 3^4 states.
    base = UniformStates((2, 2), Q)
    assert abs(logsumexp(np.asarray(base.log_prob(jnp.asarray(all_states((2, 2), Q)))))) < 1e-5
    draws = np.asarray(base.sample(jax.random.key(0), (4000,)))
    assert draws.dtype.kind == "i" and set(np.unique(draws)) == set(range(Q))
    # q = 2 is the Ising model at K/2: with σ = 1 − 2s, 2K Σ 1[s_i = s_j] = K Σ σ_i σ_j + 2nmK.
    s = rng.integers(0, 2, size=(50, 4, 4))
    potts = np.asarray(PottsLattice((4, 4), 2, 2 * 0.44).tempering_log_tilt(jnp.asarray(s)))
    ising = np.asarray(0.44 * bond_sum(jnp.asarray(1.0 - 2.0 * s)) + 32 * 0.44)
    np.testing.assert_allclose(potts, ising, rtol=1e-5)


# ---------------------------------------------------------------- the sweep alone is exact
def _codes(states, q):
    flat = np.asarray(states).reshape(len(states), -1)
    return flat @ (q ** np.arange(flat.shape[1])[::-1])


def test_sweep_leaves_tempered_potts_invariant():
    """Exact draws from ∝ exp(β·tilt) on a 2×2 lattice (all 81 states), one checkerboard sweep
    at the same β: the histogram stays exact (binomial errors). A sweep at β = 1 moves it away
    (the test can fail), and from all-zeros the sweeps mix to the same distribution."""
    shape, beta, n = (2, 2), 0.7, 40000
    coupling, field = 1.3, np.array([0.4, -0.5, 0.1])
    states = all_states(shape, Q)
    p = tempered_probs(states, coupling, field, beta)
    assert np.all(_codes(states, Q) == np.arange(Q**4))
    idx = np.random.default_rng(1).choice(p.size, size=n, p=p)
    d = PottsLattice(shape, Q, coupling, field)
    sweep = jax.jit(d.gibbs_sweep)
    x0 = jnp.asarray(states[idx], jnp.int32)
    se = np.sqrt(p * (1 - p) / n)

    out = sweep(jax.random.key(2), x0, jnp.float32(beta))
    assert out.dtype == jnp.int32 and out.shape == x0.shape
    freq = np.bincount(_codes(out, Q), minlength=Q**4) / n
    assert np.all(np.abs(freq - p) < 4 * se + 1e-4), np.max(np.abs(freq - p) / se)
    # The sweep did change the configurations (not the identity map).
    assert np.mean(np.any(np.asarray(out) != np.asarray(x0), axis=(1, 2))) > 0.3
    # Control: the same draws swept at β = 1 leave the β = 0.7 target.
    wrong = sweep(jax.random.key(2), x0, jnp.float32(1.0))
    freq_w = np.bincount(_codes(wrong, Q), minlength=Q**4) / n
    assert np.max(np.abs(freq_w - p) / se) > 6
    # Mixing: from all states 0, 30 sweeps reach the exact histogram.
    x = jnp.zeros((n,) + shape, jnp.int32)
    for k in jax.random.split(jax.random.key(3), 30):
        x = sweep(k, x, jnp.float32(beta))
    freq = np.bincount(_codes(x, Q), minlength=Q**4) / n
    assert np.all(np.abs(freq - p) < 4 * se + 1e-4), np.max(np.abs(freq - p) / se)


# ---------------------------------------------------------------- JarzynskiSMC end to end
def potts_model(coupling, field):
    numpyro.sample("s", PottsLattice((2, 4), Q, coupling, field))


def test_smc_log_z_and_mean_equal_bonds_2x4():
    """2×4 torus, q = 3 (all 6561 states): the log evidence is log Z − 8 log 3 and the
    weighted mean number of equal bonds and state-0 occupation match the enumeration."""
    shape = (2, 4)
    states = all_states(shape, Q)
    tilt = exact_tilt(states, COUPLING, FIELD)
    exact_log_evidence = logsumexp(tilt) - math.prod(shape) * np.log(Q)
    p = np.exp(tilt - logsumexp(tilt))
    exact_stats = np.array([p @ equal_bonds(states), p @ (states == 0).mean((1, 2))])

    num_chains = 8
    mcmc = MCMC(JarzynskiSMC(potts_model, num_particles=1000, schedule="linear"),
                num_warmup=30, num_samples=1, num_chains=num_chains, chain_method="vectorized",
                progress_bar=False)
    mcmc.run(jax.random.key(0), COUPLING, jnp.asarray(FIELD))

    est = np.asarray(mcmc.last_state.log_evidence, np.float64)
    se = est.std(ddof=1) / math.sqrt(est.size)
    bias = -0.5 * est.var(ddof=1)
    tol = 4 * se + 1e-3
    assert abs(est.mean() - bias - exact_log_evidence) < tol, (est, exact_log_evidence)
    # Not vacuous: the tilt shifts log Z by far more than the tolerance.
    assert abs(exact_log_evidence) > 20 * tol

    s = np.asarray(mcmc.get_samples(group_by_chain=True)["s"][:, -1])  # (C, N, 2, 4)
    assert s.dtype.kind == "i" and s.min() >= 0 and s.max() < Q
    lw = np.asarray(mcmc.get_extra_fields(group_by_chain=True)["log_weights"][:, -1])
    w = np.exp(lw - logsumexp(lw, axis=1, keepdims=True))
    flat = s.reshape((-1,) + shape)
    stats = np.stack([equal_bonds(flat), (flat == 0).mean((1, 2))], -1).reshape(
        num_chains, -1, 2)
    per_chain = np.einsum("cn,cnk->ck", w, stats)
    se = per_chain.std(0, ddof=1) / math.sqrt(num_chains)
    err = np.abs(per_chain.mean(0) - exact_stats)
    assert np.all(err < 4 * se + 2e-3), (per_chain.mean(0), exact_stats, se)


# ---------------------------------------------------------------- bad input
def test_bad_inputs():
    with pytest.raises(ValueError, match="even side"):
        PottsLattice((3, 4), Q, COUPLING)
    with pytest.raises(ValueError, match="n, m >= 2"):
        PottsLattice((4,), Q, COUPLING)
    with pytest.raises(ValueError, match="n, m >= 2"):
        PottsLattice((4, 1), Q, COUPLING)
    with pytest.raises(ValueError, match="num_states >= 2"):
        PottsLattice((2, 2), 1, COUPLING)
    with pytest.raises(TypeError, match="integer"):
        PottsLattice((2, 2), 3.0, COUPLING)
    with pytest.raises(TypeError, match="integer"):
        PottsLattice((2, 2), True, COUPLING)
    with pytest.raises(ValueError, match=r"field of shape \(3,\)"):
        PottsLattice((2, 2), Q, COUPLING, field=np.zeros(2))
    with pytest.raises(ValueError, match=r"field of shape \(3,\)"):
        PottsLattice((2, 2), Q, COUPLING, field=0.5)
    with pytest.raises(NotImplementedError, match="no exact sampler"):
        PottsLattice((2, 2), Q, COUPLING).sample(jax.random.key(0))
    # Batched parameters broadcast: coupling (2,) with field (3,).
    d = PottsLattice((2, 2), Q, jnp.array([0.5, 1.0]), FIELD)
    assert d.batch_shape == (2,) and d.event_shape == (2, 2)
    assert d.log_prob(jnp.zeros((2, 2), jnp.int32)).shape == (2,)
