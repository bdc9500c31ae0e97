"""Moves as values: every transition kernel of the engine, with its weight increment.

A move is a frozen dataclass of its static settings (hashable, so it is part of the compiled
program) with one pure method,

``step(key, x, cache, target, step_size, scale) -> MoveResult(x, cache, log_increment, acceptance)``

for a batch of ``N`` particles (``x`` ``(N, d)``). ``target`` is a :class:`Target`: how to
evaluate particles (``evaluate(x) -> cache``) and how to read ``log γ`` and ``∇ log γ`` off a
cache. ``scale`` is the preconditioner, a factor ``L`` of the inverse mass ``M⁻¹ = L Lᵀ``
(:mod:`numpyro_jarzynski.engine.preconditioner`): an array ``(d,)`` or per particle
``(N, d)`` for the diagonal ``L = diag(scale)``, or a dense or low-rank factor (cross-fitted:
one per half of the batch). The moves work in the whitened coordinates ``L⁻¹x``, so
``step_size`` is dimensionless, and every increment below is exact for any stage-fixed ``L``
(its log-determinant is the same in the forward and backward kernels and cancels).

``log_increment`` is the move's Crooks term

.. math::  \\Delta A = \\log\\frac{\\gamma(x')\\, L(x \\mid x')}{\\gamma(x)\\, M(x' \\mid x)},

zero for a kernel that leaves ``γ`` invariant (``invariant = True``). The stage that uses a
move books the annealing work ``log γ_b(x) − log γ_a(x)`` first and then moves at ``γ_b``, so
for every move the weighted particles stay exact for ``γ_b`` whatever the step: an invariant
kernel by invariance, an unadjusted one by its increment (the forward and backward kernels of
an unadjusted move are both built on ``γ_b``). Each increment is written once, next to its
proposal, and the same expression is the Metropolis log-ratio of the adjusted twin
(``adjusted()``): MALA is ULA's proposal with the test, HMC is unadjusted HMC's.

Moves: :class:`ULA`, :class:`MALA`, :class:`HMC`, :class:`UHMC`. ``tests/test_kernels.py``
checks every one of them with the same contract (weighted moments and ``log Z_b/Z_a`` exact
on a Gaussian path at a large step).
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from numpyro_jarzynski.engine import moves as M
from numpyro_jarzynski.engine import noise as Z
from numpyro_jarzynski.engine import preconditioner as P


class Target(NamedTuple):
    """The density a move targets: ``evaluate(x) -> cache`` and readers of the cache.

    ``statistic(cache) -> (N,)`` (optional): the per-walker quantity the path's next work is
    made of (tempering: the log likelihood). A move's renewal of it is what decorrelates the
    next stage's weights (:func:`~numpyro_jarzynski.engine.stage.renewal`)."""

    evaluate: Callable
    log_density: Callable
    grad: Callable
    statistic: Callable = None


class MoveResult(NamedTuple):
    x: jax.Array
    cache: Any
    log_increment: jax.Array  # (N,) Crooks term; 0 for invariant moves
    acceptance: jax.Array  # (N,) Metropolis probability (unadjusted: min(1, exp ΔA))
    diverged: jax.Array  # (N,) bool: the proposal's density or gradient was not finite


def _stay_if_diverged(x, cache, x_new, c_new, inc, target):
    """An unadjusted move whose proposal lands where ``log γ`` or its gradient is not finite
    leaves the particle in place with increment 0. This is exact: the forward and backward
    kernels are the same kernel at ``γ``, so the atom at ``x`` (the probability of diverging
    from ``x``) has the same mass in both, and their ratio is 1. The continuous part keeps its
    Crooks increment (the backward move lands on ``x``, which is finite)."""
    ok = jnp.isfinite(target.log_density(c_new)) & jnp.all(
        jnp.isfinite(target.grad(c_new)), axis=-1)
    x_out, c_out = M.select(ok, (x_new, c_new), (x, cache))
    return x_out, c_out, jnp.where(ok, inc, 0.0), ~ok


def _finite_or(v, fill):
    return jnp.where(jnp.isfinite(v), v, fill)


def _accept_proxy(log_ratio):
    return jnp.where(jnp.isfinite(log_ratio), jnp.exp(jnp.minimum(log_ratio, 0.0)), 0.0)


class Switch(NamedTuple):
    """A run-time choice between two moves: ``second`` where ``use_second`` (a traced bool)
    holds, else ``first``; the two must return results of the same structure (an unadjusted
    move and its adjusted twin do). It holds a traced value, so it is built inside the trace
    (not a static setting): tempering runs an unadjusted move as its adjusted twin once β = 1
    with it, so that the stage around the move is compiled once, not once per branch. Not
    invariant unless both are (an invariant branch returns a zero increment)."""

    first: Any
    second: Any
    use_second: Any

    name = "switch"

    @property
    def invariant(self):
        return self.first.invariant and self.second.invariant

    def step(self, key, x, cache, target, step_size, scale):
        return jax.lax.cond(
            self.use_second,
            lambda: self.second.step(key, x, cache, target, step_size, scale),
            lambda: self.first.step(key, x, cache, target, step_size, scale),
        )


# --------------------------------------------------------------------------------- Langevin
@dataclass(frozen=True)
class ULA:
    """Unadjusted Langevin: ``x' = x + h LLᵀ∇log γ(x) + √(2h) L ξ`` (``L = diag(s)`` for a
    diagonal scale) with its Crooks increment
    (:func:`numpyro_jarzynski.engine.moves.langevin_log_increment`, forward and backward
    kernels both ULA at ``γ`` with the same ``L``, so ``log|det L|`` cancels). One gradient per
    move; exact in weights for any ``h < 2`` and any factor ``L``."""

    name = "ula"
    invariant = False
    grads_per_move = 1
    max_step = 1.0
    default_target = 0.9  # CESS of a stage's Crooks noise (the step rule)
    noise_exponent = 1.0 / 3.0  # variance of the Crooks noise grows like h³

    def default_step(self, dim):
        return 0.5 * max(dim, 1) ** (-1.0 / 3.0)

    def adjusted(self):
        return MALA()

    def propose(self, key, x, cache, target, step_size, scale):
        """The bare proposal and its increment (−inf where it diverged)."""
        x_new = M.langevin_proposal(key, x, target.grad(cache), step_size, scale)
        c_new = target.evaluate(x_new)
        inc = M.langevin_log_increment(
            x, x_new, target.log_density(cache), target.grad(cache),
            target.log_density(c_new), target.grad(c_new), step_size, scale,
        )
        return MoveResult(x_new, c_new, inc, _accept_proxy(inc), ~jnp.isfinite(inc))

    def step(self, key, x, cache, target, step_size, scale):
        prop = self.propose(key, x, cache, target, step_size, scale)
        x_out, c_out, inc, div = _stay_if_diverged(x, cache, prop.x, prop.cache,
                                                   prop.log_increment, target)
        return MoveResult(x_out, c_out, inc, _accept_proxy(prop.log_increment), div)


@dataclass(frozen=True)
class MALA:
    """Metropolis-adjusted Langevin: ULA's proposal, accepted with probability
    ``min(1, exp ΔA)`` (ULA's increment at a fixed target is the MH log-ratio). Invariant."""

    name = "mala"
    invariant = True
    grads_per_move = 1
    max_step = 1.0
    default_target = 0.65  # acceptance rate
    noise_exponent = 1.0 / 3.0

    def default_step(self, dim):
        return max(dim, 1) ** (-1.0 / 3.0)

    def adjusted(self):
        return self

    def step(self, key, x, cache, target, step_size, scale):
        k_prop, k_acc = Z.split(key)
        prop = ULA().propose(k_prop, x, cache, target, step_size, scale)
        accept, prob = M.mala_accept(k_acc, prop.log_increment)
        x_new, c_new = M.select(accept, (prop.x, prop.cache), (x, cache))
        return MoveResult(x_new, c_new, jnp.zeros_like(prob), prob, prop.diverged)


# -------------------------------------------------------------------------------- Hamiltonian
def leapfrog(x, p, cache, target, eps, scale, num_steps, refresh=None):
    """``num_steps`` leapfrog steps in whitened momentum (``p ~ N(0, I)``, inverse mass
    ``M⁻¹ = L Lᵀ``, ``L = diag(scale)`` for a diagonal scale): ``p += ε/2·Lᵀ∇log γ``,
    ``x += ε L p``, ``p += ε/2·Lᵀ∇log γ``. This is the plain leapfrog in ``(y, p)`` with
    ``y = L⁻¹x`` and ``∇_y = Lᵀ∇_x``; ``x = L y`` is linear with a constant Jacobian, so for a
    fixed ``L`` it is symplectic, reversible (``(x', −p')`` maps back to ``(x, −p)``) and
    volume preserving in ``(x, p)`` too. ``eps`` is ``(N, 1)`` (a step per particle); one
    evaluation per step.

    ``refresh=(alpha, key)``: after every step but the last, a partial momentum refresh
    ``p ← α p + √(1 − α²) ξ`` (``alpha`` ``(N, 1)``). The kinetic energy is then not
    conserved across a refresh, so the function also returns ``Σ_k (½|p_k⁺|² − ½|p_{k+1}|²)``,
    the kinetic part of the summed energy errors of the segments (``p_k⁺`` the momentum after
    the ``k``-th refresh, ``p_{k+1}`` before the next): ``(x, p, cache, kinetic)``, with
    ``kinetic = ½|p_0|² − ½|p_L|²`` when ``refresh`` is None."""
    alpha, k_ref = (None, None) if refresh is None else refresh

    def half_kick_drift_kick(x, p, c):
        p = p + P.mul_t(scale, _finite_or(target.grad(c), 0.0), 0.5 * eps)
        x = x + P.mul(scale, p, eps)
        c = target.evaluate(x)
        p = p + P.mul_t(scale, _finite_or(target.grad(c), 0.0), 0.5 * eps)
        return x, p, c

    def body(carry, inputs):
        x, p, c, kin = carry
        k, last = inputs
        x, p, c = half_kick_drift_kick(x, p, c)
        if alpha is not None:
            kin = kin - 0.5 * jnp.sum(p**2, -1)
            xi = Z.normal(k, p.shape, p.dtype)
            p = jnp.where(last, p, alpha * p + jnp.sqrt(1.0 - alpha**2) * xi)
            kin = kin + jnp.where(last, 0.0, 0.5 * jnp.sum(p**2, -1))
        return (x, p, c, kin), None

    kin0 = 0.5 * jnp.sum(p**2, -1)
    keys = (Z.split(k_ref, num_steps) if alpha is not None
            else jnp.zeros((num_steps,), jnp.uint32))
    last = jnp.arange(num_steps) == num_steps - 1
    (x, p, cache, kin), _ = jax.lax.scan(body, (x, p, cache, kin0), (keys, last))
    if alpha is None:
        kin = kin0 - 0.5 * jnp.sum(p**2, -1)
    return x, p, cache, kin


def _hamiltonian_proposal(key, x, cache, target, step_size, scale, num_steps, jitter,
                          damping=None):
    """Fresh momentum, a jittered step per particle (an auxiliary draw independent of ``x``,
    the same forward and backward), ``num_steps`` leapfrog steps (with a partial refresh of
    friction ``damping`` between them, see :class:`UHMC`). Returns the proposal and
    ``−ΔH = log γ(x') − log γ(x) + Σ_segments (½|p_start|² − ½|p_end|²)`` (NaN or inf → −inf)."""
    k_p, k_eps, *k_ref = Z.split(key, 2 if damping is None else 3)
    p = Z.normal(k_p, x.shape, x.dtype)
    u = Z.uniform(k_eps, x.shape[:1] + (1,), x.dtype, -1.0, 1.0)
    eps = step_size * (1.0 + jitter * u)
    refresh = None if damping is None else (jnp.exp(-damping * eps), k_ref[0])
    x_new, _, c_new, kinetic = leapfrog(x, p, cache, target, eps, scale, num_steps, refresh)
    neg_dh = target.log_density(c_new) - target.log_density(cache) + kinetic
    return x_new, c_new, jnp.where(jnp.isfinite(neg_dh), neg_dh, -jnp.inf)


# A quarter period of the harmonic oscillator: the trajectory length at which a leapfrog move on
# a whitened Gaussian forgets where it started (see _Hamiltonian.trajectory_cap).
QUARTER_PERIOD = math.pi / 2


@dataclass(frozen=True)
class _Hamiltonian:
    """Settings shared by :class:`HMC` and :class:`UHMC`: ``num_steps`` leapfrog steps per
    move (one gradient each) with the step jittered per particle in ``ε·(1 ± jitter)``."""

    num_steps: int = 5
    jitter: float = 0.2

    max_step = 1.8  # the leapfrog diverges on a Gaussian at ε = 2 (in units of the spread)
    noise_exponent = 0.25  # the energy error's variance grows like ε⁴

    def __post_init__(self):
        n, name = self.num_steps, type(self).__name__
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{name}: num_steps must be an integer >= 1 (leapfrog steps per "
                             f"move), got {n!r}.")
        if not (isinstance(self.jitter, (int, float)) and 0.0 <= self.jitter < 1.0):
            raise ValueError(f"{name}: jitter must be in [0, 1) (the step is drawn from "
                             f"ε·(1 ± jitter)), got {self.jitter!r}.")

    @property
    def grads_per_move(self):
        return self.num_steps

    def _first_step(self, step):
        """``step`` capped so that the first trajectory ``ε·L`` is at most a quarter period
        (``π/2``) of a target whitened by the preconditioner (see :meth:`trajectory_cap`)."""
        return min(step, QUARTER_PERIOD / self.num_steps)

    def trajectory_cap(self, step_size, jump, moved):
        """The largest step for the next stage that keeps the trajectory within a quarter
        period of the target, from this stage's moves (so the step used on a population never
        depends on the moves it is about to make).

        On a target whitened by the preconditioner (a standard Gaussian), a trajectory of
        length ``T = ε·L`` maps ``x`` to ``x cos T + p sin T``: at ``T = π/2`` the new state
        is independent of the old one, and past it the move turns back — at ``T = π`` it is
        the mirror ``x' = −x`` *whatever the momentum*, so the copies that resampling made of
        one walker stay copies. The acceptance rule alone cannot see this (a mirror is
        accepted as often as a good move): on a d = 50 Gaussian with ``L = 4`` it grew the step
        to 0.9 (``T ≈ 3.6``, lag correlation −0.9) and the log-Z RMSE was 6× the capped one.
        The stage's squared jump per move in units of the spread, ``E‖(x' − x)/s‖²/(2d)``, is
        ``a·(1 − cos ωT)`` for a fraction ``a`` of moved walkers, so ``ωT = arccos(1 − jump/a)``
        and the step that reaches ``ωT = π/2`` is ``ε·(π/2)/ωT``. The cap is that step (it
        lets the step grow while ``ωT < π/2``); the acceptance or noise rule still applies
        below it. ``jump`` is per move, ``moved`` the fraction of proposals taken
        (the acceptance for :class:`HMC`, 1 for :class:`UHMC`)."""
        c = jnp.clip(1.0 - jump / jnp.maximum(moved, 1e-3), -1.0, 1.0)
        phase = jnp.arccos(c)
        return jnp.where(phase > 1e-3, step_size * QUARTER_PERIOD / jnp.maximum(phase, 1e-3),
                         jnp.inf)

    def _propose(self, key, x, cache, target, step_size, scale):
        return _hamiltonian_proposal(key, x, cache, target, step_size, scale, self.num_steps,
                                     self.jitter)


@dataclass(frozen=True)
class UHMC(_Hamiltonian):
    """Unadjusted Hamiltonian Monte Carlo (or underdamped Langevin), weighted exactly.

    Forward kernel on the extended space ``(x, p)``: draw ``p ~ N(0, I)`` (whitened), run
    ``num_steps`` leapfrog steps ``Φ`` under ``γ`` (step ``ε`` jittered per particle), keep
    ``x'`` and drop ``p'``. Backward kernel: draw ``p' ~ N(0, I)``, run ``Φ`` from
    ``(x', −p')`` (reversibility gives back ``(x, −p)``). ``Φ`` is volume preserving, so the
    Crooks increment is the ratio of the extended densities,

    .. math::

        \\Delta A = \\log\\frac{\\gamma(x')\\,\\mathcal N(p'; 0, I)}{\\gamma(x)\\,\\mathcal N(p; 0, I)}
                  = -\\Delta H ,

    minus the energy error of the trajectory (with a dense or low-rank factor ``L`` the
    momentum is whitened by it, ``N(p; 0, I)`` has no ``L`` in it, and ``Φ`` stays volume
    preserving, so the increment is the same): the weighted walkers are exact for ``γ`` at any
    step where the leapfrog stays finite, with no rejection, so every gradient moves the
    particles and the integration error is paid in weights (HMC's Metropolis test uses the same
    ``−ΔH``). ``num_steps`` gradients per move.

    **Partial refresh** (``damping=ζ``, a friction per unit of leapfrog time): after each of
    the first ``num_steps − 1`` leapfrog steps the momentum is partially refreshed,
    ``p ← α p + √(1 − α²) ξ`` with ``α = exp(−ζ ε)`` — the trajectory is an underdamped
    Langevin one (the BAOAB-type splitting "leapfrog, then Ornstein–Uhlenbeck"), which forgets
    its momentum over a time ``1/ζ`` instead of carrying it to a U-turn. ``ζ → 0`` is the
    plain trajectory, ``ζ → ∞`` a full refresh after every step (a chain of one-step HMC
    moves). The refresh kernel ``R`` is reversible for ``N(0, I)``, so taking ``R`` itself as
    its backward kernel gives it the increment
    ``log N(p⁺)R(p | p⁺) / (N(p)R(p⁺ | p)) = 0``; the leapfrog segments keep theirs. The
    move's increment is the sum over the segments of their energy errors,

    .. math::

        \\Delta A = \\log\\gamma(x_L) - \\log\\gamma(x_0)
                  + \\sum_{k=0}^{L-1} \\bigl(\\tfrac12|p_k^+|^2 - \\tfrac12|p_{k+1}|^2\\bigr),

    with ``p_0^+ = p_0`` the fresh momentum, ``p_{k+1}`` the momentum at the end of step ``k``
    and ``p_k^+`` after its refresh (the potential terms telescope). The momentum is drawn
    afresh at the start of every move. ``adjusted()`` is :class:`HMC` without the refresh.
    """

    damping: float | None = None

    name = "uhmc"
    invariant = False
    default_target = 0.9

    def __post_init__(self):
        super().__post_init__()
        d = self.damping
        if d is not None and (isinstance(d, bool) or not isinstance(d, (int, float))
                              or not (0.0 <= d < float("inf"))):
            raise ValueError(f"UHMC: damping must be None (no refresh inside a trajectory) or "
                             f"a finite friction >= 0 (the momentum keeps exp(-damping*ε) of "
                             f"itself per leapfrog step), got {d!r}.")

    def default_step(self, dim):
        return self._first_step(0.5 * max(dim, 1) ** (-0.25))

    def adjusted(self):
        return HMC(self.num_steps, self.jitter)

    def step(self, key, x, cache, target, step_size, scale):
        x_new, c_new, inc = _hamiltonian_proposal(key, x, cache, target, step_size, scale,
                                                  self.num_steps, self.jitter, self.damping)
        x_out, c_out, inc_out, div = _stay_if_diverged(x, cache, x_new, c_new, inc, target)
        return MoveResult(x_out, c_out, inc_out, _accept_proxy(inc), div)


@dataclass(frozen=True)
class HMC(_Hamiltonian):
    """Hamiltonian Monte Carlo: :class:`UHMC`'s proposal accepted with probability
    ``min(1, exp(−ΔH))``. Invariant; ``num_steps`` gradients per move."""

    name = "hmc"
    invariant = True
    default_target = 0.65

    def default_step(self, dim):
        return self._first_step(max(dim, 1) ** (-0.25))

    def adjusted(self):
        return self

    def step(self, key, x, cache, target, step_size, scale):
        k_prop, k_acc = Z.split(key)
        x_new, c_new, log_ratio = self._propose(k_prop, x, cache, target, step_size, scale)
        accept, prob = M.mala_accept(k_acc, log_ratio)
        x_out, c_out = M.select(accept, (x_new, c_new), (x, cache))
        return MoveResult(x_out, c_out, jnp.zeros_like(prob), prob, ~jnp.isfinite(log_ratio))


@dataclass(frozen=True)
class Auto:
    r"""The move chosen per stage by its measured efficiency (``move="auto"``).

    Each candidate keeps its own step size, tuned by its own rule whenever it runs. A stage
    gives every candidate the same gradient budget (``num_moves`` × the largest
    ``grads_per_move`` among the candidates, spent as ``budget // grads_per_move`` moves) and
    scores the one it ran by

    .. math::  \text{efficiency} = \min(\text{renewal}, 1) \times \text{CESS}_{\text{moves}},

    the renewal of the log likelihood by the stage's whole block of moves
    (``StageHistory.renewal``, ``E_w(ℓ_end − ℓ_start)²/(2 Var_w ℓ)``: about 1 for a fresh
    draw; credited up to that, since farther is not more renewal but an unstable move) times
    the conditional ESS of their Crooks increments (1 for adjusted moves): how far the
    statistic the next stage's weights are made of was decorrelated, discounted by the weight
    noise paid for it, at equal gradients. (The coordinates' squared jump,
    ``StageHistory.jump``, ranked moves wrongly: five small MALA steps add up five squared
    jumps whose net effect on the likelihood partly cancels, and a d = 50 Gaussian was
    annealed by MALA where unadjusted HMC gives about 0.6× its log-Z error.)
    The score of a candidate is the one measured the last time it ran (the target changes
    along the path, so old scores are not averaged in). The population is moved by the
    best-scoring candidate (before any score exists, by the first invariant one). The others
    are measured on **shadow trials**: the same stage on a copy of the population with its own
    key, whose score and adapted step are kept and whose particles are discarded — stages
    ``0 .. C−2`` try each candidate never measured, then every ``explore``-th stage the one
    measured longest ago, so that no score goes stale. A trial spends its candidate's
    gradients but never touches the population, so a candidate that is exact but useless on
    a target (ULA in a funnel's neck) cannot damage the run by being tried. Scores are read
    from earlier stages only, never from the particles being moved, so the choice does not
    bias the weights. ``StageHistory.move_index`` records the candidate that moved each stage
    and ``trial_index`` / ``trial_score`` the trial (indices into ``candidates``; −1: none).
    """

    candidates: tuple = (ULA(), MALA(), HMC(), UHMC())
    explore: int = 5

    name = "auto"

    def __post_init__(self):
        cands = tuple(self.candidates)
        if not cands or not all(isinstance(c, tuple(KERNELS.values())) for c in cands):
            raise TypeError(
                "Auto(candidates=...) takes a non-empty tuple of move values (ULA(), MALA(), "
                f"HMC(...), UHMC(...)), got {self.candidates!r}."
            )
        object.__setattr__(self, "candidates", cands)
        if isinstance(self.explore, bool) or int(self.explore) != self.explore or self.explore < 2:
            raise ValueError(f"Auto(explore=...) must be an integer >= 2, got {self.explore!r}.")

    @property
    def invariant(self):
        return all(c.invariant for c in self.candidates)

    def moves_per_stage(self, num_moves):
        """Moves of each candidate that spend the same gradients per stage."""
        budget = num_moves * max(c.grads_per_move for c in self.candidates)
        return tuple(max(1, budget // c.grads_per_move) for c in self.candidates)


@dataclass(frozen=True)
class Composite:
    """Several continuous moves applied one after the other, as one move (``move=[MALA(),
    HMC()]``): each at the same target, with no resampling between them.

    **Increment.** The composite's forward kernel is the product of its members' kernels, and
    its backward kernel the product of their backward kernels in the reverse order, so its
    Crooks term is the sum of theirs (each written next to its own proposal): exact for any
    step, and zero when every member is invariant (then the composite is invariant).

    **Step.** One dimensionless step ``h`` is adapted per stage; it is the first member's.
    Member ``j`` runs at ``h · step_j(d) / step_0(d)`` (``step_j(d)``: its default step in
    dimension ``d``, so a Langevin and a leapfrog member keep the ratio of their natural
    scales), capped at its own ``max_step``. The stage adapts ``h`` by the invariant rule
    (mean acceptance toward ``target_accept``) when every member is invariant, else by the
    Crooks-noise rule of the first unadjusted member. Acceptance: the mean of the members'.
    ``adjusted()`` replaces every unadjusted member by its adjusted twin.
    """

    moves: tuple

    def __post_init__(self):
        moves = self.moves
        if not isinstance(moves, tuple) or len(moves) < 2:
            raise ValueError("Composite(moves) takes a tuple of at least two move values, e.g. "
                             "Composite((MALA(), HMC())); for one move pass it alone.")
        for m in moves:
            if not isinstance(m, tuple(KERNELS.values())):
                raise TypeError(f"Composite members must be ULA(), MALA(), HMC(...) or "
                                f"UHMC(...) values, got {m!r}.")

    @property
    def name(self):
        return "+".join(m.name for m in self.moves)

    @property
    def invariant(self):
        return all(m.invariant for m in self.moves)

    @property
    def grads_per_move(self):
        return sum(m.grads_per_move for m in self.moves)

    @property
    def _leader(self):
        """The member whose constants the step rule uses (the first unadjusted one, if any)."""
        return next((m for m in self.moves if not m.invariant), self.moves[0])

    @property
    def max_step(self):
        return self.moves[0].max_step

    @property
    def default_target(self):
        return self._leader.default_target

    @property
    def noise_exponent(self):
        return self._leader.noise_exponent

    def default_step(self, dim):
        return self.moves[0].default_step(dim)

    def adjusted(self):
        return Composite(tuple(m.adjusted() for m in self.moves))

    def step(self, key, x, cache, target, step_size, scale):
        d = x.shape[-1]
        base = self.moves[0].default_step(d)
        inc = jnp.zeros(x.shape[:1], x.dtype)
        acc, div = [], jnp.zeros(x.shape[:1], bool)
        for m, k in zip(self.moves, Z.split(key, len(self.moves))):
            h = jnp.minimum(step_size * (m.default_step(d) / base), m.max_step)
            out = m.step(k, x, cache, target, h, scale)
            x, cache = out.x, out.cache
            inc = inc + out.log_increment
            acc.append(out.acceptance)
            div = div | out.diverged
        return MoveResult(x, cache, inc, sum(acc) / len(acc), div)


KERNELS = {"ula": ULA, "mala": MALA, "hmc": HMC, "uhmc": UHMC}


def as_kernel(move):
    """A move value from a move or its name (``"ula"``, ``"mala"``, ``"hmc"``, ``"uhmc"``)."""
    if isinstance(move, str):
        if move == "auto":
            return Auto()
        if move not in KERNELS:
            raise ValueError(
                f"move must be one of {tuple(KERNELS) + ('auto',)} or a move value from "
                f"numpyro_jarzynski.engine.kernels (e.g. HMC(num_steps=10)), got {move!r}."
            )
        return KERNELS[move]()
    if isinstance(move, (*KERNELS.values(), Auto, Composite)):
        return move
    raise TypeError(
        f"move must be a name in {tuple(KERNELS)} or a move value (ULA(), MALA(), HMC(...), "
        f"UHMC(...)), got {type(move).__name__}."
    )


def density_target(log_prob):
    """A :class:`Target` for a per-particle log density ``log_prob(x_i)``: the cache is
    ``(log γ, ∇ log γ)`` from one vmapped ``value_and_grad``."""
    evaluate = jax.vmap(jax.value_and_grad(log_prob))
    return Target(evaluate, lambda c: c[0], lambda c: c[1])


def run_moves(move, key, x, cache, target, step_size, scale, num_moves):
    """``num_moves`` moves of ``move`` at a fixed ``target``, with no resampling between them.

    Returns ``(x, cache, Σ log_increment, mean acceptance)``; the summed increment keeps the
    weighted particles exact for ``target`` (zero for an invariant move)."""

    def body(carry, k):
        x, cache, inc = carry
        out = move.step(k, x, cache, target, step_size, scale)
        return (out.x, out.cache, inc + out.log_increment), jnp.mean(out.acceptance)

    zero = jnp.zeros(x.shape[:1], x.dtype)
    (x, cache, inc), acc = jax.lax.scan(body, (x, cache, zero), Z.split(key, num_moves))
    return x, cache, inc, jnp.mean(acc)
