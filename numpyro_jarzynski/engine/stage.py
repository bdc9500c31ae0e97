r"""One stage of a weighted population along a path of targets, for every front-end.

A stage takes walkers that are properly weighted for ``γ_a`` to walkers properly weighted for
``γ_b``:

1. **reweight** by the stage's increment ``ΔA(x) = log γ_b(x) − log γ_a(x)`` (the annealing
   work of a tempering step ``Δβ·log L``, of a parameter step ``log γ_{θ_b} − log γ_{θ_a}``, …);
2. **resample** if the normalised ESS is below ``threshold``;
3. fit the preconditioner on the resampled population (``scale_fn``);
4. **move** ``num_moves`` times with a kernel at ``γ_b`` (a move value from
   :mod:`numpyro_jarzynski.engine.kernels`). An unadjusted kernel's Crooks increment goes into
   the weights, with a resampling check after each move; an invariant kernel adds nothing. An
   optional ``hook`` runs after (or before) every move: the Gibbs update of the discrete sites
   of a mixed model, which is exact for ``γ_b`` and adds nothing either.

:func:`advance` is this stage on a path value (:mod:`numpyro_jarzynski.engine.path`): the
front-end gives its path, the two points ``a``, ``b`` and its moves; the path supplies the work
and the targets, and dead walkers get a live position at the end. Two variants of the order:
``move_first`` (moves at ``γ_a``, then the work at the moved walkers, then the resampling
check: the EBM trainer's update, whose work must be evaluated at walkers drawn after ``θ_b``
was chosen from them) and a bridging move (``kernel.bridging``: one move that crosses
``a → b`` itself, its increment the whole Crooks term, the interpolant's Euler–Maruyama step).

Everything the stage saw is returned in a :class:`StageInfo` (recorded, never raised: the
caller reports from Python after the compiled run). The three front-ends call
:func:`advance`: ``JarzynskiSMC``'s tempering stage and the EBM annealer
(:func:`numpyro_jarzynski.ebm.walkers.anneal_from_base`) on a
:class:`~numpyro_jarzynski.engine.path.TemperingPath`, the EBM trainer
(:func:`numpyro_jarzynski.ebm.walkers.advance`) on a
:class:`~numpyro_jarzynski.engine.path.ParameterPath`, the interpolant sampler on a
:class:`~numpyro_jarzynski.engine.path.GenerationPath`. :func:`step`, :func:`step_waste_free`
and :func:`move` are the building blocks for a front-end that computes its increment itself.
"""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from numpyro_jarzynski.engine import kernels as K
from numpyro_jarzynski.engine import noise as Z
from numpyro_jarzynski.engine import preconditioner as P
from numpyro_jarzynski.engine import weights as W
from numpyro_jarzynski.engine.path import Crossing
from numpyro_jarzynski.engine.population import (
    Population,
    ResampleInfo,
    num_unique_sorted,
    replace_dead,
    resample_if,
    take,
)
from numpyro_jarzynski.engine.resampling import get_scheme


class MoveInfo(NamedTuple):
    """What a block of moves saw: the smallest conditional ESS of the moves' own increments
    (1 for invariant moves), ``noise = −Σ log CESS`` over the moves, the mean acceptance, the
    worst resampling check between moves, the walkers killed, the squared jump
    ``Σ_moves E_w‖(x' − x)/s‖²/(2d)``, the number of divergent proposals and, among the
    walkers killed, those whose increment was not finite (``num_failed``; the others were
    dropped for a weight more than ``NEGLIGIBLE_LOG_WEIGHT`` nats below the heaviest)."""

    move_cess: jax.Array
    noise: jax.Array
    acceptance: jax.Array
    resample: ResampleInfo
    num_dead: jax.Array
    jump: jax.Array
    num_divergent: jax.Array
    num_failed: jax.Array
    renewal: Any = None


class StageInfo(NamedTuple):
    """:class:`MoveInfo` plus the stage increment's conditional ESS (``cess``) and the
    record of the weights' tail right after it (``tail_before``, before any resampling: what
    their Pareto k-hat is fitted from after the run, :func:`~.weights.khat_of_tail`).
    ``num_dead`` and ``num_failed`` count the stage's increment and the moves' together.
    ``increment``: the stage's increment per walker, ``(N,)``, where one is defined (a
    bridging stage: its one move's Crooks term); ``None`` otherwise. ``tail_after``: the
    record of the weights at the end of the stage where the stage knows it without computing
    it (:func:`step` with an invariant kernel and no hook: the moves leave the weights as the
    resampling check left them, so it is ``tail_before``, or uniform after a resampling);
    ``None`` otherwise."""

    cess: jax.Array
    tail_before: jax.Array
    move_cess: jax.Array
    noise: jax.Array
    acceptance: jax.Array
    resample: ResampleInfo
    num_dead: jax.Array
    jump: jax.Array
    num_divergent: jax.Array
    num_failed: jax.Array
    increment: Any = None
    tail_after: Any = None
    renewal: Any = None


class SweepMove(NamedTuple):
    """An exact sweep ``sweep(key, x) -> x'`` (e.g. a lattice's checkerboard Gibbs sweep at the
    stage's β, an RBM's block Gibbs at θ) as a move value: invariant, so it adds no increment.
    The target's cache is evaluated at the swept walkers, unless the target has no
    ``evaluate`` (then there is no cache: ``None``). ``uses_cache``: the sweep is
    ``sweep(key, x, cache)`` and starts from the target's cache at ``x`` (an RBM's hidden
    logits, :class:`~numpyro_jarzynski.ebm.rbm.GibbsCache`), so consecutive sweeps share
    their products: the cache evaluated after one sweep is the next one's first half."""

    sweep: Any
    uses_cache: bool = False

    invariant = True
    name = "sweep"

    def step(self, key, x, cache, target, step_size, scale):
        x_new = self.sweep(key, x, cache) if self.uses_cache else self.sweep(key, x)
        n = x.shape[0]
        dtype = jnp.result_type(float)
        c_new = None if target.evaluate is None else target.evaluate(x_new)
        return K.MoveResult(x_new, c_new, jnp.zeros(n, dtype), jnp.ones(n, dtype),
                            jnp.zeros(n, bool))


def deaths(log_w_before, log_w_after):
    """Walkers alive before and dead (``−inf``) after."""
    return jnp.sum(jnp.isfinite(log_w_before) & ~jnp.isfinite(log_w_after)).astype(jnp.int32)


def worse(a, b):
    """Combine two :class:`ResampleInfo`: smallest ESS before, fewest ancestors, count."""
    return ResampleInfo(
        jnp.minimum(a.ess_before, b.ess_before),
        a.resampled.astype(jnp.int32) + b.resampled.astype(jnp.int32),
        jnp.minimum(a.num_unique, b.num_unique),
    )


def failures(log_w, increment):
    """Walkers alive before an increment that is not finite (NaN, ±inf) for them."""
    return jnp.sum(jnp.isfinite(log_w) & ~jnp.isfinite(increment)).astype(jnp.int32)


def reweight(pop, increment):
    """Add ``ΔA`` to the log-weights: ``(population, CESS of ΔA, walkers killed, of which
    with a non-finite increment)``."""
    cess = W.conditional_ess(pop.log_weights, increment)
    new_w = W.add_increment(pop.log_weights, increment)
    return (pop._replace(log_weights=new_w), cess, deaths(pop.log_weights, new_w),
            failures(pop.log_weights, increment))


def jump(log_weights, x, x_new, scale):
    """``E_w‖L⁻¹(x' − x)‖²/(2d)``: one move's squared jump in units of the preconditioner
    (``L = diag(s)``: ``(x' − x)/s``; about 1 for a move that draws afresh from ``N(·, LLᵀ)``)."""
    w = jax.nn.softmax(jnp.where(jnp.isfinite(log_weights), log_weights, -jnp.inf))
    step = x_new - x
    sq = jnp.square(P.solve(scale, jnp.where(jnp.isfinite(step), step, 0.0)))
    sq = jnp.sum(sq.reshape(sq.shape[0], -1), axis=-1)
    return jnp.sum(w * sq) / (2.0 * max(math.prod(x.shape[1:]), 1))


def renewal(log_weights, stat, stat_new):
    """``E_w(s' − s)²/(2 Var_w s)``: the squared jump of the target's statistic ``s`` from
    ``stat`` to ``stat_new`` (:func:`move`: over its whole block of moves; tempering: the log
    likelihood, what the next stage's weights are made of) in units of its spread (about 1
    for moves that draw afresh). ``None`` where the target declares none;
    NaN where the statistic does not vary over the walkers (a model without a likelihood)."""
    if stat is None:
        return None
    ok = jnp.isfinite(stat) & jnp.isfinite(stat_new) & jnp.isfinite(log_weights)
    lw = jnp.where(ok, log_weights, -jnp.inf)  # walkers with a finite value at both ends
    var = jnp.square(W.weighted_std(lw, stat))
    sq = W.weighted_mean(lw, jnp.square(stat_new - stat))
    return jnp.where(var > 0, sq / jnp.where(var > 0, 2.0 * var, 1.0), jnp.nan)


def _statistic(target, cache):
    fn = getattr(target, "statistic", None)
    return None if fn is None or cache is None else fn(cache)


def _target_of(target):
    """``extra -> Target`` from a Target or such a function."""
    if callable(target) and not isinstance(target, tuple):
        return target
    return lambda _: target


def _evaluate(target, extra, x):
    """The target's cache at ``x`` (``None`` for a target that evaluates nothing)."""
    t = _target_of(target)(extra)
    return None if t.evaluate is None else t.evaluate(x)


def _one_move(key, pop, cache, extra, dead, kernel, target_of, step_size, scale, threshold,
              scheme, hook, hook_first):
    """One move of ``kernel`` with its increment (and the hook before or after it); a
    resampling check after an unadjusted move unless ``threshold`` is None. ``dead``: the
    pair (walkers killed, of which with a non-finite increment), counted on.

    Returns ``(pop, cache, extra, dead, resample info or None, (move CESS, acceptance, jump,
    divergent), the move's increment per walker)``."""
    k_move, k_res, k_hook = Z.split(key, 3)
    if hook is not None and hook_first:
        pop, cache, extra, d = hook(k_hook, pop, cache, extra)
        dead = (dead[0] + d, dead[1] + d)
    out = kernel.step(k_move, pop.x, cache, target_of(extra), step_size, scale)
    moved = jump(pop.log_weights, pop.x, out.x, scale)
    move_cess, r = jnp.ones((), pop.log_weights.dtype), None
    if kernel.invariant:
        pop, cache = pop._replace(x=out.x), out.cache
    else:
        pop, move_cess, d, f = reweight(pop._replace(x=out.x), out.log_increment)
        dead, cache = (dead[0] + d, dead[1] + f), out.cache
        if threshold is not None:
            pop, cache, extra, r = resample_if(k_res, pop, threshold, scheme, cache, extra)
    if hook is not None and not hook_first:
        pop, cache, extra, d = hook(k_hook, pop, cache, extra)
        dead = (dead[0] + d, dead[1] + d)
    div = jnp.sum(out.diverged).astype(jnp.int32)
    return (pop, cache, extra, dead, r, (move_cess, jnp.mean(out.acceptance), moved, div),
            out.log_increment)


def move(key, pop, cache, kernel, target, step_size, scale, num_moves, threshold,
         scheme="systematic", extra=None, hook=None, hook_first=False, max_moves=None):
    """``num_moves`` moves of ``kernel`` at ``target`` (a :class:`~.kernels.Target`, or a
    function ``extra -> Target`` when the target depends on the carried ``extra``).

    ``max_moves``: ``num_moves`` is a traced count, at most ``max_moves`` (a number of moves
    chosen per stage, :func:`~.moves.moves_for_renewal`); the moves run in a loop of that
    many iterations, the ``i``-th with the ``i``-th of ``max_moves`` keys.

    ``extra``: a per-particle tree carried with the walkers through resampling (the discrete
    sites of a mixed model). ``hook(key, pop, cache, extra) -> (pop, cache, extra, dead)``
    runs after every move (before it with ``hook_first``); it must leave the target invariant.
    ``kernel=None`` runs only the hook (a model with nothing continuous to move). A
    ``threshold`` of ``None`` never resamples between moves.

    Returns ``(pop, cache, extra, MoveInfo)``.
    """
    target_of = _target_of(target)
    one = jnp.ones((), pop.log_weights.dtype)
    zero_i = jnp.zeros((), jnp.int32)
    n = pop.log_weights.shape[0]
    no_res = ResampleInfo(W.ess(pop.log_weights), zero_i, jnp.asarray(n, jnp.int32))

    def body(carry, k):
        pop, cache, extra, res, dead = carry
        if kernel is None:
            if hook is not None:
                pop, cache, extra, d = hook(Z.split(k, 3)[2], pop, cache, extra)
                dead = (dead[0] + d, dead[1] + d)
            # Nothing continuous to measure: recorded as a full renewal (1 per stage).
            return (pop, cache, extra, res, dead), (one, one, one / num_moves, zero_i)
        pop, cache, extra, dead, r, stats, _ = _one_move(
            k, pop, cache, extra, dead, kernel, target_of, step_size, scale, threshold, scheme,
            hook, hook_first)
        return (pop, cache, extra, res if r is None else worse(res, r), dead), stats

    # The block's net renewal of the target's statistic: its values at the start travel with
    # the walkers through any resampling between moves (as part of the carried tree).
    start = None if kernel is None else _statistic(target_of(extra), cache)
    if start is not None:
        inner_target, inner_hook = target_of, hook
        target_of = lambda e: inner_target(e[0])
        if inner_hook is not None:
            def hook(k, p, c, e):
                p, c, e0, d = inner_hook(k, p, c, e[0])
                return p, c, (e0, e[1]), d
        extra = (extra, start)
    carry = (pop, cache, extra, no_res, (zero_i, zero_i))
    if max_moves is None:
        carry, (move_cess, acc, jumps, divs) = jax.lax.scan(body, carry,
                                                            Z.split(key, num_moves))
        noise = -jnp.sum(jnp.log(jnp.clip(move_cess, 1e-30, 1.0)))
        move_cess, acc, jumps, divs = (jnp.min(move_cess), jnp.mean(acc), jnp.sum(jumps),
                                       jnp.sum(divs))
    else:
        keys = Z.split(key, max_moves)

        def counted(i, c):
            carry, (mc, noise, acc, jumps, divs) = c
            carry, (mc_i, acc_i, jump_i, div_i) = body(carry, keys[i])
            return carry, (jnp.minimum(mc, mc_i), noise - jnp.log(jnp.clip(mc_i, 1e-30, 1.0)),
                           acc + acc_i, jumps + jump_i, divs + div_i)

        zero = jnp.zeros((), pop.log_weights.dtype)
        carry, (move_cess, noise, acc, jumps, divs) = jax.lax.fori_loop(
            0, num_moves, counted, (carry, (one, zero, zero, zero, zero_i)))
        acc = acc / jnp.maximum(num_moves, 1).astype(acc.dtype)
    pop, cache, extra, res, dead = carry
    renewed = None
    if start is not None:
        extra, start = extra
        renewed = renewal(pop.log_weights, start, _statistic(target_of((extra, None)), cache))
    return pop, cache, extra, MoveInfo(move_cess, noise, acc, res, dead[0], jumps, divs,
                                       dead[1], renewed)


def step(key, pop, cache, increment, kernel, target, step_size, scale_fn, num_moves,
         threshold, scheme="systematic", extra=None, hook=None, hook_first=False,
         max_moves=None):
    """One stage: reweight by ``increment`` (per walker), resample if the ESS is below
    ``threshold``, fit the preconditioner (``scale_fn(pop) -> (scale, aux)``) and apply
    :func:`move`. ``cache=None``: evaluate the target on the resampled walkers.

    Returns ``(pop, cache, extra, aux, StageInfo)``.
    """
    k_res, k_move = Z.split(key)
    pop, cess, dead, failed = reweight(pop, increment)
    tail_before = W.weight_tail(pop.log_weights)
    pop, cache, extra, res = resample_if(k_res, pop, threshold, scheme, cache, extra)
    res = res._replace(resampled=res.resampled.astype(jnp.int32))
    if cache is None and kernel is not None:
        cache = _evaluate(target, extra, pop.x)
    scale, aux = scale_fn(pop)
    pop, cache, extra, info = move(k_move, pop, cache, kernel, target, step_size, scale,
                                   num_moves, threshold, scheme, extra, hook, hook_first,
                                   max_moves)
    tail_after = None
    if kernel is not None and kernel.invariant and hook is None:
        # The moves do not touch the weights: they are the ones recorded, or uniform.
        uniform = W.uniform_tail(pop.log_weights.shape[0], tail_before.dtype)
        tail_after = jnp.where(res.resampled > 0, uniform, tail_before)
    return pop, cache, extra, aux, StageInfo(
        cess, tail_before, info.move_cess, info.noise, info.acceptance,
        worse(res, info.resample), dead + info.num_dead, info.jump, info.num_divergent,
        failed + info.num_failed, tail_after=tail_after, renewal=info.renewal,
    )


def step_waste_free(key, pop, cache, increment, kernel, target, step_size, scale_fn,
                    chain_length, scheme="systematic", extra=None, hook=None,
                    hook_first=False):
    """Waste-free stage (Dau & Chopin 2022): reweight by ``increment``, resample
    ``M = N / chain_length`` ancestors, run a chain of ``chain_length − 1`` moves from each and
    keep *every* state, so the next population is again ``N`` walkers.

    With an invariant kernel every kept state is a draw from ``γ_b`` given its ancestor and all
    weights are equal. With an unadjusted kernel the state after ``t`` moves carries the sum of
    its chain's first ``t`` Crooks increments: each state is a Jarzynski walker with ``t``
    moves, properly weighted for ``γ_b``, so the pooled states estimate ``Z_b/Z_a`` as the
    walkers of an ordinary stage do. No resampling happens inside a chain.

    Returns ``(pop, cache, extra, aux, StageInfo)`` as :func:`step`.
    """
    n = pop.log_weights.shape[0]
    m = n // chain_length
    k_res, k_move = Z.split(key)
    pop, cess, dead, failed = reweight(pop, increment)
    tail_before = W.weight_tail(pop.log_weights)
    ess_before = W.ess(pop.log_weights)
    # M ancestors: the same scheme, asked for M indices.
    idx = jnp.sort(get_scheme(scheme)(k_res, pop.log_weights, m))
    start = Population(take(pop.x, idx), jnp.zeros(m, pop.log_weights.dtype),
                       pop.log_z_banked + W.log_mean_exp(pop.log_weights), take(pop.eve, idx))
    cache, extra = take(cache, idx), take(extra, idx)
    res = ResampleInfo(ess_before, jnp.ones((), jnp.int32), num_unique_sorted(idx))
    scale, aux = scale_fn(start)
    target_of = _target_of(target)

    def body(carry, k):
        p, c, e, d = carry
        p, c, e, d, _, stats, _ = _one_move(k, p, c, e, d, kernel, target_of, step_size, scale,
                                         None, scheme, hook, hook_first)
        return (p, c, e, d), ((p.x, p.log_weights, c, e), stats)

    zero_i = jnp.zeros((), jnp.int32)
    (_, _, _, dead_moves), (kept, (move_cess, acc, jumps, divs)) = jax.lax.scan(
        body, (start, cache, extra, (zero_i, zero_i)),
        Z.split(k_move, chain_length - 1))
    first = (start.x, start.log_weights, cache, extra)
    # (chain_length, M, ...) -> (N, ...): the start states, then every state of every chain.
    x, log_w, cache, extra = jax.tree.map(
        lambda a, b: jnp.concatenate([a[None], b]).reshape((n,) + a.shape[1:]), first, kept)
    # Every kept state descends from its chain's start (state t of chain m sits at t·M + m).
    eve = None if start.eve is None else jnp.tile(start.eve, chain_length)
    pop = Population(x, log_w, start.log_z_banked, eve)
    noise = -jnp.sum(jnp.log(jnp.clip(move_cess, 1e-30, 1.0)))
    return pop, cache, extra, aux, StageInfo(
        cess, tail_before, jnp.min(move_cess), noise, jnp.mean(acc), res, dead + dead_moves[0],
        # The kept states are 0 .. L−1 moves from their ancestor: on average half the
        # chain's summed squared jump away from it.
        0.5 * jnp.sum(jumps), jnp.sum(divs), failed + dead_moves[1],
    )


def _shared(path):
    return getattr(path, "shared_cache", False)


def _no_resampling(pop):
    n = pop.log_weights.shape[0]
    return ResampleInfo(W.ess(pop.log_weights), jnp.zeros((), jnp.int32), jnp.asarray(n, jnp.int32))


def _move_then_reweight(key, pop, cache, path, a, b, kernel, step_size, scale_fn, num_moves,
                        threshold, scheme, extra, hook, hook_first, keep_cache=False):
    """Moves at ``γ_a`` (no resampling between them: every walker keeps its identity through
    the moves), then the work ``a → b`` at the moved walkers, then a resampling check.
    ``keep_cache``: also evaluate ``b``'s cache at the moved walkers (the work's evaluation at
    ``b`` computes it anyway; XLA shares the two) and return it, resampled with them."""
    k_move, k_res = Z.split(key)
    if cache is None and kernel is not None:
        cache = _evaluate(path.target(a), extra, pop.x)
    scale, aux = scale_fn(pop)
    pop, cache, extra, info = move(k_move, pop, cache, kernel, path.target(a), step_size, scale,
                                   num_moves, None, scheme, extra, hook, hook_first)
    pop, cess, dead, failed = reweight(pop, path.increment(pop.x, cache, a, b))
    tail_before = W.weight_tail(pop.log_weights)
    keep = keep_cache and not _shared(path)
    if keep:
        cache = _evaluate(path.target(b), extra, pop.x)
    pop, cache, extra, res = resample_if(k_res, pop, threshold, scheme, cache, extra)
    res = res._replace(resampled=res.resampled.astype(jnp.int32))
    # The cache is γ_a's: it stays valid at b only if the path shares one cache for all points
    # (or it is b's: keep_cache).
    cache = cache if _shared(path) or keep else None
    return pop, cache, extra, aux, StageInfo(
        cess, tail_before, info.move_cess, info.noise, info.acceptance, res,
        dead + info.num_dead, info.jump, info.num_divergent, failed + info.num_failed,
        renewal=info.renewal)


def _reweight_then_move(key, pop, cache, path, a, b, kernel, step_size, scale_fn, num_moves,
                        threshold, scheme, extra, hook, hook_first):
    """The work ``a → b`` at the walkers, moves at ``γ_b`` (no resampling between them), then
    a resampling check. Valid wherever the default order is (the weights are proper for
    ``γ_b`` after the work, and the moves keep them so); what it buys is that the work's
    evaluation at ``b`` and the first move's read the same walkers, so XLA computes their
    common products once (an RBM's ``v W_b``: the work's free energy and the first
    half-sweep). A resampling between them (a ``lax.cond``) keeps them apart."""
    k_move, k_res = Z.split(key)
    if cache is None and _shared(path):
        cache = _evaluate(path.target(a), extra, pop.x)
    pop, cess, dead, failed = reweight(pop, path.increment(pop.x, cache, a, b))
    tail_before = W.weight_tail(pop.log_weights)
    cache = cache if _shared(path) else None
    if cache is None and kernel is not None:
        cache = _evaluate(path.target(b), extra, pop.x)
    scale, aux = scale_fn(pop)
    pop, cache, extra, info = move(k_move, pop, cache, kernel, path.target(b), step_size, scale,
                                   num_moves, None, scheme, extra, hook, hook_first)
    pop, cache, extra, res = resample_if(k_res, pop, threshold, scheme, cache, extra)
    res = res._replace(resampled=res.resampled.astype(jnp.int32))
    return pop, cache, extra, aux, StageInfo(
        cess, tail_before, info.move_cess, info.noise, info.acceptance, res,
        dead + info.num_dead, info.jump, info.num_divergent, failed + info.num_failed,
        renewal=info.renewal)


def _bridge(key, pop, cache, path, a, b, kernel, step_size, scale_fn, threshold, scheme, extra,
            hook, hook_first):
    """One move that crosses ``a → b`` itself (its increment is the whole Crooks term), then
    a resampling check (none when ``threshold`` is None)."""
    start, end = path.target(a), path.target(b)
    if cache is None:
        cache = _evaluate(start, extra, pop.x)
    scale, aux = scale_fn(pop)
    crossing = Crossing(start, end, a, b)
    zero_i = jnp.zeros((), jnp.int32)
    pop, cache, extra, dead, r, (cess, acc, moved, div), inc = _one_move(
        key, pop, cache, extra, (zero_i, zero_i), kernel, lambda _: crossing, step_size, scale,
        threshold, scheme, hook, hook_first)
    res = _no_resampling(pop) if r is None else r._replace(
        resampled=r.resampled.astype(jnp.int32))
    nan = jnp.full((W.tail_record_size(pop.log_weights.shape[0]),), jnp.nan,
                   pop.log_weights.dtype)
    # The move's increment is the stage's: its CESS is both; k-hat is not recorded (NaN).
    return pop, cache, extra, aux, StageInfo(
        cess, nan, cess, -jnp.log(jnp.clip(cess, 1e-30, 1.0)), acc, res, dead[0], moved, div,
        dead[1], inc)


def advance(key, pop, cache, path, a, b, kernel, step_size, scale_fn, num_moves, threshold,
            scheme="systematic", extra=None, hook=None, hook_first=False, *, move_first=False,
            resample_last=False, waste_free=False, revive=True, keep_cache=False,
            max_moves=None):
    """One stage along ``path`` (a value of :mod:`numpyro_jarzynski.engine.path`) from point
    ``a`` to point ``b``: the front-ends supply their path and their moves, the stage does the
    rest.

    * default: :func:`step` with the path's work ``ΔA = log γ_b − log γ_a`` at the walkers and
      moves at ``γ_b`` (``waste_free``: :func:`step_waste_free`, chains of ``num_moves + 1``);
    * ``move_first``: ``num_moves`` moves at ``γ_a`` (no resampling between them), then the
      work at the moved walkers, then the resampling check: the EBM trainer's order (the
      work must be evaluated at walkers drawn after ``θ_b`` was chosen from them);
    * ``resample_last``: the default's work and moves at ``γ_b`` (no resampling between
      them), then the resampling check: the work at ``b`` and the first move share their
      products (an RBM's ``v W_b``; the EBM trainer's cross-fitted witness);
    * a bridging move (``kernel.bridging``, e.g. the interpolant's Euler–Maruyama step) crosses
      ``a → b`` itself: it runs once, with a :class:`~.path.Crossing` of the two targets as
      its target, and the stage books no work at fixed walkers.

    ``max_moves``: ``num_moves`` is a traced count of at most ``max_moves`` moves (the
    default order only; :func:`move`).

    ``cache``: the target's cache at ``a`` for the walkers (``None``: evaluated here). A path
    whose cache serves every point (``path.shared_cache``, tempering's split cache) carries it
    through; otherwise the moves at ``b`` evaluate it afresh. ``revive``: dead walkers get a
    live position at the end (:func:`~.population.replace_dead`; their weight stays zero).

    Returns ``(pop, cache, extra, aux, StageInfo)``; the cache is ``b``'s (``None`` after
    ``move_first`` on a path without a shared cache, unless ``keep_cache``: then ``b``'s,
    evaluated at the moved walkers, for a caller that carries it to its next stage).
    """
    if max_moves is not None and (move_first or resample_last or waste_free
                                  or getattr(kernel, "bridging", False)):
        raise ValueError("a traced number of moves (max_moves) needs the default order: no "
                         "move_first, resample_last, waste_free or bridging move.")
    if getattr(kernel, "bridging", False):
        if num_moves != 1 or waste_free or move_first or resample_last:
            raise ValueError("a bridging move crosses the stage once: num_moves=1, no "
                             "waste_free, no move_first, no resample_last.")
        out = _bridge(key, pop, cache, path, a, b, kernel, step_size, scale_fn, threshold,
                      scheme, extra, hook, hook_first)
    elif move_first or resample_last:
        if move_first and resample_last or waste_free:
            raise ValueError("choose one order: move_first, resample_last, or waste_free.")
        if move_first:
            out = _move_then_reweight(key, pop, cache, path, a, b, kernel, step_size,
                                      scale_fn, num_moves, threshold, scheme, extra, hook,
                                      hook_first, keep_cache)
        else:
            out = _reweight_then_move(key, pop, cache, path, a, b, kernel, step_size,
                                      scale_fn, num_moves, threshold, scheme, extra, hook,
                                      hook_first)
    else:
        if cache is None and _shared(path):
            cache = _evaluate(path.target(a), extra, pop.x)
        increment = path.increment(pop.x, cache, a, b)
        cache = cache if _shared(path) else None
        if waste_free:
            if cache is None and kernel is not None:
                cache = _evaluate(path.target(b), extra, pop.x)
            out = step_waste_free(key, pop, cache, increment, kernel, path.target(b), step_size,
                                  scale_fn, num_moves + 1, scheme, extra, hook, hook_first)
        else:
            out = step(key, pop, cache, increment, kernel, path.target(b), step_size, scale_fn,
                       num_moves, threshold, scheme, extra, hook, hook_first, max_moves)
    if not revive:
        return out
    pop, cache, extra, aux, info = out
    pop, cache, extra = replace_dead(pop, cache, extra)
    return pop, cache, extra, aux, info


__all__ = ["MoveInfo", "StageInfo", "SweepMove", "advance", "deaths", "failures", "jump",
           "move", "renewal", "reweight", "step", "step_waste_free", "worse"]
