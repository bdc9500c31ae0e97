"""Model checks of JarzynskiSMC: a model or initial population that cannot give the evidence the
user asked for is refused (or warned about) with a message naming the site and the fix, before
any compiled call; discrete sites written the NumPyro way are updated by exact Gibbs.

Checks are made where they happen (``inspect_model``, ``draw_prior``; errors also through
``MCMC.run``, where they are raised before anything is compiled). The one sampling test
compares with exact enumeration; its tolerances come from the spread of independent runs.
"""

import itertools
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.distributions import constraints
from numpyro.infer import MCMC
from scipy.special import logsumexp

from numpyro_jarzynski import JarzynskiSMC
from numpyro_jarzynski.ebm import EnergyDistribution
from numpyro_jarzynski.infer import model_bridge as bridge

N = 100
Y = (1.3 + 0.1 * np.random.default_rng(0).normal(size=20)).astype(np.float32)


def conj_model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    with numpyro.plate("data", 20):
        numpyro.sample("y", dist.Normal(mu, 0.1), obs=y)


def run(model, *args, num_particles=N, **kernel):
    mcmc = MCMC(JarzynskiSMC(model, num_particles=num_particles, **kernel), num_warmup=2,
                num_samples=1, progress_bar=False)
    mcmc.run(jax.random.key(0), *args)
    return mcmc


def draw(model, args, init_particles, num_particles=N):
    spec = bridge.inspect_model(model, args, {})
    return bridge.draw_prior(model, args, {}, spec, jax.random.key(1), num_particles,
                             init_particles)


def no_warnings(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


# ---------------------------------------------------------------- plate subsampling
def subsampled(y, subsample_size):
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    with numpyro.plate("data", y.shape[0], subsample_size=subsample_size) as idx:
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=jnp.asarray(y)[idx])


def test_subsampled_plate_is_refused():
    """Every run would see the same 20 of 200 observations: refused, naming the plate."""
    y = np.zeros(200, np.float32)
    with pytest.raises(ValueError, match=r"Plate 'data' subsamples 20 of its 200 elements.*"
                       r"full likelihood.*Remove subsample_size"):
        run(subsampled, y, 20)
    # subsample_size equal to the size is the full likelihood: accepted.
    spec = no_warnings(bridge.inspect_model, subsampled, (y, 200))
    assert spec.observed == ("y",) and spec.continuous == ("mu",)


# ---------------------------------------------------------------- init_particles arrays
def positive_vector(y):
    s = numpyro.sample("s", dist.HalfNormal(1.0).expand([3]).to_event(1))
    numpyro.sample("y", dist.Normal(0.0, s).to_event(1), obs=y)


Y3 = np.array([0.5, -1.0, 0.3], np.float32)
GOOD = np.abs(np.random.default_rng(2).normal(size=(N, 3))).astype(np.float32)


@pytest.mark.parametrize("value, match", [
    (GOOD[:, :2], (r"init_particles\['s'\] has shape \(100, 2\), but site 's' has shape "
                   r"\(3,\), so the expected shape is \(100, 3\) = \(num_particles, \*site_shape\)")),
    (GOOD[:99], r"init_particles\['s'\] has shape \(99, 3\).*expected num_particles=100"),
    (np.where(np.arange(N)[:, None] % 2 == 0, np.nan, GOOD),
     r"init_particles\['s'\]: 50 of 100 particles contain NaN"),
    (np.where(np.arange(N)[:, None] < 7, -GOOD, GOOD),
     r"init_particles\['s'\]: 7 of 100 particles lie outside the site's support"),
], ids=["trailing-shape", "leading-dim", "nan", "support"])
def test_init_particle_arrays_are_checked_before_the_model_runs(value, match):
    with pytest.raises(ValueError, match=match):
        run(positive_vector, Y3, init_particles={"s": value})


def test_init_particles_without_spread_warn():
    """One starting point copied N times is not N prior draws: the evidence would be wrong."""
    with pytest.warns(UserWarning, match=r"init_particles\['s'\]: all 100 particles are equal "
                      r"\(zero spread.*independent exact prior draws, not a starting point"):
        draw(positive_vector, (Y3,), {"s": np.ones((N, 3), np.float32)})
    z, _, log_w = no_warnings(draw, positive_vector, (Y3,), {"s": GOOD})
    assert np.allclose(np.exp(np.asarray(z["s"])), GOOD, rtol=1e-5)
    assert np.all(np.asarray(log_w) == 0.0)


# ---------------------------------------------------------------- init_particles proposals
def improper_scale(y):
    sigma = numpyro.sample("sigma", dist.ImproperUniform(constraints.positive, (), ()))
    numpyro.sample("y", dist.Normal(0.0, sigma).expand([3]).to_event(1), obs=y)


def test_proposal_outside_the_support_warns():
    """A Normal proposal for a positive site puts Φ(−1) ≈ 16 % of its draws at σ ≤ 0."""
    with pytest.warns(UserWarning) as record:
        draw(improper_scale, (Y3,), {"sigma": dist.Normal(1.0, 1.0)})
    msgs = [str(w.message) for w in record if "init_particles['sigma']" in str(w.message)]
    assert len(msgs) == 1, [str(w.message) for w in record]
    m = re.search(r"(\d+\.\d)% of 256 draws from the proposal \(Normal\) fall outside the "
                  r"support of site 'sigma'", msgs[0])
    assert m and 8.0 < float(m.group(1)) < 26.0, msgs[0]
    assert "proposal on the site's support" in msgs[0]
    # A proposal on the support: no warning, and weights log prior − log proposal.
    _, _, log_w = no_warnings(draw, improper_scale, (Y3,), {"sigma": dist.LogNormal(0.0, 1.0)})
    assert np.all(np.isfinite(np.asarray(log_w)))


def test_proposal_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match=r"init_particles\['s'\] is a proposal distribution of "
                       r"shape \(\).*site 's' has shape \(3,\)"):
        run(positive_vector, Y3, init_particles={"s": dist.LogNormal(0.0, 1.0)})


# ---------------------------------------------------------------- nothing to temper
def energy_only():
    numpyro.sample("x", EnergyDistribution(lambda x: jnp.sum(x**2), dist.Normal(0.0, 1.0)))


def prior_factor_only():
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    numpyro.factor("shrink", -(mu**2))


def test_data_that_became_latent_warn():
    """``obs=None`` turns the data into a latent site: log Z = 0 and the posterior is the prior."""
    with pytest.warns(UserWarning, match=r"no observed sites, no numpyro.factor.*no tempered "
                      r"sites.*log evidence will be 0.*'posterior' is the prior.*'mu', 'y'.*obs="):
        spec = bridge.inspect_model(conj_model, (None,))
    assert spec.continuous == ("mu", "y")
    with pytest.warns(UserWarning, match="log evidence will be 0"):
        bridge.inspect_model(prior_factor_only, (), prior_factors=("shrink",))
    # Something is tempered: an observed site, a likelihood factor, or a tempered site.
    no_warnings(bridge.inspect_model, conj_model, (Y,))
    no_warnings(bridge.inspect_model, prior_factor_only, ())
    assert no_warnings(bridge.inspect_model, energy_only, ()).tempered == ("x",)


# ---------------------------------------------------------------- discrete sites, NumPyro style
def test_wrapped_discrete_sites_are_accepted():
    """``.expand(...).to_event(k)`` and ``.mask(...)`` are unwrapped to the element's support."""

    def model():
        numpyro.sample("s", dist.Bernoulli(0.5).expand([6, 6]).to_event(2))
        numpyro.sample("c", dist.Categorical(jnp.ones(3) / 3).expand([4]).mask(True).to_event(1))
        numpyro.sample("y", dist.Normal(0.0, 1.0), obs=0.0)

    spec = no_warnings(bridge.inspect_model, model, ())
    assert spec.discrete == ("s", "c")
    assert np.asarray(spec.discrete_support["s"]).tolist() == [0, 1]
    assert np.asarray(spec.discrete_support["c"]).tolist() == [0, 1, 2]
    assert spec.site_shapes == {"s": (6, 6), "c": (4,)}


P_ROW = np.array([0.3, 0.6, 0.45])  # Bernoulli probabilities of the 3 columns
SHIFT, SIGMA = 1.5, 0.7
C_PROBS, LEVELS = np.array([0.5, 0.3, 0.2]), np.array([-1.0, 0.5, 2.0])
_rng = np.random.default_rng(1)
Y_B = (0.4 + SHIFT * np.array([[1, 0, 1], [0, 1, 1]]) + SIGMA * _rng.normal(size=(2, 3)))
Y_C = 0.4 + LEVELS[[0, 2, 1, 2]] + SIGMA * _rng.normal(size=4)
Y_B, Y_C = Y_B.astype(np.float32), Y_C.astype(np.float32)


def bits_and_levels(y_b, y_c):
    """A 2×3 block of bits and 4 three-level labels, both written the NumPyro way, sharing a
    continuous offset μ ~ N(0, 1)."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    b = numpyro.sample("b", dist.Bernoulli(jnp.asarray(P_ROW, jnp.float32))
                       .expand([2, 3]).to_event(2))
    c = numpyro.sample("c", dist.Categorical(jnp.asarray(C_PROBS, jnp.float32))
                       .expand([4]).to_event(1))
    numpyro.sample("y_b", dist.Normal(mu + SHIFT * b, SIGMA).to_event(2), obs=y_b)
    levels = jnp.asarray(LEVELS, jnp.float32)
    numpyro.sample("y_c", dist.Normal(mu + levels[c], SIGMA).to_event(1), obs=y_c)


def bits_and_levels_exact():
    """Sum over the 2⁶·3⁴ assignments, μ integrated analytically: given (b, c) the data are
    N(m(b, c), σ² I + 1 1ᵀ). Returns log Z, P(b = 1), P(c_k = v) and E[μ]."""
    y = np.concatenate([Y_B.ravel(), Y_C]).astype(np.float64)
    n = y.size
    bs = np.array(list(itertools.product([0, 1], repeat=6)))
    cs = np.array(list(itertools.product(range(3), repeat=4)))
    p = np.tile(P_ROW, 2)
    lp_b = (bs * np.log(p) + (1 - bs) * np.log(1 - p)).sum(1)
    lp_c = np.log(C_PROBS)[cs].sum(1)
    m = np.concatenate([np.repeat(SHIFT * bs, len(cs), 0), np.tile(LEVELS[cs], (len(bs), 1))], 1)
    cov = SIGMA**2 * np.eye(n) + 1.0
    prec, (_, logdet) = np.linalg.inv(cov), np.linalg.slogdet(cov)
    r = y - m
    ll = -0.5 * np.einsum("ij,jk,ik->i", r, prec, r) - 0.5 * logdet - 0.5 * n * np.log(2 * np.pi)
    log_terms = np.repeat(lp_b, len(cs)) + np.tile(lp_c, len(bs)) + ll
    log_z = logsumexp(log_terms)
    w = np.exp(log_terms - log_z)
    p_b = (w @ np.repeat(bs, len(cs), 0)).reshape(2, 3)
    labels = np.tile(cs, (len(bs), 1))
    p_c = np.stack([w @ (labels == v) for v in range(3)], -1)
    mean_mu = w @ (r.sum(1) / SIGMA**2 / (1 + n / SIGMA**2))
    return log_z, p_b, p_c, mean_mu


# 5 standard errors of a mean of 8 runs, from the per-run SDs measured over 4 × 8 runs (keys
# 0–3, rounded up): log Z 0.09, P(b = 1) and P(c = v) at most 0.025, E[μ] 0.02. The −Var/2 bias
# of log Ẑ (0.004) is inside the log Z tolerance.
LOG_Z_TOL = 5 * 0.09 / np.sqrt(8)  # 0.16
MARGINAL_TOL = 5 * 0.025 / np.sqrt(8)  # 0.044
MU_TOL = 5 * 0.02 / np.sqrt(8)  # 0.035


def test_wrapped_discrete_sites_against_enumeration():
    """8 independent runs (N = 512, 20 stages): their mean log Z, posterior bit and label
    probabilities and E[μ] against enumeration (exact log Z −17.549)."""
    log_z, p_b, p_c, mean_mu = bits_and_levels_exact()
    chains = 8
    mcmc = MCMC(JarzynskiSMC(bits_and_levels, num_particles=512), num_warmup=20, num_samples=1,
                num_chains=chains, chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.key(0), Y_B, Y_C, extra_fields=("log_weights",))
    s = mcmc.get_samples(group_by_chain=True)
    lw = np.asarray(mcmc.get_extra_fields(group_by_chain=True)["log_weights"][:, -1], np.float64)
    w = np.exp(lw - lw.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    est_b = np.einsum("kn,knij->ij", w, np.asarray(s["b"][:, -1], np.float64)) / chains
    est_c = np.einsum("kn,knjv->jv", w, np.eye(3)[np.asarray(s["c"][:, -1])]) / chains
    est_mu = np.mean(np.sum(w * np.asarray(s["mu"][:, -1], np.float64), 1))
    est_log_z = np.mean(np.asarray(mcmc.last_state.log_evidence, np.float64))
    assert abs(est_log_z - log_z) < LOG_Z_TOL, (est_log_z, log_z)
    assert np.all(np.abs(est_b - p_b) < MARGINAL_TOL), (est_b, p_b)
    assert np.all(np.abs(est_c - p_c) < MARGINAL_TOL), (est_c, p_c)
    assert abs(est_mu - mean_mu) < MU_TOL, (est_mu, mean_mu)
