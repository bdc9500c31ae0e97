r"""Restricted Boltzmann machines as NumPyro distributions over the visible units.

**Bernoulli–Bernoulli.** ``E(v, h) = −bᵀv − cᵀh − vᵀWh`` with ``v ∈ {0,1}^{n_v}``,
``h ∈ {0,1}^{n_h}``; the visible marginal is ``p(v) = e^{−F(v)} / Z`` with free energy

.. math::  F(v) = -b^\top v - \sum_j \operatorname{softplus}(c_j + (v^\top W)_j).

**Gaussian–Bernoulli.** ``E(v, h) = Σ_i (v_i − b_i)²/(2σ_i²) − cᵀh − Σ_ij (v_i/σ_i) W_ij h_j``,

.. math::  F(v) = \sum_i \frac{(v_i-b_i)^2}{2\sigma_i^2}
                 - \sum_j \operatorname{softplus}(c_j + ((v/\sigma)^\top W)_j),

a mixture of ``2^{n_h}`` Gaussians ``N(b + σ⊙Wh, σ²)`` with weights
``∝ exp(cᵀh + (b/σ)ᵀWh + |Wh|²/2)``.

Block Gibbs (``h | v`` then ``v | h``) is exact for the current parameters, which is what the
trainer's walkers use. ``log_partition()`` enumerates the smaller layer (at most 20 units).
``log_prob`` is ``−F(v)`` unless ``log_normalizer`` is given (a number, or ``"exact"``).

Tempered-site protocol: the base is the visible-bias part (``Bernoulli(σ(b))`` or
``N(b, σ²)``) and the tilt is ``−F(v) − log base(v)``, so that annealing it from 0 to 1 gives
the absolute ``log Z = log Σ_v e^{−F(v)}`` as the log evidence. A tempered free energy is not an
RBM at scaled parameters (``softplus(βa) ≠ β softplus(a)``), so :meth:`BernoulliRBM.gibbs_sweep`
updates one visible unit at a time from its exact tempered conditional.
"""

import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro.distributions import constraints

from numpyro_jarzynski.ebm.energy import EnergyBasedDistribution
from numpyro_jarzynski.engine import noise

MAX_ENUMERATED_UNITS = 20


def _all_binary(n, dtype):
    return jnp.asarray(np.array(list(itertools.product([0, 1], repeat=n))), dtype)


def _check_enumerable(n_v, n_h, which):
    n = min(n_v, n_h) if which is None else n_h
    if n > MAX_ENUMERATED_UNITS:
        raise ValueError(
            f"Exact log Z enumerates 2^{n} states of the smaller layer; more than "
            f"{MAX_ENUMERATED_UNITS} units is too many. Use log_partition(method=\"ais\", "
            "rng_key=...) (annealed importance sampling, a stochastic lower bound with its "
            "error) or the trainer's running log Z (Jarzynski weights) instead."
        )


class GibbsCache(NamedTuple):
    """An RBM's cache at walkers ``v`` for parameters ``θ``: ``log_p = log γ_θ(v) = −F_θ(v)``
    and ``hidden_logits = c + (v/σ)ᵀW``. The logits are the one walker-sized product that the
    free energy, the first half-sweep (:meth:`_RBM.block_gibbs`) and the walkers' parameter
    gradient (:meth:`_RBM.linearized_log_prob`) share; the EBM trainer carries them from the
    work at ``θ_{k+1}`` to the next update instead of recomputing them."""

    log_p: jax.Array  # (N,)
    hidden_logits: jax.Array  # (N, n_h)


class _RBM(EnergyBasedDistribution):
    def __init__(self, weights, visible_bias, hidden_bias, log_normalizer=None, validate_args=None):
        weights = jnp.asarray(weights)
        if weights.ndim != 2:
            raise ValueError(f"weights must have shape (n_visible, n_hidden), got {weights.shape}.")
        n_v, n_h = weights.shape
        visible_bias, hidden_bias = jnp.asarray(visible_bias), jnp.asarray(hidden_bias)
        if visible_bias.shape != (n_v,) or hidden_bias.shape != (n_h,):
            raise ValueError(
                f"visible_bias must have shape ({n_v},) and hidden_bias ({n_h},) for weights of "
                f"shape {weights.shape}; got {visible_bias.shape} and {hidden_bias.shape}."
            )
        self.weights, self.visible_bias, self.hidden_bias = weights, visible_bias, hidden_bias
        self.num_sample_sweeps = 1000
        self._log_normalizer = log_normalizer
        super().__init__(batch_shape=(), event_shape=(n_v,), validate_args=validate_args)

    @property
    def log_normalizer(self):
        if isinstance(self._log_normalizer, str):
            if self._log_normalizer != "exact":
                raise ValueError('log_normalizer must be None, a number or "exact".')
            return self.log_partition()
        return self._log_normalizer

    @property
    def num_visible(self):
        return self.weights.shape[0]

    @property
    def num_hidden(self):
        return self.weights.shape[1]

    def unnormalized_log_prob(self, value):
        return -self.free_energy(value)

    def hidden_logits(self, v):
        return self.hidden_bias + self._scaled(v) @ self.weights

    def sample_hidden(self, rng_key, v, logits=None):
        """``h ~ p(h|v)``; ``logits``: ``hidden_logits(v)`` if already computed."""
        logits = self.hidden_logits(v) if logits is None else logits
        # engine.noise: jax.random.bernoulli's draws bit for bit, the threefry hash unrolled
        return noise.bernoulli(rng_key, jax.nn.sigmoid(logits)).astype(v.dtype)

    def block_gibbs(self, rng_key, v, cache=None):
        """One sweep ``h ~ p(h|v)``, ``v ~ p(v|h)``: exact, invariant for ``p(v)``.
        ``cache``: the :class:`GibbsCache` of ``v`` at these parameters (its logits start
        the sweep: the same draws, one product fewer)."""
        k_h, k_v = noise.split(rng_key)
        logits = None if cache is None else cache.hidden_logits
        return self.sample_visible(k_v, self.sample_hidden(k_h, v, logits))

    def gibbs_cache(self, v):
        """The :class:`GibbsCache` of walkers ``v``: ``log γ(v)`` (the same number as
        ``unnormalized_log_prob``) and the hidden logits."""
        v = jnp.asarray(v, self.weights.dtype)
        logits = self.hidden_logits(v)
        return GibbsCache(self._visible_log_factor(v) + jnp.sum(jax.nn.softplus(logits), -1),
                          logits)

    def linearized_log_prob(self, v, cache):
        """Per walker, a function of this RBM's parameters with the gradient of
        ``log γ_θ(v)`` at the cached parameters but not its value: the softplus is linearised
        about the cached logits (``∂ softplus(L) = σ(L) ∂L``), so that its gradient
        ``(vᵀσ(L), v, σ(L))`` needs the backward product alone, not the forward one."""
        v = jnp.asarray(v, self.weights.dtype)
        slope = jax.lax.stop_gradient(jax.nn.sigmoid(cache.hidden_logits))
        return self._visible_log_factor(v) + jnp.sum(slope * self.hidden_logits(v), -1)

    def sample(self, key, sample_shape=()):
        """Approximate draws: ``num_sample_sweeps`` block-Gibbs sweeps from base draws."""
        k0, k1 = jax.random.split(key)
        v = self.tempering_base().sample(k0, sample_shape)
        return jax.lax.fori_loop(
            0, self.num_sample_sweeps, lambda i, v: self.block_gibbs(jax.random.fold_in(k1, i), v), v
        )


class BernoulliRBM(_RBM):
    """Bernoulli–Bernoulli RBM over ``v ∈ {0,1}^{n_v}`` (see module docstring)."""

    support = constraints.independent(constraints.boolean, 1)

    def _scaled(self, v):
        return v

    def free_energy(self, v):
        v = jnp.asarray(v, self.weights.dtype)
        return -(v @ self.visible_bias) - jnp.sum(jax.nn.softplus(self.hidden_logits(v)), -1)

    def _visible_log_factor(self, v):
        return v @ self.visible_bias

    def joint_energy(self, v, h):
        return -(v @ self.visible_bias) - h @ self.hidden_bias - jnp.sum((v @ self.weights) * h, -1)

    def sample_visible(self, rng_key, h):
        logits = self.visible_bias + h @ self.weights.T
        return noise.bernoulli(rng_key, jax.nn.sigmoid(logits)).astype(h.dtype)

    def tempering_base(self):
        return dist.Bernoulli(logits=self.visible_bias).to_event(1)

    def tempering_log_tilt(self, value):
        v = jnp.asarray(value, self.weights.dtype)
        return jnp.sum(jax.nn.softplus(self.visible_bias)) + jnp.sum(
            jax.nn.softplus(self.hidden_logits(v)), -1
        )

    def gibbs_sweep(self, rng_key, value, beta):
        """Exact single-site sweep invariant for ``∝ base(v) · exp(β · tilt(v))``.

        Unit ``i`` is drawn from its tempered conditional, logit
        ``b_i + β Σ_j [softplus(a_j + (1−v_i)W_ij) − softplus(a_j − v_i W_ij)]`` with
        ``a = c + vᵀW`` kept up to date. ``value`` has shape ``(..., n_v)``.
        """
        v = jnp.asarray(value, self.weights.dtype)
        beta = jnp.asarray(beta, v.dtype)
        u = noise.uniform(rng_key, (self.num_visible,) + v.shape[:-1], v.dtype)
        a = self.hidden_logits(v)

        def body(carry, inp):
            v, a = carry
            i, u_i = inp
            v_i, w_i = v[..., i], self.weights[i]
            a_on = a + (1 - v_i)[..., None] * w_i
            a_off = a - v_i[..., None] * w_i
            diff = jnp.sum(jax.nn.softplus(a_on) - jax.nn.softplus(a_off), -1)
            new = (u_i < jax.nn.sigmoid(self.visible_bias[i] + beta * diff)).astype(v.dtype)
            a = jnp.where(new[..., None] > 0, a_on, a_off)
            return (v.at[..., i].set(new), a), None

        (v, _), _ = jax.lax.scan(body, (v, a), (jnp.arange(self.num_visible), u))
        return v

    def log_partition(self, method="exact", *, rng_key=None, base_bias=None, num_runs=100,
                      num_temperatures=10_000):
        """``log Σ_v e^{−F(v)}``.

        ``method="exact"``: by enumerating the smaller layer (≤ 20 units); returns a scalar.
        ``method="ais"``: annealed importance sampling from the base-rate model with visible
        biases ``base_bias`` (pass :func:`numpyro_jarzynski.ebm.ais.base_rate_bias` of the
        training data) through ``num_temperatures`` temperatures, ``num_runs`` runs (needs
        ``rng_key``); returns an :class:`~numpyro_jarzynski.ebm.ais.AISResult` whose
        ``log_z`` is a stochastic lower bound on ``log Z``, with its standard error. For
        bounds on both sides of a test log-likelihood use
        :func:`numpyro_jarzynski.ebm.ais.log_likelihood_bounds`.
        """
        if method == "ais":
            from numpyro_jarzynski.ebm import ais

            if rng_key is None:
                raise ValueError('log_partition(method="ais") needs rng_key=jax.random.key(...).')
            return ais.ais(rng_key, self, num_runs, num_temperatures, base_bias)
        if method != "exact":
            raise ValueError(f'method must be "exact" or "ais", got {method!r}.')
        n_v, n_h = self.weights.shape
        _check_enumerable(n_v, n_h, None)
        dtype = self.weights.dtype
        if n_h <= n_v:
            h = _all_binary(n_h, dtype)
            terms = h @ self.hidden_bias + jnp.sum(
                jax.nn.softplus(self.visible_bias + h @ self.weights.T), -1
            )
        else:
            terms = -self.free_energy(_all_binary(n_v, dtype))
        return jax.scipy.special.logsumexp(terms)


class GaussianBernoulliRBM(_RBM):
    """Gaussian–Bernoulli RBM over ``v ∈ ℝ^{n_v}`` with visible scales ``sigma`` (see module
    docstring). Exact ``log_partition`` enumerates the hidden layer (≤ 20 units)."""

    support = constraints.real_vector

    def __init__(self, weights, visible_bias, hidden_bias, sigma=1.0, log_normalizer=None,
                 validate_args=None):
        super().__init__(weights, visible_bias, hidden_bias, log_normalizer, validate_args)
        self.sigma = jnp.broadcast_to(jnp.asarray(sigma, self.weights.dtype), (self.num_visible,))

    def _scaled(self, v):
        return v / self.sigma

    def free_energy(self, v):
        quad = jnp.sum((v - self.visible_bias) ** 2 / (2 * self.sigma**2), -1)
        return quad - jnp.sum(jax.nn.softplus(self.hidden_logits(v)), -1)

    def _visible_log_factor(self, v):
        return -jnp.sum((v - self.visible_bias) ** 2 / (2 * self.sigma**2), -1)

    def joint_energy(self, v, h):
        quad = jnp.sum((v - self.visible_bias) ** 2 / (2 * self.sigma**2), -1)
        return quad - h @ self.hidden_bias - jnp.sum((self._scaled(v) @ self.weights) * h, -1)

    def sample_visible(self, rng_key, h):
        mean = self.visible_bias + self.sigma * (h @ self.weights.T)
        return mean + self.sigma * jax.random.normal(rng_key, mean.shape, mean.dtype)

    def tempering_base(self):
        return dist.Normal(self.visible_bias, self.sigma).to_event(1)

    def tempering_log_tilt(self, value):
        const = jnp.sum(jnp.log(self.sigma)) + 0.5 * self.num_visible * jnp.log(2 * jnp.pi)
        return const + jnp.sum(jax.nn.softplus(self.hidden_logits(value)), -1)

    def mixture(self):
        """The visible marginal as a Gaussian mixture: ``(log_weights, means)`` over all
        ``2^{n_h}`` hidden states (normalised weights; component covariance ``diag(σ²)``)."""
        _check_enumerable(self.num_visible, self.num_hidden, "hidden")
        h = _all_binary(self.num_hidden, self.weights.dtype)
        wh = h @ self.weights.T
        logits = h @ self.hidden_bias + wh @ (self.visible_bias / self.sigma) + 0.5 * jnp.sum(wh**2, -1)
        return jax.nn.log_softmax(logits), self.visible_bias + self.sigma * wh

    def log_partition(self):
        """Exact ``log ∫ e^{−F(v)} dv`` by enumerating the hidden layer (≤ 20 units)."""
        _check_enumerable(self.num_visible, self.num_hidden, "hidden")
        h = _all_binary(self.num_hidden, self.weights.dtype)
        wh = h @ self.weights.T
        logits = h @ self.hidden_bias + wh @ (self.visible_bias / self.sigma) + 0.5 * jnp.sum(wh**2, -1)
        const = jnp.sum(jnp.log(self.sigma)) + 0.5 * self.num_visible * jnp.log(2 * jnp.pi)
        return jax.scipy.special.logsumexp(logits) + const


def bernoulli_rbm_model(train, num_hidden, init_scale=0.01, seed=1):
    """A NumPyro model of binary data ``v`` (``(n, n_visible)``) as a :class:`BernoulliRBM`
    whose parameters are ``numpyro.param`` sites, ready for
    :class:`~numpyro_jarzynski.ebm.EBMTrainer`: ``W`` (``N(0, init_scale²)`` from NumPy's
    generator with ``seed``), ``b`` (the logits of ``train``'s per-unit frequencies, clipped
    to [1e-3, 1 − 1e-3]) and ``c`` (zeros), the usual initialisation (Hinton 2010)."""
    import numpyro

    train = np.asarray(train)
    if train.ndim != 2:
        raise ValueError(f"train must have shape (n, n_visible), got {train.shape}.")
    n_v = train.shape[1]
    mean = np.clip(train.mean(0), 1e-3, 1 - 1e-3)
    w0 = jnp.asarray(init_scale * np.random.default_rng(seed).normal(size=(n_v, num_hidden)),
                     jnp.float32)
    b0 = jnp.asarray(np.log(mean / (1 - mean)), jnp.float32)

    def model(v):
        w = numpyro.param("W", w0)
        b = numpyro.param("b", b0)
        c = numpyro.param("c", jnp.zeros(num_hidden))
        with numpyro.plate("data", v.shape[0]):
            numpyro.sample("v", BernoulliRBM(w, b, c), obs=v)

    return model
