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

:class:`PottsLattice` is the q-state generalisation, ``p(s) ∝ exp(K Σ 1[s_i = s_j] + Σ_i h_{s_i})``
over ``s ∈ {0, …, q−1}^{n×m}``, in the same tempered-site form (uniform base
:class:`UniformStates`, log evidence ``log Z − nm log q``) with the same checkerboard sweep,
each site drawn from a categorical with logits ``β (K c_i(k) + h_k)``, ``c_i(k)`` the number
of its neighbours in state ``k``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.distributions.util import promote_shapes

from numpyro_jarzynski.engine import noise


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

        def draw(key, s):
            up = noise.uniform(key, s.shape) < jax.nn.sigmoid(
                2.0 * beta * (k * neighbour_sum(s) + h))
            return jnp.where(up, 1.0, -1.0)

        return _checkerboard_sweep(rng_key, value, self.lattice_shape, draw)

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


# ============================================================================ Potts model
def equal_bond_count(s):
    """``Σ_<ij> 1[s_i = s_j]`` over the ``2nm`` bonds of the torus (each bond counted once)."""
    same = (s == jnp.roll(s, -1, -2)).astype(float) + (s == jnp.roll(s, -1, -1)).astype(float)
    return jnp.sum(same, axis=(-2, -1))


def neighbour_state_counts(s, num_states):
    """``c_i(k) = #{j ∼ i : s_j = k}``: for every site, how many of its four periodic nearest
    neighbours are in each state. Shape ``s.shape + (num_states,)``."""
    onehot = jax.nn.one_hot(s, num_states)
    return (
        jnp.roll(onehot, 1, -3) + jnp.roll(onehot, -1, -3)
        + jnp.roll(onehot, 1, -2) + jnp.roll(onehot, -1, -2)
    )


def _checkerboard_sweep(rng_key, value, lattice_shape, draw):
    """One exact two-colour sweep: ``draw(key, s)`` gives every site a fresh value from its
    conditional given its neighbours in ``s``; the even colour is updated, then the odd one
    (on a periodic lattice with even sides the sites of one colour are independent given the
    other colour)."""
    n, m = lattice_shape
    even = (jnp.arange(n)[:, None] + jnp.arange(m)[None, :]) % 2 == 0

    def half(s, colour_and_key):
        colour, key = colour_and_key
        mask = jnp.where(colour == 0, even, ~even)
        return jnp.where(mask, draw(key, s).astype(s.dtype), s), None

    value, _ = jax.lax.scan(half, value, (jnp.arange(2), noise.split(rng_key, 2)))
    return value


def _check_lattice_shape(name, shape):
    """The ``(n, m)`` checks shared by the lattice distributions (see :class:`IsingLattice`)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2 or min(shape) < 2:
        raise ValueError(f"{name} needs shape=(n, m) with n, m >= 2, got {shape}.")
    if shape[0] % 2 or shape[1] % 2:
        raise ValueError(
            f"{name} needs even side lengths, got {shape}: a periodic lattice with an "
            "odd side is not bipartite, so the two-colour block-Gibbs sweep would not be "
            "exact. Use an even size (e.g. "
            f"{(shape[0] + shape[0] % 2, shape[1] + shape[1] % 2)})."
        )
    return shape


def _check_num_states(name, num_states):
    if isinstance(num_states, bool) or not isinstance(num_states, (int, np.integer)):
        raise TypeError(
            f"{name} needs num_states to be an integer (the number q of states), got "
            f"{num_states!r}."
        )
    if num_states < 2:
        raise ValueError(f"{name} needs num_states >= 2, got {num_states}.")
    return int(num_states)


class UniformStates(dist.Distribution):
    """Independent uniform states in ``{0, …, q−1}`` on an ``n × m`` lattice (the Potts model
    at ``K = 0`` with no field). Values are integer arrays with event shape ``(n, m)``."""

    pytree_aux_fields = ("lattice_shape", "num_states")

    def __init__(self, shape, num_states, batch_shape=(), *, validate_args=None):
        self.lattice_shape = tuple(int(s) for s in shape)
        self.num_states = _check_num_states("UniformStates", num_states)
        super().__init__(batch_shape=tuple(batch_shape), event_shape=self.lattice_shape,
                         validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=2)
    def support(self):
        return constraints.independent(constraints.integer_interval(0, self.num_states - 1), 2)

    def sample(self, key, sample_shape=()):
        return jax.random.randint(key, tuple(sample_shape) + self.shape(), 0, self.num_states)

    def log_prob(self, value):
        n = self.event_shape[0] * self.event_shape[1]
        shape = jax.lax.broadcast_shapes(jnp.shape(value)[:-2], self.batch_shape)
        lp = jnp.full(shape, -n * jnp.log(float(self.num_states)))
        return jnp.where(self.support(value), lp, -jnp.inf)


class PottsLattice(dist.Distribution):
    r"""q-state Potts model on a periodic ``n × m`` lattice,

    .. math::

        p(s) \propto \exp\Big(K \sum_{\langle ij\rangle} 1[s_i = s_j] + \sum_i h_{s_i}\Big),
        \qquad s \in \{0, \dots, q-1\}^{n \times m},

    with the sum over the ``2nm`` nearest-neighbour bonds of the torus (each counted once).
    Values are integer arrays with event shape ``(n, m)``. ``coupling`` (``K``) and ``field``
    (``h``, one value per state, shape ``(..., q)``) may be latent variables of the model
    (their batch shapes broadcast).

    As for :class:`IsingLattice` there is no exact sampler and no closed-form normaliser:
    :meth:`sample` raises and :meth:`log_prob` is the *unnormalised* ``−nm log q + tilt``.
    ``tempering_base()`` is the uniform distribution on the states and
    ``tempering_log_tilt(s) = K Σ 1[s_i = s_j] + Σ_i h_{s_i}``, so inside ``JarzynskiSMC``
    (no observations) the log evidence estimates ``log Z − nm log q``.

    :meth:`gibbs_sweep` is an exact checkerboard block-Gibbs sweep of ``∝ exp(β·tilt)``:
    given the other colour, each site of one colour is independently categorical with
    ``P(s_i = k | rest) ∝ exp(β (K c_i(k) + h_k))``, ``c_i(k)`` the number of its four
    neighbours in state ``k``.

    :param shape: ``(n, m)``, both even (the two-colour sweep needs a bipartite torus).
    :param int num_states: ``q >= 2``. At ``q = 2``, with ``σ = 1 − 2s``, the model is the
        Ising model at ``K_Ising = K / 2`` (``log Z_Potts = log Z_Ising + nm K``). The
        critical point of the infinite ferromagnetic lattice is ``K_c = log(1 + √q)``.
    :param coupling: ``K``.
    :param field: per-state field ``h`` of shape ``(q,)`` (or ``batch + (q,)``); default 0.
    """

    has_enumerate_support = False
    pytree_data_fields = ("coupling", "field")
    pytree_aux_fields = ("lattice_shape", "num_states")

    def __init__(self, shape, num_states, coupling, field=None, *, validate_args=None):
        shape = _check_lattice_shape("PottsLattice", shape)
        q = _check_num_states("PottsLattice", num_states)
        coupling = jnp.asarray(coupling, float)
        field = jnp.zeros(q) if field is None else jnp.asarray(field, float)
        if jnp.ndim(field) < 1 or jnp.shape(field)[-1] != q:
            raise ValueError(
                f"PottsLattice needs field of shape ({q},) (one value per state; batch "
                f"dimensions in front), got shape {jnp.shape(field)}."
            )
        batch_shape = jax.lax.broadcast_shapes(jnp.shape(coupling), jnp.shape(field)[:-1])
        self.coupling = jnp.broadcast_to(coupling, batch_shape)
        self.field = jnp.broadcast_to(field, batch_shape + (q,))
        self.lattice_shape = shape
        self.num_states = q
        super().__init__(batch_shape=batch_shape, event_shape=shape, validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=2)
    def support(self):
        return constraints.independent(constraints.integer_interval(0, self.num_states - 1), 2)

    # -------------------------------------------------------- tempered-site protocol
    def tempering_base(self):
        return UniformStates(self.lattice_shape, self.num_states, self.batch_shape)

    def tempering_log_tilt(self, value):
        onehot = jax.nn.one_hot(value, self.num_states)  # (..., n, m, q)
        field_term = jnp.sum(onehot * self.field[..., None, None, :], axis=(-3, -2, -1))
        return self.coupling * equal_bond_count(value) + field_term

    # -------------------------------------------------------- Gibbs-sweep protocol
    def gibbs_sweep(self, rng_key, value, beta):
        """One exact checkerboard sweep of ``∝ exp(β·tilt)``: even colour, then odd colour."""
        k = jnp.asarray(self.coupling)[..., None, None, None]
        h = jnp.asarray(self.field)[..., None, None, :]
        q = self.num_states

        def draw(key, s):
            logits = beta * (k * neighbour_state_counts(s, q) + h)  # (..., n, m, q)
            return jax.random.categorical(key, logits, axis=-1)

        return _checkerboard_sweep(rng_key, value, self.lattice_shape, draw)

    # -------------------------------------------------------- Distribution API
    def sample(self, key, sample_shape=()):
        raise NotImplementedError(
            "PottsLattice has no exact sampler. Use it as a latent site of a model run with "
            "JarzynskiSMC (which starts from tempering_base() and anneals with gibbs_sweep), "
            "or call gibbs_sweep repeatedly for an MCMC chain."
        )

    def log_prob(self, value):
        """Unnormalised: ``−nm log q + tilt(value)`` (``−∞`` off the support)."""
        return self.tempering_base().log_prob(value) + self.tempering_log_tilt(value)


__all__ = [
    "IsingLattice",
    "PottsLattice",
    "UniformSpins",
    "UniformStates",
    "bond_sum",
    "equal_bond_count",
    "neighbour_state_counts",
    "neighbour_sum",
    "spins",
]
