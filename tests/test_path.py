"""Paths as values (``engine/path.py``) and the stage that runs on them (``stage.advance``).

* Every path's work ``increment(x, cache, a, b)`` is ``log γ_b(x) − log γ_a(x)`` computed
  directly from the densities (closed forms), with and without a cache.
* ``stage.advance`` on the generation path with ULA moves (reweight first, a path whose cache
  must be re-evaluated at ``b``) gives ``log Z_1/Z_0 = 0`` and the endpoint mean of the
  normalised Gaussian interpolant within Monte Carlo error.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from numpyro_jarzynski.ebm import EnergyDistribution
from numpyro_jarzynski.ebm import walkers as WK
from numpyro_jarzynski.engine import kernels as K
from numpyro_jarzynski.engine import path as P
from numpyro_jarzynski.engine import stage as S
from numpyro_jarzynski.engine import weights as W
from numpyro_jarzynski.engine.population import init_population
from numpyro_jarzynski.interpolants import GaussianMixtureInterpolant

X = jax.random.normal(jax.random.key(0), (64, 3)) * 2.0
GAUSS = GaussianMixtureInterpolant.gaussian([1.0, -0.5], [[2.0, 0.8], [0.8, 0.5]])


def test_tempering_path_increment_is_the_log_density_difference():
    prior = dist.Normal(0.0, 3.0).expand([3]).to_event(1)
    log_lik = lambda x: -0.5 * jnp.sum((x - 1.0) ** 2) / 0.25
    path = P.TemperingPath(P.split_evaluator(prior.log_prob, log_lik))
    cache = path.evaluate(X, None)
    a, b = 0.2, 0.55
    direct = (prior.log_prob(X) + b * jax.vmap(log_lik)(X)) - (
        prior.log_prob(X) + a * jax.vmap(log_lik)(X))
    np.testing.assert_allclose(path.increment(X, cache, a, b), direct, rtol=1e-5, atol=1e-4)
    # ... and the difference of what the targets at b and at a read off the same cache
    t_a, t_b = path.target(a)(None), path.target(b)(None)
    np.testing.assert_allclose(path.increment(X, cache, a, b),
                               t_b.log_density(cache) - t_a.log_density(cache), rtol=1e-5,
                               atol=1e-4)
    np.testing.assert_allclose(t_b.grad(t_b.evaluate(X)),
                               jax.vmap(jax.grad(lambda x: prior.log_prob(x) + b * log_lik(x)))(X),
                               rtol=1e-5, atol=1e-5)


def test_parameter_path_increment_is_the_energy_change():
    base = dist.Normal(0.0, 2.0).expand([3]).to_event(1)

    def energy_model(m):
        return EnergyDistribution(lambda y: 0.5 * jnp.sum((y - m) ** 2), base)

    m_a, m_b = jnp.array([0.0, 1.0, -1.0]), jnp.array([0.5, 2.0, 0.0])
    fn_a, fn_b = energy_model(m_a), energy_model(m_b)
    path = WK.parameter_path(fn_a)
    # log γ_θ = −U_θ + log base: the base cancels in the work
    direct = -0.5 * jnp.sum((X - m_b) ** 2, -1) + 0.5 * jnp.sum((X - m_a) ** 2, -1)
    np.testing.assert_allclose(path.increment(X, None, fn_a, fn_b), direct, rtol=1e-5, atol=1e-4)
    cache = path.target(fn_a).evaluate(X)  # the cache of θ_a: log γ_a read from it
    np.testing.assert_allclose(path.increment(X, cache, fn_a, fn_b), direct, rtol=1e-5, atol=1e-4)
    # reversing the path flips the sign
    np.testing.assert_allclose(path.increment(X, None, fn_b, fn_a), -direct, rtol=1e-5, atol=1e-4)


def test_generation_path_increment_is_log_rho_difference():
    x = X[:, :2]
    path = P.GenerationPath(GAUSS.log_density)
    a, b = 0.3, 0.7
    direct = jax.vmap(lambda xi: GAUSS.log_density(b, xi) - GAUSS.log_density(a, xi))(x)
    cache = path.target(a).evaluate(x)
    np.testing.assert_allclose(path.increment(x, cache, a, b), direct, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(path.increment(x, None, a, b), direct, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(cache.score, jax.vmap(lambda xi: GAUSS.score(a, xi))(x),
                               rtol=1e-4, atol=1e-5)


def test_advance_on_the_generation_path_with_ula_is_exact():
    """Annealed importance sampling along ρ_t (20 stages, two ULA moves each with their
    Crooks increments): log Z_1/Z_0 = 0 and E_{ρ_1}[x] = mean, over 8 independent runs. The
    cache of ρ_{t_a} must be re-evaluated at t_b before the moves (a stale cache gives
    log Z ≈ 2)."""
    path = P.GenerationPath(GAUSS.log_density, GAUSS.score)
    times = jnp.linspace(0.0, 1.0, 21)

    def run(key):
        k0, k1 = jax.random.split(key)
        x0 = GAUSS.sample(k0, 0.0, 2048)
        pop = init_population(x0)
        unit = jnp.ones(2)

        def body(pop, inp):
            k, a, b = inp
            pop, _, _, _, _ = S.advance(k, pop, None, path, a, b, K.ULA(), 0.1,
                                        lambda p: (unit, None), 2, 0.5)
            return pop, None

        pop, _ = jax.lax.scan(body, pop, (jax.random.split(k1, 20), times[:-1], times[1:]))
        return pop.log_evidence, W.weighted_mean(pop.log_weights, pop.x)

    lz, mean = jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(3), 8))
    lz, mean = np.asarray(lz), np.asarray(mean)
    assert abs(lz.mean()) < 4 * lz.std(ddof=1) / np.sqrt(8) + 0.005, lz
    err = mean - np.asarray(GAUSS.mean())
    assert np.all(np.abs(err.mean(0)) < 4 * err.std(0, ddof=1) / np.sqrt(8) + 0.005), err


class _Cull(NamedTuple):
    """A test move that leaves every walker where it is and kills the first half of them with
    its increment, so that the check after it resamples (reorders) the population."""

    invariant = False
    name = "cull"

    def step(self, key, x, cache, target, step_size, scale):
        n = x.shape[0]
        inc = jnp.where(jnp.arange(n) < n // 2, -jnp.inf, 0.0)
        return K.MoveResult(x, cache, inc, jnp.ones(n), jnp.zeros(n, bool))


class _Redraw(NamedTuple):
    """A test move that draws every walker afresh from the target N(0, 1)."""

    invariant = True
    name = "redraw"

    def step(self, key, x, cache, target, step_size, scale):
        x_new = jax.random.normal(key, x.shape)
        n = x.shape[0]
        return K.MoveResult(x_new, target.evaluate(x_new), jnp.zeros(n), jnp.ones(n),
                            jnp.zeros(n, bool))


def test_renewal_is_the_net_decorrelation_of_the_likelihood_through_resampling():
    """``StageInfo.renewal`` (what ``move="auto"`` scores) is the block's net
    ``E_w(ℓ_end − ℓ_start)²/(2 Var_w ℓ)``: 1 for fresh draws, exactly 0 for walkers that did
    not move, also when a resampling between the moves reordered them (the start values
    travel with the walkers: paired with the reordered walkers instead, it reads ≈ 1)."""
    n = 4096
    path = P.TemperingPath(P.split_evaluator(
        lambda x: -0.5 * jnp.sum(x**2), lambda x: -0.5 * jnp.sum((x - 1.0) ** 2)))
    x = jax.random.normal(jax.random.key(1), (n, 2))
    pop = init_population(x)
    scale_fn = lambda p: (jnp.ones(2), None)
    runs = {}
    for name, kernel in (("still", _Cull()), ("fresh", _Redraw())):
        *_, info = S.advance(jax.random.key(2), pop, None, path, 0.0, 0.0, kernel, 0.1,
                             scale_fn, 2, 0.6)
        runs[name] = info
    assert int(runs["still"].resample.resampled) >= 1  # the cull reordered the walkers
    assert float(runs["still"].renewal) == 0.0
    # Two independent redraws: ℓ_end and ℓ_start independent, renewal 1 ± O(1/√N).
    assert abs(float(runs["fresh"].renewal) - 1.0) < 0.1
    # A statistic that does not vary has no renewal to measure.
    assert np.isnan(float(S.renewal(jnp.zeros(4), jnp.ones(4), jnp.arange(4.0))))
