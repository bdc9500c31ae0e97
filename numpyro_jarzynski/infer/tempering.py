"""The tempering path as pure functions: ``log γ_β(x) = log prior(x) + β log lik(x)``.

One stage takes the weighted population from ``β_a`` to ``β_b`` (fixed schedule, or chosen
adaptively, see :func:`_choose_beta`) and moves it. It treats every move (a value from
:mod:`numpyro_jarzynski.engine.kernels`) the same way: reweight by the annealing work
``ΔA = (β_b − β_a) log lik(x)`` at the current state, resample if the ESS is low,
then ``num_moves`` moves at ``γ_{β_b}``. An invariant move (MALA, HMC) adds nothing; an
unadjusted one (ULA, unadjusted HMC) adds its Crooks increment after each move, with a
resampling check between moves. Once the path has ended (``β_a = 1``) an unadjusted move is
replaced by its Metropolis-adjusted twin, so stages at β = 1 only mix and never add weight
noise to the evidence.

**Choosing β.** The adaptive schedule takes the larger of (i) the largest ``β_b`` whose
annealing work keeps the conditional ESS at ``target_ess`` (bisection on ``log Δβ``) and
(ii) the pace that spends what is left of the path evenly over the stages left
(:func:`numpyro_jarzynski.engine.schedules.budget_pace`), so β reaches 1 at the last warmup
stage at the latest and there is never a single forced jump. With ``budget_fill`` (default
0.9) the CESS target of (i) is raised above ``target_ess`` so that the thermodynamic length
still to go (:func:`numpyro_jarzynski.engine.schedules.remaining_length`) is spread over the
stages left before ``budget_fill × num_stages``, instead of reaching β = 1 after a few stages
and leaving the rest of the budget to add nothing to the evidence. A stage whose conditional
ESS falls short is recorded, not hidden (``StageHistory.cess``), and the run report says how
many stages would have been needed.

**Step size.** Moves are preconditioned by the weighted per-coordinate spread of the
population (cross-fitted, diagonal by default; a cross-fitted dense or low-rank factor with
``TemperingConfig.mass``, :mod:`numpyro_jarzynski.engine.preconditioner`). The dimensionless step ``h`` is adapted between stages
from the previous stage's moves only: invariant moves (MALA, HMC) toward the acceptance
``target_accept``; unadjusted moves (ULA, unadjusted HMC) so that the weight noise of a whole
stage (its moves' Crooks terms at fixed β, measured by their conditional ESS) stays at
``target_accept``: ``h ← h·(log ρ* / log ρ)^{e}``, with ``e = 1/3`` for Langevin's ``h³``
discretisation error and ``1/4`` for the leapfrog's ``ε⁴``. More moves per stage therefore
take smaller steps instead of adding noise.

**The stage.** Every move is a value from :mod:`numpyro_jarzynski.engine.kernels`. A stage
books the annealing work ``(β_b − β_a)·log L(x)`` (``β_b`` chosen on its conditional ESS),
resamples if the ESS is low, and applies ``num_moves`` moves at ``γ_b``; an unadjusted move's
Crooks increment goes into the weights, with a resampling check after each move. Once β = 1
an unadjusted move is replaced by its Metropolis-adjusted twin (ULA → MALA, UHMC → HMC), so
stages there only mix and add nothing to the evidence.

**State and record.** :func:`smc_step` returns ``(SMCState, SMCInfo)``, as BlackJAX's
kernels do: the state holds what the next stage needs, the :class:`SMCInfo` what the stage
did. The run loop (``mcmc.run``, the functional ``run``) keeps the records of the annealing
stages in ``state.history`` (:func:`record`).

**Trouble is recorded, not raised.** Every stage's record holds its ESS before resampling, the
number of distinct ancestors it kept, the conditional ESS of every increment it applied, and
the particles that died. A stage at which every particle dies leaves
the state as it was (the last good stage) and sets ``failed``; later stages are no-ops. The
kernel raises and warns from Python after the compiled run
(:mod:`numpyro_jarzynski.infer.report`).
"""

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from numpyro_jarzynski.engine import kernels as K
from numpyro_jarzynski.engine import moves as M
from numpyro_jarzynski.engine import noise as Z
from numpyro_jarzynski.engine import path as P
from numpyro_jarzynski.engine import preconditioner as PC
from numpyro_jarzynski.engine import stage as S
from numpyro_jarzynski.engine import weights as W
from numpyro_jarzynski.engine.population import (
    Population,
    ResampleInfo,
    replace_dead,
)
from numpyro_jarzynski.engine.schedules import budget_pace, fill_target, solve_next_beta


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




class SMCInfo(NamedTuple):
    """What one stage did (BlackJAX's ``info``): :func:`smc_step` returns it beside the new
    state. The run keeps the records of its annealing (warmup) stages, stacked on a leading
    stage axis, as the state's ``history`` (:data:`StageHistory`, written by
    :func:`record`); NumPyro's ``extra_fields`` collects its fields stage by stage.

    ``ess``: normalised Kish ESS after the stage; ``ess_before_resampling``: the smallest ESS
    the stage saw before any resampling (the number that shows a collapse); ``unique_ancestors``:
    fraction of distinct ancestors kept by the stage's resamplings (1 if none);
    ``cess``: conditional ESS of the annealing increment applied at ``beta``;
    ``move_cess``: smallest conditional ESS of the moves' own Crooks increments (1 for
    Metropolis-adjusted moves); ``resampled``: number of resamplings in the stage;
    ``weight_tail_before_resampling``: the record of the weights' tail after the stage's
    annealing increment, before any resampling, and ``weight_tail`` at the end of the stage
    (:func:`~numpyro_jarzynski.engine.weights.weight_tail`, ``(M + 2,)`` per stage): their
    Pareto k-hat, fitted where it is read, is ``pareto_khat_before_resampling`` and
    ``pareto_khat`` (properties; NumPy on a finished run's history, JAX inside ``jit``);
    ``num_dead``: particles that died in the stage (density NaN or infinite, or a
    weight below e^-1000 of the largest); ``num_failed``: those of them whose density or
    increment was not finite (the others were dropped as negligible: exact); ``jump``: how far
    the stage's moves carried the particles, ``Σ_moves E_w‖(x' − x)/s‖²/(2d)`` in units of the
    preconditioner's scale ``s`` (about 1 per move for a kernel that renews the population,
    near 0 when the moves barely move it; 1 for a model with no continuous sites);
    ``num_divergent``: proposals of the stage's moves that landed where the density or its
    gradient is not finite (rejected by adjusted moves; left in place, exactly, by unadjusted
    ones); ``move_index``: the candidate that ``move="auto"`` ran at the stage (an index into
    ``Auto.candidates``; 0 for a fixed move); ``mass_shrinkage``: the weight of the identity
    (the diagonal) in the stage's fitted mass matrix, ``5/(ESS_half + 5)`` for a dense or
    low-rank fit (mean of the two halves), 1 for the diagonal mass or a fit that fell back to
    it (:mod:`numpyro_jarzynski.engine.preconditioner`); ``trial_index``: the candidate that
    ``move="auto"`` ran on a shadow copy of the stage to measure it (−1: none; its gradients
    are spent, its particles discarded), and ``trial_score`` its measured efficiency
    (``min(renewal, 1) × move_cess`` of the shadow stage; NaN: no trial); ``renewal``: how far
    the stage's moves decorrelated the log likelihood (what the next stage's weights are made
    of), ``E_w(ℓ_end − ℓ_start)²/(2 Var_w ℓ_start)`` over the whole block of moves (about 1 for
    a fresh draw, near 0 for moves that leave it where it was; the walkers' start values travel
    with them through any resampling between moves; NaN where the log likelihood does not vary
    over the walkers or the stage does not measure it (waste-free stages, whose kept states
    have no single start), and then ``auto`` scores the coordinates' ``jump`` per move);
    ``num_moves``: the moves the stage ran (``num_moves``, or the count chosen from the
    previous stage's renewal with ``target_renewal``; ``move="auto"``: its candidate's moves
    per stage). Gradients per particle of a stage: ``num_moves`` × the move's gradients per
    move.
    """

    beta: jax.Array
    ess: jax.Array
    ess_before_resampling: jax.Array
    unique_ancestors: jax.Array
    cess: jax.Array
    move_cess: jax.Array
    log_evidence_increment: jax.Array
    acceptance_rate: jax.Array
    step_size: jax.Array
    resampled: jax.Array
    weight_tail: jax.Array
    weight_tail_before_resampling: jax.Array
    num_dead: jax.Array
    num_failed: jax.Array
    jump: jax.Array
    num_divergent: jax.Array
    move_index: jax.Array
    mass_shrinkage: jax.Array
    trial_index: jax.Array
    trial_score: jax.Array
    renewal: jax.Array
    num_moves: jax.Array

    @property
    def pareto_khat(self):
        """PSIS k-hat of the weights at the end of each stage (``-inf``: uniform weights)."""
        return W.khat_of_tail(self.weight_tail)

    @property
    def pareto_khat_before_resampling(self):
        """PSIS k-hat of the weights after each stage's annealing increment."""
        return W.khat_of_tail(self.weight_tail_before_resampling)


# The run's record of its annealing stages: one SMCInfo per stage, stacked on a leading axis.
StageHistory = SMCInfo
STAGE_FIELDS = SMCInfo._fields
INT_STAGE_FIELDS = ("resampled", "num_dead", "num_failed", "num_divergent", "move_index",
                    "trial_index", "num_moves")
# Per-stage records of the weights' tail (a vector per stage), fitted after the run.
TAIL_STAGE_FIELDS = ("weight_tail", "weight_tail_before_resampling")
# The per-stage numbers a finished run reports (the tails replaced by their k-hat).
REPORTED_STAGE_FIELDS = tuple(
    f for f in STAGE_FIELDS if f not in TAIL_STAGE_FIELDS) + (
    "pareto_khat", "pareto_khat_before_resampling")


class AutoState(NamedTuple):
    """Per-candidate bookkeeping of ``move="auto"`` (length 0 for a fixed move): each
    candidate's own step size, its last measured efficiency, and the stage it last ran (−1:
    never)."""

    step_size: jax.Array
    score: jax.Array
    last: jax.Array


class SMCState(NamedTuple):
    """State of one SMC run: what the next stage needs (all particles live in one state),
    and ``history``, the run's record of its annealing stages (one :class:`SMCInfo` each,
    written by the run loop through :func:`record`, never by the stage).

    ``num_dead`` and ``num_failed`` (the dead whose density was not finite; the others had
    negligible weight) count over the whole run. ``ess`` (normalised Kish ESS) and
    ``pareto_khat`` (PSIS k-hat, ``-inf`` for uniform weights) are properties of the current
    weights. ``failed`` is set (and the state frozen at the last good stage) when every
    particle died at stage ``fail_stage`` while moving to ``fail_beta``. ``num_moves``: the
    moves the next stage runs (fixed, or chosen from the last stage's renewal with
    ``target_renewal``). ``eve``: each particle's ancestor in the initial population, carried
    through every resampling, and ``num_resamplings`` their count: from them the property
    ``log_evidence_se`` is the run's own error bar on ``log_evidence`` (Lee & Whiteley's
    estimator, :func:`~numpyro_jarzynski.engine.weights.log_evidence_variance`).

    Collectable with ``mcmc.run(..., extra_fields=(...))``: every field and property here
    (``z``, ``log_weights``, ``beta``, ``log_evidence``, ``step_size``: the step the next
    stage starts from, ``num_dead``, ``ess``, ...) and every field of the stage's
    :class:`SMCInfo` (``cess``, ``log_evidence_increment``, ``acceptance_rate``,
    ``resampled``, ``jump``, ...); a name on both is the state's.
    """

    i: jax.Array
    z: Any
    log_weights: jax.Array
    log_z_banked: jax.Array
    log_evidence: jax.Array
    beta: jax.Array
    step_size: jax.Array
    num_dead: jax.Array
    num_failed: jax.Array
    cache: ParticleCache
    scale: jax.Array
    num_unique: jax.Array  # distinct ancestors left by the last resampling (N if none yet)
    eve: jax.Array  # each particle's ancestor in the initial population (int32 (N,))
    num_resamplings: jax.Array  # resamplings so far (all stages, warmup and after)
    failed: jax.Array
    fail_stage: jax.Array
    fail_beta: jax.Array
    history: StageHistory
    auto: AutoState
    num_moves: jax.Array  # moves the next stage runs (adapted with target_renewal)
    rng_key: jax.Array

    @property
    def ess(self):
        """Normalised Kish ESS of the current weights (one per run of a batch of runs)."""
        return _ess_per_run(self.log_weights)

    @property
    def pareto_khat(self):
        """PSIS k-hat of the current weights (``-inf``: uniform; one per run)."""
        return W.khat_of_tail(_per_run(W.weight_tail, self.log_weights))

    @property
    def log_evidence_se(self):
        """Single-run Monte Carlo standard error of ``log_evidence`` from the particles'
        genealogy (:func:`~numpyro_jarzynski.engine.weights.log_evidence_variance`; one per
        run). It assumes multinomial resampling (the default); with another scheme it is the
        raw estimate, measured 1.0–3.0× too small and sometimes 0 (the run report and
        ``summary`` then give NaN for a run that resampled)."""
        return _log_evidence_se(self.log_weights, self.eve, self.num_resamplings)


def _per_run(fn, log_w, *per_particle):
    """``fn`` of one run's ``(N,)`` log-weights (and other arrays with the same leading
    axes), mapped over the leading (chain) axes."""
    for _ in range(jnp.ndim(log_w) - 1):
        fn = jax.vmap(fn)
    return fn(log_w, *per_particle)


# Jitted: the run report reads it on a finished state, where op-by-op dispatch of a vmapped
# ESS cost 6 ms per call (8.8 against 2.7 ms for the whole report on eight schools).
_ess_per_run = jax.jit(lambda log_w: _per_run(W.ess, log_w))


_log_evidence_se = jax.jit(lambda log_w, eve, resamplings: _per_run(
    lambda a, e, r: jnp.sqrt(W.log_evidence_variance(a, e, r)), log_w, eve, resamplings))


STATE_PROPERTIES = ("ess", "pareto_khat", "log_evidence_se")
INFO_PROPERTIES = ("pareto_khat_before_resampling",)


def field_source(name):
    """Where ``extra_fields`` name ``name`` (``"a"`` or ``"a.b"``) is read: ``"state"``,
    ``"info"`` (the stage's :class:`SMCInfo`), or None (no such field). The state's fields
    come first, then the stage's record, then the state's computed properties."""
    head = str(name).split(".")[0]
    if head in SMCState._fields:
        return "state"
    if head in SMCInfo._fields or head in INFO_PROPERTIES:
        return "info"
    if head in STATE_PROPERTIES:
        return "state"
    return None


def blank_info(num_particles, dtype):
    """The record of a stage that did not run (NaN, zero counts): a failed run's stages."""
    nan = jnp.full((), jnp.nan, dtype)
    tail = jnp.full((W.tail_record_size(num_particles),), jnp.nan, dtype)
    return SMCInfo(**{f: (jnp.zeros((), jnp.int32) if f in INT_STAGE_FIELDS
                          else tail if f in TAIL_STAGE_FIELDS else nan)
                      for f in STAGE_FIELDS})


def record(state, info):
    """``state`` with the record ``info`` of the stage it just ran (stage ``state.i − 1``)
    written into ``history`` if that stage was an annealing one (sampling stages at β = 1
    are not recorded: NumPyro's collection holds them)."""
    h = state.history
    idx = state.i - 1
    inside = idx < h.beta.shape[0]
    at = jnp.clip(idx, 0, h.beta.shape[0] - 1)
    return state._replace(history=jax.tree.map(
        lambda a, v: jnp.where(inside, a.at[at].set(v.astype(a.dtype)), a), h, info))


_DEFAULT_MOVE = K.MALA()


@dataclass(frozen=True)
class TemperingConfig:
    """Static settings of a tempering run (hashable: part of the compiled program)."""

    move: Any = _DEFAULT_MOVE  # a move value (numpyro_jarzynski.engine.kernels)
    num_moves: int = 2
    num_stages: int = 100
    schedule: tuple | None = None  # None = adaptive
    target_ess: float = 0.9
    budget_fill: float | None = None  # plan β = 1 at this fraction of the stages (None: ASAP)
    min_increment: float = 1e-20
    resample_threshold: float = 0.5
    resampling: Any = "multinomial"  # JarzynskiSMC's default (the error bar assumes it)
    adapt_step_size: bool = True
    target_accept: float = 0.65
    discrete_move: Callable | None = None  # (key, beta, x, disc) -> disc, after each move
    discrete_first: bool = False  # the Gibbs update before the continuous move, not after
    discrete_changes_density: bool = True  # False: every discrete site is summed out of log γ
    waste_free: bool = False  # resample N/(num_moves+1) and keep every state of their chains
    mass: Any = PC.DIAGONAL  # the preconditioner fitted per stage (diagonal, dense, low rank)
    # Moves per stage chosen from the previous stage's renewal of the log likelihood (None:
    # num_moves every stage); between num_moves and max_moves.
    target_renewal: float | None = None
    max_moves: int | None = None


class Codec(NamedTuple):
    """Maps the user-facing particle dict ``z`` to (flat continuous ``x`` (N, d), discrete)."""

    split: Callable
    merge: Callable


# A population whose last resampling kept fewer distinct ancestors than this has collapsed:
# its conditional ESS is trivially near 1 for any β, so it cannot certify the next step.
COLLAPSED_ANCESTORS = 10


def _finite(v):
    return jnp.where(jnp.isfinite(v), v, -jnp.inf)


def init_state(rng_key, z, log_weights, cache, step_size, num_stages, codec, auto_steps=(),
               num_moves=1):
    """The state before the first stage. ``auto_steps``: the initial step of every candidate
    of ``move="auto"`` (empty for a fixed move); ``num_moves``: the first stage's moves."""
    x, _ = codec.split(z)
    log_weights = jnp.where(
        jnp.isfinite(cache.log_prior) & jnp.isfinite(cache.log_lik), W.sanitize(log_weights), -jnp.inf
    )
    pop = Population(x, log_weights, jnp.zeros((), x.dtype))
    all_dead = jnp.all(~jnp.isfinite(log_weights))
    pop, cache, z = replace_dead(pop, cache, z)
    dtype = x.dtype
    n = log_weights.shape[0]
    scale = _spread(pop.log_weights, pop.x, jnp.ones(x.shape[-1], dtype))
    h = max(num_stages, 1)
    history = jax.tree.map(lambda a: jnp.broadcast_to(a, (h, *a.shape)), blank_info(n, dtype))
    zero = jnp.zeros((), dtype)
    return SMCState(
        i=jnp.zeros((), jnp.int32),
        z=z,
        log_weights=pop.log_weights,
        log_z_banked=zero,
        log_evidence=W.log_mean_exp(pop.log_weights),
        beta=zero,
        step_size=jnp.asarray(step_size, dtype),
        num_dead=jnp.sum(~jnp.isfinite(log_weights)).astype(jnp.int32),
        num_failed=jnp.sum(~jnp.isfinite(log_weights)).astype(jnp.int32),
        cache=cache,
        scale=scale,
        num_unique=jnp.asarray(n, jnp.int32),
        eve=jnp.arange(n, dtype=jnp.int32),
        num_resamplings=jnp.zeros((), jnp.int32),
        failed=all_dead,
        fail_stage=jnp.where(all_dead, 0, -1).astype(jnp.int32),
        fail_beta=zero,
        history=history,
        auto=AutoState(
            jnp.asarray(auto_steps, dtype).reshape(-1),
            jnp.full((len(auto_steps),), jnp.nan, dtype),
            jnp.full((len(auto_steps),), -1, jnp.int32),
        ),
        num_moves=jnp.asarray(num_moves, jnp.int32),
        rng_key=rng_key,
    )


_spread = PC.spread


def crossfit_scale(pop, fallback, mass=PC.DIAGONAL):
    """Cross-fitted preconditioner: each half of the population is moved with the factor
    fitted on the *other* half (diagonal: a per-particle ``(N, d)`` spread; dense or low rank:
    a stacked factor, :func:`numpyro_jarzynski.engine.preconditioner.crossfit`). Also returns
    ``(pooled, shrinkage)``: the pooled ``(d,)`` spread, kept in the state as the fallback for
    the next stage, and the weight of the identity in the fit (``StageHistory``).

    A scale estimated from the particles it then moves feeds each particle's own position
    back into its kernel. MALA's weights do not depend on the kernel, but ULA's Crooks
    increment does, and that self-influence biased log Z upward by O(d/N) (+0.85 nat at
    N = 256, d = 50). Cross-fitting removes the first-order term. Resampled indices are
    sorted (:func:`numpyro_jarzynski.engine.population.resample`), so copies of one
    ancestor sit together and land in the same half.
    """
    scale, pooled, shrinkage = PC.crossfit(mass, pop.log_weights, pop.x, fallback)
    return scale, (pooled, shrinkage)


def _choose_beta(config, state, cess_of):
    """Target ``β_b`` of stage ``i`` and the stage's noise share (below).

    Fixed schedules: their entry (1 after warmup). Adaptive: the larger of the CESS-targeted
    step and the budget pace (module docstring); a collapsed population (its last resampling
    kept fewer than :data:`COLLAPSED_ANCESTORS` ancestors) cannot certify a CESS step, so it
    follows the pace only. β = 1 from the last warmup stage on (the pace gives 1 there).

    The CESS target is ``target_ess``, or higher with ``budget_fill``
    (:func:`~numpyro_jarzynski.engine.schedules.fill_target`). The noise share
    ``log target / log target_ess ∈ (0, 1]`` is the fraction of ``target_ess``'s weight noise
    the stage's annealing step was allowed; an unadjusted move's Crooks noise per stage is
    held to the same fraction of ``target_accept``'s (:func:`_run_kernel`), so that a budget
    spread over more, smaller stages does not add up more Crooks noise.
    """
    i, beta_a = state.i, state.beta
    after = i >= config.num_stages
    one = jnp.ones((), beta_a.dtype)
    if config.schedule is not None:
        sched = jnp.asarray(np.asarray(config.schedule), beta_a.dtype)
        return jnp.where(after, 1.0, sched[jnp.minimum(i, config.num_stages - 1)]), one
    remaining = (config.num_stages - i).astype(beta_a.dtype)
    target, share = config.target_ess, one
    if config.budget_fill is not None:
        planned = jnp.ceil(config.budget_fill * config.num_stages) - i
        target = fill_target(state.log_weights, state.cache.log_lik, beta_a, planned,
                             config.target_ess)
        share = jnp.clip(jnp.log(target) / np.log(config.target_ess), 1e-3, 1.0)
    bisect = solve_next_beta(cess_of, beta_a, target, config.min_increment)
    pace = budget_pace(beta_a, remaining)
    collapsed = (state.num_unique < COLLAPSED_ANCESTORS) & (beta_a > 0)
    beta_b = jnp.where(collapsed, pace, jnp.maximum(bisect, pace))
    return jnp.where(after | (remaining <= 1), 1.0, beta_b), share.astype(beta_a.dtype)


def _work_cess(log_w, path, x, cache, beta_a):
    """CESS of the path's annealing work ``(β_b − β_a) log lik(x)`` as a function of ``β_b``.

    Both moves choose ``β_b`` with it. For ULA the realised increment also carries the
    move's own discretisation term, whose spread does not vanish as ``β_b → β_a``, so a
    criterion on the full increment could stall; the work term is the part ``β_b`` controls.
    """
    cess = W.conditional_ess_fn(log_w)  # the weights' part, once for every candidate β_b
    return lambda beta_b: cess(path.increment(x, cache, beta_a, beta_b))


class _Moved(NamedTuple):
    """What a stage's move block hands back to :func:`smc_step`."""

    pop: Population
    cache: ParticleCache
    disc: Any
    beta_b: jax.Array
    cess: jax.Array  # CESS of the annealing increment
    move_cess: jax.Array  # smallest CESS of the moves' own increments (1: none)
    noise: jax.Array  # −Σ log CESS of the moves' own increments (ULA step rule)
    acceptance: jax.Array
    resample: ResampleInfo  # worst of the stage's resampling checks
    tail_before: jax.Array  # record of the weights' tail after the annealing increment
    num_dead: jax.Array  # particles killed by the stage's increments
    num_failed: jax.Array  # of which with a non-finite density or increment
    jump: jax.Array  # squared jump of the stage's moves in units of the scale (StageHistory)
    num_divergent: jax.Array  # proposals that landed on a non-finite density
    tail_after: jax.Array  # record of the weights' tail at the end of the stage
    noise_share: jax.Array  # fraction of target_accept's Crooks noise allowed (_choose_beta)
    renewal: jax.Array  # the moves' renewal of the log likelihood (SMCInfo; move="auto")


def _move_stage(key, state, pop, disc, evaluate, config, kernel):
    """The engine's stage (:func:`numpyro_jarzynski.engine.stage.advance`) on the tempering
    path (:class:`~numpyro_jarzynski.engine.path.TemperingPath`): reweight by the annealing
    work ``(β_b − β_a)·log L`` (``β_b`` chosen on its CESS), resample if the ESS is low, fit
    the cross-fitted preconditioner, then ``num_moves`` moves of ``kernel`` at ``γ_b``, each
    followed (or preceded) by the Gibbs update of the discrete sites when the model has any;
    dead particles get a live position."""
    beta_a, h = state.beta, state.step_size
    path = P.TemperingPath(evaluate)
    beta_b, share = _choose_beta(config, state,
                          _work_cess(pop.log_weights, path, pop.x, state.cache, beta_a))
    gibbs = config.discrete_move
    hook = None
    if gibbs is not None:
        def hook(k, pop, cache, disc):
            # Exact Gibbs at β_b leaves ρ_β invariant: no weight increment. The densities
            # and gradients depend on the discrete state, so the cache is evaluated afresh.
            disc = gibbs(k, beta_b, pop.x, disc)
            if not config.discrete_changes_density:  # collapsed sites: log γ is unchanged
                return pop, cache, disc, jnp.zeros((), jnp.int32)
            cache = evaluate(pop.x, disc)
            new_w = jnp.where(jnp.isfinite(cache.log_density(beta_b)), pop.log_weights,
                              -jnp.inf)
            return pop._replace(log_weights=new_w), cache, disc, S.deaths(pop.log_weights, new_w)

    continuous = kernel if pop.x.shape[-1] > 0 else None
    scale_fn = lambda p: crossfit_scale(p, state.scale, config.mass)
    pop, cache, disc, pooled, info = S.advance(
        key, pop, state.cache, path, beta_a, beta_b, continuous, h, scale_fn,
        _stage_moves(state, config), config.resample_threshold, config.resampling, extra=disc,
        hook=hook, hook_first=config.discrete_first, waste_free=config.waste_free,
        max_moves=config.max_moves if config.target_renewal is not None else None,
    )
    # An invariant move without a Gibbs hook leaves the weights as recorded (or uniform
    # after a resampling): the stage knows their tail without a second top-k.
    tail_after = W.weight_tail(pop.log_weights) if info.tail_after is None else info.tail_after
    return _Moved(pop, cache, disc, beta_b, info.cess, info.move_cess, info.noise,
                  info.acceptance, info.resample, info.tail_before, info.num_dead,
                  info.num_failed, info.jump,
                  info.num_divergent, tail_after, share,
                  jnp.full((), jnp.nan, info.jump.dtype) if info.renewal is None
                  else info.renewal), pooled


def _stage_moves(state, config):
    """The moves of this stage: ``config.num_moves``, or with ``target_renewal`` the count
    the previous stage chose (``state.num_moves``, traced)."""
    return config.num_moves if config.target_renewal is None else state.num_moves


# The first step is tuned on this many independent prior draws, over this many rounds.
PILOT_PARTICLES = 256
PILOT_ROUNDS = 8
PILOT_GRID = 16  # the tuned first step is rounded to a grid of e^{1/PILOT_GRID}


def pilot_step(key, x, cache, disc, evaluate, kernel, step_size, target, num_moves,
               mass=PC.DIAGONAL):
    """The first stage's step, tuned at β = 0 on *independent* prior draws ``(x, cache, disc)``
    (never the population the stage will move, so the step does not bias log Z).

    Every round moves the same draws once at the current step and applies the stage's own
    rule to what it measured, as if that move had been a stage: toward ``target`` mean
    acceptance for an invariant move, toward a stage's Crooks-noise CESS ``target`` for an
    unadjusted one (``num_moves`` moves' worth of noise), and for the Hamiltonian moves within a
    quarter period, under the preconditioner ``mass`` the stages use. A default step that
    suits a Gaussian can be far too large for a prior with
    a funnel (stochastic volatility's random walk under a small scale): every MALA and HMC
    proposal of the first stage was rejected there, and ULA's first step threw the walkers of
    the neck away for good. ``PILOT_ROUNDS`` rounds move the step by up to a factor
    ``e^{±0.65·rounds}`` (acceptance) or ``10^{-rounds}``…``1.3^{rounds}`` (noise)."""
    lw = jnp.zeros(x.shape[:1], x.dtype)
    # The preconditioner the stages will use (diagonal, dense or low rank), fitted on the
    # pilot's own draws: a step tuned under the diagonal is far too small for a dense mass.
    scale, _ = crossfit_scale(Population(x, lw, jnp.zeros((), x.dtype)),
                              _spread(lw, x, jnp.ones(x.shape[-1], x.dtype)), mass)
    tgt = P.TemperingPath(evaluate).target(jnp.zeros((), x.dtype))(disc)

    def round_(h, k):
        out = kernel.step(k, x, cache, tgt, h, scale)
        acc = jnp.mean(out.acceptance)
        if kernel.invariant:
            new_h = M.adapt_step_size(h, acc, target, max_step=kernel.max_step)
        else:
            cess = W.conditional_ess(lw, out.log_increment)
            noise = -num_moves * jnp.log(jnp.clip(cess, 1e-30, 1.0))
            new_h = _noise_step_rule(h, noise, target, kernel.max_step, kernel.noise_exponent)
        if isinstance(kernel, K._Hamiltonian):
            jump = S.jump(lw, x, out.x, scale)
            new_h = jnp.minimum(new_h, kernel.trajectory_cap(
                h, jump, acc if kernel.invariant else jnp.ones_like(acc)))
        return jnp.asarray(new_h, h.dtype), None

    h, _ = jax.lax.scan(round_, jnp.asarray(step_size, x.dtype), Z.split(key, PILOT_ROUNDS))
    # On a grid of e^{1/16} (6 %), so that the rounding of a differently partitioned program
    # (particles sharded over devices) cannot change the first step, and with it every
    # Metropolis decision after it: the same key gives the same run on any number of devices.
    h = jnp.exp(jnp.round(PILOT_GRID * jnp.log(h)) / PILOT_GRID)
    return jnp.minimum(h, kernel.max_step).astype(x.dtype)


def _noise_step_rule(h, noise, target, max_step, exponent):
    """``h ← h·(log ρ*/log ρ)^{e}``: the stage's Crooks noise (variance ``−log CESS``) grows
    like ``h^{1/e}`` (ULA ``h³``, unadjusted HMC ``ε⁴``); the factor is kept in [0.1, 1.3] per
    stage and ``h`` at most ``max_step``."""
    want = -jnp.log(target)
    factor = jnp.clip((want / jnp.maximum(noise, 1e-8)) ** exponent, 0.1, 1.3)
    return jnp.minimum(h * factor, max_step)


def smc_step(state, evaluate, codec, config):
    """One stage of tempered SMC: ``(new state, its SMCInfo)``. ``evaluate(x, disc) ->
    ParticleCache`` (vmapped).

    Pure and vmappable over independent runs. A stage at which every particle dies returns
    the state it was given with ``failed`` set (and a blank record); a failed state passes
    through unchanged. The stage does not write ``history``: the run loop does
    (:func:`record`).
    """
    blank = blank_info(state.log_weights.shape[-1], state.log_weights.dtype)
    return jax.lax.cond(
        state.failed,
        lambda s: (s._replace(i=s.i + 1), blank),
        lambda s: _guarded_stage(s, evaluate, codec, config, blank),
        state,
    )


def _guarded_stage(state, evaluate, codec, config, blank):
    new, info = _stage(state, evaluate, codec, config)
    all_dead = jnp.all(~jnp.isfinite(new.log_weights))
    frozen = state._replace(
        i=state.i + 1, failed=jnp.ones((), bool), fail_stage=state.i, fail_beta=new.beta,
        rng_key=new.rng_key,
    )
    # A cond, not a select over every leaf: the state holds N × d arrays (walkers, cache)
    # and a stage where every walker dies is rare (under vmap the cond is a select anyway).
    return jax.lax.cond(all_dead, lambda: (frozen, blank), lambda: (new, info))


def _stage(state, evaluate, codec, config):
    key, k_stage, k_trial = Z.split(state.rng_key, 3)
    x, disc = codec.split(state.z)
    i, h = state.i, state.step_size
    pop = Population(x, state.log_weights, state.log_z_banked, state.eve)
    log_z_before = state.log_evidence

    kernel = config.move
    trial, trial_score = jnp.full((), -1, jnp.int32), jnp.full((), jnp.nan)
    if isinstance(kernel, K.Auto):
        idx, trial = _auto_choice(state.auto, i, kernel)
        moves = kernel.moves_per_stage(config.num_moves)

        def branch(c, m):
            cfg = replace(config, num_moves=m, target_accept=c.default_target)
            return lambda k, j: _run_kernel(k, state, pop, disc, evaluate, cfg, c,
                                            state.auto.step_size[j])

        branches = [branch(c, m) for c, m in zip(kernel.candidates, moves)]
        # The moving candidate and the trial (the same stage on a shadow copy, its own key)
        # are two iterations of one scan, so that every candidate's stage is traced and
        # compiled once; "no trial" is a branch that returns zeros of the same structure.
        blank = jax.eval_shape(branches[0], k_stage, idx)
        skip = lambda k, j: jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), blank)

        def one(carry, inputs):
            k, j = inputs
            return carry, jax.lax.switch(jnp.where(j >= 0, j, len(branches)),
                                         branches + [skip], k, jnp.maximum(j, 0))

        _, both = jax.lax.scan(one, None, (jnp.stack([k_stage, k_trial]),
                                           jnp.stack([idx, trial])))
        first, second = (jax.tree.map(lambda a, t=t: a[t], both) for t in (0, 1))

        def measured(auto, j, moved, new_h):
            # The log likelihood's renewal is credited up to one fresh draw: farther is not
            # more renewal but an unstable move (ULA thrown out of a funnel's neck).
            # Where it is undefined (a likelihood that does not vary), the coordinates' jump
            # per move stands in.
            per_move = moved.jump / jnp.asarray(moves, moved.jump.dtype)[j]
            renewal = jnp.minimum(jnp.where(jnp.isfinite(moved.renewal), moved.renewal,
                                            per_move), 1.0)
            return AutoState(auto.step_size.at[j].set(new_h),
                             auto.score.at[j].set(_finite(renewal * moved.move_cess)),
                             auto.last.at[j].set(i))

        moved, pooled, new_h = first
        h = state.auto.step_size[idx]
        auto = measured(state.auto, idx, moved, new_h)
        # Only the trial's score and adapted step are kept (read from the next stage on); its
        # particles are discarded.
        j = jnp.maximum(trial, 0)
        tried = measured(auto, j, second[0], second[2])
        auto = jax.tree.map(lambda a, b: jnp.where(trial >= 0, a, b), tried, auto)
        trial_score = jnp.where(trial >= 0, auto.score[j], jnp.nan)
        count = jnp.asarray(moves, jnp.int32)[idx]
    else:
        idx, auto = jnp.zeros((), jnp.int32), state.auto
        moved, pooled, new_h = _run_kernel(k_stage, state, pop, disc, evaluate, config, kernel, h)
        count = jnp.asarray(_stage_moves(state, config), jnp.int32)
    next_count = state.num_moves
    if config.target_renewal is not None:
        next_count = M.moves_for_renewal(count, moved.renewal, config.target_renewal,
                                         config.num_moves, config.max_moves)
    pop, cache, disc, beta_b = moved.pop, moved.cache, moved.disc, moved.beta_b
    pooled, shrinkage = pooled
    num_dead = moved.num_dead

    res = moved.resample
    log_z = pop.log_evidence
    ess = W.ess(pop.log_weights)
    tail = moved.tail_after
    n = pop.log_weights.shape[0]
    info = SMCInfo(
        beta=beta_b, ess=ess,
        ess_before_resampling=jnp.minimum(res.ess_before, ess),
        unique_ancestors=res.num_unique / n,
        cess=moved.cess, move_cess=moved.move_cess,
        log_evidence_increment=log_z - log_z_before,
        acceptance_rate=moved.acceptance, step_size=h,
        resampled=res.resampled, weight_tail=tail,
        weight_tail_before_resampling=moved.tail_before, num_dead=num_dead,
        num_failed=moved.num_failed,
        jump=moved.jump, num_divergent=moved.num_divergent, move_index=idx,
        mass_shrinkage=shrinkage, trial_index=trial, trial_score=trial_score,
        renewal=moved.renewal, num_moves=count,
    )
    info = SMCInfo(*(jnp.asarray(v, jnp.int32 if f in INT_STAGE_FIELDS else ess.dtype)
                     for f, v in zip(STAGE_FIELDS, info)))
    num_unique = jnp.where(res.resampled > 0, res.num_unique, state.num_unique)
    return state._replace(
        i=i + 1,
        z=codec.merge(pop.x, disc),
        log_weights=pop.log_weights,
        log_z_banked=pop.log_z_banked,
        log_evidence=log_z,
        beta=beta_b,
        step_size=new_h,
        num_dead=state.num_dead + num_dead,
        num_failed=state.num_failed + moved.num_failed,
        cache=cache,
        scale=pooled,
        num_unique=num_unique,
        eve=pop.eve,
        num_resamplings=state.num_resamplings + res.resampled.astype(jnp.int32),
        auto=auto,
        num_moves=next_count,
        rng_key=key,
    ), info


def _run_kernel(key, state, pop, disc, evaluate, config, kernel, h):
    """The move block of a stage with one kernel at step ``h``: ``(moved, pooled, new h)``.

    An unadjusted kernel runs as its Metropolis-adjusted twin once β = 1 (nothing is left to
    anneal, so its proposals only mix). The step for the next stage is adapted from this
    stage's moves only (acceptance, or the Crooks noise at fixed β)."""
    beta_a = state.beta
    state = state._replace(step_size=h)
    # The switch is around the move only: the rest of the stage is compiled once. At β = 1
    # the adjusted twin's increment is zero, so the unadjusted move's bookkeeping around it
    # (a reweighting by 0; resampling checks between moves, which can fire only where a
    # Gibbs update killed walkers) leaves the weights as they were.
    move = kernel if kernel.invariant else K.Switch(kernel, kernel.adjusted(), beta_a >= 1.0)
    moved, pooled = _move_stage(key, state, pop, disc, evaluate, config, move)
    count = jnp.asarray(_stage_moves(state, config), moved.jump.dtype)
    if not config.adapt_step_size:
        new_h = h
    elif kernel.invariant:
        new_h = M.adapt_step_size(h, moved.acceptance, config.target_accept,
                                  max_step=kernel.max_step)
    else:
        # With a number of moves chosen per stage, the step keeps num_moves moves' noise at
        # the target: the noise of the moves run, scaled to num_moves of them.
        noise = moved.noise * (config.num_moves / count)
        new_h = jnp.where(
            beta_a >= 1.0,
            M.adapt_step_size(h, moved.acceptance, kernel.adjusted().default_target,
                              max_step=kernel.max_step),
            _noise_step_rule(h, noise / moved.noise_share, config.target_accept,
                             kernel.max_step, kernel.noise_exponent),
        )
    if config.adapt_step_size and isinstance(kernel, K._Hamiltonian):
        # Jump per move (a waste-free stage records half of its chains' summed jump).
        per_move = moved.jump * (2.0 if config.waste_free else 1.0) / count
        moved_fraction = (moved.acceptance if kernel.invariant
                          else jnp.where(beta_a >= 1.0, moved.acceptance, 1.0))
        new_h = jnp.minimum(new_h, kernel.trajectory_cap(h, per_move, moved_fraction))
    return moved, pooled, jnp.asarray(new_h, h.dtype)


def _auto_choice(auto, i, kernel):
    """``(candidate that moves the population at stage i, candidate tried on a shadow copy or
    −1)`` for ``move="auto"``. The population is moved by the best last score, or, before any
    score exists, by the first invariant candidate. The trial is the first candidate never
    measured, then, every ``explore``-th stage, the one measured longest ago; never the
    candidate that moves."""
    scored = auto.last >= 0
    first = next((j for j, c in enumerate(kernel.candidates) if c.invariant), 0)
    best = jnp.argmax(jnp.where(scored & jnp.isfinite(auto.score), auto.score, -jnp.inf))
    real = jnp.where(jnp.any(scored), best, first).astype(jnp.int32)
    others = jnp.arange(auto.last.shape[0]) != real
    untried = ~scored & others
    stale = jnp.argmin(jnp.where(others, auto.last, jnp.iinfo(auto.last.dtype).max))
    explore = (i % kernel.explore == kernel.explore - 1) & jnp.any(others)
    trial = jnp.where(jnp.any(untried), jnp.argmax(untried), jnp.where(explore, stale, -1))
    return real, trial.astype(jnp.int32)

