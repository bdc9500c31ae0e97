"""Resampling schemes: ``(rng_key, log_weights, num_samples) -> ancestor indices``.

All four are unbiased: the expected number of copies of particle ``i`` is ``num_samples·W_i``.
Systematic (the engine functions' default) has the lowest variance in practice; residual and
stratified are close; multinomial draws the copies independently, which the single-run error
bar of the evidence assumes (:func:`~numpyro_jarzynski.engine.weights.log_evidence_variance`),
so ``JarzynskiSMC`` and ``InterpolantSampler`` default to it. Particles with zero weight are
never chosen.
"""

import jax.numpy as jnp

from numpyro_jarzynski.engine import noise as Z
from numpyro_jarzynski.engine.weights import normalized_weights


def _inverse_cdf(log_w, positions):
    # Normalise the cumulative sum by its last entry so that it ends at exactly 1 in float32;
    # otherwise a position above a rounded-down total would select the last (maybe dead) particle.
    cdf = jnp.cumsum(normalized_weights(log_w))
    cdf = cdf / cdf[-1]
    idx = jnp.searchsorted(cdf, positions, side="right")
    return jnp.clip(idx, 0, log_w.shape[0] - 1).astype(jnp.int32)


def systematic(rng_key, log_w, num_samples=None):
    """One uniform offset shared by ``num_samples`` evenly spaced positions."""
    num_samples = log_w.shape[0] if num_samples is None else num_samples
    u = Z.uniform(rng_key, dtype=log_w.dtype)
    return _inverse_cdf(log_w, (u + jnp.arange(num_samples, dtype=log_w.dtype)) / num_samples)


def stratified(rng_key, log_w, num_samples=None):
    """One independent uniform in each of ``num_samples`` equal strata."""
    num_samples = log_w.shape[0] if num_samples is None else num_samples
    u = Z.uniform(rng_key, (num_samples,), dtype=log_w.dtype)
    return _inverse_cdf(log_w, (u + jnp.arange(num_samples, dtype=log_w.dtype)) / num_samples)


def sorted_uniforms(rng_key, num_samples, dtype, count=None):
    """The order statistics of ``count`` (default ``num_samples``; may be traced, at most
    ``num_samples``) independent uniforms on ``[0, 1)``, in the first ``count`` entries of a
    ``(num_samples,)`` array, drawn in O(n) without a sort: ``U_(i) = S_i / S_{count+1}`` for
    the partial sums ``S`` of standard exponentials (Devroye 1986, V.3). Entries past
    ``count`` are filler in ``[0, 1)``."""
    e = -jnp.log1p(-Z.uniform(rng_key, (num_samples + 1,), dtype=dtype))
    s = jnp.cumsum(e)
    total = s[-1] if count is None else s[count]
    below_one = jnp.nextafter(jnp.ones((), dtype), jnp.zeros((), dtype))
    return jnp.minimum(s[:-1] / total, below_one)


def multinomial(rng_key, log_w, num_samples=None):
    """Independent draws from the categorical distribution of the weights (as a sorted
    array: the inverse CDF at sorted independent uniforms, O(N log N) instead of the O(N²)
    of ``jax.random.categorical`` with ``shape=(N,)``, which draws a Gumbel per particle and
    candidate)."""
    num_samples = log_w.shape[0] if num_samples is None else num_samples
    return _inverse_cdf(log_w, sorted_uniforms(rng_key, num_samples, log_w.dtype))


def residual(rng_key, log_w, num_samples=None):
    """``floor(num_samples·W_i)`` deterministic copies, the remainder drawn multinomially."""
    n = log_w.shape[0]
    num_samples = n if num_samples is None else num_samples
    expected = num_samples * normalized_weights(log_w)
    copies = jnp.floor(expected).astype(jnp.int32)
    remainder = expected - copies
    log_rem = jnp.where(remainder > 0, jnp.log(jnp.where(remainder > 0, remainder, 1.0)), -jnp.inf)
    fixed = jnp.repeat(jnp.arange(n), copies, total_repeat_length=num_samples)
    total = jnp.sum(copies)
    # The other num_samples − total slots: as many independent draws from the remainders
    # (the inverse CDF at the order statistics of that many uniforms).
    u = sorted_uniforms(rng_key, num_samples, log_w.dtype, count=num_samples - total)
    slot = jnp.arange(num_samples)
    extra = _inverse_cdf(log_rem, u[jnp.clip(slot - total, 0, num_samples - 1)])
    return jnp.where(slot >= total, extra, fixed).astype(jnp.int32)


SCHEMES = {
    "systematic": systematic,
    "stratified": stratified,
    "multinomial": multinomial,
    "residual": residual,
}


def get_scheme(name):
    """Look a scheme up by name, or pass a callable through."""
    if callable(name):
        return name
    try:
        return SCHEMES[name]
    except KeyError:
        raise ValueError(
            f"Unknown resampling scheme {name!r}; choose one of {sorted(SCHEMES)} "
            "or pass a function (rng_key, log_weights, num_samples) -> indices."
        ) from None
