"""A weighted population of walkers and the two operations every front-end shares:
reweighting by an increment (banking the evidence) and resampling when the ESS is low."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from numpyro_jarzynski.engine import weights as W
from numpyro_jarzynski.engine.resampling import get_scheme


class Population(NamedTuple):
    """Walkers ``x`` (any pytree with a leading particle axis), their log-weights ``A`` and the
    log normaliser banked at past resampling events. ``log Z_k/Z_0 ≈ log_z_banked + lme(A)``.

    ``eve``: optionally, each walker's Eve index, the walker of the initial population it
    descends from (``int32 (N,)``; ``None``: not tracked). Resampling carries it along with the
    walkers; :func:`~numpyro_jarzynski.engine.weights.log_evidence_variance` reads the
    evidence's Monte Carlo error from it."""

    x: Any
    log_weights: jax.Array
    log_z_banked: jax.Array
    eve: Any = None

    @property
    def log_evidence(self):
        return self.log_z_banked + W.log_mean_exp(self.log_weights)


def init_population(x, log_weights=None):
    n = jax.tree.leaves(x)[0].shape[0]
    dtype = jnp.result_type(float)
    lw = jnp.zeros(n, dtype) if log_weights is None else W.sanitize(log_weights)
    return Population(x, lw, jnp.zeros((), dtype))


def reweight(pop, increment):
    """Add ``ΔA`` to the log-weights. Returns the new population and ``log Σ W e^{ΔA}``."""
    inc = W.log_evidence_increment(pop.log_weights, increment)
    return pop._replace(log_weights=W.add_increment(pop.log_weights, increment)), inc


def take(tree, idx):
    """Select particles ``idx`` from every leaf of ``tree`` (leading axis = particles)."""
    return jax.tree.map(lambda v: v[idx], tree)


def replace_dead(pop, *extra):
    """Give dead particles (``A = -inf``) the position of the heaviest particle.

    A dead walker carries no weight, but a NaN position would still poison gradients, means
    and the next move. Copying a live position keeps every array finite; the weight stays
    ``-inf`` so the estimate is unchanged. ``extra`` are per-particle trees moved alongside.
    """
    dead = ~jnp.isfinite(pop.log_weights)
    best = jnp.argmax(pop.log_weights)

    def fix(v):
        mask = dead.reshape(dead.shape + (1,) * (v.ndim - 1))
        return jnp.where(mask, v[best], v)

    # Dead walkers are rare: copy the arrays only when there is one (a select over every
    # walker and its cache costs a pass over N × d arrays per stage otherwise).
    x, extra = jax.lax.cond(jnp.any(dead), lambda t: jax.tree.map(fix, t), lambda t: t,
                            (pop.x, extra))
    return (pop._replace(x=x),) + tuple(extra)


def _resample_with_indices(rng_key, pop, scheme, *extra):
    # Sorted ancestors keep copies of one particle next to each other (order carries no
    # information; cross-fitted preconditioners rely on copies sharing a half).
    idx = jnp.sort(get_scheme(scheme)(rng_key, pop.log_weights, pop.log_weights.shape[0]))
    new = Population(
        take(pop.x, idx),
        jnp.zeros_like(pop.log_weights),
        pop.log_z_banked + W.log_mean_exp(pop.log_weights),
        take(pop.eve, idx),
    )
    return (new,) + tuple(take(e, idx) for e in extra) + (idx,)


def resample(rng_key, pop, scheme="systematic", *extra):
    """Resample unconditionally: bank ``lme(A)``, copy ancestors, reset ``A = 0``."""
    return _resample_with_indices(rng_key, pop, scheme, *extra)[:-1]


class ResampleInfo(NamedTuple):
    """What one resampling check saw: the normalised ESS *before* it (after resampling the
    Kish ESS is 1 whatever happened, so this is the number that shows a collapse), whether it
    resampled, and the number of distinct ancestors it kept (``N`` when it did not)."""

    ess_before: jax.Array
    resampled: jax.Array
    num_unique: jax.Array


def num_unique_sorted(idx):
    """Number of distinct entries of a sorted index array."""
    return 1 + jnp.sum(idx[1:] != idx[:-1])


def resample_if(rng_key, pop, threshold, scheme="systematic", *extra):
    """:func:`maybe_resample` that also reports a :class:`ResampleInfo`.

    Returns ``(population, *extra, info)``.
    """
    n = pop.log_weights.shape[0]
    ess_before = W.ess(pop.log_weights)
    do = ess_before < threshold

    def yes():
        *out, idx = _resample_with_indices(rng_key, pop, scheme, *extra)
        return tuple(out) + (num_unique_sorted(idx),)

    def no():
        return (pop,) + tuple(extra) + (jnp.asarray(n, jnp.int32),)

    out = jax.lax.cond(do, yes, no)
    info = ResampleInfo(ess_before, do, out[-1].astype(jnp.int32))
    return out[:-1] + (info,)


def maybe_resample(rng_key, pop, threshold, scheme="systematic", *extra):
    """Resample when the normalised ESS is below ``threshold``.

    Returns ``(population, *extra, resampled)``; ``extra`` are per-particle trees (cached
    densities, gradients, discrete states) carried along with the walkers.
    """
    *out, info = resample_if(rng_key, pop, threshold, scheme, *extra)
    return tuple(out) + (info.resampled,)
