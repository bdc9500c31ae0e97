"""Walker moves for energy models, on top of the engine (population, moves, weights).

Two kernels, chosen by the distribution:

* **block Gibbs** (RBMs: ``fn.block_gibbs``): exact for the current parameters, so a move adds
  no weight; changing the parameters ``θ_a → θ_b`` adds ``log γ_b(x) − log γ_a(x)`` at the
  walker's (already moved) state. Order matters (design notes §3): move with ``θ_a`` *then*
  reweight at the moved state; moving with ``θ_b`` and then reweighting is biased.
* **ULA** (continuous energies, the engine's :class:`~numpyro_jarzynski.engine.kernels.ULA`
  move value): not invariant, so every move adds its Crooks increment; the parameter change
  is then the same annealing work ``log γ_b(x) − log γ_a(x)``.

:func:`anneal_from_base` gives the initial walkers and ``log Z_θ0`` by annealing the tempered-site
protocol ``base(x)·exp(β·tilt(x))`` from ``β = 0`` (exact draws) to 1.
"""

import jax
import jax.numpy as jnp

from numpyro_jarzynski.engine import kernels as K
from numpyro_jarzynski.engine import stage as S
from numpyro_jarzynski.engine.population import Population


def uses_gibbs(fn):
    return hasattr(fn, "block_gibbs")


def _ula_moves(key, x, log_prob, step_size, num_moves):
    """``num_moves`` ULA moves at ``log_prob``; returns ``(x, Σ Crooks increments)``."""
    target = K.density_target(log_prob)
    ones = jnp.ones(x.shape[-1], x.dtype)
    x, _, inc, _ = K.run_moves(K.ULA(), key, x, target.evaluate(x), target, step_size, ones,
                               num_moves)
    return x, inc


def move(key, fn, x, num_moves, step_size):
    """Move walkers ``num_moves`` times with the kernel of ``fn`` at its current parameters.

    Returns ``(x_new, log-weight increment)``: zero for exact Gibbs, the summed Crooks
    increments for ULA (weights then stay exact for ``fn`` whatever the step size).
    """
    if uses_gibbs(fn):
        def body(v, k):
            return fn.block_gibbs(k, v), None

        x, _ = jax.lax.scan(body, x, jax.random.split(key, num_moves))
        return x, jnp.zeros(x.shape[0], x.dtype)
    return _ula_moves(key, x, fn.unnormalized_log_prob, step_size, num_moves)


def parameter_increment(fn_a, fn_b, x):
    """Annealing work of a parameter change at fixed walkers: ``log γ_b(x) − log γ_a(x)``."""
    return fn_b.unnormalized_log_prob(x) - fn_a.unnormalized_log_prob(x)


def anneal_from_base(key, fn, num_walkers, num_stages, step_size, num_moves=1,
                     resample_threshold=0.5, resampling="systematic"):
    """Walkers for ``fn`` by annealing ``base·exp(β·tilt)``, β = k/K, from exact base draws.

    Discrete distributions move with ``fn.gibbs_sweep(key, x, β)`` (exact at β, weight =
    work ``Δβ·tilt`` before the move); continuous ones with ULA and the Crooks increment.
    Returns a :class:`Population` whose ``log_evidence`` estimates ``log Z`` relative to the
    base (the absolute ``log Z`` for RBMs, whose tilt includes the base's normaliser).
    """
    base = fn.tempering_base()
    k0, key = jax.random.split(key)
    x = base.sample(k0, (num_walkers,))
    dtype = jnp.result_type(float)
    x = x.astype(dtype)
    pop = Population(x, jnp.zeros(num_walkers, dtype), jnp.zeros((), dtype))
    betas = jnp.linspace(0.0, 1.0, num_stages + 1, dtype=dtype)
    discrete = fn.support.is_discrete

    ones = jnp.ones(x.shape[1:], dtype)

    def stage(pop, inp):
        # The engine's stage (engine.stage.step) on the path base·exp(β·tilt): book the work
        # Δβ·tilt, resample if the ESS is low, then move at β_b (Gibbs: exact, no increment;
        # ULA: its Crooks terms, with a resampling check after each move).
        k, beta_a, beta_b = inp
        inc = (beta_b - beta_a) * fn.tempering_log_tilt(pop.x)
        if discrete:
            kernel = S.SweepMove(lambda kk, v: fn.gibbs_sweep(kk, v, beta_b))
            target = K.Target(lambda v: jnp.zeros(v.shape[0], dtype), None, None)
        else:
            kernel = K.ULA()
            target = K.density_target(
                lambda xi: base.log_prob(xi) + beta_b * fn.tempering_log_tilt(xi))
        pop, _, _, _, info = S.step(k, pop, None, inc, kernel, target, step_size,
                                    lambda p: (ones, None), num_moves, resample_threshold,
                                    resampling)
        return pop, info.resample.resampled

    keys = jax.random.split(key, num_stages)
    pop, _ = jax.lax.scan(stage, pop, (keys, betas[:-1], betas[1:]))
    return pop
