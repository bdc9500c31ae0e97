"""The tempering path as pure functions: ``log γ_β(x) = log prior(x) + β log lik(x)``.

One stage takes the weighted population from ``β_a`` to ``β_b`` (fixed schedule, or the
largest ``β_b`` whose conditional ESS meets ``target_ess``) and moves it:

* ``move="mala"`` (invariant kernel): reweight by the annealing work
  ``ΔA = (β_b − β_a) log lik(x)`` at the current state, resample if the ESS is low, then
  ``num_moves`` MALA moves that leave ``ρ_{β_b}`` invariant (no further increment).
* ``move="ula"`` (not invariant): resample if the ESS is low, then ``num_moves`` unadjusted
  Langevin moves, the first from ``γ_{β_a}`` to ``γ_{β_b}`` and the others at ``β_b``, each
  adding its Crooks increment (:func:`numpyro_jarzynski.engine.moves.langevin_log_increment`).
  The density and gradient are kept split into prior and likelihood parts, so the
  increment for any ``β_b`` costs no extra gradient evaluation.

Adaptive schedules choose ``β_b`` by bisection so that the conditional ESS of the annealing
work ``(β_b − β_a) log lik(x)`` equals ``target_ess`` (see :func:`_work_cess`).

Step size: moves are preconditioned by the weighted per-coordinate spread of the population
(diagonal only, see the design notes on adaptation bias) and the dimensionless step ``h`` is
adapted between stages toward ``target_accept`` (the MALA acceptance, or for ULA the
acceptance a Metropolis test would have had), from the previous stage's moves only.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from numpyro_jarzynski.engine import moves as M
from numpyro_jarzynski.engine import weights as W
from numpyro_jarzynski.engine.population import Population, maybe_resample, replace_dead
from numpyro_jarzynski.engine.schedules import solve_next_beta


class ParticleCache(NamedTuple):
    """Prior and likelihood parts of ``log γ`` and their gradients at every particle."""

    log_prior: jax.Array  # (N,)
    log_lik: jax.Array  # (N,)
    grad_log_prior: jax.Array  # (N, d)
    grad_log_lik: jax.Array  # (N, d)

    def log_density(self, beta):
        return self.log_prior + beta * self.log_lik

    def grad(self, beta):
        return self.grad_log_prior + beta * self.grad_log_lik


class StageHistory(NamedTuple):
    """Per-stage diagnostics of the annealing (warmup) stages, one entry per stage."""

    beta: jax.Array
    ess: jax.Array
    cess: jax.Array
    log_evidence_increment: jax.Array
    acceptance_rate: jax.Array
    step_size: jax.Array
    resampled: jax.Array
    pareto_khat: jax.Array


class SMCState(NamedTuple):
    """State of one SMC run; all particles live in one state. Collectable fields:
    ``z``, ``log_weights``, ``beta``, ``log_evidence``, ``ess``, ``cess``,
    ``log_evidence_increment``, ``acceptance_rate``, ``step_size``, ``resampled``,
    ``pareto_khat``."""

    i: jax.Array
    z: Any
    log_weights: jax.Array
    log_z_banked: jax.Array
    log_evidence: jax.Array
    beta: jax.Array
    ess: jax.Array
    cess: jax.Array
    log_evidence_increment: jax.Array
    acceptance_rate: jax.Array
    step_size: jax.Array
    resampled: jax.Array
    pareto_khat: jax.Array
    cache: ParticleCache
    scale: jax.Array
    history: StageHistory
    rng_key: jax.Array


@dataclass(frozen=True)
class TemperingConfig:
    """Static settings of a tempering run (hashable: part of the compiled program)."""

    move: str = "mala"
    num_moves: int = 2
    num_stages: int = 100
    schedule: tuple | None = None  # None = adaptive
    target_ess: float = 0.9
    min_increment: float = 1e-6
    resample_threshold: float = 0.5
    resampling: Any = "systematic"
    adapt_step_size: bool = True
    target_accept: float = 0.65
    max_step_size: float = 1.0
    discrete_move: Callable | None = None  # (key, beta, x, disc, evaluate_parts) -> disc


class Codec(NamedTuple):
    """Maps the user-facing particle dict ``z`` to (flat continuous ``x`` (N, d), discrete)."""

    split: Callable
    merge: Callable


def _khat(log_w):
    if log_w.shape[0] < 25:
        return jnp.full((), jnp.nan, log_w.dtype)
    return W.pareto_khat(log_w)


def init_state(rng_key, z, log_weights, cache, step_size, num_stages, codec):
    x, _ = codec.split(z)
    log_weights = jnp.where(
        jnp.isfinite(cache.log_prior) & jnp.isfinite(cache.log_lik), W.sanitize(log_weights), -jnp.inf
    )
    pop = Population(x, log_weights, jnp.zeros((), x.dtype))
    check_alive(log_weights)
    pop, cache, z = replace_dead(pop, cache, z)
    dtype = x.dtype
    scale = _spread(pop.log_weights, pop.x, jnp.ones(x.shape[-1], dtype))
    h = max(num_stages, 1)
    nan = jnp.full((h,), jnp.nan, dtype)
    history = StageHistory(nan, nan, nan, nan, nan, nan, jnp.zeros((h,), bool), nan)
    zero = jnp.zeros((), dtype)
    return SMCState(
        i=jnp.zeros((), jnp.int32),
        z=z,
        log_weights=pop.log_weights,
        log_z_banked=zero,
        log_evidence=W.log_mean_exp(pop.log_weights),
        beta=zero,
        ess=W.ess(pop.log_weights),
        cess=jnp.ones((), dtype),
        log_evidence_increment=zero,
        acceptance_rate=zero,
        step_size=jnp.asarray(step_size, dtype),
        resampled=jnp.zeros((), bool),
        pareto_khat=_khat(pop.log_weights),
        cache=cache,
        scale=scale,
        history=history,
        rng_key=rng_key,
    )


def _spread(log_w, x, fallback):
    """Weighted per-coordinate spread; ``fallback`` where it is degenerate (all dead → NaN)."""
    s = W.weighted_std(log_w, x)
    return jnp.where(s > 1e-12, s, fallback)


def crossfit_scale(pop, fallback):
    """Per-particle preconditioner ``(N, d)``: each half of the population is scaled by the
    weighted spread of the *other* half. Also returns the pooled ``(d,)`` spread, kept in the
    state as the fallback for the next stage.

    A scale estimated from the particles it then moves feeds each particle's own position
    back into its kernel. MALA's weights do not depend on the kernel, but ULA's Crooks
    increment does, and that self-influence biased log Z upward by O(d/N) (+0.85 nat at
    N = 256, d = 50). Cross-fitting removes the first-order term. Resampled indices are
    sorted (:func:`numpyro_jarzynski.engine.population.resample`), so copies of one
    ancestor sit together and land in the same half.
    """
    n = pop.log_weights.shape[0]
    half = n // 2
    s_first = _spread(pop.log_weights[:half], pop.x[:half], fallback)
    s_second = _spread(pop.log_weights[half:], pop.x[half:], fallback)
    in_first = (jnp.arange(n) < half)[:, None]
    return jnp.where(in_first, s_second, s_first), 0.5 * (s_first + s_second)


def _raise_all_dead(all_dead):
    if bool(all_dead):
        raise FloatingPointError(
            "Every particle has zero weight: the model's log density is NaN or infinite at all "
            "of them. Check the model for invalid parameter values, an initial distribution "
            "that misses the posterior, or a step size so large that the moves diverge."
        )


def check_alive(log_weights):
    """Stop with a clear error if every particle is dead. ``log_weights`` may carry leading
    batch axes (vectorised runs): one host callback per call, not one per run."""
    jax.debug.callback(_raise_all_dead, jnp.any(jnp.all(~jnp.isfinite(log_weights), axis=-1)))


def _next_beta(config, i, beta_a, cess_of):
    """Target of stage ``i``: fixed schedule, or adaptive; β = 1 from the last warmup stage on."""
    last = i >= config.num_stages - 1
    if config.schedule is not None:
        sched = jnp.asarray(np.asarray(config.schedule), beta_a.dtype)
        return jnp.where(last, 1.0, sched[jnp.minimum(i, config.num_stages - 1)])
    beta_b = solve_next_beta(cess_of, beta_a, config.target_ess, config.min_increment)
    return jnp.where(last, 1.0, beta_b)


def _finite(v):
    return jnp.where(jnp.isfinite(v), v, -jnp.inf)


def _work_cess(log_w, log_lik, beta_a):
    """CESS of the annealing work ``(β_b − β_a) log lik(x)`` as a function of ``β_b``.

    Both moves choose ``β_b`` with it. For ULA the realised increment also carries the
    move's own discretisation term, whose spread does not vanish as ``β_b → β_a``, so a
    criterion on the full increment could stall; the work term is the part ``β_b`` controls.
    """
    work = _finite(log_lik)
    return lambda beta_b: W.conditional_ess(log_w, (beta_b - beta_a) * work)


def _langevin(key, x, cache, beta, h, scale, evaluate, disc):
    x_new = M.langevin_proposal(key, x, cache.grad(beta), h, scale)
    return x_new, evaluate(x_new, disc)


def _mala_moves(key, x, cache, beta, h, scale, evaluate, disc, num_moves):
    if x.shape[-1] == 0:  # purely discrete model: nothing to move here (Gibbs does it)
        return x, cache, jnp.ones((), cache.log_prior.dtype)

    def body(carry, k):
        x, cache = carry
        k_prop, k_acc = jax.random.split(k)
        x_new, c_new = _langevin(k_prop, x, cache, beta, h, scale, evaluate, disc)
        log_ratio = M.langevin_log_increment(
            x, x_new, cache.log_density(beta), cache.grad(beta),
            c_new.log_density(beta), c_new.grad(beta), h, scale,
        )
        accept, prob = M.mala_accept(k_acc, log_ratio)
        return M.select(accept, (x_new, c_new), (x, cache)), jnp.mean(prob)

    (x, cache), probs = jax.lax.scan(body, (x, cache), jax.random.split(key, num_moves))
    return x, cache, jnp.mean(probs)


def _ula_moves(key, pop, cache, beta_a, h, scale, evaluate, disc, config, i):
    """First move γ_a → γ_b (``β_b`` chosen on the annealing work, the first move's increment
    evaluated at it), then ``num_moves − 1`` moves at ``β_b``, each with its Crooks increment."""
    k_first, k_rest = jax.random.split(key)
    x = pop.x
    x_new, c_new = _langevin(k_first, x, cache, beta_a, h, scale, evaluate, disc)
    log_p_a, grad_a = cache.log_density(beta_a), cache.grad(beta_a)

    def increment(beta_b):
        return M.langevin_log_increment(
            x, x_new, log_p_a, grad_a, c_new.log_density(beta_b), c_new.grad(beta_b), h, scale
        )

    beta_b = _next_beta(config, i, beta_a, _work_cess(pop.log_weights, cache.log_lik, beta_a))
    inc = increment(beta_b)
    cess = W.conditional_ess(pop.log_weights, inc)
    # Acceptance a Metropolis test at β_b would have had: the increment minus the annealing work.
    proxy = jnp.mean(M.mala_accept(k_first, inc - (beta_b - beta_a) * cache.log_lik)[1])
    pop = pop._replace(x=x_new, log_weights=W.add_increment(pop.log_weights, inc))

    def body(carry, k):
        pop, cache = carry
        x_new, c_new = _langevin(k, pop.x, cache, beta_b, h, scale, evaluate, disc)
        inc = M.langevin_log_increment(
            pop.x, x_new, cache.log_density(beta_b), cache.grad(beta_b),
            c_new.log_density(beta_b), c_new.grad(beta_b), h, scale,
        )
        prob = jnp.mean(M.mala_accept(k, inc)[1])
        return (pop._replace(x=x_new, log_weights=W.add_increment(pop.log_weights, inc)), c_new), prob

    (pop, cache), probs = jax.lax.scan(
        body, (pop, c_new), jax.random.split(k_rest, config.num_moves - 1)
    )
    acc = jnp.mean(jnp.concatenate([proxy[None], probs]))
    return pop, cache, beta_b, cess, acc


def smc_step(state, evaluate, codec, config):
    """One stage of tempered SMC. ``evaluate(x, disc) -> ParticleCache`` (vmapped).

    Pure and vmappable over independent runs; call :func:`check_alive` on the result's
    ``log_weights`` to stop when every particle has failed (the kernel does)."""
    key, k_res, k_move, k_disc = jax.random.split(state.rng_key, 4)
    x, disc = codec.split(state.z)
    i, beta_a, h = state.i, state.beta, state.step_size
    pop = Population(x, state.log_weights, state.log_z_banked)
    log_z_before = state.log_evidence

    if config.move == "mala":
        beta_b = _next_beta(config, i, beta_a, _work_cess(pop.log_weights, state.cache.log_lik, beta_a))
        inc = (beta_b - beta_a) * _finite(state.cache.log_lik)
        cess = W.conditional_ess(pop.log_weights, inc)
        pop = pop._replace(log_weights=W.add_increment(pop.log_weights, inc))
        pop, cache, disc, resampled = maybe_resample(
            k_res, pop, config.resample_threshold, config.resampling, state.cache, disc
        )
        scale, pooled_scale = crossfit_scale(pop, state.scale)
        x, cache, acc = _mala_moves(
            k_move, pop.x, cache, beta_b, h, scale, evaluate, disc, config.num_moves
        )
        pop = pop._replace(x=x)
    else:
        pop, cache, disc, resampled = maybe_resample(
            k_res, pop, config.resample_threshold, config.resampling, state.cache, disc
        )
        scale, pooled_scale = crossfit_scale(pop, state.scale)
        pop, cache, beta_b, cess, acc = _ula_moves(
            k_move, pop, cache, beta_a, h, scale, evaluate, disc, config, i
        )

    if config.discrete_move is not None:
        # Exact Gibbs at the current β leaves ρ_β invariant: no weight increment.
        disc = config.discrete_move(k_disc, beta_b, pop.x, disc)
        cache = evaluate(pop.x, disc)
        pop = pop._replace(
            log_weights=jnp.where(
                jnp.isfinite(cache.log_density(beta_b)), pop.log_weights, -jnp.inf
            )
        )

    pop, cache, disc = replace_dead(pop, cache, disc)
    log_z = pop.log_evidence
    ess = W.ess(pop.log_weights)
    khat = _khat(pop.log_weights)
    new_h = M.adapt_step_size(h, acc, config.target_accept, max_step=config.max_step_size) if (
        config.adapt_step_size
    ) else h
    stats = {
        "beta": beta_b, "ess": ess, "cess": cess, "log_evidence_increment": log_z - log_z_before,
        "acceptance_rate": acc, "step_size": h, "resampled": resampled, "pareto_khat": khat,
    }
    idx = jnp.minimum(i, state.history.beta.shape[0] - 1)
    in_warmup = i < config.num_stages
    history = StageHistory(
        **{
            f: jnp.where(in_warmup, getattr(state.history, f).at[idx].set(v), getattr(state.history, f))
            for f, v in stats.items()
        }
    )
    # The history records the step used at this stage; the state carries the next one.
    stats["step_size"] = new_h
    return SMCState(
        i=i + 1,
        z=codec.merge(pop.x, disc),
        log_weights=pop.log_weights,
        log_z_banked=pop.log_z_banked,
        log_evidence=log_z,
        cache=cache,
        scale=pooled_scale,
        history=history,
        rng_key=key,
        **stats,
    )
