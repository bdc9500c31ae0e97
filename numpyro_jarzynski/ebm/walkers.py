"""Walker moves for energy models: the engine's stage on the training path.

Two kernels, chosen by the distribution (:func:`kernel`):

* **block Gibbs** (RBMs: ``fn.block_gibbs``, as a :class:`~numpyro_jarzynski.engine.stage.SweepMove`):
  exact for the current parameters, so a move adds no weight; changing the parameters
  ``θ_a → θ_b`` adds ``log γ_b(x) − log γ_a(x)`` at the walker's (already moved) state. Order
  matters (design notes §3): move with ``θ_a`` *then* reweight at the moved state; moving with
  ``θ_b`` and then reweighting is biased.
* **ULA** (continuous energies, the engine's :class:`~numpyro_jarzynski.engine.kernels.ULA`
  move value): not invariant, so every move adds its Crooks increment; the parameter change
  is then the same annealing work ``log γ_b(x) − log γ_a(x)``.

The path is :class:`~numpyro_jarzynski.engine.path.ParameterPath` with the energy
distribution at ``θ`` as its point (:func:`parameter_path`); :func:`advance` is the trainer's
update of the walkers, :func:`numpyro_jarzynski.engine.stage.advance` in its ``move_first``
order. :func:`anneal_from_base` gives the initial walkers and ``log Z_θ0`` by annealing the
tempered-site protocol ``base(x)·exp(β·tilt(x))`` from ``β = 0`` (exact draws) to 1, the same
stage on a :class:`~numpyro_jarzynski.engine.path.TemperingPath`.
"""


import jax
import jax.numpy as jnp

from numpyro_jarzynski.engine import kernels as K
from numpyro_jarzynski.engine import path as P
from numpyro_jarzynski.engine import stage as S
from numpyro_jarzynski.engine.population import Population


def uses_gibbs(fn):
    return hasattr(fn, "block_gibbs")


def _log_gamma(fn, x):
    return fn.unnormalized_log_prob(x)


def parameter_path(fn):
    """The training path ``log γ_θ = fn_θ.unnormalized_log_prob``, its points the energy
    distributions ``fn_θ`` (differentiated for ULA walkers, not for Gibbs walkers)."""
    return P.ParameterPath(_log_gamma, differentiable=not uses_gibbs(fn))


def kernel(fn):
    """The move value for walkers of ``fn``: its block Gibbs sweep (started from the target's
    cache where ``fn`` has a ``gibbs_cache``), or ULA."""
    if uses_gibbs(fn):
        return S.SweepMove(fn.block_gibbs, uses_cache=hasattr(fn, "gibbs_cache"))
    return K.ULA()


def _unit_scale(pop):
    return jnp.ones(pop.x.shape[1:], pop.log_weights.dtype), None


def move(key, fn, x, num_moves, step_size):
    """Move walkers ``num_moves`` times with the kernel of ``fn`` at its current parameters
    (:func:`numpyro_jarzynski.engine.stage.move`, no resampling).

    Returns ``(x_new, log-weight increment)``: zero for exact Gibbs, the summed Crooks
    increments for ULA (weights then stay exact for ``fn`` whatever the step size; ``−inf``
    for a walker whose increment failed). CD and PCD use ``x_new`` alone.
    """
    dtype = jnp.result_type(float)
    pop = Population(x, jnp.zeros(x.shape[0], dtype), jnp.zeros((), dtype))
    target = parameter_path(fn).target(fn)
    cache = None if target.evaluate is None else target.evaluate(x)
    pop, _, _, _ = S.move(key, pop, cache, kernel(fn), target, step_size, _unit_scale(pop)[0],
                          num_moves, None)
    return pop.x, pop.log_weights


def parameter_increment(fn_a, fn_b, x):
    """Annealing work of a parameter change at fixed walkers: ``log γ_b(x) − log γ_a(x)``."""
    return parameter_path(fn_a).increment(x, None, fn_a, fn_b)


def advance(key, pop, fn_a, fn_b, num_moves, step_size, resample_threshold,
            resampling="systematic", move_first=True):
    """The walkers' part of a training update ``θ_a → θ_b`` (:func:`advance_cached` without a
    cache to carry). Returns ``(pop, StageInfo)``."""
    pop, _, info = advance_cached(key, pop, None, fn_a, fn_b, num_moves, step_size,
                                  resample_threshold, resampling, move_first)
    return pop, info


def advance_cached(key, pop, cache, fn_a, fn_b, num_moves, step_size, resample_threshold,
                   resampling="systematic", move_first=True):
    """The walkers' part of a training update ``θ_a → θ_b``, dead walkers revived at a live
    position at the end. ``cache``: the target's cache of ``pop.x`` at ``θ_a`` (``None``:
    evaluated here). Returns ``(pop, cache, StageInfo)``, the cache ``θ_b``'s at the returned
    walkers (``None`` for walkers whose target evaluates nothing), to pass to the next
    update.

    * ``move_first=True`` (walkers whose gradient chose ``θ_b``): ``num_moves`` moves with
      the kernel of ``fn_a`` (no resampling between them), then the work
      ``log γ_b − log γ_a`` at the moved walkers, then a resampling check;
    * ``move_first=False`` (walkers that took no part in choosing ``θ_b``: the cross-fitted
      witness): the work at the walkers as they are, the moves with the kernel of ``fn_b``,
      then a resampling check (the stage's ``resample_last`` order). For an RBM the work's
      ``v W_b`` is also the sweep's first half-sweep, so a stage costs three walker-sized
      products instead of four."""
    kern = kernel(fn_a) if move_first else kernel(fn_b)
    pop, cache, _, _, info = S.advance(key, pop, cache, parameter_path(fn_a), fn_a, fn_b, kern,
                                       step_size, _unit_scale, num_moves, resample_threshold,
                                       resampling, move_first=move_first,
                                       resample_last=not move_first, keep_cache=True)
    return pop, cache, info


def anneal_from_base(key, fn, num_walkers, num_stages, step_size, num_moves=1,
                     resample_threshold=0.5, resampling="systematic"):
    """Walkers for ``fn`` by annealing ``base·exp(β·tilt)``, β = k/K, from exact base draws.

    The engine's stage on the tempering path of ``fn``'s tempered-site protocol: book the
    work ``Δβ·tilt`` (read from the split cache), resample if the ESS is low, then move at
    ``β_b``. Discrete distributions move with ``fn.gibbs_sweep(key, x, β)`` (exact at β, no
    increment); continuous ones with ULA and its Crooks increments (a resampling check after
    each move). Returns a :class:`Population` whose ``log_evidence`` estimates ``log Z``
    relative to the base (the absolute ``log Z`` for RBMs, whose tilt includes the base's
    normaliser).
    """
    base = fn.tempering_base()
    k0, key = jax.random.split(key)
    x = base.sample(k0, (num_walkers,))
    dtype = jnp.result_type(float)
    x = x.astype(dtype)
    pop = Population(x, jnp.zeros(num_walkers, dtype), jnp.zeros((), dtype))
    betas = jnp.linspace(0.0, 1.0, num_stages + 1, dtype=dtype)
    discrete = fn.support.is_discrete
    path = P.TemperingPath(P.split_evaluator(base.log_prob, fn.tempering_log_tilt,
                                             differentiable=not discrete))
    cache = path.evaluate(x, None)

    def stage(carry, inp):
        pop, cache = carry
        k, beta_a, beta_b = inp
        if discrete:
            move_value = S.SweepMove(lambda kk, v: fn.gibbs_sweep(kk, v, beta_b))
        else:
            move_value = K.ULA()
        pop, cache, _, _, _ = S.advance(k, pop, cache, path, beta_a, beta_b, move_value,
                                        step_size, _unit_scale, num_moves, resample_threshold,
                                        resampling)
        return (pop, cache), None

    keys = jax.random.split(key, num_stages)
    (pop, _), _ = jax.lax.scan(stage, (pop, cache), (keys, betas[:-1], betas[1:]))
    return pop
