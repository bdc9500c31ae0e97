"""The run report: what a finished ``JarzynskiSMC`` run has to say, computed on the host.

The compiled stages record trouble in the state (``SMCState.failed``, ``num_dead`` and the
per-stage :class:`~numpyro_jarzynski.infer.tempering.StageHistory`) and never raise. After
``mcmc.run`` returns, :func:`run_health` reads that record and :func:`report_run` turns it
into one ``UserWarning`` per problem (and a ``FloatingPointError`` when every particle
died). The same messages are repeated by :func:`numpyro_jarzynski.diagnostics.summary`.

What is checked, per run (chain), with the thresholds below (``docs/trust.md``):

* **failure**: every particle died at some stage (the state is the last good stage's);
* **collapse**: a stage whose ESS *before* resampling fell below :data:`COLLAPSE_PARTICLES`
  particles, or whose resampling kept fewer distinct ancestors than that (after resampling the
  Kish ESS is N and k-hat is −inf whatever happened, so these are the numbers that see it);
* **unsafe jumps**: an annealing increment applied with conditional ESS below
  :data:`UNSAFE_CESS` (the stage budget was too small for the path);
* **short budget**: no step below :data:`UNSAFE_CESS`, but the schedule needed more than
  :data:`SHORT_BUDGET` times the stages it had (its steps fell well below ``target_ess``);
* **unstable moves**: an unadjusted move whose own Crooks increment had conditional ESS below
  :data:`UNSAFE_CESS` (the step was unstable for the preconditioner);
* **dead particles**: how many died (NaN or infinite density), first where;
* **poor mixing**: between two resamplings the moves carried the particles a median squared
  distance below :data:`POOR_RENEWAL` of their spread (``StageHistory.jump``), so the copies a
  resampling makes stay together and the error is larger than the other checks show;
* **divergences**: more than :data:`DIVERGENT_FRACTION` of a stage's proposals landed where
  the density or its gradient is not finite (kept exact, but the moves did little);
* **heavy tails**: Pareto k-hat of the weights before resampling above 0.7 at some stage;
* **final population**: ESS below :data:`COLLAPSE_PARTICLES` particles.

Across runs (chains), :func:`disagreement` compares the spread of the runs' log evidence with
each run's own error bar (``SMCState.log_evidence_se``, from the particles' genealogy): runs
that disagree by more than their error bars allow (χ² test at level :data:`DISAGREE_LEVEL`)
missed different parts of the posterior, which no single-run check can see.
"""

import dataclasses
import math
import warnings

import jax
import numpy as np

COLLAPSE_PARTICLES = 10
UNSAFE_CESS = 0.1
KHAT_THRESHOLD = 0.7
POOR_RENEWAL = 0.4
DIVERGENT_FRACTION = 0.1
SHORT_BUDGET = 2.5  # warn when the stages needed exceed the budget by this factor
IDLE_STAGES = 10  # k-hat advice: a budget with this many stages (and half) idle at β = 1
DISAGREE_LEVEL = 1e-3  # false-alarm rate of the runs' agreement test when the error bars hold


class SMCFailure(FloatingPointError):
    """Every particle of a run died. ``state`` is the last good state (``mcmc.last_state`` is
    the same), ``chain``, ``stage`` and ``beta`` say where it happened."""

    def __init__(self, message, state=None, chain=0, stage=-1, beta=float("nan")):
        super().__init__(message)
        self.state, self.chain, self.stage, self.beta = state, chain, stage, beta


@dataclasses.dataclass
class RunHealth:
    """Health record of one SMC run (one chain), from its stage history and final state."""

    chain: int
    num_particles: int
    num_stages: int
    final_ess: float  # normalised
    min_ess_before_resampling: float
    min_ess_stage: int
    min_unique_ancestors: float  # fraction
    min_unique_stage: int
    min_cess: float
    min_cess_stage: int
    num_unsafe_stages: int
    min_move_cess: float
    min_move_stage: int
    num_unstable_stages: int
    num_step_reductions: int
    num_dead: int  # particles that died (weight −inf), for any reason
    num_failed: int  # of which with a density (or increment) that was not finite
    first_dead_stage: int  # first stage where one failed (−1: none, or only initial draws)
    max_khat_before_resampling: float
    max_khat_stage: int
    median_renewal: float  # median squared jump of the moves between two resamplings
    max_divergent_fraction: float  # largest fraction of a stage's proposals that diverged
    max_divergent_stage: int
    suggested_num_warmup: int
    failed: bool
    fail_stage: int
    fail_beta: float
    betas: np.ndarray = dataclasses.field(repr=False)
    log_evidence: float = float("nan")
    log_evidence_se: float = float("nan")  # single-run error bar (genealogy), nat

    @property
    def anneal_stages(self):
        """Stages up to and including the first at β = 1 (all of them if β never got there):
        the annealing; the rest only mixed at β = 1."""
        at_one = np.flatnonzero(self.betas >= 1.0)
        return int(at_one[0]) + 1 if at_one.size else int(self.betas.size)

    def beta_at(self, stage):
        return float(self.betas[stage]) if 0 <= stage < len(self.betas) else float("nan")

    @property
    def collapsed(self):
        n = self.num_particles
        return (self.min_ess_before_resampling * n < COLLAPSE_PARTICLES) or (
            self.min_unique_ancestors * n < COLLAPSE_PARTICLES
        )

    def as_dict(self):
        d = dataclasses.asdict(self)
        d.pop("betas")
        return d


def _argmin(v):
    v = np.where(np.isfinite(v), v, np.inf)
    i = int(np.argmin(v)) if v.size else -1
    return (float(v[i]) if i >= 0 and np.isfinite(v[i]) else float("nan")), i


def _needed_stages(cess, betas, target):
    """Stages an adaptive schedule at ``target`` would have used: a step of conditional ESS
    ``c`` is ``sqrt(log c / log target)`` target-sized steps (log-normal weights)."""
    c = np.clip(np.where(np.isfinite(cess), cess, 1.0), 1e-12, 1.0)
    anneal = np.concatenate([[True], betas[:-1] < 1.0]) if betas.size else betas.astype(bool)
    steps = np.sqrt(np.log(c) / math.log(target))[anneal & np.isfinite(betas)]
    return int(max(1, math.ceil(np.sum(steps) - 1e-6)))


def _idle_budget(h):
    """Whether most of the run's stages came after β = 1, where they add nothing to the
    evidence: the same budget could have annealed more slowly (``budget_fill``, or a higher
    ``target_ess``)."""
    idle = h.num_stages - h.anneal_stages
    return h.anneal_stages > 0 and idle >= IDLE_STAGES and idle >= h.anneal_stages


def _renewals(jump, resampled, betas):
    """How far the moves carried the particles between one resampling and the next, during
    the annealing: the sum of the stages' ``jump`` from a stage that resampled up to the next
    one. Duplicates made by a resampling are only told apart by the moves after it."""
    if not betas.size:
        return np.zeros(0)
    anneal = np.concatenate([[True], betas[:-1] < 1.0])
    jump = np.where(np.isfinite(jump), jump, 0.0)[anneal]
    starts = np.flatnonzero(resampled[anneal] > 0)
    ends = np.append(starts[1:], jump.size)
    return np.array([jump[a:b].sum() for a, b in zip(starts, ends)])


def _chain_view(tree, c, num_chains):
    def pick(v):
        v = np.asarray(jax.device_get(v))
        return v[c] if num_chains > 1 else v

    return jax.tree.map(pick, tree)


def run_health(state, num_particles, target_ess=0.9, num_chains=None, num_moves=1,
               multinomial=True):
    """:class:`RunHealth` of every run in ``state`` (an ``SMCState``, with a leading chain axis
    when there are several runs). Returns a list, one entry per chain.

    ``multinomial``: whether the run resampled multinomially. The single-run error bar
    (``log_evidence_se``) assumes it; with another scheme a run that resampled gets NaN (the
    estimator was measured 1.0–3.0× too small there, and 0 in some runs)."""
    # One transfer of everything the report reads (not one per array and chain).
    history, fields = jax.device_get((state.history, (
        state.beta, state.ess, state.num_dead, state.num_failed, state.failed,
        state.fail_stage, state.fail_beta, state.log_evidence, state.log_evidence_se,
        state.num_resamplings)))
    beta = np.asarray(fields[0])
    if num_chains is None:
        num_chains = int(beta.shape[0]) if beta.ndim else 1
    out = []
    for c in range(num_chains):
        h = _chain_view(history, c, num_chains)
        (ess, num_dead, num_failed, failed, fail_stage, fail_beta, log_z, log_z_se,
         resamplings) = _chain_view(fields[1:], c, num_chains)
        if failed or (not multinomial and resamplings > 0):
            log_z_se = float("nan")  # a frozen run, or the estimator's assumption fails
        ran = np.isfinite(h.beta)
        n_run = int(np.sum(ran))
        ess_b, ess_i = _argmin(h.ess_before_resampling[ran])
        uniq, uniq_i = _argmin(h.unique_ancestors[ran])
        cess, cess_i = _argmin(h.cess[ran])
        move, move_i = _argmin(h.move_cess[ran])
        khat = h.pareto_khat_before_resampling[ran]
        khat = np.where(np.isnan(khat), -np.inf, khat)  # NaN: undefined (tied lattice weights)
        kh_i = int(np.argmax(khat)) if khat.size else -1
        dead_stages = np.flatnonzero(h.num_failed[ran] > 0)
        steps = h.step_size[ran]
        same = h.move_index[ran][1:] == h.move_index[ran][:-1]  # move="auto" switches steps
        reductions = int(np.sum(same & (steps[1:] < 0.5 * steps[:-1]))) if steps.size > 1 else 0
        renewal = _renewals(h.jump[ran], h.resampled[ran], h.beta[ran])
        # Proposals per stage: the moves the stage recorded (a count chosen per stage, or
        # move="auto"'s candidate's); num_moves only for a record without them.
        moves = np.maximum(np.asarray(h.num_moves)[ran], 1) if hasattr(h, "num_moves") \
            else max(int(num_moves), 1)
        div = h.num_divergent[ran] / (num_particles * moves)
        div_i = int(np.argmax(div)) if div.size else -1
        out.append(RunHealth(
            chain=c,
            num_particles=int(num_particles),
            num_stages=n_run,
            final_ess=float(ess),
            min_ess_before_resampling=ess_b,
            min_ess_stage=ess_i,
            min_unique_ancestors=uniq,
            min_unique_stage=uniq_i,
            min_cess=cess,
            min_cess_stage=cess_i,
            num_unsafe_stages=int(np.sum(h.cess[ran] < UNSAFE_CESS)),
            min_move_cess=move,
            min_move_stage=move_i,
            num_unstable_stages=int(np.sum(h.move_cess[ran] < UNSAFE_CESS)),
            num_step_reductions=reductions,
            num_dead=int(num_dead),
            num_failed=int(num_failed),
            first_dead_stage=int(dead_stages[0]) if dead_stages.size else -1,
            max_khat_before_resampling=float(khat[kh_i]) if kh_i >= 0 else float("nan"),
            max_khat_stage=kh_i,
            median_renewal=float(np.median(renewal)) if renewal.size else float("nan"),
            max_divergent_fraction=float(div[div_i]) if div_i >= 0 else 0.0,
            max_divergent_stage=div_i,
            suggested_num_warmup=_needed_stages(h.cess[ran], h.beta[ran], target_ess),
            failed=bool(failed),
            fail_stage=int(fail_stage),
            fail_beta=float(fail_beta),
            betas=np.asarray(h.beta[ran]),
            log_evidence=float(log_z),
            log_evidence_se=float(log_z_se),
        ))
    return out


def _where(h, stage):
    return f"stage {stage} (β = {h.beta_at(stage):.4g})"


def failure_message(h):
    prev = h.beta_at(h.fail_stage - 1) if h.fail_stage > 0 else 0.0
    where = (
        "at its initial (prior) draws" if h.fail_stage == 0 and h.fail_beta == 0 else
        f"at stage {h.fail_stage}, moving from β = {prev:.4g} to β = {h.fail_beta:.4g}"
    )
    return (
        f"Every particle has zero weight in chain {h.chain} {where}: the model's log density is "
        "NaN or infinite at all of them. The state of the last good stage is kept (mcmc.last_state, and "
        "err.state on this exception). Check the model for invalid parameter values, an "
        "initial distribution that misses the posterior, or a step size so large that the "
        "moves diverge (a smaller step_size, more num_warmup, or move='mala')."
    )


def messages(h):
    """The warnings of one run, each naming the problem, where it happened, and the fix."""
    out, n, c = [], h.num_particles, h.chain
    if h.failed:
        out.append(failure_message(h))
    if h.collapsed:
        worst = h.min_ess_stage if h.min_ess_before_resampling * n < COLLAPSE_PARTICLES else (
            h.min_unique_stage)
        out.append(
            f"Weight collapse in chain {c} at {_where(h, worst)}: the ESS before resampling fell "
            f"to {h.min_ess_before_resampling * n:.1f} of {n} particles and resampling kept "
            f"{h.min_unique_ancestors * n:.0f} distinct ancestors. The log evidence and the "
            "posterior rest on a few particles and are unreliable (after resampling the final "
            "ESS looks healthy, so it cannot show this). Fix: more annealing stages "
            f"(num_warmup >= {max(h.suggested_num_warmup, h.num_stages + 1)}), the adaptive "
            "schedule instead of a fixed one, more particles, or move='mala'."
        )
    if h.num_unsafe_stages:
        out.append(
            f"In chain {c}, {h.num_unsafe_stages} stage(s) applied an annealing increment with "
            f"conditional ESS below {UNSAFE_CESS} (worst {h.min_cess:.3g} at "
            f"{_where(h, h.min_cess_stage)}): the steps in β were too large for {n} particles, "
            "so the evidence can be biased. The stage budget is too small: use num_warmup >= "
            f"{h.suggested_num_warmup} (estimated from the stages' conditional ESS), or lower "
            "target_ess."
        )
    elif h.suggested_num_warmup > SHORT_BUDGET * h.num_stages and not h.failed:
        out.append(
            f"In chain {c}, the stage budget was short: to reach β = 1 in {h.num_stages} "
            f"stages the schedule took steps with conditional ESS down to {h.min_cess:.2f} "
            f"(at {_where(h, h.min_cess_stage)}; target_ess asks for more), where about "
            f"{h.suggested_num_warmup} stages were needed. The evidence then carries extra "
            "variance and a downward bias of the same order, which the spread of a few runs "
            f"understates. Use num_warmup >= {h.suggested_num_warmup}."
        )
    if h.num_unstable_stages:
        out.append(
            f"In chain {c}, the unadjusted moves were unstable at "
            f"{h.num_unstable_stages} stage(s) (worst: a move's Crooks increment had conditional "
            f"ESS {h.min_move_cess:.3g} at {_where(h, h.min_move_stage)}): the step was too "
            "large for the preconditioner (a prior-sized scale after a collapse, or a spread "
            "across several modes). The step was shrunk for later stages "
            f"({h.num_step_reductions} reduction(s)); use a smaller step_size, more num_warmup, "
            "or move='mala'."
        )
    # Particles dropped only for a weight more than e^-1000 below the largest carry nothing
    # (dropping them is exact); those whose density was not finite truncate the posterior.
    if h.num_failed and not h.failed:
        out.append(
            f"In chain {c}, {h.num_failed} particle(s) died (density NaN or infinite), first "
            + (f"at {_where(h, h.first_dead_stage)}" if h.first_dead_stage >= 0
               else "among the initial (prior) draws")
            + (". The unadjusted moves were unstable in this run, so these are most "
               "likely divergences: a step overshot into a region where the density overflows. "
               "Use move='mala' or 'hmc' (they reject such proposals) or a smaller step_size."
               if h.num_unstable_stages and h.first_dead_stage >= 0 else
               ". The posterior is then the part where the model's "
               "density is finite and the evidence leaves the rest out. If the model should be "
               "finite everywhere, fix it (constrain the parameters, compute in log space), or "
               "start from init_particles inside the valid region.")
        )
    if h.max_khat_before_resampling > KHAT_THRESHOLD:
        out.append(
            f"In chain {c}, the Pareto k-hat of the weights before resampling reached "
            f"{h.max_khat_before_resampling:.2f} at {_where(h, h.max_khat_stage)} (> "
            f"{KHAT_THRESHOLD}): the increments are heavy-tailed, and the evidence can be biased "
            "even when independent runs agree. "
            + (f"β reached 1 at stage {h.anneal_stages - 1} and the other "
               f"{h.num_stages - h.anneal_stages} stages ran at β = 1, where they add nothing "
               "to the evidence: let the schedule spend the budget on the path (budget_fill="
               "0.9, the default, or closer to 1) or raise target_ess (e.g. 0.99), or use "
               "more particles."
               if _idle_budget(h) else
               "Use more stages (num_warmup), a higher target_ess, or more particles.")
        )
    if h.median_renewal < POOR_RENEWAL and not h.failed:
        out.append(
            f"In chain {c}, the moves barely renewed the population between resamplings: "
            f"between two resamplings they moved the particles a median squared distance of "
            f"{h.median_renewal:.2f} of their spread (a fresh draw is 1; below {POOR_RENEWAL} "
            "flags). The copies made by each resampling stay close together, so the evidence "
            "and the posterior have a larger error than the stage checks show, and independent "
            "runs can share a bias. Use more num_moves (the step is small for this posterior: "
            "its scales differ or are correlated), move='mala' instead of 'ula', or reparametrise "
            "the model (e.g. non-centred hierarchies)."
        )
    if h.max_divergent_fraction > DIVERGENT_FRACTION and not h.failed:
        out.append(
            f"In chain {c}, {100 * h.max_divergent_fraction:.0f}% of the moves' proposals "
            f"diverged at {_where(h, h.max_divergent_stage)} (the density or its gradient was "
            "not finite there). They were rejected or left in place, which keeps the weights "
            "exact, but the moves did little: the step is too large for part of the "
            "posterior (often a funnel: reparametrise, e.g. non-centred), or the model is "
            "not finite everywhere."
        )
    if h.final_ess * n < COLLAPSE_PARTICLES and not h.failed:
        out.append(
            f"In chain {c}, the final population has an ESS of {h.final_ess * n:.1f} of {n} "
            "particles: the weighted estimates rest on a handful of particles. Use more "
            "particles or more annealing stages (num_warmup)."
        )
    return out


def disagreement(log_evidence, log_evidence_se):
    """The warning when the runs' log evidence estimates (one per run, with their error bars,
    e.g. from :class:`RunHealth`) disagree beyond their own error bars, or None. ``Q = Σ_c (log Ẑ_c − mean)² / mean_c(se_c²)`` is about χ² with ``C − 1`` degrees
    of freedom when every run is right within its error bar (Lee & Whiteley's estimator,
    unbiased with multinomial resampling); the warning fires above its ``1 − DISAGREE_LEVEL``
    quantile. Runs without an error bar (NaN) are left out."""
    from scipy.stats import chi2

    log_z = np.asarray(log_evidence, np.float64)
    se = np.asarray(log_evidence_se, np.float64)
    ok = np.isfinite(log_z) & np.isfinite(se)
    log_z, se = log_z[ok], se[ok]
    if log_z.size < 2:
        return None
    pooled = float(np.sqrt(np.mean(se**2)))
    spread = float(np.std(log_z, ddof=1))
    # A floor of 0.01 nat: runs that agree to within float32 rounding of a sum of many stages
    # are not told apart, whatever their error bars say.
    q = float(np.sum((log_z - log_z.mean()) ** 2) / max(pooled, 0.01) ** 2)
    if q <= chi2.ppf(1.0 - DISAGREE_LEVEL, log_z.size - 1):
        return None
    return (
        f"The {log_z.size} runs' log evidence estimates disagree beyond their own error bars: "
        f"they spread with sd {spread:.3g} nat (from {log_z.min():.4g} to {log_z.max():.4g}), "
        f"while each run's genealogy gives it an error of about {pooled:.3g} nat (χ² = {q:.1f} "
        f"on {log_z.size - 1} degrees of freedom). Some runs missed part of the posterior, or "
        "kept its modes in different proportions, in a way no single-run check can see. "
        "Trust neither the mean nor its standard error. Fix: more moves per stage "
        "(num_moves, or move='auto'), a higher target_ess or more stages (num_warmup), more "
        "particles; for a multimodal posterior, a parametrisation or a move that crosses "
        "between the modes."
    )


def evidence_of(health):
    """``(log evidence, its error bar)`` of each run, as :func:`disagreement` takes them."""
    return [h.log_evidence for h in health], [h.log_evidence_se for h in health]


def report_run(state, num_particles, target_ess, num_chains=None, stacklevel=3, num_moves=1,
               multinomial=True, compare_runs=False):
    """Warn about every problem of the run; raise :class:`SMCFailure` if a run failed.
    ``compare_runs``: the runs are replicates (same model and data), so their log evidence
    must agree within their error bars (:func:`disagreement`). ``multinomial``: whether they
    resampled multinomially (:func:`run_health`).

    Returns the list of :class:`RunHealth`.
    """
    health = run_health(state, num_particles, target_ess, num_chains, num_moves, multinomial)
    for h in health:
        for m in messages(h):
            if h.failed and m.startswith("Every particle"):
                continue
            warnings.warn(m, UserWarning, stacklevel=stacklevel)
    across = disagreement(*evidence_of(health)) if compare_runs else None
    if across is not None:
        warnings.warn(across, UserWarning, stacklevel=stacklevel)
    failed = [h for h in health if h.failed]
    if failed:
        h = failed[0]
        raise SMCFailure(failure_message(h), state=state, chain=h.chain, stage=h.fail_stage,
                         beta=h.fail_beta)
    return health


__all__ = ["RunHealth", "SMCFailure", "disagreement", "evidence_of", "messages", "report_run",
           "run_health"]
