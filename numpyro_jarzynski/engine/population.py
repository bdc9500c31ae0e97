"""A weighted population of walkers and the two operations every front-end shares:
reweighting by an increment (banking the evidence) and resampling when the ESS is low."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from numpyro_jarzynski.engine import weights as W
from numpyro_jarzynski.engine.resampling import get_scheme


class Population(NamedTuple):
    """Walkers ``x`` (any pytree with a leading particle axis), their log-weights ``A`` and the
    log normaliser banked at past resampling events. ``log Z_k/Z_0 ≈ log_z_banked + lme(A)``."""

    x: Any
    log_weights: jax.Array
    log_z_banked: jax.Array

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

    x = jax.tree.map(fix, pop.x)
    return (pop._replace(x=x),) + tuple(jax.tree.map(fix, e) for e in extra)


def resample(rng_key, pop, scheme="systematic", *extra):
    """Resample unconditionally: bank ``lme(A)``, copy ancestors, reset ``A = 0``."""
    # Sorted ancestors keep copies of one particle next to each other (order carries no
    # information; cross-fitted preconditioners rely on copies sharing a half).
    idx = jnp.sort(get_scheme(scheme)(rng_key, pop.log_weights, pop.log_weights.shape[0]))
    new = Population(
        take(pop.x, idx),
        jnp.zeros_like(pop.log_weights),
        pop.log_z_banked + W.log_mean_exp(pop.log_weights),
    )
    return (new,) + tuple(take(e, idx) for e in extra)


def maybe_resample(rng_key, pop, threshold, scheme="systematic", *extra):
    """Resample when the normalised ESS is below ``threshold``.

    Returns ``(population, *extra, resampled)``; ``extra`` are per-particle trees (cached
    densities, gradients, discrete states) carried along with the walkers.
    """
    do = W.ess(pop.log_weights) < threshold
    out = jax.lax.cond(
        do,
        lambda: resample(rng_key, pop, scheme, *extra),
        lambda: (pop,) + tuple(extra),
    )
    return out + (do,)
