"""Log-weight arithmetic: normalisation, effective sample sizes, log-evidence bookkeeping.

All functions take unnormalised log-weights ``A`` of shape ``(N,)``. A weight of ``-inf``
means a dead particle (its density was NaN or infinite); every function here is safe for it.

The running log normalising constant follows Proposition 1 of the design notes:

.. math::

    \\log \\widehat{Z_k / Z_0} = \\sum_{\\text{resampling events}} c_r
        + \\log \\frac{1}{N} \\sum_i e^{A_i},

where each resampling event banks :math:`c_r = \\operatorname{logsumexp}(A) - \\log N` and
resets :math:`A` to zero.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp


def sanitize(log_w):
    """Map NaN and ``+inf`` log-weights (a failed density evaluation) to ``-inf`` (zero weight)."""
    return jnp.where(jnp.isnan(log_w) | (log_w == jnp.inf), -jnp.inf, log_w)


# A log-weight this far below the largest carries exactly zero weight in any float format
# (exp(−1000) underflows even in float64), so dropping it changes no estimate.
NEGLIGIBLE_LOG_WEIGHT = 1000.0


def add_increment(log_w, increment):
    """``A + ΔA`` with failed increments (NaN, ±inf) giving a dead particle, never NaN.

    A particle left more than :data:`NEGLIGIBLE_LOG_WEIGHT` nats below the heaviest one is
    dead too. Its weight is exactly zero in floating point anyway, but its log-weight is not:
    an unadjusted move to where the gradient is astronomically large adds an increment of
    ``−10¹⁹``, and the move back adds ``+10¹⁹``; their float32 sum is off by ``~10¹²``, which
    would resurrect the particle with a meaningless weight (and a log evidence of ``+10⁹``).
    """
    new = log_w + jnp.where(jnp.isfinite(increment), increment, -jnp.inf)
    new = jnp.where(jnp.isfinite(log_w), new, -jnp.inf)
    top = jnp.max(new)
    return jnp.where(jnp.isfinite(top) & (new < top - NEGLIGIBLE_LOG_WEIGHT), -jnp.inf, new)


def shifted(log_w):
    """``A − max(A)`` over the live particles (all dead: unchanged ``-inf``).

    Every weight statistic is computed on the shifted weights: in float32, ``A`` near
    ``−1e8`` has a resolution of 8 nats, so ``logsumexp(A) − A`` would lose the weights
    entirely. After the shift the largest log-weight is exactly 0 and nothing is lost.
    """
    top = jnp.max(log_w)
    return jnp.where(jnp.isfinite(top), log_w - jax.lax.stop_gradient(top), log_w)


def log_normalize(log_w):
    """Normalised log-weights ``log W_i = A_i - logsumexp(A)`` (computed on ``A − max A``)."""
    a = shifted(log_w)
    return a - logsumexp(a)


def normalized_weights(log_w):
    """Normalised weights ``W_i`` summing to one (``jax.nn.softmax`` of the log-weights)."""
    return jax.nn.softmax(log_w)


def log_mean_exp(log_w):
    """``log(mean(exp(A)))``: the log-evidence contribution of the current weights."""
    return logsumexp(log_w) - jnp.log(log_w.shape[0])


def ess(log_w):
    """Normalised Kish effective sample size ``1 / (N Σ W_i²)``, in ``(0, 1]``."""
    n = log_w.shape[0]
    a = shifted(log_w)
    return jnp.exp(2 * logsumexp(a) - logsumexp(2 * a)) / n


def conditional_ess(log_w, increment):
    """Normalised conditional ESS of an increment (Zhou, Johansen & Aston, 2016).

    ``CESS = (Σ W_i v_i)² / Σ W_i v_i²`` with ``v = exp(ΔA)``. It measures how much the
    increment alone degrades the current (not necessarily uniform) weights, so it is the
    right criterion for adaptive tempering when resampling is not done at every step.
    """
    return conditional_ess_fn(log_w)(increment)


def conditional_ess_fn(log_w):
    """``increment -> conditional_ess(log_w, increment)`` with the normalised weights computed
    once: the adaptive schedule's bisection evaluates ~20 increments against the same weights
    (the same numbers as :func:`conditional_ess`, bit for bit)."""
    log_W = log_normalize(log_w)
    live = jnp.isfinite(log_W)

    def cess(increment):
        inc = jnp.where(jnp.isfinite(increment), increment, -jnp.inf)
        inc = shifted(jnp.where(live, inc, -jnp.inf))
        return jnp.exp(2 * logsumexp(log_W + inc) - logsumexp(log_W + 2 * inc))

    return cess


def log_evidence_increment(log_w, increment):
    """``log Σ_i W_i exp(ΔA_i)``: the estimate of ``log(Z_{k+1}/Z_k)`` for one increment."""
    inc = jnp.where(jnp.isfinite(increment), increment, -jnp.inf)
    return logsumexp(log_normalize(log_w) + inc)


def eve_masses(log_w, eve):
    """``S_e = Σ_{i: eve_i = e} W_i``: the normalised weight each walker of the initial
    population still holds through its descendants (``eve`` as in
    :class:`~numpyro_jarzynski.engine.population.Population`)."""
    n = log_w.shape[0]
    return jax.ops.segment_sum(normalized_weights(log_w), eve, num_segments=n)


def log_evidence_variance(log_w, eve, num_resamplings):
    """Single-run estimate of the Monte Carlo variance of ``log Ẑ`` from the genealogy
    (Chan & Lai 2013; Lee & Whiteley 2018; for adaptive tempering, Du & Guyader 2021).

    With ``S_e`` the final weight held by the descendants of initial walker ``e``
    (:func:`eve_masses`) and ``R`` resamplings, the relative variance of ``Ẑ`` is estimated by
    ``v = 1 − (N/(N−1))^{R+1} (1 − Σ_e S_e²)`` (Lee & Whiteley's estimator, unbiased for
    multinomial resampling), and ``Var(log Ẑ) ≈ log(1 + v)``. Walkers that descend from one
    initial walker are counted as one draw, so the estimate sees what resampling and slow
    moves share between walkers; it cannot see a mode that no walker reached. Computed on
    the normalised weights (``A − max A``). Clipped at 0 (the estimate is noisy and can fall
    below it when the error is small)."""
    n = log_w.shape[0]
    s = eve_masses(log_w, eve)
    dtype = s.dtype
    distinct = jnp.clip(1.0 - jnp.sum(s * s), 0.0, 1.0)
    r = jnp.asarray(num_resamplings, dtype) + 1.0
    factor = jnp.exp(r * (jnp.log(jnp.asarray(n, dtype)) - jnp.log(jnp.asarray(n - 1, dtype))))
    v = 1.0 - factor * distinct
    return jnp.log1p(jnp.maximum(v, 0.0))


def weighted_mean(log_w, x):
    """Weighted mean of ``x`` (leading axis = particles). Dead particles contribute nothing."""
    w = normalized_weights(log_w)
    w = w.reshape(w.shape + (1,) * (x.ndim - 1))
    return jnp.sum(jnp.where(w > 0, w * x, 0.0), axis=0)


def weighted_std(log_w, x):
    """Weighted per-coordinate standard deviation of ``x`` (leading axis = particles)."""
    mean = weighted_mean(log_w, x)
    return jnp.sqrt(jnp.maximum(weighted_mean(log_w, (x - mean) ** 2), 0.0))


def khat_tail_size(n):
    """``M = min(N/5, 3√N)``: how many of the largest weights the Pareto k-hat fits."""
    return int(min(0.2 * n, 3 * n**0.5))


def weight_tail(log_w):
    """What the Pareto k-hat of the weights needs, recorded inside a compiled run so that the
    fit itself (:func:`khat_of_tail`) runs after it, on the host, compiling nothing.

    Returns ``(M + 2,)`` (``M`` = :func:`khat_tail_size`): the ``M + 1`` largest log-weights
    relative to the largest, in descending order (``0`` first), then the normalised ESS of
    all the weights. Uniform weights give zeros and an ESS of 1. Below 25 particles there is
    no tail to fit: shape ``(0,)``.
    """
    n = log_w.shape[0]
    if tail_record_size(n) == 0:
        return jnp.zeros((0,), log_w.dtype)
    tail = khat_tail_size(n)
    lw = jnp.where(jnp.isfinite(log_w), log_w, -jnp.inf)
    # The barrier keeps XLA's CPU backend from rewriting top_k with what follows into a sort
    # of all N weights (40 ms instead of 2 at N = 10^5; same values).
    top = jax.lax.optimization_barrier(jax.lax.top_k(lw - jnp.max(lw), tail + 1)[0])
    return jnp.concatenate([top, ess(log_w)[None].astype(top.dtype)])


def tail_record_size(n):
    """Length of the :func:`weight_tail` record of ``n`` weights (0 below 25)."""
    m = khat_tail_size(n)
    return m + 2 if m >= 5 else 0


def uniform_tail(n, dtype):
    """:func:`weight_tail` of ``n`` equal weights (just resampled)."""
    return jnp.zeros((tail_record_size(n),), dtype).at[-1:].set(1.0)


def khat_of_tail(record):
    """Pareto k-hat from :func:`weight_tail` records ``(..., M + 2)``, batched over the
    leading axes. On concrete arrays (a finished run's records) it runs in NumPy, in float64,
    compiling nothing; on traced ones (inside ``jit`` or ``vmap``) in JAX. See
    :func:`pareto_khat` for what it returns; a record of NaNs (a stage that did not run, or a bridging stage) gives NaN, and an empty
    record (fewer than 25 particles) gives NaN."""
    try:
        host = np.asarray(record, np.float64)
    except jax.errors.TracerArrayConversionError:  # inside jit or vmap
        return _khat_fit(jnp, record)
    with np.errstate(all="ignore"):
        return _khat_fit(np, host)


# Neighbouring log-weights of a tail closer than this fraction of their mean spacing are one
# level for the k-hat fit's distinct-values check. A lattice model's weights sit on a few
# levels, smeared by float rounding into near-ties (Ising 4×4: levels 0.02 nat apart, each
# spread over 1e-4 by sums of nearly equal β steps), which the fit read as a tail of k ≈ 4. The
# gaps of a continuous tail are roughly exponential about their mean, so about 10 % of them
# fall below the tolerance; a tail on a few levels has nearly all its gaps below it.
LEVEL_FRACTION = 0.1


def weight_levels(xp, lw_sorted):
    """Number of distinct levels of sorted log-weights (ascending, last axis): one plus the
    gaps wider than :data:`LEVEL_FRACTION` of the mean gap. ``xp`` is ``numpy`` or
    ``jax.numpy``."""
    gaps = xp.diff(lw_sorted, axis=-1)
    mean_gap = (lw_sorted[..., -1:] - lw_sorted[..., :1]) / max(gaps.shape[-1], 1)
    return 1 + xp.sum(gaps > LEVEL_FRACTION * mean_gap, axis=-1)


def _khat_fit(xp, record):
    """The generalised-Pareto fit of Zhang & Stephens (2009) to the tail of a record, with the
    weakly informative prior of Vehtari et al. (2024), as ArviZ's ``psislw`` does it; ``xp``
    is ``numpy`` or ``jax.numpy``."""
    if record.shape[-1] == 0:
        return xp.full(record.shape[:-1], xp.nan, record.dtype)
    tail = record.shape[-1] - 2
    lw = xp.flip(record[..., : tail + 1], axis=-1)  # ascending, largest last
    ess_ = record[..., -1]
    cutoff = lw[..., :1]
    x = xp.exp(lw[..., -tail:]) - xp.exp(cutoff)  # exceedances, ascending
    has_tail = x[..., -1] > 1e-6 * xp.exp(lw[..., -1])
    q = int(tail / 4 + 0.5) - 1
    # No GPD fit exists when a quarter of the tail is tied at the cutoff, or when the tail
    # takes only a few distinct values (a lattice model's energies: a handful of levels).
    distinct = weight_levels(xp, lw[..., -tail:])
    degenerate = has_tail & ((x[..., q] <= x[..., 0]) | (distinct < max(5, tail // 4)))
    ok = has_tail & ~degenerate
    placeholder = xp.linspace(1.0, 2.0, tail).astype(x.dtype)
    x = xp.where(ok[..., None], x, placeholder)  # masked below
    prior = 3.0
    m = 30 + int(tail**0.5)
    b = 1.0 - xp.sqrt(m / (xp.arange(1, m + 1) - 0.5)).astype(x.dtype)
    b = b / (prior * x[..., q, None]) + 1.0 / x[..., -1, None]  # (..., m)
    k = xp.mean(xp.log1p(-b[..., :, None] * x[..., None, :]), axis=-1)
    log_lik = tail * (xp.log(-b / k) - k - 1.0)
    post = 1.0 / xp.sum(xp.exp(log_lik[..., None, :] - log_lik[..., :, None]), axis=-1)
    post = xp.where(post >= 10 * xp.finfo(post.dtype).eps, post, 0.0)
    post = post / xp.sum(post, axis=-1, keepdims=True)
    b_post = xp.sum(b * post, axis=-1)
    k_post = xp.mean(xp.log1p(-b_post[..., None] * x), axis=-1)
    prior_k = 10.0  # weakly informative prior on k, as ArviZ / Vehtari et al. (2024)
    k_post = (tail * k_post + prior_k * 0.5) / (tail + prior_k)
    tied = xp.where(ess_ < 0.5, xp.inf, xp.nan)
    out = xp.where(ok, k_post, xp.where(degenerate, tied, -xp.inf))
    return xp.where(xp.isnan(record[..., 0]), xp.nan, out).astype(record.dtype)


def pareto_khat(log_w):
    """Pareto-smoothed importance-sampling shape estimate k-hat of the weights.

    The generalised-Pareto fit of Zhang & Stephens (2009) to the largest
    ``M = min(N/5, 3√N)`` weights, with the weakly informative prior of Vehtari et al. (2024,
    "Pareto smoothed importance sampling"), as ArviZ's ``psislw`` does it, but in JAX. A run
    records :func:`weight_tail` at every stage and fits it afterwards (:func:`khat_of_tail`),
    so that the fit is not part of the compiled run. ``k > 0.7`` means the weights have so
    heavy a tail that weighted estimates are unreliable. Uniform weights (no tail) give
    ``-inf``.

    When more than a quarter of the tail is tied at the cutoff, or the tail takes fewer than
    ``max(5, M/4)`` distinct values, no generalised Pareto fit exists (ArviZ returns NaN, "far
    from a generalised Pareto distribution", in the first case and a meaningless number in the
    second). If the normalised ESS is
    also below 1/2, a few particles (or copies of one ancestor) carry the weight: the result is
    ``+inf``, so the ``k > 0.7`` check fires rather than being silenced by a NaN. With a healthy
    ESS the ties come from a likelihood with few distinct values (a lattice model's energies):
    the result is NaN, "undefined", and the ESS speaks for the weights.
    """
    n = log_w.shape[0]
    if tail_record_size(n) == 0:
        raise ValueError(f"pareto_khat needs at least 25 particles, got {n}.")
    return khat_of_tail(weight_tail(jnp.asarray(log_w)))
