"""One contract for every move value of ``numpyro_jarzynski.engine.kernels``.

Exact draws from ``γ_a = N(0, I₃)`` are reweighted by the annealing work ``log γ_b − log γ_a``
and moved ``K`` times at ``γ_b(x) = exp(−½|(x − m)/σ|²)`` (unnormalised, ``log Z_b =
Σ log(σ√(2π))``), each move adding its own increment. For every move, at a step large enough
that an unadjusted kernel is visibly biased without its increment:

* ``log mean exp(ΔA)`` equals ``log Z_b`` within its Monte Carlo error;
* the weighted mean and variance equal ``m`` and ``σ²`` within theirs;
* an invariant move adds no increment, and an unadjusted one is biased without it (so the
  test can fail).

The same contract runs on a *correlated* Gaussian with a cross-fitted dense and a cross-fitted
low-rank preconditioner (``test_move_contract_with_a_mass_matrix``): every move stays exact for
any factor ``L`` of the inverse mass.

A new move passes or fails this test with no new test code: add it to ``MOVES``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from numpyro_jarzynski.engine import kernels as K
from numpyro_jarzynski.engine import preconditioner as PC
from numpyro_jarzynski.engine import weights as W

N, D, NUM_MOVES = 40_000, 3, 4
MEAN = np.array([0.8, -0.5, 0.3])
SD = np.array([0.6, 1.3, 0.9])
LOG_Z_B = float(np.sum(np.log(SD * np.sqrt(2 * np.pi))))

# (move, step): steps at which the unadjusted kernels are biased by O(0.1) without weights.
MOVES = [
    (K.ULA(), 0.3),
    (K.MALA(), 0.3),
    (K.HMC(num_steps=3), 0.5),
    (K.UHMC(num_steps=3), 0.5),
    (K.UHMC(num_steps=1, jitter=0.0), 0.8),
    (K.UHMC(num_steps=4, damping=1.5), 0.6),  # underdamped Langevin: refresh between steps
    (K.Composite((K.MALA(), K.HMC(num_steps=3))), 0.3),  # invariant members: invariant
    (K.Composite((K.ULA(), K.UHMC(num_steps=2))), 0.25),  # unadjusted: increments summed
]


def _move_id(m):
    if not hasattr(m, "name"):
        return str(m)
    return m.name + ("-damped" if getattr(m, "damping", None) is not None else "")


def _log_gamma_b(x):
    return -0.5 * jnp.sum(((x - MEAN) / SD) ** 2, -1)


def _evaluate(x):
    return jax.vmap(jax.value_and_grad(_log_gamma_b))(x)


TARGET = K.Target(_evaluate, lambda c: c[0], lambda c: c[1])


def _run(move, step, key, target=TARGET, scale=None, n=N, chol_a=None):
    """Exact draws of ``γ_a = N(0, I)`` (``N(0, LLᵀ)`` with ``chol_a = L``), the work to
    ``γ_b``, then ``NUM_MOVES`` moves at ``γ_b``."""
    k_init, k_move = jax.random.split(key)
    z = jax.random.normal(k_init, (n, D))
    log_a = -0.5 * jnp.sum(z**2, -1) - 0.5 * D * jnp.log(2 * jnp.pi)
    x = z
    if chol_a is not None:
        x = z @ chol_a.T
        log_a = log_a - jnp.sum(jnp.log(jnp.diagonal(chol_a)))
    cache = target.evaluate(x)
    log_w = cache[0] - log_a  # the annealing work γ_a → γ_b
    scale = jnp.ones((D,)) if scale is None else scale

    def body(carry, k):
        x, cache, log_w = carry
        out = move.step(k, x, cache, target, step, scale)
        return (out.x, out.cache, log_w + out.log_increment), jnp.max(jnp.abs(out.log_increment))

    (x, _, log_w), incs = jax.lax.scan(
        body, (x, cache, log_w), jax.random.split(k_move, NUM_MOVES)
    )
    return x, log_w, incs


@pytest.mark.parametrize("move,step", MOVES, ids=_move_id)
def test_move_contract_on_a_gaussian_path(move, step):
    x, log_w, incs = jax.jit(lambda k: _run(move, step, k))(jax.random.key(0))
    x, log_w = np.asarray(x, np.float64), np.asarray(log_w, np.float64)
    w = np.exp(log_w - log_w.max())
    ess = w.sum() ** 2 / (w**2).sum()
    assert ess > 0.15 * N, ess  # the work alone leaves about N/5
    log_z = float(W.log_mean_exp(jnp.asarray(log_w)))
    se_log_z = np.sqrt(np.var(w) / N) / np.mean(w)
    assert abs(log_z - LOG_Z_B) < 4 * se_log_z + 1e-3, (log_z, LOG_Z_B, se_log_z)

    wn = w / w.sum()
    mean = wn @ x
    var = wn @ (x - mean) ** 2
    assert np.all(np.abs(mean - MEAN) < 4 * SD / np.sqrt(ess)), (mean, MEAN)
    assert np.all(np.abs(var / SD**2 - 1) < 4 * np.sqrt(2 / ess) + 0.01), var / SD**2

    if move.invariant:
        assert float(jnp.max(incs)) == 0.0
    else:
        # Without its increment the kernel is off: run from exact γ_b draws and ignore the
        # increments, and the variance misses σ² by far more than the tolerance above.
        assert float(jnp.max(incs)) > 0.0
        ref = np.asarray(_run_unweighted(move, step, jax.random.key(0)))
        off = np.abs(ref / SD**2 - 1)  # Monte Carlo error of this variance: sqrt(2/N)
        assert np.max(off) > 8 * np.sqrt(2 / N), off


def _run_unweighted(move, step, key):
    """The same moves from exact γ_b draws, ignoring the increments: the variance the bare
    kernel's stationary law gives (exact for an invariant kernel, biased for an unadjusted)."""
    k_init, k_move = jax.random.split(key)
    x = MEAN + SD * jax.random.normal(k_init, (N, D))
    cache = _evaluate(x)

    def body(carry, k):
        x, cache = carry
        out = move.step(k, x, cache, TARGET, step, jnp.ones((D,)))
        return (out.x, out.cache), None

    (x, _), _ = jax.lax.scan(body, (x, cache), jax.random.split(k_move, 20))
    return jnp.var(x, 0)


# A correlated γ_b = N(m, Σ) (correlations 0.8, −0.5, −0.6; condition number 13) and two
# preconditioners fitted, cross-fitted, on 2 × 20 exact draws of it: noisy, so the two halves'
# factors differ and none is Σ's own Cholesky factor (exactness must hold for any L).
CORR_SD = np.array([0.7, 1.0, 0.8])
CORR = np.array([[1.0, 0.8, -0.5], [0.8, 1.0, -0.6], [-0.5, -0.6, 1.0]])
SIGMA = CORR_SD[:, None] * CORR * CORR_SD[None, :]
PRECISION = np.linalg.inv(SIGMA).astype(np.float32)
CHOL = np.linalg.cholesky(SIGMA).astype(np.float32)
# γ_a = N(0, Σ): the work m'Σ⁻¹x − ½m'Σ⁻¹m is Gaussian, variance m'Σ⁻¹m = 1.04 (ESS ≈ 0.35 N).
CORR_MEAN = np.array([0.3, -0.2, 0.2])
LOG_Z_CORR = 0.5 * float(np.linalg.slogdet(2 * np.pi * SIGMA)[1])
N_CORR = 40_000


def _log_gamma_corr(x):
    d = x - CORR_MEAN
    return -0.5 * d @ PRECISION @ d


@functools.cache  # the same fit for every move (run eagerly: worth doing once)
def _fitted(mass):
    draws = np.random.default_rng(0).multivariate_normal(CORR_MEAN, SIGMA, 40).astype(np.float32)
    scale, _, _ = PC.crossfit(mass, jnp.zeros(40), jnp.asarray(draws), jnp.ones(D))
    return scale


# Rank 2 of 3: a rank-1 fit leaves a whitened variance of 0.17, too small for these steps.
MASSES = {"dense": PC.MassMatrix("dense"), "low_rank": PC.MassMatrix("low_rank", 2)}


@pytest.mark.parametrize("move,step", MOVES, ids=_move_id)
def test_move_contract_with_a_mass_matrix(move, step):
    """The contract on the correlated Gaussian, moved with a dense and with a low-rank factor
    (one compiled program for both): log Z, the weighted mean and the full weighted covariance
    are exact within Monte Carlo error. A move whose increment or Metropolis ratio missed the
    factor (used its diagonal, or ``L`` where ``Lᵀ`` belongs) would be off here; the diagonal
    contract cannot see that."""
    scales = {m: _fitted(mass) for m, mass in MASSES.items()}
    target = K.density_target(_log_gamma_corr)
    runs = jax.jit(lambda k: {m: _run(move, step, k, target, s, N_CORR, CHOL)[:2]
                              for m, s in scales.items()})(jax.random.key(2))
    sd = np.sqrt(np.diag(SIGMA))
    for mass, (x, log_w) in runs.items():
        x, log_w = np.asarray(x, np.float64), np.asarray(log_w, np.float64)
        w = np.exp(log_w - log_w.max())
        ess = w.sum() ** 2 / (w**2).sum()
        assert ess > 0.05 * N_CORR, (mass, ess)  # the work leaves 0.35 N, the Crooks noise less
        log_z = float(W.log_mean_exp(jnp.asarray(log_w)))
        se_log_z = np.sqrt(np.var(w) / N_CORR) / np.mean(w)
        assert abs(log_z - LOG_Z_CORR) < 4 * se_log_z + 1e-3, (mass, log_z, LOG_Z_CORR, se_log_z)
        wn = w / w.sum()
        mean = wn @ x
        cov = (x - mean).T @ (wn[:, None] * (x - mean))
        assert np.all(np.abs(mean - CORR_MEAN) < 4 * sd / np.sqrt(ess)), (mass, mean)
        # sd of a weighted covariance entry: sqrt((Σ_ii Σ_jj + Σ_ij²) / ESS).
        tol = 4 * np.sqrt((np.outer(sd**2, sd**2) + SIGMA**2) / ess) + 0.01
        assert np.all(np.abs(cov - SIGMA) < tol), (mass, cov, SIGMA)


CUT = 0.3  # γ_b truncated to x_0 > CUT: zero density (log γ = −inf) below


def _log_gamma_cut(x):
    return jnp.where(x[0] > CUT, _log_gamma_b(x), -jnp.inf)


@pytest.mark.parametrize("move,step", MOVES, ids=_move_id)
def test_proposals_into_a_zero_density_region_keep_the_weights_exact(move, step):
    """Half-space truncation: proposals below the cut land on log γ = −inf. Adjusted moves
    reject them; unadjusted ones leave the particle in place with increment 0, which is exact
    (the same kernel forward and backward gives the atom at x the same mass in both). A kernel
    that killed those particles would lose mass near the cut and bias log Z and the mean."""
    from scipy import stats

    target = K.density_target(_log_gamma_cut)
    x, log_w, _ = jax.jit(lambda k: _run(move, step, k, target))(jax.random.key(1))
    x, log_w = np.asarray(x, np.float64), np.asarray(log_w, np.float64)
    alpha = (CUT - MEAN[0]) / SD[0]
    log_z = LOG_Z_B + stats.norm.logsf(alpha)
    mean0 = MEAN[0] + SD[0] * stats.norm.pdf(alpha) / stats.norm.sf(alpha)
    w = np.exp(log_w - log_w.max())
    ess = w.sum() ** 2 / (w**2).sum()
    se_log_z = np.sqrt(np.var(w) / N) / np.mean(w)
    est = float(W.log_mean_exp(jnp.asarray(log_w)))
    assert abs(est - log_z) < 4 * se_log_z + 1e-3, (est, log_z, se_log_z)
    assert abs((w / w.sum()) @ x[:, 0] - mean0) < 4 * SD[0] / np.sqrt(ess), mean0
    assert np.all(x[np.isfinite(log_w), 0] > CUT)


def test_move_names_and_errors():
    assert [K.as_kernel(n).name for n in K.KERNELS] == list(K.KERNELS)
    assert K.ULA().adjusted() == K.MALA() and K.UHMC(4).adjusted() == K.HMC(4)
    with pytest.raises(ValueError, match="move must be one of"):
        K.as_kernel("nuts")
    with pytest.raises(TypeError, match="move value"):
        K.as_kernel(3)
    with pytest.raises(ValueError, match="num_steps must be an integer >= 1"):
        K.HMC(num_steps=0)
    with pytest.raises(ValueError, match="jitter must be in"):
        K.UHMC(jitter=1.5)
    assert K.as_kernel("auto") == K.Auto()
    with pytest.raises(TypeError, match="non-empty tuple of move values"):
        K.Auto(candidates=())
    with pytest.raises(TypeError, match="non-empty tuple of move values"):
        K.Auto(candidates=("mala",))
    with pytest.raises(ValueError, match="explore"):
        K.Auto(explore=1)
    # Equal gradients per stage: budget = num_moves × the largest grads_per_move.
    assert K.Auto().moves_per_stage(2) == (10, 10, 2, 2)


def _auto_rule(history, candidates, moves_per_stage, explore):
    """The candidates ``move="auto"`` should have run and tried, replayed from the stage
    history: the population is moved by the best last score (min(renewal, 1) × move CESS),
    or by the first invariant candidate before any score exists; the trial (a shadow copy of
    the stage) is the first candidate never measured, then every ``explore``-th stage the
    stalest; never the moving one."""
    idx, trials = np.asarray(history.move_index), np.asarray(history.trial_index)
    k = len(candidates)
    moves = np.asarray(moves_per_stage)[idx]
    renewal = np.asarray(history.renewal)
    renewal = np.where(np.isfinite(renewal), renewal, np.asarray(history.jump) / moves)
    score = np.minimum(renewal, 1.0) * np.asarray(history.move_cess)
    first = next(j for j, c in enumerate(candidates) if c.invariant)
    last, best = np.full(k, -1), np.full(k, np.nan)
    want, want_trial = [], []
    for t, (i, tr) in enumerate(zip(idx, trials)):
        scored = last >= 0
        c = int(np.argmax(np.where(scored & np.isfinite(best), best, -np.inf))) if scored.any() \
            else first
        others = np.arange(k) != c
        untried = np.flatnonzero(~scored & others)
        if untried.size:
            w = int(untried[0])
        elif t % explore == explore - 1 and others.any():
            w = int(np.argmin(np.where(others, last, np.iinfo(np.int32).max)))
        else:
            w = -1
        want.append(c)
        want_trial.append(w)
        last[i], best[i] = t, score[t]
        if tr >= 0:
            last[tr], best[tr] = t, np.asarray(history.trial_score)[t]
    return np.array(want), idx, np.array(want_trial), trials


def _conjugate_d4():
    """``(model, y, exact log Z)``: z ~ N(0, I₄), six observations y ~ N(z, I₄)."""
    import numpyro
    import numpyro.distributions as dist

    y = np.random.default_rng(1).normal(0.7, 1.0, size=(6, 4)).astype(np.float32)

    def model(y):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([4]).to_event(1))
        numpyro.sample("y", dist.Normal(z, 1.0).to_event(1), obs=y)

    n = y.shape[0]
    exact = sum(-0.5 * (col @ (np.eye(n) - np.ones((n, n)) / (1 + n)) @ col)
                - 0.5 * n * np.log(2 * np.pi) - 0.5 * np.log(1 + n) for col in y.T.astype(float))
    return model, y, exact


def test_auto_follows_its_rule_and_stays_exact():
    """``move="auto"`` on a conjugate Gaussian (d = 4): the stage-by-stage choice is the
    documented rule replayed from the history, and the log evidence is exact within its
    Monte Carlo error."""
    from numpyro.infer import MCMC

    from numpyro_jarzynski import JarzynskiSMC

    model, y, exact = _conjugate_d4()
    # Two invariant candidates keep the compiled program small (one stage body each).
    auto = K.Auto(candidates=(K.MALA(), K.HMC(num_steps=2)), explore=3)
    runs = 8
    mcmc = MCMC(JarzynskiSMC(model, num_particles=1000, move=auto), num_warmup=20,
                num_samples=1, num_chains=runs, chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.key(3), y)
    state = mcmc.last_state
    for c in range(runs):
        hist = jax.tree.map(lambda v, c=c: v[c], state.history)
        want, got, want_trial, got_trial = _auto_rule(
            hist, auto.candidates, auto.moves_per_stage(2), 3)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got_trial, want_trial)
        # Each stage records the moves its candidate ran (the gradients it spent).
        np.testing.assert_array_equal(np.asarray(hist.num_moves),
                                      np.asarray(auto.moves_per_stage(2))[got])
    # Every candidate is measured (the second on shadow copies, at stages 0, 2, 5, ...).
    assert {0, 1} <= set(np.asarray(state.history.move_index).ravel()) | set(
        np.asarray(state.history.trial_index).ravel())
    assert np.sum(np.asarray(state.history.trial_index) >= 0) >= runs * 6
    est = np.asarray(state.log_evidence, np.float64)
    se = est.std(ddof=1) / np.sqrt(runs)
    assert abs(est.mean() - exact) < 4 * se + 0.02, (est, exact, se)


def test_auto_prefers_the_move_that_renews_the_likelihood():
    """On a d = 50 Gaussian, one 5-step unadjusted-HMC trajectory decorrelates the log
    likelihood more than five MALA steps at the same gradients (its log-Z error is 0.6× MALA's
    in ``benchmarks/smc_vs_blackjax.py``). Scored by the coordinates' summed squared jump,
    ``auto`` ran MALA at every stage (0 of 40 after the first trials); scored by the
    likelihood's renewal it runs UHMC at most of them (32 of 40)."""
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import MCMC

    from numpyro_jarzynski import JarzynskiSMC

    d = 50
    y = np.random.default_rng(0).normal(size=(4, d)).astype(np.float32)

    def model(y):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([d]).to_event(1))
        with numpyro.plate("obs", y.shape[0]):
            numpyro.sample("y", dist.Normal(z, 1.0).to_event(1), obs=y)

    auto = K.Auto(candidates=(K.MALA(), K.UHMC(num_steps=5)))
    mcmc = MCMC(JarzynskiSMC(model, num_particles=256, move=auto, num_moves=1), num_warmup=24,
                num_samples=1, num_chains=2, chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.key(0), jnp.asarray(y))
    idx = np.asarray(mcmc.last_state.history.move_index)[:, 4:]
    assert np.mean(idx == 1) >= 0.6, idx



def _renewal_rule(history, target, lo, hi):
    """The moves of every stage with ``target_renewal``, replayed from the history:
    ``m' = round(m·log(1 − r*)/log(1 − r))`` in ``[lo, hi]`` from the previous stage's
    ``renewal`` ``r`` (clipped to [1e-3, 0.99]) over its ``m`` moves; ``m`` where it is NaN.
    Also says, per stage, whether the unrounded count is within 1e-3 of a half (where float32
    and float64 may round apart)."""
    m, r = np.asarray(history.num_moves), np.asarray(history.renewal, np.float64)
    raw = m[:-1] * np.log1p(-target) / np.log1p(-np.clip(r[:-1], 1e-3, 0.99))
    want = np.where(np.isfinite(r[:-1]), np.clip(np.round(raw), lo, hi), m[:-1])
    tie = np.isfinite(raw) & (np.abs(raw % 1.0 - 0.5) < 1e-3)
    return want.astype(int), m[1:], tie


@pytest.mark.parametrize("move", [K.MALA(), K.UHMC(num_steps=2)], ids=["mala", "uhmc"])
def test_target_renewal_follows_its_rule_and_stays_exact(move):
    """``target_renewal``: each stage runs the moves the previous stage's renewal of the log
    likelihood asked for (the rule replayed from the history; the count varies from stage
    to stage), and the log evidence of the conjugate Gaussian stays exact within its Monte
    Carlo error, for an invariant move and for an unadjusted one (whose Crooks increments
    then come from a number of moves that changes per stage)."""
    from numpyro.infer import MCMC

    from numpyro_jarzynski import JarzynskiSMC

    model, y, exact = _conjugate_d4()
    runs, target, hi = 8, 0.8, 6
    kernel = JarzynskiSMC(model, num_particles=1000, move=move, num_moves=1,
                          target_renewal=target, max_moves=hi)
    mcmc = MCMC(kernel, num_warmup=20, num_samples=1, num_chains=runs,
                chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.key(3), y)
    state = mcmc.last_state
    counts = np.asarray(state.history.num_moves)
    # The count moves with the renewal: not the same at every stage.
    assert np.all(counts[:, 0] == 1) and counts.max() > 1 and counts.min() >= 1, counts
    for c in range(runs):
        want, got, tie = _renewal_rule(jax.tree.map(lambda v, c=c: v[c], state.history),
                                       target, 1, hi)
        assert np.all((got == want) | (tie & (np.abs(got - want) <= 1))), (c, want, got)
    est = np.asarray(state.log_evidence, np.float64)
    se = est.std(ddof=1) / np.sqrt(runs)
    assert abs(est.mean() - exact) < 4 * se + 0.02, (est, exact, se)


def test_target_renewal_bad_inputs():
    from numpyro_jarzynski import JarzynskiSMC

    def model():
        pass

    with pytest.raises(ValueError, match="target_renewal must be a number in"):
        JarzynskiSMC(model, target_renewal=1.5)
    with pytest.raises(ValueError, match="max_moves bounds.*target_renewal"):
        JarzynskiSMC(model, max_moves=5)
    with pytest.raises(ValueError, match="max_moves=1 is below num_moves=2"):
        JarzynskiSMC(model, target_renewal=0.3, max_moves=1)
    with pytest.raises(ValueError, match="not available with move='auto'"):
        JarzynskiSMC(model, target_renewal=0.3, move="auto")
    with pytest.raises(ValueError, match="not available with waste_free"):
        JarzynskiSMC(model, target_renewal=0.3, waste_free=True, num_particles=999)
    assert JarzynskiSMC(model, target_renewal=0.3, num_moves=3).max_moves == 30

@pytest.mark.parametrize("kind", [K.HMC, K.UHMC])
def test_trajectory_cap_reaches_a_quarter_period(kind):
    """On a whitened Gaussian a move of length T accepted with probability a jumps
    a·(1 − cos T) per coordinate (in units of the spread): the cap is the step that makes
    T = π/2, growing the step below it and shrinking it past it (the mirror at T = π halves it);
    a move that does not move at all sets no cap."""
    move = kind(num_steps=4)
    for h in (0.2, 0.5, 0.75):
        for a in (1.0, 0.6):
            t = h * move.num_steps
            jump = a * (1.0 - np.cos(t))
            cap = float(move.trajectory_cap(jnp.float32(h), jnp.float32(jump), jnp.float32(a)))
            assert cap == pytest.approx(h * (np.pi / 2) / t, rel=1e-4), (h, a)
    assert np.isinf(float(move.trajectory_cap(jnp.float32(0.3), jnp.float32(0.0), 1.0)))
    # The first step never starts past the quarter period either.
    assert move.default_step(1) == pytest.approx(np.pi / 8)
