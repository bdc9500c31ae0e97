"""The engine on its own: weights, resampling, Langevin increments, schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from numpyro_jarzynski.engine import moves, population, resampling, schedules
from numpyro_jarzynski.engine import weights as W


def test_ess_and_normalisation():
    lw = jnp.log(jnp.array([1.0, 1.0, 2.0, 0.0]))
    assert np.isclose(float(jnp.sum(W.normalized_weights(lw))), 1.0)
    # Kish: (Σw)² / (N Σw²) = 16 / (4 · 6)
    assert np.isclose(float(W.ess(lw)), 16 / 24, rtol=1e-6)
    assert np.isclose(float(W.ess(jnp.zeros(7))), 1.0)
    assert np.isclose(float(W.log_mean_exp(lw)), np.log(4 / 4), atol=1e-6)


def test_conditional_ess_and_increment():
    lw = jnp.log(jnp.array([0.5, 0.25, 0.25]))
    inc = jnp.log(jnp.array([2.0, 1.0, 4.0]))
    W_ = np.array([0.5, 0.25, 0.25])
    v = np.array([2.0, 1.0, 4.0])
    assert np.isclose(float(W.conditional_ess(lw, inc)), (W_ @ v) ** 2 / (W_ @ v**2), rtol=1e-6)
    assert np.isclose(float(W.log_evidence_increment(lw, inc)), np.log(W_ @ v), rtol=1e-6)
    # A zero increment leaves the CESS at 1 whatever the weights.
    assert np.isclose(float(W.conditional_ess(lw, jnp.zeros(3))), 1.0)


def test_dead_particles_are_safe():
    lw = jnp.array([0.0, -jnp.inf, 1.0])
    new = W.add_increment(lw, jnp.array([jnp.nan, 1.0, 0.5]))
    assert np.isneginf(new[0]) and np.isneginf(new[1]) and np.isclose(float(new[2]), 1.5)
    assert np.isfinite(float(W.ess(new)))
    x = jnp.array([[1.0], [jnp.nan], [3.0]])
    assert np.isclose(float(W.weighted_mean(lw, x)[0]), (1 + np.e * 3) / (1 + np.e), rtol=1e-6)
    pop = population.init_population(x, lw)
    fixed = population.replace_dead(pop)[0]
    assert np.all(np.isfinite(np.asarray(fixed.x)))


@pytest.mark.parametrize("scheme", sorted(resampling.SCHEMES))
def test_resampling_is_unbiased(scheme):
    """E[offspring count_i] = N W_i, checked over R repeats within 5 standard errors."""
    n, reps = 8, 4000
    w = np.array([0.3, 0.0, 0.05, 0.15, 0.2, 0.01, 0.09, 0.2])
    lw = jnp.log(jnp.asarray(w, jnp.float32))
    fn = resampling.get_scheme(scheme)
    idx = jax.vmap(lambda k: fn(k, lw, n))(jax.random.split(jax.random.key(0), reps))
    counts = jax.vmap(lambda i: jnp.bincount(i, length=n))(idx)
    mean = np.asarray(counts.mean(0))
    se = np.asarray(counts.std(0)) / np.sqrt(reps) + 1e-3
    assert np.all(np.abs(mean - n * w) < 5 * se), (mean, n * w)
    assert counts[:, 1].max() == 0  # zero weight is never chosen
    if scheme == "systematic":  # each count is within one of N W_i
        assert np.all(np.abs(np.asarray(counts) - n * w) < 1 + 1e-6)
    if scheme == "multinomial":  # independent draws: Var(count_i) = N W_i (1 − W_i)
        var, exact = np.asarray(counts.var(0)), n * w * (1 - w)
        big = w >= 0.05  # the sample variance of 4000 counts is within ~3 % of it
        assert np.all(np.abs(var[big] / exact[big] - 1) < 0.12), (var, exact)


@pytest.mark.parametrize("scheme", sorted(resampling.SCHEMES))
def test_resampling_works_in_memory_linear_in_n(scheme):
    """Every scheme's compiled working set at N = 2¹⁶ is a few words per particle (24–32 B
    measured). The multinomial and residual schemes drew with ``jax.random.categorical(key,
    log_w, shape=(N,))``, a Gumbel per particle and candidate: 1 MB per particle here (an
    N × N array, 69 GB), 22 ms per resampling at N = 1024 and 9.7 s at 16 384."""
    n = 1 << 16
    fn = resampling.get_scheme(scheme)
    compiled = jax.jit(lambda k, lw: fn(k, lw, n)).lower(
        jax.random.key(0), jax.ShapeDtypeStruct((n,), jnp.float32)).compile()
    assert compiled.memory_analysis().temp_size_in_bytes < 64 * n


def test_sorted_uniforms_are_the_order_statistics_of_uniforms():
    """``U_(k)`` of n uniforms is Beta(k, n + 1 − k): mean k/(n+1); sorted, in [0, 1)."""
    n, reps = 5, 4000
    u = jax.vmap(lambda k: resampling.sorted_uniforms(k, n, jnp.float32))(
        jax.random.split(jax.random.key(2), reps))
    u = np.asarray(u)
    assert np.all(np.diff(u, axis=1) >= 0) and u.min() >= 0 and u.max() < 1
    k = np.arange(1, n + 1)
    sd = np.sqrt(k * (n + 1 - k) / ((n + 1) ** 2 * (n + 2)) / reps)
    assert np.all(np.abs(u.mean(0) - k / (n + 1)) < 5 * sd)


def test_log_evidence_variance_closed_forms():
    """Lee & Whiteley's estimator in its two closed forms: before any resampling (every walker
    its own Eve) it is the unbiased importance-sampling estimate of ``Var(Ẑ)/Ẑ²``, the sample
    variance of the weights over ``N`` mean²; when every walker descends from one Eve it is 1.
    Shift-invariant in the log weights."""
    rng = np.random.default_rng(0)
    lw = rng.normal(size=50).astype(np.float32)
    w = np.exp(lw.astype(np.float64))
    rel = np.var(w, ddof=1) / (w.size * np.mean(w) ** 2)
    got = W.log_evidence_variance(jnp.asarray(lw), jnp.arange(50), 0)
    np.testing.assert_allclose(float(got), np.log1p(rel), rtol=1e-4)
    shifted = W.log_evidence_variance(jnp.asarray(lw) + 1e4, jnp.arange(50), 0)
    # (A + 10⁴ itself rounds in float32, ulp 1e-3: the tolerance is that rounding.)
    np.testing.assert_allclose(float(shifted), float(got), rtol=2e-3)
    one = W.log_evidence_variance(jnp.asarray(lw), jnp.zeros(50, jnp.int32), 3)
    np.testing.assert_allclose(float(one), np.log(2.0), rtol=1e-6)


def test_unknown_scheme_error():
    with pytest.raises(ValueError, match="Unknown resampling scheme"):
        resampling.get_scheme("bogus")


def test_resampling_banks_evidence():
    lw = jnp.log(jnp.array([1.0, 3.0, 0.0, 4.0]))
    pop = population.Population(jnp.arange(4.0)[:, None], lw, jnp.zeros(()))
    before = float(pop.log_evidence)
    new, = population.resample(jax.random.key(1), pop)
    assert np.isclose(float(new.log_evidence), before, atol=1e-6)
    assert np.all(np.asarray(new.log_weights) == 0)
    assert 2.0 not in np.asarray(new.x)[:, 0]


def _gauss(mu, s):
    def log_p(x):
        return -0.5 * jnp.sum(((x - mu) / s) ** 2, -1)

    def grad(x):
        return -(x - mu) / s**2

    return log_p, grad


def test_ula_crooks_increment_is_exact_at_large_step():
    """One ULA move from ρ_a = N(0, I) to γ_b = unnormalised N(μ, s²I): the weights give
    Z_b/Z_a and the moments of ρ_b exactly although plain ULA is far off."""
    d, n, h = 2, 200_000, 0.8
    mu, s = jnp.array([0.5, -0.3]), 0.8
    lp_a, g_a = _gauss(0.0, 1.0)
    lp_b, g_b = _gauss(mu, s)
    x = jax.random.normal(jax.random.key(0), (n, d))
    scale = jnp.ones(d)
    x_new = moves.langevin_proposal(jax.random.key(1), x, g_a(x), h, scale)
    inc = moves.langevin_log_increment(x, x_new, lp_a(x), g_a(x), lp_b(x_new), g_b(x_new), h, scale)
    log_ratio = float(W.log_mean_exp(inc))
    exact = d * np.log(s)  # Z_b / Z_a = s^d for unnormalised Gaussians
    # Standard error of log mean exp from the weights' ESS.
    se = 1.0 / np.sqrt(float(W.ess(inc)) * n)
    assert abs(log_ratio - exact) < 5 * se + 1e-3
    mean = np.asarray(W.weighted_mean(inc, x_new))
    var = np.asarray(W.weighted_std(inc, x_new)) ** 2
    assert np.allclose(mean, mu, atol=0.02) and np.allclose(var, s**2, atol=0.02)
    assert np.all(np.abs(np.asarray(x_new.var(0)) - s**2) > 0.1)  # unweighted is wrong


def test_mala_ratio_equals_same_target_crooks():
    lp, g = _gauss(0.0, 1.0)
    x = jax.random.normal(jax.random.key(2), (50_000, 3))
    x_new = moves.langevin_proposal(jax.random.key(3), x, g(x), 0.3, jnp.ones(3))
    r = moves.langevin_log_increment(x, x_new, lp(x), g(x), lp(x_new), g(x_new), 0.3, jnp.ones(3))
    # Detailed balance: E_π[exp(log ratio)] = 1 at stationarity.
    assert abs(float(W.log_mean_exp(r))) < 0.01


def test_schedules_and_bisection():
    assert np.allclose(schedules.linear(4), [0.25, 0.5, 0.75, 1.0])
    g = schedules.geometric(5, 1e-4)
    assert np.isclose(g[0], 1e-4) and np.isclose(g[-1], 1.0)
    assert np.allclose(schedules.validate([0.0, 0.5, 1.0], 2), [0.5, 1.0])
    with pytest.raises(ValueError, match="entries but num_warmup"):
        schedules.validate([0.5, 1.0], 3)
    with pytest.raises(ValueError, match="end at exactly 1"):
        schedules.validate([0.5, 0.9], 2)
    # CESS of (β' − β)·ℓ with ℓ ~ N(0, 1) weights: known closed form exp(-(Δβ)²).
    ll = jax.random.normal(jax.random.key(0), (200_000,))
    lw = jnp.zeros_like(ll)
    fn = lambda b: W.conditional_ess(lw, b * ll)
    beta = schedules.solve_next_beta(fn, 0.0, 0.9)
    assert np.isclose(float(beta), np.sqrt(-np.log(0.9)), rtol=0.02)
    assert float(schedules.solve_next_beta(lambda b: 1.0, 0.3, 0.9)) == 1.0
    # Stall guard: an impossible target still advances by min_increment.
    assert np.isclose(float(schedules.solve_next_beta(lambda b: 0.0 * b, 0.3, 0.9, 1e-3)), 0.301)


def test_pareto_khat_ranges():
    n = 4000
    key = jax.random.key(0)
    light = 0.1 * jax.random.normal(key, (n,))  # well-matched weights
    heavy = 1.5 * jnp.log(jax.random.pareto(key, 0.8, (n,)) + 1.0) * 2.0  # heavy tail
    assert float(W.pareto_khat(light)) < 0.5
    assert float(W.pareto_khat(heavy)) > 0.7
    assert np.isneginf(float(W.pareto_khat(jnp.zeros(n))))


def test_a_negligible_weight_is_dead_and_cannot_be_resurrected():
    """A weight e^-1000 below the heaviest is exactly zero in any float; the particle dies so
    that a later huge increment (float32 cancellation: −1e19 then +1e19) cannot revive it
    with a meaningless weight. Weights within 1000 nats are untouched."""
    lw = jnp.zeros(3, jnp.float32)
    lw = W.add_increment(lw, jnp.array([0.0, -999.0, -1e19], jnp.float32))
    np.testing.assert_array_equal(np.asarray(lw), [0.0, -999.0, -np.inf])
    lw = W.add_increment(lw, jnp.array([0.0, 0.0, 1e19], jnp.float32))
    np.testing.assert_array_equal(np.asarray(lw), [0.0, -999.0, -np.inf])
    # Relative to the heaviest: a population far below 0 as a whole keeps all its weights.
    lw = W.add_increment(jnp.full(2, -5e4, jnp.float32), jnp.array([0.0, -10.0], jnp.float32))
    assert np.all(np.isfinite(np.asarray(lw)))


@pytest.mark.parametrize("raw", [False, True])
def test_noise_split_uniform_bits_bernoulli_are_jax_random_bit_for_bit(raw):
    """The engine's written-out threefry (engine.noise) is what jax.random gives for the same
    key, eagerly, under jit and under vmap, so swapping it in changes no stream."""
    from numpyro_jarzynski.engine import noise

    keys = [jax.random.key(s) for s in (0, 1, 12345)] + [jax.random.split(jax.random.key(7))[1]]
    if raw:
        keys = [jax.random.key_data(k) for k in keys]
    data = jax.random.key_data if not raw else (lambda k: k)
    for key in keys:
        for num in (1, 2, 3, 1000):
            want, got = jax.random.split(key, num), noise.split(key, num)
            np.testing.assert_array_equal(data(got), data(want))
        for shape in ((), (5,), (7, 3)):
            np.testing.assert_array_equal(noise.bits(key, shape),
                                          jax.random.bits(key, shape, jnp.uint32))
            np.testing.assert_array_equal(noise.uniform(key, shape),
                                          jax.random.uniform(key, shape, jnp.float32))
            p = jax.random.uniform(jax.random.key(99), shape)
            np.testing.assert_array_equal(noise.bernoulli(key, p), jax.random.bernoulli(key, p))
            # Other bounds: the same affine map, which XLA may fuse into an FMA (an ulp of hi − lo).
            np.testing.assert_allclose(noise.uniform(key, shape, jnp.float32, -2.0, 3.0),
                                       jax.random.uniform(key, shape, jnp.float32, -2.0, 3.0),
                                       rtol=0, atol=1e-6)
    batch = jnp.stack([data(k) for k in keys]) if raw else jnp.stack(keys)
    got = jax.jit(jax.vmap(lambda k: noise.split(k, 3)))(batch)
    want = jax.vmap(lambda k: jax.random.split(k, 3))(batch)
    np.testing.assert_array_equal(data(got) if not raw else got, data(want) if not raw else want)


def test_noise_hash_is_compiled_once_per_draw():
    """Each draw's threefry hash (20 rounds, ~23 xor ops) is one fused loop whose words are
    materialised: XLA must not copy it into every consumer of the draw (it did, computing the
    hash 2-5 times per draw; 111 xor ops here before the fix)."""
    from numpyro_jarzynski.engine import noise

    def f(k):
        z = noise.normal(k, (1000, 10))
        u = noise.uniform(k, (1000,))
        return jnp.sum(z, 1) * u, jnp.max(z), z * 2.0, jnp.log(u)

    hlo = jax.jit(f).lower(jax.random.key(0)).compile().as_text()
    assert hlo.count(" xor(") <= 2 * 25, hlo.count(" xor(")


def test_the_stage_records_the_weight_tail_and_fits_no_khat():
    """The Pareto k-hat is fitted after the run, from the recorded tail: the compiled stage
    has only the top-k, not the generalised-Pareto fit (its log1p over a grid × the tail; the
    fit cost 1-1.5 CPU s of compile per program where it was inlined). The record's fit is the
    k-hat of the weights, on the host (NumPy) and inside jit alike."""
    from numpyro_jarzynski.engine import kernels as K
    from numpyro_jarzynski.engine import stage as S
    from numpyro_jarzynski.engine.population import Population

    n, d = 400, 3
    target = K.Target(lambda x: (-0.5 * jnp.sum(x**2, -1), -x), lambda c: c[0],
                      lambda c: c[1])
    x = jax.random.normal(jax.random.key(0), (n, d))

    def stage(key, x, inc):
        pop = Population(x, jnp.zeros(n), jnp.zeros(()))
        out = S.step(key, pop, None, inc, K.ULA(), target, 0.3,
                     lambda p: (jnp.ones(d), None), 2, 0.5)
        return out[-1].tail_before

    inc = jax.random.normal(jax.random.key(1), (n,))
    jaxpr = str(jax.make_jaxpr(stage)(jax.random.key(2), x, inc))
    assert "top_k" in jaxpr and "log1p" not in jaxpr
    record = stage(jax.random.key(2), x, inc)
    assert record.shape == (W.tail_record_size(n),) == (int(3 * n**0.5) + 2,)
    want = float(W.pareto_khat(inc))
    assert 0.0 < want < 0.7
    assert float(W.khat_of_tail(np.asarray(record))) == pytest.approx(want, abs=1e-4)
    assert float(jax.jit(W.khat_of_tail)(record)) == pytest.approx(want, abs=1e-4)
    # Batched over leading axes; a record of NaN (a stage that did not run) gives NaN.
    batch = np.stack([np.asarray(record), np.full(record.shape, np.nan)])
    got = W.khat_of_tail(batch[None])
    assert got.shape == (1, 2) and got[0, 0] == pytest.approx(want, abs=1e-4)
    assert np.isnan(got[0, 1])
    assert np.isneginf(W.khat_of_tail(np.asarray(W.uniform_tail(n, jnp.float32))))
