"""Jarzynski-corrected generation with a stochastic-interpolant / diffusion SDE.

Given a time-dependent density ``ρ_t ∝ γ_t`` (``log γ_t`` may be unnormalised, e.g. an energy
network ``−U_θ(t, x)``), its velocity ``b_t`` and a noise level ``ε(t) > 0``, the generative SDE

.. math::  dX = (b_t + ε s_t)(X)\\, dt + \\sqrt{2ε}\\, dW, \\qquad s_t = ∇ \\log ρ_t,

started from ``ρ_0`` has marginals ``ρ_t``. Its Euler–Maruyama discretisation on a grid
``0 = t_0 < … < t_K = 1`` is biased by ``O(h)``; carrying the Crooks log-weights ``A`` of
:mod:`numpyro_jarzynski.engine.moves` (``em_log_increment``, ``transport_log_increment``) removes the bias at any ``h``:

.. math::

    E_{ρ_1}[f] ≈ Σ_i \\mathrm{softmax}(A)_i f(x_i), \\qquad
    \\log(Z_1/Z_0) ≈ \\log \\tfrac1N Σ_i e^{A_i}\\ (+ \\text{banked resampling constants}).

Each time step is the engine's stage (:func:`numpyro_jarzynski.engine.stage.advance`) on the
generation path :class:`~numpyro_jarzynski.engine.path.GenerationPath` (``log γ(x, t) =
log ρ_t(x)``) with one of two move values, :class:`EulerMaruyama` (scheme A) and
:class:`TransportLangevin` (scheme B). Both *bridge* the path: one move takes the walkers from
``t`` to ``t + h`` and its increment is the whole Crooks term
``log ρ_{t+h}(x') L(x|x') − log ρ_t(x) M(x'|x)``, so the stage books no work at fixed walkers;
it reweights by the move's increment, resamples when the ESS is below ``resample_threshold``
and gives dead walkers a live position. This module supplies the moves only.

Dead walkers. A walker whose ``log γ_t`` or increment is NaN/inf gets weight zero
(``A = −inf``); the estimates are then those of the density restricted to where it is finite.
Each step records how many walkers died at it (``deaths``) and how many are alive after its
reweighting (``num_alive``). If every walker dies at step ``k`` the population is frozen at
``t_k`` (the last time any walker was alive) and :meth:`InterpolantSampler.run` raises a
``FloatingPointError`` naming the step, from Python after the compiled call, with that partial
result on ``err.result``; if only some die, it warns (``UserWarning``) with the count and the
first step. The pure :meth:`InterpolantSampler.integrate` never raises: pass its result to
:meth:`InterpolantSampler.check`.
"""

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from numpyro_jarzynski.engine import kernels as K
from numpyro_jarzynski.engine import stage as S
from numpyro_jarzynski.engine import weights as W
from numpyro_jarzynski.engine.moves import em_log_increment, transport_log_increment
from numpyro_jarzynski.engine.path import GenerationPath
from numpyro_jarzynski.engine.population import init_population

SCHEMES = ("A", "B")


class GenerationResult(NamedTuple):
    """Output of :meth:`InterpolantSampler.run` (``N`` walkers, ``K`` steps).

    Without resampling, ``x`` are exactly the plain (unweighted) Euler–Maruyama samples for
    scheme A: uniform weights on ``x`` is the biased baseline, ``log_weights`` the correction.
    """

    x: jax.Array  # (N, d) walkers at t = 1
    log_weights: jax.Array  # (N,) A at t = 1 (since the last resampling)
    log_evidence: jax.Array  # () estimate of log(Z_1 / Z_0)
    ess: jax.Array  # (K,) normalised ESS after each step's reweighting (before resampling)
    increments: jax.Array  # (K, N) per-step log-weight increments ΔA
    resampled: jax.Array  # (K,) whether each step resampled
    times: jax.Array  # (K + 1,) the time grid
    # (K,) walkers that died at each step (live before it, weight zero after its reweighting)
    deaths: jax.Array | None = None
    # (K,) live walkers after each step's reweighting (0: all dead; the population is then
    # frozen at the last good time, and later steps record 0 deaths, NaN ESS and increments)
    num_alive: jax.Array | None = None
    # () the run's own Monte Carlo error on log_evidence: Lee & Whiteley's estimator from the
    # walkers' genealogy (engine.weights.log_evidence_variance; unbiased with multinomial
    # resampling, the default, and with no resampling at all; NaN for a run that resampled
    # with another scheme, where the estimator was measured too small, down to 0)
    log_evidence_se: jax.Array | None = None

    @property
    def weights(self):
        """Normalised weights ``softmax(A)``."""
        return W.normalized_weights(self.log_weights)

    @property
    def num_dead(self):
        """Total number of walker deaths over the run (a walker revived by resampling and
        killed again counts twice)."""
        return jnp.sum(self.deaths, -1)


def _accept_proxy(log_ratio):
    return jnp.where(jnp.isfinite(log_ratio), jnp.exp(jnp.minimum(log_ratio, 0.0)), 0.0)


@dataclass(frozen=True)
class EulerMaruyama:
    """Scheme A as a move value: one Euler–Maruyama step of the generative SDE from ``t`` to
    ``t' = t + h``, ``x' = x + h (b_t + ε s_t)(x) + √(2εh) ξ``, weighted by its Crooks increment
    against the reverse-time EM step (drift ``b_{t'} − ε s_{t'}`` at ``x'``) as the backward
    kernel (:func:`~numpyro_jarzynski.engine.moves.em_log_increment`).

    A bridging move: its ``target`` is a :class:`~numpyro_jarzynski.engine.path.Crossing` of
    the generation path's targets at ``t`` and ``t'`` (with the times), ``step_size`` is the
    noise level ``ε`` of the step, ``scale`` is unused. The cache is a
    :class:`~numpyro_jarzynski.engine.path.TimeCache` with the velocity, which the next step
    reuses as its forward drift."""

    velocity: Callable  # (t, x_i) -> b_t(x_i)

    name = "em"
    invariant = False
    bridging = True

    def step(self, key, x, cache, target, step_size, scale):
        start, end, t, t_next = target
        h, eps = t_next - t, step_size
        drift_fwd = cache.velocity + eps * start.grad(cache)
        noise = jax.random.normal(key, x.shape, x.dtype)
        x_new = x + h * drift_fwd + jnp.sqrt(2 * eps * h) * noise
        c_new = end.evaluate(x_new)
        b_new = jax.vmap(self.velocity, (None, 0))(t_next, x_new)
        drift_bwd = b_new - eps * end.grad(c_new)
        inc = em_log_increment(x, x_new, start.log_density(cache), end.log_density(c_new),
                               drift_fwd, drift_bwd, h, eps)
        return K.MoveResult(x_new, c_new._replace(velocity=b_new), inc, _accept_proxy(inc),
                            ~jnp.isfinite(inc))


@dataclass(frozen=True)
class TransportLangevin:
    """Scheme B as a move value: the transport ``x̃ = x + h b_t(x)`` (increment
    ``log ρ_{t'}(x̃) − log ρ_t(x) + log|det(I + h∇b_t)|``,
    :func:`~numpyro_jarzynski.engine.moves.transport_log_increment`, with ``∇b`` by
    ``jacfwd``), then the engine's :class:`~numpyro_jarzynski.engine.kernels.ULA` move at
    ``ρ_{t'}`` with step ``εh`` and its Crooks increment. A bridging move, called as
    :class:`EulerMaruyama`."""

    velocity: Callable  # (t, x_i) -> b_t(x_i)

    name = "transport-langevin"
    invariant = False
    bridging = True

    def _velocity_and_jacobian(self, t, x):
        def with_value(xi):
            b = self.velocity(t, xi)
            return b, b

        jac, b = jax.vmap(jax.jacfwd(with_value, has_aux=True))(x)
        return b, jac

    def step(self, key, x, cache, target, step_size, scale):
        start, end, t, t_next = target
        h, eps = t_next - t, step_size
        b, jac = self._velocity_and_jacobian(t, x)
        x_mid = x + h * b
        c_mid = end.evaluate(x_mid)
        inc_transport = transport_log_increment(start.log_density(cache), end.log_density(c_mid),
                                                jac, h)
        ones = jnp.ones(x.shape[-1], x.dtype)
        out = K.ULA().step(key, x_mid, c_mid, end, eps * h, ones)
        inc = inc_transport + out.log_increment
        return K.MoveResult(out.x, out.cache, inc, _accept_proxy(inc),
                            out.diverged | ~jnp.isfinite(inc_transport))


def _validated_grid(grid, num_steps):
    if (grid is None) == (num_steps is None):
        raise ValueError("Give exactly one of num_steps (uniform grid) or grid (explicit times).")
    if grid is None:
        if int(num_steps) != num_steps or num_steps < 1:
            raise ValueError(f"num_steps must be a positive integer; got {num_steps!r}.")
        return np.linspace(0.0, 1.0, int(num_steps) + 1)
    grid = np.asarray(grid, dtype=np.float64)
    if grid.ndim != 1 or grid.shape[0] < 2:
        raise ValueError(f"grid must be a 1-D array of at least 2 times; got shape {grid.shape}.")
    if not np.all(np.isfinite(grid)):
        raise ValueError("grid contains NaN or infinite times.")
    if grid[0] != 0.0 or grid[-1] != 1.0:
        raise ValueError(
            f"grid must start at t = 0 (exact draws of ρ_0) and end at t = 1; got "
            f"[{grid[0]}, …, {grid[-1]}]. Rescale it, e.g. grid = (g - g[0]) / (g[-1] - g[0])."
        )
    if np.any(np.diff(grid) <= 0):
        raise ValueError("grid must be strictly increasing (every step h = t_{k+1} − t_k > 0).")
    return grid


def _validated_noise(noise, grid):
    starts = grid[:-1]
    if callable(noise):
        eps = np.asarray(jax.vmap(noise)(jnp.asarray(starts)), dtype=np.float64)
        if eps.shape != starts.shape:
            raise ValueError(f"noise(t) must return a scalar; got shape {eps.shape[1:]} per time.")
    else:
        eps = np.broadcast_to(np.asarray(noise, dtype=np.float64), starts.shape)
    if not np.all(np.isfinite(eps)) or np.any(eps <= 0):
        raise ValueError(
            "The noise level ε must be > 0 at every step start: with ε = 0 the Euler–Maruyama "
            "kernel is a point mass and the Crooks weights are undefined. Use a small positive "
            f"ε (e.g. noise=0.1) instead; got min ε = {np.min(eps)}."
        )
    return eps


class InterpolantSampler:
    """Integrate the generative SDE with Jarzynski-corrected weights.

    Args:
        log_density: ``(t, x) -> log γ_t(x)`` for one point ``x`` of shape ``(d,)``; may be
            unnormalised (then ``log_evidence`` estimates ``log Z_1/Z_0``).
        velocity: ``(t, x) -> b_t(x)``, shape ``(d,)``.
        score: ``(t, x) -> ∇ log ρ_t(x)``; default: autodiff of ``log_density``.
        noise: ``ε > 0``, a number or a function ``t -> ε(t)`` (evaluated at each step start).
        num_steps / grid: a uniform grid of ``num_steps`` steps, or explicit times from 0 to 1.
        scheme: ``"A"`` (plain EM, reverse-time EM backward kernel) or ``"B"`` (transport +
            Langevin splitting; needs ``∇b`` by ``jacfwd``, ``d`` JVPs and an ``O(d³)``
            log-determinant per walker and step, so it suits small/moderate ``d``).
        resample_threshold: resample when the normalised ESS falls below it (0 = never).
        resampling: a scheme name of :mod:`numpyro_jarzynski.engine.resampling` or a function
            (default ``"multinomial"``: the run's error bar ``log_evidence_se`` assumes it).

    ``run`` is jitted once per sampler and can be ``vmap``-ped over keys for independent runs.
    """

    def __init__(
        self,
        log_density: Callable,
        velocity: Callable,
        *,
        score: Callable | None = None,
        noise: float | Callable = 1.0,
        num_steps: int | None = None,
        grid=None,
        scheme: str = "A",
        resample_threshold: float = 0.0,
        resampling="multinomial",
    ):
        if not (callable(log_density) and callable(velocity)):
            raise TypeError("log_density and velocity must be functions (t, x) -> value.")
        if score is not None and not callable(score):
            raise TypeError("score must be a function (t, x) -> ∇ log ρ_t(x), or None (autodiff).")
        if scheme not in SCHEMES:
            raise ValueError(
                f"Unknown scheme {scheme!r}: use 'A' (plain Euler–Maruyama) or 'B' "
                "(transport + Langevin splitting)."
            )
        if not 0.0 <= resample_threshold <= 1.0:
            raise ValueError(
                f"resample_threshold is a normalised ESS in [0, 1]; got {resample_threshold}."
            )
        self.log_density = log_density
        self.velocity = velocity
        self.score = score
        self.scheme = scheme
        self.grid = _validated_grid(grid, num_steps)
        self.noise = _validated_noise(noise, self.grid)
        self.resample_threshold = float(resample_threshold)
        self.resampling = resampling
        self.path = GenerationPath(log_density, score)
        self.move = (EulerMaruyama if scheme == "A" else TransportLangevin)(velocity)
        self._integrate_jit = jax.jit(self._integrate)

    # --- the scan over time steps: one stage of the engine per step -------------------------
    def _integrate(self, rng_key, x0, times, noise_per_step):
        dtype = x0.dtype
        times = jnp.asarray(times, dtype)
        eps = jnp.asarray(noise_per_step, dtype)
        t0 = times[0]
        cache = self.path.evaluate(t0, x0)
        if self.scheme == "A":
            cache = cache._replace(velocity=jax.vmap(self.velocity, (None, 0))(t0, x0))
        pop = init_population(x0, W.sanitize(jnp.where(jnp.isfinite(cache.log_p), 0.0, -jnp.inf)))
        pop = pop._replace(eve=jnp.arange(x0.shape[0], dtype=jnp.int32))  # the genealogy
        threshold = self.resample_threshold if self.resample_threshold > 0 else None
        unit = jnp.ones(x0.shape[-1], dtype)

        def body(carry, inputs):
            pop, cache, key, failed = carry
            t, t_next, eps_k = inputs
            key, k_stage = jax.random.split(key)
            alive_before = jnp.sum(jnp.isfinite(pop.log_weights)).astype(jnp.int32)
            new, cache_new, _, _, info = S.advance(
                k_stage, pop, cache, self.path, t, t_next, self.move, eps_k,
                lambda p: (unit, None), 1, threshold, self.resampling)
            deaths = info.num_dead
            num_alive = alive_before - deaths
            # Every walker dead: keep the last good population (t_k) and record the failure;
            # once failed, every later step is a no-op.
            dies_now = (~failed) & (num_alive == 0)
            frozen = failed | dies_now
            pop, cache = jax.tree.map(
                lambda a, b: jnp.where(frozen, a, b), (pop, cache), (new, cache_new)
            )
            nan = jnp.full((), jnp.nan, dtype)
            out = (
                jnp.where(frozen, nan, info.resample.ess_before),
                jnp.where(failed, nan, info.increment),
                (info.resample.resampled > 0) & ~frozen,
                jnp.where(failed, 0, deaths),
                jnp.where(failed, 0, num_alive),
            )
            return (pop, cache, key, frozen), out

        carry = (pop, cache, rng_key, jnp.zeros((), bool))
        (pop, _, _, _), (ess, incs, did, deaths, alive) = jax.lax.scan(
            body, carry, (times[:-1], times[1:], eps)
        )
        resamplings = jnp.sum(did)
        se = jnp.sqrt(W.log_evidence_variance(pop.log_weights, pop.eve, resamplings))
        if self.resampling != "multinomial":  # the estimator's assumption (NaN once it fails)
            se = jnp.where(resamplings > 0, jnp.nan, se)
        return GenerationResult(pop.x, pop.log_weights, pop.log_evidence, ess, incs, did, times,
                                deaths, alive, se)

    @staticmethod
    def check(result, stacklevel=2):
        """Raise or warn about dead walkers in a (possibly ``vmap``-ped) result, from Python.

        Every walker dead at some step: ``FloatingPointError`` naming the step ``k`` and the
        times ``t_k → t_{k+1}``, with ``err.result`` the partial result (population frozen at
        ``t_k``: its ``x``, ``log_weights`` and ``log_evidence`` are those of ``t_k``, and
        ``err.step``, ``err.time`` the failing step and its start time). Some walkers dead:
        ``UserWarning`` with the count and the first step. Returns ``result``.
        """
        if result.num_alive is None or result.deaths is None:  # built by hand: nothing recorded
            return result
        alive = np.asarray(result.num_alive)
        deaths = np.asarray(result.deaths)
        times = np.asarray(result.times)
        n = np.asarray(result.log_weights).shape[-1]
        alive2, deaths2 = alive.reshape(-1, alive.shape[-1]), deaths.reshape(-1, deaths.shape[-1])
        times2 = times.reshape(-1, times.shape[-1])
        runs = alive2.shape[0]
        failed = (alive2 == 0).any(-1)
        if failed.any():
            r = int(np.argmax(failed))
            k = int(np.argmax(alive2[r] == 0))
            t, t_next = times2[r if times2.shape[0] > 1 else 0][k : k + 2]
            where = f" (run {r}; {int(failed.sum())} of {runs} runs failed)" if runs > 1 else ""
            err = FloatingPointError(
                f"InterpolantSampler: every walker died at step {k} (t = {t:.4g} → "
                f"{t_next:.4g}){where}: log γ_t, the score or the velocity is NaN/inf "
                "where the walkers went, or the step was too large for the drift. Use more "
                "steps (smaller h: num_steps, or a finer grid near that time), a smaller "
                "noise ε, or check log_density, velocity and score at that time. "
                f"err.result holds the partial result, frozen at t = {t:.4g} (the last "
                "time a walker was alive): its x, log_weights and log_evidence are those "
                "of that time."
            )
            err.result, err.step, err.time = result, k, float(t)
            raise err
        total = deaths2.sum(-1)
        if total.any():
            r = int(np.flatnonzero(total)[0])
            k = int(np.flatnonzero(deaths2[r])[0])
            t, t_next = times2[r if times2.shape[0] > 1 else 0][k : k + 2]
            dead_end = int(n - alive2[r, -1])
            where = ""
            if runs > 1:
                where = f" in {int((total > 0).sum())} of {runs} runs (first: run {r})"
            warnings.warn(
                f"InterpolantSampler: {int(total[r])} walker death(s){where}, the first at step "
                f"{k} (t = {t:.4g} → {t_next:.4g}); {dead_end} of {n} walkers are dead at "
                "t = 1. A dead walker has weight zero (log γ_t or its increment was NaN/inf), "
                "so the estimates are those of the density restricted to where it is finite. "
                "If that region should not be excluded, check log_density, velocity and score "
                "there, or use more (smaller) steps. result.deaths counts them per step.",
                UserWarning,
                stacklevel=stacklevel,
            )
        return result

    def _check_inputs(self, x0):
        x_shape = jax.eval_shape(lambda v: v, x0)
        if len(x_shape.shape) != 2 or not jnp.issubdtype(x_shape.dtype, jnp.floating):
            raise ValueError(
                f"x0 must be a float array of shape (num_walkers, d) of exact draws from ρ_0; "
                f"got {x_shape.dtype} array of shape {x_shape.shape}."
            )
        point = jax.ShapeDtypeStruct(x_shape.shape[1:], x_shape.dtype)
        t = jax.ShapeDtypeStruct((), x_shape.dtype)
        lp = jax.eval_shape(self.log_density, t, point)
        if lp.shape != ():
            raise ValueError(
                f"log_density(t, x) must return a scalar for one point x of shape {point.shape}; "
                f"got shape {lp.shape}. Write it for a single walker: the sampler vmaps it."
            )
        for name, fn in (("velocity", self.velocity), ("score", self.score)):
            if fn is not None:
                out = jax.eval_shape(fn, t, point)
                if out.shape != point.shape:
                    raise ValueError(
                        f"{name}(t, x) must return shape {point.shape} (same as one walker x); "
                        f"got {out.shape}."
                    )
        if not isinstance(x0, jax.core.Tracer):
            log_p = jax.vmap(self.log_density, (None, 0))(jnp.zeros((), x0.dtype), x0)
            bad = int(jnp.sum(~jnp.isfinite(log_p)))
            if bad:
                raise ValueError(
                    f"log_density(0, x) is NaN or infinite at {bad} of {x0.shape[0]} initial "
                    "walkers: x0 must be draws from ρ_0 and log_density finite on its support."
                )

    def run(self, rng_key, x0):
        """Integrate from exact draws ``x0 ~ ρ_0`` (shape ``(N, d)``); returns a
        :class:`GenerationResult`. Same key, same result. Walkers whose density turns NaN
        during the run get weight zero (``A = −inf``) and a live walker's position; see
        :meth:`check` for the warning (some walkers died) and the error (all of them)."""
        self._check_inputs(x0)
        result = self._integrate_jit(rng_key, x0, self.grid, self.noise)
        if isinstance(result.num_alive, jax.core.Tracer):  # run under the caller's jit/vmap
            return result
        return self.check(result, stacklevel=3)

    def integrate(self, rng_key, x0, times, noise_per_step):
        """The unchecked pure integrator behind :meth:`run`, with the grid as a traced input.

        ``times`` ``(K + 1,)`` and ``noise_per_step`` ``(K,)`` are not validated here. Grids of
        equal length share one compilation and can be ``vmap``-ped; trailing zero-length steps
        (``t = 1`` repeated) add exactly zero to the weights, so grids with different numbers
        of steps can be padded to one length. Never raises: dead walkers are recorded in
        ``deaths`` / ``num_alive``; call :meth:`check` on the result.
        """
        return self._integrate_jit(rng_key, x0, times, noise_per_step)
