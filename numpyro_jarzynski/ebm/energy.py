"""``EnergyDistribution``: a density ``∝ base(x) · exp(−U(x))`` for any JAX energy ``U``.

.. math::  p_\\theta(x) = \\frac{b(x)\\, e^{-U_\\theta(x)}}{Z_\\theta},\\qquad
           Z_\\theta = \\mathbb E_{b}\\big[e^{-U_\\theta(X)}\\big].

``log_prob`` is **unnormalised** (``log b(x) − U(x)``) unless a log-normaliser estimate is
attached (``log_normalizer=``, e.g. the trainer's running ``log Z``). With
``include_base=False`` the density is ``exp(−U(x))`` with respect to Lebesgue measure (or
counting measure) and the base is only the reference that walkers start from; ``Z`` is then
the absolute normaliser ``∫ e^{−U}``.

Two protocols connect it to the rest of the package:

* tempered-site protocol (:mod:`numpyro_jarzynski.infer.model_bridge`):
  ``tempering_base()`` is the base, ``tempering_log_tilt(x) = log γ(x) − log b(x)``; as a
  latent site of a model run with ``JarzynskiSMC`` the log evidence estimates ``log Z``.
* the trainer (:mod:`numpyro_jarzynski.ebm.trainer`) calls ``unnormalized_log_prob``.
"""

import jax
import jax.numpy as jnp
import numpyro.distributions as dist


class EnergyBasedDistribution(dist.Distribution):
    """Common interface of the energy models: ``unnormalized_log_prob`` and the tempered-site
    protocol. ``log_prob = unnormalized_log_prob − log_normalizer`` (0 unless attached)."""

    log_normalizer = None

    def unnormalized_log_prob(self, value):
        raise NotImplementedError

    def log_prob(self, value):
        lp = self.unnormalized_log_prob(value)
        return lp if self.log_normalizer is None else lp - self.log_normalizer

    def tempering_base(self):
        raise NotImplementedError

    def tempering_log_tilt(self, value):
        return self.unnormalized_log_prob(value) - self.tempering_base().log_prob(value)


def _check_energy_shape(energy_fn, event_shape, dtype):
    try:
        out = jax.eval_shape(energy_fn, jax.ShapeDtypeStruct(event_shape, dtype))
    except Exception as e:
        raise ValueError(
            f"energy_fn failed on one event of shape {event_shape}: {e}. EnergyDistribution "
            "calls energy_fn on a single event (no batch axis) and vectorises it itself."
        ) from e
    if out.shape != ():
        raise ValueError(
            f"energy_fn must return a scalar per event, got shape {out.shape} for an input of "
            f"shape {event_shape}. Sum over the event dimensions (or remove a batch axis: "
            "EnergyDistribution vmaps energy_fn over samples itself)."
        )


class EnergyDistribution(EnergyBasedDistribution):
    r"""Energy-based model ``p(x) ∝ base(x) exp(−energy_fn(x))``.

    :param energy_fn: ``x -> U(x)`` for one event ``x`` of the base's event shape (any JAX
        function, e.g. a plain-JAX, flax or equinox network closed over ``numpyro.param``
        values). It is vmapped over sample and batch axes.
    :param base: a proper, exactly sampleable NumPyro distribution with ``batch_shape == ()``
        (use ``.to_event(1)`` for vectors). It fixes the support and is where walkers start.
    :param bool include_base: if False the density is ``exp(−U)`` alone (base only a reference).
    :param log_normalizer: optional estimate of ``log Z`` subtracted by ``log_prob``.
    """

    def __init__(self, energy_fn, base, include_base=True, log_normalizer=None, validate_args=None):
        if not isinstance(base, dist.Distribution):
            raise TypeError(f"base must be a NumPyro distribution, got {type(base).__name__}.")
        if base.batch_shape != ():
            raise ValueError(
                f"base has batch_shape {base.batch_shape}; an energy is a function of the whole "
                "event, so the base must have batch_shape (). Use base.to_event("
                f"{len(base.batch_shape)}) and put data axes under a numpyro.plate instead."
            )
        _check_energy_shape(energy_fn, base.event_shape, jnp.result_type(float))
        self.energy_fn, self.base = energy_fn, base
        self.include_base = include_base
        self.log_normalizer = log_normalizer
        super().__init__(batch_shape=(), event_shape=base.event_shape, validate_args=validate_args)

    @property
    def support(self):
        return self.base.support

    def energy(self, value):
        """``U(x)`` with the event axes reduced: shape ``value.shape[:-event_dim]``."""
        value = jnp.asarray(value)
        nd = len(self.event_shape)
        batch = value.shape[: value.ndim - nd]
        flat = value.reshape((-1,) + self.event_shape)
        return jax.vmap(self.energy_fn)(flat).reshape(batch)

    def unnormalized_log_prob(self, value):
        lp = -self.energy(value)
        return lp + self.base.log_prob(value) if self.include_base else lp

    def tempering_base(self):
        return self.base

    def tempering_log_tilt(self, value):
        return -self.energy(value) if self.include_base else self.unnormalized_log_prob(value) - (
            self.base.log_prob(value)
        )

    def sample(self, key, sample_shape=()):
        raise NotImplementedError(
            "An EnergyDistribution cannot be sampled exactly. Use it as a latent site of a "
            "model run with JarzynskiSMC (weighted samples and log Z), or read the walkers of "
            "the EBM trainer."
        )
