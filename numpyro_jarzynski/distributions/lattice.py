r"""Ising model on a periodic ``n × m`` lattice, the first user of the Gibbs-sweep protocol.

.. math::

    p(s) \propto \exp\Big(K \sum_{\langle ij\rangle} s_i s_j + h \sum_i s_i\Big),
    \qquad s \in \{-1, +1\}^{n \times m},

with the sum over the ``2nm`` nearest-neighbour bonds of the torus. Its normaliser is not
known in general, so the distribution is written in the *tempered-site* form:
``tempering_base()`` is the uniform distribution on the spins and
``tempering_log_tilt(s) = K Σ s_i s_j + h Σ s_i``. Inside ``JarzynskiSMC`` the tilt is the
tempered part, so with no observations the log evidence estimates
``log Z − nm log 2`` (``Z`` summing ``exp(tilt)`` over all ``2^{nm}`` configurations).

``gibbs_sweep`` is an exact two-colour (checkerboard) block-Gibbs sweep of the tempered
density ``exp(β·tilt)``: with even side lengths the torus is bipartite, so the spins of one
colour are conditionally independent given the other colour, with

.. math::  P(s_i = +1 \mid \text{rest}) = \sigma\big(2\beta (K \textstyle\sum_{j\sim i} s_j + h)\big).
"""

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.distributions.util import promote_shapes


class _Spins(constraints._SingletonConstraint):
    """Arrays of ±1 spins with two event dimensions (the lattice)."""

    is_discrete = True
    event_dim = 2

    def __call__(self, x):
        return jnp.all((x == 1) | (x == -1), axis=(-2, -1))

    def feasible_like(self, prototype):
        return jnp.ones_like(prototype)


spins = _Spins()


def neighbour_sum(s):
    """``Σ_j s_j`` over the four periodic nearest neighbours of every site (last two axes)."""
    return (
        jnp.roll(s, 1, -2) + jnp.roll(s, -1, -2) + jnp.roll(s, 1, -1) + jnp.roll(s, -1, -1)
    )


def bond_sum(s):
    """``Σ_<ij> s_i s_j`` over the ``2nm`` bonds of the torus (each bond counted once)."""
    return jnp.sum(s * (jnp.roll(s, -1, -2) + jnp.roll(s, -1, -1)), axis=(-2, -1))


class UniformSpins(dist.Distribution):
    """Independent uniform ±1 spins on an ``n × m`` lattice (the Ising model at ``K = 0``)."""

    support = spins
    pytree_aux_fields = ("lattice_shape",)

    def __init__(self, shape, batch_shape=(), *, validate_args=None):
        self.lattice_shape = tuple(shape)
        super().__init__(batch_shape=tuple(batch_shape), event_shape=tuple(shape),
                         validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        b = jax.random.bernoulli(key, 0.5, tuple(sample_shape) + self.shape())
        return jnp.where(b, 1.0, -1.0)

    def log_prob(self, value):
        n = self.event_shape[0] * self.event_shape[1]
        lp = jnp.full(jnp.shape(value)[:-2], -n * jnp.log(2.0))
        return jnp.where(self.support(value), lp, -jnp.inf)


class IsingLattice(dist.Distribution):
    r"""Ising model ``p(s) ∝ exp(K Σ_<ij> s_i s_j + h Σ_i s_i)`` on a periodic ``n × m`` lattice.

    Values are float arrays of ±1 with event shape ``(n, m)``. ``coupling`` (``K``) and
    ``field`` (``h``) may be latent variables of the model (their batch shape broadcasts).

    There is no exact sampler and no closed-form normaliser, so :meth:`sample` raises and
    :meth:`log_prob` is the *unnormalised* ``log(2^{-nm}) + tilt``. ``JarzynskiSMC`` uses the
    tempered-site protocol (:meth:`tempering_base`, :meth:`tempering_log_tilt`) and the exact
    block-Gibbs :meth:`gibbs_sweep`; its log evidence estimates ``log Z − nm log 2``.

    :param shape: ``(n, m)``, both even (the two-colour sweep needs a bipartite torus).
    :param coupling: ``K``; the critical point of the infinite lattice is
        ``K_c = ½ log(1 + √2) ≈ 0.4406868``.
    :param field: external field ``h`` (default 0).
    """

    support = spins
    has_enumerate_support = False
    pytree_data_fields = ("coupling", "field")
    pytree_aux_fields = ("lattice_shape",)

    def __init__(self, shape, coupling, field=0.0, *, validate_args=None):
        shape = tuple(int(s) for s in shape)
        if len(shape) != 2 or min(shape) < 2:
            raise ValueError(f"IsingLattice needs shape=(n, m) with n, m >= 2, got {shape}.")
        if shape[0] % 2 or shape[1] % 2:
            raise ValueError(
                f"IsingLattice needs even side lengths, got {shape}: a periodic lattice with an "
                "odd side is not bipartite, so the two-colour block-Gibbs sweep would not be "
                "exact. Use an even size (e.g. "
                f"{(shape[0] + shape[0] % 2, shape[1] + shape[1] % 2)})."
            )
        self.coupling, self.field = promote_shapes(jnp.asarray(coupling, float),
                                                   jnp.asarray(field, float))
        batch_shape = jax.lax.broadcast_shapes(jnp.shape(self.coupling), jnp.shape(self.field))
        self.coupling = jnp.broadcast_to(self.coupling, batch_shape)
        self.field = jnp.broadcast_to(self.field, batch_shape)
        self.lattice_shape = shape
        super().__init__(batch_shape=batch_shape, event_shape=shape, validate_args=validate_args)

    # -------------------------------------------------------- tempered-site protocol
    def tempering_base(self):
        return UniformSpins(self.lattice_shape, self.batch_shape)

    def tempering_log_tilt(self, value):
        return self.coupling * bond_sum(value) + self.field * jnp.sum(value, axis=(-2, -1))

    # -------------------------------------------------------- Gibbs-sweep protocol
    def gibbs_sweep(self, rng_key, value, beta):
        """One exact checkerboard sweep of ``∝ exp(β·tilt)``: even colour, then odd colour."""
        k = jnp.asarray(self.coupling)[..., None, None]
        h = jnp.asarray(self.field)[..., None, None]
        n, m = self.lattice_shape
        even = (jnp.arange(n)[:, None] + jnp.arange(m)[None, :]) % 2 == 0

        def half(s, colour_and_key):
            colour, key = colour_and_key
            local = beta * (k * neighbour_sum(s) + h)
            up = jax.random.uniform(key, s.shape) < jax.nn.sigmoid(2.0 * local)
            mask = jnp.where(colour == 0, even, ~even)
            return jnp.where(mask, jnp.where(up, 1.0, -1.0).astype(s.dtype), s), None

        keys = jax.random.split(rng_key, 2)
        value, _ = jax.lax.scan(half, value, (jnp.arange(2), keys))
        return value

    # -------------------------------------------------------- Distribution API
    def sample(self, key, sample_shape=()):
        raise NotImplementedError(
            "IsingLattice has no exact sampler. Use it as a latent site of a model run with "
            "JarzynskiSMC (which starts from tempering_base() and anneals with gibbs_sweep), "
            "or call gibbs_sweep repeatedly for an MCMC chain."
        )

    def log_prob(self, value):
        """Unnormalised: ``−nm log 2 + tilt(value)`` (``−∞`` off the ±1 support)."""
        return self.tempering_base().log_prob(value) + self.tempering_log_tilt(value)


__all__ = ["IsingLattice", "UniformSpins", "bond_sum", "neighbour_sum", "spins"]
