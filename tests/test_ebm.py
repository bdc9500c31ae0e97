"""Energy-model distributions: exact log Z, the tempered-site protocol (JarzynskiSMC estimates
log Z of a latent EBM), exactness of the Gibbs sweeps, and Jarzynski weights along parameter
paths whose log Z is known (Gaussian energies; a small RBM by enumeration)."""

import itertools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax.scipy.special import logsumexp
from numpyro.infer import MCMC

from numpyro_jarzynski.ebm import BernoulliRBM, EnergyDistribution, GaussianBernoulliRBM
from numpyro_jarzynski.ebm import walkers as WK
from numpyro_jarzynski.engine import stage as S
from numpyro_jarzynski.engine import weights as W
from numpyro_jarzynski.engine.population import Population
from numpyro_jarzynski.infer import JarzynskiSMC


def _rbm(n_v, n_h, scale, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    return (
        scale * jax.random.normal(k1, (n_v, n_h)),
        jax.random.normal(k2, (n_v,)) * 0.5,
        jax.random.normal(k3, (n_h,)) * 0.5,
    )


def _states(n):
    return jnp.asarray(np.array(list(itertools.product([0, 1], repeat=n))), jnp.float32)


def test_bernoulli_rbm_log_partition_and_tilt_are_exact():
    W_, b, c = _rbm(6, 3, 1.0)
    v = _states(6)
    brute = logsumexp(-BernoulliRBM(W_, b, c).free_energy(v))
    # The hidden layer (3 units) and, transposed, the visible layer (6 > 3) get enumerated.
    assert BernoulliRBM(W_, b, c).log_partition() == pytest.approx(float(brute), abs=1e-4)
    h = _states(3)
    brute_t = logsumexp(-BernoulliRBM(W_.T, c, b).free_energy(h))
    assert BernoulliRBM(W_.T, c, b).log_partition() == pytest.approx(float(brute_t), abs=1e-4)
    assert float(brute_t) == pytest.approx(float(brute), abs=1e-4)  # same joint model
    rbm = BernoulliRBM(W_, b, c)
    split = rbm.tempering_base().log_prob(v) + rbm.tempering_log_tilt(v)
    np.testing.assert_allclose(split, -rbm.free_energy(v), atol=1e-4)
    exact = BernoulliRBM(W_, b, c, log_normalizer="exact")
    assert float(logsumexp(exact.log_prob(v))) == pytest.approx(0.0, abs=1e-4)


def test_gaussian_bernoulli_rbm_log_partition_matches_quadrature():
    rbm = GaussianBernoulliRBM(
        jnp.array([[2.0, -1.0], [1.0, 1.5]]), jnp.array([0.5, -1.0]), jnp.array([-1.0, 0.5]),
        sigma=jnp.array([1.0, 0.7]),
    )
    grid = jnp.linspace(-15.0, 15.0, 601)
    xx, yy = jnp.meshgrid(grid, grid)
    pts = jnp.stack([xx.ravel(), yy.ravel()], -1)
    quad = logsumexp(-rbm.free_energy(pts)) + 2 * jnp.log(grid[1] - grid[0])
    assert float(rbm.log_partition()) == pytest.approx(float(quad), abs=1e-3)
    log_w, means = rbm.mixture()
    mean_quad = jnp.sum(jax.nn.softmax(-rbm.free_energy(pts))[:, None] * pts, 0)
    np.testing.assert_allclose(jnp.exp(log_w) @ means, mean_quad, atol=1e-3)
    split = rbm.tempering_base().log_prob(pts[:50]) + rbm.tempering_log_tilt(pts[:50])
    np.testing.assert_allclose(split, -rbm.free_energy(pts[:50]), atol=1e-4)


def test_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="more than 20"):
        BernoulliRBM(jnp.zeros((30, 25)), jnp.zeros(30), jnp.zeros(25)).log_partition()
    with pytest.raises(ValueError, match="shape"):
        BernoulliRBM(jnp.zeros((3, 2)), jnp.zeros(2), jnp.zeros(2))
    base = dist.Normal(0.0, 1.0).expand([3]).to_event(1)
    with pytest.raises(ValueError, match="scalar per event"):
        EnergyDistribution(lambda x: x**2, base)
    with pytest.raises(ValueError, match="batch_shape"):
        EnergyDistribution(lambda x: jnp.sum(x**2), dist.Normal(jnp.zeros(3), 1.0))
    with pytest.raises(NotImplementedError, match="JarzynskiSMC"):
        EnergyDistribution(lambda x: jnp.sum(x**2), base).sample(jax.random.key(0))


def _exact_tempered(rbm, beta):
    v = _states(rbm.num_visible)
    return v, jax.nn.softmax(rbm.tempering_base().log_prob(v) + beta * rbm.tempering_log_tilt(v))


def _histogram_after(kernel, v, p, key, n):
    k0, k1 = jax.random.split(key)
    idx = jax.random.categorical(k0, jnp.log(p), shape=(n,))
    moved = kernel(k1, v[idx])
    code = (moved @ (2 ** jnp.arange(v.shape[1] - 1, -1, -1))).astype(int)
    return np.bincount(np.asarray(code), minlength=v.shape[0]) / n


def test_gibbs_sweeps_leave_their_target_invariant():
    """Exact draws from π_β, one sweep, histogram vs π_β (binomial errors, 5 sd). A block-Gibbs
    step at β-scaled parameters is *not* exact for the tempered free energy: it must fail."""
    rbm = BernoulliRBM(*_rbm(4, 3, 2.0, seed=1))
    n, beta = 200_000, 0.5
    v, p = _exact_tempered(rbm, beta)
    tol = 5 * np.sqrt(np.asarray(p) * (1 - np.asarray(p)) / n) + 1e-4

    freq = _histogram_after(lambda k, x: rbm.gibbs_sweep(k, x, beta), v, p, jax.random.key(2), n)
    assert np.all(np.abs(freq - p) < tol)
    scaled = BernoulliRBM(beta * rbm.weights, rbm.visible_bias, beta * rbm.hidden_bias)
    wrong = _histogram_after(scaled.block_gibbs, v, p, jax.random.key(3), n)
    assert np.any(np.abs(wrong - p) > 3 * tol)  # the check above has power

    v, p1 = _exact_tempered(rbm, 1.0)
    freq = _histogram_after(rbm.block_gibbs, v, p1, jax.random.key(4), n)
    assert np.all(np.abs(freq - p1) < 5 * np.sqrt(np.asarray(p1) * (1 - np.asarray(p1)) / n) + 1e-4)


def test_block_gibbs_draws_are_jax_random_bernoulli_bit_for_bit():
    """The sweep takes its uniforms from engine.noise (the hash written out, faster on CPU):
    the units must be exactly what jax.random.bernoulli gives for the same keys."""
    rbm = BernoulliRBM(*_rbm(30, 20, 3.0, seed=4))
    v = (jax.random.uniform(jax.random.key(0), (64, 30)) < 0.5).astype(jnp.float32)

    def reference(key, v):
        k_h, k_v = jax.random.split(key)
        h = jax.random.bernoulli(k_h, jax.nn.sigmoid(rbm.hidden_logits(v))).astype(v.dtype)
        logits = rbm.visible_bias + h @ rbm.weights.T
        return jax.random.bernoulli(k_v, jax.nn.sigmoid(logits)).astype(v.dtype)

    for key in (jax.random.key(7), jax.random.PRNGKey(7)):
        out = jax.jit(rbm.block_gibbs)(key, v)
        np.testing.assert_array_equal(out, reference(key, v))
        assert 0.2 < float(out.mean()) < 0.8  # not a constant


def test_annealing_from_base_gives_rbm_log_partition():
    rbm = BernoulliRBM(*_rbm(8, 4, 1.0, seed=3))
    keys = jax.random.split(jax.random.key(5), 16)
    log_z = jax.jit(jax.vmap(lambda k: WK.anneal_from_base(k, rbm, 256, 20, 0.1).log_evidence))(keys)
    err = np.asarray(log_z) - float(rbm.log_partition())
    se = np.std(err) / np.sqrt(len(err))
    assert abs(np.mean(err)) < 4 * se + 0.01, (np.mean(err), se)
    assert np.std(err) < 0.2


def test_latent_energy_models_under_jarzynski_smc():
    """An EBM as a latent site: base = prior part, tilt annealed; with no observations the
    log evidence is log Z (Gaussian energy: closed form; Gaussian-Bernoulli RBM: enumeration)."""
    mu, s = jnp.array([1.0, -0.5, 2.0]), 0.5
    W_ = jnp.array([[2.0, -1.0], [1.0, 1.5]])
    b, c, sigma = jnp.array([0.5, -1.0]), jnp.array([-1.0, 0.5]), jnp.array([1.0, 0.7])
    base = dist.Normal(0.0, 1.0).expand([3]).to_event(1)

    def model():
        numpyro.sample("x", EnergyDistribution(lambda x: jnp.sum((x - mu) ** 2) / (2 * s * s), base))
        numpyro.sample("v", GaussianBernoulliRBM(W_, b, c, sigma=sigma))

    # ∫ N(x; 0, 1) exp(−|x − μ|²/2s²) dx = N(μ; 0, 1 + s²) (2π s²)^{d/2}; posterior mean μ/(1+s²).
    exact = float(
        jnp.sum(dist.Normal(0.0, jnp.sqrt(1 + s * s)).log_prob(mu)) + 1.5 * jnp.log(2 * jnp.pi * s * s)
        + GaussianBernoulliRBM(W_, b, c, sigma=sigma).log_partition()
    )
    mcmc = MCMC(JarzynskiSMC(model, num_particles=500), num_warmup=20, num_samples=1,
                num_chains=6, chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.key(0))
    log_z = np.asarray(mcmc.last_state.log_evidence)
    se = np.std(log_z, ddof=1) / np.sqrt(len(log_z))
    assert abs(log_z.mean() - exact) < 4 * se + 0.02, (log_z, exact)
    z = mcmc.get_samples(group_by_chain=True)
    lw = mcmc.get_extra_fields(group_by_chain=True)["log_weights"][:, -1]
    x_mean = jax.vmap(W.weighted_mean)(lw, z["x"][:, -1]).mean(0)
    np.testing.assert_allclose(x_mean, mu * s**0 / (1 + s * s), atol=0.05)
    log_w_mix, means = GaussianBernoulliRBM(W_, b, c, sigma=sigma).mixture()
    v_mean = jax.vmap(W.weighted_mean)(lw, z["v"][:, -1]).mean(0)
    np.testing.assert_allclose(v_mean, jnp.exp(log_w_mix) @ means, atol=0.1)


class _MovesAt(NamedTuple):
    """The parameter path with its moves at a fixed point (the biased order's θ_{k+1})."""

    path: Any
    at: Any

    def increment(self, x, cache, a, b):
        return self.path.increment(x, None, a, b)  # the cache is `at`'s, not a's

    def target(self, point):
        return self.path.target(self.at)


#: the trainer's two exact orders and the biased one (moves with θ_{k+1}, then the work)
ORDERS = ("move_first", "witness", "biased")


def _follow_path(key, make, thetas, x0, num_moves, step_size, order="move_first"):
    """Walkers along fn_{θ_0} → … → fn_{θ_K} with the trainer's stage
    (:func:`walkers.advance`). ``"move_first"`` (the gradient walkers): move with θ_k,
    reweight at the moved state by log γ_{k+1} − log γ_k, resample on low ESS. ``"witness"``
    (``move_first=False``, the cross-fitted witness): reweight at the walkers, move with
    θ_{k+1}, resample on low ESS. ``"biased"`` moves with θ_{k+1} before reweighting at the
    moved state, in the same stage."""
    pop = Population(x0, jnp.zeros(x0.shape[0]), jnp.zeros(()))
    unit = jnp.ones(x0.shape[1:])

    def body(pop, inp):
        k, theta_a, theta_b = inp
        fn_a, fn_b = make(theta_a), make(theta_b)
        if order != "biased":
            pop, _ = WK.advance(k, pop, fn_a, fn_b, num_moves, step_size, 0.5,
                                move_first=order == "move_first")
        else:
            path = _MovesAt(WK.parameter_path(fn_b), fn_b)
            pop, _, _, _, _ = S.advance(k, pop, None, path, fn_a, fn_b, WK.kernel(fn_b),
                                        step_size, lambda p: (unit, None), num_moves, 0.5,
                                        move_first=True)
        return pop, None

    num = jax.tree.leaves(thetas)[0].shape[0]
    first, rest = jax.tree.map(lambda a: a[:-1], thetas), jax.tree.map(lambda a: a[1:], thetas)
    pop, _ = jax.lax.scan(body, pop, (jax.random.split(key, num - 1), first, rest))
    return pop.log_evidence, W.weighted_mean(pop.log_weights, pop.x)


@pytest.mark.parametrize("order", ORDERS[:2])
def test_jarzynski_weights_along_gaussian_parameter_path(order):
    """ULA walkers (Crooks increments) along U_k = |x − m_k|²/(2 s_k²) with base N(0, 2²),
    in both of the trainer's orders: log Z_K/Z_0 and the mean at the end match the closed
    forms within Monte Carlo error."""
    tau = 2.0
    base = dist.Normal(0.0, tau).expand([2]).to_event(1)
    K = 30
    t = jnp.linspace(0.0, 1.0, K + 1)[:, None]
    thetas = jnp.concatenate([2.0 * t * jnp.array([1.0, -1.0]), 1.0 - 0.5 * t], -1)  # (m, s)

    def make(th):
        return EnergyDistribution(lambda x: jnp.sum((x - th[:2]) ** 2) / (2 * th[2] ** 2), base)

    def log_z(th):
        m, s = th[:2], th[2]
        return jnp.sum(dist.Normal(0.0, jnp.sqrt(tau**2 + s**2)).log_prob(m)) + jnp.log(2 * jnp.pi * s**2)

    def post(th):  # exact ρ_θ: precision 1/τ² + 1/s², mean (m/s²)/precision
        prec = 1 / tau**2 + 1 / th[2] ** 2
        return th[:2] / th[2] ** 2 / prec, 1 / jnp.sqrt(prec)

    def run(key):
        k0, k1 = jax.random.split(key)
        mean0, sd0 = post(thetas[0])
        x0 = mean0 + sd0 * jax.random.normal(k0, (256, 2))
        return _follow_path(k1, make, thetas, x0, 2, 0.05, order)

    lz, mean = jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(7), 16))
    err = np.asarray(lz) - float(log_z(thetas[-1]) - log_z(thetas[0]))
    assert abs(err.mean()) < 4 * err.std(ddof=1) / 4 + 0.01, err
    m_err = np.asarray(mean) - np.asarray(post(thetas[-1])[0])
    assert np.all(np.abs(m_err.mean(0)) < 4 * m_err.std(0, ddof=1) / 4 + 0.01), m_err.mean(0)


def test_jarzynski_weights_along_rbm_parameter_path_and_the_biased_order():
    """Block Gibbs walkers along a path of small RBMs (exact log Z, E[v] by enumeration):
    exact in the trainer's two orders, biased when the moves with θ_{k+1} come first."""
    W0, b0, c0 = _rbm(5, 3, 0.5, seed=4)
    W1, b1, c1 = _rbm(5, 3, 2.0, seed=5)
    K = 8
    t = jnp.linspace(0.0, 1.0, K + 1)
    thetas = (W0 + t[:, None, None] * (W1 - W0), b0 + t[:, None] * (b1 - b0), c0 + t[:, None] * (c1 - c0))
    v = _states(5)

    def make(th):
        return BernoulliRBM(*th)

    def run(key, order):
        k0, k1 = jax.random.split(key)
        p0 = jax.nn.softmax(-make((W0, b0, c0)).free_energy(v))
        x0 = v[jax.random.categorical(k0, jnp.log(p0), shape=(256,))]
        return _follow_path(k1, make, thetas, x0, 1, 0.0, order)

    exact_lz = float(make((W1, b1, c1)).log_partition() - make((W0, b0, c0)).log_partition())
    exact_mean = jax.nn.softmax(-make((W1, b1, c1)).free_energy(v)) @ v
    keys = jax.random.split(jax.random.key(11), 24)
    for order in ORDERS:
        lz, mean = jax.jit(jax.vmap(lambda k, o=order: run(k, o)))(keys)
        err = np.asarray(lz) - exact_lz
        tol = 4 * err.std(ddof=1) / np.sqrt(len(err)) + 0.005
        if order != "biased":
            assert abs(err.mean()) < tol, (err.mean(), tol)
            m_err = np.asarray(mean) - np.asarray(exact_mean)
            assert np.all(np.abs(m_err.mean(0)) < 4 * m_err.std(0, ddof=1) / np.sqrt(24) + 0.005)
        else:
            assert abs(err.mean()) > tol, (err.mean(), tol)  # moving with θ_{k+1} first is biased
    fn = make((W0, b0, c0))
    pop = Population(v[:4], jnp.zeros(4), jnp.zeros(()))
    for order in ({"move_first": True, "resample_last": True},
                  {"resample_last": True, "waste_free": True}):
        with pytest.raises(ValueError, match="choose one order"):
            S.advance(jax.random.key(0), pop, None, WK.parameter_path(fn), fn, fn,
                      WK.kernel(fn), 0.0, lambda p: (jnp.ones(5), None), 1, 0.5, **order)


def test_bernoulli_rbm_as_latent_site_gives_exact_log_partition():
    """A latent BernoulliRBM under JarzynskiSMC (its own exact gibbs_sweep at each β, no
    observations): the log evidence estimates the RBM's log Z, exact by enumeration."""
    w = 0.8 * jax.random.normal(jax.random.key(0), (6, 3))
    b = 0.3 * jax.random.normal(jax.random.key(1), (6,))
    c = 0.3 * jax.random.normal(jax.random.key(2), (3,))

    def model():
        numpyro.sample("v", BernoulliRBM(w, b, c))

    mcmc = MCMC(JarzynskiSMC(model, num_particles=1000), num_warmup=20, num_samples=1,
                num_chains=4, chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.key(3))
    est = np.asarray(mcmc.last_state.log_evidence, np.float64)
    exact = float(BernoulliRBM(w, b, c).log_partition())
    assert abs(est.mean() - exact) < 4 * est.std(ddof=1) / 2 + 0.01, (est, exact)
